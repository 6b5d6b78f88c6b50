"""The token an HTTP request carries: the REST handlers and the events socket read it alike."""

from __future__ import annotations

__all__ = ["bearer"]


def bearer(request) -> str:
    """The token of an ``Authorization: Bearer TOKEN`` header, or ``""``."""
    header = request.headers.get("Authorization", "")
    return header[7:].strip() if header.startswith("Bearer ") else ""
