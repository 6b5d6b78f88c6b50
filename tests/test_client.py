"""The client library and the ``cnet`` CLI against real agents: every operation over the bus,
errors, tokens, a down agent, ``watch()`` events, ``cnet keys generate`` and CurveZMQ."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from cnet.cli_client import format_event
from cnet.client import Client, ClientError, SyncClient

from .harness import REPO, AgentProcess, free_port, process_spec, wait_for

FAST_BUS = {"bus": {"heartbeat_interval": 0.2}}
TEST_TIMEOUT = 60.0


def run(coro: Coroutine[Any, Any, Any], timeout: float = TEST_TIMEOUT) -> Any:
    """Run an async test body in a fresh loop, failing it if it takes longer than ``timeout``."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def next_events(events: AsyncIterator[dict], matches: list[Callable[[dict], bool]],
                      timeout: float = 15.0) -> list[dict]:
    """For each of ``matches``, the first event from ``events`` it accepts (in any order),
    all within ``timeout`` seconds."""
    found: list[dict | None] = [None] * len(matches)

    async def scan() -> list[dict]:
        async for event in events:
            for i, match in enumerate(matches):
                if found[i] is None and match(event):
                    found[i] = event
            if all(found):
                return found
        raise AssertionError("the watch ended")
    return await asyncio.wait_for(scan(), timeout)


async def next_event(events: AsyncIterator[dict], match: Callable[[dict], bool],
                     timeout: float = 15.0) -> dict:
    """The first event from ``events`` that ``match``es, within ``timeout`` seconds."""
    return (await next_events(events, [match], timeout))[0]


def node_status(agent: AgentProcess, node_id: str) -> str | None:
    """``node_id``'s status in ``agent``'s ``/api/nodes`` (None when it is not listed)."""
    doc = agent.api("GET", "/api/nodes", timeout=5).json()
    entries = [doc.get("parent")] + doc.get("children", []) + doc.get("peers", [])
    return next((e["status"] for e in entries if e and e["node_id"] == node_id), None)


def child_config(parent: AgentProcess, extra: dict | None = None) -> dict:
    return {**FAST_BUS, "parent": {"enabled": True, "address": f"127.0.0.1:{parent.port}"},
            **(extra or {})}


# -- the library ------------------------------------------------------------------------------

def test_every_operation_over_the_bus(make_agent) -> None:
    agent = make_agent(config={"api": {"token": "secret"}})
    with SyncClient(agent.url, token="secret", timeout=5) as client:
        assert client.health()["node_id"] == agent.node_id
        spec = process_spec("echoer", "sh", ("-c", "echo hello-client; sleep 30"), cpu=2.0)
        result = client.submit(spec)
        assert result["created"] is True
        wl = result["workload"]
        assert wl["name"] == "echoer" and wl["node_id"] == agent.node_id
        assert client.get(wl["id"])["status"] in ("pending", "running")
        agent.wait_status(wl["id"], "running")

        listed = client.list()
        assert listed["count"] == 1 and listed["workloads"][0]["id"] == wl["id"]
        assert client.list(status="running", type="process")["count"] == 1
        assert client.list(status="completed")["count"] == 0
        assert client.list(scope="subtree")["count"] == 1

        assert client.resources()["allocated"]["cpu"] == 2.0
        nodes = client.nodes()
        assert nodes["node_id"] == agent.node_id and nodes["self"]["status"] == "alive"
        wait_for(lambda: "hello-client" in client.logs(wl["id"], tail=10), message="the log line")

        assert client.stop(wl["id"])["status"] in ("stopping", "stopped")
        agent.wait_status(wl["id"], "stopped")
        assert client.resources()["allocated"]["cpu"] == 0.0
        assert client.delete(wl["id"]) == {"id": wl["id"], "deleted": True}
        assert client.list()["count"] == 0


@pytest.mark.parametrize("call, status, code", [
    (lambda c: c.get("no-such-workload"), 404, "not_found"),
    (lambda c: c.stop("no-such-workload"), 404, "not_found"),
    (lambda c: c.delete("no-such-workload"), 404, "not_found"),
    (lambda c: c.logs("no-such-workload"), 404, "not_found"),
    (lambda c: c.submit({"name": "x", "type": "process"}), 400, None),
    (lambda c: c.submit({"name": "x", "type": "process", "bogus": 1}), 400, None),
    (lambda c: c.list(status="sleeping"), 400, "invalid_argument"),
    (lambda c: c.logs("x", tail=-1), 400, "invalid_argument"),
    (lambda c: c.submit(process_spec("huge", cpu=1000.0)), 503, "insufficient_resources"),
])
def test_errors_keep_the_agents_status_and_code(agent, call, status, code) -> None:
    with SyncClient(agent.url, timeout=5) as client:
        with pytest.raises(ClientError) as caught:
            call(client)
    assert caught.value.status == status, caught.value
    assert code is None or caught.value.code == code, caught.value
    assert caught.value.message and str(status) in str(caught.value)


