"""Streaming intake of data uploads: ``POST /api/workloads`` as multipart/form-data, ``type=data``.

The body is parsed as it arrives (python-multipart). Each file part goes to a temp file in the
upload's staging dir while MD5 (the ETag) and SHA-256 are computed on worker threads; memory
stays bounded by a few batches whatever the upload's size. Storage is reserved before or as the
bytes arrive. Only a complete, valid upload is moved (one rename) into
``<data_path>/<data_key>`` and recorded; a failed, rejected or aborted one leaves no file, no
record and no reservation.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import mimetypes
import os
import re
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Coroutine

from python_multipart import MultipartParser
from python_multipart.exceptions import FormParserError

from .errors import BadRequest, CnetError, InsufficientResources, PayloadTooLarge
from .executors.data import TARGET_MARKER, DataLayout, fsync_dir, remove_path
from .resources import Resources
from .workload import COMPLETED, Workload, new_id, parse_submission

if TYPE_CHECKING:
    from .config import Config
    from .manager import Manager
    from .register import Register

__all__ = ["Upload", "Uploads"]

log = logging.getLogger(__name__)

TEXT_FIELDS = ("type", "name")
FILE_FIELDS = ("file", "files")
FRAMING_ALLOWANCE = 1 << 20      # multipart framing allowed on top of upload_limit's content
BATCH_BYTES = 4 << 20            # hand file data to the writer threads in batches this size
RESERVE_STEP = 64 << 20          # grow the storage reservation in steps, not per chunk
PARALLEL_HASH_BYTES = 256 << 10  # below this a batch is hashed and written on one thread
MAX_FIELD_BYTES = 4096
MAX_FILES = 100_000
MAX_PATH_BYTES = 880             # the S3 key "<data_key>/<path>" stays within 1024 bytes
MAX_COMPONENT_BYTES = 255
MAX_LISTED_FILES = 1000          # the workload record lists this many; data_objects has all
WRITER_THREADS = 4

_BOUNDARY_RE = re.compile(r"^[0-9A-Za-z'()+_,./:=?-]([0-9A-Za-z'()+_,./:=? -]{0,68}[0-9A-Za-z'()+_,./:=?-])?$")
_CONTENT_TYPE_RE = re.compile(r"^[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+(\s*;[ -~]*)?$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_DRIVE_RE = re.compile(r"^[A-Za-z]:")
_SLUG_RE = re.compile(r"[^a-z0-9._-]+")

RECEIVING, COMMITTING, DONE, FAILED = "receiving", "committing", "done", "failed"


def _malformed(message: str) -> BadRequest:
    return BadRequest(message, code="malformed_multipart")


def _no_storage(message: str, details: dict | None = None) -> CnetError:
    return CnetError(message, code="insufficient_storage", status=507, details=details)


class Uploads:
    """Starts uploads, owns their writer threads, and settles leftovers at agent start."""

    def __init__(self, config: "Config", manager: "Manager", register: "Register"):
        self.config = config
        self.manager = manager
        self.register = register
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
        boundary = _boundary(content_type)
        limit = self.config.upload_limit
        if declared > limit + FRAMING_ALLOWANCE:
            raise PayloadTooLarge(f"the upload of {declared} bytes exceeds the upload limit of "
                                  f"{limit} bytes (data.upload_limit)")
        workload_id = new_id()
        upload = Upload(self, workload_id, boundary)
        try:
            if declared:
                upload.reserve(declared)
            upload.dir.mkdir(parents=True)
        except BaseException as exc:
            self.register.release(workload_id)
            raise _as_cnet_error(exc) from None
        self.active[workload_id] = upload
        return upload

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def close(self) -> None:
        """Abort uploads still in progress and wait for their cleanup."""
        for upload in list(self.active.values()):
            upload.abort("the agent is stopping")
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=10)
        self.pool.shutdown(wait=False, cancel_futures=True)


@dataclass(eq=False)
class _StagedFile:
    """One file part: written under a temp name, hashed as it is written."""

    path: str                # relative path inside the data key
    temp: Path
    content_type: str
    fd: int = -1
    size: int = 0            # bytes received (counted on the event loop)
    md5: Any = field(default_factory=hashlib.md5)
    sha256: Any = field(default_factory=hashlib.sha256)

    # The methods below run on writer threads, one batch at a time per upload. Each takes one
    # contiguous buffer, so a thread gives up and retakes the GIL once per batch rather than
    # once per network chunk (retaking it can wait a whole switch interval).

    def hash_md5(self, buf: bytearray) -> None:
        self.md5.update(buf)

    def write_and_hash_sha256(self, buf: bytearray) -> None:
        self.sha256.update(buf)
        view = memoryview(buf)
        while view:
            view = view[os.write(self.fd, view):]

    def seal(self) -> None:
        """Make the content durable and close the file."""
        os.fdatasync(self.fd)
        os.close(self.fd)
        self.fd = -1

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def record(self) -> dict:
        return {"path": self.path, "size": self.size, "etag": self.md5.hexdigest(),
                "sha256": self.sha256.hexdigest()}


class Upload:
    """One multipart upload in progress: ``feed`` each chunk, then ``finish`` or ``abort``."""

    def __init__(self, intake: Uploads, workload_id: str, boundary: bytes):
        self.intake = intake
        self.id = workload_id
        self.dir = intake.layout.upload_dir(workload_id)
        self.started_at = time.time()
        self._t0 = time.monotonic()
        self._state = RECEIVING
        self._parser = MultipartParser(boundary, callbacks={
            "on_part_begin": self._on_part_begin,
            "on_header_field": self._on_header_field,
            "on_header_value": self._on_header_value,
            "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished,
            "on_part_data": self._on_part_data,
            "on_part_end": self._on_part_end,
            "on_end": self._on_end,
        })
        self._ended = False
        self._fields: dict[str, str] = {}
        self._files: list[_StagedFile] = []
        self._paths: set[str] = set()
        self._dirs: set[str] = set()
        # The part being parsed.
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._headers: dict[str, bytes] = {}
        self._file: _StagedFile | None = None
        self._field: tuple[str, bytearray] | None = None
        # File data parsed but not yet handed to a writer thread, and the batch being written.
        self._pending: list[tuple[_StagedFile, bytearray]] = []
        self._pending_bytes = 0
        self._to_seal: list[_StagedFile] = []
        self._inflight: asyncio.Future | None = None
        self._received = 0    # content bytes of all files
        self._reserved = 0

    # -- the handler's side --------------------------------------------------------------

    async def feed(self, chunk: bytes) -> None:
        """Parse one chunk of the body; write file data in batches (awaiting bounds memory)."""
        if self._state != RECEIVING:
            return
        try:
            self._parser.write(chunk)
            if self._pending_bytes >= BATCH_BYTES or self._to_seal:
                await self._flush()
        except BaseException as exc:
            await self._discard(f"rejected: {exc}")
            raise _as_cnet_error(exc) from None

    async def finish(self) -> Workload:
        """The body is complete: validate, move the files into place and record the workload."""
        if self._state != RECEIVING:
            raise BadRequest("the upload was aborted", code="upload_aborted")
        try:
            if not self._ended:
                raise _malformed("the multipart body ended before its closing boundary")
            await self._flush()
            await self._drain()
            name = self._validated_name()
            if self._state != RECEIVING:  # aborted while the last batch was written
                raise BadRequest("the upload was aborted", code="upload_aborted")
            self._state = COMMITTING
            wl = await self._commit(name)
        except BaseException as exc:
            await self._discard(f"rejected: {exc}")
            raise _as_cnet_error(exc) from None
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
        need = total - self._reserved
        register = self.intake.register
        try:
            try:
                register.grow(self.id, Resources(storage=max(need, min(RESERVE_STEP, total))))
                grown = max(need, min(RESERVE_STEP, total))
            except InsufficientResources:
                register.grow(self.id, Resources(storage=need))
                grown = need
        except InsufficientResources as exc:
            raise _no_storage(f"not enough storage for this upload: {exc.message}",
                              exc.details) from None
        self._reserved += grown
        free = shutil.disk_usage(self.intake.layout.root).free
        if self._reserved - self._received > free:
            raise _no_storage(f"not enough free disk space under {self.intake.layout.root}: "
                              f"{free} bytes free, {self._reserved - self._received} needed")

    # -- parser callbacks (synchronous; raising rejects the upload) ----------------------

    def _on_part_begin(self) -> None:
        self._headers = {}
        self._header_name.clear()
        self._header_value.clear()

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _on_header_end(self) -> None:
        name = self._header_name.decode("latin-1").strip().lower()
        self._headers[name] = bytes(self._header_value).strip()
        self._header_name.clear()
        self._header_value.clear()

    def _on_headers_finished(self) -> None:
        raw = self._headers.get("content-disposition")
        if raw is None:
            raise _malformed("a part has no Content-Disposition header")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _malformed("a part's Content-Disposition is not valid UTF-8") from None
        kind, params = parse_disposition(text)
        name = params.get("name")
        if kind != "form-data" or not name:
            raise _malformed("each part needs Content-Disposition: form-data; name=\"...\"")
        if "filename" in params:
            if name not in FILE_FIELDS:
                raise BadRequest(f"{name}: unexpected file part; files go in 'file' parts",
                                 code="invalid_field")
            self._open_file(params["filename"])
            return
        if name in FILE_FIELDS:
            raise BadRequest(f"{name}: must be a file (a part with a filename)",
                             code="invalid_field")
        if name not in TEXT_FIELDS:
            raise BadRequest(f"unknown field {name!r}; expected {', '.join(TEXT_FIELDS)} and "
                             "'file' parts", code="invalid_field")
        if name in self._fields:
            raise BadRequest(f"{name}: given more than once", code="invalid_field")
        self._field = (name, bytearray())

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._file is not None:
            size = end - start
            self._file.size += size
            self._received += size
            if self._received > self.intake.config.upload_limit:
                raise PayloadTooLarge(f"the upload exceeds the upload limit of "
                                      f"{self.intake.config.upload_limit} bytes (data.upload_limit)")
            if self._received > self._reserved:
                self.reserve(self._received)
            if self._pending and self._pending[-1][0] is self._file:
                self._pending[-1][1].extend(memoryview(data)[start:end])
            else:
                self._pending.append((self._file, bytearray(memoryview(data)[start:end])))
            self._pending_bytes += size
        elif self._field is not None:
            value = self._field[1]
            value += data[start:end]
            if len(value) > MAX_FIELD_BYTES:
                raise BadRequest(f"{self._field[0]}: longer than {MAX_FIELD_BYTES} bytes",
                                 code="invalid_field")

    def _on_part_end(self) -> None:
        if self._file is not None:
            self._to_seal.append(self._file)
            self._file = None
        elif self._field is not None:
            name, raw = self._field
            self._field = None
            try:
                value = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise BadRequest(f"{name}: not valid UTF-8", code="invalid_field") from None
            self._fields[name] = value
            if name == "type" and value != "data":
                raise BadRequest(f"type: a multipart/form-data upload creates a 'data' workload "
                                 f"(got {value!r}); other types are submitted as JSON",
                                 code="invalid_field")
            if name == "name":
                parse_submission({"name": value, "type": "data"}, ("data",))

    def _on_end(self) -> None:
        self._ended = True

    def _open_file(self, filename: str) -> None:
        path = relative_path(filename)
        if path in self._paths or path in self._dirs:
            raise BadRequest(f"file {path!r}: given more than once, or also used as a directory",
                             code="invalid_filename")
        parts = path.split("/")
        ancestors = ["/".join(parts[:i]) for i in range(1, len(parts))]
        clash = next((a for a in ancestors if a in self._paths), None)
        if clash is not None:
            raise BadRequest(f"file {path!r}: {clash!r} is a file, not a directory",
                             code="invalid_filename")
        if len(self._files) >= MAX_FILES:
            raise BadRequest(f"at most {MAX_FILES} files per upload", code="too_many_files")
        staged = _StagedFile(path=path, temp=self.dir / f"{len(self._files)}.part",
                             content_type=_content_type(self._headers.get("content-type"), path))
        staged.fd = os.open(staged.temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        self._files.append(staged)
        self._paths.add(path)
        self._dirs.update(ancestors)
        self._file = staged

    # -- writing -------------------------------------------------------------------------

    async def _flush(self) -> None:
        """Wait for the batch being written, then start writing what was parsed since."""
        await self._drain()
        if self._state == FAILED:  # discarded meanwhile: its files are being closed
            raise BadRequest("the upload was aborted", code="upload_aborted")
        if not self._pending and not self._to_seal:
            return
        batch, to_seal = self._pending, self._to_seal
        self._pending, self._pending_bytes, self._to_seal = [], 0, []
        self._inflight = asyncio.ensure_future(self._write(batch, to_seal))

    async def _drain(self) -> None:
        """Wait for the batch being written (shielded: a writer thread is never cut short)."""
        task = self._inflight
        if task is None:
            return
        try:
            await asyncio.shield(task)
        finally:
            if self._inflight is task and task.done():
                self._inflight = None

    async def _write(self, batch: list[tuple[_StagedFile, bytearray]],
                     to_seal: list[_StagedFile]) -> None:
        run = self.intake.run
        if len(batch) == 1 and len(batch[0][1]) >= PARALLEL_HASH_BYTES:
            # The common case, one large file: MD5 on one thread, SHA-256 and the write on
            # another (hashlib and os.write release the GIL).
            staged, buf = batch[0]
            await asyncio.gather(run(staged.hash_md5, buf), run(staged.write_and_hash_sha256, buf))
            if to_seal:
                await run(_seal_all, to_seal)
            return
        await run(_write_batch, batch, to_seal)

    async def _discard(self, reason: str) -> None:
        """Remove every trace of this upload: reservation, temp files, staging dir."""
        if self._state in (DONE, FAILED):
            return
        self._state = FAILED
        self.intake.active.pop(self.id, None)
        self.intake.register.release(self.id)
        log.info("upload %s discarded (%s)", self.id, reason)
        task = self._inflight
        if task is not None:
            await asyncio.wait([task])  # its threads use the files we are about to close
        self._pending.clear()
        for staged in self._files:
            staged.close()
        await asyncio.to_thread(remove_path, self.dir)

    # -- completing ----------------------------------------------------------------------

    def _validated_name(self) -> str:
        if "type" not in self._fields:
            raise BadRequest("type: required (type=data)", code="invalid_field")
        if "name" not in self._fields:
            raise BadRequest("name: required, a non-empty string", code="invalid_field")
        if not self._files:
            raise BadRequest("file: at least one file part is required", code="invalid_field")
        return parse_submission({"name": self._fields["name"], "type": "data"}, ("data",)).name

    async def _commit(self, name: str) -> Workload:
        intake, register = self.intake, self.intake.register
        total = sum(f.size for f in self._files)
        # True the reservation up to what is stored (it cannot fail: it only shrinks).
        register.release(self.id)
        register.allocate(self.id, Resources(storage=total))
        data_key = _data_key(name, self.id)
        final = intake.layout.final_dir(data_key)
        try:
            return await self._record(name, data_key, final, total)
        except BaseException:
            await asyncio.to_thread(remove_path, final)
            raise

    async def _record(self, name: str, data_key: str, final: Path, total: int) -> Workload:
        intake = self.intake
        await asyncio.to_thread(self._place, data_key, final)
        now = time.time()
        files = [f.record() for f in self._files]
        wl = Workload(
            id=self.id, name=name, type="data", config={},
            requirements=Resources(storage=total), node_id=intake.config.node_id,
            origin=intake.config.node_id, status=COMPLETED, created_at=self.started_at,
            started_at=self.started_at, finished_at=now, exit_code=None,
            message=f"stored {len(files)} file(s), {total} bytes",
            runtime={"data_key": data_key, "path": str(final), "size": total,
                     "file_count": len(files), "files": files[:MAX_LISTED_FILES],
                     "files_truncated": len(files) > MAX_LISTED_FILES})
        objects = [{"key": f"{data_key}/{f.path}", "workload_id": self.id, "data_key": data_key,
                    "size": f.size, "etag": rec["etag"], "sha256": rec["sha256"],
                    "content_type": f.content_type, "last_modified": now}
                   for f, rec in zip(self._files, files)]
        intake.manager.record_completed(wl, objects)
        return wl

    def _place(self, data_key: str, final: Path) -> None:
        """Build the tree inside the staging dir, then move it into place with one rename."""
        tree = self.dir / "tree"
        tree.mkdir()
        dirs = {tree}
        for staged in self._files:
            dest = tree / staged.path
            if dest.parent not in dirs:
                dest.parent.mkdir(parents=True, exist_ok=True)
                dirs.update(p for p in dest.parents if tree in p.parents or p == tree)
            os.rename(staged.temp, dest)
        for directory in dirs:
            fsync_dir(directory)
        # The marker lets a restart remove the final dir if we crash before it is recorded.
        marker = self.dir / TARGET_MARKER
        marker.write_text(data_key)
        fsync_dir(self.dir)
        os.rename(tree, final)
        fsync_dir(final.parent)


def _write_batch(batch: list[tuple[_StagedFile, bytearray]], to_seal: list[_StagedFile]) -> None:
    for staged, buf in batch:
        staged.hash_md5(buf)
        staged.write_and_hash_sha256(buf)
    _seal_all(to_seal)


def _seal_all(files: list[_StagedFile]) -> None:
    for staged in files:
        staged.seal()


# -- header and name checks (pure functions) ---------------------------------------------

def _boundary(content_type: str) -> bytes:
    kind, params = parse_disposition(content_type)
    if kind != "multipart/form-data":
        raise _malformed(f"expected Content-Type multipart/form-data, got {kind!r}")
    boundary = params.get("boundary")
    if not boundary:
        raise _malformed("the Content-Type has no boundary parameter")
    if not _BOUNDARY_RE.match(boundary):
        raise _malformed("the multipart boundary is not valid (1-70 characters, RFC 2046)")
    return boundary.encode("ascii")


def parse_disposition(value: str) -> tuple[str, dict[str, str]]:
    """Split ``form-data; name="a"; filename="b"`` (or a Content-Type) into kind and params.

    Quoted values keep every character as sent except ``\\"`` (an escaped quote); a
    backslash anywhere else is kept, so a filename cannot hide one. RFC 5987 ``key*=``
    parameters are ignored, as RFC 7578 says for form-data.
    """
    kind, _, rest = value.partition(";")
    params: dict[str, str] = {}
    i, n = 0, len(rest)
    while i < n:
        while i < n and rest[i] in " \t;":
            i += 1
        if i >= n:
            break
        eq = rest.find("=", i)
        if eq < 0:
            raise _malformed(f"malformed header parameter in {value!r}")
        key = rest[i:eq].strip().lower()
        i = eq + 1
        while i < n and rest[i] in " \t":
            i += 1
        if i < n and rest[i] == '"':
            i += 1
            chars = []
            while True:
                if i >= n:
                    raise _malformed(f"unterminated quoted string in {value!r}")
                if rest.startswith('\\"', i):
                    chars.append('"')
                    i += 2
                    continue
                if rest[i] == '"':
                    i += 1
                    break
                chars.append(rest[i])
                i += 1
            val = "".join(chars)
        else:
            end = rest.find(";", i)
            end = n if end < 0 else end
            val = rest[i:end].strip()
            i = end
        if not key or key.endswith("*"):
            continue
        if key in params:
            raise _malformed(f"parameter {key!r} given twice in {value!r}")
        params[key] = val
    return kind.strip().lower(), params


def relative_path(filename: str) -> str:
    """Check a part's filename as a relative path inside the data key; raise 400 if unsafe."""
    if not filename:
        raise BadRequest("file: empty filename", code="invalid_filename")
    shown = repr(filename)[:200]
    if "\x00" in filename:
        raise BadRequest(f"file {shown}: NUL in the filename", code="invalid_filename")
    if "\\" in filename:
        raise BadRequest(f"file {shown}: backslashes are not allowed; use '/'",
                         code="invalid_filename")
    if _CONTROL_RE.search(filename):
        raise BadRequest(f"file {shown}: control characters in the filename",
                         code="invalid_filename")
    if filename.startswith("/") or _DRIVE_RE.match(filename):
        raise BadRequest(f"file {shown}: absolute paths are not allowed", code="invalid_filename")
    parts = filename.split("/")
    if ".." in parts:
        raise BadRequest(f"file {shown}: '..' is not allowed in a path", code="invalid_filename")
    if any(p in ("", ".") for p in parts):
        raise BadRequest(f"file {shown}: empty or '.' path component", code="invalid_filename")
    if len(filename.encode()) > MAX_PATH_BYTES:
        raise BadRequest(f"file {shown}: path longer than {MAX_PATH_BYTES} bytes",
                         code="invalid_filename")
    if any(len(p.encode()) > MAX_COMPONENT_BYTES for p in parts):
        raise BadRequest(f"file {shown}: a name longer than {MAX_COMPONENT_BYTES} bytes",
                         code="invalid_filename")
    return filename


def _content_type(raw: bytes | None, path: str) -> str:
    declared = raw.decode("latin-1").strip() if raw else ""
    if declared and declared.lower() != "application/octet-stream" \
            and len(declared) <= 255 and _CONTENT_TYPE_RE.match(declared):
        return declared
    return mimetypes.guess_type(path)[0] or "application/octet-stream"


def _data_key(name: str, workload_id: str) -> str:
    """A readable, unique top-level key: ``<slug of name>-<workload id>``."""
    slug = _SLUG_RE.sub("-", name.lower()).strip("-._")[:48].rstrip("-._")
    return f"{slug}-{workload_id}" if slug else workload_id


def _as_cnet_error(exc: BaseException) -> BaseException:
    if isinstance(exc, CnetError):
        return exc
    if isinstance(exc, FormParserError):
        return _malformed(f"malformed multipart body: {exc}")
    if isinstance(exc, OSError):
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return _no_storage(f"the disk is full: {exc.strerror}")
        return CnetError(f"cannot store the upload: {exc.strerror or exc}", code="storage_error")
    return exc
