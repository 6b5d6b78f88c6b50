"""Where a file of a data upload is stored in the tree, and reading it in chunks.

A model is named as data in one of two ways (``model_source``): ``{"data_key", "path"}``
(:class:`ModelRef`, a file of a ``type=data`` upload) or ``"s3://BUCKET/KEY"``
(:class:`ObjectRef`, an object of a CNET data gateway: a ``datagateway`` workload serving
``BUCKET`` over its node's data store, where the key ``<data_key>/<path>`` is that file).

``find`` is answered by this node when its store records the file (for an object: when a
gateway here serves the bucket and the store records the key); otherwise it asks, all at once,
each live neighbour not yet visited (``locate``, at most ``HOP_LIMIT`` hops) and returns the
shortest route to the holder, with the holder's data key and path of the file. Every answer
also lists, bounded, the nodes met on the way that hold the model: the holder, and nodes whose
model cache has a copy (``copies``, node id -> sha256; only those matching the holder's record
count). ``read_chunk`` reads one chunk of a file stored here. The ``locate``/``fetch``
operations (:mod:`cnet.ops.data`), the model cache and the placement check use them.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Union

from .errors import BadRequest, CnetError, NotFound
from .executors.data import _DATA_KEY_RE, DataLayout
from .placement import HOP_LIMIT

if TYPE_CHECKING:
    from .manager import Manager
    from .remote import NeighbourPort

__all__ = ["CHUNK", "EARLIER_CHUNK", "MAX_HOLDERS", "ModelRef", "ObjectRef", "Source", "StoredFile", "find",
           "model_ref", "model_source", "model_url", "read_chunk", "stored_file"]

log = logging.getLogger(__name__)

MAX_PATH = 1024     # bytes of a file's path inside its upload
MAX_KEY = 1024      # bytes of an object key (as S3)
MAX_HOLDERS = 64    # node ids of holders and copies an answer carries
SCHEME = "s3://"
CHUNK = (4 << 20) - 4096            # bytes per fetch answer: within the bus's 4 MiB frames, also
                                    # inside a body (a requester that takes no blob frame)
EARLIER_CHUNK = 1 << 20             # the largest chunk a node of an earlier CNET1 serves


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


@dataclass(frozen=True)
class ObjectRef:
    """The object ``object_key`` of the CNET gateway bucket ``bucket``:
    ``s3://<bucket>/<object_key>``."""

    bucket: str
    object_key: str

    @property
    def key(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.object_key}"

    def args(self) -> dict[str, str]:
        return {"bucket": self.bucket, "key": self.object_key}


Source = Union[ModelRef, ObjectRef]


def model_source(config: Mapping[str, Any]) -> Source | None:
    """The model a (validated) service config names as data, or None (``model_path``, none)."""
    if "model" in config:
        return model_ref(config["model"])
    if "model_url" in config:
        return model_url(config["model_url"])
    return None


def model_url(value: Any, where: str = "config.model_url") -> ObjectRef:
    """``s3://BUCKET/KEY`` checked (an S3 bucket name; a key without empty, ``.`` or ``..``
    segments), or BadRequest naming what is wrong."""
    # Here, not at the top: the gateway's executor module loads with its first workload.
    from .executors.datagateway import check_bucket_name

    if not isinstance(value, str) or not value.startswith(SCHEME):
        raise BadRequest(f"{where}: an s3://BUCKET/KEY URL of an object on a CNET data gateway",
                         code="invalid_field")
    bucket, _, key = value[len(SCHEME):].partition("/")
    try:
        check_bucket_name(bucket)
    except BadRequest as exc:
        raise BadRequest(f"{where}: {exc.message.removeprefix('config.bucket: ')}",
                         code="invalid_field") from None
    if (not key or len(key.encode("utf-8", "surrogatepass")) > MAX_KEY or "\x00" in key
            or any(part in ("", ".", "..") or part.startswith(".cnet")
                   for part in key.split("/"))):
        raise BadRequest(f"{where}: the object key after the bucket must be a path without "
                         f"empty, '.', '..' or '.cnet' segments (at most {MAX_KEY} bytes)",
                         code="invalid_field")
    return ObjectRef(bucket, key)


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


def served_file(manager: "Manager", ref: ObjectRef) -> tuple[ModelRef, StoredFile]:
    """The stored file a gateway of this node serves as ``ref``; NotFound saying why not
    (``bucket_not_found``: no gateway here serves the bucket; ``data_not_found``: one does,
    but not from the data store, or without that key)."""
    gateways = [wl for wl in manager.live.values() if wl.type == "datagateway"
                and wl.config.get("bucket") == ref.bucket]
    if not gateways:
        raise NotFound(f"no CNET data gateway on {manager.node_id} serves bucket {ref.bucket}",
                       code="bucket_not_found")
    data_path = os.path.realpath(manager.config.data_path)
    if not any(os.path.realpath(str(wl.config.get("base_path", ""))) == data_path
               for wl in gateways):
        raise NotFound(f"bucket {ref.bucket} is served on {manager.node_id} by gateway "
                       f"{gateways[0].id} from {gateways[0].config.get('base_path')}, not from "
                       f"the node's data store: a model_url needs a gateway over the data store "
                       f"(the default base_path), whose files have an upload's sha256",
                       code="data_not_found")
    data_key, _, path = ref.object_key.partition("/")
    try:
        file_ref = model_ref({"data_key": data_key, "path": path})
    except BadRequest:
        file_ref = None
    found = stored_file(manager, file_ref) if file_ref is not None else None
    if file_ref is None or found is None:
        raise NotFound(f"bucket {ref.bucket} (served on {manager.node_id}) has no object "
                       f"{ref.object_key}", code="data_not_found")
    return file_ref, found


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


