"""The real stack for end-to-end tests: embedded Postgres, control plane, authz, Envoy, mock provider.

Started once per session on free ports in a temporary directory, with the same runner ``make up``
uses. The mock provider is the only fake. The control plane signs users in against a real OpenID
Connect provider (tests/e2e/oidc, started first) when Node.js is installed.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from authz.upstreams import key_variable
from controlplane.stack.runner import Stack, StackInfo, StackSettings
from tests.e2e.oidc.harness import OidcProvider, node_problem

STREAM_INTERVAL = 0.15


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Minted:
    user: dict
    token: dict

    @property
    def secret(self) -> str:
        return self.token["token"]

    @property
    def id(self) -> str:
        return self.token["id"]


class Gateway:
    """What a test needs of the running stack, in one place."""

    def __init__(self, stack: Stack, info: StackInfo) -> None:
        self.stack = stack
        self.info = info
        self.url = info.gateway_url
        self.openai_base = f"{info.gateway_url}/openai/v1"
        self.anthropic_base = f"{info.gateway_url}/anthropic"
        self.admin = httpx.Client(
            base_url=f"{info.api_url}/api/v1", headers={"Authorization": f"Bearer {info.admin_token}"}, timeout=10
        )
        self.http = httpx.Client(base_url=info.gateway_url, timeout=10)
        assert info.mock_url is not None
        self.mock = httpx.Client(base_url=info.mock_url, timeout=10)
        self._open_profile: dict | None = None
        self._teams: dict[str, dict] = {}

    def close(self) -> None:
        for client in (self.admin, self.http, self.mock):
            client.close()

    @property
    def audit_public_key(self) -> str:
        """The control plane's audit public key, which ``make up`` publishes beside its secrets."""
        return (self.stack.data_dir / "secrets" / "audit_public_key").read_text().strip()

    # -- identities -------------------------------------------------------------------------------

    def user(self, **fields: object) -> dict:
        body = {"email": f"u-{uuid.uuid4().hex[:10]}@example.com", **fields}
        reply = self.admin.post("/users", json=body)
        assert reply.status_code == 201, reply.text
        return reply.json()

    def profile(self) -> dict:
        """A permissive profile (every model, every environment) for tests about other things."""
        if self._open_profile is None:
            reply = self.admin.post("/profiles", json={
                "name": f"e2e-open-{uuid.uuid4().hex[:6]}", "catalog": [{"provider": "*", "pattern": "*"}],
                "environments": ["dev", "staging", "prod", "ci"], "default_token_days": 30, "max_token_days": 365})
            assert reply.status_code == 201, reply.text
            self._open_profile = reply.json()
        return self._open_profile

    def team(self, name: str | None = None, profile_id: str | None = None) -> dict:
        name = name or f"team-{uuid.uuid4().hex[:8]}"
        if name not in self._teams:
            reply = self.admin.post("/teams", json={"name": name, "profile_id": profile_id or self.profile()["id"]})
            assert reply.status_code == 201, reply.text
            self._teams[name] = reply.json()
        return self._teams[name]

    def join(self, user: dict, team: dict, role: str = "member") -> None:
        reply = self.admin.put(f"/teams/{team['id']}/members/{user['id']}", json={"role": role})
        assert reply.status_code == 200, reply.text

    def mint(self, user: dict | None = None, team: str | dict | None = None, **fields: object) -> Minted:
        """Mint a token for ``user`` (a new one by default) acting for ``team`` (by name or as returned
        by :meth:`team`; the shared default team otherwise), joining the user to the team first."""
        user = user or self.user()
        team = team if isinstance(team, dict) else self.team(team or "e2e-default")
        self.join(user, team)
        reply = self.admin.post("/tokens", json={"user_id": user["id"], "team_id": team["id"], "name": "test",
                                                 **fields})
        assert reply.status_code == 201, reply.text
        minted = Minted(user, reply.json())
        self.wait_until(lambda: self.known(minted.secret), what="token to reach authz")
        return minted

    def known(self, secret: str) -> bool:
        """Whether authz knows the token, without using it: an unlisted endpoint is refused after
        authentication (404) and counts as no use, so last_used_at and the provider see nothing."""
        reply = self.http.get("/openai/v1/keyward-probe", headers={"Authorization": f"Bearer {secret}"})
        return reply.status_code == 404

    def revoke(self, token_id: str, reason: str = "test") -> dict:
        reply = self.admin.post(f"/tokens/{token_id}/revoke", json={"reason": reason})
        assert reply.status_code == 200, reply.text
        return reply.json()

    # -- gateway ----------------------------------------------------------------------------------

    def chat(self, secret: str | None, model: str = "gpt-4o-mini", **kwargs: object) -> httpx.Response:
        headers = {"Authorization": f"Bearer {secret}"} if secret is not None else {}
        return self.http.post(
            "/openai/v1/chat/completions",
            headers=headers,
            json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
            **kwargs,
        )

    def status_of(self, secret: str) -> int:
        return self.chat(secret).status_code

    # -- provider view ----------------------------------------------------------------------------

    @property
    def provider_keys(self) -> dict[str, str]:
        env = self.stack.services["mock-provider"].env
        return {"openai": env["MOCK_OPENAI_KEY"], "anthropic": env["MOCK_ANTHROPIC_KEY"]}

    def received(self) -> list[dict]:
        return self.mock.get("/__mock__/requests").json()

    def forget_received(self) -> None:
        self.mock.delete("/__mock__/requests")

    def access_log(self) -> list[dict]:
        import json

        path: Path = self.info.access_log
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []

    def log_record(self, request_id: str, timeout: float = 5) -> dict:
        found: list[dict] = []

        def seen() -> bool:
            found[:] = [r for r in self.access_log() if r.get("request_id") == request_id]
            return bool(found)

        self.wait_until(seen, timeout=timeout, what=f"access-log record {request_id}")
        return found[0]

    @staticmethod
    def wait_until(condition: Callable[[], bool], *, timeout: float = 5, what: str = "condition") -> float:
        started = time.monotonic()
        while not condition():
            if time.monotonic() - started > timeout:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            time.sleep(0.01)
        return time.monotonic() - started


