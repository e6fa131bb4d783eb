"""The test MCP server (tests/e2e/mcp_server.py), in a process of its own, driven by the official SDK's
Streamable HTTP client exactly as a client behind the gateway will drive it: the handshake, the tools, the
key it insists on, and the request log the e2e tests read. What it recorded of the real client's traffic
is also what :func:`authz.mcp.read_rpc` must read without a refusal."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
import httpx2
import pytest
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import TextContent

from authz.mcp import MessageKind, read_rpc
from tests.e2e.mcp_server import LOG_PATH, TOOLS

KEY = "mcp-server-key-0123456789"
NAME = "docs"
PAT = "kw_live_notforthisserver"


@dataclass(frozen=True)
class Server:
    base: str

    @property
    def url(self) -> str:
        return f"{self.base}/mcp"

    def requests(self) -> list[dict]:
        response = httpx.get(f"{self.base}{LOG_PATH}", timeout=5)
        assert response.status_code == 200
        return response.json()

    def clear(self) -> None:
        assert httpx.delete(f"{self.base}{LOG_PATH}", timeout=5).status_code == 204


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.e2e.mcp_server", "--port", "0", "--key", KEY, "--name", NAME],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # the port, once the socket listens
        assert line.strip().isdigit(), f"the server did not start (exit code {process.poll()})"
        yield Server(f"http://127.0.0.1:{int(line)}")
    finally:
        if process.stdout is not None:
            process.stdout.close()
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def log(server: Server) -> Server:
    server.clear()
    return server


@asynccontextmanager
async def session(url: str, headers: dict[str, str]) -> AsyncIterator[ClientSession]:
    async with (
        httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(10)) as http,
        streamable_http_client(url, http_client=http) as (read, write),
        ClientSession(read, write, read_timeout_seconds=10) as client,
    ):
        yield client


def _text(result: object) -> str:
    content = getattr(result, "content", None)
    assert content and isinstance(content[0], TextContent), result
    return content[0].text


def _header(entry: dict, name: str) -> list[str]:
    return [value for key, value in entry["headers"] if key.lower() == name]


async def test_initialize_list_and_call_tools(log: Server) -> None:
    async with session(log.url, {"Authorization": f"Bearer {KEY}"}) as client:
        info = await client.initialize()
        assert info.server_info.name == NAME
        listed = await client.list_tools()
        assert sorted(tool.name for tool in listed.tools) == sorted(TOOLS)
        schemas = {tool.name: tool.input_schema for tool in listed.tools}
        assert schemas["delete_repo"]["required"] == ["name"]
        assert schemas["add"]["properties"]["a"]["type"] == "integer"

        assert _text(await client.call_tool("search_docs", {"query": "envoy"})) == "docs: docs matching 'envoy'"
        assert _text(await client.call_tool("search_code", {"query": "ext_authz"})) == \
            "docs: code matching 'ext_authz'"
        assert _text(await client.call_tool("delete_repo", {"name": "keyward"})) == "docs: deleted keyward"
        added = await client.call_tool("add", {"a": 2, "b": 40})
        assert getattr(added, "structured_content", None) == {"result": 42}
        assert not getattr(added, "is_error", True)

        # Arguments the schema refuses come back as a tool error, not a protocol error.
        wrong = await client.call_tool("add", {"a": "two", "b": 40})
        assert getattr(wrong, "is_error", False)

    posts = [entry for entry in log.requests() if entry["method"] == "POST"]
    methods = [json.loads(entry["body"])["method"] for entry in posts]
    assert methods[:3] == ["initialize", "notifications/initialized", "tools/list"]
    assert methods.count("tools/call") == 5
    assert all(entry["status"] in (200, 202) for entry in posts)
    assert all(_header(entry, "authorization") == [f"Bearer {KEY}"] for entry in log.requests())


async def test_the_real_clients_bodies_read_cleanly(log: Server) -> None:
    async with session(log.url, {"Authorization": f"Bearer {KEY}"}) as client:
        await client.initialize()
        await client.call_tool("delete_repo", {"name": "keyward"})
    posts = [entry for entry in log.requests() if entry["method"] == "POST"]
    reads = [read_rpc(entry["body"].encode(), _header(entry, "content-type")[0]) for entry in posts]
    assert all(read.refusal is None and len(read.messages) == 1 for read in reads)
    by_method = {read.messages[0].method: read for read in reads}
    assert by_method["initialize"].messages[0].kind is MessageKind.REQUEST
    assert by_method["notifications/initialized"].messages[0].kind is MessageKind.NOTIFICATION
    call = by_method["tools/call"]
    assert call.tools == ("delete_repo",) and call.messages[0].kind is MessageKind.REQUEST
    assert call.id == json.loads(posts[reads.index(call)]["body"])["id"] is not None


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": f"Bearer {PAT}"},
        {"Authorization": KEY},  # the key without the scheme
        {"Authorization": f"bearer {KEY}x"},
    ],
    ids=["no-key", "client-pat", "no-scheme", "wrong-key"],
)
async def test_a_client_without_the_key_is_refused(log: Server, headers: dict[str, str]) -> None:
    async with session(log.url, headers) as client:
        with pytest.raises(MCPError):
            await client.initialize()
    recorded = log.requests()
    assert recorded, "the refused request is still recorded"
    assert all(entry["status"] == 401 for entry in recorded)
    assert [json.loads(entry["body"])["method"] for entry in recorded] == ["initialize"]


def test_401_answers_like_the_sdks_bearer_auth(log: Server) -> None:
    response = httpx.post(log.url, headers={"Authorization": f"Bearer {PAT}"}, timeout=5,
                          json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer ")
    assert response.json()["error"] == "invalid_token"


def test_a_second_authorization_header_is_refused(log: Server) -> None:
    """Envoy must replace the client's Authorization header, not add the key beside it."""
    response = httpx.post(log.url, timeout=5,
                          headers=[("Authorization", f"Bearer {PAT}"), ("Authorization", f"Bearer {KEY}"),
                                   ("Content-Type", "application/json"),
                                   ("Accept", "application/json, text/event-stream")],
                          content=b'{"jsonrpc": "2.0", "id": 1, "method": "tools/list"}')
    assert response.status_code == 401
    [entry] = log.requests()
    assert _header(entry, "authorization") == [f"Bearer {PAT}", f"Bearer {KEY}"]


