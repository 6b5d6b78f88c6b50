"""The Python client library: any agent's operations over its ZeroMQ ROUTER, and its live events.

    async with Client("127.0.0.1:8080", token="t") as client:
        wl = (await client.submit(spec))["workload"]
        async for event in client.watch():
            print(event["type"], event)

:class:`SyncClient` wraps the same calls for scripts and the CLI. Every failure is a
:class:`ClientError`; every wait has a timeout, so a down agent gives an error, never a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path
from typing import Any, Self, TypeVar

from bus import (
    BusClient,
    BusError,
    CurveKeys,
    DiscoveryError,
    Endpoints,
    Event,
    RemoteError,
    RequestTimeout,
    Update,
    Watcher,
    discover_http,
)

from . import ops

__all__ = ["CLIENT_KEY_NAME", "Client", "ClientError", "SyncClient", "event_dict"]

CLIENT_KEY_NAME = "client"          # the key pair a client loads from its curve_dir
_RESOURCE_KEYS = ("capacity", "allocated", "available", "usage")

T = TypeVar("T")


class ClientError(Exception):
    """An operation failed. ``status`` is the HTTP status the agent gave (0 when it gave none:
    unreachable, timed out, refused); ``code`` is machine-readable, ``message`` for people."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{status} {code}: {message}" if status else f"{code}: {message}")
        self.status, self.code, self.message = status, code, message


def _base_url(url_or_hostport: str) -> str:
    text = url_or_hostport.strip().rstrip("/")
    return text if "://" in text else f"http://{text}"


def event_dict(msg: Update | Event) -> dict[str, Any]:
    """A published bus message as a plain dict: ``type`` plus its fields, ``source`` (the agent
    that published it) and ``time`` (its wall clock when sent).

    * ``resources``: ``node_id``, ``seq``, ``resources`` (capacity/allocated/available/usage),
      ``workloads`` (count, names) and ``summary`` (a parent's subtree) when given;
    * ``workload``: ``workload``, the workload's full dict;
    * other kinds (``workload_deleted``, ``node`` ...): the event's data fields.
    """
    base = {"source": msg.node_id, "time": msg.sent_at}
    if isinstance(msg, Update):
        snap = msg.snapshot
        out = {"type": "resources", **base, "node_id": msg.node_id, "seq": msg.seq,
               "resources": {k: snap[k] for k in _RESOURCE_KEYS if k in snap}}
        if "workloads" in snap:
            out["workloads"] = snap["workloads"]
        if msg.summary:
            out["summary"] = msg.summary
        return out
    if msg.kind == "workload":
        return {"type": "workload", **base, "workload": msg.data}
    return {**msg.data, "type": msg.kind, **base}