@pytest.fixture(scope="session")
def oidc_provider() -> Iterator[OidcProvider | None]:
    """The test OpenID Connect provider; None without Node.js (test_oidc.py then fails, saying why)."""
    if node_problem():
        yield None
        return
    provider = OidcProvider.start()
    try:
        yield provider
    finally:
        provider.stop()


@pytest.fixture(scope="session")
def gateway(oidc_provider: OidcProvider | None) -> Iterator[Gateway]:
    # Not pytest's tmp_path: its directories are root-only, and Postgres runs as its own user.
    data_dir = Path(tempfile.mkdtemp(prefix="keyward-e2e-"))
    api_port = free_port()
    oidc = oidc_provider.stack_settings(f"http://127.0.0.1:{api_port}") if oidc_provider else {}
    settings = StackSettings(
        data_dir=data_dir,
        gateway_port=free_port(),
        api_port=api_port,
        mock_port=free_port(),
        admin_token=None,
        openai_api_key=None,
        anthropic_api_key=None,
        database_url=None,
        mock_stream_interval=STREAM_INTERVAL,
        lifecycle_interval_seconds=0.5,
        budget_alert_interval_seconds=0.5,
        envoy_concurrency=2,
        **oidc,
    )
    stack = Stack(settings=settings)
    info = stack.start(timeout=90)
    try:
        gateway = Gateway(stack, info)
        yield gateway
        gateway.close()
    finally:
        stack.stop()
        if not os.environ.get("KEYWARD_TEST_KEEP_DATA"):  # set it to read the stack's logs after a run
            shutil.rmtree(data_dir, ignore_errors=True)


# -- a second stack with every kind of upstream and two real MCP servers ---------------------------

