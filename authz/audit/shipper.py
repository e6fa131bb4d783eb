"""Ship spooled lines to the control plane, in order, at least once.

The position (segment, byte offset) advances only after the control plane answered 200, and is
persisted atomically, so a restart of either side resends at most one batch, which the idempotent
ingest skips. While the control plane is down the spool grows and nothing is dropped. A batch the
control plane refuses as malformed (422) is moved aside to ``rejected/`` with the answer, never
silently discarded, so one bad line cannot stall the stream.

A batch that was not full means the spool is drained: the shipper then waits ``idle_seconds`` before
the next, so under steady load batches hold what arrived in that time rather than the few lines that
arrived during one round trip. Most of ingest's cost is per batch (a request, a transaction, the chain
head), so this is what keeps the control plane's cost per record low.
"""

from __future__ import annotations

import asyncio
import os

import httpx
import structlog

from authz.audit.spool import Spool
from authz.metrics import AUDIT_LINES_QUARANTINED, AUDIT_LINES_SHIPPED, AUDIT_SHIP_FAILURES

log = structlog.get_logger("authz.audit.shipper")


class Shipper:
    def __init__(self, spool: Spool, *, client: httpx.AsyncClient, url: str, token: str,
                 batch_lines: int = 2000, idle_seconds: float = 0.25, batch_bytes: int = 1_000_000) -> None:
        self._spool = spool
        self._client = client
        self._url = url
        self._token = token
        self._batch_lines = batch_lines
        #: The request body stays under this (the control plane refuses bodies over 1 MiB by default).
        self._batch_bytes = batch_bytes
        self._idle = idle_seconds
        self._position_file = spool.directory / "shipped.pos"

    # -- position ---------------------------------------------------------------------------------

    def position(self) -> tuple[str, int]:
        try:
            name, offset = self._position_file.read_text().split()
            return name, int(offset)
        except (FileNotFoundError, ValueError):
            segments = self._spool.segments()
            return (segments[0].name if segments else self._spool.current.name), 0

    def _save(self, name: str, offset: int) -> None:
        staging = self._position_file.with_suffix(".tmp")
        fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(f"{name} {offset}\n")
        os.replace(staging, self._position_file)

    # -- reading ----------------------------------------------------------------------------------

    def _read_batch(self) -> tuple[list[bytes], str, int]:
        """Whole lines from the position on, crossing into later segments; returns the new position."""
        name, offset = self.position()
        lines: list[bytes] = []
        size = len(b'{"records":[]}')
        for segment in self._spool.segments():
            if segment.name < name:
                continue
            start = offset if segment.name == name else 0
            with segment.open("rb") as handle:
                handle.seek(start)
                data = handle.read(1 << 20)
            complete = data[: data.rfind(b"\n") + 1]
            for line in complete.splitlines():
                if len(lines) == self._batch_lines or (lines and size + len(line) + 1 > self._batch_bytes):
                    return lines, segment.name, start
                lines.append(line)
                size += len(line) + 1
                start += len(line) + 1
            name, offset = segment.name, start
            if len(complete) < len(data) or segment == self._spool.current or len(data) == 1 << 20:
                break
        return lines, name, offset

    def _release_shipped_segments(self, name: str) -> None:
        for segment in self._spool.segments():
            if segment.name < name and segment != self._spool.current:
                segment.unlink(missing_ok=True)

    # -- shipping ---------------------------------------------------------------------------------

    async def ship_once(self) -> int:
        lines, name, offset = self._read_batch()
        if not lines:
            return 0
        await self._send(lines)
        self._save(name, offset)
        self._release_shipped_segments(name)
        return len(lines)

    async def _send(self, lines: list[bytes]) -> None:
        body = b'{"records":[' + b",".join(lines) + b"]}"
        response = await self._client.post(
            self._url, content=body,
            headers={"Authorization": f"Bearer {self._token}", "content-type": "application/json"},
        )
        if response.status_code == 200:
            AUDIT_LINES_SHIPPED.inc(len(lines))
            return
        if response.status_code not in (413, 422):
            raise httpx.HTTPStatusError(f"ingest answered {response.status_code}", request=response.request,
                                        response=response)
        # Refused as malformed (422) or too large (413): halve until the bad lines are alone, so the
        # good ones still land; a single line refused either way is set aside.
        if len(lines) == 1:
            self._quarantine(lines, f"{response.status_code} {response.text}")
            return
        middle = len(lines) // 2
        await self._send(lines[:middle])
        await self._send(lines[middle:])

    def _quarantine(self, lines: list[bytes], reason: str) -> None:
        rejected = self._spool.directory / "rejected"
        rejected.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(rejected / "rejected.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "ab") as handle:
            handle.write(b"\n".join(lines) + b"\n")
        AUDIT_LINES_QUARANTINED.inc(len(lines))
        log.error("audit.batch_rejected", lines=len(lines), reason=reason[:2000])

    async def run(self) -> None:
        backoff = self._idle
        while True:
            try:
                shipped = await self.ship_once()
                backoff = self._idle
            except (httpx.HTTPError, OSError) as exc:
                AUDIT_SHIP_FAILURES.inc()
                log.warning("audit.ship_failed", error=f"{type(exc).__name__}: {exc}", retry_in=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            if shipped < self._batch_lines:
                await asyncio.sleep(self._idle)


async def sync_forever(spool: Spool, interval: float) -> None:
    """fsync the open segment on a timer: one disk flush per interval, not one per request."""
    while True:
        await asyncio.sleep(interval)
        try:
            spool.sync()
        except OSError as exc:
            log.error("audit.fsync_failed", error=str(exc))
