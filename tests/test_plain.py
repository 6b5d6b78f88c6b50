"""check_plain, the guard every submission passes before it is read: the quick pass and the
walk that names the field agree (the walk only runs on what the quick pass doubts)."""

from __future__ import annotations

import math

import pytest

from cnet.errors import BadRequest
from cnet.ops.base import MAX_DEPTH, check_plain


def nest(levels: int) -> object:
    """A leaf inside ``levels`` containers, lists and maps by turns."""
    value: object = "leaf"
    for level in range(levels):
        value = {"k": value} if level % 2 else [value]
    return value


@pytest.mark.parametrize("value,where", [
    ({"name": "a\x00b"}, "w.name"),
    ({"config": {"args": ["ok", "\ud800"]}}, "w.config.args[1]"),
    ({"labels": {"k\x00": "v"}}, "a key"),
    ({"labels": {"\udfff": "v"}}, "a key"),
    ({1: "v"}, "keys must be strings"),
    ({"n": 2**63}, "w.n"),
    ({"n": -2**63 - 1}, "w.n"),
    ({"n": math.inf}, "w.n"),
    ({"n": math.nan}, "w.n"),
    ({"n": b"bytes"}, "w.n"),
    ({"n": {1, 2}}, "w.n"),
    ({"s": "x" * ((1 << 20) + 1)}, "w.s"),
    (nest(MAX_DEPTH + 1), "nested deeper"),
])
def test_what_no_field_may_hold_is_refused_naming_it(value: object, where: str) -> None:
    with pytest.raises(BadRequest) as caught:
        check_plain(value, "w")
    assert where in caught.value.message and caught.value.code == "invalid_field"


@pytest.mark.parametrize("value", [
    None, True, 0, -2**63, 2**63 - 1, 1.5, -0.0, "", "中文 ok", ("a", 1), [], {},
    {"name": "web", "config": {"args": ["-c", "x"], "env": {"K": "v"}}, "labels": {}},
    nest(MAX_DEPTH), nest(MAX_DEPTH - 1),
])
def test_plain_data_passes(value: object) -> None:
    check_plain(value, "w")
