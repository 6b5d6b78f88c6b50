"""Where a node is reached from other machines: its advertised address, found from the config,
the route to its neighbours, or its host name; and which addresses are loopback."""

from __future__ import annotations

import ipaddress
import socket
from typing import Callable, Sequence

__all__ = ["WILDCARDS", "advertised_host", "is_loopback", "route_source"]

WILDCARDS = ("0.0.0.0", "::", "")  # bind addresses that mean every interface


def route_source(host: str, port: int) -> str | None:
    """The local address this machine sends from to reach ``host:port``, or None.

    A UDP socket's ``connect()`` only picks the route: no packet is sent.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except (socket.gaierror, UnicodeError):
        return None
    for family, kind, proto, _name, sockaddr in infos:
        try:
            with socket.socket(family, kind, proto) as sock:
                sock.connect(sockaddr)
                return sock.getsockname()[0]
        except OSError:
            continue
    return None


def advertised_host(address: str, explicit: str | None, neighbours: Sequence[str], *,
                    probe: Callable[[str, int], str | None] = route_source,
                    hostname: Callable[[], str] = socket.gethostname) -> str:
    """What other machines use to reach this node: ``explicit`` (agent.advertise_address);
    else ``address`` unless it is a wildcard; else the address of the interface that reaches
    the first neighbour (``host:port``: parent, then peers) reached other than over loopback;
    else the host name.
    """
    if explicit:
        return explicit
    if address not in WILDCARDS:
        return address
    for hostport in neighbours:
        host, _, port = hostport.rpartition(":")
        found = probe(host.strip("[]"), int(port))
        if found and found not in WILDCARDS and not is_loopback(found):
            return found
    return hostname()


def is_loopback(host: str) -> bool:
    """True for a loopback IP address (or "localhost")."""
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return host == "localhost"
