"""Data workloads: uploaded files kept under the node's data path, and that directory's layout.

A data workload is complete on arrival (``cnet/uploads.py`` streams it in) and holds its
storage until it is deleted. On disk::

    <data_path>/<data_key>/<relative path>       the stored files (what the S3 gateway serves)
    <data_path>/.cnet-staging/<workload id>/     an upload in progress (or one cut short)
    <data_path>/.cnet-staging/deleted-<id>/      a deleted workload's files, being removed

Only whole uploads ever appear under ``<data_key>``; ``DataLayout.sweep`` settles whatever a
crash left in the staging area when the agent starts. A delete is marked ``deleting`` in the
store before its files move (see ``Manager.delete``), so a deletion cut short is always finished,
never rolled back.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path

from ..errors import BadRequest
from ..workload import Workload
from .base import Executor

log = logging.getLogger(__name__)

STAGING_DIR = ".cnet-staging"
TARGET_MARKER = "data_key"     # inside an upload's staging dir: the final dir it is moving to
_DELETED = "deleted-"
_DATA_KEY_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")

MULTIPART_ONLY = ("data workloads are created by uploading files as multipart/form-data, e.g. "
                  "curl -F type=data -F name=NAME -F file=@PATH http://HOST:PORT/api/workloads")


class DataLayout:
    """Where stored data, uploads in progress and deleted data live under the data path."""

    def __init__(self, data_path: Path):
        self.root = data_path
        self.staging = data_path / STAGING_DIR

    def final_dir(self, data_key: str) -> Path:
        if not _DATA_KEY_RE.match(data_key):
            raise ValueError(f"not a data key: {data_key!r}")
        return self.root / data_key

    def upload_dir(self, workload_id: str) -> Path:
        return self.staging / workload_id

    def deleted_dir(self, workload_id: str) -> Path:
        return self.staging / f"{_DELETED}{workload_id}"

    def sweep(self, committed: Mapping[str, str]) -> None:
        """Settle what a crash left in the staging area (run once at start, before serving).

        ``committed`` maps the id of every recorded data workload to its data key. An upload
        that was not recorded is removed, with its final dir if it had already been moved
        there; everything else is removed, a deletion cut short included (it may be half
        done: it is never moved back; its record, ``deleting``, is finished by the Manager).
        """
        if not self.staging.is_dir():
            return
        committed = {wid: key for wid, key in committed.items() if _DATA_KEY_RE.match(key)}
        committed_keys = set(committed.values())
        for entry in sorted(self.staging.iterdir()):
            name = entry.name
            if name.startswith(_DELETED):
                log.info("removing what the cut-short delete of %s left", name[len(_DELETED):])
            elif name not in committed:
                target = _read_marker(entry / TARGET_MARKER)
                if target is not None and target not in committed_keys:
                    final = self.final_dir(target)
                    if final.is_dir():
                        shutil.rmtree(final)
                log.info("removing the unfinished upload %s", name)
            remove_path(entry)
        fsync_dir(self.root)


class DataExecutor(Executor):
    """``type: data``: stored files. Stop is a no-op; delete removes the files."""

    type = "data"
    holds_resources_when_ended = True   # the files use storage until the workload is deleted

    def __init__(self, host):
        super().__init__(host)
        self.layout = DataLayout(host.config.data_path)

    def validate(self, config: dict) -> dict:
        raise BadRequest(MULTIPART_ONLY, code="multipart_required")

    async def start(self, workload: Workload) -> dict:
        raise BadRequest(MULTIPART_ONLY, code="multipart_required")

    async def stop(self, workload: Workload, grace: float) -> None:
        return None  # complete on arrival: nothing runs

    def adopt(self, workload: Workload) -> str | None:
        return None  # nothing to watch

    async def remove(self, workload: Workload) -> None:
        data_key = workload.runtime.get("data_key")
        if not isinstance(data_key, str) or not _DATA_KEY_RE.match(data_key):
            log.warning("data workload %s has no valid data key; no files to remove", workload.id)
            return
        await asyncio.to_thread(self._remove_files, self.layout.final_dir(data_key),
                                self.layout.deleted_dir(workload.id))

    def _remove_files(self, final: Path, deleted: Path) -> None:
        # One rename takes the whole tree out of sight; then it is removed at leisure (a crash
        # in between is settled by DataLayout.sweep and the delete's retry at the next start).
        if final.exists():
            deleted.parent.mkdir(parents=True, exist_ok=True)
            remove_path(deleted)   # what an earlier, cut-short attempt left
            os.rename(final, deleted)
            fsync_dir(self.layout.root)
        remove_path(deleted)


def _read_marker(path: Path) -> str | None:
    try:
        text = path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text if _DATA_KEY_RE.match(text) else None


def remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def fsync_dir(path: Path) -> None:
    """Make renames and creations inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
