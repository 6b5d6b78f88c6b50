"""The CNET bus protocol: version tag, envelope layout, message types, msgpack codec.

This module is the single source of truth for what travels between agents and clients
(STYLE.md #2): the messages and their framing. What their payloads may hold is declared in
``bus.payloads`` (with the generic checker of ``bus.schema``), the size limits in ``bus.limits``.

Envelope (ZeroMQ multipart; a ROUTER sees its peer's routing id as an extra first frame)::

    DEALER <-> ROUTER    [VERSION, TYPE, BODY]
                         [VERSION, b"reply", BODY, BLOB]     (a reply with bulk bytes)
    PUB    ->  SUB       [TOPIC, VERSION, TYPE, BODY]

``VERSION`` is the tag ``b"CNET1"`` (``b"CNET"`` + protocol number). ``TYPE`` is the short ASCII
name of one message class below (``b"hello"``, ``b"heartbeat"`` ...). ``BODY`` is a msgpack map
of that class's fields; unknown keys are ignored, so a later minor version may add optional
fields. ``TOPIC`` is ``b"update"`` for resource snapshots and ``b"event." + kind`` for events;
an event meant for one neighbour (a workload's, for the node that placed it there) is
addressed, ``b"event." + kind + b"@" + node_id + b"/"`` (:func:`event_topic`), so only that
neighbour subscribes to it, while a watcher's prefix (``b"event."``, ``b"event.workload"``) still
sees every event. Nothing is ever pickled.

Conversations:

* handshake: a node's DEALER sends :class:`Hello` (role ``child`` or ``peer``; a client may send
  role ``client`` or skip it); the ROUTER answers :class:`Welcome` or :class:`Refuse` (duplicate
  node id, protocol mismatch, a missing or wrong join token, an untrusted Curve key). A
  :class:`Refuse` body is frozen across versions so a node speaking another version can still
  read why it was refused. Each Welcome carries a fresh ``session`` nonce for that connection; a
  node that says hello again from another connection while the first is alive shows it (with
  the same ``epoch``) to prove it is the same party, else it is refused ``duplicate_node``.
* liveness: every interval a joined DEALER sends :class:`Heartbeat` (full snapshot, ``seq``;
  the subtree ``summary`` only on the link to the parent); the ROUTER side sends its own
  :class:`Heartbeat` back over that connection, at its own tick when the sender beats at the
  same interval, else as an answer to each beat (and always to the first after a handshake).
  Of two peers linked both ways only the lower node id's link carries the beats.
* broadcast: :class:`Update` (snapshot) and :class:`Event` go out on PUB at once. A node
  follows its parent's updates only, and its children's and peers' updates and the events
  addressed to it (or all of their events, if it asks for every kind).
* request/reply: :class:`Request` carries ``corr_id``; the :class:`Reply` echoes it. The
  bulk bytes of a result (a ``fetch`` chunk: :data:`BLOBS` names the op and the result's key)
  travel as a ``BLOB`` frame of their own after the body, never through msgpack, when the
  request says its sender takes that (``blobs``, which a node of this protocol sets on every
  request). A requester that did not say so (an earlier CNET1 node, which refuses a fourth
  frame) gets the bytes inside the body, as before; a blob frame may follow a reply only.
* :class:`Bye` says a link is closing on purpose.

``seq`` is one counter per node incarnation (``epoch``); a receiver ignores a snapshot whose
``(epoch, seq)`` is not newer than the one it holds.

:func:`decode` turns any bad input (garbage, wrong version, unknown type, missing or ill-typed
fields, oversized frames) into :class:`ProtocolError`; it never raises anything else.

Payloads are checked too, as a message is decoded, against the schemas of ``bus.payloads``:
a heartbeat's or update's ``snapshot`` and ``summary``, an event's ``data`` by kind, an error
reply's ``error``. A request's ``args`` are the operation's to check.
"""

from __future__ import annotations

