"""The audit path measured on its own: sustained ingest into Postgres, over HTTP and in-process.

Lines are made the way authz spools them (:func:`authz.audit.records.decision_line` field for field,
an outcome for every request, a few requests answered by Envoy alone), serialised once, and then
sent in batches exactly as :class:`authz.audit.shipper.Shipper` sends them: ``{"records":[…]}`` built
from the raw lines, one POST at a time. Throughput is records stored per second of wall time; CPU is
the control plane's and Postgres's (the postmaster's whole tree) over the same window.

The in-process variant calls :class:`controlplane.audit.ingest.Ingestor` on one asyncpg connection,
one transaction per batch, with the same parsing as the route, so it shows what is left without
HTTP, FastAPI and SQLAlchemy's session.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
from procstat import CpuWindow

MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-4.1", "claude-3-5-sonnet-latest", "claude-3-5-haiku-latest",
          "text-embedding-3-small")
ENVIRONMENTS = ("dev", "staging", "prod", "ci")
#: (decision, status) with rough real-world weights: nearly everything is allowed.
DECISIONS = (("allowed", None),) * 93 + (("model_not_allowed", 403),) * 3 + (("token_revoked", 401),) * 2 + (
    ("token_unknown", 401), ("token_expired", 401))


@dataclass
class Population:
    """Who makes requests: users in teams, each with a few tokens."""

    users: list[tuple[str, str, str]]  # (user_id, email, team)
    tokens: dict[str, list[str]]  # user_id -> token ids

    @classmethod
    def make(cls, rng: random.Random, users: int = 2000, teams: int = 50, tokens_per_user: int = 2) -> Population:
        people = [(str(uuid.UUID(int=rng.getrandbits(128), version=4)), f"user{i}@example.com", f"team-{i % teams:02d}")
                  for i in range(users)]
        return cls(people, {u: [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(tokens_per_user)]
                            for u, _, _ in people})


def _iso(at: datetime) -> str:
    return at.isoformat(timespec="microseconds")


def request_lines(rng: random.Random, population: Population, count: int, start: datetime,
                  per_second: float = 2000.0) -> list[bytes]:
    """``count`` requests as spool lines, in the order authz writes them (decision, later its outcome)."""
    lines: list[bytes] = []
    dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
    for i in range(count):
        at = start + timedelta(seconds=i / per_second)
        request_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        path = "/openai/v1/chat/completions"
        if i % 50 == 49:  # Envoy answered alone (body too large): no decision, an undecided outcome
            lines.append(dumps({
                "kind": "outcome", "at": _iso(at), "request_id": request_id, "status": 413, "upstream_status": None,
                "response_flags": None, "details": "request_payload_too_large", "duration_ms": 0,
                "upstream_ms": None, "bytes_in": 0, "bytes_out": 152, "prompt_tokens": None,
                "completion_tokens": None, "decided": False, "method": "POST", "route": path}).encode())
            continue
        user_id, email, team = population.users[rng.randrange(len(population.users))]
        model = MODELS[rng.randrange(len(MODELS))]
        provider = "anthropic" if model.startswith("claude") else "openai"
        if provider == "anthropic":
            path = "/anthropic/v1/messages"
        decision, status = DECISIONS[rng.randrange(len(DECISIONS))]
        lines.append(dumps({
            "kind": "decision", "at": _iso(at), "request_id": request_id,
            "token_id": rng.choice(population.tokens[user_id]), "user_id": user_id, "user_email": email,
            "team": team, "environment": ENVIRONMENTS[rng.randrange(4)], "provider": provider, "method": "POST",
            "route": path, "model": model, "decision": decision, "status": status}).encode())
        allowed = decision == "allowed"
        final = 200 if allowed else status
        lines.append(dumps({
            "kind": "outcome", "at": _iso(at), "request_id": request_id, "status": final,
            "upstream_status": 200 if allowed else None, "response_flags": None if allowed else "UAEX",
            "details": "via_upstream" if allowed else "ext_authz_denied",
            "duration_ms": rng.randrange(200, 9000) if allowed else 1,
            "upstream_ms": rng.randrange(150, 8900) if allowed else None, "bytes_in": rng.randrange(200, 8000),
            "bytes_out": rng.randrange(300, 20000) if allowed else 180,
            "prompt_tokens": rng.randrange(10, 3000) if allowed else None,
            "completion_tokens": rng.randrange(1, 800) if allowed else None,
            "decided": True, "method": "POST", "route": path}).encode())
    return lines


def batches(lines: list[bytes], size: int) -> list[bytes]:
    """Request bodies exactly as the shipper builds them."""
    return [b'{"records":[' + b",".join(lines[i:i + size]) + b"]}" for i in range(0, len(lines), size)]


@dataclass
class IngestRun:
    how: str
    batch_lines: int
    lines: int
    stored: int
    duplicates: int
    seconds: float
    cpu: dict[str, float] = field(default_factory=dict)
    batch_ms: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.stored / self.seconds

    def cpu_us(self, name: str) -> float:
        return self.cpu[name] / self.stored * 1e6 if self.stored else float("nan")


def ingest_http(url: str, token: str, bodies: list[bytes], batch_lines: int, lines: int,
                pids: dict[str, int], trees: frozenset[str]) -> IngestRun:
    """POST each body in turn, as one shipper does; CPU of ``pids`` over the whole run."""
    stored = duplicates = 0
    times: list[float] = []
    headers = {"Authorization": f"Bearer {token}", "content-type": "application/json"}
    with httpx.Client(timeout=120) as client, CpuWindow(pids, trees=trees) as window:
        started = time.perf_counter()
        for body in bodies:
            sent = time.perf_counter()
            reply = client.post(url, content=body, headers=headers)
            times.append((time.perf_counter() - sent) * 1000)
            if reply.status_code != 200:
                raise RuntimeError(f"ingest answered {reply.status_code}: {reply.text[:300]}")
            answer = reply.json()
            stored += answer["accepted"]
            duplicates += answer["duplicates"]
        seconds = time.perf_counter() - started
    assert window.used is not None
    return IngestRun("HTTP", batch_lines, lines, stored, duplicates, seconds, window.used, times)


async def _ingest_direct(dsn: str, bodies: list[bytes], pids: dict[str, int], trees: frozenset[str],
                         signing_key: str) -> tuple[int, int, float, dict[str, float], list[float]]:
    from controlplane.audit import signing
    from controlplane.audit.ingest import Ingestor, parse_body

    # The chain heads are signed with the stack's key, as its control plane signs them.
    signing.install(signing.Signer(signing_key))
    ingestor = Ingestor()
    connection = await asyncpg.connect(dsn)
    stored = duplicates = 0
    times: list[float] = []
    try:
        before = os.times()
        with CpuWindow(pids, trees=trees) as window:
            started = time.perf_counter()
            for body in bodies:
                sent = time.perf_counter()
                async with connection.transaction():
                    result = await ingestor.ingest(connection, parse_body(body))
                times.append((time.perf_counter() - sent) * 1000)
                stored += result.accepted
                duplicates += result.duplicates
            seconds = time.perf_counter() - started
        after = os.times()
    finally:
        await connection.close()
    assert window.used is not None
    used = dict(window.used)
    used["in-process ingest"] = (after.user + after.system) - (before.user + before.system)
    return stored, duplicates, seconds, used, times


def ingest_direct(dsn: str, bodies: list[bytes], batch_lines: int, lines: int, pids: dict[str, int],
                  trees: frozenset[str], signing_key: str) -> IngestRun:
    stored, duplicates, seconds, used, times = asyncio.run(_ingest_direct(dsn, bodies, pids, trees, signing_key))
    return IngestRun("in-process", batch_lines, lines, stored, duplicates, seconds, used, times)


async def _counts(dsn: str) -> tuple[int, int]:
    connection = await asyncpg.connect(dsn)
    try:
        records = await connection.fetchval("SELECT count(*) FROM request_records")
        outcomes = await connection.fetchval("SELECT count(*) FROM request_outcomes")
        return int(records), int(outcomes)
    finally:
        await connection.close()


def counts(dsn: str) -> tuple[int, int]:
    """Rows in request_records and request_outcomes."""
    return asyncio.run(_counts(dsn))


def verify(owner_dsn: str, public_key: str) -> list[str]:
    """``keyward audit verify`` in-process: one line per chain, 'intact' or the first finding."""
    from controlplane.audit.verify import verify_all

    reports = asyncio.run(verify_all(owner_dsn, public_key=public_key))
    return [f"{r.chain}: {r.records:,} records, " + ("intact" if not r.findings else str(r.findings[0]))
            for r in reports]


def now_utc() -> datetime:
    return datetime.now(UTC)


def pending_spool_bytes(spool_dir: Path) -> int:
    """Bytes authz has spooled but not yet had confirmed by the control plane, read without opening
    the spool (that is authz's: :class:`authz.audit.spool.Spool` would cut a line being written)."""
    segments = sorted(spool_dir.glob("*.jsonl"))
    try:
        name, offset = (spool_dir / "shipped.pos").read_text().split()
    except (FileNotFoundError, ValueError):
        name, offset = (segments[0].name if segments else ""), "0"
    total = 0
    for segment in segments:
        if segment.name >= name:
            with contextlib.suppress(FileNotFoundError):
                total += segment.stat().st_size - (int(offset) if segment.name == name else 0)
    return total


def wait_for_drain(spool_dir: Path, timeout: float = 180) -> float:
    """Wait until authz has shipped everything it spooled; returns the seconds waited."""
    started = time.monotonic()
    while pending_spool_bytes(spool_dir) > 0:
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"the audit spool did not drain in {timeout:.0f} s")
        time.sleep(0.1)
    return time.monotonic() - started


async def _vacuum(owner_dsn: str) -> None:
    connection = await asyncpg.connect(owner_dsn, command_timeout=600)
    try:
        await connection.execute("VACUUM (ANALYZE) request_records, request_outcomes")
    finally:
        await connection.close()


def vacuum(owner_dsn: str) -> None:
    """VACUUM ANALYZE the audit tables, so autovacuum does not start in the middle of a measurement."""
    asyncio.run(_vacuum(owner_dsn))
