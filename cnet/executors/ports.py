"""The port book: which service workload holds which port, one book per agent (ports are
machine-wide, so every service executor of an agent shares the same book)."""

from __future__ import annotations

import errno
import socket

from ..errors import Conflict, InsufficientResources

__all__ = ["PortBook", "port_problem"]


class PortBook:
    """Ports held by the supervised services of one agent."""

    def __init__(self) -> None:
        self._holders: dict[int, str] = {}
        self._cursor: int | None = None

    def holder(self, port: int) -> str | None:
        return self._holders.get(port)

    def claim(self, port: int, workload_id: str) -> None:
        holder = self._holders.get(port)
        if holder is not None and holder != workload_id:
            raise Conflict(f"config.service_port: port {port} is used by service workload {holder}",
                           code="port_in_use")
        self._holders[port] = workload_id

    def release(self, port: int, workload_id: str) -> None:
        if self._holders.get(port) == workload_id:
            del self._holders[port]

    def pick(self, host: str, first: int, last: int, workload_id: str) -> int:
        """Claim a free port of ``first..last``, round-robin so a just-freed port rests a while."""
        size = last - first + 1
        start = first if self._cursor is None or not first <= self._cursor <= last else self._cursor
        for i in range(size):
            port = first + (start - first + i) % size
            if port in self._holders or port_problem(host, port) is not None:
                continue
            self._holders[port] = workload_id
            self._cursor = port + 1
            return port
        raise InsufficientResources(f"no free port left in services.port_range {first}-{last}",
                                    code="no_free_port")


def port_problem(host: str, port: int) -> OSError | None:
    """Try to bind ``host:port`` as the service will (SO_REUSEADDR); the error if it cannot."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return OSError(errno.EADDRNOTAVAIL, f"cannot resolve {host} ({exc.strerror})")
    except UnicodeError:            # a name IDNA cannot encode ("a..b", stray bytes)
        return OSError(errno.EADDRNOTAVAIL, f"cannot resolve {host!r} (not a valid host name)")
    for family, kind, proto, _name, sockaddr in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(sockaddr)
            except OSError as exc:
                return exc
    return None