import math
import os
import re
import types
import typing
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar

import msgpack

__all__ = [
    "MAX_FRAME_SIZE",
    "MAX_HOPS",
    "MESSAGE_TYPES",
    "PROTOCOL",
    "ROLES",
    "TOPIC_EVENT",
    "TO_ANY",
    "TOPIC_UPDATE",
    "VERSION",
    "Bye",
    "Event",
    "Heartbeat",
    "Hello",
    "Message",
    "ProtocolError",
    "Refuse",
    "Reply",
    "Request",
    "Update",
    "Welcome",
    "decode",
    "decode_published",
    "encode",
    "event_topic",
    "new_corr_id",
    "new_epoch",
]

from bus.limits import MAX_FRAME_SIZE, MAX_HEADER_SIZE, MAX_HOPS
from bus.payloads import BLOBS, CURVE_KEY, ERROR, EVENT_DATA, FREE_MAP, SNAPSHOT, SUMMARY, URL, checked

PROTOCOL = 1
VERSION = b"CNET%d" % PROTOCOL
ROLES = ("child", "peer", "client")    # what a Hello sender is to the receiver
TOPIC_UPDATE = b"update"
TOPIC_EVENT = b"event."

_IDENT = re.compile(r"[A-Za-z][A-Za-z0-9_.:-]{0,63}")


TO_ANY = "*"    # the address of an event for every neighbour that takes addressed events


def event_topic(kind: str, to: str | None = None) -> bytes:
    """The PUB topic of an event of ``kind``: ``event.<kind>``, or addressed to neighbour
    ``to`` (or to :data:`TO_ANY`), ``event.<kind>@<to>/`` (a node id never holds ``@``,
    ``/`` or ``*``, so one node's prefix never matches another's)."""
    topic = TOPIC_EVENT + kind.encode()
    return topic if to is None else topic + b"@" + to.encode() + b"/"

_OP = re.compile(r"[a-z][a-z0-9_.]{0,63}")
_CORR = re.compile(r"[0-9A-Za-z_-]{1,64}")
_ENDPOINT = re.compile(r"(tcp|ipc|inproc)://[^\s\x00]{1,250}")


class ProtocolError(Exception):
    """A frame that cannot be accepted; ``code`` is machine readable.

    ``corr_id`` and ``node_id`` are filled in when they could be read from the bad message, so
    the transport can address an error reply and write a useful log line.
    """

    def __init__(self, code: str, message: str, *, corr_id: str = "", node_id: str = "",
                 msg_type: str = ""):
        super().__init__(message)
        self.code = code
        self.message = message
        self.corr_id = corr_id
        self.node_id = node_id
        self.msg_type = msg_type


@dataclass
class Message:
    """Base of every message type: ``TYPE`` names it on the wire."""

    TYPE: ClassVar[bytes] = b""

    def validate(self) -> None:
        """Check values beyond their types; raise ValueError with a short reason."""

    def to_body(self) -> dict[str, Any]:
        # Shallow: msgpack walks nested values itself; asdict() would deep-copy snapshots.
        names = _FIELD_NAMES.get(type(self))
        if names is None:
            names = tuple(f.name for f in fields(self))
        return {name: getattr(self, name) for name in names}


def _check_node_id(value: str, name: str = "node_id") -> None:
    if not _IDENT.fullmatch(value):
        raise ValueError(f"{name} {value[:70]!r} is not an identifier of at most 64 characters")


def _check_counters(epoch: int, seq: int) -> None:
    if not 0 <= epoch < 2**63 or not 0 <= seq < 2**63:
        raise ValueError("epoch and seq must be in [0, 2**63)")


