"""GPUs as devices: finding them (NVML, else ``nvidia-smi``, else the config), and which
workload holds which device on this node, with NVML's measured utilisation and memory.

NVML (``pynvml`` from ``nvidia-ml-py``) is imported only when devices are read, never at agent
start; where it is missing or finds no driver, ``nvidia-smi`` is asked, and where that is
missing too the node has the devices its config names (or none).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from .errors import InsufficientResources

__all__ = ["GPU_DEVICES", "Device", "DeviceTable", "detect", "from_nvml", "from_smi", "load_nvml", "numbered"]

log = logging.getLogger(__name__)

GPU_DEVICES = "gpu_devices"   # the workload runtime key: uuids of the GPUs it holds
MIB = 1024 * 1024
SMI_TIMEOUT = 5.0       # seconds nvidia-smi may take to answer
MEASURE_EVERY = 1.0     # seconds between NVML readings of utilisation and memory


@dataclass(frozen=True)
class Device:
    """One GPU. ``uuid`` names it to CUDA, the engine and the workload ("GPU-…"); a device
    known only by a count in the config is named by its index ("0", "1", ...)."""

    index: int
    uuid: str
    name: str = ""
    memory: int = 0         # bytes, 0 when not known

    def to_dict(self) -> dict:
        return {"index": self.index, "uuid": self.uuid, "name": self.name, "memory": self.memory}


def numbered(count: int, start: int = 0) -> list[Device]:
    """``count`` devices known only by their index (a ``gpu: N`` config without detection)."""
    return [Device(i, str(i)) for i in range(start, start + count)]


# -- detection --------------------------------------------------------------------------------

def load_nvml() -> Any | None:
    """The initialised ``pynvml`` module, or None (not installed, or no NVIDIA driver)."""
    try:
        import pynvml  # noqa: PLC0415 -- lazy: only where devices are read
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception as exc:   # pynvml.NVMLError_LibraryNotFound, _DriverNotLoaded, ...
        log.debug("NVML is installed but cannot start: %s", exc)
        return None
    return pynvml


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def from_nvml(nvml: Any | None) -> list[Device] | None:
    """The devices NVML sees, or None when it cannot be asked."""
    if nvml is None:
        return None
    try:
        out = []
        for i in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(i)
            out.append(Device(i, _text(nvml.nvmlDeviceGetUUID(handle)),
                              _text(nvml.nvmlDeviceGetName(handle)),
                              int(nvml.nvmlDeviceGetMemoryInfo(handle).total)))
        return out
    except Exception as exc:
        log.warning("reading the GPUs with NVML failed: %s", exc)
        return None


def from_smi(exe: str | None = "nvidia-smi") -> list[Device] | None:
    """The devices ``nvidia-smi`` lists, or None when it is not installed or fails."""
    path = shutil.which(exe) if exe else None
    if path is None:
        return None
    try:
        done = subprocess.run([path, "--query-gpu=index,uuid,name,memory.total",
                               "--format=csv,noheader,nounits"], capture_output=True, text=True,
                              timeout=SMI_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("nvidia-smi failed: %s", exc)
        return None
    if done.returncode != 0:
        log.warning("nvidia-smi exited with %d: %s", done.returncode, done.stderr.strip()[:200])
        return None
    out = []
    for line in done.stdout.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 4 or not parts[0].isdigit():
            continue
        memory = int(float(parts[3]) * MIB) if parts[3].replace(".", "", 1).isdigit() else 0
        out.append(Device(int(parts[0]), parts[1], parts[2], memory))
    return out


def detect(nvml: Callable[[], Any | None] = load_nvml, smi: str | None = "nvidia-smi"
           ) -> tuple[list[Device], str]:
    """This machine's GPUs and where they were read: ``nvml``, ``nvidia-smi`` or ``none``."""
    found = from_nvml(nvml())
    if found is not None:
        return found, "nvml"
    found = from_smi(smi)
    if found is not None:
        return found, "nvidia-smi"
    return [], "none"


# -- the devices of one node and who holds them ---------------------------------------------

