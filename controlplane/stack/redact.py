"""Every line a child of the stack writes reaches its log file through here, with credentials removed.

Envoy has no redaction: at ``debug`` and ``trace`` it logs every request header, the client's token
included (envoyproxy/envoy#9652). So no child writes a log file itself. Each one's stdout and stderr
are one pipe, read by a thread of the runner (:meth:`LogFile.pump`) that writes each line to the
child's log file with these replaced by ``[REDACTED]``:

* every value the runner knows to be secret (provider keys, the ingest token, the admin token, the
  token hash key, the session and audit signing secrets, a database password);
* every Keyward credential (``kw_pat_…``, ``kw_api_…``, ``kw_scim_…``, ``kw_sess_…``, ``kw_cli_…``,
  ``kw_admin_…``, ``kw_link_…``), whoever sent it;
* what clients send that only looks like a credential: a bearer token, an ``sk-…`` provider key, and
  the value of any credential header (``authorization``, ``x-api-key``, ``cookie``…) as Envoy prints
  headers (``'x-api-key', '…'``) or as HTTP and JSON write them (``x-api-key: …``, ``"cookie": "…"``).

Over-redacting a harmless word is the accepted cost. A line longer than :data:`MAX_LINE` is dropped,
not split: a split could cut a secret in two halves that no pattern recognises.

A JSON line (every child logs in Keyward's schema, :mod:`authz.logs`; Envoy through ``--log-format``)
stays valid JSON: it is parsed, each string in it (keys too) is redacted as the text it decodes to
(Envoy's multi-line dumps are one JSON string, so a header name and its value on two lines are still
seen together), and the object is written again, only when something was replaced. A line that is not
JSON, or does not parse, is redacted as text. A child whose output is not in the schema can be given a
``shape`` (:class:`LogFile`) that rewrites each of its lines first (the stack's Postgres).

Log files are created 0600 in a 0700 directory (:func:`private_dir`); a file left by an older run
with wider permissions is narrowed when it is opened again.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO

__all__ = ["MAX_LINE", "REDACTED", "LogFile", "Redactor", "private_dir"]

REDACTED = b"[REDACTED]"
#: The longest line written; a longer one is replaced by a note saying it was dropped.
MAX_LINE = 1 << 20
_CHUNK = 1 << 16

#: Keyward's own credential kinds (controlplane/services/credentials.py). Generated tokens are base62;
#: a bootstrap admin token can be any URL-safe text, hence ``_`` and ``-``.
KEYWARD_CREDENTIAL = re.compile(rb"kw_(?:pat|api|scim|sess|cli|admin|link)_[A-Za-z0-9_\-]+")
_CREDENTIAL_HEADERS = rb"authorization|proxy-authorization|x-api-key|api-key|x-goog-api-key|cookie|set-cookie"
#: ``'x-api-key', 'value'`` (Envoy's header dumps), ``x-api-key: value``, ``"x-api-key": "value"``.
_HEADER_VALUE = re.compile(
    rb"(?i)(?<![\w-])(" + _CREDENTIAL_HEADERS + rb")(['\"]?[ \t]*[:=,][ \t]*['\"]?)(?!\[REDACTED\])[^'\"\s][^'\"\r\n]*"
)
#: Envoy's HTTP/1 codec at trace: ``completed header: key=X-Api-Key value=…`` (to the end of the line).
_CODEC_HEADER = re.compile(rb"(?i)(\bkey=(?:" + _CREDENTIAL_HEADERS + rb") value=)(?!\[REDACTED\]$)[^\r\n]+")
#: Envoy's protobuf dumps (the CheckRequest at trace) put a header's name and value on two lines.
_PROTO_KEY = re.compile(rb'(?i)^\s*key: "(?:' + _CREDENTIAL_HEADERS + rb')"\s*$')
_PROTO_VALUE = re.compile(rb'^(\s*(?:raw_)?value: ).*?(\s*)$')
_BEARER = re.compile(rb"(?i)(\bbearer[ \t]+)(?!\[REDACTED\])[^\s'\",;]+")
#: OpenAI (``sk-``, ``sk-proj-``) and Anthropic (``sk-ant-``) key shapes.
_PROVIDER_KEY = re.compile(rb"(?<![\w-])sk-[A-Za-z0-9_\-]{8,}")
#: What any rule above needs to find in a line (JSON escapes leave these ASCII words as they are): a line
#: with none of them, and no known secret, is left as it is without being parsed.
_TRIGGER = re.compile(rb"(?i)kw_|bearer|sk-|" + _CREDENTIAL_HEADERS)


class Redactor:
    """Replaces every secret in a chunk of log output with ``[REDACTED]``.

    >>> Redactor(["s3cr3t-value"])(b"key=s3cr3t-value token=kw_pat_abc123")
    b'key=[REDACTED] token=[REDACTED]'
    """

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        # Each value as is and as a JSON string writes it (a password with a quote or a backslash).
        known = {form for s in secrets if s for form in (s, json.dumps(s)[1:-1])}
        values = sorted({s.encode() for s in known}, key=len, reverse=True)
        self._secrets = re.compile(b"|".join(re.escape(v) for v in values)) if values else None

    def __call__(self, data: bytes) -> bytes:
        if data.lstrip()[:1] == b"{":
            redacted = self._json(data)
            if redacted is not None:
                return redacted
        return self._text(data)

    def _text(self, data: bytes) -> bytes:
        if self._secrets is not None:
            data = self._secrets.sub(REDACTED, data)
        data = KEYWARD_CREDENTIAL.sub(REDACTED, data)
        data = _CODEC_HEADER.sub(rb"\1" + REDACTED, data)
        data = _HEADER_VALUE.sub(rb"\1\2" + REDACTED, data)
        data = _BEARER.sub(rb"\1" + REDACTED, data)
        return _PROVIDER_KEY.sub(REDACTED, data)

    def text(self, value: str) -> str:
        return self(value.encode()).decode("utf-8", "replace")

    def lines(self, lines: Iterable[bytes]) -> Iterator[bytes]:
        """Redact a stream of lines, including values whose header name is on the line before."""
        credential_key = False
        for line in lines:
            if not credential_key and line.lstrip()[:1] == b"{" and (redacted := self._json(line)) is not None:
                yield redacted
                continue
            if credential_key:
                line = _PROTO_VALUE.sub(rb'\1"' + REDACTED + rb'"\2', line)
            credential_key = bool(_PROTO_KEY.match(line))
            yield self._text(line)

    def _json(self, line: bytes) -> bytes | None:
        """A JSON object line with each string in it redacted; None when ``line`` is not one."""
        if not _TRIGGER.search(line) and (self._secrets is None or not self._secrets.search(line)):
            return line if line.rstrip()[-1:] == b"}" else None
        try:
            parsed = json.loads(line.decode("utf-8", "replace"))
        except ValueError:
            return None
        if not isinstance(parsed, dict):
            return None
        changed = False

        def walk(value: object) -> object:
            nonlocal changed
            if isinstance(value, str):
                clean = self._string(value)
                changed = changed or clean != value
                return clean
            if isinstance(value, dict):
                return {walk(k): walk(v) for k, v in value.items()}
            if isinstance(value, list):
                return [walk(v) for v in value]
            return value

        clean = walk(parsed)
        if not changed:
            return line
        ending = line[len(line.rstrip(b"\r\n")) :]
        try:
            return json.dumps(clean, ensure_ascii=False).encode() + ending
        except UnicodeEncodeError:  # a lone surrogate (a \ud800 escape)
            return json.dumps(clean).encode() + ending

    def _string(self, value: str) -> str:
        """One string of a JSON line, redacted as the lines of text it holds."""
        raw = value.encode("utf-8", "surrogatepass")
        credential_key = False
        parts = []
        for line in raw.splitlines(keepends=True):
            if credential_key:
                line = _PROTO_VALUE.sub(rb'\1"' + REDACTED + rb'"\2', line)
            credential_key = bool(_PROTO_KEY.match(line))
            parts.append(self._text(line))
        return b"".join(parts).decode("utf-8", "surrogatepass")


def private_dir(path: Path) -> Path:
    """Create ``path`` (mode 0700), or narrow an existing one to 0700."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