@dataclass
class _Introduction(Message):
    """Fields shared by Hello and Welcome: who the sender is and where to reach it."""

    ALLOWED_ROLES: ClassVar[tuple[str, ...]] = ()
    node_id: str
    role: str
    protocol: int = PROTOCOL
    epoch: int = 0                 # this incarnation of the sender
    router: str = ""
    pub: str = ""
    http: str = ""
    interval: float = 1.0          # sender's heartbeat interval, seconds
    curve_key: str | None = None   # sender's Z85 public key when Curve is on

    def validate(self) -> None:
        _check_node_id(self.node_id)
        if self.role not in self.ALLOWED_ROLES:
            raise ValueError(f"role {self.role!r} is not one of {', '.join(self.ALLOWED_ROLES)}")
        if not 0 < self.interval <= 3600:
            raise ValueError("interval must be in (0, 3600] seconds")
        if not 0 <= self.epoch < 2**63:
            raise ValueError("epoch must be in [0, 2**63)")
        for name in ("router", "pub"):
            value = getattr(self, name)
            if value and not _ENDPOINT.fullmatch(value):
                raise ValueError(f"{name} {value[:70]!r} is not a tcp://, ipc:// or inproc:// endpoint")
        URL.check(self.http, "http")
        if self.curve_key is not None:
            CURVE_KEY.check(self.curve_key, "curve_key")
        session = getattr(self, "session", None)
        if session and not _CORR.fullmatch(session):
            raise ValueError("session must be 1-64 characters of [0-9A-Za-z_-]")


@dataclass
class Hello(_Introduction):
    """Sent first on a link: who I am, what I am to you (``role``), and where to reach me."""

    TYPE: ClassVar[bytes] = b"hello"
    ALLOWED_ROLES: ClassVar[tuple[str, ...]] = ROLES         # child | peer | client
    token: str | None = None       # the cluster's join token, when its nodes have one
    session: str | None = None     # the session of the last Welcome from this receiver (a re-join)


@dataclass
class Welcome(_Introduction):
    """The ROUTER accepts a Hello and describes itself; ``role`` is what it is to the sender."""

    TYPE: ClassVar[bytes] = b"welcome"
    ALLOWED_ROLES: ClassVar[tuple[str, ...]] = ("parent", "peer", "server")
    session: str = ""              # a fresh nonce for this connection (see Hello.session)


@dataclass
class Refuse(Message):
    """The ROUTER refuses a Hello (or a message that needs one). Frozen across versions."""

    TYPE: ClassVar[bytes] = b"refuse"
    node_id: str
    code: str                      # duplicate_node | version_mismatch | hello_required | bad_hello
                                   # | unauthorized | untrusted_key | role_conflict | ...
    reason: str
    protocol: int = PROTOCOL


@dataclass
class _Snapshot(Message):
    """Fields shared by the two snapshot carriers below."""

    node_id: str
    epoch: int
    seq: int
    snapshot: dict
    sent_at: float                 # wall-clock time.time() of the sender, for display only
    summary: dict | None = None    # the sender's subtree summary, if it has children

    def validate(self) -> None:
        _check_node_id(self.node_id)
        _check_counters(self.epoch, self.seq)
        self.snapshot = checked(SNAPSHOT, self.snapshot, "snapshot", self.node_id)
        if self.summary is not None:
            self.summary = checked(SUMMARY, self.summary, "summary", self.node_id)


@dataclass
class Heartbeat(_Snapshot):
    """Periodic liveness over DEALER/ROUTER with the sender's full resource snapshot."""

    TYPE: ClassVar[bytes] = b"heartbeat"


@dataclass
class Update(_Snapshot):
    """A resource change, published at once on PUB under ``TOPIC_UPDATE``."""

    TYPE: ClassVar[bytes] = b"update"


@dataclass
class Event(Message):
    """Something happened (workload state, node alive/lost ...), published under ``event.<kind>``."""

    TYPE: ClassVar[bytes] = b"event"
    node_id: str
    epoch: int
    seq: int
    kind: str
    data: dict
    sent_at: float

    def validate(self) -> None:
        _check_node_id(self.node_id)
        _check_counters(self.epoch, self.seq)
        if not _OP.fullmatch(self.kind):
            raise ValueError(f"event kind {self.kind[:70]!r} is not a short lower-case identifier")
        self.data = EVENT_DATA.get(self.kind, FREE_MAP).check(self.data, f"{self.kind} data")


