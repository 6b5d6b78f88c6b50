"""Reading one configuration value: a section, a string, a choice, a number, a size, a port, a
path, host:port; each refusal is one ``ConfigError`` line naming the key."""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["ConfigError", "choice", "hostport", "number", "path", "port", "section", "size",
           "text"]

_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGTP]i?B?|B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4, "P": 1000**5,
          "KI": 1024, "MI": 1024**2, "GI": 1024**3, "TI": 1024**4, "PI": 1024**5}


class ConfigError(Exception):
    """A bad configuration value; the message is one line naming the key."""


def section(raw: dict, name: str, where: str | None = None) -> dict:
    value = raw.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where or name}: must be a mapping")
    return value


def text(raw: dict, key: str, where: str, default: str) -> str:
    value = raw.get(key, default)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: must be a non-empty string")
    return value


def choice(raw: dict, key: str, where: str, choices: tuple, default: str) -> str:
    value = raw.get(key, default)
    if not isinstance(value, str) or value.lower() not in choices:
        raise ConfigError(f"{where}.{key}: must be one of {', '.join(choices)} (got {value!r})")
    return value.lower()


def number(value, where: str, low: float, high: float, whole: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}: must be a number (got {value!r})")
    if value != value:
        raise ConfigError(f"{where}: must be a number (got NaN)")
    if value < low:
        raise ConfigError(f"{where}: must not be {'negative' if low == 0 else f'below {low:g}'} (got {value!r})")
    if value > high:
        raise ConfigError(f"{where}: must be at most {high:g} (got {value!r})")
    if whole and value != int(value):
        raise ConfigError(f"{where}: must be a whole number (got {value!r})")
    return float(value)


def size(value, where: str) -> int:
    """Bytes: a whole number, or a string with a unit ("16GiB", "512Mi", "10G")."""
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if not m:
            raise ConfigError(f"{where}: {value!r} is not a size (bytes, or e.g. '16GiB')")
        unit = (m.group(2) or "").upper().rstrip("B")
        return int(float(m.group(1)) * _UNITS[unit])
    return int(number(value, where, 0, 2**62, whole=True))


def port(value, where: str, allow_zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}: must be a whole number (got {value!r})")
    if not (0 if allow_zero else 1) <= value <= 65535:
        raise ConfigError(f"{where}: must be between 1 and 65535 (got {value})")
    return value


def path(value, where: str, node_id: str) -> Path:
    if not isinstance(value, (str, Path)) or not str(value):
        raise ConfigError(f"{where}: must be a path")
    return Path(str(value).replace("{node_id}", node_id)).expanduser()


def hostport(value, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: must be host:port")
    text = value.removeprefix("http://").removeprefix("tcp://").rstrip("/")
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(f"{where}: {value!r} is not host:port")
    return f"{host}:{int(port)}"
