"""The S3 errors the gateway answers with, and the exception that carries one to the transport."""

from __future__ import annotations

import secrets

__all__ = ["STATUS_BY_CODE", "S3Error", "new_request_id"]

STATUS_BY_CODE: dict[str, int] = {
    "BadRequest": 400,
    "InvalidArgument": 400,
    "InvalidRequest": 400,
    "KeyTooLongError": 400,
    "RequestHeaderSectionTooLarge": 400,
    "AccessDenied": 403,
    "AccessForbidden": 403,
    "NoSuchBucket": 404,
    "NoSuchKey": 404,
    "MethodNotAllowed": 405,
    "PreconditionFailed": 412,
    "InvalidRange": 416,
    "InternalError": 500,
    "NotImplemented": 501,
    "ServiceUnavailable": 503,
}


class S3Error(Exception):
    """An error reply: S3 code, human message and the HTTP status that goes with the code."""

    def __init__(self, code: str, message: str, *, headers: dict[str, str] | None = None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = STATUS_BY_CODE[code]
        self.headers = headers or {}


def new_request_id() -> str:
    """The ``x-amz-request-id`` of one answer (and the RequestId of its error document)."""
    return secrets.token_hex(8).upper()