async def test_any_host_header_is_accepted(log: Server) -> None:
    """The gateway rewrites Host to the upstream's host:port and may add an Origin: no DNS-rebinding check."""
    headers = {"Authorization": f"Bearer {KEY}", "Host": "mcp-docs.internal:8443", "Origin": "https://elsewhere"}
    async with session(log.url, headers) as client:
        await client.initialize()
        assert _text(await client.call_tool("search_docs", {"query": "x"})) == "docs: docs matching 'x'"
    assert {_header(entry, "host")[0] for entry in log.requests()} == {"mcp-docs.internal:8443"}


def test_the_request_log(server: Server) -> None:
    server.clear()
    assert server.requests() == []
    body = b'{"jsonrpc": "2.0", "id": "a", "method": "ping"}'
    httpx.post(f"{server.url}?probe=1", content=body, timeout=5,
               headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json",
                        "Accept": "application/json, text/event-stream", "X-Probe": "yes"})
    [entry] = server.requests()
    assert entry["method"] == "POST" and entry["path"] == "/mcp" and entry["query"] == "probe=1"
    assert entry["body"] == body.decode()
    assert _header(entry, "x-probe") == ["yes"]
    # No session: the SDK refuses a ping before initialize, and the log says what it answered.
    assert entry["status"] == 400
    assert isinstance(entry["at"], float)
    # The log itself is not logged, and needs no key.
    assert len(server.requests()) == 1
    assert httpx.put(f"{server.base}{LOG_PATH}", timeout=5).status_code == 405
    server.clear()
    assert server.requests() == []
