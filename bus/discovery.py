"""Finding a neighbour's bus endpoints from its HTTP address (``GET /api/bus``).

The agent serves ``{"node_id", "router", "pub", "protocol"[, "curve_key"]}`` there; the seed's
config names neighbours by HTTP ``host:port``, so this is how a node learns where to connect.

The request is one plain HTTP/1.0 ``GET`` over asyncio streams (``_get``), answered by another
agent: a general HTTP client (tornado's) would cost every node ~0.25 MB for this one call.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

__all__ = ["Discover", "DiscoveryError", "Endpoints", "discover_http", "discover_until"]

log = logging.getLogger("bus.discovery")

_WILDCARDS = ("0.0.0.0", "*", "::")
MAX_ANSWER = 64 * 1024      # bytes of a /api/bus answer, headers included


class DiscoveryError(Exception):
    """The neighbour did not answer ``/api/bus`` with usable endpoints."""


@dataclass(frozen=True)
class Endpoints:
    """Where a node's bus listens. ``node_id`` may be empty when configured by hand."""

    router: str
    pub: str
    node_id: str = ""
    protocol: str = ""
    curve_key: str | None = None      # its Z85 public key, when Curve is on
    http: str = ""                    # the HTTP address it was discovered at

    @classmethod
    def from_json(cls, doc: object, http: str = "") -> Endpoints:
        if not isinstance(doc, dict):
            raise DiscoveryError("/api/bus did not return a JSON object")
        router, pub = doc.get("router"), doc.get("pub")
        if not (isinstance(router, str) and router.startswith("tcp://")
                and isinstance(pub, str) and pub.startswith("tcp://")):
            raise DiscoveryError("/api/bus lacks tcp:// 'router' and 'pub' endpoints")
        key = doc.get("curve_key")
        host = _host_of(http)
        return cls(router=_reachable(router, host), pub=_reachable(pub, host),
                   node_id=str(doc.get("node_id") or ""), protocol=str(doc.get("protocol") or ""),
                   curve_key=key if isinstance(key, str) and key else None, http=http)


Discover = Callable[[str], Awaitable[Endpoints]]
"""Given a neighbour's HTTP ``host:port``, return its endpoints or raise."""


def _host_of(http: str) -> str:
    url = http if "://" in http else f"http://{http}"
    return urlsplit(url).hostname or ""


def _reachable(endpoint: str, host: str) -> str:
    """Replace a wildcard bind address with the host we reached the agent's HTTP at."""
    parts = urlsplit(endpoint)
    if host and parts.hostname in _WILDCARDS:
        netloc = f"{host}:{parts.port}" if ":" not in host else f"[{host}]:{parts.port}"
        return urlunsplit((parts.scheme, netloc, "", "", ""))
    return endpoint


async def discover_http(address: str, timeout: float = 2.0) -> Endpoints:
    """One ``GET http://address/api/bus`` with a timeout; raises :class:`DiscoveryError`."""
    base = address if "://" in address else f"http://{address}"
    url = base.rstrip("/") + "/api/bus"
    try:
        status, body = await asyncio.wait_for(_get(url), timeout)
        if status != 200:
            raise DiscoveryError(f"{url}: HTTP {status}")
        doc = json.loads(body)
    except (TimeoutError, OSError, ValueError) as exc:
        raise DiscoveryError(f"{url}: {type(exc).__name__}: {exc}") from None
    return Endpoints.from_json(doc, http=address)


async def _get(url: str) -> tuple[int, bytes]:
    """``GET url`` (plain HTTP); its status and body. Raises ValueError on what is not HTTP or
    is longer than ``MAX_ANSWER``, OSError when the connection fails."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"not an http:// address: {url!r}")
    port = parts.port or 80
    reader, writer = await asyncio.open_connection(parts.hostname, port)
    try:
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        writer.write(f"GET {parts.path or '/'} HTTP/1.0\r\nHost: {host}:{port}\r\n"
                     "Accept: application/json\r\n\r\n".encode("ascii"))
        answer = b""       # HTTP/1.0: the answer ends where the server closes the connection
        while len(answer) <= MAX_ANSWER:
            more = await reader.read(MAX_ANSWER + 1 - len(answer))
            if not more:
                break
            answer += more
    finally:
        writer.close()
    if len(answer) > MAX_ANSWER:
        raise ValueError(f"the answer is longer than {MAX_ANSWER} bytes")
    head, found, body = answer.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].split()
    if not found or len(status_line) < 2 or not status_line[0].startswith(b"HTTP/1.") \
            or not status_line[1].isdigit():
        raise ValueError("the answer is not HTTP")
    return int(status_line[1]), body


async def discover_until(address: str, discover: Discover, *, first_delay: float = 0.1,
                         max_delay: float = 5.0) -> Endpoints:
    """Call ``discover(address)`` until it succeeds, backing off exponentially to ``max_delay``.

    Logs the first failure and then every tenth, so a neighbour that is down for long does
    not flood the log. Cancel the caller to stop trying.
    """
    delay, failures = first_delay, 0
    while True:
        try:
            found = await discover(address)
            if failures:
                log.info("discovered %s at %s after %d failed attempts", found.node_id or "?",
                         address, failures)
            return found
        except Exception as exc:  # noqa: BLE001 - an injected discover may raise anything
            if failures % 10 == 0:
                log.warning("bus discovery of %s failed (%s); retrying", address, exc)
            failures += 1
        await asyncio.sleep(delay)
        delay = min(max_delay, delay * 2)
