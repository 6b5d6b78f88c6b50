"""The seed README's own command lines and files: `make build`, the programs in bin/,
config.yaml at the root and configs/config_<node>.yaml, tried as a seed user types them."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import psutil
import pytest
import requests
import yaml

from cnet import cli, config, topology

from .harness import MODELS_DIR, REPO, free_port, wait_for

# The seed's command lines, as its README writes them.
SEED_BUILD = "make build"
SEED_AGENT = "./bin/cnet-agent -config config.yaml"
SEED_YOLO = "./bin/cnet-inference-yolo --model models/yolo11n.onnx --port 9001"
# The seed names these two programs without a command line; these are its workloads' settings
# (opencv: cascade_type face on 9000; datagateway: 9091, 127.0.0.1, /tmp/cnet_data, cnet).
SEED_OPENCV = "./bin/cnet-inference-opencv --cascade face --port 9000"
SEED_GATEWAY = ("./bin/cnet-gateway-data --port 9091 --host 127.0.0.1 "
                "--base-path /tmp/cnet_data --bucket cnet")
SEED_PROGRAMS = ("cnet-agent", "cnet-inference-yolo", "cnet-inference-opencv", "cnet-gateway-data")
SEED_NODES = ("jiangsu", "nanjing", "suqian", "changzhou")
YOLO_MODEL = MODELS_DIR / "yolo11n-320-int8.onnx"   # the seed's models/yolo11n.onnx


@pytest.fixture
def seed_root(tmp_path) -> Path:
    """A private repository root holding what the seed's commands read: the Makefile,
    config.yaml, models/ and .venv (a link to the venv running these tests), with bin/ made
    by ``make build``. Private, so its bin/ and config edits never touch the real tree."""
    root = tmp_path / "cnet"
    root.mkdir()
    for name in ("Makefile", "config.yaml"):
        shutil.copy2(REPO / name, root / name)
    (root / ".venv").symlink_to(sys.prefix)
    (root / "models").mkdir()
    if YOLO_MODEL.is_file():
        (root / "models" / "yolo11n.onnx").symlink_to(YOLO_MODEL)
    # `make build` as typed, except that the install step (venv + pip install) counts as done:
    # the venv running this test already has CNET installed, and must not be reinstalled from here.
    result = subprocess.run([*shlex.split(SEED_BUILD), "-s", "-o", ".venv/bin/.installed"],
                            cwd=root, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return root


def test_make_build_puts_the_seeds_programs_in_bin(seed_root):
    for name in SEED_PROGRAMS:
        launcher = seed_root / "bin" / name
        assert os.access(launcher, os.X_OK), f"bin/{name} missing or not executable"
        result = subprocess.run([f"./bin/{name}", "--help"], cwd=seed_root, capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert f"usage: {name}" in result.stdout


def test_bin_is_ignored_by_git():
    result = subprocess.run(["git", "check-ignore", "-q", "bin/cnet-agent"], cwd=REPO, timeout=30)
    assert result.returncode == 0, "bin/ (made by `make build`) should be in .gitignore"


def test_default_config_is_the_seeds_single_node():
    cfg = config.load(REPO / "config.yaml")
    assert (cfg.node_id, cfg.port) == ("jiangsu", 8080)   # where the seed's quick start sends requests
    assert cfg.db_path == Path("/tmp/cnet_storage.db")
    assert cfg.data_path == Path("/tmp/cnet_data")
    assert (cfg.capacity.cpu, cfg.capacity.memory, cfg.capacity.storage) == \
        (8.0, 17179869184, 214748364800)
    assert cfg.log_format == "json"
    assert cfg.parent is None and cfg.peers == []          # starts alone


def test_seed_agent_command_starts_a_single_node(seed_root, tmp_path):
    # The command line is the seed's, run as typed. config.yaml is the checked-in one with only
    # its fixed ports and /tmp paths moved: 8080 (and the bus's 9080/10080) may be in use on
    # this machine, and /tmp/cnet_storage.db may be another agent's.
    path = seed_root / "config.yaml"
    raw = yaml.safe_load(path.read_text())
    port = free_port()
    raw["agent"].update(port=port, state_dir=str(tmp_path / "state"))
    raw["bus"] = {"router_port": free_port(), "pub_port": free_port()}
    raw["storage"]["sqlite"] = {"db_path": str(tmp_path / "cnet_storage.db"),
                                "data_path": str(tmp_path / "cnet_data")}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    url = f"http://127.0.0.1:{port}"
    with _Running(SEED_AGENT, seed_root, tmp_path / "agent.out") as agent:
        assert agent.health(url + "/api/health", timeout=30)["status"] == "healthy"
        nodes = requests.get(url + "/api/nodes", timeout=10).json()
        assert nodes["parent"] is None and nodes["peers"] == [] and nodes["children"] == []
        local = requests.get(url + "/api/resources", timeout=10).json()
        assert local["node_id"] == "jiangsu"
        assert local["capacity"]["cpu"] == 8.0


@pytest.mark.parametrize("line", [SEED_YOLO, SEED_OPENCV, SEED_GATEWAY],
                         ids=["yolo", "opencv", "gateway"])
def test_seed_service_commands_serve_health(seed_root, tmp_path, line):
    if "models/yolo11n.onnx" in line and not YOLO_MODEL.is_file():
        pytest.skip(f"no YOLO model at {YOLO_MODEL} (set CNET_MODELS_DIR)")
    # As typed, but on a free port (9001, 9000 and 9091 may be in use here) and, for the
    # gateway, a private base path instead of the shared /tmp/cnet_data.
    port = free_port()
    argv = shlex.split(line)
    argv[argv.index("--port") + 1] = str(port)
    if "--base-path" in argv:
        base = tmp_path / "cnet_data"
        base.mkdir()
        argv[argv.index("--base-path") + 1] = str(base)
    with _Running(shlex.join(argv), seed_root, tmp_path / "service.out") as service:
        health = service.health(f"http://127.0.0.1:{port}/health", timeout=90)
    if "--model" in argv:   # the seed: {"status": "healthy", "model": "models/yolo11n.onnx"}
        assert (health["status"], health["model"]) == ("healthy", "models/yolo11n.onnx")


def test_cnet_agent_takes_config_with_one_dash_or_two(tmp_path, capsys):
    missing = str(tmp_path / "nope.yaml")
    for argv in (["-config", missing], ["--config", missing]):
        assert cli.agent_main(argv) == 2
        assert "cannot read" in capsys.readouterr().err
    assert cli.main(["agent", "-config", missing]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_configs_are_what_cnet_configs_makes_of_the_topology(tmp_path):
    (tmp_path / "topologies").mkdir()
    shutil.copy2(REPO / "topologies" / "jiangsu.yaml", tmp_path / "topologies")
    result = subprocess.run([sys.executable, "-m", "cnet", "configs", "topologies/jiangsu.yaml",
                             "--out", "configs"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    made = {p.name: p.read_text() for p in (tmp_path / "configs").iterdir()}
    checked_in = {p.name: p.read_text() for p in (REPO / "configs").iterdir()}
    assert sorted(made) == sorted(f"config_{n}.yaml" for n in SEED_NODES)
    assert checked_in == made, "configs/ differs from topologies/jiangsu.yaml: run `make configs`"


@pytest.mark.parametrize("node_id", SEED_NODES)
def test_each_config_is_its_topology_node(node_id):
    topo = topology.load(REPO / "topologies" / "jiangsu.yaml")
    want = topo.agent_config(node_id)
    got = config.load(REPO / "configs" / f"config_{node_id}.yaml")
    # Paths: relative to the cwd in the file (run/<node>), resolved by the topology loader.
    assert got.state_dir == Path("run") / node_id
    assert want.state_dir == Path("run").resolve() / node_id

    def without_paths(cfg: config.Config) -> dict:
        fields = asdict(cfg)
        for key in ("state_dir", "db_path", "data_path", "log_dir"):
            fields.pop(key)
        return fields
    assert without_paths(got) == without_paths(want)


def test_readme_quick_start_shows_both_ways():
    readme = (REPO / "README.md").read_text()
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    for line in (SEED_BUILD, SEED_AGENT, "make run"):
        assert line in quick, f"README's quick start lacks `{line}`"


class _Running:
    """A command line started in its own process group; on exit, stopped with SIGTERM and
    its group (service workers included) gone, killed if need be."""

    def __init__(self, line: str, cwd: Path, log: Path):
        self.line, self.cwd, self.log = line, cwd, log

    def __enter__(self) -> "_Running":
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(shlex.split(self.line), cwd=self.cwd, stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        return self

    def health(self, url: str, timeout: float) -> dict:
        """The first 200 answer of ``url``; fails at once if the command exits."""
        def answer() -> dict | bool:
            if self.proc.poll() is not None:
                return {"exited": self.proc.returncode}
            resp = requests.get(url, timeout=2)
            return resp.status_code == 200 and resp.json()
        body = wait_for(answer, timeout=timeout, message=f"`{self.line}` to answer {url}")
        assert "exited" not in body, (f"`{self.line}` exited with {body.get('exited')}:\n"
                                      + self.log.read_text()[-3000:])
        return body

    def __exit__(self, *exc) -> None:
        pgid = self.proc.pid
        try:
            if self.proc.poll() is None:
                self.proc.terminate()
            self.proc.wait(timeout=30)
            wait_for(lambda: not _group(pgid), timeout=15,
                     message=f"the processes of `{self.line}` to exit")
        finally:
            for proc in _group(pgid):
                proc.kill()
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(timeout=10)


def _group(pgid: int) -> list[psutil.Process]:
    """The live (not zombie) processes of a process group."""
    members = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                members.append(proc)
        except (psutil.Error, OSError):
            pass
    return members
