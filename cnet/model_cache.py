"""The model cache: model files named as data stored on some node of the tree, copied here.

A service workload may name its model as ``{"data_key": K, "path": P}``: the file ``P`` of the
``type=data`` upload ``K``, on whichever node stores it, or as ``s3://BUCKET/KEY``, an object of
a CNET data gateway (the stored file it serves). ``ModelCache.acquire`` finds that node
(:func:`cnet.ops.data.find`), streams the file from it in chunks over the bus (a few chunks in
flight, never the whole file in memory), checks its size and sha256 against the upload's record
while it arrives, and keeps it, content-addressed, as ``<state_dir>/models/<sha256>`` (written
to a temp file, fsynced, renamed into place). A model stored on this node is copied the same
way, locally, so a service never depends on the data workload staying.

The entries count against this node's storage as one reservation (``CACHE_ALLOCATION``),
resized as entries come and go. Room for a new entry is made by evicting the least recently
used ones (last use = the file's mtime, so it survives a restart), never one a live workload
uses. An entry is verified again whenever a workload takes it: a corrupt one is removed and
fetched again.

What each model named here was last found to be (its sha256) is kept in ``names.json`` beside
the entries, so a ``locate`` passing through this node can tell that it has a copy
(``copy_of``) -- the placement's preference -- also after a restart.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .data_locator import CHUNK, EARLIER_CHUNK, ModelRef, Source, find, model_ref, read_chunk
from .errors import CnetError, InsufficientResources
from .executors.data import fsync_dir
from .model_sink import FileSink
from .resources import Resources

if TYPE_CHECKING:
    from .manager import Manager
    from .register import Register
    from .remote import NeighbourPort

__all__ = ["CACHE_ALLOCATION", "CHUNK", "Entry", "ModelCache"]

log = logging.getLogger(__name__)

CACHE_ALLOCATION = "cache:models"   # the register's name for the cache's storage (not a workload id)
WINDOW = 3                          # chunk requests in flight
BACKLOG = 3                         # chunks waiting to be hashed and written, at most
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_PARTIAL = ".partial-"
NAMES = "names.json"                # what each model named here was last found to be
MAX_NAMES = 1024


@dataclass(frozen=True)
class Entry:
    sha256: str
    path: Path
    size: int


class ModelCache:
    """``<root>/<sha256>`` files; ``acquire`` one for a workload, ``release`` it after.

    ``manager`` gives this node's store (for models stored here) and its live workloads (an
    entry one of them uses is never evicted); ``port`` reaches the other nodes.
    """

    def __init__(self, root: Path, register: "Register", port: "NeighbourPort",
                 manager: "Manager"):
        self.root = root
        self.register = register
        self.port = port
        self.manager = manager
        self.node_id = manager.node_id
        self.fetches = 0                       # entries copied here (from any node)
        self.hits = 0                          # acquires answered by an entry already here
        self._sizes: dict[str, int] = {}       # sha256 -> bytes of the entries on disk
        self._incoming = 0                     # bytes reserved for entries being fetched
        self._users: dict[str, str] = {}       # workload id -> the sha256 it uses
        self._names: dict[str, str] = {}       # a source's key (ref.key) -> the sha256 it was
        self._fetching: dict[str, asyncio.Future] = {}
        self._scan()

    # -- the workloads' side -------------------------------------------------------------

    async def acquire(self, workload_id: str, source: Source) -> Entry:
        """The verified cache entry of ``source`` for ``workload_id``, fetched first if it is
        not here (or corrupt). Raises CnetError: not stored anywhere reachable, no room, a copy
        that does not match its record."""
        try:
            route, size, sha256, ref = await self._find(source)
        except CnetError:
            sha256 = self._names.get(source.key)   # the holder is out of reach: a copy will do
            if sha256 is None or sha256 not in self._sizes:
                raise
            route, size, ref = None, self._sizes[sha256], source
        self._users[workload_id] = sha256    # pinned from here on: never evicted under it
        try:
            entry = await self._entry(ref, route, size, sha256)
        except BaseException:
            self._users.pop(workload_id, None)
            raise
        for named in {source, ref}:
            self._name(named, sha256)
        return entry

    def copy_of(self, source: Source) -> str | None:
        """The sha256 of the entry here that ``source`` was last found to be, if it is here."""
        sha256 = self._names.get(source.key)
        return sha256 if sha256 in self._sizes else None

    def adopt(self, workload_id: str, sha256: str) -> Entry | None:
        """After an agent restart: ``workload_id`` uses entry ``sha256`` again (None if gone)."""
        if not isinstance(sha256, str) or sha256 not in self._sizes:
            return None
        self._users[workload_id] = sha256
        return self._entry_of(sha256)

    def release(self, workload_id: str) -> None:
        self._users.pop(workload_id, None)

    def path_for(self, workload_id: str) -> Path | None:
        sha256 = self._users.get(workload_id)
        return self.root / sha256 if sha256 is not None else None

    def stats(self) -> dict[str, int]:
        return {"entries": len(self._sizes), "bytes": sum(self._sizes.values()),
                "fetches": self.fetches, "hits": self.hits}

    # -- entries -------------------------------------------------------------------------

    async def _find(self, source: Source) -> tuple[list[str], int, str, ModelRef]:
        found = await find(self.manager, self.port, source, hops=0, visited=())
        size, sha256, route = found["size"], found["sha256"], found["route"]
        try:
            ref = source if isinstance(source, ModelRef) else model_ref(
                {"data_key": found.get("data_key"), "path": found.get("path")})
        except CnetError:
            ref = None
        if (ref is None or not isinstance(size, int) or isinstance(size, bool) or size < 0
                or not isinstance(sha256, str) or not _SHA_RE.match(sha256)
                or not isinstance(route, list) or not route
                or not all(isinstance(n, str) for n in route)):
            raise CnetError(f"model {source.key}: a malformed answer about where it is stored",
                            code="model_fetch_failed", status=502)
        return route, size, sha256, ref

    async def _entry(self, ref: ModelRef, route: list[str] | None, size: int,
                     sha256: str) -> Entry:
        while sha256 in self._fetching:           # one fetch of each model at a time
            await asyncio.shield(self._fetching[sha256])
        if sha256 in self._sizes:
            if await asyncio.to_thread(_digest, self.root / sha256) == sha256:
                os.utime(self.root / sha256)      # its last use, for LRU
                self.hits += 1
                return self._entry_of(sha256)
            log.warning("model cache: entry %s does not match its sha256; fetching it again",
                        sha256)
            self._drop(sha256)
        if route is None:
            raise CnetError(f"model {ref.key}: the copy here is corrupt and no node storing it "
                            f"can be reached", code="model_not_found", status=404)
        done = asyncio.get_running_loop().create_future()
        self._fetching[sha256] = done
        try:
            self._reserve(size, sha256)
            try:
                await self._fetch(ref, route, size, sha256)
                self._sizes[sha256] = size
                self.fetches += 1
            finally:
                self._incoming -= size
                self._resize()                    # a failed fetch holds nothing after it
        finally:
            del self._fetching[sha256]
            done.set_result(None)
        return self._entry_of(sha256)

    def _entry_of(self, sha256: str) -> Entry:
        return Entry(sha256, self.root / sha256, self._sizes[sha256])

    async def _fetch(self, ref: ModelRef, route: list[str], size: int, sha256: str) -> None:
        """Stream ``ref`` from the end of ``route`` into ``<root>/<sha256>``, checked: the first
        chunk alone (it tells the chunk size, ``_first``), then ``WINDOW`` chunk requests in
        flight, the chunks that came hashed and written (``FileSink``)."""
        started, cpu = time.monotonic(), time.process_time()
        try:
            fd, tmp_name = tempfile.mkstemp(prefix=f"{_PARTIAL}{sha256[:16]}-", dir=self.root)
        except OSError as exc:
            raise _unwritable(self.node_id, ref, exc) from None
        tmp = Path(tmp_name)
        ahead: deque[asyncio.Future] = deque()
        sink = FileSink(fd, BACKLOG)
        try:
            try:
                step = CHUNK
                if size:
                    step, first = await self._first(ref, route)
                    ahead.append(asyncio.get_running_loop().create_future())
                    ahead[0].set_result(first)
                offsets = iter(range(step, size, step))
                ahead.extend(asyncio.ensure_future(self._chunk(ref, route, offset, step))
                             for _, offset in zip(range(WINDOW), offsets))  # range first: none lost
                while ahead:
                    answer = await ahead.popleft()
                    nxt = next(offsets, None)
                    if nxt is not None:
                        ahead.append(asyncio.ensure_future(self._chunk(ref, route, nxt, step)))
                    await sink.put(_checked_chunk(ref, answer, sink.written, size, sha256, step))
                digest = await sink.finish()
            finally:
                for task in ahead:
                    task.cancel()
                await sink.close()
                os.close(fd)
            if digest != sha256:
                raise CnetError(f"model {ref.key}: the copy fetched from {route[-1]} does not "
                                f"match its sha256 {sha256}", code="model_corrupt", status=502)
            os.replace(tmp, self.root / sha256)
            fsync_dir(self.root)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise _unwritable(self.node_id, ref, exc) from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        elapsed = max(time.monotonic() - started, 1e-6)
        log.info("model cache: %s (%d bytes, sha256 %s) fetched from %s in %.3fs (%.1f MB/s, "
                 "%.0f ms CPU of this process)", ref.key, size, sha256[:12], route[-1], elapsed,
                 size / elapsed / 1e6, (time.process_time() - cpu) * 1000)

    async def _first(self, ref: ModelRef, route: list[str]) -> tuple[int, dict]:
        """The chunk size for this fetch and the first chunk: ``CHUNK``, or ``EARLIER_CHUNK``
        where a node of an earlier version on the route refuses chunks that large."""
        try:
            return CHUNK, await self._chunk(ref, route, 0, CHUNK)
        except CnetError as exc:
            if exc.code != "invalid_argument" or len(route) == 1:
                raise
            log.info("model cache: %s: a node on the route %s refuses %d-byte chunks (%s); "
                     "fetching in %d-byte chunks", ref.key, "/".join(route), CHUNK, exc.message,
                     EARLIER_CHUNK)
        return EARLIER_CHUNK, await self._chunk(ref, route, 0, EARLIER_CHUNK)

    async def _chunk(self, ref: ModelRef, route: list[str], offset: int, length: int) -> dict:
        if len(route) == 1:                       # stored on this node
            return await read_chunk(self.manager, ref, offset, length)
        return await self.port.ask(route[1], "fetch", {**ref.args(), "offset": offset,
                                                       "length": length, "route": route[2:]},
                                   visited=(self.node_id,))

    # -- storage -------------------------------------------------------------------------

    def _pinned(self) -> set[str]:
        live = self.manager.live
        for wid in [w for w in self._users if w not in live]:
            del self._users[wid]                  # ended: it no longer holds its entry
        return set(self._users.values()) | set(self._fetching)

    def _reserve(self, size: int, sha256: str) -> None:
        """Hold ``size`` more bytes of storage, evicting unused entries (LRU) as needed."""
        self._incoming += size
        while True:
            try:
                self._resize()
                return
            except InsufficientResources as exc:
                victim = self._least_recent(self._pinned())
                if victim is None:
                    self._incoming -= size
                    raise InsufficientResources(
                        f"{self.node_id}: no room in the model cache for {sha256[:12]} "
                        f"({size} bytes): {exc.message}; every entry left is in use",
                        details=exc.details) from None
                log.info("model cache: evicting %s (%d bytes, least recently used)", victim,
                         self._sizes[victim])
                self._drop(victim)

    def _least_recent(self, pinned: set[str]) -> str | None:
        def last_use(sha256: str) -> float:
            try:
                return (self.root / sha256).stat().st_mtime
            except OSError:
                return 0.0
        unused = [s for s in self._sizes if s not in pinned]
        return min(unused, key=last_use) if unused else None

    def _drop(self, sha256: str) -> None:
        (self.root / sha256).unlink(missing_ok=True)
        self._sizes.pop(sha256, None)
        self._resize()

    # -- names ---------------------------------------------------------------------------

    def _name(self, source: Source, sha256: str) -> None:
        if self._names.get(source.key) == sha256:
            return
        self._names.pop(source.key, None)
        self._names[source.key] = sha256              # the newest last: kept when trimming
        kept = {k: s for k, s in self._names.items() if s in self._sizes}
        self._names = dict(list(kept.items())[-MAX_NAMES:])
        tmp = self.root / f"{NAMES}.tmp"
        try:
            tmp.write_text(json.dumps(self._names), encoding="utf-8")
            os.replace(tmp, self.root / NAMES)
        except OSError as exc:                        # only the preference depends on it
            log.warning("model cache: cannot save %s (%s)", NAMES, exc)

    def _load_names(self) -> None:
        try:
            names = json.loads((self.root / NAMES).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
        if isinstance(names, dict):
            self._names = {k: s for k, s in names.items()
                           if isinstance(k, str) and isinstance(s, str) and s in self._sizes}

    def _resize(self) -> None:
        total = sum(self._sizes.values()) + self._incoming
        if total:
            self.register.resize(CACHE_ALLOCATION, Resources(storage=total))
        else:
            self.register.release(CACHE_ALLOCATION)

    def _scan(self) -> None:
        """Take the entries a previous run left; remove its partial downloads."""
        self.root.mkdir(parents=True, exist_ok=True)
        for item in self.root.iterdir():
            if item.name.startswith(_PARTIAL):
                item.unlink(missing_ok=True)
            elif _SHA_RE.match(item.name) and item.is_file():
                self._sizes[item.name] = item.stat().st_size
        total = sum(self._sizes.values())
        if total:
            self.register.adopt(CACHE_ALLOCATION, Resources(storage=total))
        self._load_names()


def _unwritable(node_id: str, ref: ModelRef, exc: OSError) -> CnetError:
    return CnetError(f"{node_id}: cannot write model {ref.key} to its cache "
                     f"({exc.strerror or exc})", code="storage_error")


def _checked_chunk(ref: ModelRef, answer: Any, offset: int, size: int, sha256: str,
                   step: int) -> bytes | memoryview:
    """The bytes of one fetch answer (a memoryview of the frame they came in, from a
    neighbour), if it is the chunk at ``offset`` of that very file (of ``step`` bytes at most)."""
    data = answer.get("data") if isinstance(answer, dict) else None
    if (not isinstance(data, (bytes, memoryview)) or answer.get("offset") != offset
            or answer.get("size") != size or answer.get("sha256") != sha256
            or not data or len(data) > min(step, size - offset)):
        raise CnetError(f"model {ref.key}: a fetch answer at offset {offset} is not a chunk of "
                        f"the recorded file (was it replaced meanwhile?)",
                        code="model_fetch_failed", status=502)
    return data


def _digest(path: Path) -> str | None:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while block := f.read(CHUNK):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()
