"""A small declarative checker for bus payloads: numbers, strings, lists, maps, records and
free-form data, each bounded. ``bus.protocol`` declares the payload schemas with it."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Mapping

__all__ = ["MAX_ITEMS", "MAX_PLAIN_ITEMS", "MAX_TEXT", "ListOf", "MapOf", "Maybe", "Number",
           "Plain", "Record", "Schema", "Text"]

MAX_TEXT = 1 << 20          # characters in one string of a payload
MAX_ITEMS = 1024            # entries in a declared list or map of a payload
MAX_PLAIN_ITEMS = 1 << 16   # entries in one list or map of free-form data


class Schema:
    """A declared payload shape: ``check(value, where)`` returns what to keep (a record without
    its undeclared keys) or raises ValueError naming the first bad field."""

    def check(self, value: Any, where: str) -> Any:
        raise NotImplementedError


@dataclass(frozen=True)
class Number(Schema):
    """A finite number in [lo, hi]; ``whole``: an integer. Never a bool."""

    lo: float
    hi: float
    whole: bool = False

    def check(self, value: Any, where: str) -> Any:
        if isinstance(value, bool) or not isinstance(value, int if self.whole else (int, float)):
            raise ValueError(f"{where} must be {'an integer' if self.whole else 'a number'}")
        if (isinstance(value, float) and not math.isfinite(value)) or not self.lo <= value <= self.hi:
            raise ValueError(f"{where} must be a finite number in [{self.lo:g}, {self.hi:g}]")
        return value


@dataclass(frozen=True)
class Text(Schema):
    """A string of at most ``max_len`` characters, without NUL, matching ``pattern`` if given."""

    max_len: int = MAX_TEXT
    pattern: re.Pattern[str] | None = None

    def check(self, value: Any, where: str) -> Any:
        if not isinstance(value, str):
            raise ValueError(f"{where} must be a string")
        if len(value) > self.max_len:
            raise ValueError(f"{where} is longer than {self.max_len} characters")
        if "\x00" in value:
            raise ValueError(f"{where} holds a NUL character")
        if self.pattern is not None and not self.pattern.fullmatch(value):
            raise ValueError(f"{where} {value[:40]!r} is not a valid value")
        return value


@dataclass(frozen=True)
class Maybe(Schema):
    """``inner``, or null."""

    inner: Schema

    def check(self, value: Any, where: str) -> Any:
        return None if value is None else self.inner.check(value, where)


@dataclass(frozen=True)
class ListOf(Schema):
    item: Schema
    max_len: int = MAX_ITEMS

    def check(self, value: Any, where: str) -> Any:
        if not isinstance(value, list):
            raise ValueError(f"{where} must be a list")
        if len(value) > self.max_len:
            raise ValueError(f"{where} has more than {self.max_len} entries")
        return [self.item.check(v, f"{where}[{i}]") for i, v in enumerate(value)]


@dataclass(frozen=True)
class MapOf(Schema):
    """A map of ``key`` strings to ``value``s (labels)."""

    key: Text
    value: Schema
    max_len: int = MAX_ITEMS

    def check(self, value: Any, where: str) -> Any:
        if not isinstance(value, dict):
            raise ValueError(f"{where} must be a map")
        if len(value) > self.max_len:
            raise ValueError(f"{where} has more than {self.max_len} entries")
        return {self.key.check(k, f"{where} key"): self.value.check(v, f"{where}.{k[:40]}")
                for k, v in value.items()}


@dataclass(frozen=True)
class Record(Schema):
    """A map of declared ``fields`` (optional unless ``required``). An undeclared key is dropped,
    or kept when ``extra`` is given and its value passes it (at most ``MAX_ITEMS`` of them)."""

    fields: Mapping[str, Schema]
    required: frozenset[str] = frozenset()
    extra: Schema | None = None

    def check(self, value: Any, where: str) -> Any:
        if not isinstance(value, dict):
            raise ValueError(f"{where} must be a map")
        missing = self.required - value.keys()
        if missing:
            raise ValueError(f"{where} lacks {', '.join(sorted(missing))}")
        if len(value) > len(self.fields) + MAX_ITEMS:
            raise ValueError(f"{where} has more than {len(self.fields) + MAX_ITEMS} keys")
        out = {}
        for key, item in value.items():
            spec = self.fields.get(key) if isinstance(key, str) else None
            if spec is None:
                if self.extra is None:
                    continue
                spec = self.extra
                _FIELD_NAME.check(key, f"{where} key")
            out[key] = spec.check(item, f"{where}.{key}")
        return out


@dataclass(frozen=True)
class Plain(Schema):
    """Free-form data as JSON has it (string keys, lists, strings, finite numbers within 64 bits,
    booleans, null), nested at most ``depth`` levels, each list or map of bounded size."""

    depth: int = 8

    def check(self, value: Any, where: str, level: int = 0) -> Any:
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, str):
            return _TEXT.check(value, where)
        if isinstance(value, int):
            return _PLAIN_INT.check(value, where)
        if isinstance(value, float):
            if not math.isfinite(value):
                raise ValueError(f"{where} must be a finite number")
            return value
        if level >= self.depth:
            raise ValueError(f"{where} is nested deeper than {self.depth} levels")
        if isinstance(value, (list, dict)) and len(value) > MAX_PLAIN_ITEMS:
            raise ValueError(f"{where} has more than {MAX_PLAIN_ITEMS} entries")
        if isinstance(value, list):
            return [self.check(v, f"{where}[{i}]", level + 1) for i, v in enumerate(value)]
        if isinstance(value, dict):
            return {_FIELD_NAME.check(k, f"{where} key"): self.check(v, f"{where}.{k[:40]}", level + 1)
                    for k, v in value.items()}
        raise ValueError(f"{where} must be plain data, not {type(value).__name__}")


_TEXT = Text()
_PLAIN_INT = Number(-2**63, 2**63 - 1, whole=True)
_FIELD_NAME = Text(256)
