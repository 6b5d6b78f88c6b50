"""Bus tests: run ``async def`` tests in a fresh event loop and fail any that leak a task."""

from __future__ import annotations

import asyncio
import inspect

import pytest

TEST_TIMEOUT = 30.0


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    func = pyfuncitem.obj
    if not inspect.iscoroutinefunction(func):
        return None
    kwargs = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}

    async def run() -> None:
        await asyncio.wait_for(func(**kwargs), TEST_TIMEOUT)
        await asyncio.sleep(0)
        leaked = [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]
        for task in leaked:
            task.cancel()
        assert not leaked, f"test leaked tasks: {[t.get_name() for t in leaked]}"

    asyncio.run(run())
    return True
