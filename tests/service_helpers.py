"""Helpers for service workload tests: a fake service install, process groups, ports."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import psutil

from .harness import wait_for

FAKE_SERVICE = Path(__file__).resolve().parent / "fake_service.py"
PROGRAMS = ("cnet-inference-yolo", "cnet-inference-opencv", "cnet-gateway-data")

# Fast supervision for tests: a crash or a failed check is acted on within a fraction of a second.
FAST_SERVICES = {"services": {"health_interval": 0.2, "health_timeout": 2.0,
                              "restart_backoff": 0.05, "start_timeout": 30}}


def fake_install(root: Path) -> tuple[dict, Path]:
    """A bin dir whose service programs all run ``fake_service.py``; returns (agent env, flag dir)."""
    bin_dir, flags = root / "fake-bin", root / "fake-flags"
    bin_dir.mkdir(parents=True, exist_ok=True)
    flags.mkdir(parents=True, exist_ok=True)
    for name in PROGRAMS:
        script = bin_dir / name
        script.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_SERVICE}" "$@"\n')
        script.chmod(0o755)
    return {"CNET_SERVICE_BIN_DIR": str(bin_dir), "FAKE_SERVICE_DIR": str(flags)}, flags


def group_pids(pgid: int) -> set[int]:
    """Live (non-zombie) processes in process group ``pgid``."""
    out = set()
    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(proc.pid) == pgid:
                out.add(proc.pid)
        except (psutil.Error, OSError):
            continue
    return out


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def wait_gone(pids: set[int], timeout: float = 15.0) -> None:
    wait_for(lambda: not any(alive(p) for p in pids), timeout=timeout,
             message=f"processes {sorted(pids)} to end")


def wait_restarted(agent, workload_id: str, count: int, old_pid: int, timeout: float = 30.0) -> dict:
    """Wait until the workload runs again with ``restart_count == count`` and a new pid."""
    def restarted():
        wl = agent.workload(workload_id)
        return (wl["restart_count"] == count and wl["status"] == "running"
                and wl["process_pid"] not in (None, old_pid)) and wl
    return wait_for(restarted, timeout=timeout, message=f"{workload_id} restart {count}")
