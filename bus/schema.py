"""A small declarative checker for bus payloads: numbers, strings, lists, maps, records and
free-form data, each bounded. ``bus.protocol`` declares the payload schemas with it.

Every payload a node receives is checked (a heartbeat's snapshot and summary each second, from
each neighbour), so the check is compiled once per schema into plain closures: a value that
passes costs a few isinstance tests per field and builds no strings. Where a bad value sits is
only spelled out when one is refused: the path is collected on the way out of the closures.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable, Mapping

__all__ = ["MAX_ITEMS", "MAX_PLAIN_ITEMS", "MAX_TEXT", "ListOf", "MapOf", "Maybe", "Number",
           "Plain", "Record", "Schema", "Text"]

MAX_TEXT = 1 << 20          # characters in one string of a payload
MAX_ITEMS = 1024            # entries in a declared list or map of a payload
MAX_PLAIN_ITEMS = 1 << 16   # entries in one list or map of free-form data

Check = Callable[[Any], Any]


class _Bad(Exception):
    """A refused value: ``reason`` follows its path; ``path`` is filled in innermost first."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason
        self.path: list[str] = []

    def at(self, step: str) -> _Bad:
        self.path.append(step)
        return self

    def render(self, where: str) -> str:
        return f"{where}{''.join(reversed(self.path))} {self.reason}"


def _key(check: Check, key: Any) -> Any:
    """A map's ``key`` checked; a refusal says it was the key."""
    try:
        return check(key)
    except _Bad as bad:
        raise bad.at(" key") from None


def _entry(check: Check, value: Any, key: str) -> Any:
    """A map's entry ``key``'s ``value`` checked; a refusal names the key on its path."""
    try:
        return check(value)
    except _Bad as bad:
        raise bad.at(f".{key[:40]}") from None


def _sized(value: Any, kind: type, what: str, max_len: int, too_many: str) -> None:
    """``value`` is a ``kind`` (``what``) of at most ``max_len`` entries, or ``_Bad``."""
    if not isinstance(value, kind):
        raise _Bad(f"must be {what}")
    if len(value) > max_len:
        raise _Bad(too_many)


class Schema:
    """A declared payload shape: ``check(value, where)`` returns what to keep (a record without
    its undeclared keys) or raises ValueError naming the first bad field."""

    def check(self, value: Any, where: str) -> Any:
        try:
            return self.compiled(value)
        except _Bad as bad:
            raise ValueError(bad.render(where)) from None

    @cached_property
    def compiled(self) -> Check:
        """The check as one closure (made on first use): the value kept, or ``_Bad``."""
        return self._compile()

    def _compile(self) -> Check:
        raise NotImplementedError


@dataclass(frozen=True)
class Number(Schema):
    """A finite number in [lo, hi]; ``whole``: an integer. Never a bool."""

    lo: float
    hi: float
    whole: bool = False

    def _compile(self) -> Check:
        lo, hi, kinds = self.lo, self.hi, int if self.whole else (int, float)
        not_kind = f"must be {'an integer' if self.whole else 'a number'}"
        out_of_range = f"must be a finite number in [{lo:g}, {hi:g}]"
        isfinite = math.isfinite

        def number(value: Any) -> Any:
            if value.__class__ is bool or not isinstance(value, kinds):
                raise _Bad(not_kind)
            if not lo <= value <= hi or (value.__class__ is float and not isfinite(value)):
                raise _Bad(out_of_range)
            return value
        return number


@dataclass(frozen=True)
class Text(Schema):
    """A string of at most ``max_len`` characters, without NUL, matching ``pattern`` if given."""

    max_len: int = MAX_TEXT
    pattern: re.Pattern[str] | None = None

    def _compile(self) -> Check:
        max_len = self.max_len
        too_long = f"is longer than {max_len} characters"
        match = self.pattern.fullmatch if self.pattern is not None else None

        def text(value: Any) -> Any:
            if not isinstance(value, str):
                raise _Bad("must be a string")
            if len(value) > max_len:
                raise _Bad(too_long)
            if "\x00" in value:
                raise _Bad("holds a NUL character")
            if match is not None and not match(value):
                bad = _Bad(f"{value[:40]!r} is not a valid value")
                raise bad
            return value
        return text


@dataclass(frozen=True)
class Maybe(Schema):
    """``inner``, or null."""

    inner: Schema

    def _compile(self) -> Check:
        inner = self.inner.compiled

        def maybe(value: Any) -> Any:
            return None if value is None else inner(value)
        return maybe


