"""ListObjects paging over any ordered key source: prefix, delimiter, start-after, max-keys.

The source yields entries whose key is >= ``lo`` and < ``hi`` in ascending key order (an indexed
range query). A run of keys sharing a common prefix is skipped with one range jump to the
prefix's successor, so a page costs O(page size) source steps, whatever lies under each prefix.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

__all__ = ["KeySource", "ListingPage", "ObjectEntry", "list_page", "prefix_successor"]


@dataclass(frozen=True)
class ObjectEntry:
    """One object as a listing shows it. ``etag`` is the unquoted hex MD5, None if not known yet."""

    key: str
    size: int
    etag: str | None
    last_modified: float


@dataclass
class ListingPage:
    contents: list[ObjectEntry] = field(default_factory=list)
    common_prefixes: list[str] = field(default_factory=list)
    is_truncated: bool = False
    next_marker: str | None = None   # last key or common prefix returned when truncated


KeySource = Callable[[str, str | None], Iterator[ObjectEntry]]

_MAX_CODE_POINT = 0x10FFFF
_SURROGATES = range(0xD800, 0xE000)


def prefix_successor(prefix: str) -> str | None:
    """The smallest string greater than every string that starts with ``prefix``.

    Code-point order equals UTF-8 byte order (SQLite's BINARY collation), so incrementing the
    last code point that can be incremented is enough. None when there is no upper bound.
    """
    chars = list(prefix)
    while chars:
        code = ord(chars.pop()) + 1
        if code <= _MAX_CODE_POINT:
            if code in _SURROGATES:
                code = _SURROGATES.stop
            return "".join(chars) + chr(code)
    return None


def list_page(source: KeySource, *, prefix: str = "", delimiter: str | None = None,
              after: str | None = None, max_keys: int = 1000) -> ListingPage:
    """One page of a listing: keys under ``prefix`` strictly after ``after``, at most ``max_keys``
    entries (objects plus common prefixes), in key order."""
    if max_keys <= 0:
        return ListingPage()
    lo = prefix
    if after is not None and after + "\0" > lo:
        lo = after + "\0"                       # the immediate successor of ``after``
    hi = prefix_successor(prefix) if prefix else None
    wanted = max_keys + 1                       # one more than a page tells whether it is truncated
    items: list[ObjectEntry | str] = []
    while len(items) < wanted:
        jump_to = None
        rows = source(lo, hi)
        try:
            for entry in rows:
                common = _common_prefix(entry.key, prefix, delimiter)
                if common is None:
                    items.append(entry)
                    if len(items) >= wanted:
                        break
                    continue
                if after is None or common > after:
                    items.append(common)
                jump_to = prefix_successor(common)
                break
        finally:
            close = getattr(rows, "close", None)
            if close is not None:
                close()
        if jump_to is None or (hi is not None and jump_to >= hi):
            break
        lo = jump_to
    page = ListingPage(is_truncated=len(items) > max_keys)
    for item in items[:max_keys]:
        if isinstance(item, str):
            page.common_prefixes.append(item)
        else:
            page.contents.append(item)
    if page.is_truncated:
        last = items[max_keys - 1]
        page.next_marker = last if isinstance(last, str) else last.key
    return page


def _common_prefix(key: str, prefix: str, delimiter: str | None) -> str | None:
    if not delimiter:
        return None
    at = key.find(delimiter, len(prefix))
    return None if at < 0 else key[:at + len(delimiter)]
