"""Wire format between the HTTP shim and its inference workers: ZMQ REQ/REP, msgpack header frames.

Every message is a list of frames. The first frame is a small msgpack map; large payloads travel
as raw byte frames beside it and are never pickled.

Request  ``[header, image?]``
    ``header = {"v": VERSION, "op": "ping" | "predict", "params": {...}}``;
    ``image`` (predict only) is the encoded image file (JPEG, PNG, ...) exactly as the client
    sent it; the worker decodes it.
Reply    ``[header]``
    success: ``{"v": VERSION, "ok": True, "pid": int, ...result fields}``
    failure: ``{"v": VERSION, "ok": False, "pid": int, "error": {"code": str, "message": str}}``

``ping`` answers ``{"info": {...}}`` once the detector is loaded (or a ``load_failed`` error);
``predict`` answers ``{"detections": [...], "image": {"width", "height"}, "timings": {...}}``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import msgpack

__all__ = [
    "MAX_DETECTIONS",
    "OP_PING",
    "OP_PREDICT",
    "VERSION",
    "PredictParams",
    "ProtocolError",
    "decode_reply",
    "decode_request",
    "encode_error",
    "encode_reply",
    "encode_request",
]

VERSION = 1
OP_PING = "ping"
OP_PREDICT = "predict"
OPS = (OP_PING, OP_PREDICT)
MAX_DETECTIONS = 300


class ProtocolError(ValueError):
    """A frame list that does not follow this module's layout."""


@dataclass(frozen=True)
class PredictParams:
    """Detection options of one predict request, already validated."""

    confidence: float = 0.25
    iou: float = 0.45
    max_det: int = MAX_DETECTIONS

    def __post_init__(self) -> None:
        for name in ("confidence", "iou"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a number")
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value}")
        if isinstance(self.max_det, bool) or not isinstance(self.max_det, int):
            raise TypeError("max_det must be an integer")
        if not 1 <= self.max_det <= MAX_DETECTIONS:
            raise ValueError(f"max_det must be between 1 and {MAX_DETECTIONS}, got {self.max_det}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> PredictParams:
        """Build from a decoded map; TypeError/ValueError on unknown fields or bad values."""
        if not isinstance(data, dict):
            raise TypeError("params must be a map")
        unknown = set(data) - {"confidence", "iou", "max_det"}
        if unknown:
            raise ValueError(f"unknown params: {sorted(map(str, unknown))}")
        return cls(**data)


def _pack(header: dict[str, Any]) -> bytes:
    return msgpack.packb(header, use_bin_type=True)


def _unpack(frame: bytes) -> dict[str, Any]:
    try:
        header = msgpack.unpackb(frame, raw=False, strict_map_key=True)
    except (msgpack.UnpackException, ValueError, TypeError) as exc:
        raise ProtocolError(f"header is not msgpack: {exc}") from exc
    if not isinstance(header, dict):
        raise ProtocolError("header is not a map")
    if header.get("v") != VERSION:
        raise ProtocolError(f"unsupported protocol version {header.get('v')!r}")
    return header


def encode_request(op: str, params: PredictParams | None = None,
                   image: bytes | None = None) -> list[bytes]:
    header: dict[str, Any] = {"v": VERSION, "op": op}
    if params is not None:
        header["params"] = params.to_dict()
    return [_pack(header)] if image is None else [_pack(header), image]


def decode_request(frames: list[bytes]) -> tuple[str, PredictParams | None, bytes | None]:
    """Return (op, params, image); raise ProtocolError on anything malformed."""
    if not 1 <= len(frames) <= 2:
        raise ProtocolError(f"expected 1 or 2 frames, got {len(frames)}")
    header = _unpack(frames[0])
    op = header.get("op")
    if op not in OPS:
        raise ProtocolError(f"unknown op {op!r}")
    image = bytes(frames[1]) if len(frames) == 2 else None
    if op == OP_PING:
        return op, None, None
    if image is None:
        raise ProtocolError("predict needs an image frame")
    try:
        params = PredictParams.from_dict(header.get("params", {}))
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"bad params: {exc}") from exc
    return op, params, image


def encode_reply(pid: int, result: dict[str, Any]) -> list[bytes]:
    return [_pack({**result, "v": VERSION, "ok": True, "pid": pid})]


def encode_error(pid: int, code: str, message: str) -> list[bytes]:
    return [_pack({"v": VERSION, "ok": False, "pid": pid,
                   "error": {"code": code, "message": message}})]


def decode_reply(frames: list[bytes]) -> dict[str, Any]:
    if len(frames) != 1:
        raise ProtocolError(f"expected 1 reply frame, got {len(frames)}")
    header = _unpack(frames[0])
    if not isinstance(header.get("ok"), bool) or not isinstance(header.get("pid"), int):
        raise ProtocolError("reply lacks ok/pid")
    if not header["ok"]:
        error = header.get("error")
        if not isinstance(error, dict) or not isinstance(error.get("code"), str):
            raise ProtocolError("error reply lacks error.code")
    return header
