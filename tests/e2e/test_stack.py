"""The stack under faults: killed children come back, a killed runner takes its children with it, nothing
secret reaches a log, and the provider sees only the gateway's own OpenAI organization and project.

These tests kill things, so they run their own stacks, not the session's ``gateway``: one in this
process (Envoy at ``trace``, organization and project configured), ``keyward up`` itself as a separate
process (SIGKILLed, then stopped with SIGTERM, Ctrl-C's SIGINT and SIGHUP), and a start that fails
half-way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
import yaml

from controlplane.stack.redact import LogFile, Redactor
from controlplane.stack.runner import Stack, StackError, StackSettings
from controlplane.stack.supervisor import Backoff, Service, Supervisor, pid_alive
from tests.e2e.conftest import Gateway, Minted, free_port

pytestmark = pytest.mark.e2e

ORGANIZATION = "org-gatewayOwn123"
PROJECT = "proj_gatewayOwn456"
#: Every child of a stack with mocked providers.
CHILDREN = {"postgres", "mock-provider", "controlplane", "authz", "envoy"}


@dataclass
class Faulty:
    """The in-process stack, and what it reported."""

    gateway: Gateway
    events: list[str] = field(default_factory=list)

    @property
    def stack(self) -> Stack:
        return self.gateway.stack

    def pid(self, name: str) -> int:
        process = self.stack.services[name].process
        assert process is not None
        return process.pid

    def kill(self, name: str) -> int:
        """SIGKILL a child and wait until it is gone; its pid."""
        pid = self.pid(name)
        os.kill(pid, signal.SIGKILL)
        Gateway.wait_until(lambda: not pid_alive(pid), timeout=5, what=f"{name} to die")
        return pid

    def back(self, name: str, old: int, timeout: float = 30) -> None:
        """Wait until the supervisor has restarted ``name`` and it is ready again."""
        service = self.stack.services[name]
        Gateway.wait_until(lambda: service.alive() and self.pid(name) != old and self.stack.ready(name),
                           timeout=timeout, what=f"{name} to come back")
        assert any(event.startswith(f"{name} restarted") for event in self.events), self.events
        stack_log = (self.stack.logs_dir / "stack.log").read_text()
        assert f"{name} stopped unexpectedly (killed by SIGKILL)" in stack_log
        assert f"{name} restarted (pid {self.pid(name)}" in stack_log


@pytest.fixture(scope="module")
def faulty() -> Iterator[Faulty]:
    data_dir = Path(tempfile.mkdtemp(prefix="keyward-e2e-stack-"))
    events: list[str] = []
    settings = StackSettings(
        data_dir=data_dir, gateway_port=free_port(), api_port=free_port(), mock_port=free_port(),
        admin_token=None, openai_api_key=None, anthropic_api_key=None, database_url=None,
        envoy_log_level="trace", envoy_concurrency=1, envoy_drain_seconds=1,
        openai_organization=ORGANIZATION, openai_project=PROJECT,
    )
    stack = Stack(settings=settings, report=events.append)
    info = stack.start(timeout=90)
    gateway = Gateway(stack, info)
    try:
        yield Faulty(gateway, events)
    finally:
        gateway.close()
        stack.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def _headers(record: dict) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for key, value in record["headers"]:
        found.setdefault(key.lower(), []).append(value)
    return found


def _mint(gateway: Gateway, timeout: float) -> Minted:
    """Mint a token and wait (up to ``timeout``) until authz knows it."""
    user = gateway.user()
    team = gateway.team("stack-tests")
    gateway.join(user, team)
    reply = gateway.admin.post("/tokens", json={"user_id": user["id"], "team_id": team["id"], "name": "stack"})
    assert reply.status_code == 201, reply.text
    minted = Minted(user, reply.json())
    gateway.wait_until(lambda: gateway.known(minted.secret), timeout=timeout, what="token to reach authz")
    return minted


def _statuses_until_ok(gateway: Gateway, secret: str, timeout: float = 30) -> list[int]:
    """Ask the gateway every 0.1 s until it answers 200; every status seen."""
    seen: list[int] = []
    deadline = time.monotonic() + timeout
    while not seen or seen[-1] != 200:
        assert time.monotonic() < deadline, f"no 200 within {timeout}s: {seen}"
        try:
            seen.append(gateway.status_of(secret))
        except httpx.TransportError:
            seen.append(0)
        time.sleep(0.1)
    return seen


# -- nothing secret in a log; logs are private ---------------------------------------------------------


def test_log_files_are_private(faulty: Faulty) -> None:
    stack = faulty.stack
    for directory in (stack.logs_dir, stack.run_dir):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    files = [path for path in stack.logs_dir.iterdir() if path.is_file()]
    assert {f"{name}.log" for name in CHILDREN} | {"stack.log", "access.log"} <= {path.name for path in files}
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def _listening_ports(pid: int) -> set[int]:
    """TCP ports process ``pid`` listens on: its sockets' inodes, looked up in /proc/net/tcp{,6}."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def test_envoy_admin_is_a_private_socket(faulty: Faulty) -> None:
    stack = faulty.stack
    socket_path = stack.run_dir / "envoy-admin.sock"
    assert stack.info is not None and stack.info.envoy_admin == f"unix:{socket_path}"
    mode = socket_path.stat().st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    rendered = yaml.safe_load((stack.data_dir / "envoy" / "envoy.yaml").read_text())
    assert rendered["admin"] == {"address": {"pipe": {"path": str(socket_path), "mode": 0o600}}}
    with stack.envoy_admin() as admin:
        assert admin.get("/ready").status_code == 200
    # Envoy listens on the gateway's port and nothing else: no admin port any local process could reach.
    assert _listening_ports(faulty.pid("envoy")) == {stack.settings.gateway_port}


