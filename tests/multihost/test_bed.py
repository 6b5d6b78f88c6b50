"""The test bed's own promises: the subnet exists only in its namespaces, nothing there can reach
beyond them, the client refuses to run in the host's namespace, a dead run's leftovers go."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from . import client, netns
from .client import CallError


def test_the_subnet_is_only_inside_the_beds_namespaces_and_has_no_way_out(cluster):
    assert netns.host_networks_in_subnet() == []
    for host in cluster.net.hosts.values():
        assert netns.run("ip", "-4", "route", "show", "default", ns=host.ns).stdout.strip() == ""
        beyond = netns.run("ip", "route", "get", "192.0.2.1", ns=host.ns, check=False)
        assert beyond.returncode != 0 and "unreachable" in beyond.stderr, (host.name, beyond)
    with pytest.raises(CallError, match="refusing to send to 192.0.2.1"):
        cluster.client.http("GET", "http://192.0.2.1/")


def test_the_client_program_refuses_to_run_in_the_host_namespace(cluster):
    res = subprocess.run([sys.executable, client.__file__, "--netns", f"/run/netns/{cluster.client.ns}",
                          "--not", str(os.stat("/proc/self/ns/net").st_ino)],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 2 and "refused" in res.stdout, (res.stdout, res.stderr)


def test_the_leftovers_of_a_dead_run_are_swept_and_a_live_runs_are_not(cluster, tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    names = [f"{netns.PREFIX}{dead.pid}-leftover", f"{netns.PREFIX}{os.getppid()}-alive"]
    for name in names:
        netns.run("ip", "netns", "add", name)
        (tmp_path / name.split("-")[0]).mkdir(exist_ok=True)
    try:
        removed = netns.sweep_stale(tmp_path)
        assert names[0] in removed and names[1] not in removed, removed
        assert str(tmp_path / f"{netns.PREFIX}{dead.pid}") in removed
        assert (tmp_path / f"{netns.PREFIX}{os.getppid()}").is_dir()
        assert names[0] not in netns.namespaces() and names[1] in netns.namespaces()
    finally:
        for name in names:
            netns.run("ip", "netns", "del", name, check=False)
