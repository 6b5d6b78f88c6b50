"""The S3 errors the gateway answers with, and the exception that carries one to the transport."""

from __future__ import annotations

__all__ = ["STATUS_BY_CODE", "S3Error"]

STATUS_BY_CODE: dict[str, int] = {
    "InvalidArgument": 400,
    "InvalidRequest": 400,
    "AccessDenied": 403,
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
