"""The filesystem side of the standalone index: an incremental walk of the base path and MD5s.

A directory is listed again only when its mtime changed since the previous walk (creating,
removing or renaming an entry changes it); an unchanged directory costs one ``stat``. These
functions do blocking I/O and run in a worker thread; they never touch the index database.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field

from services.gateway.paths import RESERVED_PREFIX

__all__ = ["DirState", "FileStat", "ScanResult", "md5_file", "object_key", "scan_tree"]

HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class FileStat:
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class DirState:
    """What one walk learnt of a directory (relative path, "" for the base)."""

    mtime_ns: int
    subdirs: tuple[str, ...]


@dataclass
class ScanResult:
    dirs: dict[str, DirState] = field(default_factory=dict)
    changed: dict[str, dict[str, FileStat]] = field(default_factory=dict)   # dir -> name -> stat
    removed: list[str] = field(default_factory=list)                        # dirs now gone


def object_key(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:      # undecodable bytes (surrogateescape) cannot be an S3 key
        return False
    return True


def _inside(base_real: str, path: str) -> bool:
    return os.path.commonpath((base_real, path)) == base_real


def _list_dir(base_real: str, path: str) -> tuple[list[str], dict[str, FileStat]]:
    subdirs: list[str] = []
    files: dict[str, FileStat] = {}
    with os.scandir(path) as entries:
        for entry in entries:
            if not _is_utf8(entry.name) or entry.name.startswith(RESERVED_PREFIX):
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    subdirs.append(entry.name)
                    continue
                if entry.is_symlink():
                    # A file symlink counts only if it resolves to a regular file inside the base.
                    target = os.path.realpath(entry.path)
                    if not _inside(base_real, target):
                        continue
                    info = os.stat(target)
                elif entry.is_file(follow_symlinks=False):
                    info = entry.stat(follow_symlinks=False)
                else:
                    continue
            except OSError:
                continue
            if stat.S_ISREG(info.st_mode):
                files[entry.name] = FileStat(info.st_size, info.st_mtime_ns)
    return sorted(subdirs), files


def scan_tree(base_real: str, previous: Mapping[str, DirState]) -> ScanResult:
    """Walk ``base_real``; list only directories that are new or whose mtime changed."""
    result = ScanResult()
    pending = [""]
    while pending:
        rel = pending.pop()
        path = os.path.join(base_real, rel) if rel else base_real
        try:
            mtime_ns = os.stat(path, follow_symlinks=False).st_mtime_ns
        except OSError:
            continue
        known = previous.get(rel)
        if known is not None and known.mtime_ns == mtime_ns:
            state = known
        else:
            try:
                subdirs, files = _list_dir(base_real, path)
            except OSError:
                continue
            state = DirState(mtime_ns, tuple(subdirs))
            result.changed[rel] = files
        result.dirs[rel] = state
        pending.extend(object_key(rel, name) for name in state.subdirs)
    result.removed = [rel for rel in previous if rel not in result.dirs]
    return result


def md5_file(path: str) -> str | None:
    """Hex MD5 of a file's content; None if it cannot be read."""
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with open(path, "rb", buffering=0) as handle:
            while chunk := handle.read(HASH_CHUNK):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()