def test_token_required_and_accepted_through_the_bus(make_agent) -> None:
    agent = make_agent(config={"api": {"token": "secret"}})
    for token in (None, "wrong"):
        with SyncClient(agent.url, token=token, timeout=5) as client:
            with pytest.raises(ClientError) as caught:
                client.list()
            assert (caught.value.status, caught.value.code) == (401, "unauthorized")
    with SyncClient(agent.url, token="secret", timeout=5) as client:
        assert client.list()["count"] == 0


def test_a_down_agent_is_a_clear_error(make_agent) -> None:
    with SyncClient(f"127.0.0.1:{free_port()}", timeout=1) as client:
        with pytest.raises(ClientError) as caught:
            client.health()
    assert caught.value.code == "unreachable" and "is the agent up?" in caught.value.message

    agent = make_agent()
    with SyncClient(agent.url, timeout=1) as client:
        assert client.health()["status"] == "healthy"     # endpoints discovered, then it dies
        agent.kill()
        with pytest.raises(ClientError) as caught:
            client.list()
    assert caught.value.status == 0 and caught.value.code == "timeout"
    assert "is the agent" in caught.value.message and "up?" in caught.value.message


def test_watch_reports_workloads_resources_and_a_lost_node(make_agent) -> None:
    root = make_agent("root", FAST_BUS)
    child = make_agent("child", child_config(root))
    wait_for(lambda: node_status(root, "child") == "alive", message="child alive at root")

    async def body() -> None:
        async with Client(root.url, timeout=5) as client:
            events = client.watch()
            try:
                first = await anext(events)
                assert first["type"] == "connected" and first["node_id"] == "root"
                wl = (await asyncio.to_thread(root.submit, process_spec("watched", cpu=1.5)))
                seen, res = await next_events(events, [
                    lambda e: e["type"] == "workload" and e["workload"]["id"] == wl["id"],
                    lambda e: e["type"] == "resources" and e["resources"]["allocated"]["cpu"] == 1.5])
                assert seen["source"] == "root" and seen["workload"]["name"] == "watched"
                assert res["node_id"] == "root" and res["resources"]["capacity"]["cpu"] == 8.0
                await asyncio.to_thread(child.kill)
                lost = await next_event(events, lambda e: e["type"] == "node"
                                        and e["node_id"] == "child" and e["status"] == "lost")
                assert lost["role"] == "child" and lost["source"] == "root"
            finally:
                await events.aclose()
    run(body())


def test_watch_of_an_agent_that_dies_ends_with_an_error(agent) -> None:
    async def body() -> None:
        async with Client(agent.url, timeout=1) as client:
            events = client.watch()
            try:
                assert (await anext(events))["type"] == "connected"
                await asyncio.to_thread(agent.kill)
                with pytest.raises(ClientError) as caught:
                    await next_event(events, lambda e: False)
                assert caught.value.code == "lost" and "does not answer" in caught.value.message
            finally:
                await events.aclose()
    run(body())


def test_format_event_gives_one_readable_line() -> None:
    wl = {"id": "w1", "name": "job", "type": "process", "status": "failed", "node_id": "n1",
          "exit_code": 3, "error": "boom"}
    lines = [format_event(e) for e in (
        {"type": "connected", "node_id": "n1", "pub": "tcp://h:1"},
        {"type": "resources", "source": "n1", "time": 0.0, "node_id": "n1", "seq": 4,
         "resources": {"capacity": {"cpu": 8.0, "memory": 2**34, "gpu": 1},
                       "allocated": {"cpu": 1.5, "memory": 2**29, "gpu": 0}},
         "workloads": {"count": 1}},
        {"type": "workload", "source": "n1", "time": 0.0, "workload": wl},
        {"type": "workload_deleted", "source": "n1", "time": 0.0, "id": "w1", "node_id": "n1"},
        {"type": "node", "source": "n1", "time": 0.0, "node_id": "n2", "role": "child",
         "status": "lost", "address": "http://h:2"},
        {"type": "custom", "source": "n1", "time": 0.0, "x": 1},
    )]
    assert all("\n" not in line for line in lines)
    assert "watching n1" in lines[0]
    assert "cpu 1.5/8" in lines[1] and "512.0 MiB/16.0 GiB" in lines[1] and "workloads 1" in lines[1]
    assert "w1 job (process) failed on n1 exit 3 error: boom" in lines[2]
    assert "workload_deleted w1 on n1" in lines[3]
    assert "node n2 (child) lost http://h:2" in lines[4]
    assert lines[5].endswith('custom {"x": 1}')


