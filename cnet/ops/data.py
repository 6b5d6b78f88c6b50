"""The data operations between nodes: where a stored file is (locate) and one chunk of it (fetch).

What a node's model cache (:mod:`cnet.model_cache`) uses to copy a model stored anywhere in the
tree. Both are node-only: a client never reads files through them.

Routing. ``locate`` is answered by the node whose store records ``<data_key>/<path>``; any
other node asks, all at once, each live neighbour not yet on the request's path (the bus's
``visited``, at most ``HOP_LIMIT`` hops), and answers with the shortest route found: the node
ids from itself to the holder, with the file's size and sha256 from the holder's
``data_objects`` row. ``fetch`` carries the rest of that route: each node on it forwards the
request to the next one, the last reads the chunk (``offset``, at most ``MAX_CHUNK`` bytes) from
its own store and answers it with the size and sha256 again, so the asker notices a file that
changed under it. In a tree every node is reached once; peers may reach one twice, bounded by
the hop limit.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from ..errors import BadRequest, CnetError, NotFound
from ..executors.data import DataLayout
from ..model_cache import CHUNK, ModelRef, model_ref
from ..placement import HOP_LIMIT
from ..workload import ID_RE
from .base import Caller, Operation, whole_number

if TYPE_CHECKING:
    from ..manager import Manager
    from ..node import Node
    from ..remote import NeighbourPort

__all__ = ["Fetch", "Locate", "find", "read_chunk", "stored_file"]

log = logging.getLogger(__name__)

MAX_CHUNK = CHUNK
MAX_OFFSET = 1 << 62


@dataclass(frozen=True)
class Locate(Operation):
    """Which node stores ``<data_key>/<path>``: ``{"route": [ids to it], "size", "sha256"}``."""

    name = "locate"
    from_nodes = True
    data_key: str = ""
    path: str = ""

    @classmethod
    def parse(cls, args: dict[str, Any]) -> Self:
        ref = model_ref({k: args.get(k) for k in ("data_key", "path")}, "args")
        return cls(data_key=ref.data_key, path=ref.path)

    async def run(self, node: "Node", caller: Caller) -> dict[str, Any]:
        return await find(node.manager, node.port, ModelRef(self.data_key, self.path),
                          hops=caller.hops, visited=caller.visited)


@dataclass(frozen=True)
class Fetch(Operation):
    """One chunk of a stored file, from this node or from the end of ``route``:
    ``{"size", "sha256", "offset", "data": bytes}``."""

    name = "fetch"
    from_nodes = True
    data_key: str = ""
    path: str = ""
    offset: int = 0
    length: int = MAX_CHUNK
    route: tuple[str, ...] = ()

    @classmethod
    def parse(cls, args: dict[str, Any]) -> Self:
        ref = model_ref({k: args.get(k) for k in ("data_key", "path")}, "args")
        route = args.get("route", [])
        if not isinstance(route, list) or len(route) > HOP_LIMIT or not all(
                isinstance(n, str) and ID_RE.match(n) for n in route):
            raise BadRequest(f"route: a list of at most {HOP_LIMIT} node ids",
                             code="invalid_argument")
        return cls(data_key=ref.data_key, path=ref.path,
                   offset=whole_number(args, "offset", 0, 0, MAX_OFFSET),
                   length=whole_number(args, "length", MAX_CHUNK, 1, MAX_CHUNK),
                   route=tuple(route))

    def args(self) -> dict[str, Any]:
        return {**super().args(), "route": list(self.route)}

    async def run(self, node: "Node", caller: Caller) -> dict[str, Any]:
        ref = ModelRef(self.data_key, self.path)
        if not self.route:
            return await read_chunk(node.manager, ref, self.offset, self.length)
        onward = {**self.args(), "route": list(self.route[1:])}
        return await node.port.ask(self.route[0], self.name, onward, hops=caller.hops + 1,
                                   visited=(*caller.visited, node.node_id))


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
