"""Where a file of a data upload is stored in the tree, and reading it in chunks.

``find`` is answered by this node's store when it records ``<data_key>/<path>``; otherwise it
asks, all at once, each live neighbour not yet visited (``locate``, at most ``HOP_LIMIT`` hops)
and returns the shortest route to the holder. ``read_chunk`` reads one chunk of a file stored
here. The ``locate``/``fetch`` operations (:mod:`cnet.ops.data`) and the model cache use both.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from .errors import BadRequest, CnetError, NotFound
from .executors.data import _DATA_KEY_RE, DataLayout
from .placement import HOP_LIMIT

if TYPE_CHECKING:
    from .manager import Manager
    from .remote import NeighbourPort

__all__ = ["ModelRef", "StoredFile", "find", "model_ref", "read_chunk", "stored_file"]

log = logging.getLogger(__name__)

MAX_PATH = 1024     # bytes of a file's path inside its upload


@dataclass(frozen=True)
class ModelRef:
    """A file of a data upload: ``<data_key>/<path>`` in the tree's stores."""

    data_key: str
    path: str

    @property
    def key(self) -> str:
        return f"{self.data_key}/{self.path}"

    def args(self) -> dict[str, str]:
        return {"data_key": self.data_key, "path": self.path}


def model_ref(value: Any, where: str = "config.model") -> ModelRef:
    """``{"data_key": K, "path": P}`` checked (a data key; a relative path with no ``.`` or
    ``..`` parts), or BadRequest naming what is wrong."""
    if not isinstance(value, Mapping):
        raise BadRequest(f"{where}: an object {{data_key, path}}", code="invalid_field")
    unknown = sorted(set(value) - {"data_key", "path"})
    if unknown:
        raise BadRequest(f"{where}: unknown field(s) {', '.join(map(str, unknown))}",
                         code="invalid_field")
    key, path = value.get("data_key"), value.get("path")
    if not isinstance(key, str) or not _DATA_KEY_RE.match(key):
        raise BadRequest(f"{where}.data_key: the data key of a data upload (lower-case letters, "
                         f"digits, '.', '_' and '-')", code="invalid_field")
    if (not isinstance(path, str) or not path or len(path) > MAX_PATH or "\x00" in path
            or "\\" in path or any(part in ("", ".", "..") for part in path.split("/"))):
        raise BadRequest(f"{where}.path: a file's relative path inside the upload, without "
                         f"'.' or '..' parts", code="invalid_field")
    return ModelRef(key, path)


@dataclass(frozen=True)
class StoredFile:
    path: Path
    size: int
    sha256: str


def stored_file(manager: "Manager", ref: ModelRef) -> StoredFile | None:
    """The file ``ref`` names in this node's store, from its ``data_objects`` row, or None."""
    row = manager.store.db.execute_sql("SELECT size, sha256 FROM data_objects WHERE key = ?",
                                       (ref.key,)).fetchone()
    if row is None:
        return None
    root = DataLayout(manager.config.data_path).final_dir(ref.data_key)
    return StoredFile(root / ref.path, int(row[0]), str(row[1]))


async def read_chunk(manager: "Manager", ref: ModelRef, offset: int, length: int) -> dict[str, Any]:
    """``length`` bytes (or fewer, at the end) at ``offset`` of a file stored here."""
    found = stored_file(manager, ref)
    if found is None:
        raise NotFound(f"{manager.node_id}: no data {ref.key} stored here", code="data_not_found")
    if offset >= found.size and not (offset == 0 and found.size == 0):
        raise BadRequest(f"offset: {offset} is past the end of {ref.key} ({found.size} bytes)",
                         code="invalid_argument")
    try:
        data = await asyncio.to_thread(_read, found.path, offset, min(length, found.size - offset))
    except OSError as exc:
        raise CnetError(f"{manager.node_id}: cannot read {ref.key} ({exc.strerror or exc})",
                        code="storage_error", status=500) from None
    return {"size": found.size, "sha256": found.sha256, "offset": offset, "data": data}


def _read(path: Path, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        return os.pread(f.fileno(), length, offset)


async def find(manager: "Manager", port: "NeighbourPort", ref: ModelRef, *, hops: int,
               visited: tuple[str, ...]) -> dict[str, Any]:
    """Where ``ref`` is stored, seen from this node: ``{"route": [this node, ..., holder],
    "size", "sha256"}``, or NotFound (``data_not_found``)."""
    me = manager.node_id
    here = stored_file(manager, ref)
    if here is not None:
        return {"route": [me], "size": here.size, "sha256": here.sha256}
    visited = (*visited, me)
    asked = [n.node_id for n in port.neighbours()
             if n.status == "alive" and n.node_id not in visited]
    if hops + 1 > HOP_LIMIT or not asked:
        raise NotFound(f"data {ref.key} is not stored on {me} or any node it can ask",
                       code="data_not_found")
    answers = await asyncio.gather(*(port.ask(n, "locate", ref.args(), hops=hops + 1,
                                              visited=visited) for n in asked),
                                   return_exceptions=True)
    best: dict[str, Any] | None = None
    for node_id, answer in zip(asked, answers):
        if isinstance(answer, BaseException):
            if not (isinstance(answer, CnetError) and answer.code == "data_not_found"):
                log.info("locating %s: %s did not answer (%s)", ref.key, node_id, answer)
            continue
        route = answer.get("route") if isinstance(answer, dict) else None
        if isinstance(route, list) and route and (best is None or len(route) < len(best["route"])):
            best = answer
    if best is None:
        raise NotFound(f"data {ref.key} is not stored on any node reachable from {me}",
                       code="data_not_found")
    return {**best, "route": [me, *best["route"]]}
