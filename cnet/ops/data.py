"""The data operations between nodes: where a stored file is (locate) and one chunk of it (fetch).

What a node's model cache (:mod:`cnet.model_cache`) uses to copy a model stored anywhere in the
tree. Both are node-only: a client never reads files through them.

Routing. ``locate`` names a file as ``data_key`` and ``path``, or as ``bucket`` and ``key`` (an
object of a CNET data gateway). It is answered by the node whose store records
``<data_key>/<path>`` (or whose gateway serves the object); any other node asks, all at once, each live neighbour not yet on the request's path (the bus's
``visited``, at most ``HOP_LIMIT`` hops), and answers with the shortest route found: the node
ids from itself to the holder, with the file's size, sha256 (from the holder's ``data_objects``
row), data key and path, and the holders and cached copies met on the way (for placement). ``fetch`` carries the rest of that route: each node on it forwards the
request to the next one, the last reads the chunk (``offset``, at most ``MAX_CHUNK`` bytes) from
its own store and answers it with the size and sha256 again, so the asker notices a file that
changed under it. In a tree every node is reached once; peers may reach one twice, bounded by
the hop limit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self

from ..data_locator import CHUNK, SCHEME, ModelRef, ObjectRef, Source, find, model_ref, model_url, read_chunk
from ..errors import BadRequest
from ..placement import HOP_LIMIT
from ..workload import ID_RE
from .base import Caller, Operation, whole_number

if TYPE_CHECKING:
    from ..node import Node

__all__ = ["Fetch", "Locate"]

log = logging.getLogger(__name__)

MAX_CHUNK = CHUNK
MAX_OFFSET = 1 << 62


@dataclass(frozen=True)
class Locate(Operation):
    """Which node stores ``<data_key>/<path>`` (or serves ``s3://<bucket>/<key>``):
    ``{"route": [ids to it], "size", "sha256", "data_key", "path", "holders", "copies"}``."""

    name = "locate"
    from_nodes = True
    data_key: str = ""
    path: str = ""
    bucket: str = ""
    key: str = ""
    survey: bool = False

    @classmethod
    def parse(cls, args: dict[str, Any]) -> Self:
        survey = args.get("survey", False)
        if not isinstance(survey, bool):
            raise BadRequest("args.survey: true or false", code="invalid_argument")
        if "bucket" not in args:
            ref = model_ref({k: args.get(k) for k in ("data_key", "path")}, "args")
            return cls(data_key=ref.data_key, path=ref.path, survey=survey)
        bucket, key = args.get("bucket"), args.get("key")
        if not isinstance(bucket, str) or not isinstance(key, str):
            raise BadRequest("args: bucket and key are strings", code="invalid_argument")
        obj = model_url(f"{SCHEME}{bucket}/{key}", "args")
        return cls(bucket=obj.bucket, key=obj.object_key, survey=survey)

    def args(self) -> dict[str, Any]:
        return {**self.source().args(), **({"survey": True} if self.survey else {})}

    def source(self) -> Source:
        return ObjectRef(self.bucket, self.key) if self.bucket else ModelRef(self.data_key,
                                                                              self.path)

    async def run(self, node: "Node", caller: Caller) -> dict[str, Any]:
        copies = node.models.copy_of if node.models is not None else None
        return await find(node.manager, node.port, self.source(), hops=caller.hops,
                          visited=caller.visited, copies=copies, survey=self.survey)


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
