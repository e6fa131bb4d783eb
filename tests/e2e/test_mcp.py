"""MCP tool servers behind the gateway, driven by the official ``mcp`` SDK client over Streamable HTTP.

The client talks to ``<gateway>/mcp/docs`` with its Keyward token as ``Authorization: Bearer``; Envoy swaps
it for the server's own key, and authz judges every message against the access profile's tool catalog
(``[{"server": "docs", "tools": "search_*"}]`` here). The servers are real (tests/e2e/mcp_server.py) and log
every request they receive, so "refused" below always also means "never arrived".

Why ``tools/list`` is not filtered: the gateway's check (Envoy's ext_authz) sees the request, never the
response. Hiding the tools a profile does not offer would need a hop that rewrites the body of every MCP
response, including server-sent event streams that stay open for the whole session, on the hot path. The
catalog is enforced where it matters instead: every ``tools/call`` names its tool, and a call to a tool
outside the catalog is refused before it reaches the server. So a client lists all four tools of ``docs``
and may call two of them.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
import httpx
import httpx2
import pytest
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import TextContent

from authz.mcp import INVALID_PARAMS, INVALID_REQUEST, MAX_BATCH, NOT_AUTHORISED, PARSE_ERROR, TOOL_NOT_ALLOWED
from tests.e2e.conftest import Minted, ProviderGateway
from tests.e2e.mcp_server import TOOLS
from tests.e2e.test_audit import wait_for_records

pytestmark = pytest.mark.e2e

#: What the test profile's tool catalog offers: the two search tools of ``docs``, nothing of ``code``.
CATALOG = [{"server": "docs", "tools": "search_*"}]
#: What Streamable HTTP clients send with every POST.
POST_HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}


@dataclass
class Exchange:
    """One HTTP request of the SDK client through the gateway, as the client saw its answer."""

    method: str
    status: int
    #: The gateway's ``x-request-id`` ("" if the answer had none).
    request_id: str
    #: The JSON-RPC message the client POSTed (None for GET and DELETE).
    message: dict | None

    @property
    def judged(self) -> str | None:
        """What the gateway records as the request's "model": the tool of a call, else the method."""
        if self.message is None:
            return None
        if self.message.get("method") == "tools/call":
            return self.message["params"]["name"]
        return self.message.get("method")


@dataclass
class Seen:
    exchanges: list[Exchange] = field(default_factory=list)

    def calls(self, tool: str) -> list[Exchange]:
        return [e for e in self.exchanges if e.message is not None and e.message.get("method") == "tools/call"
                and e.message["params"]["name"] == tool]


@asynccontextmanager
async def mcp_session(gateway: ProviderGateway, secret: str, server: str = "docs", http_wait: float = 10,
                      seen: Seen | None = None) -> AsyncIterator[tuple[ClientSession, Seen]]:
    """The SDK's client on ``<gateway>/mcp/<server>`` with ``secret`` as its bearer token; every answer it
    gets (status, the gateway's request id, the message it answered) lands in ``seen``. ``http_wait``: the
    HTTP client's timeout (the session's own wait for an answer stays 10 s)."""
    seen = seen if seen is not None else Seen()

    async def note(response: httpx2.Response) -> None:
        request = response.request
        message = json.loads(request.content) if request.method == "POST" and request.content else None
        seen.exchanges.append(Exchange(request.method, response.status_code, response.headers.get("x-request-id", ""),
                                       message))

    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {secret}"}, timeout=httpx2.Timeout(http_wait),
                           event_hooks={"response": [note]}) as http,
        streamable_http_client(f"{gateway.url}/mcp/{server}", http_client=http) as (read, write),
        ClientSession(read, write, read_timeout_seconds=10) as client,
    ):
        yield client, seen


def _text(result: object) -> str:
    content = getattr(result, "content", None)
    assert content and isinstance(content[0], TextContent), result
    return content[0].text


def _posted(entries: list[dict]) -> list[dict]:
    """The JSON-RPC messages among a server's logged requests."""
    return [json.loads(entry["body"]) for entry in entries if entry["method"] == "POST"]


def _called(entries: list[dict]) -> list[str]:
    return [m["params"]["name"] for m in _posted(entries) if m.get("method") == "tools/call"]


def _arrival(entry: dict) -> tuple:
    return entry["method"], entry["query"], entry["body"], entry["at"]