@dataclass
class Request(Message):
    """An agent operation; ``op`` and ``args`` are the agent's, the bus only carries them.

    ``hops`` and ``visited`` serve delegation (no loops); ``token`` is the caller's bearer token.
    ``blobs``: the sender takes a reply's bulk bytes as a frame of their own (see :data:`BLOBS`);
    absent, as from a node of an earlier CNET1, they come inside the body.
    """

    TYPE: ClassVar[bytes] = b"request"
    corr_id: str
    op: str
    args: dict = field(default_factory=dict)
    token: str | None = None
    hops: int = 0
    visited: list[str] = field(default_factory=list)
    blobs: bool = False

    def validate(self) -> None:
        if not _CORR.fullmatch(self.corr_id):
            raise ValueError("corr_id must be 1-64 characters of [0-9A-Za-z_-]")
        if not _OP.fullmatch(self.op):
            raise ValueError(f"op {self.op[:70]!r} is not a short lower-case identifier")
        if not 0 <= self.hops <= MAX_HOPS:
            raise ValueError(f"hops must be in [0, {MAX_HOPS}]")
        if len(self.visited) > MAX_HOPS + 1:
            raise ValueError("visited lists too many nodes")
        for node_id in self.visited:
            _check_node_id(node_id, "visited entry")


@dataclass
class Reply(Message):
    """The answer to a Request: ``result`` when ``ok``, else ``error`` = {code, message[, details]}.

    ``blob``: the bulk bytes of an ok result, sent as the frame after the body (not a body
    field); :func:`check_result` puts them back under the key :data:`BLOBS` names for the op.
    """

    TYPE: ClassVar[bytes] = b"reply"
    corr_id: str
    ok: bool
    result: dict | None = None
    error: dict | None = None
    node_id: str = ""              # who answered
    blob: bytes | memoryview | None = field(default=None, repr=False, metadata={"frame": True})

    @classmethod
    def answer(cls, request: Request, result: dict[str, Any], node_id: str) -> "Reply":
        """The ok reply to ``request``: the bytes under the op's :data:`BLOBS` key travel as
        the blob frame when the requester takes one, else inside the body."""
        key = BLOBS.get(request.op) if request.blobs else None
        if key is not None and isinstance(result.get(key), (bytes, memoryview)):
            rest = {k: v for k, v in result.items() if k != key}
            return cls(corr_id=request.corr_id, ok=True, result=rest, node_id=node_id,
                       blob=result[key])
        return cls(corr_id=request.corr_id, ok=True, result=result, node_id=node_id)

    def validate(self) -> None:
        if self.corr_id and not _CORR.fullmatch(self.corr_id):
            raise ValueError("corr_id must be 1-64 characters of [0-9A-Za-z_-]")
        if not self.ok:
            if not isinstance(self.error, dict):
                raise ValueError("an error reply needs error {code: str, message: str}")
            self.error = ERROR.check(self.error, "error")
            if self.blob is not None:
                raise ValueError("an error reply carries no blob frame")


@dataclass
class Bye(Message):
    """The sender is closing this link on purpose (treat it as lost now)."""

    TYPE: ClassVar[bytes] = b"bye"
    node_id: str
    reason: str = ""


MESSAGE_TYPES: dict[bytes, type[Message]] = {
    cls.TYPE: cls
    for cls in (Hello, Welcome, Refuse, Heartbeat, Update, Event, Request, Reply, Bye)
}


def _field_hints(cls: type[Message]) -> dict[str, Any]:
    """The body's fields (not a frame of their own, as a reply's blob) and their types."""
    hints = typing.get_type_hints(cls)      # once per class: it evaluates every annotation
    return {f.name: hints[f.name] for f in fields(cls) if not f.metadata.get("frame")}


