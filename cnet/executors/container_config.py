"""A container workload's ``config``: pure checks and normalisation (image, command, ports,
volumes, ...), no engine and no filesystem; what depends on the node is the executor's ``check_here``.
"""

from __future__ import annotations

import os
import shlex
from pathlib import PurePosixPath
from typing import Any

from ..errors import BadRequest
from .base import require_str, require_str_list, require_str_map

__all__ = ["CONFIG_FIELDS", "validate_config"]

CONFIG_FIELDS = frozenset({"image", "command", "args", "env", "ports", "volumes", "working_dir",
                           "stop_grace"})
PROTOCOLS = ("tcp", "udp", "sctp")


def validate_config(config: dict) -> dict:
    """The checked, normalised ``config`` of a container workload; raise BadRequest."""
    unknown = sorted(set(config) - CONFIG_FIELDS)
    if unknown:
        raise BadRequest(f"config: unknown field(s) for a container: {', '.join(unknown)}",
                         code="invalid_field")
    image = require_str(config, "image")
    if any(c.isspace() or c == "\x00" for c in image):
        raise BadRequest("config.image: must not contain spaces or NUL characters",
                         code="invalid_field")
    out: dict[str, Any] = {"image": image}
    command, args = _command(config), require_str_list(config, "args")
    env, ports, volumes = require_str_map(config, "env"), _ports(config), _volumes(config)
    working_dir = require_str(config, "working_dir", required=False)
    if working_dir is not None and not PurePosixPath(working_dir).is_absolute():
        raise BadRequest("config.working_dir: an absolute path inside the container",
                         code="invalid_field")
    grace = config.get("stop_grace")
    if grace is not None and (isinstance(grace, bool) or not isinstance(grace, (int, float))
                              or not 0 <= grace <= 3600):
        raise BadRequest("config.stop_grace: seconds, 0..3600", code="invalid_field")
    for key, value in (("command", command), ("args", args), ("env", env), ("ports", ports),
                       ("volumes", volumes), ("working_dir", working_dir),
                       ("stop_grace", grace)):
        if value or (key == "stop_grace" and value is not None):
            out[key] = value
    return out


def _command(config: dict) -> list[str]:
    value = config.get("command")
    if value is None:
        return []
    if isinstance(value, str):
        try:
            value = shlex.split(value)
        except ValueError as exc:
            raise BadRequest(f"config.command: {exc}", code="invalid_field") from None
        if not value:
            raise BadRequest("config.command: must not be empty", code="invalid_field")
        return value
    return require_str_list(config, "command")


def _port_number(value: Any, where: str) -> int:
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise BadRequest(f"{where}: a port number 1..65535", code="invalid_field")
    return value


def _container_port(key: Any) -> str:
    """``80``, ``"80"`` or ``"80/tcp"`` -> ``"80/tcp"``."""
    text = str(key) if isinstance(key, int) and not isinstance(key, bool) else key
    if not isinstance(text, str):
        raise BadRequest(f"config.ports: bad container port {key!r}", code="invalid_field")
    port, _, proto = text.partition("/")
    proto = proto or "tcp"
    if proto not in PROTOCOLS:
        raise BadRequest(f"config.ports: {text}: protocol must be one of {', '.join(PROTOCOLS)}",
                         code="invalid_field")
    return f"{_port_number(port, f'config.ports: container port {text}')}/{proto}"


def _ports(config: dict) -> dict[str, int | None]:
    """``{"8080/tcp": 18080, "80": 8080}`` or ``["18080:8080", "53/udp"]`` -> container -> host.

    A host port of ``null`` (or a list entry without one) lets the engine pick a free port.
    """
    raw = config.get("ports") or {}
    pairs: list[tuple[Any, Any]]
    if isinstance(raw, dict):
        pairs = list(raw.items())
    elif isinstance(raw, list) and all(isinstance(v, str) for v in raw):
        pairs = []
        for item in raw:
            host, sep, inside = item.rpartition(":")
            pairs.append((inside, host if sep else None))
    else:
        raise BadRequest('config.ports: an object {"<port>[/tcp|udp]": <host port>} or a list '
                         'of "<host port>:<port>[/proto]"', code="invalid_field")
    out: dict[str, int | None] = {}
    used: set[tuple[int, str]] = set()
    for key, host in pairs:
        inside = _container_port(key)
        if inside in out:
            raise BadRequest(f"config.ports: {inside} is mapped twice", code="invalid_field")
        host_port = None if host in (None, 0, "") else _port_number(host, f"config.ports.{inside}")
        if host_port is not None:
            proto = inside.partition("/")[2]
            if (host_port, proto) in used:
                raise BadRequest(f"config.ports: host port {host_port}/{proto} is used twice",
                                 code="invalid_field")
            used.add((host_port, proto))
        out[inside] = host_port
    return out


def _volumes(config: dict) -> list[str]:
    """``["/host/dir:/in/container[:ro|rw]"]``: absolute paths (the host side is checked in
    ``check_here``)."""
    out = []
    for item in require_str_list(config, "volumes"):
        parts = item.split(":")
        if len(parts) == 3 and parts[2] in ("ro", "rw"):
            host, inside, mode = parts
        elif len(parts) == 2:
            (host, inside), mode = parts, "rw"
        else:
            raise BadRequest(f"config.volumes: {item!r}: expected host:container[:ro|rw]",
                             code="invalid_field")
        if not os.path.isabs(host) or not PurePosixPath(inside).is_absolute():
            raise BadRequest(f"config.volumes: {item!r}: both paths must be absolute",
                             code="invalid_field")
        out.append(f"{host}:{inside}:{mode}")
    return out
