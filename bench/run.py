"""Keyward's benchmark: one run on loopback, results in ``bench/RESULTS.md``.

Method
------
Everything runs on this machine and talks only to 127.0.0.1, in a temporary directory, on ports the
kernel hands out (Envoy binds port 0; the stack gets ports probed free just before it starts).

1. **Fixed upstream** (a): an Envoy whose only route is a ``direct_response`` with a small chat
   completion (200, JSON). It stands in for the provider, so what is measured is the gateway, not a model.
2. **Plain Envoy** (b): the gateway's own rendered configuration minus the ext_authz filter (same
   listener, connection manager, access log, route rewrite, credential-injecting cluster), in front
   of (a).
3. **Full gateway** (c): :class:`controlplane.stack.runner.Stack` with dummy provider keys, so both
   provider clusters point at (a) and nothing is mocked; a user and a PAT are minted through the admin
   API and every request carries that PAT.

   (a), (b) and (c) each take the same POST ``/…/v1/chat/completions`` at 1, 16 and 64 keep-alive
   connections (closed loop, one request in flight per connection). The full run measures in three
   interleaved rounds (every concurrency and target in turn, then again) and reports medians, so
   bursts of background load (the machine may be shared) hit all three alike. The load generator is
   ``wrk`` with a Lua script (POST body, headers, exact p50/p99 in ``done()``), installed from Debian
   when missing; failing that, a Python asyncio generator. CPU per request of every process involved
   comes from ``/proc/<pid>/stat``; the machine's total busy time from ``/proc/stat`` shows how much
   CPU anything else took meanwhile.
4. **Check RPC alone**: grpc.aio clients send a pre-serialized CheckRequest (raw header values and raw
   body, as Envoy sends with ``encode_raw_headers``) straight to the stack's authz socket; authz CPU
   per Check is the change in its utime+stime divided by the number of Checks.
5. **Revocation propagation**: PATs are minted, then each is revoked through the admin API and the
   gateway is polled back to back with that PAT; the figure is the time from the revoke response to
   the first 401 (resolution: one gateway round trip, about a millisecond).
6. **Snapshot load**: users and tokens are COPYed straight into the stack's Postgres, then a fresh
   ``python -m authz`` is started on a new socket and timed until its gRPC health check says
   SERVING; its RSS is read then, and its own ``snapshot.loaded`` log line gives the snapshot seconds.
   After the first step, the questions that prove control (:mod:`governancebench`: who can reach a
   provider, refused-but-active tokens, one person's reach, the credential register and its filters)
   are asked through the admin API over every live token.
7. **Audit ingest** (:mod:`auditbench`): lines shaped like authz's are POSTed to the stack's ingest
   endpoint one batch at a time, as the shipper sends them, then fed to ``Ingestor`` in-process; a
   batch is resent (it must store nothing) and ``keyward audit verify`` must pass.
8. **Audit cost per request**: the gateway at concurrency 16 with the shipper shipping, and with
   ``KEYWARD_INGEST_URL`` pointed at a closed port (authz still spools everything), alternating.
9. **Audit queries at scale** (:mod:`auditquery`, after the snapshot phase): millions of synthetic
   request records and outcomes in partitions of their own, then the auditors' questions through
   the admin API and as SQL under ``EXPLAIN (ANALYZE, BUFFERS)`` (plans in ``AUDIT_PLANS.md``).
   Then ``spend_daily`` as ingest would have filled it for the same requests, and finance's
   questions (``GET /api/v1/spend``), asked the same way.
   ``--skip-audit-queries`` leaves this phase out.
10. The figures are compared with the targets and written, with PASS/MISS, to RESULTS.md.

``--quick`` shortens everything for development (about two minutes); the full run (the default)
takes about ten to twelve minutes on a 2-core machine, five of them generating 10 million records.

Over 450 lines because the benchmark is one run of ordered phases sharing one stack; each phase is a
function here, the measuring code in the modules beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import http.client
import json
import os
import platform
import random
import secrets
import shutil
import socket
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING

import auditbench
import auditquery
import authzbench
import consolebench
import envoys
import governancebench
import httpx
import loadgen
import procstat
import report
import spendbench
from minting import Minter
from model import HttpCell, Profile, Results, Round, Target

if TYPE_CHECKING:
    from controlplane.stack.runner import Stack

BENCH_DIR = Path(__file__).resolve().parent
CHAT_BODY = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello."}]},
                       separators=(",", ":"))
CONCURRENCIES = (1, 16, 64)
ENVOY_CONCURRENCY = 2  # the gateway's and plain Envoy's workers: one per core here
UPSTREAM_CONCURRENCY = 1
CHECK_SHAPES = [(1, 1), (2, 32)]  # (channels, calls in flight)
#: Measured as whole process trees: Postgres forks a backend per connection.
TREES = frozenset({"Postgres"})
#: The source the numbers belong to (the working tree may have no commit to name).
SOURCE_DIRS = ("authz", "controlplane", "envoy")


FULL = Profile("full", duration=5, rounds=3, warmup=1, check_duration=10, revocations=200,
               token_counts=(100_000, 1_000_000), ingest_requests=50_000, audit_rows=10_000_000,
               audit_cost_rounds=2)
QUICK = Profile("quick", duration=3, rounds=1, warmup=1, check_duration=3, revocations=20,
                token_counts=(10_000, 100_000), ingest_requests=10_000, audit_rows=1_000_000,
                audit_cost_rounds=1)
#: Lines per ingest request: what the shipper sends by default (KEYWARD_AUDIT_BATCH_LINES).
INGEST_BATCH_LINES = 2000


_T0 = time.monotonic()


def log(message: str) -> None:
    print(f"[bench {time.monotonic() - _T0:6.1f}s] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def machine_info() -> dict[str, str]:
    return {
        "nproc": str(procstat.nproc()),
        "CPU model": procstat.cpu_model(),
        "memory": f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.1f} GiB",
        "kernel": platform.release(),
        "Python": platform.python_version(),
        "Envoy": envoys.envoy_version(),
        "measured source": source_fingerprint(),
        "load average at start (1/5/15 min)": procstat.load_average(),
    }


def source_fingerprint() -> str:
    """SHA-256 over the gateway's source files, and when the newest of them was last changed."""
    digest = hashlib.sha256()
    newest = 0.0
    root = BENCH_DIR.parent
    for directory in SOURCE_DIRS:
        for path in sorted((root / directory).rglob("*")):
            if path.is_file() and path.suffix in (".py", ".yaml", ".ini") and "__pycache__" not in path.parts:
                digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
                newest = max(newest, path.stat().st_mtime)
    changed = dt.datetime.fromtimestamp(newest, dt.UTC)
    return (f"sha256 {digest.hexdigest()[:16]} of {', '.join(d + '/' for d in SOURCE_DIRS)} "
            f"(newest file changed {changed:%Y-%m-%d %H:%M:%S} UTC)")


