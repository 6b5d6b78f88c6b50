"""What one machine has and another has not: a command on its PATH, a file in its private /tmp,
and a service reached at that machine's own address from the client's."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

from ..harness import process_spec, wait_for
from .machines import private_tmp


def test_a_command_only_one_machine_has_runs_there_pinned_and_is_not_found_elsewhere(cluster):
    root, nanjing = cluster["jiangsu"], cluster["nanjing"]
    marker = f"cnetmh-marker-{os.getpid()}"
    tool = nanjing.install("nanjing-only", f'#!/bin/sh\necho "{marker} from $0"\n'
                                           f'echo here > /tmp/{marker}\nexec sleep 300\n')
    spec = process_spec("pinned", command="nanjing-only", args=(), cpu=0.5,
                        placement={"node": "nanjing"})
    wl = root.submit(spec)
    assert (wl["status"], wl["node_id"]) == ("running", "nanjing"), wl
    logs = wait_for(lambda: marker in (text := root.api(
        "GET", f"/api/workloads/{wl['id']}/logs").json()["logs"]) and text,
        timeout=10, message="the tool's output, through jiangsu")
    assert f"{marker} from {tool}" in logs

    refused = root.api("POST", "/api/workloads", json={**spec, "placement": {"node": "suqian"}})
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert error["code"] == "command_not_found" and error["details"]["node_id"] == "suqian", error
    here = root.api("POST", "/api/workloads", json={**spec, "placement": {"node": "jiangsu"}})
    assert here.status_code == 400 and here.json()["error"]["code"] == "command_not_found", here.text

    # The file it wrote is in nanjing's /tmp only: not the host's, not another machine's.
    wait_for(lambda: (private_tmp(nanjing) / marker).exists(), timeout=10,
             message="the tool's file in nanjing's /tmp")
    assert not Path("/tmp", marker).exists()
    reads = {node: root.submit(process_spec(f"cat-{node}", command="cat", args=(f"/tmp/{marker}",),
                                            cpu=0.1, placement={"node": node}))
             for node in ("nanjing", "suqian")}
    assert root.wait_status(reads["nanjing"]["id"], "completed")["exit_code"] == 0
    assert root.wait_status(reads["suqian"]["id"], "failed")["exit_code"] != 0


def test_a_service_on_a_city_answers_the_client_at_that_machines_address(cluster):
    root, nanjing = cluster["jiangsu"], cluster["nanjing"]
    wl = root.submit({"name": "gateway", "type": "datagateway", "config": {},
                      "requirements": {"cpu": 0.5, "memory": 268435456},
                      "placement": {"node": "nanjing"}})
    assert (wl["status"], wl["node_id"]) == ("running", "nanjing"), wl
    assert urlsplit(wl["endpoint"]).hostname == nanjing.host.address, wl["endpoint"]
    assert root.workload(wl["id"])["endpoint"] == wl["endpoint"]
    health = cluster.client.http("GET", wl["endpoint"] + "/health")
    assert health.status_code == 200, health.text
    listing = cluster.client.http("GET", wl["endpoint"] + "/s3/cnet", params={"list-type": "2"})
    assert listing.status_code == 200 and "<ListBucketResult" in listing.text, listing.text
