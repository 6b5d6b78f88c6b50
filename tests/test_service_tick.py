"""The service supervisor's tick driven by hand with an injected clock: no sockets, no processes."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

from cnet.config import ServiceConfig
from cnet.executors.launcher import ServiceStartFailed
from cnet.executors.ports import PortBook
from cnet.executors.supervisor import RECHECK_AFTER, Service, ServiceSupervisor

PORT = 9100
SERVICES = ServiceConfig(health_interval=30.0, health_timeout=5.0, max_restarts=3,
                         restart_backoff=1.0)


class FakeHandle:
    """Stands in for a ProcessHandle: exits when told to or when terminated."""

    def __init__(self, pid: int):
        self.pid, self.start_time = pid, float(pid)
        self.exited, self.exit_code = False, None
        self._on_exit = None

    def on_exit(self, callback) -> None:
        self._on_exit = callback

    def crash(self, code: int = -9) -> None:
        self.exited, self.exit_code = True, code
        if self._on_exit is not None:
            self._on_exit(code)

    async def terminate(self, grace: float) -> None:
        if not self.exited:
            self.crash(-15)

    def detach(self) -> None:
        pass


class Rig:
    """A supervisor with a fake clock, probe, launcher and host, and what they saw."""

    def __init__(self, *, autotick: bool = False):
        self.now = 0.0
        self.healthy = True
        self.fail_launch = False
        self.probes: list[float] = []
        self.launches: list[float] = []
        self.updates: list[dict] = []
        self.ended: list[dict] = []
        self.pids = iter(range(1001, 2000))
        self.ports = PortBook()
        host = SimpleNamespace(config=SimpleNamespace(services=SERVICES),
                               updated=lambda wid, **kw: self.updates.append(kw),
                               ended=lambda wid, **kw: self.ended.append(kw))
        self.sup = ServiceSupervisor(host, self.ports, self._launch, probe=self._probe,
                                     clock=lambda: self.now, autotick=autotick)
        self.svc = Service(workload_id="w1", config={}, host="127.0.0.1", port=PORT,
                           log_path=Path("/nonexistent/opencv_service_9100.log"))
        self.handle = FakeHandle(next(self.pids))
        self.ports.claim(PORT, "w1")
        self.sup.watch(self.svc, self.handle)

    async def _probe(self, host: str, port: int, timeout: float) -> tuple[bool, str]:
        self.probes.append(self.now)
        return (True, "") if self.healthy else (False, "/health answered 503")

    async def _launch(self, svc: Service):
        self.launches.append(self.now)
        if self.fail_launch:
            raise ServiceStartFailed("told to fail", svc.log_path, "")
        self.handle = FakeHandle(next(self.pids))
        return self.handle

    async def at(self, now: float) -> None:
        """Move the clock to ``now`` and tick until nothing more is due (as the automatic tick
        does, woken by each step's end), letting each step finish."""
        self.now = now
        for _ in range(10):
            self.sup.tick()
            if self.sup.get("w1") is None or self.svc.task is None:
                return
            await self.sup.settle()
        raise AssertionError("the tick kept starting steps")


def test_health_checks_run_when_due_and_three_failures_restart_after_backoff():
    async def scenario():
        rig = Rig()
        await rig.at(29.9)
        assert rig.probes == []
        await rig.at(30.0)
        assert rig.probes == [30.0]
        await rig.at(59.0)
        assert rig.probes == [30.0]
        rig.healthy = False
        await rig.at(60.0)
        await rig.at(60.0 + RECHECK_AFTER - 0.1)  # after a failure it confirms sooner
        assert rig.probes == [30.0, 60.0]
        await rig.at(65.0)
        old = rig.handle
        await rig.at(70.0)  # the third failure in a row: kill, then back off 1 s
        assert rig.probes == [30.0, 60.0, 65.0, 70.0]
        assert old.exited and rig.launches == []
        rig.healthy = True
        await rig.at(70.9)
        assert rig.launches == []
        await rig.at(71.0)
        assert rig.launches == [71.0]
        assert rig.updates[-1]["restart_count"] == 1
        assert rig.updates[-1]["runtime"]["pid"] == rig.handle.pid != old.pid
        assert "after the service was unhealthy (/health answered 503; 3 checks in a row)" \
            in rig.updates[-1]["message"]
        await rig.at(100.9)
        assert len(rig.probes) == 4
        await rig.at(101.0)  # checks resume an interval after the restart
        assert rig.probes[-1] == 101.0 and rig.ended == []

    asyncio.run(scenario())


def test_crashes_back_off_doubling_then_the_fourth_gives_up_and_releases_the_port():
    async def scenario():
        rig = Rig()
        for n, backoff in ((1, 1.0), (2, 2.0), (3, 4.0)):
            rig.handle.crash()
            start = rig.now
            await rig.at(start)  # the crash is acted on without waiting for a timer
            await rig.at(start + backoff - 0.01)
            assert len(rig.launches) == n - 1
            await rig.at(start + backoff)
            assert len(rig.launches) == n
            assert rig.updates[-1]["restart_count"] == n
            assert "after the service crashed (killed by SIGKILL)" in rig.updates[-1]["message"]
        rig.handle.crash()
        await rig.at(rig.now)
        assert len(rig.launches) == 3
        assert rig.ended == [{"exit_code": -9, "success": False,
                              "message": "the service crashed (killed by SIGKILL); restarted 3 "
                                         "times, giving up"}]
        assert rig.sup.get("w1") is None and rig.ports.holder(PORT) is None

    asyncio.run(scenario())


def test_failed_restarts_count_and_end_in_failed():
    async def scenario():
        rig = Rig()
        rig.fail_launch = True
        rig.handle.crash()
        for t in (0.0, 1.0, 3.0, 7.0):
            await rig.at(t)
        assert rig.launches == [1.0, 3.0, 7.0]
        assert [u["message"] for u in rig.updates] == [
            f"restart {n} of 3 failed: told to fail" for n in (1, 2, 3)]
        assert rig.ended[0]["message"] == ("the service failed to restart (told to fail); "
                                           "restarted 3 times, giving up")
        assert rig.ports.holder(PORT) is None

    asyncio.run(scenario())


def test_a_crash_wakes_the_tick_at_once_without_the_clock_moving():
    async def scenario():
        rig = Rig(autotick=True)
        rig.handle.crash()
        for _ in range(20):  # a few loop turns; the clock stands still
            await asyncio.sleep(0)
        assert rig.svc.phase == "backoff" and rig.svc.due == 1.0
        await rig.sup.stop("w1", grace=0.1)
        assert rig.ports.holder(PORT) is None

    asyncio.run(scenario())


def test_a_failed_check_marks_the_record_unhealthy_at_once_and_a_good_one_healthy_again():
    async def scenario():
        rig = Rig()
        await rig.at(30.0)
        assert rig.updates == []                       # healthy, as it started: nothing to say
        rig.healthy = False
        await rig.at(60.0)
        assert rig.updates == [{"runtime": {"healthy": False}}]
        await rig.at(65.0)                             # still failing: said once
        assert rig.updates == [{"runtime": {"healthy": False}}]
        rig.healthy = True
        await rig.at(70.0)
        assert rig.updates[-1] == {"runtime": {"healthy": True}} and len(rig.updates) == 2

    asyncio.run(scenario())
