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
7. The figures are compared with the targets and written, with PASS/MISS, to RESULTS.md.

``--quick`` shortens everything for development (about a minute); the full run (the default) takes
about four to five minutes on a 2-core machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import http.client
import json
import os
import platform
import secrets
import shutil
import socket
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import authzbench
import envoys
import httpx
import loadgen
import procstat
import report
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
               token_counts=(100_000, 1_000_000))
QUICK = Profile("quick", duration=3, rounds=1, warmup=1, check_duration=3, revocations=20,
                token_counts=(10_000, 100_000))


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
    user = admin.post("/users", json={"email": f"revoke-{uuid.uuid4().hex[:10]}@example.com"})
    user.raise_for_status()
    minted = []
    for i in range(count):
        reply = admin.post("/tokens", json={"user_id": user.json()["id"], "name": f"revoke-{i}"})
        reply.raise_for_status()
        minted.append(reply.json())
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


# -- main -------------------------------------------------------------------------------------------


def run(profile: Profile, output: Path, keep: bool, force_python: bool) -> Results:
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
            envoy_admin_port=free_port(), mock_port=free_port(), admin_token=None, database_url=None,
            openai_api_key="bench-dummy-openai-key", anthropic_api_key="bench-dummy-anthropic-key",
            openai_upstream=upstream_url, anthropic_upstream=upstream_url,
            envoy_concurrency=ENVOY_CONCURRENCY,
        ))
        info = stack.start(timeout=120)
        gateway_port = int(info.gateway_url.rsplit(":", 1)[1])
        admin = httpx.Client(base_url=f"{info.api_url}/api/v1",
                             headers={"Authorization": f"Bearer {info.admin_token}"}, timeout=10)
        user = admin.post("/users", json={"email": f"bench-{uuid.uuid4().hex[:10]}@example.com"})
        user.raise_for_status()
        minted = admin.post("/tokens", json={"user_id": user.json()["id"], "name": "bench-load"})
        minted.raise_for_status()
        token = minted.json()["token"]

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

        revocation_phase(results, admin, gateway_port)
        admin.close()
        snapshot_phase(results, stack, check, work)
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
    args = parser.parse_args()
    # pgserver resolves a runtime dir through platformdirs, which warns when XDG_RUNTIME_DIR is unset.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    run(QUICK if args.quick else FULL, args.output, args.keep, args.python_loadgen)


if __name__ == "__main__":
    main()