def postmaster_pid(stack: Stack) -> int:
    return int((stack.data_dir / "pgdata" / "postmaster.pid").read_text().split()[0])


class GatewayPoller:
    """Status codes of single chat requests on one keep-alive connection (reconnects if closed)."""

    def __init__(self, port: int) -> None:
        self._connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def status(self, token: str) -> int:
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
        self._connection.request("POST", "/openai/v1/chat/completions", body=CHAT_BODY, headers=headers)
        reply = self._connection.getresponse()
        reply.read()
        return reply.status

    def close(self) -> None:
        self._connection.close()


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.01)


# -- phases -----------------------------------------------------------------------------------------


def http_phase(results: Results, targets: list[Target], pids: dict[str, int], token: str, wrk: str | None,
               work: Path) -> None:
    """Rounds outermost, then concurrency, then (a), (b), (c): each cell's rounds spread over the phase."""
    profile = results.profile
    script = None
    if wrk:
        script = loadgen.write_wrk_script(work / "chat.lua", CHAT_BODY, token)
        results.wrk_script = script.read_text().replace(token, "<PAT>")
    results.http = [HttpCell(c, t) for c in CONCURRENCIES for t in targets]
    for round_no in range(1, profile.rounds + 1):
        for cell in results.http:
            target, concurrency = cell.target, cell.concurrency
            url = f"http://127.0.0.1:{target.port}{target.path}"

            def load(seconds: float, target: Target = target, url: str = url,
                     concurrency: int = concurrency) -> loadgen.LoadResult:
                if wrk and script:
                    return loadgen.run_wrk(wrk, script, url, concurrency, seconds)
                return loadgen.run_python("127.0.0.1", target.port, target.path, CHAT_BODY, token,
                                          concurrency, seconds)

            load(profile.warmup)
            with procstat.CpuWindow(pids, trees=TREES) as window:
                result = load(profile.duration)
            assert window.used is not None
            measured = Round(result, window.used, window.machine)
            cell.rounds.append(measured)
            result.command = result.command.replace(str(work), "$WORK")
            results.commands.append(result.command)
            log(f"HTTP round {round_no}/{profile.rounds} ({target.key}) {target.label:17s} "
                f"c={concurrency:<3d} {result.rps:8,.0f} req/s  p50 {result.p50_ms:7.3f} ms  "
                f"p99 {result.p99_ms:7.3f} ms  "
                f"errors {result.errors}  other CPU {measured.other_cpu / result.seconds:.2f} cores")


