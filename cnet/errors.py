"""The agent's error type: every failure a caller can see carries an HTTP status and a code."""

from __future__ import annotations


class CnetError(Exception):
    """An error with an HTTP status, a short machine code and a human message.

    The REST API renders it as ``{"error": {"code", "message"}}``; the bus sends the same
    fields in an error reply.
    """

    status = 500
    code = "internal"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None,
                 details: dict | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.details = details or {}

    def to_dict(self) -> dict:
        body = {"code": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return body


class BadRequest(CnetError):
    status = 400
    code = "bad_request"


class Unauthorized(CnetError):
    status = 401
    code = "unauthorized"


class NotFound(CnetError):
    status = 404
    code = "not_found"


class Conflict(CnetError):
    status = 409
    code = "conflict"


class PayloadTooLarge(CnetError):
    status = 413
    code = "payload_too_large"


class Unprocessable(CnetError):
    status = 422
    code = "unprocessable"


class InsufficientResources(CnetError):
    status = 503
    code = "insufficient_resources"


class Unavailable(CnetError):
    status = 503
    code = "unavailable"


class BadGateway(CnetError):
    status = 502
    code = "bad_gateway"


class GatewayTimeout(CnetError):
    status = 504
    code = "gateway_timeout"
