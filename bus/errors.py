"""Errors the bus raises to its callers, and the one a request handler raises to answer an error."""

from __future__ import annotations

from typing import Any

__all__ = ["BusError", "LostInFlight", "RemoteError", "RequestTimeout", "Unreachable"]


class BusError(Exception):
    """Base of every bus error; ``code`` is a short machine-readable string."""

    code = "bus_error"

    def __init__(self, message: str, *, code: str | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class RequestTimeout(BusError):
    """No reply arrived within the request's timeout."""

    code = "timeout"


class Unreachable(BusError):
    """The target node is not a joined neighbour, or its link is down."""

    code = "unreachable"


class LostInFlight(Unreachable):
    """The request went out, then its target was lost or joined again as a new session before
    answering: it may or may not have been received."""

    code = "lost_in_flight"


class RemoteError(BusError):
    """An error reply: raise it in a handler to answer ``{code, message, details}``;
    :meth:`bus.protocol.Reply` callers get it from ``BusNode.call`` / ``BusClient.call``."""

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None):
        super().__init__(message, code=code)
        self.details = details or {}

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return body
