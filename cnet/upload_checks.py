"""Pure checks on what a data upload names: its text fields, file paths, content types, and the
data key its files are stored under. No I/O; each raises BadRequest naming the bad input."""

from __future__ import annotations

import mimetypes
import re

from .errors import BadRequest
from .workload import parse_submission

__all__ = ["PathSet", "check_field", "content_type", "data_key", "relative_path", "validated_name"]

MAX_PATH_BYTES = 880             # the S3 key "<data_key>/<path>" stays within 1024 bytes
MAX_COMPONENT_BYTES = 255
MAX_FILES = 100_000

_CONTENT_TYPE_RE = re.compile(r"^[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+(\s*;[ -~]*)?$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_DRIVE_RE = re.compile(r"^[A-Za-z]:")
_SLUG_RE = re.compile(r"[^a-z0-9._-]+")


def check_field(name: str, value: str) -> None:
    """Check a text field's value as soon as it has arrived (``type`` or ``name``)."""
    if name == "type" and value != "data":
        raise BadRequest(f"type: a multipart/form-data upload creates a 'data' workload "
                         f"(got {value!r}); other types are submitted as JSON",
                         code="invalid_field")
    if name == "name":
        parse_submission({"name": value, "type": "data"}, ("data",))


def validated_name(fields: dict[str, str], file_count: int) -> str:
    """The whole form has arrived: check nothing required is missing; return the name."""
    if "type" not in fields:
        raise BadRequest("type: required (type=data)", code="invalid_field")
    if "name" not in fields:
        raise BadRequest("name: required, a non-empty string", code="invalid_field")
    if not file_count:
        raise BadRequest("file: at least one file part is required", code="invalid_field")
    return parse_submission({"name": fields["name"], "type": "data"}, ("data",)).name


def relative_path(filename: str) -> str:
    """Check a part's filename as a relative path inside the data key; raise 400 if unsafe."""
    if not filename:
        raise BadRequest("file: empty filename", code="invalid_filename")
    shown = repr(filename)[:200]
    if "\x00" in filename:
        raise BadRequest(f"file {shown}: NUL in the filename", code="invalid_filename")
    if "\\" in filename:
        raise BadRequest(f"file {shown}: backslashes are not allowed; use '/'",
                         code="invalid_filename")
    if _CONTROL_RE.search(filename):
        raise BadRequest(f"file {shown}: control characters in the filename",
                         code="invalid_filename")
    if filename.startswith("/") or _DRIVE_RE.match(filename):
        raise BadRequest(f"file {shown}: absolute paths are not allowed", code="invalid_filename")
    parts = filename.split("/")
    if ".." in parts:
        raise BadRequest(f"file {shown}: '..' is not allowed in a path", code="invalid_filename")
    if any(p in ("", ".") for p in parts):
        raise BadRequest(f"file {shown}: empty or '.' path component", code="invalid_filename")
    if len(filename.encode()) > MAX_PATH_BYTES:
        raise BadRequest(f"file {shown}: path longer than {MAX_PATH_BYTES} bytes",
                         code="invalid_filename")
    if any(len(p.encode()) > MAX_COMPONENT_BYTES for p in parts):
        raise BadRequest(f"file {shown}: a name longer than {MAX_COMPONENT_BYTES} bytes",
                         code="invalid_filename")
    return filename


class PathSet:
    """The paths of one upload so far: each given once, and none both a file and a directory."""

    def __init__(self) -> None:
        self._files: set[str] = set()
        self._dirs: set[str] = set()

    def add(self, filename: str) -> str:
        """Check ``filename`` (``relative_path``) against the others; return the path."""
        path = relative_path(filename)
        if path in self._files or path in self._dirs:
            raise BadRequest(f"file {path!r}: given more than once, or also used as a directory",
                             code="invalid_filename")
        parts = path.split("/")
        ancestors = ["/".join(parts[:i]) for i in range(1, len(parts))]
        clash = next((a for a in ancestors if a in self._files), None)
        if clash is not None:
            raise BadRequest(f"file {path!r}: {clash!r} is a file, not a directory",
                             code="invalid_filename")
        if len(self._files) >= MAX_FILES:
            raise BadRequest(f"at most {MAX_FILES} files per upload", code="too_many_files")
        self._files.add(path)
        self._dirs.update(ancestors)
        return path


def content_type(raw: bytes | None, path: str) -> str:
    """The part's declared Content-Type if it is a specific, well-formed one, else a guess."""
    declared = raw.decode("latin-1").strip() if raw else ""
    if declared and declared.lower() != "application/octet-stream" \
            and len(declared) <= 255 and _CONTENT_TYPE_RE.match(declared):
        return declared
    return mimetypes.guess_type(path)[0] or "application/octet-stream"


def data_key(name: str, workload_id: str) -> str:
    """A readable, unique top-level key: ``<slug of name>-<workload id>``."""
    slug = _SLUG_RE.sub("-", name.lower()).strip("-._")[:48].rstrip("-._")
    return f"{slug}-{workload_id}" if slug else workload_id
