"""What the gateway reads of an MCP client's POST (authz/mcp.py): each JSON-RPC message's method, id and
called tool, every way a body is refused (hostile ones included), the errors it answers with, and the tool
catalog of an access profile."""

from __future__ import annotations

import doctest
import json

import mcp_types
import mcp_types.jsonrpc
import pytest

import authz.mcp
from authz.mcp import (
    INVALID_PARAMS,
    INVALID_REQUEST,
    MAX_BATCH,
    MAX_TOOL_NAME_CHARS,
    NOT_AUTHORISED,
    PARSE_ERROR,
    TOOL_NOT_ALLOWED,
    MessageKind,
    RpcId,
    RpcMessage,
    RpcRead,
    RpcRefusal,
    ToolCatalog,
    read_rpc,
    rpc_error,
)

JSON = "application/json"


def _read(document: object, content_type: str = JSON) -> RpcRead:
    return read_rpc(json.dumps(document).encode(), content_type)


def _call(tool: object, ident: object = 1, **extra: object) -> dict:
    return {"jsonrpc": "2.0", "id": ident, "method": "tools/call", "params": {"name": tool, "arguments": {}}, **extra}


def test_the_doctests_hold() -> None:
    failed, attempted = doctest.testmod(authz.mcp)
    assert attempted >= 5 and failed == 0


# -- what a body holds --------------------------------------------------------------------------------------


def test_a_request() -> None:
    read = _read({"jsonrpc": "2.0", "id": 3, "method": "tools/list", "params": {"cursor": "x"}})
    assert read == RpcRead((RpcMessage(MessageKind.REQUEST, "tools/list", 3),), id=3)
    assert read.tools == ()
    assert not read.batch


def test_a_tool_call() -> None:
    read = _read(_call("search_docs", "req-1"))
    assert read.refusal is None
    assert read.messages == (RpcMessage(MessageKind.REQUEST, "tools/call", "req-1", "search_docs"),)
    assert read.tools == ("search_docs",)
    assert read.id == "req-1"


def test_a_notification() -> None:
    read = _read({"jsonrpc": "2.0", "method": "notifications/initialized"})
    assert read.messages == (RpcMessage(MessageKind.NOTIFICATION, "notifications/initialized", None),)


def test_a_tool_call_sent_as_a_notification_still_names_its_tool() -> None:
    read = _read({"jsonrpc": "2.0", "method": "tools/call", "params": {"name": "delete_repo"}})
    assert read.messages == (RpcMessage(MessageKind.NOTIFICATION, "tools/call", None, "delete_repo"),)
    assert read.tools == ("delete_repo",)


