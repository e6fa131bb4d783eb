"""What every API of the mock provider shares: its settings, the request log, the accounts it serves,
the injected-key checks, each provider's error shape and the pacing of streams.

An :class:`Account` is one provider account the mock stands in for: the root pair (OpenAI and
Anthropic at ``/v1/…``, told apart by the ``anthropic-version`` header) or a named upstream of some
:class:`~authz.upstreams.Kind` under ``/x/{name}/``. Each account has its own key and its own stored
objects (files, batches, responses), as separate provider accounts do. Every request is recorded
before anything else happens to it, refused ones included, so tests can see what reached the provider.
"""

from __future__ import annotations

import asyncio
import enum
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from authz.upstreams import KEY_HEADERS, NAME, Kind

#: The models the root lists (both APIs: Anthropic's list keeps the ``claude`` ones).
MODELS = ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small", "claude-haiku-4-5", "claude-opus-4-6"]

#: The models a named upstream of each kind lists.
KIND_MODELS: dict[Kind, list[str]] = {
    Kind.OPENAI: ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small"],
    Kind.OPENAI_COMPATIBLE: ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small"],
    Kind.AZURE: ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small"],
    Kind.ANTHROPIC: ["claude-haiku-4-5", "claude-opus-4-6"],
    Kind.GEMINI: ["gemini-2.5-flash", "gemini-2.5-pro", "gemini-embedding-001"],
    Kind.GEMINI_OPENAI: ["gemini-2.5-flash", "gemini-2.5-pro", "gemini-embedding-001"],
    Kind.MISTRAL: ["mistral-small-latest", "mistral-large-latest", "mistral-embed", "codestral-latest"],
    Kind.BEDROCK: ["anthropic.claude-3-haiku-20240307-v1:0", "amazon.titan-embed-text-v2:0"],
}

_WORDS = ["Hello", " from", " the", " mock", " provider", "."]

#: Every answer's input: a fixed count, so tests can check what the gateway recorded.
PROMPT_TOKENS = 9


def words(limit: object) -> list[str]:
    """The answer: one token per word, as many as the request's output limit allows (all without one)."""
    return _WORDS[:limit] if isinstance(limit, int) and limit >= 0 else _WORDS


def limit(body: dict[str, Any], *names: str) -> object:
    """The first of ``names`` the body has (its value, even null), as the API reads its output limit."""
    return next((body[name] for name in names if name in body), None)


def new_id(prefix: str, length: int = 24) -> str:
    return prefix + uuid.uuid4().hex[:length]


def now() -> int:
    return int(time.time())


class Recorder:
    def __init__(self) -> None:
        self.requests: list[dict] = []

    async def record(self, request: Request) -> bytes:
        body = await request.body()
        self.requests.append(
            {
                "method": request.method,
                "path": request.url.path,
                "query": request.url.query,
                "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.headers.raw],
                "body": body.decode("utf-8", "replace"),
                "at": time.time(),
            }
        )
        return body