def test_no_credential_reaches_any_log_even_at_trace(faulty: Faulty) -> None:
    gateway = faulty.gateway
    minted = gateway.mint()
    openai_key = "sk-proj-" + secrets.token_urlsafe(30)
    anthropic_key = "sk-ant-api03-" + secrets.token_urlsafe(30)
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    message = {"model": "claude-haiku-4-5", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    replies = [
        gateway.http.post("/openai/v1/chat/completions", json=chat,
                          headers={"Authorization": f"Bearer {minted.secret}", "cookie": f"session={minted.secret}"}),
        # A provider key where a Keyward token belongs (wrong prefix): refused, and still never logged.
        gateway.http.post("/openai/v1/chat/completions", json=chat, headers={"Authorization": f"Bearer {openai_key}"}),
        gateway.http.post("/anthropic/v1/messages", json=message,
                          headers={"x-api-key": minted.secret, "anthropic-version": "2023-06-01"}),
        gateway.http.post("/anthropic/v1/messages", json=message,
                          headers={"x-api-key": anthropic_key, "anthropic-version": "2023-06-01"}),
    ]
    assert [reply.status_code for reply in replies] == [200, 401, 200, 401]
    last = replies[-1].headers["x-request-id"]
    envoy_log = faulty.stack.logs_dir / "envoy.log"

    def settled() -> bool:
        size = envoy_log.stat().st_size
        time.sleep(0.5)
        return last in envoy_log.read_text(errors="replace") and envoy_log.stat().st_size == size

    gateway.wait_until(settled, timeout=15, what="Envoy's trace of the requests")
    gateway.wait_until(lambda: last in json.dumps(gateway.access_log()), timeout=5, what="the access log")

    stack = faulty.stack
    forbidden = {
        "the PAT": minted.secret,
        "a client's OpenAI key": openai_key,
        "a client's Anthropic key": anthropic_key,
        "the OpenAI provider key": gateway.provider_keys["openai"],
        "the Anthropic provider key": gateway.provider_keys["anthropic"],
        "the ingest token": stack.services["authz"].env["KEYWARD_INGEST_TOKEN"],
        "the admin token": gateway.info.admin_token,
        "the token hash key": stack.services["authz"].env["KEYWARD_TOKEN_HASH_KEY"],
    }
    logs = [path for path in stack.logs_dir.rglob("*") if path.is_file()]
    assert len(logs) >= len(CHILDREN) + 2
    for path in logs:
        text = path.read_text(errors="replace")
        for what, value in forbidden.items():
            assert value not in text, f"{what} is in {path.name}"
    # The premise holds: Envoy traced these requests' headers, and the redactor rewrote them.
    trace = envoy_log.read_text(errors="replace")
    assert "'authorization', '[REDACTED]'" in trace
    assert "'x-api-key', '[REDACTED]'" in trace
    assert replies[0].headers["x-request-id"] in trace


# -- the gateway's own OpenAI organization and project ---------------------------------------------------


def test_openai_gets_the_gateways_organization_and_project_never_the_clients(faulty: Faulty) -> None:
    gateway = faulty.gateway
    minted = gateway.mint()
    gateway.forget_received()
    reply = gateway.http.post(
        "/openai/v1/chat/completions",
        headers={"Authorization": f"Bearer {minted.secret}", "OpenAI-Organization": "org-client",
                 "OpenAI-Project": "proj_client"},
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert reply.status_code == 200, reply.text
    reply = gateway.http.post(
        "/anthropic/v1/messages",
        headers={"x-api-key": minted.secret, "anthropic-version": "2023-06-01", "openai-organization": "org-client"},
        json={"model": "claude-haiku-4-5", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]},
    )
    assert reply.status_code == 200, reply.text
    openai_call, anthropic_call = gateway.received()
    assert _headers(openai_call)["openai-organization"] == [ORGANIZATION]
    assert _headers(openai_call)["openai-project"] == [PROJECT]
    assert "openai-organization" not in _headers(anthropic_call)
    assert "openai-project" not in _headers(anthropic_call)


# -- supervised children -----------------------------------------------------------------------------


def test_authz_killed_means_503_until_it_is_back(faulty: Faulty) -> None:
    gateway = faulty.gateway
    minted = gateway.mint()
    assert gateway.status_of(minted.secret) == 200
    gateway.forget_received()
    old = faulty.kill("authz")
    seen = _statuses_until_ok(gateway, minted.secret)
    assert seen[0] == 503 and set(seen[:-1]) == {503}, seen
    assert len(gateway.received()) == 1, "a request went to the provider without a decision"
    faulty.back("authz", old)


def test_control_plane_killed_leaves_the_gateway_serving_and_comes_back(faulty: Faulty) -> None:
    gateway = faulty.gateway
    minted = gateway.mint()
    old = faulty.kill("controlplane")
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{gateway.info.api_url}/readyz", timeout=2)
    assert gateway.status_of(minted.secret) == 200
    faulty.back("controlplane", old)
    assert gateway.admin.get("/users").status_code == 200


def test_envoy_killed_comes_back(faulty: Faulty) -> None:
    gateway = faulty.gateway
    minted = gateway.mint()
    old = faulty.kill("envoy")
    seen = _statuses_until_ok(gateway, minted.secret)
    assert 0 in seen, "the gateway answered while Envoy was dead"
    faulty.back("envoy", old)


def test_postgres_killed_comes_back_and_the_services_reconnect(faulty: Faulty) -> None:
    gateway = faulty.gateway
    minted = gateway.mint()
    old = faulty.kill("postgres")
    assert gateway.status_of(minted.secret) == 200  # authz decides from memory
    faulty.back("postgres", old)
    gateway.wait_until(lambda: httpx.get(f"{gateway.info.api_url}/readyz", timeout=2).status_code == 200,
                       timeout=15, what="the control plane to reach Postgres again")
    assert gateway.admin.get("/users").status_code == 200
    # authz's listener reconnected: a token minted now reaches it, and a revocation too.
    fresh = _mint(gateway, timeout=30)
    assert gateway.status_of(fresh.secret) == 200
    gateway.revoke(fresh.id)
    gateway.wait_until(lambda: gateway.status_of(fresh.secret) == 401, timeout=5, what="the revocation")


def test_a_child_stopped_on_purpose_stays_down_until_restarted(faulty: Faulty) -> None:
    mock = faulty.stack.services["mock-provider"]
    mock.stop()
    time.sleep(2)  # four times the first back-off
    assert not mock.alive() and not mock.pidfile.exists()
    faulty.stack.restart("mock-provider")
    assert mock.alive() and faulty.stack.ready("mock-provider")
    assert not any(event.startswith("mock-provider") for event in faulty.events), faulty.events


def test_a_crash_looping_child_is_restarted_with_growing_delays(tmp_path: Path) -> None:
    events: list[tuple[float, str]] = []
    service = Service("crasher", [sys.executable, "-c", "import sys; print('up', flush=True); sys.exit(3)"],
                      dict(os.environ), LogFile(tmp_path / "crasher.log", Redactor()), tmp_path / "crasher.pid")
    supervisor = Supervisor([service], lambda message: events.append((time.monotonic(), message)), interval=0.02)
    service.start()
    supervisor.start()
    try:
        Gateway.wait_until(lambda: service.restarts >= 3, timeout=10, what="three restarts")
    finally:
        supervisor.pause()
        service.stop()
        supervisor.finish()
        service.flush_log()
    exits = [(at, message) for at, message in events if "stopped unexpectedly (exit status 3)" in message]
    restarts = [at for at, message in events if message.startswith("crasher restarted")]
    assert [message.split("restarting in ")[1].split(" s")[0] for _, message in exits[:3]] == ["0.5", "1", "2"]
    for (exited, _), restarted, delay in zip(exits, restarts, (0.5, 1, 2), strict=False):
        assert delay <= restarted - exited < delay + 0.5
    assert (tmp_path / "crasher.log").read_text().count("up\n") >= 3


def test_backoff_doubles_to_its_cap_and_resets_after_a_stable_run() -> None:
    backoff = Backoff(initial=0.5, cap=10, stable=30)
    assert [backoff.next_delay(uptime=1) for _ in range(7)] == [0.5, 1, 2, 4, 8, 10, 10]
    assert backoff.next_delay(uptime=31) == 0.5
    assert backoff.next_delay(uptime=1) == 1


# -- the runner itself: `keyward up` as a process ------------------------------------------------------


def _survivors(groups: set[int]) -> list[str]:
    """Live processes in any of these process groups (each child leads its own; Postgres's backends are in
    the postmaster's)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        if fields[0] not in ("Z", "X") and int(fields[2]) in groups:
            found.append(f"{entry.name} {raw[raw.index('(') : raw.rindex(')') + 1]} state {fields[0]}")
    return found


def _wait_all_gone(groups: set[int], timeout: float = 30) -> None:
    """Every process of these groups exits within ``timeout`` (each child shuts down cleanly on its
    death signal: authz, for one, flushes its audit spool)."""
    deadline = time.monotonic() + timeout
    while left := _survivors(groups):
        assert time.monotonic() < deadline, f"alive {timeout}s after the runner was killed: {left}"
        time.sleep(0.1)


class Runner:
    """``keyward up`` in its own process group (in this session), on a data directory and ports of its own."""

    def __init__(self, data_dir: Path, ports: dict[str, int]) -> None:
        self.data_dir = data_dir
        self.ports = ports
        self.output = data_dir.parent / f"{data_dir.name}-{time.monotonic_ns()}.out"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 90) -> None:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("KEYWARD_", "MOCK_")) and k not in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY",
                                                                       "DATABASE_URL")}
        env.update({f"KEYWARD_{name.upper()}_PORT": str(port) for name, port in self.ports.items()})
        env.update(KEYWARD_DATA_DIR=str(self.data_dir), KEYWARD_ENVOY_CONCURRENCY="1",
                   KEYWARD_ENVOY_DRAIN_SECONDS="1", COLUMNS="200")
        with self.output.open("wb") as out:
            self.process = subprocess.Popen([sys.executable, "-m", "controlplane.cli", "up"], env=env, stdout=out,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            process_group=0)
        deadline = time.monotonic() + timeout
        while "Keyward is up." not in self.text():
            assert self.process.poll() is None, f"keyward up exited:\n{self.text()}"
            assert time.monotonic() < deadline, f"keyward up not up after {timeout}s:\n{self.text()}"
            time.sleep(0.1)

    def text(self) -> str:
        return self.output.read_text(errors="replace") if self.output.exists() else ""

    def children(self) -> dict[str, int]:
        return {path.stem: json.loads(path.read_text())["pid"] for path in (self.data_dir / "run").glob("*.pid")}

    def gateway_answers(self) -> bool:
        try:
            reply = httpx.get(f"http://127.0.0.1:{self.ports['gateway']}/openai/v1/models", timeout=2)
        except httpx.HTTPError:
            return False
        return reply.status_code == 401  # authz refused the missing token: the whole path is up

    def signal(self, sig: int) -> int | None:
        assert self.process is not None
        self.process.send_signal(sig)
        try:
            return self.process.wait(30)
        finally:
            if self.process.poll() is None:
                self.process.kill()


@pytest.fixture(scope="module")
def runner_dir() -> Iterator[Path]:
    data_dir = Path(tempfile.mkdtemp(prefix="keyward-e2e-runner-"))
    yield data_dir / "data"
    for pidfile in (data_dir / "data" / "run").glob("*.pid"):
        # Whatever a failed test left behind.
        pid = json.loads(pidfile.read_text())["pid"]
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
    shutil.rmtree(data_dir, ignore_errors=True)


def _ports() -> dict[str, int]:
    return {"gateway": free_port(), "api": free_port(), "mock": free_port()}


def test_killing_the_runner_leaves_no_child_alive(runner_dir: Path) -> None:
    runner = Runner(runner_dir, _ports())
    runner.start()
    children = runner.children()
    assert set(children) == CHILDREN and runner.gateway_answers()
    assert runner.signal(signal.SIGKILL) == -signal.SIGKILL
    _wait_all_gone(set(children.values()))


def test_a_start_after_a_killed_runner_stops_its_leftovers_then_a_sigterm_stops_all_in_order(
        runner_dir: Path) -> None:
    ports = _ports()
    first = Runner(runner_dir, ports)
    first.start()
    stale = first.children()
    # A hung Envoy cannot act on its death signal, and keeps the gateway port after the runner is killed.
    # SIGSTOP plays the hung process. Alone it would not last: the kernel sends SIGHUP and SIGCONT to a
    # process group that is orphaned while one of its members is stopped (POSIX), which is what the
    # runner's death does to Envoy's group. A sleeper of this session in Envoy's group keeps it attached.
    anchor = subprocess.Popen(["sleep", "120"], process_group=stale["envoy"])
    try:
        os.kill(stale["envoy"], signal.SIGSTOP)
        first.signal(signal.SIGKILL)
        _wait_all_gone({pid for name, pid in stale.items() if name != "envoy"})
        assert pid_alive(stale["envoy"])

        second = Runner(runner_dir, ports)  # the same ports: the leftover Envoy holds the gateway's
        second.start()
        assert not pid_alive(stale["envoy"])
    finally:
        anchor.kill()
        anchor.wait()
    assert f"stopping envoy (pid {stale['envoy']}), left running by an earlier run" in second.text()
    children = second.children()
    assert set(children) == CHILDREN and stale["envoy"] not in children.values()
    assert second.gateway_answers()

    assert second.signal(signal.SIGTERM) == 0, second.text()
    assert not _survivors(set(children.values()))
    assert list((runner_dir / "run").glob("*.pid")) == []
    stack_log = [json.loads(line)["event"] for line in (runner_dir / "logs" / "stack.log").read_text().splitlines()]
    order = [event.split()[0] for event in stack_log if event.split()[1:2] in (["stopped"], ["draining"])]
    assert order[-6:] == ["envoy", "envoy", "authz", "controlplane", "mock-provider", "postgres"], stack_log[-8:]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP], ids=["ctrl-c", "sighup"])
def test_ctrl_c_and_sighup_stop_every_child(runner_dir: Path, sig: int) -> None:
    runner = Runner(runner_dir, _ports())
    runner.start()
    children = runner.children()
    assert set(children) == CHILDREN
    assert runner.signal(sig) == 0, runner.text()
    assert f"{signal.Signals(sig).name}: stopping" in runner.text()
    assert not _survivors(set(children.values()))
    assert list((runner_dir / "run").glob("*.pid")) == []


def test_a_failed_start_stops_what_it_had_started() -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="keyward-e2e-failed-"))
    try:
        # authz cannot bind its socket: Postgres, the mock provider and the control plane are up by then.
        settings = StackSettings(
            data_dir=data_dir, gateway_port=free_port(), api_port=free_port(), mock_port=free_port(),
            admin_token=None, openai_api_key=None, anthropic_api_key=None, database_url=None,
            authz_address=f"unix:{data_dir / 'no-such-dir' / 'authz.sock'}",
        )
        stack = Stack(settings=settings, report=lambda _message: None)
        with pytest.raises(StackError, match="authz exited during start-up"):
            stack.start(timeout=60)
        started = {name: service.process.pid for name, service in stack.services.items() if service.process}
        assert {"postgres", "mock-provider", "controlplane", "authz"} <= set(started)
        assert not _survivors(set(started.values()))
        assert list((data_dir / "run").glob("*.pid")) == []
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def test_a_database_an_earlier_version_left_trusting_is_moved_to_passwords() -> None:
    # Earlier runners created the cluster with "trust": any local user could log in as the owner.
    from controlplane.stack.embedded_pg import _bin, _system_user

    data_dir = Path(tempfile.mkdtemp(prefix="keyward-e2e-trust-"))
    pgdata = data_dir / "pgdata"
    try:
        pgdata.mkdir()
        user = _system_user() if os.geteuid() == 0 else None
        if user is not None:
            for path in (data_dir, pgdata):
                os.chown(path, user.pw_uid, user.pw_gid)
            data_dir.chmod(0o755)
        subprocess.run([_bin("initdb"), "-D", str(pgdata), "--auth=trust", "-U", "postgres"], check=True,
                       capture_output=True, user=user.pw_uid if user else None, group=user.pw_gid if user else None)
        settings = StackSettings(
            data_dir=data_dir, gateway_port=free_port(), api_port=free_port(), mock_port=free_port(),
            admin_token=None, openai_api_key=None, anthropic_api_key=None, database_url=None,
        )
        stack = Stack(settings=settings, report=lambda _message: None)
        info = stack.start(timeout=90)
        try:
            assert "trust" not in (pgdata / "pg_hba.conf").read_text().split("#", 1)[-1].split()
            gateway = Gateway(stack, info)
            assert gateway.admin.get("/users").status_code == 200  # the services log in with passwords
            gateway.close()
            parts = urlsplit(info.owner_database_url)
            passwordless = urlunsplit(parts._replace(netloc=f"postgres@{parts.netloc.rpartition('@')[2]}"))

            async def connect() -> None:
                connection = await asyncpg.connect(passwordless)
                await connection.close()

            with pytest.raises((asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError)):
                asyncio.run(connect())
        finally:
            stack.stop()
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