@pytest.mark.parametrize(
    "document",
    [
        {"jsonrpc": "2.0", "id": 9, "result": {"model": "m", "role": "assistant", "content": []}},
        {"jsonrpc": "2.0", "id": "s-1", "error": {"code": -1, "message": "declined"}},
        {"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "parse error"}},
        {"jsonrpc": "2.0", "id": 9, "result": None},
    ],
)
def test_responses_the_client_sends_back(document: dict) -> None:
    read = _read(document)
    assert read.refusal is None
    assert read.messages == (RpcMessage(MessageKind.RESPONSE, None, document["id"]),)


@pytest.mark.parametrize("ident", ["abc", "", 0, -5, 2**63, 10**300, 1.5, -0.0, 1e300, None])
def test_ids_are_kept_as_sent(ident: object) -> None:
    read = _read({"jsonrpc": "2.0", "id": ident, "method": "ping"})
    assert read.refusal is None
    assert read.id == ident and type(read.id) is type(ident)
    assert read.messages[0].kind is MessageKind.REQUEST  # an explicit null id is still a request


def test_a_batch() -> None:
    read = _read([
        _call("search_docs", 1),
        {"jsonrpc": "2.0", "method": "notifications/progress", "params": {}},
        {"jsonrpc": "2.0", "id": 7, "result": {}},
        _call("delete_repo", 2),
        _call("search_docs", 3),
    ])
    assert read.batch and read.refusal is None
    assert [m.kind for m in read.messages] == [MessageKind.REQUEST, MessageKind.NOTIFICATION, MessageKind.RESPONSE,
                                               MessageKind.REQUEST, MessageKind.REQUEST]
    assert read.tools == ("search_docs", "delete_repo", "search_docs")
    assert read.id is None


def test_a_batch_of_the_most_messages_allowed() -> None:
    read = _read([_call(f"tool_{i}", i) for i in range(MAX_BATCH)])
    assert read.refusal is None and len(read.tools) == MAX_BATCH


def test_a_tool_name_of_the_longest_length() -> None:
    assert _read(_call("t" * MAX_TOOL_NAME_CHARS)).tools == ("t" * MAX_TOOL_NAME_CHARS,)


def test_text_outside_ascii_and_escaped_pairs_are_text() -> None:
    body = b'{"jsonrpc":"2.0","id":"\\ud83d\\ude00","method":"tools/call","params":{"name":"r\xc3\xa9sum\\u00e9"}}'
    read = read_rpc(body, JSON)
    assert read.id == "\N{GRINNING FACE}"
    assert read.tools == ("r\N{LATIN SMALL LETTER E WITH ACUTE}sum\N{LATIN SMALL LETTER E WITH ACUTE}",)


def test_members_json_rpc_does_not_define_are_left_alone() -> None:
    read = _read(_call("add", 1, extra={"a": [1, {"b": None}]}))
    assert read.tools == ("add",)


def test_lone_surrogates_outside_what_the_gateway_reads_are_not_its_business() -> None:
    body = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add","arguments":{"q":"\\ud800"}}}'
    assert read_rpc(body, JSON).tools == ("add",)


def test_what_the_sdk_sends_is_read() -> None:
    """A tools/call as the official SDK's client serializes it (its own types, its own dump options)."""
    request = mcp_types.JSONRPCRequest(jsonrpc="2.0", id=12, method="tools/call",
                                       params={"name": "search_code", "arguments": {"query": "ext_authz"}})
    body = request.model_dump_json(by_alias=True, exclude_unset=True).encode()
    assert read_rpc(body, JSON) == RpcRead((RpcMessage(MessageKind.REQUEST, "tools/call", 12, "search_code"),), id=12)


# -- content types ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "Application/JSON", "application/json; charset=utf-8", 'application/json;charset="UTF-8"',
     "application/json; charset=utf8", " application/json ; foo=bar"],
)
def test_json_content_types_are_read(content_type: str) -> None:
    assert _read(_call("add"), content_type).tools == ("add",)


@pytest.mark.parametrize(
    "content_type",
    ["", "text/plain", "application/jsonx", "application/json-rpc", "application/x-www-form-urlencoded",
     "multipart/form-data; boundary=x", "application/json; charset=utf-16", "application/json; charset=latin-1",
     "text/event-stream"],
)
def test_other_content_types_are_refused(content_type: str) -> None:
    read = _read(_call("add"), content_type)
    assert read == RpcRead(refusal=RpcRefusal.CONTENT_TYPE)


# -- refusals -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b'{"jsonrpc": "2.0", "id": 1, "method": "ping"',  # cut short (a body over Envoy's buffer)
        b'{"jsonrpc": "2.0", "id": 1, "method": "ping"} trailing',
        b"\xff\xfe{}",
        b'{"jsonrpc": "2.0", "id": 1, "method": "p\xffing"}',  # not UTF-8
        b'\xef\xbb\xbf{"jsonrpc": "2.0", "id": 1, "method": "ping"}',  # a UTF-8 byte order mark
        '{"jsonrpc": "2.0", "id": 1, "method": "ping"}'.encode("utf-16"),
        '{"jsonrpc": "2.0", "id": 1, "method": "ping"}'.encode("utf-32-le"),
        b'{"jsonrpc": "2.0", "id": NaN, "method": "ping"}',
        b'{"jsonrpc": "2.0", "id": Infinity, "method": "ping"}',
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add","arguments":{"a":-Infinity}}}',
        b'{"jsonrpc": "2.0", "id": ' + b"9" * 5000 + b', "method": "ping"}',  # past Python's int digit limit
        b'{"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}",
        b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
        b"[" * 1_000_000,
    ],
    ids=["empty", "text", "truncated", "trailing", "utf16-bom", "bad-utf8", "utf8-bom", "utf16", "utf32", "nan",
         "infinity", "minus-infinity-deep", "huge-int", "deep-arrays", "deep-objects", "unclosed-arrays"],
)
def test_bodies_that_are_not_json(body: bytes) -> None:
    assert read_rpc(body, JSON) == RpcRead(refusal=RpcRefusal.NOT_JSON)


