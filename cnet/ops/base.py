"""What every operation is: a typed request parsed from plain arguments, run against a Node.

An operation is a frozen dataclass. ``parse(args)`` builds it from the plain dict both front
doors hand over (REST from the path, query and body; the bus from a request's ``args``) and
raises the one :class:`~cnet.errors.CnetError` for each kind of bad input; ``args()`` turns it
back into that dict, which is what :mod:`cnet.client` sends. ``run(node, caller)`` does it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Self

from bus import token_matches

from ..errors import BadRequest, NotFound, Unauthorized
from ..workload import ID_RE

if TYPE_CHECKING:
    from ..node import Node

__all__ = ["Caller", "Operation", "check_plain", "check_token", "whole_number", "workload_id"]

MAX_DEPTH = 32            # nesting of objects and lists in a request
MAX_STRING = 1 << 20      # characters in one string
INT_RANGE = 1 << 63       # integers fit in 64 bits (msgpack, SQLite)


@dataclass(frozen=True)
class Caller:
    """Who asks: a client (``node_id`` None), or a neighbour with the hops and nodes visited."""

    node_id: str | None = None
    hops: int = 0
    visited: tuple[str, ...] = ()


class Operation:
    """One operation of an agent. Subclasses are frozen dataclasses of their fields."""

    name: ClassVar[str]
    public: ClassVar[bool] = False        # answered without the API token (health)
    from_nodes: ClassVar[bool] = False    # only a neighbour may ask (delegate)

    @classmethod
    def parse(cls, args: dict[str, Any]) -> Self:
        """The typed request, or BadRequest/NotFound naming what is wrong. Default: no fields."""
        return cls()

    def args(self) -> dict[str, Any]:
        """The plain arguments that ``parse`` reads back into this request."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    async def run(self, node: "Node", caller: Caller) -> dict[str, Any]:
        raise NotImplementedError


def check_plain(value: Any, where: str = "body", depth: int = 0) -> None:
    """Refuse what no field may hold, before anything reads or stores it: strings that are not
    valid Unicode (lone surrogates) or hold NUL, numbers out of range or not finite, nesting
    deeper than ``MAX_DEPTH``. (A quick pass first; only what it doubts is walked again with
    the field names the error gives.)"""
    if not _plain(value, depth):
        _explain_plain(value, where, depth)


def _plain(value: Any, depth: int) -> bool:
    """Whether ``value`` passes ``check_plain``, for the built-in types JSON and msgpack make
    (anything else is left to the walk that names it)."""
    if depth > MAX_DEPTH:
        return False
    kind = type(value)
    if kind is str:
        return len(value) <= MAX_STRING and "\x00" not in value and (
            value.isascii() or _encodes(value))
    if kind is dict:
        return depth < MAX_DEPTH and all(
            type(k) is str and len(k) <= MAX_STRING and "\x00" not in k
            and (k.isascii() or _encodes(k)) and _plain(v, depth + 1) for k, v in value.items())
    if kind is list:
        return depth < MAX_DEPTH and all(_plain(v, depth + 1) for v in value)
    if kind is int:
        return -INT_RANGE <= value < INT_RANGE
    if kind is float:
        return math.isfinite(value)
    return value is None or kind is bool


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _explain_plain(value: Any, where: str, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise BadRequest(f"{where}: nested deeper than {MAX_DEPTH} levels", code="invalid_field")
    if isinstance(value, str):
        _check_string(value, where)
    elif isinstance(value, bool) or value is None:
        return
    elif isinstance(value, int):
        if not -INT_RANGE <= value < INT_RANGE:
            raise BadRequest(f"{where}: integer out of range", code="invalid_field")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise BadRequest(f"{where}: numbers must be finite", code="invalid_field")
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise BadRequest(f"{where}: keys must be strings", code="invalid_field")
            _check_string(key, f"{where}: a key")
            _explain_plain(item, f"{where}.{key[:40]}", depth + 1)
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _explain_plain(item, f"{where}[{index}]", depth + 1)
    else:
        raise BadRequest(f"{where}: not a JSON value", code="invalid_field")


def _check_string(text: str, where: str) -> None:
    if len(text) > MAX_STRING:
        raise BadRequest(f"{where}: strings are at most {MAX_STRING} characters", code="invalid_field")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(f"{where}: not valid Unicode (a lone surrogate?)",
                         code="invalid_field") from None
    if "\x00" in text:
        raise BadRequest(f"{where}: NUL characters are not allowed", code="invalid_field")


def check_token(expected: str | None, presented: str | None) -> None:
    """Let a client in only with the API token (when one is configured): both doors ask this."""
    if not token_matches(expected, presented):
        raise Unauthorized("missing or wrong token (REST: an Authorization: Bearer <token> "
                           "header; bus: the request's token)")


def workload_id(args: dict[str, Any]) -> str:
    """The ``id`` argument: a workload id, or NotFound (no workload can have another form)."""
    value = args.get("id")
    if value is None:
        raise BadRequest("id: required", code="invalid_argument")
    if not isinstance(value, str) or not ID_RE.match(value):
        raise NotFound(f"workload {str(value)[:80]!r} not found")
    return value


def whole_number(args: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    """An integer argument within ``low..high``; a query string's digits count as one."""
    raw = args.get(name)
    if raw is None:
        return default
    value = raw
    if isinstance(raw, str):
        try:
            value = int(raw.strip(), 10)
        except ValueError:
            value = None
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadRequest(f"{name}: must be a whole number", code="invalid_argument")
    if not low <= value <= high:
        raise BadRequest(f"{name}: must be between {low} and {high}", code="invalid_argument")
    return value
