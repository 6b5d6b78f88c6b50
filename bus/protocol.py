"""The CNET bus protocol: version tag, envelope layout, message types, msgpack codec.

This module is the single source of truth for what travels between agents and clients (so it
stays one file, over our usual ~400 lines: STYLE.md #2).

Envelope (ZeroMQ multipart; a ROUTER sees its peer's routing id as an extra first frame)::

    DEALER <-> ROUTER    [VERSION, TYPE, BODY]
    PUB    ->  SUB       [TOPIC, VERSION, TYPE, BODY]

``VERSION`` is the tag ``b"CNET1"`` (``b"CNET"`` + protocol number). ``TYPE`` is the short ASCII
name of one message class below (``b"hello"``, ``b"heartbeat"`` ...). ``BODY`` is a msgpack map
of that class's fields; unknown keys are ignored, so a later minor version may add optional
fields. ``TOPIC`` is ``b"update"`` for resource snapshots and ``b"event." + kind`` for events.
Nothing is ever pickled.

Conversations:

* handshake: a node's DEALER sends :class:`Hello` (role ``child`` or ``peer``; a client may send
  role ``client`` or skip it); the ROUTER answers :class:`Welcome` or :class:`Refuse` (duplicate
  node id, protocol mismatch, a missing or wrong join token, an untrusted Curve key). A
  :class:`Refuse` body is frozen across versions so a node speaking another version can still
  read why it was refused.
* liveness: every interval a joined DEALER sends :class:`Heartbeat` (full snapshot, ``seq``);
  the ROUTER answers with its own :class:`Heartbeat`, which is the DEALER's liveness signal.
* broadcast: :class:`Update` (snapshot) and :class:`Event` go out on PUB at once.
* request/reply: :class:`Request` carries ``corr_id``; the :class:`Reply` echoes it.
* :class:`Bye` says a link is closing on purpose.

``seq`` is one counter per node incarnation (``epoch``); a receiver ignores a snapshot whose
``(epoch, seq)`` is not newer than the one it holds.

:func:`decode` turns any bad input (garbage, wrong version, unknown type, missing or ill-typed
fields, oversized frames) into :class:`ProtocolError`; it never raises anything else.
"""

from __future__ import annotations

import os
import re
import types
import typing
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
    "new_corr_id",
    "new_epoch",
]

PROTOCOL = 1
VERSION = b"CNET%d" % PROTOCOL
MAX_FRAME_SIZE = 4 * 1024 * 1024       # largest BODY accepted or sent
MAX_HEADER_SIZE = 255                  # VERSION, TYPE and TOPIC frames
MAX_HOPS = 32
ROLES = ("child", "peer", "client")    # what a Hello sender is to the receiver
TOPIC_UPDATE = b"update"
TOPIC_EVENT = b"event."

_IDENT = re.compile(r"[A-Za-z][A-Za-z0-9_.:-]{0,63}")
_OP = re.compile(r"[a-z][a-z0-9_.]{0,63}")
_CORR = re.compile(r"[0-9A-Za-z_-]{1,64}")


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
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _check_node_id(value: str, name: str = "node_id") -> None:
    if not _IDENT.fullmatch(value):
        raise ValueError(f"{name} {value[:70]!r} is not an identifier of at most 64 characters")


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


@dataclass
class Hello(_Introduction):
    """Sent first on a link: who I am, what I am to you (``role``), and where to reach me."""

    TYPE: ClassVar[bytes] = b"hello"
    ALLOWED_ROLES: ClassVar[tuple[str, ...]] = ROLES         # child | peer | client
    token: str | None = None       # the cluster's join token, when its nodes have one


@dataclass
class Welcome(_Introduction):
    """The ROUTER accepts a Hello and describes itself; ``role`` is what it is to the sender."""

    TYPE: ClassVar[bytes] = b"welcome"
    ALLOWED_ROLES: ClassVar[tuple[str, ...]] = ("parent", "peer", "server")


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
        if self.seq < 0:
            raise ValueError("seq must be >= 0")


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
        if not _OP.fullmatch(self.kind):
            raise ValueError(f"event kind {self.kind[:70]!r} is not a short lower-case identifier")


