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

Log files are created 0600 in a 0700 directory (:func:`private_dir`); a file left by an older run
with wider permissions is narrowed when it is opened again.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterable, Iterator
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


class Redactor:
    """Replaces every secret in a chunk of log output with ``[REDACTED]``.

    >>> Redactor(["s3cr3t-value"])(b"key=s3cr3t-value token=kw_pat_abc123")
    b'key=[REDACTED] token=[REDACTED]'
    """

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        values = sorted({s.encode() for s in secrets if s}, key=len, reverse=True)
        self._secrets = re.compile(b"|".join(re.escape(v) for v in values)) if values else None

    def __call__(self, data: bytes) -> bytes:
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
            if credential_key:
                line = _PROTO_VALUE.sub(rb'\1"' + REDACTED + rb'"\2', line)
            credential_key = bool(_PROTO_KEY.match(line))
            yield self(line)


def private_dir(path: Path) -> Path:
    """Create ``path`` (mode 0700), or narrow an existing one to 0700."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


class LogFile:
    """One log file (0600), appended to in whole redacted lines by any number of threads."""

    def __init__(self, path: Path, redactor: Redactor) -> None:
        self.path = path
        self._redact = redactor
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
                for line in self._redact.lines(_lines(stream)):
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
