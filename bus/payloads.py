"""The payload schemas of the bus: what a snapshot, a summary, an event's data, an error and the
results a node keeps of its neighbours' answers may hold (declared with ``bus.schema``).

``bus.protocol`` checks a message's payloads against them as it decodes it: a heartbeat's or
update's ``snapshot`` and ``summary`` (:data:`SNAPSHOT`, :data:`SUMMARY`), an event's ``data``
by kind (:data:`EVENT_DATA`), an error reply's ``error`` (:data:`ERROR`); the results of the
operations whose answers a node keeps (:data:`RESULTS`) are checked by the requester, which
knows the op (:func:`check_result`). Strings hold no NUL and have a maximum length, numbers are
finite and in range, lists and maps have a maximum size. Unknown keys: inside a declared record
(a resource vector, the workload counts) they are dropped; at a payload's top level they are
kept only as bounded plain data (forward compatibility, and a workload's executor facts), and
nothing reads them blindly. A request's ``args`` are the operation's to check (both of an
agent's doors give the same error).
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

from bus.limits import MAX_DEPTH, MAX_FRAME_SIZE, MAX_RECORDS
from bus.schema import Bytes, ListOf, MapOf, Maybe, Number, Plain, Record, Schema, Text

__all__ = ["BLOBS", "CURVE_KEY", "ERROR", "EVENT_DATA", "FREE_MAP", "NODE_VECTOR", "RESULTS", "SNAPSHOT",
           "SUMMARY", "TOTAL_VECTOR", "URL", "USAGE", "WORKLOAD", "check_result", "checked"]


def _vector(cpu: float, whole: int) -> Record:
    """cpu cores (a float), memory and storage bytes, gpu count; negative when over-allocated."""
    return Record({"cpu": Number(-cpu, cpu), "memory": Number(-whole, whole, whole=True),
                   "gpu": Number(-whole, whole, whole=True),
                   "storage": Number(-whole, whole, whole=True)})


CURVE_KEY = Text(64)                     # a Z85 Curve public key (40 characters)
URL = Text(1024)
_ID = Text(64, re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}"))    # a node or workload id
_WORD = Text(64, re.compile(r"[A-Za-z0-9_.:-]{1,64}"))             # a status, type or role
_CLOCK = Number(-1e12, 1e12)             # seconds: a wall-clock time or an uptime
_COUNT = Number(0, 2**63 - 1, whole=True)
_ANY_TEXT = Text()
FREE_MAP = Record({}, extra=Plain(MAX_DEPTH))
_LABELS = MapOf(Text(1024), _ANY_TEXT)
_PAIRS = ListOf(_ANY_TEXT)                   # labels as "key=value"

NODE_VECTOR = _vector(1e6, 2**62)        # one node's capacity, allocation or free amounts
TOTAL_VECTOR = _vector(1e12, 2**63 - 1)  # summed over a subtree
USAGE = Record({**NODE_VECTOR.fields, "cpu_percent": Number(0, 1e6),
                "memory_percent": Number(0, 1e3), "sampled_at": Maybe(_CLOCK)})

SNAPSHOT = Record({
    "node_id": _ID, "address": Maybe(URL), "labels": _LABELS, "seq": _COUNT,
    "capacity": NODE_VECTOR, "allocated": NODE_VECTOR, "available": NODE_VECTOR, "usage": USAGE,
    "workloads": Record({"count": _COUNT, "names": ListOf(Text(1024)), "labels": _PAIRS}),
    "started_at": _CLOCK, "uptime": _CLOCK,
}, extra=Plain())
"""A node's resource snapshot (heartbeats and updates); ``started_at`` (wall clock) is sent
rather than an uptime, so a snapshot stays the same while nothing changes."""

SUMMARY = Record({
    "nodes": Number(1, 2**31, whole=True), "node_ids": ListOf(_ID), "labels": _PAIRS,
    "allocated": TOTAL_VECTOR, "live_workloads": _COUNT, "max_free": NODE_VECTOR,
    "reach_free": NODE_VECTOR, "reach_node_ids": ListOf(_ID), "reach_labels": _PAIRS,
}, extra=Plain())
"""A node's subtree summary (heartbeats and updates of a node with children or peers)."""

