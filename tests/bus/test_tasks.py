"""cancel_and_wait: stopping a child task never swallows the caller's own cancellation."""

from __future__ import annotations

import asyncio

import pytest

from bus.tasks import cancel_and_wait


async def _slow_to_stop(release: asyncio.Event) -> None:
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        await release.wait()   # a child that needs a moment to wind down
        raise


def test_child_is_cancelled_and_awaited():
    async def main():
        child = asyncio.create_task(asyncio.Event().wait())
        await asyncio.sleep(0)
        await cancel_and_wait(child)
        assert child.cancelled()
        await cancel_and_wait(None)

    asyncio.run(main())


def test_cancelling_the_caller_while_it_waits_propagates():
    async def main():
        release = asyncio.Event()
        child = asyncio.create_task(_slow_to_stop(release))
        await asyncio.sleep(0)
        caller = asyncio.create_task(cancel_and_wait(child))
        await asyncio.sleep(0)          # the caller is now waiting for the child to stop
        caller.cancel()                 # ... when it is cancelled itself
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(caller, timeout=5)
        assert caller.cancelled()

    asyncio.run(main())