def revocation_phase(results: Results, admin: httpx.Client, gateway_port: int) -> None:
    count = results.profile.revocations
    log(f"revocation: minting {count} tokens")
    started = time.perf_counter()
    minter = Minter(admin)
    user = minter.user("revoke")
    minted = [minter.token(user, f"revoke-{i}") for i in range(count)]
    poller = GatewayPoller(gateway_port)
    try:
        for token in minted:
            wait_for(lambda t=token: poller.status(t["token"]) == 200, "a minted token to reach authz")
        results.revocations.mint_seconds = time.perf_counter() - started
        log("revocation: revoking each token and polling the gateway until 401")
        for token in minted:
            sent = time.perf_counter()
            reply = admin.post(f"/tokens/{token['id']}/revoke", json={"reason": "bench"})
            answered = time.perf_counter()
            reply.raise_for_status()
            polls = 0
            while True:
                status = poller.status(token["token"])
                polls += 1
                if status == 401:
                    denied = time.perf_counter()
                    break
                if status != 200:
                    raise RuntimeError(f"unexpected status {status} while waiting for a revocation")
                if time.perf_counter() - answered > 10:
                    raise RuntimeError("a revoked token was still allowed after 10 s")
            results.revocations.api_ms.append((answered - sent) * 1000)
            results.revocations.propagation_ms.append((denied - answered) * 1000)
            results.revocations.first_poll_denied += polls == 1
    finally:
        poller.close()


def snapshot_phase(results: Results, stack: Stack, check: authzbench.CheckRequest, work: Path) -> None:
    assert stack.info is not None
    # The bulk COPY wants the database owner where the stack has one (services log in as an app role).
    owner_dsn = getattr(stack.info, "owner_database_url", None) or stack.info.database_url
    # Nothing else is measured any more: free the cores for the snapshot loads. The control plane
    # stays up, since authz may be configured to ship to it.
    for name in ("envoy", "authz"):
        stack.services[name].stop()
    # The fresh authz gets exactly the environment the stack gave its own, on its own socket and spool.
    env = dict(stack.services["authz"].env)
    run_tag = secrets.token_hex(3)
    inserted = 0
    for count in results.profile.token_counts:
        log(f"snapshot: COPY {count - inserted:,} more tokens (to {count:,} bulk tokens)")
        seconds, results.bulk_note = authzbench.bulk_insert(owner_dsn, run_tag, inserted, count - inserted)
        results.insert_seconds.append(seconds)
        inserted = count
        live = authzbench.live_tokens(owner_dsn)
        log(f"snapshot: starting a fresh authz over {live:,} live tokens")
        measured = authzbench.fresh_authz_load(env, work / f"authz-{count}", check, live)
        results.loads.append(measured)
        log(f"  SERVING after {measured.serving_seconds:.2f} s (snapshot {measured.snapshot_seconds:.2f} s), "
            f"RSS {measured.rss_mib:.0f} MiB, peak {measured.hwm_mib:.0f} MiB")
        if count == results.profile.token_counts[0]:
            governance_phase(results, stack, owner_dsn)