# -- the CLI ----------------------------------------------------------------------------------

def cnet(*args: str, env: dict[str, str] | None = None, check: bool = True,
         timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "cnet", *args], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, **(env or {})}, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"cnet {' '.join(args)}: {proc.stderr}"
    return proc


class Lines:
    """A child process's stdout, read line by line in a thread so every wait has a timeout."""

    def __init__(self, proc: subprocess.Popen[str]):
        self._queue: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, args=(proc,), daemon=True).start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        for line in proc.stdout:
            self._queue.put(line)

    def next(self, timeout: float = 15.0) -> str:
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no output line within {timeout} s") from None

    def until(self, match: Callable[[str], bool], timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            line = self.next(left)
            if match(line):
                return line
        raise AssertionError(f"no matching output line within {timeout} s")


def test_cli_submit_ls_logs_rm_over_the_bus(make_agent) -> None:
    agent = make_agent(config={"api": {"token": "secret"}})
    env = {"CNET_URL": agent.url, "CNET_API_TOKEN": "secret"}
    out = cnet("submit", "--name", "cli-job", "--cpu", "1", "--", "sh", "-c",
               "echo from-the-cli; sleep 30", env=env)
    wl = json.loads(out.stdout)
    assert wl["name"] == "cli-job" and wl["config"]["command"] == "sh"
    table = cnet("ls", env=env).stdout
    assert table.splitlines()[0].split()[:4] == ["ID", "NAME", "TYPE", "STATUS"]
    assert wl["id"] in table and "cli-job" in table
    assert json.loads(cnet("ls", "--json", env=env).stdout)["count"] == 1
    assert json.loads(cnet("ls", "--rest", "--json", env=env).stdout)["count"] == 1
    wait_for(lambda: "from-the-cli" in cnet("logs", wl["id"], "--tail", "5", env=env).stdout,
             message="the workload's log line")
    assert json.loads(cnet("rm", wl["id"], env=env).stdout)["deleted"] is True
    missing = cnet("get", wl["id"], env=env, check=False)
    assert missing.returncode == 1 and "404 not_found" in missing.stderr
    refused = cnet("ls", "--url", agent.url, "--token", "wrong", check=False)
    assert refused.returncode == 1 and "401 unauthorized" in refused.stderr
    down = cnet("health", "--url", f"127.0.0.1:{free_port()}", "--timeout", "1", check=False)
    assert down.returncode == 1 and "is the agent up?" in down.stderr


def test_cli_submit_takes_a_yaml_or_json_file(agent, tmp_path) -> None:
    env = {"CNET_URL": agent.url}
    spec = tmp_path / "job.yaml"
    spec.write_text("name: from-yaml\ntype: process\nconfig:\n  command: sleep\n  args: ['30']\n"
                    "requirements: {cpu: 1}\n")
    wl = json.loads(cnet("submit", "-f", str(spec), env=env).stdout)
    assert (wl["name"], wl["config"]["args"], wl["requirements"]["cpu"]) == ("from-yaml", ["30"], 1)
    as_json = tmp_path / "job.json"
    as_json.write_text(json.dumps({"name": "from-json", "type": "process",
                                   "config": {"command": "sleep", "args": ["30"]}}))
    assert json.loads(cnet("submit", "-f", str(as_json), env=env).stdout)["name"] == "from-json"
    (tmp_path / "bad.yaml").write_text("name: [unclosed\n")
    bad = cnet("submit", "-f", str(tmp_path / "bad.yaml"), env=env, check=False)
    assert bad.returncode == 2 and "cannot read" in bad.stderr


def test_cli_stop_resources_nodes_and_get(agent) -> None:
    env = {"CNET_URL": agent.url}
    wl = json.loads(cnet("submit", "--name", "to-stop", "--cpu", "2", "--", "sleep", "60", env=env).stdout)
    for rest in ([], ["--rest"]):
        resources = json.loads(cnet("resources", *rest, env=env).stdout)
        assert resources["node_id"] == "jiangsu" and resources["allocated"]["cpu"] == 2
        assert resources["available"]["cpu"] == resources["capacity"]["cpu"] - 2
        assert json.loads(cnet("get", wl["id"], *rest, env=env).stdout)["status"] == "running"
    assert json.loads(cnet("nodes", env=env).stdout)["self"]["node_id"] == "jiangsu"
    stopped = json.loads(cnet("stop", wl["id"], env=env).stdout)
    assert stopped["status"] == "stopped"
    assert json.loads(cnet("resources", env=env).stdout)["allocated"]["cpu"] == 0
    again = json.loads(cnet("stop", wl["id"], "--rest", env=env).stdout)   # already ended: fine
    assert again["status"] == "stopped"


def test_cli_watch_prints_events_and_stops_on_ctrl_c(agent) -> None:
    for as_json in (True, False):
        proc = subprocess.Popen([sys.executable, "-m", "cnet", "watch", "--url", agent.url,
                                 *(["--json"] if as_json else [])], cwd=REPO, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            lines = Lines(proc)
            first = lines.next()
            assert (json.loads(first)["type"] == "connected") if as_json else "watching" in first
            wl = agent.submit(process_spec(f"watched-{as_json}"))
            line = lines.until(lambda text, wid=wl["id"]: wid in text)
            if as_json:
                event = json.loads(line)
                assert event["type"] == "workload" and event["workload"]["id"] == wl["id"]
            else:
                assert f"watched-{as_json} (process)" in line and "[jiangsu] workload" in line
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=15) == 0
            assert "Traceback" not in proc.stderr.read()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
            proc.stdout.close()
            proc.stderr.close()


# -- CurveZMQ ---------------------------------------------------------------------------------

def test_keys_generate_and_a_curve_cluster(tmp_path: Path, make_agent) -> None:
    keys, rogue = tmp_path / "keys", tmp_path / "rogue"
    made = cnet("keys", "generate", str(keys), "--nodes", "root,child").stdout
    assert f"keys_dir: {keys.resolve()}" in made
    for name in ("root", "child", "client"):
        assert (keys / f"{name}.key").exists()
        assert (keys / f"{name}.key_secret").stat().st_mode & 0o077 == 0
    again = cnet("keys", "generate", str(keys), "--nodes", "root").stdout
    assert "kept" in again and "created" not in again
    # A stranger: its own pairs (a node and a client) that trust the root, unknown to the root.
    cnet("keys", "generate", str(rogue), "--nodes", "intruder")
    shutil.copy(keys / "root.key", rogue / "root.key")

    curve = {"bus": {"heartbeat_interval": 0.2, "curve": {"keys_dir": str(keys)}}}
    root = make_agent("root", curve)
    make_agent("child", child_config(root, {"bus": curve["bus"]}))
    wait_for(lambda: node_status(root, "child") == "alive", message="the keyed child alive at root")

    intruder = make_agent("intruder", child_config(root, {
        "bus": {"heartbeat_interval": 0.2, "curve": {"keys_dir": str(rogue)}}}))
    listed: list[str | None] = []

    def intruder_gave_up() -> bool:
        listed.append(node_status(root, "intruder"))
        return "no welcome within" in intruder.output.read_text()
    wait_for(intruder_gave_up, timeout=20, interval=0.1, message="the intruder's failed join")
    assert set(listed) == {None}, listed
    assert node_status(root, "child") == "alive"

    with SyncClient(root.url, curve_dir=keys, timeout=5) as client:
        assert client.health()["node_id"] == "root"
        assert client.nodes()["children"][0]["node_id"] == "child"
    assert json.loads(cnet("nodes", "--url", root.url, env={"CNET_CURVE_DIR": str(keys)})
                      .stdout)["node_id"] == "root"

    with SyncClient(root.url, timeout=5) as client, pytest.raises(ClientError) as caught:
        client.health()
    assert caught.value.code == "curve_required" and "--curve-dir" in caught.value.message
    with SyncClient(root.url, curve_dir=rogue, timeout=1) as client, \
            pytest.raises(ClientError) as caught:
        client.health()
    assert caught.value.code == "timeout" and "accepted keys" in caught.value.message

    async def watch(curve_dir: Path) -> dict:
        async with Client(root.url, curve_dir=curve_dir, timeout=5) as client:
            events = client.watch()
            try:
                return await anext(events)
            finally:
                await events.aclose()
    assert run(watch(keys))["type"] == "connected"
    with pytest.raises(ClientError) as caught:
        run(watch(rogue))
    assert caught.value.code == "refused"