_HINTS: dict[type[Message], dict[str, Any]] = {cls: _field_hints(cls) for cls in MESSAGE_TYPES.values()}
_REQUIRED: dict[type[Message], frozenset[str]] = {
    cls: frozenset(f.name for f in fields(cls) if f.default is f.default_factory is MISSING)
    for cls in MESSAGE_TYPES.values()
}


def new_corr_id() -> str:
    """A fresh correlation id: 128 random bits in hex."""
    return os.urandom(16).hex()


def new_epoch() -> int:
    """A fresh incarnation number for a starting node (random, fits msgpack's int64)."""
    return int.from_bytes(os.urandom(7), "big")


def encode(msg: Message, *, topic: bytes | None = None) -> list[bytes]:
    """The frames for ``msg`` (with a leading topic frame for PUB; a reply's blob as the last
    frame, not copied). Raises ValueError when the body or blob is too large and TypeError when
    a field holds something msgpack cannot carry."""
    body = msgpack.packb(msg.to_body(), use_bin_type=True)
    if len(body) > MAX_FRAME_SIZE:
        raise ValueError(f"{msg.TYPE.decode()} body of {len(body)} bytes exceeds {MAX_FRAME_SIZE}")
    frames = [VERSION, msg.TYPE, body]
    blob = getattr(msg, "blob", None)
    if blob is not None:
        if len(blob) > MAX_FRAME_SIZE:
            raise ValueError(f"blob of {len(blob)} bytes exceeds {MAX_FRAME_SIZE}")
        frames.append(blob)
    return [topic, *frames] if topic is not None else frames


