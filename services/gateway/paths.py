"""Request paths to bucket and key, and object keys to files that stay inside the base path.

Keys are checked after percent-decoding (so ``%2e%2e`` and ``%2F`` are caught), and the file is
resolved with every symlink followed and must still lie under the resolved base path.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from urllib.parse import unquote

from services.gateway.errors import S3Error

__all__ = ["MOUNT", "RESERVED_PREFIX", "S3Path", "check_key", "mount_of", "open_object",
           "resolve_object", "split_request_path"]

MOUNT = "/s3"          # S3 is served here and at the root; no bucket can be named "s3" (3..63)
MAX_KEY_BYTES = 1024
# The agent keeps its own bookkeeping in the data path (upload staging, lock files); it is
# never an object.
RESERVED_PREFIX = ".cnet"


@dataclass(frozen=True)
class S3Path:
    """What a request path under the mount names: the service, a bucket, or an object."""

    bucket: str | None
    key: str | None


def mount_of(raw_path: str) -> str:
    """The prefix S3 paths are under in this request: ``/s3``, or the root (``""``)."""
    return MOUNT if raw_path == MOUNT or raw_path.startswith(MOUNT + "/") else ""


def split_request_path(raw_path: str, mount: str) -> S3Path:
    """Split the raw (still percent-encoded) request path under ``mount`` into bucket and key."""
    rest = raw_path[len(mount):]
    if rest in ("", "/"):
        return S3Path(None, None)
    bucket_raw, _, key_raw = rest[1:].partition("/")
    bucket = _decode(bucket_raw, "bucket name")
    if not key_raw:
        return S3Path(bucket, None)
    return S3Path(bucket, _decode(key_raw, "object key"))


def _decode(raw: str, what: str) -> str:
    try:
        return unquote(raw, errors="strict")
    except UnicodeDecodeError:
        raise S3Error("InvalidArgument", f"The {what} is not valid UTF-8.") from None


def check_key(key: str) -> None:
    """Refuse keys that could name anything but a file below the base path."""
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise S3Error("KeyTooLongError", "Your key is too long.")
    if "\0" in key or key.startswith("/"):
        raise S3Error("InvalidArgument", "The object key is not allowed.")
    for segment in key.split("/"):
        if segment in ("", ".", "..") or segment.startswith(RESERVED_PREFIX):
            raise S3Error("InvalidArgument", "The object key is not allowed.")


def resolve_object(base_real: str, key: str) -> str | None:
    """The real path of ``key`` under ``base_real`` (itself resolved), or None if it leaves it."""
    check_key(key)
    real = os.path.realpath(os.path.join(base_real, key))
    if os.path.commonpath((base_real, real)) != base_real or real == base_real:
        return None
    return real


def open_object(real_path: str) -> tuple[int, os.stat_result] | None:
    """Open a resolved path read-only as a regular file; None if it is gone or not a file.

    O_NOFOLLOW makes a symlink swapped in after resolution fail instead of being followed.
    """
    try:
        fd = os.open(real_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
    except OSError:
        os.close(fd)
        return None
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        return None
    return fd, info
