"""Stopping asyncio tasks without swallowing the caller's own cancellation."""

from __future__ import annotations

import asyncio

__all__ = ["cancel_and_wait"]


async def cancel_and_wait(task: asyncio.Task | None) -> None:
    """Cancel ``task`` and wait until it has finished.

    ``contextlib.suppress(CancelledError)`` around the wait would also swallow a cancellation
    aimed at the caller (arriving while it waits), leaving the caller running for ever; here
    that one propagates.
    """
    if task is None:
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
