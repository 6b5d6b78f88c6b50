"""Outstanding requests: one future per correlation id, resolved by the matching Reply."""

from __future__ import annotations

import asyncio

from bus.errors import RequestTimeout
from bus.protocol import Reply

__all__ = ["PendingReplies"]


class PendingReplies:
    """Maps ``corr_id`` to the future awaiting its :class:`Reply`."""

    def __init__(self) -> None:
        self._waiting: dict[str, asyncio.Future[Reply]] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    def expect(self, corr_id: str) -> asyncio.Future[Reply]:
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._waiting[corr_id] = future
        return future

    def discard(self, corr_id: str) -> None:
        """Forget ``corr_id`` (its request could not be sent)."""
        future = self._waiting.pop(corr_id, None)
        if future is not None:
            future.cancel()

    def resolve(self, reply: Reply) -> bool:
        """Hand ``reply`` to its waiter; False when nobody waits for it (late or forged)."""
        future = self._waiting.pop(reply.corr_id, None)
        if future is None or future.done():
            return False
        future.set_result(reply)
        return True

    async def wait(self, corr_id: str, future: asyncio.Future[Reply], timeout: float,
                   what: str) -> Reply:
        """Await the reply for ``corr_id``; raise :class:`RequestTimeout` naming ``what``."""
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise RequestTimeout(f"no reply to {what} within {timeout:g} s") from None
        finally:
            self._waiting.pop(corr_id, None)

    def fail_all(self, exc: BaseException) -> None:
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(exc)
        self._waiting.clear()