WORKLOAD = Record({
    "id": _ID, "name": Text(1024), "type": _WORD, "status": _WORD, "node_id": _ID,
    "origin": Maybe(_ID), "via": Maybe(_ID), "process_pid": Maybe(Number(0, 2**31, whole=True)),
    "endpoint": Maybe(URL), "exit_code": Maybe(Number(-2**31, 2**31, whole=True)),
    "message": Maybe(_ANY_TEXT), "restart_count": Maybe(_COUNT), "created_at": Maybe(_CLOCK),
    "started_at": Maybe(_CLOCK), "finished_at": Maybe(_CLOCK), "config": FREE_MAP,
    "requirements": NODE_VECTOR, "placement": FREE_MAP, "labels": _LABELS, "version": _COUNT,
}, required=frozenset({"id"}), extra=Plain(MAX_DEPTH))
"""A workload record (an event's data, an answer about a workload); other keys are its
executor's facts (container_id, files ...)."""

EVENT_DATA: dict[str, Schema] = {
    "workload": WORKLOAD,
    "workload_deleted": Record({"id": _ID, "node_id": _ID}, frozenset({"id"}), Plain()),
    "node": Record({"node_id": _ID, "role": _WORD, "status": _WORD, "address": Maybe(URL)},
                   frozenset({"node_id"}), Plain()),
}
"""An event's data by kind; any other kind's data is free-form (bounded plain data)."""

ERROR = Record({"code": Text(64), "message": _ANY_TEXT,
                "details": Record({"status": Number(100, 599, whole=True),
                                   "reasons": ListOf(_ANY_TEXT)}, extra=Plain(MAX_DEPTH))},
               required=frozenset({"code", "message"}))
"""An error reply's ``error``."""

_REPORT = replace(WORKLOAD, required=frozenset())   # a mirror takes only a report with its id

_SHA256 = Text(64, re.compile(r"[0-9a-f]{64}"))

RESULTS: dict[str, Schema] = {
    "delegate": replace(WORKLOAD, required=frozenset({"id", "name", "type", "node_id"})),
    "fetch": Record({"size": _COUNT, "sha256": _SHA256, "offset": _COUNT,
                     "data": Bytes(MAX_FRAME_SIZE)},
                    frozenset({"size", "sha256", "offset", "data"}), Plain()),
    "get": _REPORT,
    "stop": _REPORT,
    "logs": Record({"logs": Text(MAX_FRAME_SIZE)}, frozenset({"logs"}), Plain()),
    "reconcile": Record({"node_id": _ID, "workloads": ListOf(WORKLOAD, MAX_RECORDS),
                         "extra": ListOf(WORKLOAD, MAX_RECORDS)}, extra=Plain()),
}
"""The results a node keeps of the operations it asks its neighbours for, by op."""

BLOBS: dict[str, str] = {"fetch": "data"}
"""The ops whose result carries bulk bytes, and the result's key for them: a :class:`Reply`
sends them as its blob frame (to a requester that takes one), and the requester's
:func:`check_result` puts them back there."""


def check_result(op: str, result: dict[str, Any] | None,
                 blob: bytes | memoryview | None = None) -> dict[str, Any] | None:
    """``result`` of ``op`` (with ``blob``, the reply's blob frame, put under the op's
    :data:`BLOBS` key) as declared in :data:`RESULTS` (unchanged for other ops), or
    ValueError naming what is wrong."""
    if blob is not None:
        key = BLOBS.get(op)
        if key is None:
            raise ValueError(f"a {op} result carries no blob frame")
        if result is not None and key in result:
            raise ValueError(f"{op} result has {key} both in its body and as a blob frame")
        result = {**(result or {}), key: blob}
    schema = RESULTS.get(op)
    if schema is None:
        return result
    return schema.check(result if result is not None else {}, f"{op} result")


# What each node id's last snapshot and summary were, and what their check kept: an idle node
# sends the same ones beat after beat, and a value equal to the last one is given what was kept
# then (one comparison, not a walk through the schema). Equal is loose for numbers (1 == 1.0 ==
# True), so what is kept is always the earlier value, which passed. Bounded: cleared when full.
_CHECKED: dict[tuple[str, str], tuple[Any, Any]] = {}
_CHECKED_MAX = 4096


def checked(schema: Schema, value: Any, where: str, node_id: str) -> Any:
    """``schema.check(value, where)`` for the payload at ``where`` of ``node_id``'s messages,
    given what was kept last time when the value is the same as then."""
    key = (node_id, where)
    last = _CHECKED.get(key)
    if last is not None and last[0] == value:
        return last[1]
    kept = schema.check(value, where)
    if len(_CHECKED) >= _CHECKED_MAX:
        _CHECKED.clear()
    _CHECKED[key] = (value, kept)
    return kept