@pytest.mark.parametrize(
    "body",
    [
        b'{"jsonrpc": "2.0", "id": 1, "method": "tools/list", "method": "tools/call", "params": {"name": "x"}}',
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search_docs","name":"delete_repo"}}',
        # the same key, once escaped: a raw-bytes check would miss it
        b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "search_docs", "\\u006eame": "x"}}',
        b'{"jsonrpc": "2.0", "id": 1, "\\u006dethod": "tools/call", "method": "ping"}',
        b'{"jsonrpc": "2.0", "id": 1, "id": 2, "method": "ping"}',
        b'{"jsonrpc": "2.0", "jsonrpc": "2.0", "id": 1, "method": "ping"}',
        # anywhere at all: a server reading arguments may take either value
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add","arguments":{"a":1,"a":2}}}',
        b'{"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"x": [[{"deep": 1, "deep": 1}]]}}',
        b'[{"jsonrpc": "2.0", "id": 1, "method": "ping"}, {"jsonrpc": "2.0", "method": "x", "method": "y"}]',
    ],
)
def test_repeated_keys_are_ambiguous(body: bytes) -> None:
    assert read_rpc(body, JSON) == RpcRead(refusal=RpcRefusal.AMBIGUOUS)


@pytest.mark.parametrize(
    ("document", "echoed"),
    [
        (1, None),
        ("tools/call", None),
        (None, None),
        (True, None),
        ({}, None),
        ({"id": 1, "method": "ping"}, None),  # no jsonrpc member
        ({"jsonrpc": "1.0", "id": 1, "method": "ping"}, None),
        ({"jsonrpc": 2.0, "id": 1, "method": "ping"}, None),
        ({"jsonrpc": "2.0 ", "id": 1, "method": "ping"}, None),
        ({"jsonrpc": "2.0", "id": {"a": 1}, "method": "ping"}, None),
        ({"jsonrpc": "2.0", "id": [1], "method": "ping"}, None),
        ({"jsonrpc": "2.0", "id": True, "method": "ping"}, None),
        ({"jsonrpc": "2.0", "id": 1, "method": 5}, 1),
        ({"jsonrpc": "2.0", "id": 1, "method": None}, 1),
        ({"jsonrpc": "2.0", "id": 1, "method": ""}, 1),
        ({"jsonrpc": "2.0", "id": 1, "method": ["tools/call"]}, 1),
        # a request and a response at once: which one would the server see?
        ({"jsonrpc": "2.0", "id": 1, "method": "ping", "result": {}}, 1),
        ({"jsonrpc": "2.0", "id": "x", "method": "tools/call", "params": {"name": "a"}, "error": {}}, "x"),
        ({"jsonrpc": "2.0", "id": 1, "result": {}, "error": {"code": 1, "message": "m"}}, 1),
        ({"jsonrpc": "2.0", "id": 1}, 1),  # neither
        ({"jsonrpc": "2.0", "result": {}}, None),  # a response answers some request: it has an id
        ({"jsonrpc": "2.0"}, None),
    ],
)
def test_what_is_not_json_rpc(document: object, echoed: RpcId) -> None:
    assert _read(document) == RpcRead(refusal=RpcRefusal.NOT_RPC, id=echoed)


def test_an_infinite_id_is_refused() -> None:
    read = read_rpc(b'{"jsonrpc": "2.0", "id": 1e999, "method": "ping"}', JSON)
    assert read == RpcRead(refusal=RpcRefusal.NOT_RPC)


