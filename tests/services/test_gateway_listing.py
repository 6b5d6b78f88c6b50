"""ListObjects paging (``services.gateway.listing``) over a real SQLite range source, checked
against a brute-force listing: prefixes, delimiters, markers and page boundaries."""

from __future__ import annotations

import random
import sqlite3

import pytest

from services.gateway.listing import ObjectEntry, list_page, prefix_successor


class CountingSource:
    """An indexed ``key >= lo AND key < hi`` source that counts rows and queries."""

    def __init__(self, keys: list[str]):
        self.conn = sqlite3.connect(":memory:")
        self.conn.execute("CREATE TABLE t (key TEXT PRIMARY KEY)")
        self.conn.executemany("INSERT INTO t VALUES (?)", [(k,) for k in keys])
        self.rows = 0
        self.queries = 0

    def __call__(self, lo: str, hi: str | None):
        self.queries += 1
        sql, params = "SELECT key FROM t WHERE key >= ?", [lo]
        if hi is not None:
            sql, params = sql + " AND key < ?", [lo, hi]
        for (key,) in self.conn.execute(sql + " ORDER BY key", params):
            self.rows += 1
            yield ObjectEntry(key, 0, "e", 0.0)


def brute_force(keys, prefix, delimiter, after):
    """Every entry (key or common prefix) a complete listing shows, in order."""
    entries = []
    for key in sorted(keys, key=lambda k: k.encode()):
        if not key.startswith(prefix):
            continue
        at = key.find(delimiter, len(prefix)) if delimiter else -1
        entry = key if at < 0 else key[:at + len(delimiter)]
        if (after is None or entry > after) and (not entries or entries[-1] != entry):
            entries.append(entry)
    return entries


def walk(source, prefix, delimiter, after, page_size):
    """All entries, page by page, following next_marker as a client follows the token."""
    seen = []
    while True:
        page = list_page(source, prefix=prefix, delimiter=delimiter, after=after,
                         max_keys=page_size)
        entries = sorted([e.key for e in page.contents] + page.common_prefixes)
        assert len(entries) <= page_size
        seen.extend(entries)
        if not page.is_truncated:
            return seen
        assert page.next_marker == entries[-1]
        after = page.next_marker


KEYS = ["a", "a/b", "a/b/c", "a/c", "ab", "b/1", "b/2/x", "b/2/y", "b/3", "c", "c/",
        "c//d", "\u00e9/x", "\u4e2d/\u6587", "z\U0001F600", "z~"]


@pytest.mark.parametrize("prefix", ["", "a", "a/", "b/", "b/2", "c/", "zz", "\u4e2d"])
@pytest.mark.parametrize("delimiter", [None, "/", "b", "//"])
@pytest.mark.parametrize("page_size", [1, 2, 3, 1000])
def test_matches_brute_force(prefix, delimiter, page_size):
    source = CountingSource(KEYS)
    assert walk(source, prefix, delimiter, None, page_size) == brute_force(
        KEYS, prefix, delimiter, None)


@pytest.mark.parametrize("after", ["", "a", "a/", "a/b", "b/2/", "b/2/x", "c/", "zzz"])
def test_start_after(after):
    source = CountingSource(KEYS)
    for delimiter in (None, "/"):
        assert walk(source, "", delimiter, after, 2) == brute_force(KEYS, "", delimiter, after)


def test_random_keys_against_brute_force():
    rng = random.Random(6)
    alphabet = ["a", "b", "/", "-", "\u00e9"]
    keys = sorted({"".join(rng.choice(alphabet) for _ in range(rng.randint(1, 7)))
                   for _ in range(400)})
    source = CountingSource(keys)
    for _ in range(60):
        prefix = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 2)))
        delimiter = rng.choice([None, "/", "-", "a/"])
        after = rng.choice([None, *keys[::37]])
        page_size = rng.choice([1, 5, 50])
        assert walk(source, prefix, delimiter, after, page_size) == brute_force(
            keys, prefix, delimiter, after)


def test_common_prefix_is_skipped_with_one_jump():
    keys = [f"big/{i:06d}" for i in range(20_000)] + ["small/1", "small/2", "top"]
    source = CountingSource(keys)
    page = list_page(source, delimiter="/", max_keys=1000)
    assert page.common_prefixes == ["big/", "small/"]
    assert [e.key for e in page.contents] == ["top"]
    assert source.rows <= 5         # not 20,000: each prefix costs one row and one range query


def test_max_keys_zero_and_truncation_marker():
    source = CountingSource(KEYS)
    assert list_page(source, max_keys=0).contents == []
    page = list_page(source, delimiter="/", max_keys=2)
    assert (page.is_truncated, page.next_marker) == (True, "a/")


def test_prefix_successor():
    assert prefix_successor("a/") == "a0"
    assert prefix_successor("abc") == "abd"
    assert prefix_successor("a\U0010FFFF") == "b"
    assert prefix_successor("\U0010FFFF") is None
    assert prefix_successor("x\ud7ff") == "x\ue000"
    for prefix in ("a/", "\u00e9", "z\U0001F600"):
        successor = prefix_successor(prefix)
        assert (prefix + "\U0010FFFF" * 3).encode() < successor.encode()
        assert prefix.encode() < successor.encode()
