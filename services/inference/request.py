"""Parsing of ``POST /predict`` bodies at the HTTP edge: JSON with base64, raw image, multipart.

Everything a client can get wrong becomes a :class:`RequestError` with an HTTP status, an error
code and a message; nothing here touches a worker.
"""
from __future__ import annotations

import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tornado.httputil import HTTPFile, HTTPInputError, parse_body_arguments

from services.inference.protocol import PredictParams

__all__ = ["PredictRequest", "RequestError", "parse_predict_request"]

PARAM_NAMES = ("confidence", "iou", "max_det")
DATA_URI = re.compile(r"^data:[\w/+.-]*;base64,", re.IGNORECASE)


class RequestError(Exception):
    """A client error: HTTP status, machine-readable code, human message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True)
class PredictRequest:
    params: PredictParams
    image: bytes


def _bad(code: str, message: str) -> RequestError:
    return RequestError(400, code, message)


def _params(values: Mapping[str, Any]) -> PredictParams:
    """PredictParams from JSON values (numbers) or text values (query or form fields)."""
    kwargs: dict[str, Any] = {}
    for name in PARAM_NAMES:
        value = values.get(name)
        if value is None:
            continue
        if isinstance(value, str):
            try:
                value = int(value) if name == "max_det" else float(value)
            except ValueError:
                raise _bad("invalid_parameter", f"{name} must be a number, got {value!r}") from None
        elif name == "max_det" and isinstance(value, float) and value.is_integer():
            value = int(value)
        kwargs[name] = value
    try:
        return PredictParams(**kwargs)
    except (TypeError, ValueError) as exc:
        raise _bad("invalid_parameter", str(exc)) from None


def _base64_image(value: Any) -> bytes:
    if not isinstance(value, str):
        raise _bad("invalid_image", f"image must be a base64 string, got {type(value).__name__}")
    text = DATA_URI.sub("", value.strip(), count=1)
    if not text:
        raise _bad("empty_image", "image is empty")
    try:
        data = binascii.a2b_base64(text.encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise _bad("invalid_base64", f"image is not valid base64: {exc}") from None
    if not data:
        raise _bad("empty_image", "image is empty")
    return data


def _from_json(body: bytes) -> PredictRequest:
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _bad("invalid_json", f"body is not valid JSON: {exc}") from None
    except RecursionError:
        raise _bad("invalid_json", "body is nested too deeply") from None
    if not isinstance(payload, dict):
        raise _bad("invalid_json", "body must be a JSON object")
    if "image" not in payload:
        raise _bad("missing_image", 'JSON body needs an "image" field (base64)')
    return PredictRequest(_params(payload), _base64_image(payload["image"]))


def _from_multipart(content_type: str, body: bytes, query: dict[str, str]) -> PredictRequest:
    fields: dict[str, list[bytes]] = {}
    files: dict[str, list[HTTPFile]] = {}
    try:
        parse_body_arguments(content_type, body, fields, files)
    except HTTPInputError as exc:
        raise _bad("invalid_multipart", f"malformed multipart body: {exc}") from None
    if "image" in files:
        image = files["image"][0].body
    elif "image" in fields:  # a text field: base64
        image = _base64_image(fields["image"][0].decode("latin-1"))
    else:
        raise _bad("missing_image", 'multipart body needs an "image" file field')
    values: dict[str, Any] = dict(query)
    for name in PARAM_NAMES:
        if name in fields:
            values[name] = fields[name][0].decode("utf-8", "replace")
    if not image:
        raise _bad("empty_image", "image is empty")
    return PredictRequest(_params(values), image)


def parse_predict_request(content_type: str, body: bytes, query: dict[str, str]) -> PredictRequest:
    """Parse a predict body by its Content-Type; options may also come as query arguments."""
    media = content_type.split(";", 1)[0].strip().lower()
    if not body:
        raise _bad("empty_body", "request body is empty")
    if media in ("application/json", "text/json") or (not media and body.lstrip()[:1] == b"{"):
        return _from_json(body)
    if media == "multipart/form-data":
        return _from_multipart(content_type, body, query)
    if media.startswith("image/") or media == "application/octet-stream":
        return PredictRequest(_params(query), body)
    raise RequestError(415, "unsupported_media_type",
                       f"Content-Type {media or '(none)'} is not supported; send application/json,"
                       " image/*, or multipart/form-data")
