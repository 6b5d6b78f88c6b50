"""The executor contract (the seed's Init / Execute / Stop / GetStatus / GetLogs).

The manager is the only writer of workload state: an executor returns runtime facts from
``start`` and reports later changes through the ``ExecutorHost`` callbacks it is given.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Protocol

from ..errors import BadRequest

if TYPE_CHECKING:
    from ..config import Config
    from ..workload import Workload


class ExecutorHost(Protocol):
    """What an executor may call back into (implemented by the manager)."""

    config: "Config"

    def ended(self, workload_id: str, *, exit_code: int | None = None,
              message: str | None = None, success: bool | None = None) -> None:
        """The workload stopped by itself, was stopped, or gave up restarting."""

    def updated(self, workload_id: str, runtime: dict | None = None,
                restart_count: int | None = None, message: str | None = None) -> None:
        """Runtime facts changed while it runs (new pid after a restart, health, ...)."""


class Executor:
    """Base class; one subclass per workload type."""

    type: ClassVar[str] = ""

    def __init__(self, host: ExecutorHost):
        self.host = host

    def validate(self, config: dict) -> dict:
        """Check and normalise the type's ``config`` without side effects; raise BadRequest.

        Only what holds on any node: the node that receives a submission validates it, but a
        delegated workload runs elsewhere. What depends on the node itself belongs in
        ``check_here``.
        """
        return config

    def check_here(self, config: dict) -> None:
        """Check a validated ``config`` against this node (files, programs, ports); raise.

        Called by the node that admits the workload, before anything is reserved.
        """

    async def start(self, workload: "Workload") -> dict:
        """Start the workload; return runtime facts (``pid``, ``endpoint``, ...) or raise."""
        raise NotImplementedError

    async def stop(self, workload: "Workload", grace: float) -> None:
        """Stop it: ask politely, force after ``grace`` seconds; ``ended`` follows."""
        raise NotImplementedError

    def adopt(self, workload: "Workload") -> str | None:
        """After an agent restart: watch it again. Return None if adopted, else why not."""
        return "this workload type cannot be re-adopted"

    async def logs(self, workload: "Workload", tail: int) -> str:
        raise BadRequest(f"{self.type} workloads have no logs", code="no_logs")

    async def remove(self, workload: "Workload") -> None:
        """Delete what the workload left behind (files, containers); it is already ended."""

    async def health(self) -> dict | None:
        """This executor's own dependencies for ``/api/health`` (e.g. a container engine)."""
        return None

    async def close(self) -> None:
        """The agent is shutting down: stop watching, but leave workloads running."""


def require_str(config: dict, key: str, *, required: bool = True, default: str | None = None) -> str | None:
    value = config.get(key, default)
    if value is None:
        if required:
            raise BadRequest(f"config.{key}: required", code="invalid_field")
        return None
    if not isinstance(value, str) or not value:
        raise BadRequest(f"config.{key}: must be a non-empty string", code="invalid_field")
    return value


def require_str_list(config: dict, key: str) -> list[str]:
    value = config.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadRequest(f"config.{key}: must be a list of strings", code="invalid_field")
    if any("\x00" in v for v in value):
        raise BadRequest(f"config.{key}: must not contain NUL characters", code="invalid_field")
    return value


def require_str_map(config: dict, key: str) -> dict[str, str]:
    value = config.get(key) or {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and k and "=" not in k
                                              and isinstance(v, (str, int, float))
                                              and not isinstance(v, bool)
                                              for k, v in value.items()):
        raise BadRequest(f"config.{key}: must be an object of NAME: string values", code="invalid_field")
    out = {k: str(v) for k, v in value.items()}
    if any("\x00" in k or "\x00" in v for k, v in out.items()):
        raise BadRequest(f"config.{key}: must not contain NUL characters", code="invalid_field")
    return out