def governance_phase(results: Results, stack: Stack, owner_dsn: str) -> None:
    """Effective access and the register over every live token, through the admin API."""
    assert stack.info is not None
    log("governance: effective access and the register over every live token")
    with httpx.Client(base_url=f"{stack.info.api_url}/api/v1", timeout=120,
                      headers={"Authorization": f"Bearer {stack.info.admin_token}"}) as api:
        results.governance, results.governance_people, results.governance_tokens = governancebench.ask(api, owner_dsn)
    for q in results.governance:
        log(f"  {q.key}: API p50 {q.p50:.0f} ms, max {q.worst:.0f} ms ({q.answer})")
    log("console: its pages over every live token")
    results.console_tokens = consolebench.ask(stack.info.api_url, stack.info.admin_token, consolebench.TOKEN_PAGES)
    for q in results.console_tokens:
        log(f"  {q.key}: p50 {q.p50:.0f} ms, max {q.worst:.0f} ms ({q.answer})")


def audit_ingest_phase(results: Results, stack: Stack, pids: dict[str, int]) -> None:
    """Sustained ingest: the same kind of lines authz ships, over HTTP as the shipper sends them, and
    through the Ingestor in-process; then a resent batch, then verify."""
    assert stack.info is not None
    count = results.profile.ingest_requests
    rng = random.Random(20261122)
    population = auditbench.Population.make(rng)
    token = stack.services["controlplane"].env["KEYWARD_INGEST_TOKEN"]
    url = f"{stack.info.api_url}/api/v1/audit/ingest"
    app_dsn = stack.info.database_url.replace("postgresql+asyncpg://", "postgresql://", 1)
    measured = {"control plane": pids["control plane"], "Postgres": pids["Postgres"]}
    # Start from a quiet store: authz has shipped what the gateway runs spooled, and autovacuum has
    # nothing left to catch up on.
    waited = auditbench.wait_for_drain(stack.data_dir / "spool")
    auditbench.vacuum(stack.info.owner_database_url)
    log(f"audit ingest: spool drained ({waited:.1f} s), audit tables vacuumed")
    last: list[bytes] = []
    for how in ("HTTP", "in-process"):
        lines = auditbench.request_lines(rng, population, count, auditbench.now_utc())
        bodies = auditbench.batches(lines, INGEST_BATCH_LINES)
        log(f"audit ingest ({how}): {count:,} requests, {len(lines):,} lines in {len(bodies)} batches")
        if how == "HTTP":
            run = auditbench.ingest_http(url, token, bodies, INGEST_BATCH_LINES, len(lines), measured, TREES)
        else:
            run = auditbench.ingest_direct(app_dsn, bodies, INGEST_BATCH_LINES, len(lines), measured, TREES,
                                       (stack.data_dir / "secrets" / "audit_signing_key").read_text().strip())
        results.ingest.append(run)
        last = bodies[-1:]
        log(f"  {run.rate:,.0f} records/s; control plane {run.cpu_us('control plane'):.1f} µs/record, "
            f"Postgres {run.cpu_us('Postgres'):.1f} µs/record")
    resent = auditbench.ingest_http(url, token, last, INGEST_BATCH_LINES, 0, measured, TREES)
    results.ingest_resend = (resent.stored, resent.duplicates)
    log(f"  resent the last batch: {resent.stored} stored, {resent.duplicates} duplicates")
    results.ingest_verify = auditbench.verify(stack.info.owner_database_url,
                                              (stack.data_dir / "secrets" / "audit_public_key").read_text().strip())
    for line in results.ingest_verify:
        log(f"  verify: {line}")


