"""Curve on the multi-host bed: a small cluster of its own (namespaces beside the session's bed)
where the parent accepts its child's key and not a stranger's; both sides say why in their logs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from bus.refusals import fingerprint
from bus.security import CurveKeys, generate_keys

from ..harness import wait_for
from .conftest import side_root
from .machines import HTTP_PORT, SideCluster

# jiangsu accepts nanjing's key; suqian has a key pair of its own that jiangsu does not accept.
TOPOLOGY = {"jiangsu": {}, "nanjing": {"parent": "jiangsu"}, "suqian": {}}
PARENT_ADDRESS = f"10.77.0.10:{HTTP_PORT}"    # the first machine of the topology


def _keys(root: Path) -> dict[str, Path]:
    """One keys dir per machine: its own pair plus the public keys it accepts."""
    made = root / "made"
    for name in ("jiangsu", "nanjing", "client"):
        generate_keys(made, name)
    generate_keys(made / "stranger", "suqian")
    dirs = {}
    for node, accepts in (("jiangsu", ("nanjing", "client")), ("nanjing", ("jiangsu",)),
                          ("suqian", ("jiangsu", "nanjing"))):
        folder = dirs[node] = root / f"keys-{node}"
        folder.mkdir(parents=True)
        source = made / "stranger" if node == "suqian" else made
        for suffix in (".key", ".key_secret"):
            shutil.copy(source / f"{node}{suffix}", folder / f"{node}{suffix}")
        for other in accepts:
            shutil.copy(made / f"{other}.key", folder / f"{other}.key")
        os.chmod(folder / f"{node}.key_secret", 0o600)
    return dirs


@pytest.fixture(scope="module")
def curve_cluster():
    root = side_root("curve")
    shutil.rmtree(root, ignore_errors=True)
    dirs = _keys(root)
    node_config = {n: {"bus": {"curve": {"keys_dir": str(d)}}} for n, d in dirs.items()}
    # The stranger points at jiangsu as its parent; the topology leaves that link out, so the
    # cluster's start waits for the links that should come up and not for this one.
    node_config["suqian"]["parent"] = {"enabled": True, "address": PARENT_ADDRESS}
    cluster = SideCluster(root, TOPOLOGY, "curve", node_config=node_config)
    try:
        yield cluster.start(), dirs
    finally:
        cluster.teardown(bool(os.environ.get("CNET_MULTIHOST_KEEP")))


def _log(machine) -> str:
    return machine.log_path.read_text(errors="replace") if machine.log_path.exists() else ""


def test_a_node_with_a_key_the_parent_does_not_accept_is_refused_and_both_sides_log_why(curve_cluster):
    cluster, dirs = curve_cluster
    root, child, stranger = cluster["jiangsu"], cluster["nanjing"], cluster["suqian"]
    assert root.nodes()["nanjing"]["status"] == "alive"         # Curve itself works here
    key = CurveKeys.load(dirs["suqian"], "suqian").public_text
    wanted = f"key {fingerprint(key)}"
    try:
        refusal = wait_for(lambda: next((line for line in _log(root).splitlines()
                                         if "refused a connection" in line and wanted in line), None),
                           timeout=10, interval=0.1, message="jiangsu's refusal of suqian's key")
        hint = wait_for(lambda: next((line for line in _log(stranger).splitlines()
                                      if "no welcome within" in line), None),
                        timeout=10, interval=0.1, message="suqian's guess at why")
    except TimeoutError as exc:
        pytest.fail(f"{exc}\n{cluster.logs()}")
    print(refusal, hint, sep="\n")
    assert "Curve key is not accepted" in refusal and str(dirs["jiangsu"]) in refusal, refusal
    assert stranger.host.address in refusal, refusal
    assert "is this node's Curve key among those it accepts?" in hint, hint
    assert "10.77.0.10" in hint, hint
    assert "suqian" not in root.nodes()
    assert stranger.nodes() == {} or stranger.nodes()["jiangsu"]["status"] != "alive"
    assert set(root.nodes()) == {"nanjing"} and child.nodes()["jiangsu"]["status"] == "alive"
    # Once a minute per peer, not at every retry of the stranger.
    wait_for(lambda: _log(stranger).count("no welcome within") >= 2, timeout=10, interval=0.1,
             message="suqian to try again")
    assert sum("refused a connection" in line and wanted in line
               for line in _log(root).splitlines()) == 1
