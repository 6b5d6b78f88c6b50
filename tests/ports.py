"""Ports for the servers tests start, chosen outside the kernel's ephemeral range.

Binding to port 0 gets a port from the ephemeral range, which is also where every
outgoing connection (a DEALER dialling a neighbour, an HTTP client, a SUB socket)
gets its local port. Between a test picking such a port and an agent binding it,
the kernel may hand it to a connection: "Address already in use", at random. Ports
below the ephemeral range are never given to outgoing connections, so a port handed
out here stays free until the test binds it. A process never hands out a port twice,
and each process starts at its own random point, so two test runs on one machine
rarely meet either.
"""

from __future__ import annotations

import random
import socket
import threading
from pathlib import Path

LOWEST = 10000
_AVOID = range(8000, 10000)   # the default topologies and service port range


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


HIGHEST = max(LOWEST + 1000, _ephemeral_low()) - 1
_lock = threading.Lock()
_next = random.Random().randrange(LOWEST, HIGHEST)


def bindable(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port_range(count: int) -> tuple[int, int]:
    """``count`` consecutive free ports, never handed out before: ``(first, last)``."""
    global _next
    with _lock:
        for _ in range(HIGHEST - LOWEST):
            first = _next
            last = first + count - 1
            if last > HIGHEST:
                _next = LOWEST
                continue
            _next = last + 1
            ports = range(first, last + 1)
            if any(p in _AVOID for p in ports):
                continue
            if all(bindable(p) for p in ports):
                return first, last
    raise RuntimeError(f"no {count} consecutive free ports in {LOWEST}..{HIGHEST}")


def free_port() -> int:
    """A free port, never handed out before by this process."""
    return free_port_range(1)[0]