def audit_cost_phase(results: Results, stack: Stack, pids: dict[str, int], token: str, wrk: str | None,
                     work: Path, gateway_port: int) -> None:
    """The gateway with the audit shipper shipping, and with it pointed at a closed port (authz still
    spools every line; only shipping and ingest stop): rounds alternate, authz restarts in between."""
    profile = results.profile
    concurrency = profile.audit_cost_concurrency
    authz = stack.services["authz"]
    shipping_url = authz.env["KEYWARD_INGEST_URL"]
    nowhere = f"http://127.0.0.1:{free_port()}/api/v1/audit/ingest"  # nothing listens there
    script = loadgen.write_wrk_script(work / "chat.lua", CHAT_BODY, token) if wrk else None
    path = "/openai/v1/chat/completions"
    cells = {state: HttpCell(concurrency, Target("c", f"full gateway, shipping {state}", gateway_port, path,
                                                 proxy="gateway Envoy", measures_authz=True))
             for state in ("on", "off")}
    results.audit_cost = list(cells.values())
    assert stack.info is not None
    auditbench.vacuum(stack.info.owner_database_url)
    try:
        for round_no in range(1, profile.audit_cost_rounds + 1):
            for state, cell in cells.items():
                authz.env["KEYWARD_INGEST_URL"] = shipping_url if state == "on" else nowhere
                stack.restart("authz")
                if state == "on":
                    # The backlog of an "off" round is shipped first, outside the measurement.
                    auditbench.wait_for_drain(stack.data_dir / "spool")
                measured = dict(pids, authz=authz.process.pid if authz.process else 0)

                def load(seconds: float) -> loadgen.LoadResult:
                    if wrk and script:
                        return loadgen.run_wrk(wrk, script, f"http://127.0.0.1:{gateway_port}{path}", concurrency,
                                               seconds)
                    return loadgen.run_python("127.0.0.1", gateway_port, path, CHAT_BODY, token, concurrency,
                                              seconds)

                load(profile.warmup + 1)
                with procstat.CpuWindow(measured, trees=TREES) as window:
                    result = load(profile.duration)
                assert window.used is not None
                cell.rounds.append(Round(result, window.used, window.machine))
                log(f"audit cost round {round_no}/{profile.audit_cost_rounds}: shipping {state:3s} "
                    f"c={concurrency} {result.rps:8,.0f} req/s, control plane + Postgres "
                    f"{(window.used['control plane'] + window.used['Postgres']) / max(result.requests, 1) * 1e6:.0f}"
                    f" µs/req, errors {result.errors}")
    finally:
        authz.env["KEYWARD_INGEST_URL"] = shipping_url
        stack.restart("authz")


def audit_query_phase(results: Results, stack: Stack, admin: httpx.Client, probe_user: dict) -> None:
    """Millions of synthetic request records in their own partitions, then the auditors' questions."""
    assert stack.info is not None
    rows = results.profile.audit_rows
    log(f"audit queries: generating {rows:,} synthetic requests (and outcomes) over 60 days")
    generated = asyncio.run(auditquery.generate(stack.info.owner_database_url, probe_user["id"], rows=rows,
                                                log=log))
    results.audit_generated = generated
    log("  " + ", ".join(f"{k} {v:.0f} s" for k, v in generated.seconds.items())
        + "; " + ", ".join(f"{k} {v}" for k, v in generated.sizes.items()))
    try:
        results.audit_questions = auditquery.ask(admin, stack.info.owner_database_url, generated)
        for q in results.audit_questions:
            log(f"  {q.key}: API p50 {q.p50:.0f} ms, max {q.worst:.0f} ms ({q.answer})")
        spend_query_phase(results, stack, admin, generated)
    finally:
        asyncio.run(auditquery.drop(stack.info.owner_database_url, generated))