@pytest.mark.parametrize(
    "document",
    [
        [1],
        [[_call("add")]],  # a batch inside a batch
        [_call("add"), None],
        [_call("add"), {"jsonrpc": "1.0", "id": 2, "method": "ping"}],
        [_call("add"), {"jsonrpc": "2.0", "id": 2, "method": "ping", "result": 1}],
    ],
)
def test_a_batch_with_anything_not_json_rpc_is_refused_whole(document: list) -> None:
    assert _read(document) == RpcRead(batch=True, refusal=RpcRefusal.NOT_RPC)


def test_an_empty_batch() -> None:
    assert _read([]) == RpcRead(batch=True, refusal=RpcRefusal.EMPTY_BATCH)


def test_a_batch_over_the_limit() -> None:
    assert _read([_call("add", i) for i in range(MAX_BATCH + 1)]) == \
        RpcRead(batch=True, refusal=RpcRefusal.BATCH_TOO_LARGE)


@pytest.mark.parametrize(
    "document",
    [
        {"jsonrpc": "2.0", "id": 4, "method": "tools/call"},
        {"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": None},
        {"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": ["search_docs", {}]},
        {"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": "search_docs"},
        {"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"arguments": {}}},
        {"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"tool": "search_docs"}},
        _call(None, 4),
        _call(7, 4),
        _call(True, 4),
        _call(["search_docs"], 4),
        _call({"name": "search_docs"}, 4),
        _call("", 4),
        _call("t" * (MAX_TOOL_NAME_CHARS + 1), 4),
    ],
)
def test_a_tool_call_without_a_tool_name(document: dict) -> None:
    assert _read(document) == RpcRead(refusal=RpcRefusal.TOOL_NAME, id=4)


def test_a_batch_with_a_nameless_tool_call() -> None:
    assert _read([_call("add", 1), _call(None, 2)]) == RpcRead(batch=True, refusal=RpcRefusal.TOOL_NAME)


def test_methods_are_case_sensitive() -> None:
    """``Tools/Call`` is no method the server knows (it answers "method not found"), so it names no tool."""
    read = _read({"jsonrpc": "2.0", "id": 1, "method": "Tools/Call", "params": {}})
    assert read.refusal is None and read.tools == ()


@pytest.mark.parametrize(
    ("body", "echoed"),
    [
        (b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "a\\ud800"}}', 1),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "\\udc00search"}}', 1),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "ping\\udfff"}', 1),
        (b'{"jsonrpc": "2.0", "id": "\\ud800", "method": "ping"}', None),
        (b'{"jsonrpc": "2.0", "id": "\\ude00\\ud83d", "result": {}}', None),  # a pair in the wrong order
    ],
)
def test_lone_surrogates_where_the_gateway_reads(body: bytes, echoed: RpcId) -> None:
    assert read_rpc(body, JSON) == RpcRead(refusal=RpcRefusal.NOT_TEXT, id=echoed)


def test_a_batch_with_a_lone_surrogate() -> None:
    body = b'[{"jsonrpc": "2.0", "id": 1, "method": "ping"}, {"jsonrpc": "2.0", "method": "x\\ud800"}]'
    assert read_rpc(body, JSON) == RpcRead(batch=True, refusal=RpcRefusal.NOT_TEXT)


@pytest.mark.parametrize(
    ("body", "refusal"),
    [
        (b"\x00" * 1000, RpcRefusal.NOT_JSON),
        (b"{" * 100 + b"}" * 100, RpcRefusal.NOT_JSON),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "' + b"a" * 1_000_000 + b'"}}',
         RpcRefusal.TOOL_NAME),
        (b'["' + b"\\" * 1001 + b'"]', RpcRefusal.NOT_JSON),  # the last backslash escapes the closing quote
        (bytes(range(256)), RpcRefusal.NOT_JSON),
        (b'{"jsonrpc": "2.0", "id": 1e-99999, "method": "ping"}', None),  # underflows to 0.0: a number still
        (b'{"jsonrpc": "2.0", "id": -' + b"9" * 4000 + b', "method": "tools/call", "params": {"name": "x"}}', None),
    ],
)
def test_hostile_bodies_give_a_read_not_an_exception(body: bytes, refusal: RpcRefusal | None) -> None:
    read = read_rpc(body, JSON)
    assert read.refusal is refusal
    assert bool(read.messages) is (refusal is None)


