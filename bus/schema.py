"""A small declarative checker for bus payloads: numbers, strings, lists, maps, records and
free-form data, each bounded. ``bus.payloads`` declares the payload schemas with it.

Every payload a node receives goes through it (a snapshot with each heartbeat and broadcast, a
workload with each event and answer), so checking is compiled: each schema is turned once into
a plain function (``compiled``) that checks a value without naming where it is, and only a
value it refuses is checked again by the declarative walk (``explain``), which names the first
bad field. Both keep the same rules; the compiled one just does not build a field name for
every value it passes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Mapping

__all__ = ["MAX_ITEMS", "MAX_PLAIN_ITEMS", "MAX_TEXT", "Bytes", "ListOf", "MapOf", "Maybe",
           "Number", "Plain", "Record", "Schema", "Text"]

MAX_TEXT = 1 << 20          # characters in one string of a payload
MAX_ITEMS = 1024            # entries in a declared list or map of a payload
MAX_PLAIN_ITEMS = 1 << 16   # entries in one list or map of free-form data


class _Refused(Exception):
    """A compiled check refused a value (``explain`` then says why and where)."""


_REFUSED = _Refused()
Check = Callable[[Any], Any]


class Schema:
    """A declared payload shape: ``check(value, where)`` returns what to keep (a record without
    its undeclared keys) or raises ValueError naming the first bad field."""

    def check(self, value: Any, where: str) -> Any:
        try:
            return self.compiled(value)
        except _Refused:
            return self.explain(value, where)

    @cached_property
    def compiled(self) -> Check:
        """The check as one function of the value: what to keep, or ``_Refused``."""
        return self._compile()

    def _compile(self) -> Check:
        raise NotImplementedError

    def explain(self, value: Any, where: str) -> Any:
        """The declarative walk: what to keep, or ValueError naming the first bad field."""
        raise NotImplementedError


@dataclass(frozen=True)
class Number(Schema):
    """A finite number in [lo, hi]; ``whole``: an integer. Never a bool."""

    lo: float
    hi: float
    whole: bool = False

    def _compile(self) -> Check:
        lo, hi = self.lo, self.hi
        if self.whole:
            def check(value: Any) -> Any:
                if type(value) is int and lo <= value <= hi:
                    return value
                raise _REFUSED
        else:
            def check(value: Any) -> Any:
                kind = type(value)
                if kind is int and lo <= value <= hi:
                    return value
                # finite: inf - inf and nan - nan are nan, which equals nothing
                if kind is float and lo <= value <= hi and value - value == 0.0:
                    return value
                raise _REFUSED
        return check

    def explain(self, value: Any, where: str) -> Any:
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

    def _compile(self) -> Check:
        max_len, pattern = self.max_len, self.pattern
        if pattern is None:
            def check(value: Any) -> Any:
                if type(value) is str and len(value) <= max_len and "\x00" not in value:
                    return value
                raise _REFUSED
        else:
            match = pattern.fullmatch

            def check(value: Any) -> Any:
                if (type(value) is str and len(value) <= max_len and "\x00" not in value
                        and match(value)):
                    return value
                raise _REFUSED
        return check

    def explain(self, value: Any, where: str) -> Any:
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
class Bytes(Schema):
    """Binary data of ``min_len`` to ``max_len`` bytes: ``bytes``, or a flat ``memoryview`` of
    bytes (a frame received without a copy)."""

    max_len: int
    min_len: int = 0

    def _compile(self) -> Check:
        lo, hi = self.min_len, self.max_len

        def check(value: Any) -> Any:
            kind = type(value)
            if (kind is bytes or (kind is memoryview and value.c_contiguous
                                  and value.itemsize == 1 and value.ndim == 1)) \
                    and lo <= len(value) <= hi:
                return value
            raise _REFUSED
        return check

    def explain(self, value: Any, where: str) -> Any:
        if type(value) is memoryview:
            if not (value.c_contiguous and value.itemsize == 1 and value.ndim == 1):
                raise ValueError(f"{where} must be a flat buffer of bytes")
        elif type(value) is not bytes:
            raise ValueError(f"{where} must be binary data")
        if not self.min_len <= len(value) <= self.max_len:
            raise ValueError(f"{where} must be {self.min_len} to {self.max_len} bytes, "
                             f"not {len(value)}")
        return value


@dataclass(frozen=True)
class Maybe(Schema):
    """``inner``, or null."""

    inner: Schema

    def _compile(self) -> Check:
        inner = self.inner.compiled

        def check(value: Any) -> Any:
            return None if value is None else inner(value)
        return check

    def explain(self, value: Any, where: str) -> Any:
        return None if value is None else self.inner.explain(value, where)


@dataclass(frozen=True)
class ListOf(Schema):
    item: Schema
    max_len: int = MAX_ITEMS

    def _compile(self) -> Check:
        item, max_len = self.item.compiled, self.max_len

        def check(value: Any) -> Any:
            if type(value) is not list or len(value) > max_len:
                raise _REFUSED
            return [item(v) for v in value]
        return check

    def explain(self, value: Any, where: str) -> Any:
        if not isinstance(value, list):
            raise ValueError(f"{where} must be a list")
        if len(value) > self.max_len:
            raise ValueError(f"{where} has more than {self.max_len} entries")
        return [self.item.explain(v, f"{where}[{i}]") for i, v in enumerate(value)]


@dataclass(frozen=True)
class MapOf(Schema):
    """A map of ``key`` strings to ``value``s (labels)."""

    key: Text
    value: Schema
    max_len: int = MAX_ITEMS

    def _compile(self) -> Check:
        key, item, max_len = self.key.compiled, self.value.compiled, self.max_len

        def check(value: Any) -> Any:
            if type(value) is not dict or len(value) > max_len:
                raise _REFUSED
            return {key(k): item(v) for k, v in value.items()}
        return check

    def explain(self, value: Any, where: str) -> Any:
        if not isinstance(value, dict):
            raise ValueError(f"{where} must be a map")
        if len(value) > self.max_len:
            raise ValueError(f"{where} has more than {self.max_len} entries")
        return {self.key.explain(k, f"{where} key"): self.value.explain(v, f"{where}.{k[:40]}")
                for k, v in value.items()}


@dataclass(frozen=True)
class Record(Schema):
    """A map of declared ``fields`` (optional unless ``required``). An undeclared key is dropped,
    or kept when ``extra`` is given and its value passes it (at most ``MAX_ITEMS`` of them)."""

    fields: Mapping[str, Schema]
    required: frozenset[str] = frozenset()
    extra: Schema | None = None

    def _compile(self) -> Check:
        fields = {name: spec.compiled for name, spec in self.fields.items()}
        required, most = self.required, len(self.fields) + MAX_ITEMS
        extra = self.extra.compiled if self.extra is not None else None
        name_ok = _FIELD_NAME.compiled

        def check(value: Any) -> Any:
            if type(value) is not dict or len(value) > most or not required <= value.keys():
                raise _REFUSED
            out = {}
            for key, item in value.items():
                spec = fields.get(key) if type(key) is str else None
                if spec is None:
                    if extra is None:
                        continue
                    name_ok(key)
                    spec = extra
                out[key] = spec(item)
            return out
        return check

    def explain(self, value: Any, where: str) -> Any:
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
                _FIELD_NAME.explain(key, f"{where} key")
            out[key] = spec.explain(item, f"{where}.{key}")
        return out


@dataclass(frozen=True)
class Plain(Schema):
    """Free-form data as JSON has it (string keys, lists, strings, finite numbers within 64 bits,
    booleans, null), nested at most ``depth`` levels, each list or map of bounded size."""

    depth: int = 8

    def _compile(self) -> Check:
        depth, text, whole = self.depth, _TEXT.compiled, _PLAIN_INT.compiled
        name_ok = _FIELD_NAME.compiled
        scalars = (type(None), bool)

        def walk(value: Any, level: int) -> Any:
            kind = type(value)
            if kind is str:
                return text(value)
            if kind is int:
                return whole(value)
            if kind is float:
                if value - value == 0.0:      # finite: inf - inf and nan - nan are nan
                    return value
                raise _REFUSED
            if kind in scalars:
                return value
            if level >= depth or (kind is not list and kind is not dict) \
                    or len(value) > MAX_PLAIN_ITEMS:
                raise _REFUSED
            if kind is list:
                return [walk(v, level + 1) for v in value]
            return {name_ok(k): walk(v, level + 1) for k, v in value.items()}

        def check(value: Any) -> Any:
            return walk(value, 0)
        return check

    def explain(self, value: Any, where: str, level: int = 0) -> Any:
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, str):
            return _TEXT.explain(value, where)
        if isinstance(value, int):
            return _PLAIN_INT.explain(value, where)
        if isinstance(value, float):
            if not math.isfinite(value):
                raise ValueError(f"{where} must be a finite number")
            return value
        if level >= self.depth:
            raise ValueError(f"{where} is nested deeper than {self.depth} levels")
        if isinstance(value, (list, dict)) and len(value) > MAX_PLAIN_ITEMS:
            raise ValueError(f"{where} has more than {MAX_PLAIN_ITEMS} entries")
        if isinstance(value, list):
            return [self.explain(v, f"{where}[{i}]", level + 1) for i, v in enumerate(value)]
        if isinstance(value, dict):
            return {_FIELD_NAME.explain(k, f"{where} key"):
                    self.explain(v, f"{where}.{k[:40]}", level + 1) for k, v in value.items()}
        raise ValueError(f"{where} must be plain data, not {type(value).__name__}")


_TEXT = Text()
_PLAIN_INT = Number(-2**63, 2**63 - 1, whole=True)
_FIELD_NAME = Text(256)