def spend_query_phase(results: Results, stack: Stack, admin: httpx.Client, generated: auditquery.Generated) -> None:
    """``spend_daily`` as ingest would have filled it for the same synthetic requests, then finance's questions."""
    assert stack.info is not None
    log(f"spend queries: filling spend_daily for the same {generated.rows:,} requests")
    spend = asyncio.run(auditquery.generate_spend(stack.info.owner_database_url, generated, log=log))
    results.spend_generated = spend
    log(f"  {spend.rows:,} rows, " + ", ".join(f"{k} {v:.0f} s" for k, v in spend.seconds.items())
        + f"; spend_daily {spend.size}")
    try:
        results.spend_questions = auditquery.ask(admin, stack.info.owner_database_url, generated,
                                                 items=auditquery.spend_questions(generated))
        for q in results.spend_questions:
            log(f"  {q.key}: API p50 {q.p50:.0f} ms, max {q.worst:.0f} ms ({q.answer})")
        log(f"console: the audit log and spend pages over {generated.rows:,} request records")
        results.console_records = consolebench.ask(stack.info.api_url, stack.info.admin_token,
                                                   consolebench.RECORD_PAGES)
        for q in results.console_records:
            log(f"  {q.key}: p50 {q.p50:.0f} ms, max {q.worst:.0f} ms ({q.answer})")
    finally:
        asyncio.run(auditquery.drop_spend(stack.info.owner_database_url, spend))


def limits_phase(results: Results, admin: httpx.Client, team_id: str, token_id: str, authz_address: str,
                 check: authzbench.CheckRequest, authz_pid: int, profile: Profile) -> None:
    """The Check RPC again with a budget on the team and a rate limit on the token, neither reached."""
    log("Check RPC with a budget and a rate limit in force")
    removals = spendbench.limits_on(admin, team_id, token_id)
    try:
        time.sleep(1)  # the NOTIFY reached authz
        results.checks_limited = authzbench.check_rpc(authz_address, check, authz_pid, CHECK_SHAPES,
                                                      profile.check_duration, min(profile.warmup, 2))
        for off, on in zip(results.checks, results.checks_limited, strict=True):
            log(f"  {on.in_flight} in flight: {on.cpu_us_per_check:.0f} µs CPU/Check "
                f"(without limits {off.cpu_us_per_check:.0f})")
    finally:
        for path in removals:
            admin.delete(path)


def overshoot_phase(results: Results, stack: Stack, admin_token: str, minter: Minter, gateway_port: int) -> None:
    """A second gateway replica, a $2 team budget, and a burst through both: what is admitted."""
    assert stack.info is not None
    log("budget overshoot: a second gateway replica, a $2 team budget, 32 clients for 4 s through both")
    second = stack.add_gateway("b")
    with httpx.Client(base_url=f"{stack.info.api_url}/api/v1", timeout=30,
                      headers={"Authorization": f"Bearer {admin_token}"}) as admin:
        team = admin.post("/teams", json={"name": f"bench-budget-{secrets.token_hex(3)}",
                                          "profile_id": (minter.team() or {}).get("profile_id")})
        team.raise_for_status()
        team_id = team.json()["id"]
        user = Minter(admin).user("bench-budget")
        admin.put(f"/teams/{team_id}/members/{user['id']}", json={"role": "member"}).raise_for_status()
        minted = admin.post("/tokens", json={"user_id": user["id"], "team_id": team_id, "name": "budget"})
        minted.raise_for_status()
        model = f"bench-budget-{secrets.token_hex(3)}"
        spendbench.price(admin, model)
        budget = Decimal(2)
        admin.put(f"/budgets/team/{team_id}", json={"amount_usd": str(budget), "posture": "hard"}).raise_for_status()
    time.sleep(1)
    urls = [f"http://127.0.0.1:{gateway_port}", second.gateway_url]
    clients, seconds = 32, 4.0
    statuses, requests = spendbench.burst(urls, minted.json()["token"], model, clients=clients, seconds=seconds)
    admitted = statuses.get(200, 0)

    async def spent() -> tuple[int, Decimal]:
        import asyncpg

        connection = await asyncpg.connect(stack.info.owner_database_url)
        try:
            row = await connection.fetchrow("SELECT COALESCE(sum(requests), 0) AS n, COALESCE(sum(cost_usd), 0) AS c"
                                            " FROM spend_daily WHERE team_id = $1::uuid", team_id)
        finally:
            await connection.close()
        return int(row["n"]), Decimal(row["c"])

    wait_for(lambda: asyncio.run(spent())[0] >= admitted, "the burst's spend to be recorded", timeout=60)
    results.overshoot = spendbench.Overshoot(
        replicas=len(urls), clients=clients, seconds=seconds, budget_usd=budget, requests=requests,
        admitted=admitted, admitted_usd=asyncio.run(spent())[1], sync_seconds=0.25)
    o = results.overshoot
    log(f"  {o.requests} requests ({o.rate_per_replica:.0f}/s per replica), {o.admitted} admitted for "
        f"${o.admitted_usd:.4f} against ${o.budget_usd}: over by ${o.over_usd:.4f}")


