"""Retention is the only way audit rows leave: export first, pin the chain, record it, then drop.

Runs in a database of its own on the stack's Postgres server, so dropping partitions here cannot
disturb the records other tests look for.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from controlplane.audit import signing
from controlplane.audit.ingest import IngestBatch, Ingestor
from controlplane.migrate import upgrade
from tests.e2e.conftest import Gateway

pytestmark = pytest.mark.e2e


def _database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


async def _run(url: str, query: str, *args: object) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(url)
    try:
        return await connection.fetch(query, *args)
    finally:
        await connection.close()


#: The retention tests' own signing key: they write their own chains, as the control plane would.
SIGNING_KEY = signing.new_private_key()
PUBLIC_KEY = signing.Signer(SIGNING_KEY).public_key


@pytest.fixture(scope="module")
def audit_db(gateway: Gateway) -> Iterator[str]:
    name = f"retention_{uuid.uuid4().hex[:8]}"
    owner = gateway.info.owner_database_url
    asyncio.run(_run(owner, f'CREATE DATABASE "{name}"'))
    url = _database(owner, name)
    upgrade(url)
    yield url
    asyncio.run(_run(owner, f'DROP DATABASE "{name}" WITH (FORCE)'))


def _lines(count: int) -> IngestBatch:
    now = datetime.now(UTC).isoformat()
    return IngestBatch.model_validate({"records": [
        {"kind": "decision", "at": now, "request_id": f"req-{uuid.uuid4()}", "decision": "allowed",
         "user_email": "ada@example.com", "model": "gpt-4o-mini"}
        for _ in range(count)
    ]})


async def _ingest(url: str, batch: IngestBatch) -> None:
    signing.install(signing.Signer(SIGNING_KEY))
    connection = await asyncpg.connect(url)
    try:
        async with connection.transaction():
            await Ingestor().ingest(connection, batch)
    finally:
        await connection.close()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    keys = ["--signing-key", SIGNING_KEY] if args[0] == "retention" else ["--public-key", PUBLIC_KEY]
    return subprocess.run([sys.executable, "-m", "controlplane.cli", "audit", *args, *keys],
                          capture_output=True, text=True, timeout=120)


def test_retention_exports_pins_records_and_drops(audit_db: str, tmp_path: Path) -> None:
    asyncio.run(_ingest(audit_db, _lines(10)))
    asyncio.run(_ingest(audit_db, _lines(5)))
    # Age the first ten rows: as if ingested in January 2025 (a cross-partition UPDATE moves them).
    asyncio.run(_run(audit_db, "SELECT keyward_ensure_audit_partition('2025-01-01')"))
    asyncio.run(_run(audit_db, "UPDATE request_records SET stored_at = '2025-01-15T00:00:00Z' WHERE seq <= 10"))

    result = _cli("retention", "--keep-months", "3", "--export-dir", str(tmp_path), "--database-url", audit_db)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "request_records_2025_01: 10 rows" in result.stdout

    export = tmp_path / "request_records-2025_01.jsonl.gz"
    raw = gzip.decompress(export.read_bytes())
    rows = [json.loads(line) for line in raw.splitlines()]
    assert [r["seq"] for r in rows] == list(range(1, 11))
    assert all(len(r["hash"]) == 64 for r in rows)

    remaining = asyncio.run(_run(audit_db, "SELECT seq FROM request_records ORDER BY seq"))
    assert [r["seq"] for r in remaining] == list(range(11, 16))
    events = asyncio.run(_run(audit_db, "SELECT * FROM events WHERE action = 'retention.applied' ORDER BY seq"))
    assert [e["target_id"] for e in events] == ["request_records_2025_01", "request_outcomes_2025_01"]
    event = events[0]
    after = json.loads(event["after"])
    assert after["rows"] == 10 and after["last_seq"] == 10
    assert after["export_sha256"] == hashlib.sha256(raw).hexdigest()
    assert event["actor"] == "cli:retention" and event["mechanism"] == "cli"

    verified = _cli("verify", "--database-url", audit_db)
    assert verified.returncode == 0, verified.stdout
    assert "request_records: 5 records, chain intact, signed" in verified.stdout

    # The anchor still catches tampering with what is left.
    asyncio.run(_run(audit_db, "DELETE FROM request_records WHERE seq = 11"))
    broken = _cli("verify", "--database-url", audit_db)
    assert broken.returncode == 1
    assert "request_records seq 12" in broken.stdout


def test_the_application_role_cannot_apply_retention(audit_db: str, tmp_path: Path, gateway: Gateway) -> None:
    # The application's own login (its password included), on the retention test's database.
    app = urlsplit(gateway.info.database_url)
    app_url = urlunsplit(urlsplit(audit_db)._replace(netloc=app.netloc))
    asyncio.run(_run(audit_db, "SELECT keyward_ensure_audit_partition('2024-06-01')"))
    result = _cli("retention", "--keep-months", "1", "--export-dir", str(tmp_path), "--database-url", app_url)
    assert result.returncode != 0
    assert "must be owner" in result.stderr or "permission denied" in result.stderr