class UpstreamSpec(BaseModel):
    """One named upstream the mock stands in for (an entry of ``MOCK_UPSTREAMS``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Kind
    #: What Envoy must inject; for Bedrock ``<access key id>:<secret access key>``, which signs instead.
    key: str = Field(min_length=1)
    #: Bedrock's region: the scope its signatures must name.
    region: str | None = None


class MockSettings(BaseSettings):
    """The mock's own settings (``MOCK_*``), which the stack runner sets: the provider keys Envoy must
    inject, the named upstreams it mocks, and the pace of streams."""

    model_config = SettingsConfigDict(env_prefix="MOCK_", extra="ignore")

    openai_key: str = Field(default="", description="Empty: every OpenAI request is refused.")
    anthropic_key: str = Field(default="", description="Empty: every Anthropic request is refused.")
    upstreams: dict[str, UpstreamSpec] = Field(
        default_factory=dict,
        description='JSON {"<name>": {"kind": …, "key": …, "region": …}}: each is served under /x/<name>/.',
    )
    stream_interval: float = Field(default=0.1, ge=0)
    log_level: str = "info"

    @field_validator("upstreams")
    @classmethod
    def _upstreams(cls, upstreams: dict[str, UpstreamSpec]) -> dict[str, UpstreamSpec]:
        for name, spec in upstreams.items():
            if not NAME.match(name):
                raise ValueError(f"MOCK_UPSTREAMS names {name!r}: lower-case letters, digits and dashes "
                                 "(2 to 32, starting with a letter)")
            if spec.kind is Kind.MCP:
                raise ValueError(f"MOCK_UPSTREAMS[{name}]: the mock serves no MCP (run the mcp SDK's own server)")
            if spec.kind is Kind.BEDROCK:
                access, _, secret = spec.key.partition(":")
                if not access or not secret or not spec.region:
                    raise ValueError(f"MOCK_UPSTREAMS[{name}]: bedrock needs key '<access key id>:<secret>' "
                                     "and a region")
            elif spec.region is not None:
                raise ValueError(f"MOCK_UPSTREAMS[{name}]: region applies to bedrock only")
        return upstreams


class Dialect(enum.Enum):
    """Whose error shapes a request gets."""

    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    AZURE = "azure"
    GEMINI = "gemini"
    BEDROCK = "bedrock"
    MISTRAL = "mistral"


_DIALECTS: dict[Kind, Dialect] = {
    Kind.OPENAI: Dialect.OPENAI,
    Kind.OPENAI_COMPATIBLE: Dialect.OPENAI,
    Kind.ANTHROPIC: Dialect.ANTHROPIC,
    Kind.AZURE: Dialect.AZURE,
    Kind.GEMINI: Dialect.GEMINI,
    Kind.GEMINI_OPENAI: Dialect.GEMINI,
    Kind.BEDROCK: Dialect.BEDROCK,
    Kind.MISTRAL: Dialect.MISTRAL,
}

_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                    404: "not_found_error", 409: "invalid_request_error"}
_GOOGLE_STATUSES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                    409: "FAILED_PRECONDITION"}
_AWS_TYPES = {400: "ValidationException", 403: "AccessDeniedException", 404: "ResourceNotFoundException",
              409: "ConflictException"}
_AZURE_CODES = {400: "BadRequest", 404: "NotFound", 409: "Conflict"}


class Problem(Exception):
    """A request the provider refuses (not for a key: see :func:`key_denial`), in its dialect's shape."""

    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param

    def render(self, dialect: Dialect) -> Response:
        status, message = self.status, self.message
        if dialect is Dialect.ANTHROPIC:
            kind = _ANTHROPIC_TYPES.get(status, "api_error")
            return JSONResponse({"type": "error", "error": {"type": kind, "message": message}}, status)
        if dialect is Dialect.GEMINI:
            google = _GOOGLE_STATUSES.get(status, "INTERNAL")
            return JSONResponse({"error": {"code": status, "message": message, "status": google}}, status)
        if dialect is Dialect.BEDROCK:
            aws = self.code or _AWS_TYPES.get(status, "InternalServerException")
            return JSONResponse({"message": message}, status, headers={"x-amzn-ErrorType": aws})
        if dialect is Dialect.AZURE:
            code = self.code or _AZURE_CODES.get(status, str(status))
            return JSONResponse({"error": {"code": code, "message": message}}, status)
        error = {"message": message, "type": "invalid_request_error", "param": self.param, "code": self.code}
        if dialect is Dialect.MISTRAL:
            return JSONResponse({"object": "error", **error}, status)
        return JSONResponse({"error": error}, status)


