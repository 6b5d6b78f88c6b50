"""The Register: this node's capacity, allocations and measured usage, and its neighbours' views.

Allocation follows the seed's quota model: allocated is the sum of the declared requirements of
live workloads and available = capacity - allocated. It is plain data plus one change callback;
the agent turns that callback into a broadcast and a WebSocket event.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from pathlib import Path
from typing import Callable

import psutil

from .devices import Device, DeviceTable, numbered
from .errors import InsufficientResources
from .resources import Resources

log = logging.getLogger(__name__)

USAGE_MAX_AGE = 2.0    # seconds: what a REST answer shows is at most this old
BEAT_USAGE_MAX_AGE = 10.0   # seconds: what a heartbeat tells the neighbours is at most this old


class Register:
    def __init__(self, node_id: str, capacity: Resources, data_path: Path | None = None,
                 on_change: Callable[[], None] | None = None,
                 devices: DeviceTable | list[Device] | None = None):
        self.node_id = node_id
        self.capacity = capacity
        # The GPUs a ``gpu: N`` request takes whole devices from (numbered ones by default).
        self.devices = DeviceTable(numbered(capacity.gpu)) if devices is None else devices
        if not isinstance(self.devices, DeviceTable):
            self.devices = DeviceTable(self.devices)
        self.data_path = data_path
        self.on_change = on_change or (lambda: None)
        self._allocations: dict[str, Resources] = {}
        self._allocated = Resources()
        self.seq = 0
        self._usage = {"cpu": 0.0, "memory": 0, "gpu": 0, "storage": 0, "cpu_percent": 0.0,
                       "memory_percent": 0.0, "sampled_at": None}

    # -- allocation ----------------------------------------------------------------------

    @property
    def allocated(self) -> Resources:
        return self._allocated

    @property
    def available(self) -> Resources:
        return self.capacity - self._allocated

    def allocate(self, workload_id: str, request: Resources) -> None:
        """Reserve ``request`` for a workload, or raise and change nothing."""
        if workload_id in self._allocations:
            return  # idempotent: a workload holds one reservation
        self._check_fits(request)
        self.devices.take(workload_id, request.gpu, self.node_id)  # specific free devices
        self._allocations[workload_id] = request
        self._changed()

    def adopt(self, workload_id: str, request: Resources,
              gpu_devices: list[str] | None = None) -> None:
        """Rebuild a reservation after a restart, on the devices it was recorded with; never
        refused (the workload already runs)."""
        if workload_id not in self._allocations:
            if request.gpu or gpu_devices:
                self.devices.hold(workload_id, gpu_devices, request.gpu)
            self._allocations[workload_id] = request
            self._changed()

    def gpu_devices(self, workload_id: str) -> list[str]:
        """The uuids of the devices a workload holds (empty for none)."""
        return self.devices.held_by(workload_id)

    def use_devices(self, devices: list[Device]) -> None:
        """Name this node's devices (the config's or those detected) before anything holds one."""
        if self._allocations:
            raise RuntimeError("devices can only be set before any allocation")
        self.devices = DeviceTable(devices)
        if len(devices) != self.capacity.gpu:
            self.capacity = Resources(self.capacity.cpu, self.capacity.memory, len(devices),
                                      self.capacity.storage)
        self._changed()   # a new seq: what was made of the old devices is made again

    def release(self, workload_id: str) -> Resources | None:
        freed = self._allocations.pop(workload_id, None)
        self.devices.release(workload_id)
        if freed is not None:
            self._changed()
        return freed

    def resize(self, workload_id: str, total: Resources) -> None:
        """Set a reservation to ``total`` in one step (a workload without one starts from none).

        What grows must fit in what is available, else InsufficientResources is raised and
        nothing changes; what shrinks is never refused. There is no moment in between when
        another workload could take what this one holds.
        """
        held = self._allocations.get(workload_id, Resources())
        growth = Resources(max(total.cpu - held.cpu, 0.0), max(total.memory - held.memory, 0),
                           max(total.gpu - held.gpu, 0), max(total.storage - held.storage, 0))
        if not growth.is_zero():
            self._check_fits(growth)
        if total.gpu != held.gpu:
            self.devices.resize(workload_id, total.gpu, self.node_id)
        self._allocations[workload_id] = total
        self._changed()

    def _check_fits(self, request: Resources) -> None:
        short = request.shortfalls(self.available)
        if short:
            raise InsufficientResources(f"{self.node_id}: " + "; ".join(short),
                                        details={"node_id": self.node_id, "reasons": short})

    def _changed(self) -> None:
        values = self._allocations.values()
        self._allocated = Resources(
            cpu=math.fsum(r.cpu for r in values), memory=sum(r.memory for r in values),
            gpu=sum(r.gpu for r in values), storage=sum(r.storage for r in values))
        self.seq += 1
        try:
            self.on_change()
        except Exception:   # a failed broadcast must never undo, or leak, a reservation
            log.exception("%s: telling others about a resource change failed", self.node_id)

    # -- measured usage ------------------------------------------------------------------

    usage_max_age = USAGE_MAX_AGE   # seconds a sample is shown before it is measured again
    _sampled = -math.inf            # monotonic time of the last sample

    def sample_usage(self) -> None:
        """Measure real usage with psutil now (the cpu share is the average since the last)."""
        self._sampled = time.monotonic()
        percent = psutil.cpu_percent(interval=None)
        vm = psutil.virtual_memory()
        storage = 0
        if self.data_path is not None and self.data_path.exists():
            storage = shutil.disk_usage(self.data_path).used
        self._usage = {
            "cpu": round(percent / 100.0 * (psutil.cpu_count() or 1), 3),
            "memory": vm.total - vm.available,
            "gpu": 0,
            "storage": storage,
            "cpu_percent": percent,
            "memory_percent": vm.percent,
            "sampled_at": time.time(),
        }

    @property
    def usage(self) -> dict:
        """Measured usage, sampled when read if the last sample is older than
        ``usage_max_age``: measured no more often than something shows it (a REST reply),
        and no timer of its own wakes the agent for it."""
        return self.usage_within(self.usage_max_age)

    def usage_within(self, max_age: float) -> dict:
        """Measured usage at most ``max_age`` seconds old (sampled now if the last is older).
        Heartbeats ask for ``BEAT_USAGE_MAX_AGE``: the neighbours see ``sampled_at``, and an
        idle node measures itself once in that many beats, not at each."""
        if time.monotonic() - self._sampled >= max_age:
            self.sample_usage()
        return dict(self._usage)

    # -- views ---------------------------------------------------------------------------

    def resources(self, usage_max_age: float | None = None) -> dict:
        """``GET /api/resources``: capacity, allocated, available and measured usage (at most
        ``usage_max_age`` old; ``usage_max_age`` of the register when not given)."""
        return {
            "node_id": self.node_id,
            "capacity": self.capacity.to_dict(),
            "allocated": self._allocated.to_dict(),
            "available": self.available.to_dict(),
            "usage": self.usage_within(self.usage_max_age if usage_max_age is None
                                       else usage_max_age),
            "devices": self.devices.view(),
        }
