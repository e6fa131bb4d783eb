"""Authz measured on its own: the Check RPC under load, and a fresh process loading a large snapshot."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import grpc
from envoy.config.core.v3.base_pb2 import HeaderMap, HeaderValue
from envoy.service.auth.v3.attribute_context_pb2 import AttributeContext
from envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse
from grpc_health.v1 import health_pb2, health_pb2_grpc
from loadgen import percentile
from procstat import CpuWindow, memory_kib

CHECK_METHOD = "/envoy.service.auth.v3.Authorization/Check"


# -- Check RPC --------------------------------------------------------------------------------------


def canned_check(token: str, body: str, path: str = "/openai/v1/chat/completions") -> CheckRequest:
    """A CheckRequest shaped like the gateway's: raw header values for the allowed headers, raw body."""
    request_id = str(uuid.uuid4())
    raw = {"authorization": f"Bearer {token}", "content-type": "application/json", "x-request-id": request_id}
    socket = AttributeContext.Peer
    return CheckRequest(attributes=AttributeContext(
        source=socket(address={"socket_address": {"address": "127.0.0.1", "port_value": 50000}}),
        destination=socket(address={"socket_address": {"address": "127.0.0.1", "port_value": 8080}}),
        request=AttributeContext.Request(http=AttributeContext.HttpRequest(
            id="1234567890123456789", method="POST", path=path, host="127.0.0.1:8080", scheme="http",
            protocol="HTTP/1.1", size=len(body),
            header_map=HeaderMap(headers=[HeaderValue(key=k, raw_value=v.encode()) for k, v in raw.items()]),
            raw_body=body.encode(),
        )),
    ))


@dataclass
class CheckResult:
    in_flight: int
    channels: int
    calls: int
    seconds: float
    p50_ms: float
    p99_ms: float
    authz_cpu: float
    client_cpu: float
    machine_cpu: float
    failures: int

    @property
    def rps(self) -> float:
        return self.calls / self.seconds

    @property
    def cpu_us_per_check(self) -> float:
        return self.authz_cpu / self.calls * 1e6 if self.calls else float("nan")

    @property
    def other_cores(self) -> float:
        """Cores used by anything but authz and this client (idle stack processes, other users)."""
        return max(0.0, self.machine_cpu - self.authz_cpu - self.client_cpu) / self.seconds


async def _drive(calls: list, payload: bytes, in_flight: int, duration: float) -> tuple[list[int], int]:
    stop_at = time.perf_counter() + duration
    samples: list[int] = []
    failures = 0

    async def worker(call: grpc.aio.UnaryUnaryMultiCallable) -> None:
        nonlocal failures
        while time.perf_counter() < stop_at:
            started = time.perf_counter_ns()
            try:
                await call(payload, timeout=5)
            except grpc.aio.AioRpcError:
                failures += 1
            samples.append(time.perf_counter_ns() - started)

    await asyncio.gather(*(worker(calls[i % len(calls)]) for i in range(in_flight)))
    return samples, failures


async def _check_runs(address: str, payload: bytes, authz_pid: int, shapes: list[tuple[int, int]],
                      duration: float, warmup: float) -> list[CheckResult]:
    results = []
    for channels_wanted, in_flight in shapes:
        # Pre-serialized request bytes in, raw bytes out: the client does no protobuf work per call.
        channels = [grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
                    for _ in range(channels_wanted)]
        try:
            calls = [c.unary_unary(CHECK_METHOD, request_serializer=None, response_deserializer=None)
                     for c in channels]
            reply = CheckResponse.FromString(await calls[0](payload, timeout=5))
            if reply.status.code != 0:
                raise RuntimeError(f"canned Check was not allowed: {reply.status}")
            if warmup > 0:
                await _drive(calls, payload, in_flight, warmup)
            before = os.times()
            with CpuWindow({"authz": authz_pid}) as window:
                started = time.perf_counter()
                samples, failures = await _drive(calls, payload, in_flight, duration)
                seconds = time.perf_counter() - started
            after = os.times()
        finally:
            for channel in channels:
                await channel.close()
        samples.sort()
        assert window.used is not None
        results.append(CheckResult(
            in_flight=in_flight, channels=channels_wanted, calls=len(samples), seconds=seconds,
            p50_ms=percentile(samples, 0.5) / 1e6, p99_ms=percentile(samples, 0.99) / 1e6,
            authz_cpu=window.used["authz"], machine_cpu=window.machine, failures=failures,
            client_cpu=(after.user + after.system) - (before.user + before.system),
        ))
    return results