def _same(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def openai_key_error() -> Response:
    return JSONResponse(
        {
            "error": {
                "message": "Incorrect API key provided.",
                "type": "invalid_request_error",
                "param": None,
                "code": "invalid_api_key",
            }
        },
        status_code=401,
    )


def anthropic_key_error() -> Response:
    return JSONResponse(
        {"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}},
        status_code=401,
    )


def _google_key_error(missing: bool) -> Response:
    # The brief's contract: both cases answer 403 (the real API says 400 INVALID_ARGUMENT for a wrong key).
    message = ("Method doesn't allow unregistered callers (callers without established identity). Please use API "
               "Key or other form of API consumer identity to call this API." if missing
               else "API key not valid. Please pass a valid API key.")
    return JSONResponse({"error": {"code": 403, "message": message, "status": "PERMISSION_DENIED"}}, 403)


_AZURE_DENIED = ("Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid "
                 "key for an active subscription and use a correct regional API endpoint for your resource.")


def key_denial(call: Call) -> Response | None:
    """The refusal of a named upstream's request without its key, in the kind's own shape (None: accepted)."""
    kind = call.account.kind
    assert kind is not None and kind is not Kind.BEDROCK
    where = KEY_HEADERS[kind]
    assert where is not None
    header, template = where
    given = call.request.headers.get(header)
    if _same(given, template.format(key=call.account.key)):
        return None
    if kind is Kind.ANTHROPIC:
        return anthropic_key_error()
    if kind is Kind.AZURE:
        return JSONResponse({"error": {"code": "401", "message": _AZURE_DENIED}}, 401)
    if kind in (Kind.GEMINI, Kind.GEMINI_OPENAI):
        return _google_key_error(missing=given is None)
    if kind is Kind.MISTRAL:
        return JSONResponse({"detail": "Unauthorized"}, 401)
    return openai_key_error()


def root_denial(settings: MockSettings) -> Deny:
    """The root's check: Anthropic's key for requests with an ``anthropic-version`` header, OpenAI's otherwise."""

    def deny(call: Call) -> Response | None:
        headers = call.request.headers
        # An empty key refuses everything (a provider with a real key is not mocked).
        if is_anthropic(call.request):
            accepted = bool(settings.anthropic_key) and _same(headers.get("x-api-key"), settings.anthropic_key)
            return None if accepted else anthropic_key_error()
        accepted = bool(settings.openai_key) and _same(headers.get("authorization"), f"Bearer {settings.openai_key}")
        return None if accepted else openai_key_error()

    return deny


def is_anthropic(request: Request) -> bool:
    return "anthropic-version" in request.headers


@dataclass
class StoredFile:
    meta: dict[str, Any]
    content: bytes


@dataclass
class Account:
    """One provider account the mock stands in for, with its stored objects (never shared between accounts)."""

    name: str | None
    #: None: the root, which is OpenAI and Anthropic at once.
    kind: Kind | None
    key: str
    deny: Deny
    region: str | None = None
    files: dict[str, StoredFile] = field(default_factory=dict)
    batches: dict[str, dict[str, Any]] = field(default_factory=dict)
    responses: dict[str, dict[str, Any]] = field(default_factory=dict)
    message_batches: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def prefix(self) -> str:
        return f"/x/{self.name}" if self.name else ""


@dataclass
class Form:
    """A multipart body, read whole: the last value of each text field, every file of each file field."""

    fields: dict[str, str]
    files: dict[str, list[tuple[str, bytes, str]]]

    def text(self, name: str, default: str | None = None) -> str | None:
        return self.fields.get(name, default)


@dataclass
class Call:
    """One request to one account: what a handler works from."""

    request: Request
    body: bytes
    account: Account
    #: Seconds between a stream's events.
    interval: float

    @property
    def dialect(self) -> Dialect:
        if self.account.kind is None:
            return Dialect.ANTHROPIC if is_anthropic(self.request) else Dialect.OPENAI
        return _DIALECTS[self.account.kind]

    def json(self) -> dict[str, Any]:
        try:
            value = json.loads(self.body or b"{}")
        except ValueError:
            raise Problem(400, "We could not parse the JSON body of your request.") from None
        if not isinstance(value, dict):
            raise Problem(400, "The request body must be a JSON object.")
        return value

    async def form(self) -> Form:
        try:
            form = await self.request.form()
        except HTTPException as error:
            raise Problem(400, f"Invalid multipart body: {error.detail}") from None
        fields: dict[str, str] = {}
        files: dict[str, list[tuple[str, bytes, str]]] = {}
        try:
            for name, value in form.multi_items():
                if isinstance(value, UploadFile):
                    content = await value.read()
                    files.setdefault(name, []).append((value.filename or "", content, value.content_type or ""))
                else:
                    fields[name] = value
        finally:
            await form.close()
        return Form(fields, files)


Handler = Callable[[Call], Awaitable[Response]]
Deny = Callable[[Call], Response | None]


@dataclass
class Mock:
    """The app-wide parts every route needs: the request log and the pace of streams."""

    recorder: Recorder
    interval: float

    def route(self, account: Account, path: str, handler: Handler, methods: list[str]) -> Route:
        """``handler`` at ``path``, behind recording (first) and the account's key check."""

        async def endpoint(request: Request) -> Response:
            call = Call(request, await self.recorder.record(request), account, self.interval)
            if (denied := account.deny(call)) is not None:
                return denied
            try:
                return await handler(call)
            except Problem as problem:
                return problem.render(call.dialect)

        endpoint.__name__ = getattr(handler, "__name__", "endpoint")
        return Route(path, endpoint, methods=methods)

    def routes(self, account: Account, base: str, table: Iterable[tuple[str, Handler, list[str]]]) -> list[Route]:
        return [self.route(account, base + path, handler, methods) for path, handler, methods in table]


def sse(events: list[tuple[str | None, dict | str]], interval: float, *, crlf: bool = False) -> AsyncIterator[bytes]:
    """Server-Sent Events, one every ``interval`` seconds (``crlf``: lines end as Google's do)."""
    end = "\r\n" if crlf else "\n"

    async def stream() -> AsyncIterator[bytes]:
        for index, (event, data) in enumerate(events):
            if index:
                await asyncio.sleep(interval)
            payload = data if isinstance(data, str) else json.dumps(data)
            head = f"event: {event}{end}" if event else ""
            yield f"{head}data: {payload}{end}{end}".encode()

    return stream()


def paced(chunks: list[bytes], interval: float) -> AsyncIterator[bytes]:
    """Raw chunks, one every ``interval`` seconds."""

    async def stream() -> AsyncIterator[bytes]:
        for index, chunk in enumerate(chunks):
            if index:
                await asyncio.sleep(interval)
            yield chunk

    return stream()


# -- models: the one path both root APIs share ------------------------------------------------------------


def _anthropic_model(name: str) -> dict[str, Any]:
    return {"type": "model", "id": name, "display_name": name, "created_at": "2025-01-01T00:00:00Z"}


def _mistral_model(name: str) -> dict[str, Any]:
    embeds = "embed" in name
    return {
        "id": name,
        "object": "model",
        "created": 1700000000,
        "owned_by": "mistralai",
        "name": name,
        "description": f"{name} (mock)",
        "max_context_length": 32768,
        "aliases": [],
        "deprecation": None,
        "default_model_temperature": 0.7,
        "capabilities": {"completion_chat": not embeds, "completion_fim": name.startswith("codestral"),
                         "function_calling": not embeds, "fine_tuning": False, "vision": False,
                         "classification": False},
        "type": "base",
    }


def _openai_model(name: str, owner: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 1700000000, "owned_by": owner}


def _listed(call: Call) -> list[str]:
    kind = call.account.kind
    if kind is None:
        return [m for m in MODELS if m.startswith("claude")] if call.dialect is Dialect.ANTHROPIC else MODELS
    return KIND_MODELS[kind]


async def models(call: Call) -> Response:
    names = _listed(call)
    kind = call.account.kind
    if call.dialect is Dialect.ANTHROPIC:
        data = [_anthropic_model(m) for m in names]
        return JSONResponse({"data": data, "has_more": False, "first_id": data[0]["id"], "last_id": data[-1]["id"]})
    if kind is Kind.MISTRAL:
        return JSONResponse({"object": "list", "data": [_mistral_model(m) for m in names]})
    if kind is Kind.GEMINI_OPENAI:
        return JSONResponse({"object": "list", "data": [_openai_model(f"models/{m}", "google") for m in names]})
    return JSONResponse({"object": "list", "data": [_openai_model(m, "mock") for m in names]})


async def model(call: Call) -> Response:
    name = call.request.path_params["name"]
    if call.dialect is Dialect.ANTHROPIC:
        return JSONResponse(_anthropic_model(name))
    if call.account.kind is Kind.MISTRAL:
        return JSONResponse(_mistral_model(name))
    return JSONResponse(_openai_model(name, "google" if call.account.kind is Kind.GEMINI_OPENAI else "mock"))