class LogFile:
    """One log file (0600), appended to in whole redacted lines by any number of threads. ``shape``
    rewrites each line a child writes (:meth:`pump`) before it is redacted; it must not raise."""

    def __init__(self, path: Path, redactor: Redactor, shape: Callable[[bytes], bytes] | None = None) -> None:
        self.path = path
        self._redact = redactor
        self.shape = shape
        self._lock = threading.Lock()
        self._fd: int | None = None

    def _open(self) -> int:
        if self._fd is None:
            private_dir(self.path.parent)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            os.fchmod(fd, 0o600)
            self._fd = fd
        return self._fd

    def write(self, data: bytes) -> None:
        self._append(self._redact(data))

    def _append(self, clean: bytes) -> None:
        with self._lock:
            fd = self._open()
            view = memoryview(clean)
            while view:
                view = view[os.write(fd, view) :]

    def line(self, text: str) -> None:
        self.write(text.encode() + b"\n")

    def pump(self, stream: IO[bytes], name: str) -> threading.Thread:
        """Copy ``stream`` to this file line by line until it closes, in a daemon thread."""

        def run() -> None:
            with stream:
                lines = _lines(stream) if self.shape is None else map(self.shape, _lines(stream))
                for line in self._redact.lines(lines):
                    self._append(line)

        thread = threading.Thread(target=run, name=f"log-{name}", daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def _lines(stream: IO[bytes]) -> Iterator[bytes]:
    pending = bytearray()
    dropping = False
    while True:
        try:
            chunk = stream.readline(_CHUNK)
        except (OSError, ValueError):
            chunk = b""
        if not chunk:
            if pending and not dropping:
                yield bytes(pending) + b"\n"
            return
        ends = chunk.endswith(b"\n")
        if dropping:
            dropping = not ends
            continue
        pending += chunk
        if ends:
            yield bytes(pending)
            pending.clear()
        elif len(pending) > MAX_LINE:
            yield b"[a line longer than %d bytes was dropped]\n" % MAX_LINE
            pending.clear()
            dropping = True