def _profile(gateway: ProviderGateway, endpoints: list[str], tools: list[dict]) -> dict:
    reply = gateway.admin.post("/profiles", json={
        "name": f"e2e-mcp-{uuid.uuid4().hex[:8]}", "catalog": [{"provider": "openai", "pattern": "gpt-4o-mini"}],
        "environments": ["dev"], "endpoints": endpoints, "tools": tools})
    assert reply.status_code == 201, reply.text
    return reply.json()


def _team(gateway: ProviderGateway, endpoints: list[str], tools: list[dict]) -> dict:
    return gateway.team(profile_id=_profile(gateway, endpoints, tools)["id"])


@pytest.fixture(scope="module")
def tools_team(providers: ProviderGateway) -> dict:
    """A team whose profile offers chat and MCP tools: ``search_*`` on ``docs``."""
    return _team(providers, ["chat", "tools"], CATALOG)


@pytest.fixture(autouse=True)
def _clean_server_logs(providers: ProviderGateway) -> None:
    for server in providers.mcp.values():
        server.forget_received()


def assert_rpc_error(response: httpx.Response, status: int, code: int, outcome: str, rpc_id: object = None) -> dict:
    """A gateway refusal of an MCP request: ``status``, and a JSON-RPC 2.0 error naming the outcome."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"jsonrpc", "id", "error"}, body
    assert (body["jsonrpc"], body["id"]) == ("2.0", rpc_id)
    assert body["error"]["code"] == code and body["error"]["message"]
    assert body["error"]["data"] == {"code": outcome, "request_id": response.headers["x-request-id"]}
    return body


# -- the catalog --------------------------------------------------------------------------------------------


async def test_the_catalog_decides_which_calls_reach_the_server(providers: ProviderGateway,
                                                                tools_team: dict) -> None:
    minted = providers.mint(team=tools_team)
    docs = providers.mcp["docs"]
    async with mcp_session(providers, minted.secret) as (client, seen):
        info = await client.initialize()
        assert info.server_info.name == "docs"
        listed = await client.list_tools()
        assert sorted(tool.name for tool in listed.tools) == sorted(TOOLS)  # not filtered: see the docstring

        assert _text(await client.call_tool("search_docs", {"query": "envoy"})) == "docs: docs matching 'envoy'"
        assert _text(await client.call_tool("search_code", {"query": "authz"})) == "docs: code matching 'authz'"
        for tool, arguments in (("delete_repo", {"name": "keyward"}), ("add", {"a": 2, "b": 40})):
            with pytest.raises(MCPError) as refused:
                await client.call_tool(tool, arguments)
            assert refused.value.code == TOOL_NOT_ALLOWED, refused.value
            assert refused.value.data["code"] == "tool_not_allowed"
            assert tool in refused.value.message
            [exchange] = seen.calls(tool)
            assert exchange.status == 403
            assert refused.value.data["request_id"] == exchange.request_id
        # A refusal answers one message; the session goes on.
        assert _text(await client.call_tool("search_docs", {"query": "again"})) == "docs: docs matching 'again'"

    received = docs.received()
    assert _called(received) == ["search_docs", "search_code", "search_docs"]
    assert [m["method"] for m in _posted(received)][:3] == ["initialize", "notifications/initialized", "tools/list"]


async def test_a_server_outside_the_catalog_is_refused_for_every_message(providers: ProviderGateway,
                                                                          tools_team: dict) -> None:
    minted = providers.mint(team=tools_team)
    async with mcp_session(providers, minted.secret, server="code") as (client, seen):
        with pytest.raises(MCPError) as refused:
            await client.initialize()
    assert refused.value.code == TOOL_NOT_ALLOWED and refused.value.data["code"] == "tool_not_allowed"
    assert [(e.method, e.status) for e in seen.exchanges] == [("POST", 403)]

    auth = {"Authorization": f"Bearer {minted.secret}"}
    call = {"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {"name": "search_docs",
                                                                          "arguments": {"query": "x"}}}
    assert_rpc_error(providers.http.post("/mcp/code", headers=auth | POST_HEADERS, json=call),
                     403, TOOL_NOT_ALLOWED, "tool_not_allowed", rpc_id=9)
    ping = {"jsonrpc": "2.0", "id": "p", "method": "ping"}
    assert_rpc_error(providers.http.post("/mcp/code", headers=auth | POST_HEADERS, json=ping),
                     403, TOOL_NOT_ALLOWED, "tool_not_allowed", rpc_id="p")
    # The server's event stream and the end of a session carry no message: they are refused all the same.
    assert_rpc_error(providers.http.get("/mcp/code", headers=auth | {"Accept": "text/event-stream"}),
                     403, TOOL_NOT_ALLOWED, "tool_not_allowed")
    assert_rpc_error(providers.http.delete("/mcp/code", headers=auth | {"Mcp-Session-Id": "x"}),
                     403, TOOL_NOT_ALLOWED, "tool_not_allowed")
    assert providers.mcp["code"].received() == []


async def test_the_server_gets_its_own_key_and_never_the_token(providers: ProviderGateway,
                                                               tools_team: dict) -> None:
    minted = providers.mint(team=tools_team)
    docs = providers.mcp["docs"]
    async with mcp_session(providers, minted.secret) as (client, _):
        await client.initialize()
        await client.list_tools()
        await client.call_tool("search_docs", {"query": "keys"})
    received = docs.received()
    # initialize, initialized, the event stream (GET), tools/list, tools/call, the session's end (DELETE)
    assert {entry["method"] for entry in received} == {"POST", "GET", "DELETE"}, received
    for entry in received:
        authorizations = [value for name, value in entry["headers"] if name.lower() == "authorization"]
        assert authorizations == [f"Bearer {docs.key}"], entry
        assert minted.secret not in json.dumps(entry), entry  # headers, path, query and body
        assert entry["status"] in (200, 202), entry


# -- the audit trail ----------------------------------------------------------------------------------------


async def _session_with_a_refusal(providers: ProviderGateway, team: dict) -> tuple[Minted, list[Exchange]]:
    """A whole session (handshake, event stream, list, an allowed and a refused call, its end) and what the
    client saw of each request."""
    minted = providers.mint(team=team)
    async with mcp_session(providers, minted.secret) as (client, seen):
        await client.initialize()
        await client.list_tools()
        await client.call_tool("search_docs", {"query": "audit"})
        with pytest.raises(MCPError):
            await client.call_tool("delete_repo", {"name": "keyward"})
    exchanges = seen.exchanges
    assert [e.method for e in exchanges if e.method != "POST"] == ["GET", "DELETE"]
    assert [e.judged for e in exchanges if e.method == "POST"] == [
        "initialize", "notifications/initialized", "tools/list", "search_docs", "delete_repo"]
    assert all(e.request_id for e in exchanges) and len({e.request_id for e in exchanges}) == len(exchanges)
    return minted, exchanges


def _decision(exchange: Exchange) -> str:
    return "tool_not_allowed" if exchange.judged == "delete_repo" else "allowed"


async def test_every_message_is_an_audited_request(providers: ProviderGateway, tools_team: dict) -> None:
    minted, exchanges = await _session_with_a_refusal(providers, tools_team)
    identity = (minted.id, minted.user["id"], minted.user["email"], tools_team["name"])
    for exchange in exchanges:
        record = await asyncio.to_thread(providers.log_record, exchange.request_id)
        assert record["decision"] == _decision(exchange), record
        assert (record["token_id"], record["user_id"], record["user"], record["team"]) == identity, record
        # The model of an MCP request: the tool a call names, the method of any other message, none for
        # the event stream (GET) and the session's end (DELETE).
        assert record["model"] == exchange.judged, record
        assert (record["method"], record["route"], record["status"]) == (exchange.method, "/mcp/docs",
                                                                          exchange.status), record
        assert exchange.status == 403 if _decision(exchange) == "tool_not_allowed" else exchange.status < 300
        if record["decision"] == "allowed":  # a refusal's: test_a_refused_call_names_its_server
            assert record["provider"] == "docs", record

    stored = await asyncio.to_thread(wait_for_records, providers, [e.request_id for e in exchanges])
    for exchange in exchanges:
        row = stored[exchange.request_id]
        assert (row["decision"], row["source"]) == (_decision(exchange), "authz"), row
        assert (row["token_id"], row["user_id"], row["user_email"], row["team"]) == identity, row
        assert (row["model"], row["method"], row["route"]) == (exchange.judged, exchange.method, "/mcp/docs"), row
        assert row["status"] == exchange.status, row
        if row["decision"] == "allowed":
            assert row["provider"] == "docs", row


async def test_a_refused_call_names_its_server(providers: ProviderGateway, tools_team: dict) -> None:
    _, exchanges = await _session_with_a_refusal(providers, tools_team)
    [refused] = [e for e in exchanges if e.judged == "delete_repo"]
    stored = await asyncio.to_thread(wait_for_records, providers, [refused.request_id])
    record = await asyncio.to_thread(providers.log_record, refused.request_id)
    assert (record["provider"], stored[refused.request_id]["provider"]) == ("docs", "docs")


# -- who may use MCP at all ---------------------------------------------------------------------------------


async def _refused_handshake(gateway: ProviderGateway, secret: str) -> tuple[MCPError, Seen]:
    async with mcp_session(gateway, secret) as (client, seen):
        with pytest.raises(MCPError) as refused:
            await client.initialize()
    return refused.value, seen


async def test_a_token_without_the_tools_family_is_refused(providers: ProviderGateway, tools_team: dict) -> None:
    minted = providers.mint(team=tools_team, endpoints=["chat"])
    error, seen = await _refused_handshake(providers, minted.secret)
    assert (error.code, error.data["code"]) == (NOT_AUTHORISED, "endpoint_not_allowed")
    assert [(e.method, e.status) for e in seen.exchanges] == [("POST", 403)]
    assert providers.chat(minted.secret).status_code == 200  # the token itself is fine
    assert providers.mcp["docs"].received() == []


@pytest.mark.parametrize(("endpoints", "tools", "outcome", "code"), [
    (["chat", "tools"], [], "tool_not_allowed", TOOL_NOT_ALLOWED),
    (["chat"], CATALOG, "endpoint_not_allowed", NOT_AUTHORISED),
], ids=["tools-family-without-catalog", "catalog-without-tools-family"])
async def test_a_team_without_a_tool_catalog_is_refused(providers: ProviderGateway, endpoints: list[str],
                                                        tools: list[dict], outcome: str, code: int) -> None:
    minted = providers.mint(team=_team(providers, endpoints, tools))
    error, seen = await _refused_handshake(providers, minted.secret)
    assert (error.code, error.data["code"]) == (code, outcome)
    [exchange] = seen.exchanges
    assert exchange.status == 403
    record = await asyncio.to_thread(providers.log_record, error.data["request_id"])
    assert (record["decision"], record["token_id"]) == (outcome, minted.id)
    assert providers.mcp["docs"].received() == []


# -- revocation -----------------------------------------------------------------------------------------------


async def test_revocation_cuts_an_open_session_at_its_next_call(providers: ProviderGateway,
                                                                tools_team: dict) -> None:
    minted = providers.mint(team=tools_team)
    docs = providers.mcp["docs"]
    async with mcp_session(providers, minted.secret) as (client, seen):
        await client.initialize()
        assert _text(await client.call_tool("search_docs", {"query": "before"})) == "docs: docs matching 'before'"
        before = docs.received()
        revoked_at = time.time()
        await asyncio.to_thread(providers.revoke, minted.id)  # returns once authz applied it
        with pytest.raises(MCPError) as refused:
            await client.call_tool("search_docs", {"query": "after"})
        assert (refused.value.code, refused.value.data["code"]) == (NOT_AUTHORISED, "token_revoked")
        [after] = [e for e in seen.calls("search_docs") if e.message and e.message["params"]["arguments"]
                   == {"query": "after"}]
        assert after.status == 401
    # The session's end (DELETE) is refused too; the server saw nothing after the revocation.
    assert [e.status for e in seen.exchanges if e.method == "DELETE"] == [401]
    received = docs.received()
    # By arrival (an entry's status is filled in later, when the server answers: the event stream's may be).
    assert [_arrival(entry) for entry in received] == [_arrival(entry) for entry in before], received
    assert all(entry["at"] < revoked_at for entry in received)
    assert _called(received) == ["search_docs"]


# -- garbage --------------------------------------------------------------------------------------------------

_CALL = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "search_docs",
                                                                         "arguments": {"query": "x"}}}


@pytest.mark.parametrize(("body", "content_type", "outcome", "code"), [
    (b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "search_docs"', "application/json",
     "rpc_invalid", PARSE_ERROR),
    (b"", "application/json", "rpc_invalid", PARSE_ERROR),
    (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search_docs","name":"delete_repo"}}',
     "application/json", "body_ambiguous", INVALID_REQUEST),
    (json.dumps([{"jsonrpc": "2.0", "id": i, "method": "ping"} for i in range(MAX_BATCH + 1)]).encode(),
     "application/json", "rpc_invalid", INVALID_REQUEST),
    (b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"arguments": {}}}', "application/json",
     "rpc_invalid", INVALID_PARAMS),
    (json.dumps(_CALL).encode(), "text/plain", "rpc_invalid", PARSE_ERROR),
    (json.dumps(_CALL).encode(), "application/x-www-form-urlencoded", "rpc_invalid", PARSE_ERROR),
    (json.dumps(_CALL).encode(), "application/json; charset=latin-1", "rpc_invalid", PARSE_ERROR),
], ids=["not-json", "empty", "duplicate-keys", "batch-over-64", "call-without-tool", "text-plain", "form",
        "latin-1"])
def test_garbage_gets_a_clean_json_rpc_error(providers: ProviderGateway, tools_team: dict, body: bytes,
                                             content_type: str, outcome: str, code: int) -> None:
    minted = providers.mint(team=tools_team)
    response = providers.http.post("/mcp/docs", content=body, headers={
        "Authorization": f"Bearer {minted.secret}", "Accept": "application/json, text/event-stream",
        "Content-Type": content_type})
    # The id is echoed when the gateway could read it: only the call without a tool has a readable one.
    assert_rpc_error(response, 400, code, outcome, rpc_id=1 if code == INVALID_PARAMS else None)
    assert minted.secret not in response.text
    record = providers.log_record(response.headers["x-request-id"])
    assert (record["decision"], record["status"], record["token_id"]) == (outcome, 400, minted.id)
    assert providers.mcp["docs"].received() == []


# -- a server that stops answering (last: it pauses the shared docs server) -----------------------------------


async def test_a_paused_server_times_out_at_the_client_and_is_recorded(providers: ProviderGateway,
                                                                       tools_team: dict) -> None:
    minted = providers.mint(team=tools_team)
    docs = providers.mcp["docs"]
    keys = [key for key in providers.upstream_keys.values() if key]
    seen = Seen()
    outcome: BaseException | None = None
    try:
        async with mcp_session(providers, minted.secret, http_wait=2, seen=seen) as (client, _):
            await client.initialize()
            await client.list_tools()  # the initialized notification and the event stream are through
            os.kill(docs.process.pid, signal.SIGSTOP)
            try:
                with anyio.fail_after(20):  # far beyond the HTTP timeout: only a hang gets here
                    await client.call_tool("search_docs", {"query": "paused"})
            finally:
                os.kill(docs.process.pid, signal.SIGCONT)
    except BaseException as raised:  # the SDK's task groups wrap the HTTP client's timeout
        outcome = raised
    try:
        assert outcome is not None, "the call returned although the server was paused"
        assert any(isinstance(leaf, httpx2.TimeoutException) for leaf in _leaves(outcome)), repr(outcome)
        assert not any(key in repr(outcome) for key in keys)
        # The gateway sent nothing back for the call: no 5xx, no key; the client gave up first.
        assert seen.calls("search_docs") == []
        assert all(e.status < 500 for e in seen.exchanges), seen.exchanges

        def recorded() -> list[dict]:
            return [r for r in providers.access_log() if r.get("token_id") == minted.id
                    and r.get("model") == "search_docs"]

        providers.wait_until(lambda: bool(recorded()), timeout=10, what="the access-log record of the paused call")
        [record] = recorded()
        assert (record["decision"], record["provider"], record["route"]) == ("allowed", "docs", "/mcp/docs"), record
        # Envoy logs the client's disconnect: no status was ever sent.
        assert (record["status"], record["flags"]) == (0, "DC"), record
        stored = await asyncio.to_thread(wait_for_records, providers, [record["request_id"]])
        row = stored[record["request_id"]]
        assert (row["decision"], row["model"], row["token_id"]) == ("allowed", "search_docs", minted.id), row
        assert row["upstream_status"] is None, row
    finally:
        # Shared by the session: other tests need it answering again.
        providers.wait_until(lambda: _answers(docs.url), timeout=10, what="the docs server to answer again")


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]


def _answers(url: str) -> bool:
    try:
        return httpx.get(url.replace("/mcp", "/__mcp__/requests"), timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