def test_refusals_carry_a_json_rpc_code_and_a_message() -> None:
    codes = {refusal: refusal.code for refusal in RpcRefusal}
    assert codes == {
        RpcRefusal.CONTENT_TYPE: PARSE_ERROR,
        RpcRefusal.NOT_JSON: PARSE_ERROR,
        RpcRefusal.AMBIGUOUS: INVALID_REQUEST,
        RpcRefusal.NOT_RPC: INVALID_REQUEST,
        RpcRefusal.EMPTY_BATCH: INVALID_REQUEST,
        RpcRefusal.BATCH_TOO_LARGE: INVALID_REQUEST,
        RpcRefusal.TOOL_NAME: INVALID_PARAMS,
        RpcRefusal.NOT_TEXT: INVALID_REQUEST,
    }
    messages = [refusal.message for refusal in RpcRefusal]
    assert all(messages) and len(set(messages)) == len(messages)
    assert str(MAX_BATCH) in RpcRefusal.BATCH_TOO_LARGE.message


# -- errors -------------------------------------------------------------------------------------------------


def test_standard_codes_are_json_rpcs() -> None:
    assert (PARSE_ERROR, INVALID_REQUEST, INVALID_PARAMS) == \
        (mcp_types.jsonrpc.PARSE_ERROR, mcp_types.jsonrpc.INVALID_REQUEST, mcp_types.jsonrpc.INVALID_PARAMS)


def test_the_gateways_codes_are_its_own() -> None:
    """Implementation-defined, and none of the codes the MCP SDK gives a meaning to."""
    sdk_codes = {value for name, value in vars(mcp_types.jsonrpc).items()
                 if name.isupper() and isinstance(value, int) and not isinstance(value, bool)}
    assert mcp_types.jsonrpc.HEADER_MISMATCH in sdk_codes  # the scan found the SDK's constants
    for code in (NOT_AUTHORISED, TOOL_NOT_ALLOWED):
        assert -32099 <= code <= -32000
        assert code not in sdk_codes
    assert NOT_AUTHORISED != TOOL_NOT_ALLOWED


def test_an_error_response() -> None:
    body = rpc_error("req-1", TOOL_NOT_ALLOWED, "Tool 'delete_repo' is not in the access profile.")
    assert json.loads(body) == {"jsonrpc": "2.0", "id": "req-1", "error": {
        "code": TOOL_NOT_ALLOWED, "message": "Tool 'delete_repo' is not in the access profile."}}


def test_an_error_response_with_data() -> None:
    body = rpc_error(None, NOT_AUTHORISED, "No token.", {"outcome": "token_missing", "n": [1, 2.5]})
    assert json.loads(body)["error"]["data"] == {"outcome": "token_missing", "n": [1, 2.5]}
    assert json.loads(body)["id"] is None


def test_falsy_data_is_kept() -> None:
    assert json.loads(rpc_error(1, INVALID_PARAMS, "m", 0))["error"]["data"] == 0
    assert json.loads(rpc_error(1, INVALID_PARAMS, "m", ""))["error"]["data"] == ""


@pytest.mark.parametrize("ident", ["a", 0, 10**40, -2.5, None])
def test_an_error_echoes_the_id(ident: object) -> None:
    assert json.loads(rpc_error(ident, PARSE_ERROR, "m"))["id"] == ident  # type: ignore[arg-type]


@pytest.mark.parametrize("ident", [float("inf"), float("nan"), True, {"a": 1}, [1]])
def test_an_id_json_rpc_does_not_allow_is_answered_as_null(ident: object) -> None:
    assert json.loads(rpc_error(ident, PARSE_ERROR, "m"))["id"] is None  # type: ignore[arg-type]


