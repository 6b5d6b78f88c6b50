"""Streaming intake of data uploads: ``POST /api/workloads`` as multipart/form-data, ``type=data``.

The body is parsed as it arrives (``upload_form``); each file part is staged and hashed on writer
threads (``upload_staging``), so memory stays bounded by a few batches whatever the upload's
size. Storage is reserved through the Manager before or as the bytes arrive. Only a complete,
valid upload is moved (one rename) into ``<data_path>/<data_key>`` and recorded; a failed,
rejected or aborted one leaves no file, no record and no reservation.

This module is the intake (``Uploads``: begins them, owns the writer threads, sweeps at start);
each upload in progress is an :class:`cnet.upload.Upload`, imported with the first one, as is
the form parser, so an agent nobody sends data keeps neither loaded.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Callable, Coroutine

from .errors import PayloadTooLarge
from .executors.data import DataLayout
from .workload import new_id

if TYPE_CHECKING:
    from .config import Config
    from .manager import Manager
    from .upload import Upload

__all__ = ["Uploads"]

FRAMING_ALLOWANCE = 1 << 20      # multipart framing allowed on top of upload_limit's content
WRITER_THREADS = 4


class Uploads:
    """Starts uploads, owns their writer threads, and settles leftovers at agent start."""

    def __init__(self, config: "Config", manager: "Manager"):
        self.config = config
        self.manager = manager
        self.layout = DataLayout(config.data_path)
        self.pool = ThreadPoolExecutor(max_workers=WRITER_THREADS, thread_name_prefix="cnet-upload")
        self.active: dict[str, Upload] = {}
        self._tasks: set[asyncio.Task] = set()

    def sweep(self) -> None:
        """Remove what uploads cut short by a crash left behind (before the API serves)."""
        committed = {wl.id: wl.runtime["data_key"] for wl in self.manager.workloads.values()
                     if wl.type == "data" and isinstance(wl.runtime.get("data_key"), str)}
        self.layout.sweep(committed)

    async def begin(self, content_type: str, declared: int) -> "Upload":
        """Check the request's headers and reserve its declared size; raise and keep nothing."""
        # Lazy: what an upload needs (its form parser above all) loads with the first one.
        from .upload import Upload, as_cnet_error  # noqa: PLC0415
        from .upload_form import boundary  # noqa: PLC0415

        parts_boundary = boundary(content_type)
        limit = self.config.upload_limit
        if declared > limit + FRAMING_ALLOWANCE:
            raise PayloadTooLarge(f"the upload of {declared} bytes exceeds the upload limit of "
                                  f"{limit} bytes (data.upload_limit)")
        upload = Upload(self, new_id(), parts_boundary)
        try:
            if declared:
                upload.reserve(declared)
            upload.dir.mkdir(parents=True)
        except BaseException as exc:
            self.manager.release(upload.id)
            raise as_cnet_error(exc) from None
        self.active[upload.id] = upload
        return upload

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` on one of the writer threads."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def close(self) -> None:
        """Abort uploads still in progress and wait for their cleanup."""
        for upload in list(self.active.values()):
            upload.abort("the agent is stopping")
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=10)
        self.pool.shutdown(wait=False, cancel_futures=True)
