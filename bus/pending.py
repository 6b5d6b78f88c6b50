"""Outstanding requests: one future per correlation id, resolved by the matching Reply."""

from __future__ import annotations

import asyncio

from bus.errors import LostInFlight, RequestTimeout
from bus.protocol import Reply

__all__ = ["PendingReplies"]


class PendingReplies:
    """Maps ``corr_id`` to the future awaiting its :class:`Reply`."""

    def __init__(self) -> None:
        self._waiting: dict[str, asyncio.Future[Reply]] = {}
        self._target: dict[str, tuple[str, str]] = {}   # corr_id -> (node sent to, connection)

    def __len__(self) -> int:
        return len(self._waiting)

    def expect(self, corr_id: str, target: str | None = None,
               via: str = "") -> asyncio.Future[Reply]:
        """A future for ``corr_id``'s reply; ``target`` is the node asked and ``via`` the
        connection it went out on (``link`` or ``router``)."""
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._waiting[corr_id] = future
        if target is not None:
            self._target[corr_id] = (target, via)
        return future

    def discard(self, corr_id: str) -> None:
        """Forget ``corr_id`` (its request could not be sent)."""
        self._target.pop(corr_id, None)
        future = self._waiting.pop(corr_id, None)
        if future is not None:
            future.cancel()

    def fail_to(self, target: str, why: str, via: str | None = None) -> int:
        """Fail at once every request waiting on ``target`` (lost, or a new session of it; with
        ``via``, only those sent on that connection, which the new session replaced): its
        answer, if any comes, would be to a conversation that no longer exists."""
        failed = 0
        for corr_id in [c for c, (node, went) in self._target.items()
                        if node == target and via in (None, went)]:
            del self._target[corr_id]
            future = self._waiting.pop(corr_id, None)
            if future is not None and not future.done():
                future.set_exception(LostInFlight(f"{target} {why} before answering"))
                failed += 1
        return failed

    def resolve(self, reply: Reply) -> bool:
        """Hand ``reply`` to its waiter; False when nobody waits for it (late or forged)."""
        self._target.pop(reply.corr_id, None)
        future = self._waiting.pop(reply.corr_id, None)
        if future is None or future.done():
            return False
        future.set_result(reply)
        return True

    async def wait(self, corr_id: str, future: asyncio.Future[Reply], timeout: float,
                   what: str) -> Reply:
        """Await the reply for ``corr_id``; raise :class:`RequestTimeout` naming ``what``.

        The timer fails the future itself (no ``wait_for``: its extra future and callbacks
        cost the reply a turn of the loop on every request)."""
        timer = asyncio.get_running_loop().call_later(
            timeout, _expire, future, f"no reply to {what} within {timeout:g} s")
        try:
            return await future
        finally:
            timer.cancel()
            self._waiting.pop(corr_id, None)
            self._target.pop(corr_id, None)

    def fail_all(self, exc: BaseException) -> None:
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(exc)
        self._waiting.clear()
        self._target.clear()


def _expire(future: asyncio.Future[Reply], message: str) -> None:
    if not future.done():
        future.set_exception(RequestTimeout(message))