class DeviceTable:
    """This node's devices and the workload holding each (whole devices only).

    ``nvml`` returns an initialised NVML (or None) and is called once, the first time a view
    is asked for; tests pass a fake. Readings are at most ``MEASURE_EVERY`` seconds old.
    """

    def __init__(self, devices: Iterable[Device] = (),
                 nvml: Callable[[], Any | None] = load_nvml,
                 clock: Callable[[], float] = time.monotonic):
        self.devices = list(devices)
        self._by_uuid = {d.uuid: d for d in self.devices}
        self._holder: dict[str, str] = {}          # uuid -> workload id
        self._nvml_loader: Callable[[], Any | None] | None = nvml
        self._nvml: Any | None = None
        self._handles: dict[str, Any] = {}
        self._clock = clock
        self._measured: dict[str, dict] = {}
        self._measured_at: float | None = None

    def __len__(self) -> int:
        return len(self.devices)

    # -- holding ----------------------------------------------------------------------

    def free(self) -> list[Device]:
        return [d for d in self.devices if d.uuid not in self._holder]

    def held_by(self, workload_id: str) -> list[str]:
        """The uuids ``workload_id`` holds, in device order."""
        return [d.uuid for d in self.devices if self._holder.get(d.uuid) == workload_id]

    def take(self, workload_id: str, count: int, node_id: str = "") -> list[str]:
        """Give ``workload_id`` ``count`` more free devices (lowest index first), or raise
        InsufficientResources and change nothing."""
        if count <= 0:
            return []
        free = self.free()
        if len(free) < count:
            reason = f"gpu {len(free)} free device(s) < {count} requested"
            raise InsufficientResources(f"{node_id}: {reason}",
                                        details={"node_id": node_id, "reasons": [reason]})
        picked = [d.uuid for d in free[:count]]
        for uuid in picked:
            self._holder[uuid] = workload_id
        return picked

    def hold(self, workload_id: str, uuids: Sequence[str] | None, count: int) -> list[str]:
        """Rebuild what a running workload holds after a restart: the recorded ``uuids`` that
        are known and free, then free ones up to ``count`` (never refused, may hold fewer)."""
        for uuid in uuids or ():
            if uuid in self._by_uuid and self._holder.get(uuid) in (None, workload_id):
                self._holder[uuid] = workload_id
            else:
                log.warning("workload %s was recorded on GPU %s, which is not free here now",
                            workload_id, uuid)
        missing = count - len(self.held_by(workload_id))
        if missing > 0:
            for device in self.free()[:missing]:
                self._holder[device.uuid] = workload_id
        return self.held_by(workload_id)

    def resize(self, workload_id: str, count: int, node_id: str = "") -> None:
        """Hold exactly ``count`` devices: take more (or raise, changing nothing), or let go of
        the last ones."""
        held = self.held_by(workload_id)
        if count > len(held):
            self.take(workload_id, count - len(held), node_id)
        for uuid in held[max(count, 0):]:
            del self._holder[uuid]

    def release(self, workload_id: str) -> list[str]:
        freed = self.held_by(workload_id)
        for uuid in freed:
            del self._holder[uuid]
        return freed

    def largest_free_memory(self) -> int:
        return max((d.memory for d in self.free()), default=0)

    # -- views ------------------------------------------------------------------------

    def view(self) -> list[dict]:
        """Each device with its holder and (NVML) measured utilisation and memory in use."""
        measured = self._measure()
        return [{**d.to_dict(), "holder": self._holder.get(d.uuid),
                 "utilization": measured.get(d.uuid, {}).get("utilization"),
                 "memory_used": measured.get(d.uuid, {}).get("memory_used")}
                for d in self.devices]

    def _measure(self) -> dict[str, dict]:
        if not self.devices:
            return {}
        now = self._clock()
        if self._measured_at is not None and now - self._measured_at < MEASURE_EVERY:
            return self._measured
        self._measured_at = now
        if self._nvml_loader is not None:
            loader, self._nvml_loader = self._nvml_loader, None
            self._nvml = loader()
            if self._nvml is not None:
                self._handles = self._find_handles(self._nvml)
        if self._nvml is None:
            return self._measured
        out = {}
        for uuid, handle in self._handles.items():
            try:
                memory = self._nvml.nvmlDeviceGetMemoryInfo(handle)
                util = self._nvml.nvmlDeviceGetUtilizationRates(handle)
                out[uuid] = {"utilization": int(util.gpu), "memory_used": int(memory.used)}
            except Exception as exc:   # a device that fell off the bus, a driver reset
                log.debug("reading GPU %s with NVML failed: %s", uuid, exc)
        self._measured = out
        return out

    def _find_handles(self, nvml: Any) -> dict[str, Any]:
        handles = {}
        try:
            for i in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(i)
                uuid = _text(nvml.nvmlDeviceGetUUID(handle))
                if uuid in self._by_uuid:
                    handles[uuid] = handle
        except Exception as exc:
            log.warning("NVML cannot list the GPUs: %s", exc)
        return handles