#: The operator's upstreams of the provider stack, every one served by the mock provider (no key is set).
MOCKED_UPSTREAMS = [
    {"name": "azure", "kind": "azure", "url": "https://keyward-test.openai.azure.com"},
    {"name": "gemini", "kind": "gemini", "url": "https://generativelanguage.googleapis.com"},
    {"name": "gemini-compat", "kind": "gemini-openai", "url": "https://generativelanguage.googleapis.com"},
    {"name": "bedrock", "kind": "bedrock", "url": "https://bedrock-runtime.us-east-1.amazonaws.com",
     "region": "us-east-1"},
    {"name": "mistral", "kind": "mistral", "url": "https://api.mistral.ai"},
    {"name": "vllm", "kind": "openai-compatible", "url": "http://vllm.internal:8000"},
]
#: The MCP servers behind the provider stack (real ones: tests/e2e/mcp_server.py).
MCP_SERVERS = ("docs", "code")


@dataclass
class McpServer:
    name: str
    key: str
    port: int
    process: subprocess.Popen

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def received(self) -> list[dict]:
        return httpx.get(f"http://127.0.0.1:{self.port}/__mcp__/requests", timeout=5).json()

    def forget_received(self) -> None:
        httpx.delete(f"http://127.0.0.1:{self.port}/__mcp__/requests", timeout=5)


class ProviderGateway(Gateway):
    """The provider stack: :class:`Gateway`'s helpers, plus its MCP servers and every upstream's mock key."""

    def __init__(self, stack: Stack, info: StackInfo, mcp: dict[str, McpServer]) -> None:
        super().__init__(stack, info)
        self.mcp = mcp

    @property
    def upstream_keys(self) -> dict[str, str]:
        """Every key Envoy injects: the mock's, by upstream name, and the MCP servers'."""
        env = self.stack.services["mock-provider"].env
        mocked = {name: entry["key"] for name, entry in json.loads(env["MOCK_UPSTREAMS"]).items()}
        return {**self.provider_keys, **mocked, **{name: server.key for name, server in self.mcp.items()}}


def _start_mcp_server(name: str) -> McpServer:
    key = "mcp-" + uuid.uuid4().hex
    process = subprocess.Popen([sys.executable, "-m", "tests.e2e.mcp_server", "--port", "0", "--key", key,
                                "--name", name], stdout=subprocess.PIPE, text=True,
                               cwd=Path(__file__).resolve().parents[2])
    assert process.stdout is not None
    port = int(process.stdout.readline().strip())
    return McpServer(name, key, port, process)


@pytest.fixture(scope="session")
def providers() -> Iterator[ProviderGateway]:
    """A stack whose gateway serves every kind of upstream (mocked) and two MCP servers: started on first
    use, once per session, beside the main one."""
    servers = {name: _start_mcp_server(name) for name in MCP_SERVERS}
    data_dir = Path(tempfile.mkdtemp(prefix="keyward-e2e-providers-"))
    upstreams = MOCKED_UPSTREAMS + [{"name": s.name, "kind": "mcp", "url": s.url} for s in servers.values()]
    keys = {key_variable(s.name): s.key for s in servers.values()}
    settings = StackSettings(
        data_dir=data_dir, gateway_port=free_port(), api_port=free_port(), mock_port=free_port(), admin_token=None,
        openai_api_key=None, anthropic_api_key=None, database_url=None, mock_stream_interval=0.02,
        envoy_concurrency=1, upstreams=json.dumps(upstreams))
    stack = Stack(settings=settings)
    os.environ.update(keys)  # the runner reads each upstream's key from its environment, as make up does
    try:
        info = stack.start(timeout=90)
    finally:
        for variable in keys:
            os.environ.pop(variable, None)
    try:
        gateway = ProviderGateway(stack, info, servers)
        yield gateway
        gateway.close()
    finally:
        stack.stop()
        for server in servers.values():
            server.process.terminate()
            server.process.wait(timeout=10)
            if server.process.stdout is not None:
                server.process.stdout.close()
        if not os.environ.get("KEYWARD_TEST_KEEP_DATA"):
            shutil.rmtree(data_dir, ignore_errors=True)