Copies = Callable[[Source], "str | None"]


def _here(manager: "Manager", ref: Source) -> tuple[dict[str, Any] | None, str | None]:
    """The answer for ``ref`` stored (or served) here, or None and, for a bucket served here
    that does not have it, why not."""
    if isinstance(ref, ModelRef):
        found, file_ref = stored_file(manager, ref), ref
    else:
        try:
            file_ref, found = served_file(manager, ref)
        except NotFound as exc:
            return None, (exc.message if exc.code == "data_not_found" else None)
    if found is None:
        return None, None
    return {"route": [manager.node_id], "size": found.size, "sha256": found.sha256,
            **file_ref.args(), "holders": [manager.node_id], "copies": {}}, None


async def find(manager: "Manager", port: "NeighbourPort", ref: Source, *, hops: int,
               visited: tuple[str, ...], copies: Copies | None = None,
               survey: bool = False) -> dict[str, Any]:
    """Where ``ref`` is stored, seen from this node: ``{"route": [this node, ..., holder],
    "size", "sha256", "data_key", "path", "holders": [...], "copies": {node: sha256}}``, or
    NotFound (``data_not_found``; ``bucket_not_found`` when no node serves the bucket).

    A holder answers at once; with ``survey`` (for placement) it asks on too, so the holders
    and copies beyond it are listed as well."""
    me = manager.node_id
    mine = copies(ref) if copies is not None else None
    here, reason = _here(manager, ref)
    if here is not None and not survey:
        return here
    visited = (*visited, me)
    asked = [n.node_id for n in port.neighbours()
             if n.status == "alive" and n.node_id not in visited]
    found_copies: dict[str, str] = {me: mine} if mine else {}
    if hops + 1 > HOP_LIMIT or not asked:
        if here is not None:
            return {**here, "copies": found_copies}
        raise _missing(ref, f"on {me} or any node it can ask", reason, found_copies)
    args = {**ref.args(), "survey": True} if survey else ref.args()
    answers = await asyncio.gather(*(port.ask(n, "locate", args, hops=hops + 1,
                                              visited=visited) for n in asked),
                                   return_exceptions=True)
    best: dict[str, Any] | None = None
    holders: set[str] = set()
    if here is not None:
        best, holders = {**here, "route": []}, {me}
    for node_id, answer in zip(asked, answers):
        if isinstance(answer, CnetError) and answer.code in ("data_not_found", "bucket_not_found"):
            _add_copies(found_copies, answer.details.get("copies"))
            if answer.code == "data_not_found" and isinstance(ref, ObjectRef):
                reason = reason or answer.message   # a bucket served without the key
            continue
        if isinstance(answer, BaseException) or not isinstance(answer, dict):
            log.info("locating %s: %s did not answer (%s)", ref.key, node_id, answer)
            continue
        holders.update(n for n in answer.get("holders") or () if isinstance(n, str))
        _add_copies(found_copies, answer.get("copies"))
        route = answer.get("route")
        if isinstance(route, list) and route and (best is None or len(route) < len(best["route"])):
            best = answer
    if best is None:
        raise _missing(ref, f"on any node reachable from {me}", reason, found_copies)
    return {**best, "route": [me, *best["route"]], "holders": sorted(holders)[:MAX_HOLDERS],
            "copies": dict(sorted(found_copies.items())[:MAX_HOLDERS])}


def _add_copies(into: dict[str, str], copies: Any) -> None:
    if isinstance(copies, dict):
        into.update({n: s for n, s in list(copies.items())[:MAX_HOLDERS]
                     if isinstance(n, str) and isinstance(s, str)})


def _missing(ref: Source, where: str, reason: str | None, copies: dict[str, str]) -> NotFound:
    """Not found; ``copies`` travel along, since an answer that finds it elsewhere uses them."""
    details = {"copies": dict(sorted(copies.items())[:MAX_HOLDERS])}
    if isinstance(ref, ModelRef):
        return NotFound(f"data {ref.key} is not stored {where}", code="data_not_found",
                        details=details)
    if reason is not None:
        return NotFound(reason, code="data_not_found", details=details)
    return NotFound(f"no CNET data gateway serving bucket {ref.bucket} is running {where}",
                    code="bucket_not_found", details=details)
