"""The container engine connection: one Docker Engine API endpoint reached through the ``docker``
SDK (imported on first contact), its errors translated into CnetErrors, and exit-code wording.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator

from ..errors import BadRequest, CnetError, Conflict, NotFound, Unavailable

if TYPE_CHECKING:
    from docker import DockerClient

__all__ = ["CALL_TIMEOUT", "DEFAULT_ENGINE", "Engine", "describe_exit"]

log = logging.getLogger(__name__)

DEFAULT_ENGINE = "unix:///var/run/docker.sock"
CALL_TIMEOUT = 15.0     # one engine request (inspect, create, start, remove, ...)


class Engine:
    """One Docker Engine API endpoint and its lazily created SDK client.

    Every method blocks: call it from a worker thread, never from the event loop.
    """

    def __init__(self, url: str | None):
        self.configured = url
        self.url = url or os.environ.get("DOCKER_HOST") or DEFAULT_ENGINE
        self._client: DockerClient | None = None
        self._lock = threading.Lock()
        self.ncpu: int | None = None  # 0: the engine did not say
        self.version: dict | None = None

    def client(self) -> "DockerClient":
        with self._lock:
            if self._client is None:
                if (missing := self.absent()) is not None:
                    raise missing
                import docker  # ~8 MB: only once a container workload or health check needs it

                with self.translated("connecting"):
                    # Creating the client asks the engine for its API version.
                    if self.configured:
                        client = docker.DockerClient(base_url=_base_url(self.configured),
                                                     timeout=CALL_TIMEOUT, max_pool_size=64)
                    else:  # DOCKER_HOST (and DOCKER_TLS_VERIFY / DOCKER_CERT_PATH) or the default
                        client = docker.DockerClient.from_env(timeout=CALL_TIMEOUT,
                                                              max_pool_size=64)
                self._client = client
                log.info("container engine at %s (API %s)", self.url, client.api.api_version)
            return self._client

    def absent(self) -> Unavailable | None:
        """Unavailable if the engine's socket is not there: said without importing the SDK
        (nodes without an engine stay small) and without blocking, so on any thread."""
        socket = _socket_path(self.url)
        if socket is not None and not os.path.exists(socket):
            return self.unavailable(f"no socket at {socket}")
        return None

    def cpus(self) -> int | None:
        """The engine host's cpu count (engines refuse a cpu limit above it)."""
        if self.ncpu is None:
            client = self.client()
            with self.translated("reading the engine's info"):
                self.ncpu = client.info().get("NCPU") or 0
        return self.ncpu or None

    def describe(self) -> dict:
        """``{"engine", "status": "up", "name", "version", "api_version"}`` or raise Unavailable."""
        client = self.client()
        with self.translated("checking the engine"):
            client.ping()
            if self.version is None:
                self.version = client.version()
        components = self.version.get("Components") or [{}]
        return {"engine": self.url, "status": "up",
                "name": components[0].get("Name") or "Docker Engine",
                "version": self.version.get("Version"),
                "api_version": self.version.get("ApiVersion")}

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def unavailable(self, reason: str) -> Unavailable:
        return Unavailable(f"container engine at {self.url} is not reachable ({reason}); "
                           "start Docker or the Podman service, or set container.engine_url",
                           code="engine_unavailable", details={"engine": self.url})

    @contextmanager
    def translated(self, doing: str) -> Iterator[None]:
        """Turn SDK and transport exceptions into CnetErrors a caller can show."""
        import docker.errors
        import requests.exceptions

        try:
            yield
        except CnetError:
            raise
        except docker.errors.NotFound as exc:
            raise NotFound(f"{doing}: {exc.explanation or exc}", code="container_not_found") from None
        except docker.errors.APIError as exc:
            text = str(exc.explanation or exc)
            if "address already in use" in text or "port is already allocated" in text:
                raise Conflict(f"config.ports: a host port is already in use on this node "
                               f"(engine: {text})", code="port_in_use") from None
            if exc.is_server_error():
                raise CnetError(f"container engine error while {doing}: {text}",
                                code="engine_error", status=502) from None
            raise BadRequest(f"container engine refused {doing}: {text}",
                             code="engine_rejected") from None
        except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as exc:
            raise self.unavailable(_reason(exc)) from None


def _base_url(url: str) -> str:
    """Accept a bare socket path as well as ``unix://``, ``tcp://``, ``ssh://`` URLs."""
    return f"unix://{url}" if url.startswith("/") else url


def _socket_path(url: str) -> str | None:
    """The file of a ``unix://`` (or bare path) engine URL; None for tcp:// or ssh://."""
    if url.startswith("unix://"):
        return url[len("unix://"):]
    return url if url.startswith("/") else None


def _reason(exc: BaseException) -> str:
    """A short cause from the SDK's nested transport errors."""
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        err = pending.pop()
        if id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(err, FileNotFoundError):
            return "no socket at that path"
        if isinstance(err, ConnectionRefusedError):
            return "connection refused"
        if isinstance(err, (TimeoutError, FutureTimeout)) or "timed out" in str(err).lower():
            return "no answer in time"
        pending.extend(a for a in getattr(err, "args", ()) if isinstance(a, BaseException))
        pending.extend(e for e in (err.__cause__, err.__context__) if e is not None)
    text = str(exc)
    return text if len(text) <= 200 else text[:200] + "..."


def describe_exit(code: int | None, state: dict | None = None) -> str:
    """What a container's exit code means ("exited with code 3", "killed by SIGKILL (137)")."""
    state = state or {}
    if state.get("OOMKilled"):
        return f"killed: out of memory (exit code {code})"
    if code is None:
        return "ended; exit code unknown"
    text = f"exited with code {code}"
    if code > 128:
        try:
            text = f"killed by {signal.Signals(code - 128).name} (exit code {code})"
        except ValueError:
            pass
    if state.get("Error"):
        text += f": {state['Error']}"
    return text
