"""An append-only spool of JSON lines in numbered segment files.

Invariants:

* :meth:`Spool.append` either writes one whole line or raises :class:`OSError` and leaves the file
  as it was (a short write is truncated away), so a caller that must not serve unrecorded requests
  can rely on the exception alone;
* lines go to the kernel with ``os.write`` at once, so they survive the process dying; ``fsync``
  runs on a short timer (:meth:`sync`) for the machine dying;
* a segment is deleted only after the shipper's persisted position has passed its end;
* it is thread-safe: gRPC worker threads append while the event loop's thread fsyncs and the shipper
  reads; appends, rotation and size accounting happen under one lock.
"""

from __future__ import annotations

import errno
import json
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

_SUFFIX = ".jsonl"
#: One encoder for every line: ``json.dumps`` with options builds a new encoder on every call.
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


class Spool:
    def __init__(self, directory: Path, *, segment_bytes: int = 8 << 20) -> None:
        self.directory = directory
        self._segment_bytes = segment_bytes
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        directory.chmod(0o700)
        self._lock = threading.Lock()
        existing = self.segments()
        self.current = existing[-1] if existing else self._path(1)
        self._fd = self._open(self.current)
        self._size = self._drop_torn_tail()

    def _drop_torn_tail(self) -> int:
        """A crash mid-write can leave a partial last line; cut it so the next line starts clean."""
        size = os.fstat(self._fd).st_size
        if size == 0:
            return 0
        with self.current.open("rb") as handle:
            handle.seek(max(0, size - (1 << 20)))
            tail = handle.read()
        if tail.endswith(b"\n"):
            return size
        keep = size - len(tail) + tail.rfind(b"\n") + 1
        os.ftruncate(self._fd, keep)
        return keep

    def _path(self, number: int) -> Path:
        return self.directory / f"{number:016d}{_SUFFIX}"

    @staticmethod
    def _open(path: Path) -> int:
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def segments(self) -> list[Path]:
        return sorted(self.directory.glob(f"*{_SUFFIX}"))

    def append(self, record: dict[str, Any]) -> None:
        self._write((_encode(record) + "\n").encode())

    def append_many(self, records: Iterable[dict[str, Any]]) -> None:
        """Several lines in one write: all of them are spooled, or none (and :class:`OSError`)."""
        data = "".join([_encode(record) + "\n" for record in records]).encode()
        if data:
            self._write(data)

    def _write(self, data: bytes) -> None:
        with self._lock:
            if self._size >= self._segment_bytes:
                # Rotate before writing, so a failed rotation fails this append (nothing written) and
                # the next append simply tries again.
                self._rotate()
            try:
                written = os.write(self._fd, data)
            except OSError:
                self._truncate()
                raise
            if written != len(data):
                self._truncate()
                raise OSError(errno.ENOSPC, "short write to the audit spool")
            self._size += written

    def _truncate(self) -> None:
        try:
            os.ftruncate(self._fd, self._size)
        except OSError:
            pass  # the append already failed; the caller is told by the original error

    def _rotate(self) -> None:
        path = self._path(int(self.current.stem) + 1)
        fd = self._open(path)  # if this fails, the current segment stays open and usable
        old = self._fd
        self.current, self._fd, self._size = path, fd, 0
        try:
            os.fsync(old)
        finally:
            os.close(old)

    def sync(self) -> None:
        # fsync outside the lock, so appends never wait for the disk; the duplicate keeps the file
        # open even if a rotation closes the original meanwhile (rotation fsyncs that one itself).
        with self._lock:
            fd = os.dup(self._fd)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        with self._lock:
            os.fsync(self._fd)
            os.close(self._fd)
