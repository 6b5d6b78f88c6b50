"""Running the agent's request handler: one task per request, errors turned into error replies.

The handler never sees a socket: it gets the :class:`Request` and who sent it, returns a result
dict, or raises an error carrying ``code`` and ``message`` (``bus.errors.RemoteError``, or the
agent's own error type with those attributes). Any other exception becomes an ``internal`` error
reply and a logged traceback; nothing a handler does can stop the transport.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from bus.protocol import Reply, Request, encode

__all__ = ["Dispatcher", "Handler", "Sender", "error_reply"]

log = logging.getLogger("bus.dispatch")

MAX_IN_FLIGHT = 256


@dataclass(frozen=True)
class Sender:
    """Who sent a request: a neighbour (``node_id`` and its role) or a client (``node_id`` None)."""

    node_id: str | None
    role: str                     # parent | child | peer | client


Handler = Callable[[Request, Sender], Awaitable[dict[str, Any]]]


def error_reply(corr_id: str, code: str, message: str, node_id: str,
                details: dict[str, Any] | None = None) -> Reply:
    error: dict[str, Any] = {"code": code, "message": message}
    if details:
        error["details"] = details
    return Reply(corr_id=corr_id, ok=False, error=error, node_id=node_id)


def _as_error(exc: BaseException) -> tuple[str, str, dict[str, Any] | None] | None:
    code, message = getattr(exc, "code", None), getattr(exc, "message", None)
    if isinstance(code, str) and isinstance(message, str):
        details = getattr(exc, "details", None)
        return code, message, details if isinstance(details, dict) and details else None
    return None


class Dispatcher:
    """Runs ``handler`` for each request in its own task and sends the reply it yields."""

    def __init__(self, node_id: str, handler: Handler | None):
        self._node_id = node_id
        self._handler = handler
        self._tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def dispatch(self, request: Request, sender: Sender, send: Callable[[list[bytes]], bool]) -> None:
        """Start handling ``request``; ``send`` delivers the encoded reply to the sender."""
        if self._handler is None:
            send(encode(error_reply(request.corr_id, "unsupported",
                                    "this node serves no requests", self._node_id)))
            return
        if len(self._tasks) >= MAX_IN_FLIGHT:
            send(encode(error_reply(request.corr_id, "busy",
                                    f"{MAX_IN_FLIGHT} requests in progress; retry later",
                                    self._node_id)))
            return
        task = asyncio.create_task(self._run(self._handler, request, sender, send),
                                   name=f"bus-op-{request.op}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, handler: Handler, request: Request, sender: Sender,
                   send: Callable[[list[bytes]], bool]) -> None:
        try:
            result = await handler(request, sender)
            if not isinstance(result, dict):
                raise TypeError(f"handler for {request.op!r} returned {type(result).__name__}, not dict")
            reply = Reply.answer(request, result, self._node_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            known = _as_error(exc)
            if known is None:
                log.exception("handler for %r from %s failed", request.op, sender.node_id or "client")
                known = ("internal", f"{type(exc).__name__}: {exc}", None)
            reply = error_reply(request.corr_id, known[0], known[1], self._node_id, known[2])
        try:
            frames = encode(reply)
        except (TypeError, ValueError) as exc:
            log.error("reply to %r cannot be encoded: %s", request.op, exc)
            frames = encode(error_reply(request.corr_id, "internal",
                                        f"result cannot be encoded: {exc}", self._node_id))
        if not send(frames):
            log.warning("reply to %r for %s could not be sent (sender gone or queue full)",
                        request.op, sender.node_id or "client")

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
