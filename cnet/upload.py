"""One data upload in progress (``Upload``): its form parsed as it arrives, its files staged and
hashed on the intake's writer threads, its storage reserved as the bytes come, and, once whole
and valid, moved into place and recorded. Imported by the first upload (:mod:`cnet.uploads`
starts them), with the form parser and the staging it needs.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import shutil
import time
from pathlib import Path

from .errors import BadRequest, CnetError, InsufficientResources, PayloadTooLarge
from .executors.data import remove_path
from .resources import Resources
from .upload_checks import PathSet, content_type, data_key, validated_name
from .upload_form import FormReader, is_parser_error, malformed
from .upload_staging import Staging
from .workload import Workload

__all__ = ["Upload", "as_cnet_error"]

log = logging.getLogger("cnet.uploads")

RESERVE_STEP = 64 << 20          # grow the storage reservation in steps, not per chunk
MAX_LISTED_FILES = 1000          # the workload record lists this many; data_objects has all

RECEIVING, COMMITTING, DONE, FAILED = "receiving", "committing", "done", "failed"


def _no_storage(message: str, details: dict | None = None) -> CnetError:
    return CnetError(message, code="insufficient_storage", status=507, details=details)


def _aborted() -> BadRequest:
    return BadRequest("the upload was aborted", code="upload_aborted")


class Upload:
    """One multipart upload in progress: ``feed`` each chunk, then ``finish`` or ``abort``.

    ``intake`` is the :class:`cnet.uploads.Uploads` that began it (its config, manager, data
    layout, writer threads and the uploads in progress).
    """

    def __init__(self, intake, workload_id: str, parts_boundary: bytes):
        self.intake = intake
        self.id = workload_id
        self.dir = intake.layout.upload_dir(workload_id)
        self.started_at = time.time()
        self._t0 = time.monotonic()
        self._state = RECEIVING
        self._form = FormReader(parts_boundary, self)
        self._paths = PathSet()
        self._staging = Staging(self.dir, intake.run)
        self._limit = intake.config.upload_limit
        self._received = 0    # content bytes of all files
        self._reserved = 0

    # -- the handler's side --------------------------------------------------------------

    async def feed(self, chunk: bytes) -> None:
        """Parse one chunk of the body; write file data in batches (awaiting bounds memory)."""
        if self._state != RECEIVING:
            return
        try:
            self._form.write(chunk)
            if self._staging.due:
                await self._flush()
        except BaseException as exc:
            await self._discard(f"rejected: {exc}")
            raise as_cnet_error(exc) from None

    async def finish(self) -> Workload:
        """The body is complete: validate, move the files into place and record the workload."""
        if self._state != RECEIVING:
            raise _aborted()
        try:
            if not self._form.ended:
                raise malformed("the multipart body ended before its closing boundary")
            await self._flush()
            await self._staging.drain()
            name = validated_name(self._form.fields, len(self._staging.files))
            if self._state != RECEIVING:  # aborted while the last batch was written
                raise _aborted()
            self._state = COMMITTING
            wl = await self._commit(name)
        except BaseException as exc:
            await self._discard(f"rejected: {exc}")
            raise as_cnet_error(exc) from None
        # Recorded: from here on nothing may discard it.
        self._state = DONE
        self.intake.active.pop(self.id, None)
        await asyncio.to_thread(remove_path, self.dir)  # only the marker is left in it
        elapsed = max(time.monotonic() - self._t0, 1e-6)
        log.info("data workload %s (%s): %d file(s), %d bytes in %.2fs (%.1f MB/s)", self.id,
                 wl.runtime["data_key"], wl.runtime["file_count"], wl.runtime["size"], elapsed,
                 wl.runtime["size"] / elapsed / 1e6)
        return wl

    def abort(self, reason: str) -> None:
        """The client went away (or the agent stops): drop everything, in the background.

        Once the upload is being committed it is left to complete: it was received whole.
        """
        if self._state != RECEIVING:
            return
        self.intake.spawn(self._discard(reason))

    # -- accounting ----------------------------------------------------------------------

    def reserve(self, total: int) -> None:
        """Hold at least ``total`` bytes of storage for this upload, or raise (507)."""
        if total <= self._reserved:
            return
        manager = self.intake.manager
        try:
            try:  # a step ahead, so that the reservation is not resized per chunk
                stepped = max(total, self._reserved + min(RESERVE_STEP, total))
                manager.resize(self.id, Resources(storage=stepped))
            except InsufficientResources:
                stepped = total
                manager.resize(self.id, Resources(storage=stepped))
        except InsufficientResources as exc:
            raise _no_storage(f"not enough storage for this upload: {exc.message}",
                              exc.details) from None
        self._reserved = stepped
        free = shutil.disk_usage(self.intake.layout.root).free
        if self._reserved - self._received > free:
            raise _no_storage(f"not enough free disk space under {self.intake.layout.root}: "
                              f"{free} bytes free, {self._reserved - self._received} needed")

    # -- the form's files (FileSink: called by the parser; raising rejects the upload) ---

    def file_begin(self, filename: str, declared_type: bytes | None) -> None:
        path = self._paths.add(filename)
        self._staging.open(path, content_type(declared_type, path))

    def file_data(self, data: bytes, start: int, end: int) -> None:
        self._received += end - start
        if self._received > self._limit:
            raise PayloadTooLarge(f"the upload exceeds the upload limit of "
                                  f"{self._limit} bytes (data.upload_limit)")
        if self._received > self._reserved:
            self.reserve(self._received)
        self._staging.add(data, start, end)

    def file_end(self) -> None:
        self._staging.end_file()

    # -- writing -------------------------------------------------------------------------

    async def _flush(self) -> None:
        """Wait for the batch being written, then start writing what was parsed since."""
        await self._staging.drain()
        if self._state == FAILED:  # discarded meanwhile: its files are being closed
            raise _aborted()
        self._staging.write_pending()

    async def _discard(self, reason: str) -> None:
        """Remove every trace of this upload: reservation, temp files, staging dir."""
        if self._state in (DONE, FAILED):
            return
        self._state = FAILED
        self.intake.active.pop(self.id, None)
        self.intake.manager.release(self.id)
        log.info("upload %s discarded (%s)", self.id, reason)
        await self._staging.close()
        await asyncio.to_thread(remove_path, self.dir)

    # -- completing ----------------------------------------------------------------------

    async def _commit(self, name: str) -> Workload:
        key = data_key(name, self.id)
        final = self.intake.layout.final_dir(key)
        try:
            return await self._record(name, key, final)
        except BaseException:
            await asyncio.to_thread(remove_path, final)
            raise

    async def _record(self, name: str, key: str, final: Path) -> Workload:
        staged = self._staging.files
        await asyncio.to_thread(self._staging.place, key, final)
        now = time.time()
        files = [f.record() for f in staged]
        total = sum(f["size"] for f in files)
        runtime = {"data_key": key, "path": str(final), "size": total, "file_count": len(files),
                   "files": files[:MAX_LISTED_FILES],
                   "files_truncated": len(files) > MAX_LISTED_FILES}
        objects = [{"key": f"{key}/{rec['path']}", "workload_id": self.id, "data_key": key,
                    "size": rec["size"], "etag": rec["etag"], "sha256": rec["sha256"],
                    "content_type": f.content_type, "last_modified": now}
                   for f, rec in zip(staged, files)]
        return self.intake.manager.record_data(self.id, name, self.started_at, runtime, objects)


def as_cnet_error(exc: BaseException) -> BaseException:
    """What a failure of an upload tells its client."""
    if isinstance(exc, CnetError):
        return exc
    if is_parser_error(exc):
        return malformed(f"malformed multipart body: {exc}")
    if isinstance(exc, OSError):
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return _no_storage(f"the disk is full: {exc.strerror}")
        return CnetError(f"cannot store the upload: {exc.strerror or exc}", code="storage_error")
    return exc
