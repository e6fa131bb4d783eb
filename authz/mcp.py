"""What the gateway reads of an MCP client's traffic: the JSON-RPC messages it POSTs, and the tool catalog
of the client's access profile that decides which ``tools/call`` may pass.

MCP servers sit behind the gateway at ``/mcp/{server}`` (Streamable HTTP). Each POST carries one JSON-RPC
2.0 message, or a batch of them (protocol revision 2025-03-26 only, but nothing stops a client sending
one); :func:`read_rpc` turns the body into what the hot path needs (each message's method, id, and the
tool a ``tools/call`` names) or a :class:`RpcRefusal`; :func:`rpc_error` writes the JSON-RPC error the
client gets back instead of the server's answer.

Invariants:

* pure and cheap: no I/O, one JSON parse per body, nothing kept between calls;
* a body the server could read differently from the gateway is refused, never guessed at: repeated keys
  at any depth (``"name"`` and ``"\\u006eame"`` are the same key), the non-JSON literals ``NaN`` and
  ``Infinity``, bytes that are not UTF-8, a message that is both a request and a response. The gateway
  then judges exactly the message the server will execute;
* :func:`read_rpc` never raises: every body, however hostile, gives an :class:`RpcRead`;
* every string the gateway keeps (method, string id, tool name) is text: a lone surrogate is refused,
  because it cannot go into request metadata or a log line. Strings the gateway does not read (tool
  arguments, results) are not inspected: Envoy forwards the client's own bytes, never a re-encoding.

>>> read = read_rpc(b'{"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "search_docs"}}',
...                 "application/json")
>>> read.refusal is None, read.tools
(True, ('search_docs',))
>>> ToolCatalog([("docs", "search_*")]).allows("docs", read.tools[0])
True
>>> read_rpc(b'{"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": 1}}', "application/json").refusal
<RpcRefusal.TOOL_NAME: 'tool_name'>
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass

from authz.cache import ModelCatalog
from authz.strict_json import RepeatedKey, is_text, unique_keys

# JSON-RPC 2.0's own error codes (https://www.jsonrpc.org/specification#error_object).
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
INVALID_PARAMS = -32602

# The gateway's own refusals, in the range JSON-RPC leaves to implementations (-32000..-32099). The MCP
# SDK (mcp 2.x, ``mcp_types.jsonrpc``) already gives meanings to -32000 (connection closed), -32001
# (request timeout), -32020..-32022 (header mismatch, missing client capability, unsupported protocol
# version) and -32042 (URL elicitation required); these two stay clear of them, and of the ranges around
# them, so a client can tell "the gateway said no" from anything the SDK or a server says.
#: The request carries no usable Keyward token (missing, unknown, expired, revoked, owner gone...).
NOT_AUTHORISED = -32030
#: The token is fine, but its access profile offers no such MCP server or no such tool on it.
TOOL_NOT_ALLOWED = -32031

#: More messages than any client batches; a longer batch is refused whole rather than judged one by one.
MAX_BATCH = 64
#: No MCP server names a tool this long (the 2025-11-25 revision says names SHOULD be 1 to 128 characters).
MAX_TOOL_NAME_CHARS = 256

#: A JSON-RPC id as JSON-RPC 2.0 allows it: a string, a number, or null.
RpcId = str | int | float | None


class RpcRefusal(enum.Enum):
    """Why a body is not read as MCP traffic, with the JSON-RPC error code and the message the client
    gets. Streamable HTTP answers a message the server cannot accept with HTTP 400."""

    #: Not ``application/json`` (with no charset, or UTF-8): the body is not read at all.
    CONTENT_TYPE = "content_type"
    #: Not UTF-8, not JSON, the literals NaN/Infinity, or nested beyond the parser's recursion limit.
    NOT_JSON = "not_json"
    #: An object somewhere in the body repeats a key: the server may read either value.
    AMBIGUOUS = "ambiguous"
    #: Valid JSON, but not a JSON-RPC 2.0 request, notification or response (or a batch of them).
    NOT_RPC = "not_rpc"
    EMPTY_BATCH = "empty_batch"
    BATCH_TOO_LARGE = "batch_too_large"
    #: A ``tools/call`` without ``params.name`` as a non-empty string of at most 256 characters.
    TOOL_NAME = "tool_name"
    #: A method, string id or tool name holding a lone surrogate (``"\\ud800"``): not text.
    NOT_TEXT = "not_text"

    @property
    def code(self) -> int:
        return _CODES[self]

    @property
    def message(self) -> str:
        return _MESSAGES[self]


_CODES: dict[RpcRefusal, int] = {
    RpcRefusal.CONTENT_TYPE: PARSE_ERROR,
    RpcRefusal.NOT_JSON: PARSE_ERROR,
    RpcRefusal.AMBIGUOUS: INVALID_REQUEST,
    RpcRefusal.NOT_RPC: INVALID_REQUEST,
    # JSON-RPC 2.0 §6: an empty batch is an Invalid Request.
    RpcRefusal.EMPTY_BATCH: INVALID_REQUEST,
    RpcRefusal.BATCH_TOO_LARGE: INVALID_REQUEST,
    RpcRefusal.TOOL_NAME: INVALID_PARAMS,
    RpcRefusal.NOT_TEXT: INVALID_REQUEST,
}

_MESSAGES: dict[RpcRefusal, str] = {
    RpcRefusal.CONTENT_TYPE: "MCP messages must be sent as application/json (UTF-8).",
    RpcRefusal.NOT_JSON: "The body is not JSON.",
    RpcRefusal.AMBIGUOUS: "An object in the body repeats a key.",
    RpcRefusal.NOT_RPC: "The body is not a JSON-RPC 2.0 message.",
    RpcRefusal.EMPTY_BATCH: "The batch is empty.",
    RpcRefusal.BATCH_TOO_LARGE: f"A batch may hold at most {MAX_BATCH} messages.",
    RpcRefusal.TOOL_NAME: f"tools/call needs params.name: a tool name of 1 to {MAX_TOOL_NAME_CHARS} characters.",
    RpcRefusal.NOT_TEXT: "A method, id or tool name is not valid Unicode text.",
}


class MessageKind(enum.Enum):
    REQUEST = "request"  # a method and an id: the server answers it
    NOTIFICATION = "notification"  # a method, no id
    RESPONSE = "response"  # the client's answer to a request of the server's (sampling, elicitation, roots)


@dataclass(frozen=True, slots=True)
class RpcMessage:
    kind: MessageKind
    #: ``None`` for a response.
    method: str | None
    #: ``None`` when absent (a notification) or null.
    id: RpcId
    #: The tool a ``tools/call`` names (``params.name``); ``None`` for every other method.
    tool: str | None = None


@dataclass(frozen=True, slots=True)
class RpcRead:
    """One POST body, read. Either ``refusal`` is set and ``messages`` is empty, or it is ``None`` and
    ``messages`` holds at least one message (exactly one unless ``batch``)."""

    messages: tuple[RpcMessage, ...] = ()
    batch: bool = False
    refusal: RpcRefusal | None = None
    #: The id to answer a refusal with: the single message's id when it could be read, else null.
    id: RpcId = None

    @property
    def tools(self) -> tuple[str, ...]:
        """Every tool the body calls, in order (a batch may call several, or one twice)."""
        return tuple(m.tool for m in self.messages if m.tool is not None)


class ToolCatalog:
    """The MCP tools an access profile offers: ``(server, pattern)`` entries, where the pattern is an
    exact tool name or a shell-style one (``search_*``, ``*``) matched as :class:`ModelCatalog` matches
    models. Server names are exact: no pattern reaches a server the profile does not name, so registering
    a new server never widens an existing profile.

    >>> catalog = ToolCatalog([("docs", "search_*"), ("github", "*"), ("docs", "add")])
    >>> catalog.allows("docs", "search_code"), catalog.allows("docs", "delete_repo")
    (True, False)
    >>> catalog.serves("github"), catalog.serves("jira")
    (True, False)
    """

    __slots__ = ("_servers", "entries")

    def __init__(self, entries: Iterable[tuple[str, str]]) -> None:
        self.entries = tuple(entries)
        patterns: dict[str, list[str]] = {}
        for server, pattern in self.entries:
            patterns.setdefault(server, []).append(pattern)
        self._servers = {server: ModelCatalog(tools) for server, tools in patterns.items()}

    def serves(self, server: str) -> bool:
        """Any entry names this server (whether or not it offers the tool at hand)."""
        return server in self._servers

    def allows(self, server: str, tool: str) -> bool:
        catalog = self._servers.get(server)
        return catalog is not None and catalog.allows(tool)


def _not_json_constant(name: str) -> object:
    # json.loads reads NaN, Infinity and -Infinity by default; they are not JSON, and a server may not.
    raise ValueError(name)


def _is_json_media_type(content_type: str) -> bool:
    media_type, _, parameters = content_type.partition(";")
    if media_type.strip().lower() != "application/json":
        return False
    for parameter in parameters.split(";"):
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            return False
    return True


def _valid_id(value: object) -> bool:
    if value is None or isinstance(value, str):
        return True
    if isinstance(value, bool):  # a JSON true/false, which JSON-RPC does not allow as an id
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, float) and math.isfinite(value)  # 1e999 parses as inf, which cannot be echoed


def _message(document: object) -> tuple[RpcMessage | None, RpcRefusal | None, RpcId]:
    """One message of a body: the message, or a refusal and the id to echo with it (null if unread)."""
    if not isinstance(document, dict) or document.get("jsonrpc") != "2.0":
        return None, RpcRefusal.NOT_RPC, None
    has_id = "id" in document
    ident = document.get("id")
    if not _valid_id(ident):
        return None, RpcRefusal.NOT_RPC, None
    if isinstance(ident, str) and not is_text(ident):
        return None, RpcRefusal.NOT_TEXT, None
    method = document.get("method")
    has_result, has_error = "result" in document, "error" in document
    if "method" not in document:
        # A response: exactly one of result and error, and the id of the request it answers.
        if not has_id or has_result == has_error:
            return None, RpcRefusal.NOT_RPC, ident
        return RpcMessage(MessageKind.RESPONSE, None, ident), None, ident
    if not isinstance(method, str) or not method or has_result or has_error:
        return None, RpcRefusal.NOT_RPC, ident
    if not is_text(method):
        return None, RpcRefusal.NOT_TEXT, ident
    kind = MessageKind.REQUEST if has_id else MessageKind.NOTIFICATION
    if method != "tools/call":
        return RpcMessage(kind, method, ident), None, ident
    # Judged whatever the kind: a tools/call sent as a notification is still a call to check.
    params = document.get("params")
    tool = params.get("name") if isinstance(params, dict) else None
    if not isinstance(tool, str) or not tool or len(tool) > MAX_TOOL_NAME_CHARS:
        return None, RpcRefusal.TOOL_NAME, ident
    if not is_text(tool):
        return None, RpcRefusal.NOT_TEXT, ident
    return RpcMessage(kind, method, ident, tool), None, ident


def read_rpc(body: bytes, content_type: str) -> RpcRead:
    """Read a POST body from an MCP client. Never raises; see the module's invariants.

    ``content_type`` is the request's Content-Type header as sent (any case, parameters allowed).
    """
    if not _is_json_media_type(content_type):
        return RpcRead(refusal=RpcRefusal.CONTENT_TYPE)
    try:
        # Decoded here, strictly: json.loads on bytes would also take UTF-16/32 and a UTF-8 BOM. The
        # duplicate-key hook sees every object at every depth (it costs about 1.7x a plain parse; a check
        # on the raw bytes is fooled by escapes).
        document = json.loads(body.decode("utf-8"), object_pairs_hook=unique_keys,
                              parse_constant=_not_json_constant)
    except RepeatedKey:
        return RpcRead(refusal=RpcRefusal.AMBIGUOUS)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError; RecursionError: hostile nesting
        return RpcRead(refusal=RpcRefusal.NOT_JSON)
    if isinstance(document, list):
        if not document:
            return RpcRead(batch=True, refusal=RpcRefusal.EMPTY_BATCH)
        if len(document) > MAX_BATCH:
            return RpcRead(batch=True, refusal=RpcRefusal.BATCH_TOO_LARGE)
        messages: list[RpcMessage] = []
        for item in document:
            message, refusal, _ = _message(item)
            if refusal is not None:
                # One error for the whole batch, with a null id: which message it answers is moot.
                return RpcRead(batch=True, refusal=refusal)
            assert message is not None
            messages.append(message)
        return RpcRead(tuple(messages), batch=True)
    message, refusal, ident = _message(document)
    if refusal is not None:
        return RpcRead(refusal=refusal, id=ident)
    assert message is not None
    return RpcRead((message,), id=ident)


def rpc_error(id: RpcId, code: int, message: str, data: object = None) -> bytes:
    """A JSON-RPC 2.0 error response (UTF-8, ASCII-only). ``data`` is left out when ``None``.

    An id JSON-RPC does not allow (which :func:`read_rpc` never returns) is answered as null.

    >>> rpc_error(7, TOOL_NOT_ALLOWED, "Tool not allowed.", {"tool": "delete_repo"})
    b'{"jsonrpc":"2.0","id":7,"error":{"code":-32031,"message":"Tool not allowed.","data":{"tool":"delete_repo"}}}'
    """
    error: dict[str, object] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    document = {"jsonrpc": "2.0", "id": id if _valid_id(id) else None, "error": error}
    return json.dumps(document, separators=(",", ":"), allow_nan=False).encode()
