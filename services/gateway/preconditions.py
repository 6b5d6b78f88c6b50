"""HTTP conditional requests (If-Match, If-None-Match, If-(Un)Modified-Since, If-Range) and the
single byte range of a ``Range`` header, as S3 evaluates them for GET and HEAD."""

from __future__ import annotations

import email.utils
import re
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "ByteRange",
    "RangeNotSatisfiable",
    "evaluate_conditions",
    "http_date",
    "parse_http_date",
    "parse_range",
    "range_applies",
]

_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class ByteRange:
    start: int
    end: int          # inclusive

    @property
    def length(self) -> int:
        return self.end - self.start + 1


class RangeNotSatisfiable(Exception):
    """The Range header is well formed but selects nothing of the object (416)."""


def http_date(timestamp: float) -> str:
    return email.utils.formatdate(timestamp, usegmt=True)


def parse_http_date(value: str | None) -> float | None:
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return parsed.timestamp() if parsed.tzinfo else None


def _etag_matches(header: str, etag: str) -> bool:
    """Whether a comma-separated list of entity tags (or ``*``) names ``etag`` (unquoted)."""
    for candidate in header.split(","):
        candidate = candidate.strip()
        if candidate == "*":
            return True
        candidate = candidate.removeprefix("W/")
        if candidate.strip('"') == etag:
            return True
    return False


def evaluate_conditions(headers: Mapping[str, str], etag: str, last_modified: float) -> int | None:
    """The status a conditional GET/HEAD ends with before any body: 412, 304, or None to go on.

    As in S3 and RFC 9110: If-Match overrides If-Unmodified-Since, If-None-Match overrides
    If-Modified-Since; dates compare at whole seconds, as Last-Modified is sent.
    """
    modified = int(last_modified)
    if_match = headers.get("If-Match")
    if if_match is not None:
        if not _etag_matches(if_match, etag):
            return 412
    else:
        since = parse_http_date(headers.get("If-Unmodified-Since"))
        if since is not None and modified > since:
            return 412
    if_none_match = headers.get("If-None-Match")
    if if_none_match is not None:
        if _etag_matches(if_none_match, etag):
            return 304
    else:
        since = parse_http_date(headers.get("If-Modified-Since"))
        if since is not None and modified <= since:
            return 304
    return None


def range_applies(headers: Mapping[str, str], etag: str, last_modified: float) -> bool:
    """If-Range: the Range header counts only while the validator still matches."""
    validator = headers.get("If-Range")
    if validator is None:
        return True
    validator = validator.strip()
    if validator.startswith(('"', "W/")):
        return not validator.startswith("W/") and validator.strip('"') == etag
    since = parse_http_date(validator)
    return since is not None and int(last_modified) == int(since)


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The one range a ``Range`` header selects, or None to send the whole object.

    Headers that are malformed or ask for several ranges are ignored (the whole object is sent),
    as S3 does; a well-formed range past the end raises RangeNotSatisfiable.
    """
    if not header:
        return None
    match = _RANGE.match(header)
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:                                   # suffix: the last N bytes
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable
        return ByteRange(max(0, size - suffix), size - 1)
    start = int(first)
    if last and int(last) < start:
        return None
    if start >= size:
        raise RangeNotSatisfiable
    end = int(last) if last else size - 1
    return ByteRange(start, min(end, size - 1))
