"""Refused hellos and connections, logged so an operator can see who was turned away and why:
at most once per peer and reason a minute, with the claimed id, its address and key fingerprint."""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Callable

__all__ = ["RefusalLog", "fingerprint"]

EVERY = 60.0     # seconds between two lines about the same peer and reason
MAX_PEERS = 4096


def fingerprint(key: str | bytes | None) -> str:
    """A short, stable name for a Curve public key (Z85 text or raw bytes): sha256, 16 hex."""
    if not key:
        return "none"
    raw = key.encode("ascii", "replace") if isinstance(key, str) else key
    return hashlib.sha256(raw).hexdigest()[:16]


class RefusalLog:
    def __init__(self, logger: logging.Logger, clock: Callable[[], float] = time.monotonic):
        self._log = logger
        self._clock = clock
        self._last: dict[tuple[str, str], float] = {}

    def refused(self, who: str, what: str, reason: str, *, address: str = "?",
                key: str | bytes | None = None) -> bool:
        """Log that ``who`` refused ``what`` ("hello from nanjing (child)", "a connection");
        False when the same refusal of the same peer was logged lately."""
        now = self._clock()
        peer = (f"{what}|{address}|{fingerprint(key)}", reason)
        last = self._last.get(peer)
        if last is not None and now - last < EVERY:
            return False
        if len(self._last) >= MAX_PEERS:
            self._last = {k: t for k, t in self._last.items() if now - t < EVERY}
        self._last[peer] = now
        self._log.error("%s refused %s (address %s, key %s): %s", who, what, address,
                        fingerprint(key), reason)
        return True
