"""The model named in a multipart upload (audio transcription, image edits), read from the body's head.

Envoy passes authz only the first bytes of an upload (``allow_partial_message`` on those routes), so
the Check reads what it needs and never buffers a 25 MB recording. The OpenAI SDKs send their form
fields before the file, so ``model`` is in that head; a form whose ``model`` field is not there (sent
after the file, or in no part at all) has no model the gateway can check, and is refused.

Invariants: the parser is python-multipart's streaming one, bounded by its own header limits; a field
named ``model`` twice is ambiguous and refused, like a repeated JSON key; a value longer than any model
name, or not UTF-8, is no model. Whatever parsers disagree on is refused rather than read one way: a
boundary given twice, a part with two Content-Disposition headers or two names (or RFC 2231's ``name*``,
which RFC 7578 forbids and some parsers still honour), a preamble before the first boundary.

>>> body = b'--b\\r\\nContent-Disposition: form-data; name="model"\\r\\n\\r\\nwhisper-1\\r\\n--b\\r\\n'
>>> model_from_form(body, 'multipart/form-data; boundary=b')
('whisper-1', None)
"""

from __future__ import annotations

import logging
import re

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

#: No model name is longer (as in :data:`authz.routes.MAX_NAME_CHARS`).
_MAX_VALUE = 256

# The parser logs a warning for every malformed form it meets: a client could turn each request into a log
# line. The refusal is the gateway's record of it (the request's audit record), not the parser's log.
logging.getLogger("python_multipart.multipart").setLevel(logging.ERROR)

NOT_MULTIPART = "not_multipart"
AMBIGUOUS = "ambiguous"
MISSING = "missing"


class _Reader:
    """Collects the ``model`` part's value while the parser walks the head."""

    def __init__(self) -> None:
        self.header_field = bytearray()
        self.header_value = bytearray()
        self.in_model = False
        self.value = bytearray()
        self.models = 0
        self.done_model: bytes | None = None
        self.too_long = False
        self.dispositions = 0
        self.ambiguous = False

    def on_part_begin(self) -> None:
        self.in_model = False
        self.dispositions = 0

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        if bytes(self.header_field).lower() == b"content-disposition":
            self.dispositions += 1
            value = bytes(self.header_value)
            names = _parameter_names(value.decode("latin-1"), "name")
            if self.dispositions > 1 or names not in ([], ["name"]):
                # Two parsers could each read a different name here (or none): the gateway reads none.
                self.ambiguous = True
            if _options(value).get(b"name") == b"model":
                self.in_model = True
                self.models += 1
                self.value = bytearray()
        self.header_field = bytearray()
        self.header_value = bytearray()

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.in_model:
            self.value += data[start:end]
            if len(self.value) > _MAX_VALUE * 4:
                self.too_long = True

    def on_part_end(self) -> None:
        if self.in_model:
            self.done_model = bytes(self.value)
            self.in_model = False


#: One ``; name=value`` parameter of a header value, a quoted value taken whole (``;`` may be inside it).
_PARAMETER = re.compile(r';\s*([^\s=;]+)\s*=\s*(?:"(?:[^"\\]|\\.)*"|[^;]*)')


def _parameter_names(value: str, wanted: str) -> list[str]:
    """Each parameter of a header value named ``wanted`` (any case), or ``wanted*…`` (RFC 2231), repeats kept."""
    names = (found.group(1).lower() for found in _PARAMETER.finditer(value))
    return [name for name in names if name == wanted or name.startswith(wanted + "*")]


def _options(value: bytes | str) -> dict[bytes, bytes]:
    # Parameter names are case-insensitive (RFC 2045); python-multipart keeps them as sent.
    return {name.lower(): found for name, found in parse_options_header(value)[1].items()}


def _boundary(content_type: str) -> bytes | None:
    """The boundary of a ``multipart/form-data`` content type; None when there is none, or more than one
    (from the client, or from Envoy joining two Content-Type headers with a comma): python-multipart
    takes the last, Go's parser refuses both, others take the first."""
    if parse_options_header(content_type)[0] != b"multipart/form-data":
        return None
    if _parameter_names(content_type, "boundary") != ["boundary"]:
        return None
    return _options(content_type).get(b"boundary") or None


def model_from_form(head: bytes, content_type: str) -> tuple[str | None, str | None]:
    """``(model, None)``, or ``(None, why)``: :data:`NOT_MULTIPART`, :data:`AMBIGUOUS` or :data:`MISSING`."""
    boundary = _boundary(content_type)
    if boundary is None:
        return None, NOT_MULTIPART
    reader = _Reader()
    parser = MultipartParser(boundary, {
        "on_part_begin": reader.on_part_begin, "on_header_field": reader.on_header_field,
        "on_header_value": reader.on_header_value, "on_header_end": reader.on_header_end,
        "on_part_data": reader.on_part_data, "on_part_end": reader.on_part_end})
    try:
        parser.write(head)
    except MultipartParseError:
        # The head is cut anywhere in a part; a parse error past a complete model part still found it,
        # but one before it means the body is no form.
        if reader.done_model is None:
            return None, NOT_MULTIPART
    if reader.models > 1 or reader.ambiguous:
        return None, AMBIGUOUS
    if reader.done_model is None or reader.too_long:
        return None, MISSING
    try:
        model = reader.done_model.decode("utf-8")
    except UnicodeDecodeError:
        return None, MISSING
    if not model or len(model) > _MAX_VALUE:
        return None, MISSING
    return model, None