@dataclass
class Request(Message):
    """An agent operation; ``op`` and ``args`` are the agent's, the bus only carries them.

    ``hops`` and ``visited`` serve delegation (no loops); ``token`` is the caller's bearer token.
    """

    TYPE: ClassVar[bytes] = b"request"
    corr_id: str
    op: str
    args: dict = field(default_factory=dict)
    token: str | None = None
    hops: int = 0
    visited: list[str] = field(default_factory=list)

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
    """The answer to a Request: ``result`` when ``ok``, else ``error`` = {code, message[, details]}."""

    TYPE: ClassVar[bytes] = b"reply"
    corr_id: str
    ok: bool
    result: dict | None = None
    error: dict | None = None
    node_id: str = ""              # who answered

    def validate(self) -> None:
        if self.corr_id and not _CORR.fullmatch(self.corr_id):
            raise ValueError("corr_id must be 1-64 characters of [0-9A-Za-z_-]")
        if not self.ok:
            err = self.error
            if not (isinstance(err, dict) and isinstance(err.get("code"), str)
                    and isinstance(err.get("message"), str)):
                raise ValueError("an error reply needs error {code: str, message: str}")


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

_HINTS: dict[type[Message], dict[str, Any]] = {
    cls: {f.name: typing.get_type_hints(cls)[f.name] for f in fields(cls)}
    for cls in MESSAGE_TYPES.values()
}
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
    """The frames for ``msg`` (with a leading topic frame for PUB). Raises ValueError when the
    body is too large and TypeError when a field holds something msgpack cannot carry."""
    body = msgpack.packb(msg.to_body(), use_bin_type=True)
    if len(body) > MAX_FRAME_SIZE:
        raise ValueError(f"{msg.TYPE.decode()} body of {len(body)} bytes exceeds {MAX_FRAME_SIZE}")
    frames = [VERSION, msg.TYPE, body]
    return [topic, *frames] if topic is not None else frames


def _ext_refused(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack extension type {code} is not allowed")


def _type_ok(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        return any(_type_ok(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_type_ok(v, item) for v in value)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _describe(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def decode(frames: list[bytes]) -> Message:
    """Decode ``[VERSION, TYPE, BODY]`` into a message, or raise :class:`ProtocolError`."""
    if len(frames) != 3:
        raise ProtocolError("bad_frame", f"expected 3 frames (version, type, body), got {len(frames)}")
    version, type_, body = (bytes(f) for f in frames)
    if len(version) > MAX_HEADER_SIZE or len(type_) > MAX_HEADER_SIZE:
        raise ProtocolError("bad_frame", "header frame too long")
    if len(body) > MAX_FRAME_SIZE:
        raise ProtocolError("too_large", f"body of {len(body)} bytes exceeds {MAX_FRAME_SIZE}")
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
    corr_id = raw.get("corr_id") if isinstance(raw.get("corr_id"), str) else ""
    corr_id = corr_id if _CORR.fullmatch(corr_id or "") else ""
    node_id = raw.get("node_id") if isinstance(raw.get("node_id"), str) else ""
    node_id = node_id if _IDENT.fullmatch(node_id or "") else ""
    if version != VERSION and cls is not Refuse:
        raise ProtocolError("version_mismatch",
                            f"protocol {version.decode('ascii', 'replace')} not supported; "
                            f"this node speaks {VERSION.decode()}",
                            corr_id=corr_id, node_id=node_id, msg_type=type_name)
    if cls is None:
        raise ProtocolError("unknown_type", f"unknown message type {type_name[:40]!r}",
                            corr_id=corr_id, node_id=node_id, msg_type=type_name)
    hints = _HINTS[cls]
    missing = _REQUIRED[cls] - raw.keys()
    if missing:
        raise ProtocolError("bad_field", f"{type_name} lacks {', '.join(sorted(missing))}",
                            corr_id=corr_id, node_id=node_id, msg_type=type_name)
    values = {}
    for name, hint in hints.items():
        if name not in raw:
            continue
        value = raw[name]
        if not _type_ok(value, hint):
            raise ProtocolError("bad_field", f"{type_name}.{name} must be {_describe(hint)}",
                                corr_id=corr_id, node_id=node_id, msg_type=type_name)
        values[name] = float(value) if hint is float else value
    msg = cls(**values)
    try:
        msg.validate()
    except ValueError as exc:
        raise ProtocolError("bad_field", f"{type_name}: {exc}", corr_id=corr_id,
                            node_id=node_id, msg_type=type_name) from None
    return msg


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