def test_an_error_is_ascii_json() -> None:
    body = rpc_error("\N{GRINNING FACE}", TOOL_NOT_ALLOWED, "Outil «supprimer» refusé\n", {"tool": "r\u00e9"})
    assert body.isascii()
    document = json.loads(body)
    assert document["id"] == "\N{GRINNING FACE}"
    assert document["error"]["message"] == "Outil «supprimer» refusé\n"


def test_every_refusal_answers_as_the_sdk_reads_errors() -> None:
    """The MCP SDK's client parses each refusal as a JSON-RPC error, with its id (what it raises to the caller)."""
    for refusal in RpcRefusal:
        body = rpc_error(41, refusal.code, refusal.message)
        parsed = mcp_types.jsonrpc_message_adapter.validate_json(body, by_name=False)
        assert isinstance(parsed, mcp_types.JSONRPCError)
        assert (parsed.id, parsed.error.code, parsed.error.message) == (41, refusal.code, refusal.message)


def test_a_refused_read_answers_with_its_id() -> None:
    read = _read(_call(None, "abc"))
    body = rpc_error(read.id, read.refusal.code, read.refusal.message)  # type: ignore[union-attr]
    assert json.loads(body)["id"] == "abc"
    assert json.loads(body)["error"]["code"] == INVALID_PARAMS


# -- the tool catalog ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entries", "server", "tool", "allowed"),
    [
        ([("docs", "search_docs")], "docs", "search_docs", True),
        ([("docs", "search_docs")], "docs", "search_docs_v2", False),  # exact names are not prefixes
        ([("docs", "search_docs")], "docs", "SEARCH_DOCS", False),  # case matters
        ([("docs", "search_*")], "docs", "search_code", True),
        ([("docs", "search_*")], "docs", "search_", True),
        ([("docs", "search_*")], "docs", "research_docs", False),  # anchored at the start
        ([("docs", "*_docs")], "docs", "search_docs_x", False),  # and at the end
        ([("docs", "search_?ocs")], "docs", "search_docs", True),
        ([("docs", "search_[cd]*")], "docs", "search_code", True),
        ([("docs", "search_[cd]*")], "docs", "search_all", False),
        ([("docs", "search.docs")], "docs", "searchXdocs", False),  # a dot is literal
        ([("docs", "*")], "docs", "delete_repo", True),
        ([("docs", "*")], "github", "delete_repo", False),  # one server's entry says nothing of another
        ([("docs", "search_*"), ("docs", "add")], "docs", "add", True),  # several entries per server
        ([("docs", "search_*"), ("docs", "add")], "docs", "delete_repo", False),
        ([("docs", "search_*"), ("github", "delete_*")], "docs", "delete_repo", False),
        ([("docs", "search_*"), ("github", "delete_*")], "github", "delete_repo", True),
        ([("*", "*")], "docs", "search_docs", False),  # a server name is never a pattern
        ([("doc*", "*")], "docs", "search_docs", False),
        ([], "docs", "search_docs", False),
    ],
)
def test_the_catalog_allows(entries: list[tuple[str, str]], server: str, tool: str, allowed: bool) -> None:
    assert ToolCatalog(entries).allows(server, tool) is allowed


def test_the_catalog_serves_the_servers_it_names() -> None:
    catalog = ToolCatalog([("docs", "search_*"), ("github", "list_*")])
    assert catalog.serves("docs") and catalog.serves("github")
    assert not catalog.serves("jira") and not catalog.serves("*") and not catalog.serves("Docs")
    assert not ToolCatalog([]).serves("docs")


def test_the_catalog_keeps_its_entries() -> None:
    entries = [("docs", "search_*"), ("github", "*")]
    assert ToolCatalog(iter(entries)).entries == tuple(entries)


def test_a_read_call_against_the_catalog() -> None:
    catalog = ToolCatalog([("docs", "search_*")])
    allowed, refused = _read(_call("search_docs")), _read(_call("delete_repo"))
    assert all(catalog.allows("docs", tool) for tool in allowed.tools)
    assert not all(catalog.allows("docs", tool) for tool in refused.tools)
    batch = _read([_call("search_docs", 1), _call("delete_repo", 2)])
    assert [catalog.allows("docs", tool) for tool in batch.tools] == [True, False]