def check_rpc(address: str, request: CheckRequest, authz_pid: int, shapes: list[tuple[int, int]],
              duration: float, warmup: float) -> list[CheckResult]:
    """Run each ``(channels, in_flight)`` shape against the authz socket for ``duration`` seconds."""
    return asyncio.run(_check_runs(address, request.SerializeToString(), authz_pid, shapes, duration, warmup))


# -- bulk tokens ------------------------------------------------------------------------------------

_MODEL_LISTS = (["*"], ["gpt-4o*", "claude-*"], ["gpt-4o-mini", "text-embedding-3-small"])
_ENVIRONMENTS = ("dev", "staging", "prod", "ci")
_TEAMS = (None, "platform", "data", "research", "support")
_TOKEN_COLUMNS = ["id", "token_hash", "hint", "name", "user_id", "team", "environment", "models",
                  "created_by", "expires_at"]


def _rows(run: str, start: int, count: int, tokens_per_user: int,
          teams: dict[str, object] | None = None) -> Iterator[tuple[list, list, list]]:
    """(users, tokens, memberships) record batches: ``tokens_per_user`` tokens per user, varied
    attributes. With ``teams`` (name → team id: the schema where tokens act for a team) a token
    carries its team's id instead of the team's name, and its owner is made a member of that team."""
    batch = 50_000
    expiry = datetime.now(UTC) + timedelta(days=365)
    for offset in range(start, start + count, batch):
        n = min(batch, start + count - offset)
        users = [(uuid.uuid4(), f"bench-{run}-{offset + i}@example.com", "active")
                 for i in range(0, n, tokens_per_user)]
        tokens = []
        memberships: set[tuple[object, object]] = set()
        for i in range(n):
            token_hash = os.urandom(32).hex()
            k = offset + i
            owner = users[i // tokens_per_user][0]
            team: object = _TEAMS[k % len(_TEAMS)]
            if teams is not None:
                team = teams[team] if team else None
                if team is not None:
                    memberships.add((team, owner))
            tokens.append((uuid.uuid4(), token_hash, f"kw_pat_…{token_hash[:4]}", "bench", owner, team,
                           _ENVIRONMENTS[k % len(_ENVIRONMENTS)], _MODEL_LISTS[k % len(_MODEL_LISTS)],
                           "bench", expiry if k % 2 else None))
        yield users, tokens, sorted(memberships, key=str)


async def _connect_for_bulk(dsn: str) -> tuple[asyncpg.Connection, str]:
    # session_replication_role=replica: no NOTIFY trigger per row (a bulk load must not flood the
    # listeners with a million notifications) and no per-row foreign-key trigger. Needs a superuser.
    try:
        connection = await asyncpg.connect(dsn, server_settings={"session_replication_role": "replica"})
    except asyncpg.InsufficientPrivilegeError:
        return await asyncpg.connect(dsn), "COPY with row triggers on (the role may not disable them)"
    return connection, "COPY with `session_replication_role=replica` (no per-row NOTIFY or FK triggers)"


async def _bench_teams(connection: asyncpg.Connection, run: str) -> dict[str, object] | None:
    """Where tokens belong to teams (``tokens.team_id``): one team per bench team name, with the first
    access profile, created once per run. None on the older schema (``tokens.team`` holds the name)."""
    columns = {r["column_name"] for r in await connection.fetch(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'tokens'")}
    if "team_id" not in columns:
        return None
    teams: dict[str, object] = {}
    for name in (t for t in _TEAMS if t):
        full = f"bench-{run}-{name}"
        teams[name] = await connection.fetchval(
            "INSERT INTO teams (id, name, profile_id) VALUES (gen_random_uuid(), $1,"
            " (SELECT id FROM access_profiles ORDER BY name LIMIT 1))"
            " ON CONFLICT (lower(name)) DO UPDATE SET name = EXCLUDED.name RETURNING id", full)
    return teams


async def _bulk_insert(dsn: str, run: str, start: int, count: int, tokens_per_user: int) -> str:
    connection, note = await _connect_for_bulk(dsn)
    try:
        teams = await _bench_teams(connection, run)
        columns = [c if c != "team" or teams is None else "team_id" for c in _TOKEN_COLUMNS]
        for users, tokens, memberships in _rows(run, start, count, tokens_per_user, teams):
            await connection.copy_records_to_table("users", records=users, columns=["id", "email", "status"])
            await connection.copy_records_to_table("tokens", records=tokens, columns=columns)
            if teams is not None and memberships:
                await connection.copy_records_to_table("memberships", records=memberships,
                                                       columns=["team_id", "user_id"])
        await connection.execute("ANALYZE users; ANALYZE tokens")
    finally:
        await connection.close()
    return note


def bulk_insert(dsn: str, run: str, start: int, count: int, tokens_per_user: int = 4) -> tuple[float, str]:
    """COPY ``count`` live tokens (and their users) into the database: (seconds taken, how)."""
    started = time.perf_counter()
    note = asyncio.run(_bulk_insert(dsn, run, start, count, tokens_per_user))
    return time.perf_counter() - started, note


async def _live_tokens(dsn: str) -> int:
    connection = await asyncpg.connect(dsn)
    try:
        return await connection.fetchval("SELECT count(*) FROM tokens WHERE revoked_at IS NULL")
    finally:
        await connection.close()


def live_tokens(dsn: str) -> int:
    return asyncio.run(_live_tokens(dsn))


# -- fresh authz ------------------------------------------------------------------------------------


@dataclass
class LoadMeasurement:
    live_tokens: int
    serving_seconds: float
    snapshot_seconds: float
    snapshot_tokens: int
    rss_mib: float
    hwm_mib: float
    sanity_allowed: bool


def _serving(address: str) -> bool:
    try:
        with grpc.insecure_channel(address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="envoy.service.auth.v3.Authorization"), timeout=1)
    except grpc.RpcError:
        return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def _snapshot_event(log_path: Path) -> dict:
    for line in log_path.read_text(errors="replace").splitlines():
        if '"snapshot.loaded"' in line:
            return json.loads(line)
    raise RuntimeError(f"no snapshot.loaded line in {log_path}")


def fresh_authz_load(env: dict[str, str], work: Path, check: CheckRequest, live: int,
                     timeout: float = 120) -> LoadMeasurement:
    """Start ``python -m authz`` on a new socket; time it to SERVING and read its memory then."""
    work.mkdir(parents=True, exist_ok=True)
    sock = work / "authz.sock"
    sock.unlink(missing_ok=True)
    address = f"unix:{sock}"
    env = {**env, "KEYWARD_AUTHZ_ADDRESS": address}
    if "KEYWARD_AUDIT_SPOOL_DIR" in env:
        env["KEYWARD_AUDIT_SPOOL_DIR"] = str(work / "spool")
    log_path = work / "authz.log"
    with log_path.open("wb") as log:
        started = time.perf_counter()
        process = subprocess.Popen([sys.executable, "-m", "authz"], stdout=log, stderr=subprocess.STDOUT,
                                   env=env, start_new_session=True)
    try:
        while not _serving(address):
            if process.poll() is not None:
                raise RuntimeError(f"fresh authz exited; see {log_path}")
            if time.perf_counter() - started > timeout:
                raise RuntimeError(f"fresh authz not serving after {timeout}s; see {log_path}")
            time.sleep(0.02)
        serving = time.perf_counter() - started
        memory = memory_kib(process.pid)
        with grpc.insecure_channel(address) as channel:
            call = channel.unary_unary(CHECK_METHOD, request_serializer=None, response_deserializer=None)
            reply = CheckResponse.FromString(call(check.SerializeToString(), timeout=5))
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
    event = _snapshot_event(log_path)
    return LoadMeasurement(
        live_tokens=live, serving_seconds=serving, snapshot_seconds=float(event["seconds"]),
        snapshot_tokens=int(event["tokens"]), rss_mib=memory["VmRSS"] / 1024, hwm_mib=memory["VmHWM"] / 1024,
        sanity_allowed=reply.status.code == 0,
    )