# -- main -------------------------------------------------------------------------------------------


def run(profile: Profile, output: Path, keep: bool, force_python: bool, skip_audit_queries: bool = False
        ) -> Results:
    # Imported here, after main() has set the warning filters: pgserver warns at import time.
    from controlplane.stack.runner import Stack, StackSettings

    wrk = None if force_python else loadgen.ensure_wrk(log)
    generator = loadgen.wrk_version(wrk) if wrk else "Python asyncio generator (bench/loadgen.py)"
    results = Results(profile=profile, started=dt.datetime.now(dt.UTC), machine=machine_info(),
                      loadgen=generator)
    work = Path(tempfile.mkdtemp(prefix="keyward-bench-"))
    log(f"work directory {work}; load generator: {results.loadgen}")
    upstream = envoys.EnvoyProcess("upstream", envoys.upstream_config(), work / "upstream",
                                   UPSTREAM_CONCURRENCY)
    plain: envoys.EnvoyProcess | None = None
    stack: Stack | None = None
    try:
        upstream.start()
        upstream_url = f"http://127.0.0.1:{upstream.port}"
        plain_config = envoys.plain_config(work / "plain", upstream_url)
        plain = envoys.EnvoyProcess("plain", plain_config, work / "plain", ENVOY_CONCURRENCY)
        plain.start()
        log("starting the stack (embedded Postgres, migrations, control plane, authz, Envoy)")
        stack = Stack(settings=StackSettings(
            data_dir=work / "stack", gateway_port=free_port(), api_port=free_port(),
            mock_port=free_port(), admin_token=None, database_url=None,
            openai_api_key="bench-dummy-openai-key", anthropic_api_key="bench-dummy-anthropic-key",
            openai_upstream=upstream_url, anthropic_upstream=upstream_url,
            envoy_concurrency=ENVOY_CONCURRENCY,
        ))
        info = stack.start(timeout=120)
        gateway_port = int(info.gateway_url.rsplit(":", 1)[1])
        admin = httpx.Client(base_url=f"{info.api_url}/api/v1",
                             headers={"Authorization": f"Bearer {info.admin_token}"}, timeout=10)
        minter = Minter(admin)
        bench_token = minter.token(minter.user(), "bench-load")
        token = bench_token["token"]

        targets = [
            Target("a", "upstream directly", upstream.port, "/v1/chat/completions", proxy=None),
            Target("b", "plain Envoy", plain.port, "/openai/v1/chat/completions", proxy="plain Envoy"),
            Target("c", "full gateway", gateway_port, "/openai/v1/chat/completions", proxy="gateway Envoy",
                   measures_authz=True),
        ]
        poller = GatewayPoller(gateway_port)
        try:
            wait_for(lambda: poller.status(token) == 200, "the bench PAT to be allowed")
            if poller.status("kw_pat_" + "0" * 36) != 401:
                raise RuntimeError("the gateway did not refuse an unknown token: is ext_authz in the path?")
        finally:
            poller.close()
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
        for target in targets:
            probe = httpx.post(f"http://127.0.0.1:{target.port}{target.path}", content=CHAT_BODY, timeout=5,
                               headers=headers)
            if probe.status_code != 200 or probe.json().get("object") != "chat.completion":
                raise RuntimeError(f"({target.key}) answered {probe.status_code}: {probe.text[:200]}")

        services = stack.services
        pids = {"upstream Envoy": upstream.pid, "plain Envoy": plain.pid,
                "gateway Envoy": services["envoy"].process.pid, "authz": services["authz"].process.pid,
                "control plane": services["controlplane"].process.pid, "Postgres": postmaster_pid(stack)}
        http_phase(results, targets, pids, token, wrk, work)

        check = authzbench.canned_check(token, CHAT_BODY)
        results.check_request_bytes = check.ByteSize()
        authz_address = services["authz"].env["KEYWARD_AUTHZ_ADDRESS"]
        log(f"Check RPC alone: shapes {CHECK_SHAPES} (channels, in flight), {profile.check_duration:g}s each")
        results.checks = authzbench.check_rpc(authz_address, check, pids["authz"], CHECK_SHAPES,
                                              profile.check_duration, min(profile.warmup, 2))
        for c in results.checks:
            log(f"  {c.in_flight} in flight: {c.rps:,.0f} Checks/s, {c.cpu_us_per_check:.0f} µs CPU/Check")
        team = minter.team()
        if team is not None:
            limits_phase(results, admin, team["id"], bench_token["id"], authz_address, check, pids["authz"], profile)

        revocation_phase(results, admin, gateway_port)
        audit_ingest_phase(results, stack, pids)
        audit_cost_phase(results, stack, pids, token, wrk, work, gateway_port)
        # The user whose activity the audit queries ask about: a real user, deprovisioned (an event).
        probe = minter.user("audit-probe")
        admin.patch(f"/users/{probe['id']}", json={"status": "deprovisioned"})
        admin.close()
        overshoot_phase(results, stack, info.admin_token, minter, gateway_port)
        snapshot_phase(results, stack, check, work)
        if skip_audit_queries:
            results.audit_skipped = "skipped (`--skip-audit-queries`)"
        else:
            with httpx.Client(base_url=f"{info.api_url}/api/v1", timeout=300,
                              headers={"Authorization": f"Bearer {info.admin_token}"}) as auditor:
                audit_query_phase(results, stack, auditor, probe)
    finally:
        if stack is not None:
            log("stopping the stack")
            stack.stop()
        if plain is not None:
            plain.stop()
        upstream.stop()
        if keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    results.finished = dt.datetime.now(dt.UTC)
    results.load_average_end = procstat.load_average()
    output.write_text(report.render(results))
    log(f"wrote {output}")
    if results.audit_questions:
        plans = output.with_name("AUDIT_PLANS.md") if output.name == "RESULTS.md" else output.with_suffix(
            ".plans.md")
        plans.write_text(report.render_plans(results))
        log(f"wrote {plans}")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="short measurements, 10k/100k tokens, 20 revocations (for development)")
    parser.add_argument("--output", type=Path, default=BENCH_DIR / "RESULTS.md",
                        help="where to write the report (default: bench/RESULTS.md)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary work directory (logs, configs)")
    parser.add_argument("--python-loadgen", action="store_true",
                        help="use the Python load generator even if wrk is installed")
    parser.add_argument("--skip-audit-queries", action="store_true",
                        help="skip the heaviest phase: millions of synthetic audit records and the queries over them")
    args = parser.parse_args()
    # pgserver resolves a runtime dir through platformdirs, which warns when XDG_RUNTIME_DIR is unset.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    run(QUICK if args.quick else FULL, args.output, args.keep, args.python_loadgen, args.skip_audit_queries)


if __name__ == "__main__":
    main()