def _ext_refused(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack extension type {code} is not allowed")


def _type_test(hint: Any) -> Callable[[Any], bool]:
    """Whether a decoded value has the field's type. msgpack makes only exact built-in types,
    so these test ``type(value)``; a bool is never an int, a float is finite, an int counts
    as a float."""
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        tests = [_type_test(arg) for arg in typing.get_args(hint)]
        return lambda value: any(test(value) for test in tests)
    if hint is type(None):
        return lambda value: value is None
    if origin is list:
        (item,) = typing.get_args(hint)
        test = _type_test(item)
        return lambda value: type(value) is list and all(map(test, value))
    if hint is float:
        return lambda value: (type(value) is float and math.isfinite(value)) or type(value) is int
    return lambda value, kind=hint: type(value) is kind


def _describe(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


# Each message type's fields, compiled once: (name, type test, made a float, what it must be).
_FIELD_TESTS: dict[type[Message], tuple[tuple[str, Callable[[Any], bool], bool, str], ...]] = {
    cls: tuple((name, _type_test(hint), hint is float, _describe(hint))
               for name, hint in _HINTS[cls].items())
    for cls in MESSAGE_TYPES.values()
}
_FIELD_NAMES: dict[type[Message], tuple[str, ...]] = {
    cls: tuple(_HINTS[cls]) for cls in MESSAGE_TYPES.values()}


def decode(frames: list[Any]) -> Message:
    """Decode ``[VERSION, TYPE, BODY]`` (or a reply's ``[VERSION, TYPE, BODY, BLOB]``; each
    frame bytes or a buffer, as a ``zmq.Frame``) into a message, or raise
    :class:`ProtocolError`. A blob is kept as a memoryview of its frame, not copied."""
    if not 3 <= len(frames) <= 4:
        raise ProtocolError("bad_frame", f"expected 3 frames (version, type, body) or a reply's "
                                         f"4 (and its blob), got {len(frames)}")
    version, type_, body = (bytes(f) for f in frames[:3])
    if len(version) > MAX_HEADER_SIZE or len(type_) > MAX_HEADER_SIZE:
        raise ProtocolError("bad_frame", "header frame too long")
    if len(body) > MAX_FRAME_SIZE:
        raise ProtocolError("too_large", f"body of {len(body)} bytes exceeds {MAX_FRAME_SIZE}")
    blob = memoryview(frames[3]).cast("B") if len(frames) == 4 else None
    if blob is not None and len(blob) > MAX_FRAME_SIZE:
        raise ProtocolError("too_large", f"blob of {len(blob)} bytes exceeds {MAX_FRAME_SIZE}")
    if not version.startswith(b"CNET"):
        raise ProtocolError("bad_frame", "not a CNET frame (bad version tag)")
    cls = MESSAGE_TYPES.get(type_)
    type_name = type_.decode("ascii", "replace")
    try:
        raw = msgpack.unpackb(body, raw=False, strict_map_key=True, ext_hook=_ext_refused)
    except (ValueError, TypeError, OverflowError, msgpack.UnpackException) as exc:
        raise ProtocolError("bad_body",
                            f"{type_name} body is not valid msgpack ({type(exc).__name__}: {exc})"[:200],
                            msg_type=type_name) from None
    if not isinstance(raw, dict):
        raise ProtocolError("bad_body", f"{type_name} body is not a map", msg_type=type_name)
    if version != VERSION and cls is not Refuse:
        raise _refusal(raw, "version_mismatch",
                       f"protocol {version.decode('ascii', 'replace')} not supported; "
                       f"this node speaks {VERSION.decode()}", type_name)
    if cls is None:
        raise _refusal(raw, "unknown_type", f"unknown message type {type_name[:40]!r}", type_name)
    if blob is not None and cls is not Reply:
        raise _refusal(raw, "bad_frame", f"a {type_name} carries no blob frame (only a reply "
                                         f"may)", type_name)
    if not _REQUIRED[cls] <= raw.keys():
        missing = _REQUIRED[cls] - raw.keys()
        raise _refusal(raw, "bad_field", f"{type_name} lacks {', '.join(sorted(missing))}",
                       type_name)
    values = {}
    for name, test, as_float, what in _FIELD_TESTS[cls]:
        if name not in raw:
            continue
        value = raw[name]
        if not test(value):
            raise _refusal(raw, "bad_field", f"{type_name}.{name} must be {what}", type_name)
        values[name] = float(value) if as_float else value
    msg = cls(**values)
    if blob is not None:
        msg.blob = blob             # type: ignore[attr-defined]  # a Reply (checked above)
    try:
        msg.validate()
    except (ValueError, TypeError) as exc:
        raise _refusal(raw, "bad_field", f"{type_name}: {exc}", type_name) from None
    return msg


def _refusal(raw: dict, code: str, message: str, type_name: str) -> ProtocolError:
    """The error for a message refused after its body was read: with its correlation and node
    ids when they are well formed, so the transport can address a reply and blame the sender."""
    corr_id, node_id = raw.get("corr_id"), raw.get("node_id")
    return ProtocolError(
        code, message, msg_type=type_name,
        corr_id=corr_id if isinstance(corr_id, str) and _CORR.fullmatch(corr_id) else "",
        node_id=node_id if isinstance(node_id, str) and _IDENT.fullmatch(node_id) else "")


def decode_published(frames: list[bytes]) -> tuple[bytes, Message]:
    """Decode ``[TOPIC, VERSION, TYPE, BODY]`` from a SUB socket into (topic, message)."""
    if len(frames) != 4:
        raise ProtocolError("bad_frame", f"expected 4 frames (topic, version, type, body), got {len(frames)}")
    topic = bytes(frames[0])
    if len(topic) > MAX_HEADER_SIZE:
        raise ProtocolError("bad_frame", "topic frame too long")
    msg = decode(frames[1:])
    if not isinstance(msg, (Update, Event)):
        raise ProtocolError("unknown_type", f"{msg.TYPE.decode()} is not a broadcast")
    return topic, msg