class Client:
    """Talks to one agent over its bus. ``url_or_hostport`` is its HTTP address (``host:port``
    or ``http://host:port``), where ``GET /api/bus`` says where the bus listens.

    With ``curve_dir`` (made by ``cnet keys generate``) the client loads the ``client`` key pair
    from it and only talks to an agent whose key is accepted there. ``timeout`` bounds every
    wait: discovery, each reply, the watch handshake.
    """

    def __init__(self, url_or_hostport: str, token: str | None = None, timeout: float = 10.0,
                 curve_dir: str | os.PathLike[str] | None = None):
        self.url = _base_url(url_or_hostport)
        self.token = token or None
        self.timeout = timeout
        self.curve_dir = Path(curve_dir) if curve_dir else None
        self._curve: CurveKeys | None = None
        self._endpoints: Endpoints | None = None
        self._bus: BusClient | None = None

    # -- connection ----------------------------------------------------------------------

    async def endpoints(self) -> Endpoints:
        """The agent's bus endpoints (looked up once, with ``GET /api/bus``)."""
        if self._endpoints is None:
            try:
                found = await discover_http(self.url, timeout=self.timeout)
            except DiscoveryError as exc:
                raise ClientError(0, "unreachable", f"cannot reach the agent: {exc}; "
                                  "is the agent up?") from None
            self._curve = self._load_curve(found)
            self._endpoints = found
        return self._endpoints

    def _load_curve(self, found: Endpoints) -> CurveKeys | None:
        if found.curve_key and self.curve_dir is None:
            raise ClientError(0, "curve_required", f"the agent at {self.url} uses CurveZMQ: give "
                              "the keys directory (--curve-dir or CNET_CURVE_DIR)")
        if self.curve_dir is None:
            return None
        if not found.curve_key:
            raise ClientError(0, "curve_unsupported", f"the agent at {self.url} does not use "
                              "CurveZMQ (bus.curve is not configured); drop the keys directory")
        try:
            keys = CurveKeys.load(self.curve_dir, CLIENT_KEY_NAME)
        except (OSError, ValueError) as exc:
            raise ClientError(0, "curve_keys", f"no client key pair in {self.curve_dir} ({exc}); "
                              "run `cnet keys generate`") from None
        if not keys.trusts(found.curve_key):
            raise ClientError(0, "curve_untrusted", f"the agent's public key is not among the "
                              f"accepted keys in {self.curve_dir}")
        return keys

    async def _client(self) -> BusClient:
        if self._bus is None:
            found = await self.endpoints()
            self._bus = BusClient(found.router, timeout=self.timeout, curve=self._curve,
                                  server_key=found.curve_key)
        return self._bus

    def _hint(self) -> str:
        if self._curve is not None:
            return (f"is the agent at {self.url} up, and is {self.curve_dir}/"
                    f"{CLIENT_KEY_NAME}.key among its accepted keys?")
        return f"is the agent at {self.url} up?"

    async def call(self, op: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        """Any client operation of the agent by name (:data:`cnet.ops.OPS`); the result or
        :class:`ClientError`."""
        bus = await self._client()
        try:
            return await bus.call(op, args or {}, token=self.token)
        except RemoteError as exc:
            status = exc.details.get("status")
            raise ClientError(status if isinstance(status, int) else 500, exc.code,
                              exc.message) from None
        except RequestTimeout:
            raise ClientError(0, "timeout", f"no reply to {op!r} within {self.timeout:g} s; "
                              f"{self._hint()}") from None
        except BusError as exc:
            raise ClientError(0, exc.code, f"{exc.message}; {self._hint()}") from None

    async def close(self) -> None:
        if self._bus is not None:
            await self._bus.close()
            self._bus = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- operations ----------------------------------------------------------------------

    async def run(self, op: ops.Operation) -> dict[str, Any]:
        """Run one operation (:mod:`cnet.ops`) on the agent: what the agent's ``run`` returns."""
        return await self.call(op.name, op.args())

    async def submit(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Submit a workload: ``{"workload": {...}, "created": bool}`` (False: it already existed)."""
        return await self.run(ops.Submit(workload=spec))

    async def list(self, status: str | None = None, type: str | None = None,
                   scope: str = "local") -> dict[str, Any]:
        """``{"node_id", "scope", "workloads": [...], "count"}``; ``scope="subtree"`` adds the
        nodes below."""
        return await self.run(ops.List(status=status, type=type, scope=scope))

    async def get(self, workload_id: str) -> dict[str, Any]:
        return await self.run(ops.Get(id=workload_id))

    async def stop(self, workload_id: str) -> dict[str, Any]:
        return await self.run(ops.Stop(id=workload_id))

    async def scale(self, set_id: str, replicas: int) -> dict[str, Any]:
        """Grow or shrink a replica set to ``replicas`` members: the set as it is then."""
        return await self.run(ops.Scale(id=set_id, replicas=replicas))

    async def delete(self, workload_id: str) -> dict[str, Any]:
        """Stop (if running) and delete: ``{"id", "deleted": True}``."""
        return await self.run(ops.Delete(id=workload_id))

    async def logs(self, workload_id: str, tail: int = 100) -> str:
        """The last ``tail`` lines of the workload's log, as text."""
        return str((await self.run(ops.Logs(id=workload_id, tail=tail))).get("logs", ""))

    async def nodes(self) -> dict[str, Any]:
        return await self.run(ops.Nodes())

    async def resources(self) -> dict[str, Any]:
        return await self.run(ops.ResourcesOp())

    async def health(self) -> dict[str, Any]:
        return await self.run(ops.Health())

    # -- live events ---------------------------------------------------------------------

    async def watch(self) -> AsyncIterator[dict[str, Any]]:
        """Live events from the agent's PUB, as :func:`event_dict` gives them.

        The first event is ``{"type": "connected", "node_id", "pub"}``, once the subscription
        is live: everything published after it arrives. After ``timeout`` seconds of silence
        the agent is asked for its health; if it does not answer, :class:`ClientError`.
        """
        found = await self.endpoints()
        try:
            watcher = Watcher(found.pub, curve=self._curve, server_key=found.curve_key)
        except BusError as exc:
            raise ClientError(0, exc.code, exc.message) from None
        try:
            try:
                await watcher.connected(self.timeout)
            except RequestTimeout:
                raise ClientError(0, "timeout", f"no connection to {found.pub} within "
                                  f"{self.timeout:g} s; {self._hint()}") from None
            except BusError as exc:
                raise ClientError(0, "refused", exc.message) from None
            yield {"type": "connected", "node_id": found.node_id, "pub": found.pub}
            while True:
                try:
                    msg = await watcher.next(timeout=self.timeout)
                except RequestTimeout:
                    await self._still_there()
                    continue
                yield event_dict(msg)
        finally:
            watcher.close()

    async def _still_there(self) -> None:
        try:
            await self.health()
        except ClientError as exc:
            if exc.status:      # it answered, if only with an error (e.g. 401): it is there
                return
            raise ClientError(0, "lost", f"the agent at {self.url} went quiet and does not "
                              f"answer ({exc.message})") from None


class SyncClient:
    """:class:`Client` for synchronous code: the same methods, run on a private event loop.

    Use it from one thread; ``close()`` it (or use ``with``) to release the loop and sockets.
    """

    def __init__(self, url_or_hostport: str, token: str | None = None, timeout: float = 10.0,
                 curve_dir: str | os.PathLike[str] | None = None):
        self._loop = asyncio.new_event_loop()
        self.client = Client(url_or_hostport, token=token, timeout=timeout, curve_dir=curve_dir)

    def _run(self, step: Awaitable[T]) -> T:
        task = asyncio.ensure_future(step, loop=self._loop)
        try:
            return self._loop.run_until_complete(task)
        except BaseException:       # Ctrl-C included: never leave the task half-run
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    self._loop.run_until_complete(task)
            raise

    def submit(self, spec: dict[str, Any]) -> dict[str, Any]:
        return self._run(self.client.submit(spec))

    def list(self, status: str | None = None, type: str | None = None,
             scope: str = "local") -> dict[str, Any]:
        return self._run(self.client.list(status, type, scope))

    def get(self, workload_id: str) -> dict[str, Any]:
        return self._run(self.client.get(workload_id))

    def stop(self, workload_id: str) -> dict[str, Any]:
        return self._run(self.client.stop(workload_id))

    def scale(self, set_id: str, replicas: int) -> dict[str, Any]:
        return self._run(self.client.scale(set_id, replicas))

    def delete(self, workload_id: str) -> dict[str, Any]:
        return self._run(self.client.delete(workload_id))

    def logs(self, workload_id: str, tail: int = 100) -> str:
        return self._run(self.client.logs(workload_id, tail))

    def nodes(self) -> dict[str, Any]:
        return self._run(self.client.nodes())

    def resources(self) -> dict[str, Any]:
        return self._run(self.client.resources())

    def health(self) -> dict[str, Any]:
        return self._run(self.client.health())

    def watch(self) -> Iterator[dict[str, Any]]:
        """:meth:`Client.watch` as a plain generator; closing it closes the subscription."""
        events = self.client.watch()
        try:
            while True:
                try:
                    yield self._run(anext(events))
                except StopAsyncIteration:
                    return
        finally:
            self._run(events.aclose())

    def close(self) -> None:
        if not self._loop.is_closed():
            self._run(self.client.close())
            self._loop.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