@dataclass(frozen=True)
class ListOf(Schema):
    item: Schema
    max_len: int = MAX_ITEMS

    def _compile(self) -> Check:
        item, max_len = self.item.compiled, self.max_len
        too_many = f"has more than {max_len} entries"

        def list_of(value: Any) -> Any:
            _sized(value, list, "a list", max_len, too_many)
            out = []
            for v in value:
                try:
                    out.append(item(v))
                except _Bad as bad:
                    raise bad.at(f"[{len(out)}]") from None
            return out
        return list_of


@dataclass(frozen=True)
class MapOf(Schema):
    """A map of ``key`` strings to ``value``s (labels)."""

    key: Text
    value: Schema
    max_len: int = MAX_ITEMS

    def _compile(self) -> Check:
        key_check, value_check, max_len = self.key.compiled, self.value.compiled, self.max_len
        too_many = f"has more than {max_len} entries"

        def map_of(value: Any) -> Any:
            _sized(value, dict, "a map", max_len, too_many)
            out = {}
            for k, v in value.items():
                k = _key(key_check, k)
                out[k] = _entry(value_check, v, k)
            return out
        return map_of


@dataclass(frozen=True)
class Record(Schema):
    """A map of declared ``fields`` (optional unless ``required``). An undeclared key is dropped,
    or kept when ``extra`` is given and its value passes it (at most ``MAX_ITEMS`` of them)."""

    fields: Mapping[str, Schema]
    required: frozenset[str] = frozenset()
    extra: Schema | None = None

    def _compile(self) -> Check:
        specs = {name: spec.compiled for name, spec in self.fields.items()}
        required = self.required
        extra = self.extra.compiled if self.extra is not None else None
        most = len(self.fields) + MAX_ITEMS
        too_many = f"has more than {most} keys"
        field_name = _FIELD_NAME.compiled
        get = specs.get

        def record(value: Any) -> Any:
            if not isinstance(value, dict):
                raise _Bad("must be a map")
            if required and not required <= value.keys():
                raise _Bad(f"lacks {', '.join(sorted(required - value.keys()))}")
            if len(value) > most:
                raise _Bad(too_many)
            out = {}
            for key, item in value.items():
                spec = get(key) if isinstance(key, str) else None
                if spec is None:
                    if extra is None:
                        continue
                    spec = extra
                    _key(field_name, key)
                out[key] = _entry(spec, item, key)
            return out
        return record


@dataclass(frozen=True)
class Plain(Schema):
    """Free-form data as JSON has it (string keys, lists, strings, finite numbers within 64 bits,
    booleans, null), nested at most ``depth`` levels, each list or map of bounded size."""

    depth: int = 8

    def _compile(self) -> Check:
        depth = self.depth
        text, whole, field_name = _TEXT.compiled, _PLAIN_INT.compiled, _FIELD_NAME.compiled
        isfinite = math.isfinite
        too_deep = f"is nested deeper than {depth} levels"
        too_many = f"has more than {MAX_PLAIN_ITEMS} entries"

        def plain(value: Any, level: int = 0) -> Any:
            if value is None or value.__class__ is bool:
                return value
            if isinstance(value, str):
                return text(value)
            if isinstance(value, int):
                return whole(value)
            if isinstance(value, float):
                if not isfinite(value):
                    raise _Bad("must be a finite number")
                return value
            if level >= depth:
                raise _Bad(too_deep)
            if isinstance(value, list):
                if len(value) > MAX_PLAIN_ITEMS:
                    raise _Bad(too_many)
                out = []
                for v in value:
                    try:
                        out.append(plain(v, level + 1))
                    except _Bad as bad:
                        raise bad.at(f"[{len(out)}]") from None
                return out
            if isinstance(value, dict):
                if len(value) > MAX_PLAIN_ITEMS:
                    raise _Bad(too_many)
                kept = {}
                for k, v in value.items():
                    _key(field_name, k)
                    try:
                        kept[k] = plain(v, level + 1)
                    except _Bad as bad:
                        raise bad.at(f".{k[:40]}") from None
                return kept
            raise _Bad(f"must be plain data, not {type(value).__name__}")
        return plain


_TEXT = Text()
_PLAIN_INT = Number(-2**63, 2**63 - 1, whole=True)
_FIELD_NAME = Text(256)
