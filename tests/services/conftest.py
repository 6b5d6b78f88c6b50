"""Fixtures for the inference service tests: real service processes on free ports, shared models, photos."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import psutil
import pytest
import requests

from tests.harness import wait_for  # noqa: F401  (the service tests import it from here)
from tests.ports import free_port  # noqa: F401  (likewise)

REPO = Path(__file__).resolve().parents[2]
MODELS_DIR = Path(os.environ.get("CNET_MODELS_DIR", REPO.parent / "shared" / "models"))
START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
HTTP_TIMEOUT = 60.0



def pids_gone(pids: list[int]) -> bool:
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            continue
    return True


class Service:
    """One inference program started as a real process, with its stderr in a file."""

    def __init__(self, module: str, args: list[str], log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.command = [sys.executable, "-m", module, "--port", str(self.port), *args]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Service:
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=log, cwd=REPO)
        wait_for(self._healthy, timeout=START_TIMEOUT, message=f"{self.url}/health")
        return self

    def _healthy(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            pytest.fail(f"service exited with {self.process.returncode}:\n{self.log()}")
        try:
            return requests.get(f"{self.url}/health", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def health(self) -> dict:
        return requests.get(f"{self.url}/health", timeout=HTTP_TIMEOUT).json()

    def worker_pids(self) -> list[int]:
        return [child.pid for child in psutil.Process(self.pid).children()]

    def predict(self, **kwargs) -> requests.Response:
        kwargs.setdefault("timeout", HTTP_TIMEOUT)
        return requests.post(f"{self.url}/predict", **kwargs)

    def stop(self) -> None:
        """SIGTERM the shim, wait for it, and check that no worker outlives it."""
        if self.process is None or self.process.poll() is not None:
            return
        workers = self.worker_pids()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=STOP_TIMEOUT)
            pytest.fail("service did not stop on SIGTERM")
        wait_for(lambda: pids_gone(workers), timeout=STOP_TIMEOUT, message=f"workers {workers} to exit")

    def kill_all(self) -> None:
        """Last-resort cleanup: the shim and any worker still around."""
        if self.process is None:
            return
        try:
            children = psutil.Process(self.pid).children()
        except psutil.NoSuchProcess:
            children = []
        for proc in [*children]:
            proc.kill()
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=STOP_TIMEOUT)


class ServiceSet:
    """Services started by one fixture, all stopped (and checked for orphans) at teardown."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.services: list[Service] = []

    def start(self, module: str, *args: str) -> Service:
        service = Service(module, list(args), self.log_dir / f"service-{len(self.services)}.log")
        self.services.append(service)
        return service.start()

    def stop_all(self) -> None:
        errors = []
        for service in self.services:
            try:
                service.stop()
            except BaseException as exc:  # clean up the rest before failing
                errors.append(exc)
                service.kill_all()
        if errors:
            raise errors[0]


@pytest.fixture
def start_service(tmp_path: Path) -> Iterator[Callable[..., Service]]:
    """Factory for this test: ``start_service("services.inference.yolo_service", "--model", p)``."""
    services = ServiceSet(tmp_path)
    yield services.start
    services.stop_all()


@pytest.fixture(scope="module")
def start_module_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Service]]:
    """The same factory, for services shared by every test of a module."""
    services = ServiceSet(tmp_path_factory.mktemp("services"))
    yield services.start
    services.stop_all()


def model_path(name: str) -> Path:
    path = MODELS_DIR / name
    if not path.is_file():
        pytest.skip(f"shared models not found: {path} (set CNET_MODELS_DIR)")
    return path


@pytest.fixture(scope="session")
def photos() -> dict[str, bytes]:
    """scikit-image's bundled photos as PNG files (lossless, so pixels match exactly)."""
    skimage_data = pytest.importorskip("skimage.data")
    out = {}
    for name in ("astronaut", "coffee", "chelsea"):
        rgb = getattr(skimage_data, name)()
        ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        assert ok
        out[name] = png.tobytes()
    return out
