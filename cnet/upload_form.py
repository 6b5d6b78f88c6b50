"""The multipart/form-data form of a data upload: its boundary, each part's headers, and which
parts it may have. python-multipart parses; this adds the stricter checks we want on top.

python-multipart is imported by the first upload (``_multipart``), not with the agent: an agent
that is never sent data keeps its ~0.5 MB."""

from __future__ import annotations

import re
from typing import Protocol

from .errors import BadRequest
from .upload_checks import check_field

__all__ = ["FileSink", "FormReader", "boundary", "is_parser_error", "malformed"]

TEXT_FIELDS = ("type", "name")
FILE_FIELDS = ("file", "files")
MAX_FIELD_BYTES = 4096

_BOUNDARY_RE = re.compile(r"^[0-9A-Za-z'()+_,./:=?-]([0-9A-Za-z'()+_,./:=? -]{0,68}[0-9A-Za-z'()+_,./:=?-])?$")
_LONE_BACKSLASH_RE = re.compile(rb'\\(?!")')   # any backslash but the one escaping a quote


def malformed(message: str) -> BadRequest:
    return BadRequest(message, code="malformed_multipart")


def boundary(content_type: str) -> bytes:
    """The boundary of a ``multipart/form-data`` Content-Type; raise 400 if there is no valid one."""
    try:
        raw = content_type.encode("latin-1")
    except UnicodeEncodeError:
        raise malformed(f"the Content-Type is not Latin-1 text: {content_type!r}") from None
    kind, params = _parse_header(raw)
    if kind != b"multipart/form-data":
        raise malformed(f"expected Content-Type multipart/form-data, "
                        f"got {kind.decode('latin-1')!r}")
    value = params.get(b"boundary")
    if not value:
        raise malformed("the Content-Type has no boundary parameter")
    if not _BOUNDARY_RE.match(value.decode("latin-1")):
        raise malformed("the multipart boundary is not valid (1-70 characters, RFC 2046)")
    return value


def _multipart():
    import python_multipart.multipart  # noqa: PLC0415 -- lazy: on the first upload
    return python_multipart.multipart


def is_parser_error(exc: BaseException) -> bool:
    """Whether ``exc`` is python-multipart's refusal of a malformed body."""
    import python_multipart.exceptions  # noqa: PLC0415 -- lazy: loaded by the upload's parser
    return isinstance(exc, python_multipart.exceptions.FormParserError)


def _parse_header(raw: bytes) -> tuple[bytes, dict[bytes, bytes]]:
    """python-multipart's parser, refusing the unterminated quote it would take as text."""
    if (raw.count(b'"') - raw.count(b'\\"')) % 2:
        raise malformed(f"unterminated quoted string in {raw.decode('latin-1')!r}")
    return _multipart().parse_options_header(raw)


def _disposition(raw: bytes | None) -> tuple[str, str | None]:
    """A part's field name and filename (None for a text field), from its Content-Disposition."""
    if raw is None:
        raise malformed("a part has no Content-Disposition header")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise malformed("a part's Content-Disposition is not valid UTF-8") from None
    kind, params = _parse_header(raw)
    name = params.get(b"name", b"").decode("utf-8")
    if kind != b"form-data" or not name:
        raise malformed("each part needs Content-Disposition: form-data; name=\"...\"")
    filename = params.get(b"filename")
    if filename is None:
        return name, None
    filename = filename.decode("utf-8")
    if "\\" not in filename and _LONE_BACKSLASH_RE.search(raw):
        # python-multipart keeps only the last part of an IE-style "C:\dir\file" path; we refuse
        # the backslash as sent (a kept one is refused by relative_path).
        raise BadRequest(f"file {repr(text)[:200]}: backslashes are not allowed; use '/'",
                         code="invalid_filename")
    return name, filename


class FileSink(Protocol):
    """Where the file parts of a form go, as they arrive."""

    def file_begin(self, filename: str, content_type: bytes | None) -> None: ...
    def file_data(self, data: bytes, start: int, end: int) -> None: ...
    def file_end(self) -> None: ...


class FormReader:
    """Feeds a body to python-multipart: text fields are kept in ``fields``, files go to ``sink``.

    Parser callbacks are synchronous; whatever they raise rejects the upload.
    """

    def __init__(self, boundary: bytes, sink: FileSink):
        self.sink = sink
        self.fields: dict[str, str] = {}
        self.ended = False               # the closing boundary has been parsed
        self._parser = _multipart().MultipartParser(boundary, callbacks={
            "on_part_begin": self._on_part_begin,
            "on_header_field": self._on_header_field,
            "on_header_value": self._on_header_value,
            "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished,
            "on_part_data": self._on_part_data,
            "on_part_end": self._on_part_end,
            "on_end": self._on_end,
        })
        # The part being parsed.
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._headers: dict[str, bytes] = {}
        self._in_file = False
        self._field: tuple[str, bytearray] | None = None

    def write(self, chunk: bytes) -> None:
        self._parser.write(chunk)

    def _on_part_begin(self) -> None:
        self._headers = {}
        self._header_name.clear()
        self._header_value.clear()

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _on_header_end(self) -> None:
        name = self._header_name.decode("latin-1").strip().lower()
        self._headers[name] = bytes(self._header_value).strip()
        self._header_name.clear()
        self._header_value.clear()

    def _on_headers_finished(self) -> None:
        name, filename = _disposition(self._headers.get("content-disposition"))
        if filename is not None:
            if name not in FILE_FIELDS:
                raise BadRequest(f"{name}: unexpected file part; files go in 'file' parts",
                                 code="invalid_field")
            self.sink.file_begin(filename, self._headers.get("content-type"))
            self._in_file = True
            return
        if name in FILE_FIELDS:
            raise BadRequest(f"{name}: must be a file (a part with a filename)",
                             code="invalid_field")
        if name not in TEXT_FIELDS:
            raise BadRequest(f"unknown field {name!r}; expected {', '.join(TEXT_FIELDS)} and "
                             "'file' parts", code="invalid_field")
        if name in self.fields:
            raise BadRequest(f"{name}: given more than once", code="invalid_field")
        self._field = (name, bytearray())

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            self.sink.file_data(data, start, end)
        elif self._field is not None:
            value = self._field[1]
            value += data[start:end]
            if len(value) > MAX_FIELD_BYTES:
                raise BadRequest(f"{self._field[0]}: longer than {MAX_FIELD_BYTES} bytes",
                                 code="invalid_field")

    def _on_part_end(self) -> None:
        if self._in_file:
            self._in_file = False
            self.sink.file_end()
        elif self._field is not None:
            name, raw = self._field
            self._field = None
            try:
                value = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise BadRequest(f"{name}: not valid UTF-8", code="invalid_field") from None
            self.fields[name] = value
            check_field(name, value)

    def _on_end(self) -> None:
        self.ended = True
