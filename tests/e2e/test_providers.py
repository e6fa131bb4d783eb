"""Every provider behind the gateway, each through its official SDK, unchanged but for base URL and key.

Azure OpenAI, Gemini (native and OpenAI-compatible), Bedrock (the Anthropic SDK's Bedrock client, and
Converse over plain HTTP), Mistral and an OpenAI-compatible server, all served by the mock provider of the
``providers`` stack, which insists on the key Envoy must inject (Bedrock: a SigV4 signature it verifies).
The tests prove what reached each provider (path, injected key, never the PAT), where the profile's
catalog routes a model, that usage is recorded per upstream, that endpoint families and the model in a
multipart form are enforced before the provider sees anything, that ``GET …/models`` lists exactly the
token's models, and that each API gets its denials in its own shape.

Every client here sends through a recording transport, so the last test can check everything a client
saw (and everything the mock received, and every log file) for a PAT or an upstream key.
"""

from __future__ import annotations

import fnmatch
import io
import json
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import anthropic
import genai_prices
import httpx
import httpx2
import openai
import pytest
from botocore.eventstream import EventStreamBuffer  # type: ignore[import-untyped]
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types
from mistralai.client import Mistral
from mistralai.client.errors import SDKError
from mistralai.client.models import UserMessage

from tests.e2e.conftest import Minted, ProviderGateway
from tests.e2e.test_audit import wait_for_records

pytestmark = pytest.mark.e2e

WORDS = "Hello from the mock provider."
AZURE_VERSION = "2024-10-21"
HAIKU = "anthropic.claude-3-haiku-20240307-v1:0"
OPUS = "anthropic.claude-3-opus-20240229-v1:0"
ENVIRONMENTS = ["dev", "staging", "prod", "ci"]
#: Every family but MCP tools: what the main profile grants.
FAMILIES = ["chat", "responses", "completions", "embeddings", "moderations", "images", "audio", "files", "batches",
            "models", "count_tokens"]

#: The main profile: a few models of every API, by exact name or pattern.
CATALOG = [
    {"provider": "azure", "pattern": "gpt-4o"},
    {"provider": "azure", "pattern": "text-embedding-3-small"},
    {"provider": "gemini", "pattern": "gemini-2.0-flash"},
    {"provider": "gemini", "pattern": "gemini-embedding-001"},
    {"provider": "bedrock", "pattern": "anthropic.claude-3-haiku-*"},
    {"provider": "mistral", "pattern": "mistral-small-latest"},
    {"provider": "mistral", "pattern": "mistral-embed"},
    {"provider": "openai", "pattern": "gpt-4o-mini"},
    {"provider": "openai", "pattern": "whisper-1"},
    {"provider": "openai", "pattern": "gpt-image-1"},
    {"provider": "anthropic", "pattern": "claude-haiku-4-5"},
]
LLAMA = "llama-3.1-8b-instruct"


# -- what every client saw ---------------------------------------------------------------------------------


@dataclass
class Exchange:
    """One response a client received: its request line, status, headers and the body bytes as they came."""

    method: str
    path: str
    status: int
    headers: list[tuple[str, str]]
    body: bytearray = field(default_factory=bytearray)

    def header(self, name: str) -> str:
        return next(value for key, value in self.headers if key.lower() == name)


class Seen:
    """The module's PATs and every response any of its clients received (through :meth:`transport`)."""

    def __init__(self, gateway: ProviderGateway) -> None:
        self.gateway = gateway
        self.pats: list[str] = []
        self.exchanges: list[Exchange] = []
        #: Every client made, closed when the module ends (an unclosed one is a ResourceWarning, an error here).
        self.clients = ExitStack()

    def transport(self, module: Any) -> Any:
        """An ``HTTPTransport`` of ``module`` (httpx, or httpx2 for the openai and anthropic SDKs) that
        records each response, its body as the client reads it, streams included."""
        exchanges = self.exchanges

        class Tee(module.SyncByteStream):
            def __init__(self, inner: Any, sink: bytearray) -> None:
                self._inner, self._sink = inner, sink

            def __iter__(self) -> Iterator[bytes]:
                for chunk in self._inner:
                    self._sink.extend(chunk)
                    yield chunk

            def close(self) -> None:
                self._inner.close()

        class Recording(module.HTTPTransport):
            def handle_request(self, request: Any) -> Any:
                response = super().handle_request(request)
                exchange = Exchange(request.method, request.url.raw_path.decode(), response.status_code,
                                    list(response.headers.multi_items()))
                exchanges.append(exchange)
                return module.Response(response.status_code, headers=response.headers, extensions=response.extensions,
                                       stream=Tee(response.stream, exchange.body))

        return Recording()

    def last(self, fragment: str) -> Exchange:
        """The latest response to a request whose path contains ``fragment``."""
        return next(e for e in reversed(self.exchanges) if fragment in e.path)

    def mint(self, team: dict, **fields: Any) -> Minted:
        minted = self.gateway.mint(team=team, **fields)
        self.pats.append(minted.secret)
        return minted

    # -- clients, each exactly as its SDK's documentation has it, plus the recording transport --

    def _http(self, module: Any, **options: Any) -> Any:
        """A recording client of ``module``, closed with the module's others (the SDKs' own close with it)."""
        client = module.Client(transport=self.transport(module), timeout=10, **options)
        self.clients.callback(client.close)
        return client

    def openai_client(self, pat: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.gateway.openai_base, api_key=pat, max_retries=0,
                             http_client=self._http(httpx2))

    def azure_client(self, pat: str) -> openai.AzureOpenAI:
        return openai.AzureOpenAI(azure_endpoint=f"{self.gateway.url}/azure", api_key=pat, api_version=AZURE_VERSION,
                                  max_retries=0, http_client=self._http(httpx2))

    def anthropic_client(self, pat: str) -> anthropic.Anthropic:
        return anthropic.Anthropic(base_url=self.gateway.anthropic_base, api_key=pat, max_retries=0,
                                   http_client=self._http(httpx2))

    def bedrock_client(self, pat: str) -> anthropic.AnthropicBedrock:
        return anthropic.AnthropicBedrock(api_key=pat, base_url=f"{self.gateway.url}/bedrock", aws_region="us-east-1",
                                          max_retries=0, http_client=self._http(httpx2))

    def gemini_client(self, pat: str) -> genai.Client:
        options = genai_types.HttpOptions(base_url=f"{self.gateway.url}/gemini", httpx_client=self._http(httpx))
        return genai.Client(api_key=pat, http_options=options)

    def mistral_client(self, pat: str) -> Mistral:
        return Mistral(api_key=pat, server_url=f"{self.gateway.url}/mistral", client=self._http(httpx))

    def http_client(self) -> httpx.Client:
        client: httpx.Client = self._http(httpx, base_url=self.gateway.url)
        return client


@pytest.fixture(scope="module")
def seen(providers: ProviderGateway) -> Iterator[Seen]:
    witness = Seen(providers)
    with witness.clients:
        yield witness


def new_profile(providers: ProviderGateway, catalog: list[dict], endpoints: list[str] | None = None) -> dict:
    body: dict[str, Any] = {"name": f"e2e-prov-{uuid.uuid4().hex[:8]}", "catalog": catalog,
                            "environments": ENVIRONMENTS}
    if endpoints is not None:
        body["endpoints"] = endpoints
    reply = providers.admin.post("/profiles", json=body)
    assert reply.status_code == 201, reply.text
    return reply.json()


def new_team(providers: ProviderGateway, catalog: list[dict], endpoints: list[str] | None = None) -> dict:
    return providers.team(profile_id=new_profile(providers, catalog, endpoints)["id"])


@pytest.fixture(scope="module")
def team(providers: ProviderGateway) -> dict:
    """The main team: :data:`CATALOG`, every family but tools."""
    return new_team(providers, CATALOG, FAMILIES)


@pytest.fixture(scope="module")
def pat(seen: Seen, team: dict) -> str:
    return seen.mint(team).secret


@dataclass
class Routed:
    """Two teams whose profiles send the same model name to different upstreams."""

    via_azure: str
    via_openai: str


@pytest.fixture(scope="module")
def routed(providers: ProviderGateway, seen: Seen) -> Routed:
    # Order matters: the first entry that offers a model names its upstream, so "*" comes last.
    first = new_team(providers, [
        {"provider": "openai", "pattern": "gpt-4o", "upstream": "azure"},
        {"provider": "openai", "pattern": "gemini-2.0-flash", "upstream": "gemini-compat"},
        {"provider": "openai", "pattern": LLAMA, "upstream": "vllm"},
        {"provider": "openai", "pattern": "*"},
    ])
    second = new_team(providers, [{"provider": "openai", "pattern": "gpt-4o"}])
    return Routed(seen.mint(first).secret, seen.mint(second).secret)


def marker() -> str:
    return f"marker-{uuid.uuid4().hex}"


def reached(providers: ProviderGateway, text: str) -> list[dict]:
    """What the mock received with ``text`` in its body or path."""
    return [r for r in providers.received() if text in r["body"] or text in r["path"]]


def only(providers: ProviderGateway, text: str) -> dict:
    found = reached(providers, text)
    assert len(found) == 1, f"{text} reached the mock {len(found)} times"
    return found[0]


def header(record: dict, name: str) -> str | None:
    values = [value for key, value in record["headers"] if key.lower() == name]
    assert len(values) <= 1, f"{name} sent {len(values)} times"
    return values[0] if values else None


def said(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


# -- 1. Azure OpenAI ---------------------------------------------------------------------------------------


def test_azure_openai_chat_stream_and_embeddings(providers: ProviderGateway, seen: Seen, pat: str) -> None:
    client = seen.azure_client(pat)
    plain, streamed, embedded = marker(), marker(), marker()

    done = client.chat.completions.create(model="gpt-4o", messages=said(plain))
    assert done.model == "gpt-4o" and done.choices[0].message.content == WORDS
    assert done.usage is not None and (done.usage.prompt_tokens, done.usage.completion_tokens) == (9, 6)

    chunks = list(client.chat.completions.create(model="gpt-4o", messages=said(streamed), stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == WORDS

    vectors = client.embeddings.create(model="text-embedding-3-small", input=embedded)
    assert vectors.model == "text-embedding-3-small" and len(vectors.data) == 1

    key = providers.upstream_keys["azure"]
    for text, path in [(plain, "gpt-4o/chat/completions"), (streamed, "gpt-4o/chat/completions"),
                       (embedded, "text-embedding-3-small/embeddings")]:
        record = only(providers, text)
        assert record["path"] == f"/x/azure/openai/deployments/{path}"
        assert record["query"] == f"api-version={AZURE_VERSION}"
        assert header(record, "api-key") == key
        assert header(record, "authorization") is None
        assert pat not in json.dumps(record)


def test_an_azure_stream_ends_with_the_usage_the_gateway_asked_for(providers: ProviderGateway, seen: Seen,
                                                                   pat: str) -> None:
    text = marker()
    chunks = list(seen.azure_client(pat).chat.completions.create(model="gpt-4o", messages=said(text), stream=True))
    # The client did not ask for usage: the gateway did.
    assert json.loads(only(providers, text)["body"]).get("stream_options") == {"include_usage": True}
    last = chunks[-1].usage
    assert last is not None and (last.prompt_tokens, last.completion_tokens) == (9, 6)
    request_id = seen.last("/azure/openai/deployments/gpt-4o/chat/completions").header("x-request-id")
    record = wait_for_records(providers, [request_id])[request_id]
    assert (record["prompt_tokens"], record["completion_tokens"]) == (9, 6)


# -- 2. routing by the catalog ------------------------------------------------------------------------------


def test_the_catalog_routes_each_model_to_its_upstream(providers: ProviderGateway, seen: Seen, routed: Routed) -> None:
    keys = providers.upstream_keys
    openai_key = providers.provider_keys["openai"]
    cases = [
        (routed.via_azure, "gpt-4o", "azure", "/x/azure/openai/v1/chat/completions", "api-key", keys["azure"]),
        (routed.via_azure, "gpt-4o-mini", "openai", "/v1/chat/completions", "authorization", f"Bearer {openai_key}"),
        (routed.via_azure, "gemini-2.0-flash", "gemini-compat", "/x/gemini-compat/v1beta/openai/chat/completions",
         "authorization", f"Bearer {keys['gemini-compat']}"),
        (routed.via_azure, LLAMA, "vllm", "/x/vllm/v1/chat/completions", "authorization", f"Bearer {keys['vllm']}"),
        # The same model name, another team: its profile names no upstream, so the API's default serves it.
        (routed.via_openai, "gpt-4o", "openai", "/v1/chat/completions", "authorization", f"Bearer {openai_key}"),
    ]
    for secret, model, upstream, path, name, value in cases:
        text = marker()
        raw = seen.openai_client(secret).chat.completions.with_raw_response.create(model=model, messages=said(text))
        assert raw.parse().choices[0].message.content == WORDS
        record = only(providers, text)
        assert (record["path"], header(record, name)) == (path, value), (model, upstream)
        assert providers.log_record(raw.headers["x-request-id"])["provider"] == upstream

    nowhere = providers.admin.post("/profiles", json={
        "name": f"e2e-prov-{uuid.uuid4().hex[:8]}", "environments": ENVIRONMENTS,
        "catalog": [{"provider": "openai", "pattern": "gpt-4o", "upstream": "nowhere"}]})
    assert nowhere.status_code == 422 and nowhere.json()["code"] == "upstream_unknown", nowhere.text


# -- 3. Gemini, native --------------------------------------------------------------------------------------


def test_gemini_native(providers: ProviderGateway, seen: Seen, pat: str) -> None:
    client = seen.gemini_client(pat)
    text = marker()
    done = client.models.generate_content(model="gemini-2.0-flash", contents=text,
                                          config=genai_types.GenerateContentConfig(max_output_tokens=4))
    assert done.text == "Hello from the mock" and done.usage_metadata is not None
    assert (done.usage_metadata.prompt_token_count, done.usage_metadata.candidates_token_count) == (9, 4)
    record = only(providers, text)
    sent = seen.last(":generateContent").path  # /gemini/<the SDK's API version>/models/…
    assert sent.endswith("/models/gemini-2.0-flash:generateContent")
    assert record["path"] == "/x" + sent
    assert header(record, "x-goog-api-key") == providers.upstream_keys["gemini"]

    chunks = list(client.models.generate_content_stream(model="gemini-2.0-flash", contents=marker()))
    assert "".join(c.text or "" for c in chunks) == WORDS
    assert chunks[-1].usage_metadata is not None and chunks[-1].usage_metadata.candidates_token_count == 6

    assert client.models.count_tokens(model="gemini-2.0-flash", contents="hi").total_tokens == 9
    embedded = client.models.embed_content(model="gemini-embedding-001", contents=["a", "b"])
    assert embedded.embeddings is not None and len(embedded.embeddings) == 2

    # The gateway answers the list from the token's catalog; the mock's own list has other models.
    assert sorted(m.name or "" for m in client.models.list()) == ["models/gemini-2.0-flash",
                                                                 "models/gemini-embedding-001"]


# -- 4. Bedrock ---------------------------------------------------------------------------------------------


def converse(seen: Seen, pat: str, operation: str, model: str, text: str, **extra: Any) -> httpx.Response:
    # boto3 refuses bearer auth over plain HTTP; this is the request it would send.
    return seen.http_client().post(f"/bedrock/model/{quote(model, safe='')}/{operation}",
                                   headers={"Authorization": f"Bearer {pat}"},
                                   json={"messages": [{"role": "user", "content": [{"text": text}]}], **extra})


def events(body: bytes) -> list[tuple[str, dict]]:
    """An AWS event stream's events, by botocore's own parser (which checks every CRC)."""
    buffer = EventStreamBuffer()
    buffer.add_data(body)
    return [(message.headers[":event-type"], json.loads(message.payload)) for message in buffer]


def test_bedrock_invoke_stream_and_converse(providers: ProviderGateway, seen: Seen, pat: str) -> None:
    client = seen.bedrock_client(pat)
    invoked, streamed, conversed, converse_streamed = marker(), marker(), marker(), marker()

    message = client.messages.create(model=HAIKU, max_tokens=3, messages=said(invoked))
    assert message.content[0].text == "Hello from the"  # type: ignore[union-attr]
    assert (message.usage.input_tokens, message.usage.output_tokens) == (9, 3)

    with client.messages.stream(model=HAIKU, max_tokens=64, messages=said(streamed)) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == WORDS and final.usage.output_tokens == 6

    answer = converse(seen, pat, "converse", HAIKU, conversed, inferenceConfig={"maxTokens": 4})
    assert answer.status_code == 200, answer.text
    assert answer.json()["usage"] == {"inputTokens": 9, "outputTokens": 4, "totalTokens": 13}

    answer = converse(seen, pat, "converse-stream", HAIKU, converse_streamed)
    assert answer.status_code == 200, answer.text
    parsed = events(answer.content)
    assert "".join(e["delta"]["text"] for kind, e in parsed if kind == "contentBlockDelta") == WORDS
    assert parsed[-1] == ("metadata", {"usage": {"inputTokens": 9, "outputTokens": 6, "totalTokens": 15},
                                       "metrics": {"latencyMs": 42}})

    access_key = providers.upstream_keys["bedrock"].partition(":")[0]
    for text, operation in [(invoked, "invoke"), (streamed, "invoke-with-response-stream"),
                            (conversed, "converse"), (converse_streamed, "converse-stream")]:
        record = only(providers, text)
        assert record["path"] == f"/x/bedrock/model/{HAIKU}/{operation}"
        # The mock answers 403 to anything but a valid signature: the 200s above are Envoy's signing.
        authorization = header(record, "authorization") or ""
        assert authorization.startswith(f"AWS4-HMAC-SHA256 Credential={access_key}/"), authorization
        assert "/us-east-1/bedrock/aws4_request" in authorization
        assert pat not in json.dumps(record)


# -- 5. Mistral ---------------------------------------------------------------------------------------------


def test_mistral(providers: ProviderGateway, seen: Seen, pat: str) -> None:
    client = seen.mistral_client(pat)
    text = marker()
    done = client.chat.complete(model="mistral-small-latest", messages=[UserMessage(content=text)])
    assert done.choices[0].message is not None and done.choices[0].message.content == WORDS
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (9, 6)
    record = only(providers, text)
    assert record["path"] == "/x/mistral/v1/chat/completions"
    assert header(record, "authorization") == f"Bearer {providers.upstream_keys['mistral']}"

    streamed = list(client.chat.stream(model="mistral-small-latest", messages=[UserMessage(content=marker())]))
    assert "".join(str(e.data.choices[0].delta.content or "") for e in streamed) == WORDS
    assert streamed[-1].data.usage is not None and streamed[-1].data.usage.total_tokens == 15

    vectors = client.embeddings.create(model="mistral-embed", inputs=["a", "b"])
    assert len(vectors.data) == 2


# -- 6. usage, recorded per upstream ------------------------------------------------------------------------


def test_usage_is_recorded_for_every_upstream(providers: ProviderGateway, seen: Seen, pat: str) -> None:
    expected: dict[str, tuple[str, str, int]] = {}

    def note(fragment: str, upstream: str, model: str, completion: int) -> None:
        expected[seen.last(fragment).header("x-request-id")] = (upstream, model, completion)

    azure = seen.azure_client(pat)
    azure.chat.completions.create(model="gpt-4o", messages=said("hi"), max_tokens=2)
    note("/azure/openai/deployments/gpt-4o/chat/completions", "azure", "gpt-4o", 2)
    # (Azure's streams: test_an_azure_stream_ends_with_the_usage_the_gateway_asked_for.)

    gemini = seen.gemini_client(pat)
    gemini.models.generate_content(model="gemini-2.0-flash", contents="hi",
                                   config=genai_types.GenerateContentConfig(max_output_tokens=4))
    note(":generateContent", "gemini", "gemini-2.0-flash", 4)
    for _chunk in gemini.models.generate_content_stream(model="gemini-2.0-flash", contents="hi"):
        pass
    note(":streamGenerateContent", "gemini", "gemini-2.0-flash", 6)

    bedrock = seen.bedrock_client(pat)
    bedrock.messages.create(model=HAIKU, max_tokens=3, messages=said("hi"))
    note("/invoke", "bedrock", HAIKU, 3)
    with bedrock.messages.stream(model=HAIKU, max_tokens=64, messages=said("hi")) as stream:
        stream.until_done()
    note("/invoke-with-response-stream", "bedrock", HAIKU, 6)
    assert converse(seen, pat, "converse", HAIKU, "hi", inferenceConfig={"maxTokens": 4}).status_code == 200
    note("/converse", "bedrock", HAIKU, 4)
    assert converse(seen, pat, "converse-stream", HAIKU, "hi").status_code == 200
    note("/converse-stream", "bedrock", HAIKU, 6)

    mistral = seen.mistral_client(pat)
    mistral.chat.complete(model="mistral-small-latest", messages=[UserMessage(content="hi")], max_tokens=5)
    note("/mistral/v1/chat/completions", "mistral", "mistral-small-latest", 5)
    for _event in mistral.chat.stream(model="mistral-small-latest", messages=[UserMessage(content="hi")]):
        pass
    note("/mistral/v1/chat/completions", "mistral", "mistral-small-latest", 6)

    assert len(expected) == 9
    records = wait_for_records(providers, list(expected))
    found = {rid: (r["provider"], r["model"], r["prompt_tokens"], r["completion_tokens"]) for rid, r in records.items()}
    assert found == {rid: (upstream, model, 9, completion) for rid, (upstream, model, completion) in expected.items()}


def test_usage_of_a_routed_request_is_recorded(providers: ProviderGateway, seen: Seen, routed: Routed) -> None:
    client = seen.openai_client(routed.via_azure)
    client.chat.completions.create(model="gpt-4o", messages=said("hi"), max_tokens=1)
    first = seen.last("/openai/v1/chat/completions").header("x-request-id")
    for _ in client.chat.completions.create(model="gemini-2.0-flash", messages=said("hi"), stream=True):
        pass
    second = seen.last("/openai/v1/chat/completions").header("x-request-id")
    records = wait_for_records(providers, [first, second])
    assert (records[first]["prompt_tokens"], records[first]["completion_tokens"]) == (9, 1)
    assert (records[second]["prompt_tokens"], records[second]["completion_tokens"]) == (9, 6)
    assert (records[first]["model"], records[second]["model"]) == ("gpt-4o", "gemini-2.0-flash")


def test_the_audit_record_of_a_routed_request_names_its_upstream(providers: ProviderGateway, seen: Seen,
                                                                 routed: Routed) -> None:
    client = seen.openai_client(routed.via_azure)
    expected = {}
    for model, upstream in [("gpt-4o", "azure"), ("gemini-2.0-flash", "gemini-compat"), (LLAMA, "vllm")]:
        client.chat.completions.create(model=model, messages=said("hi"))
        expected[seen.last("/openai/v1/chat/completions").header("x-request-id")] = upstream
    records = wait_for_records(providers, list(expected))
    assert {rid: providers.log_record(rid)["provider"] for rid in expected} == expected
    assert {rid: records[rid]["provider"] for rid in expected} == expected


# -- 7. endpoint families, uploads and batches --------------------------------------------------------------


def test_a_token_narrowed_to_chat_cannot_embed(seen: Seen, team: dict) -> None:
    client = seen.openai_client(seen.mint(team, endpoints=["chat"]).secret)
    assert client.chat.completions.create(model="gpt-4o-mini", messages=said("hi")).choices
    with pytest.raises(openai.PermissionDeniedError) as refused:
        client.embeddings.create(model="text-embedding-3-small", input="hi")
    assert refused.value.status_code == 403 and refused.value.code == "endpoint_not_allowed"


def batch_file(*models: str) -> bytes:
    lines = [{"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": model, "messages": said("hi")}} for i, model in enumerate(models)]
    return "\n".join(json.dumps(line) for line in lines).encode()


def test_files_and_batches_need_their_families(providers: ProviderGateway, seen: Seen, pat: str, team: dict,
                                              routed: Routed) -> None:
    text = marker()
    with pytest.raises(openai.PermissionDeniedError) as refused:
        seen.openai_client(routed.via_azure).files.create(file=(f"{text}.jsonl", batch_file("gpt-4o-mini")),
                                                          purpose="batch")
    assert refused.value.code == "endpoint_not_allowed"
    assert reached(providers, text) == []

    client = seen.openai_client(pat)
    content = batch_file("gpt-4o-mini", "gpt-4o-mini")
    uploaded = client.files.create(file=(f"{text}.jsonl", content), purpose="batch")
    assert (uploaded.bytes, uploaded.filename) == (len(content), f"{text}.jsonl")
    record = only(providers, text)
    assert record["path"] == "/v1/files" and content.decode() in record["body"]
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert batch.endpoint == "/v1/chat/completions" and batch.input_file_id == uploaded.id

    def batches_made() -> int:
        return sum(r["path"] == "/v1/batches" and r["method"] == "POST" for r in providers.received())

    made = batches_made()
    no_chat = seen.openai_client(seen.mint(team, endpoints=["files", "batches", "embeddings"]).secret)
    with pytest.raises(openai.PermissionDeniedError) as refused:
        no_chat.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert refused.value.code == "endpoint_not_allowed"
    assert batches_made() == made


def test_audio_transcription_checks_the_model_in_the_form(providers: ProviderGateway, seen: Seen, pat: str) -> None:
    client = seen.openai_client(pat)
    allowed, refused_name = marker(), marker()
    heard = client.audio.transcriptions.create(model="whisper-1", file=(f"{allowed}.wav", b"RIFF....", "audio/wav"))
    assert heard.text == WORDS
    assert only(providers, allowed)["path"] == "/v1/audio/transcriptions"
    with pytest.raises(openai.PermissionDeniedError) as refused:
        client.audio.transcriptions.create(model="gpt-4o-transcribe",
                                           file=(f"{refused_name}.wav", b"RIFF....", "audio/wav"))
    assert refused.value.code == "model_not_allowed"
    assert reached(providers, refused_name) == []


@dataclass
class Oversized:
    answer: httpx.Response
    seconds: float
    marker: str


@pytest.fixture(scope="module")
def oversized(seen: Seen, pat: str) -> Oversized:
    """A 26 MB transcription upload (the limit is 25 MB), its model allowed, sent whole."""
    text = marker()
    boundary = uuid.uuid4().hex
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{text}.wav"\r\n'
            "Content-Type: audio/wav\r\n\r\n").encode()
    body = head + bytes(26 * 1024 * 1024) + f"\r\n--{boundary}--\r\n".encode()
    started = time.monotonic()
    answer = seen.http_client().post("/openai/v1/audio/transcriptions", content=body,
                                     headers={"Authorization": f"Bearer {pat}",
                                              "Content-Type": f"multipart/form-data; boundary={boundary}"})
    return Oversized(answer, time.monotonic() - started, text)


def test_an_oversized_audio_upload_is_refused_before_the_provider(providers: ProviderGateway,
                                                                  oversized: Oversized) -> None:
    assert oversized.answer.status_code == 413, oversized.answer.text
    assert oversized.answer.json()["error"]["type"] == "invalid_request_error"
    # Refused on its declared size, from the body's head: no waiting for 26 MB to be buffered or checked.
    assert oversized.seconds < 5, f"the gateway took {oversized.seconds:.1f}s to refuse"
    assert reached(providers, oversized.marker) == []
    record = providers.log_record(oversized.answer.headers["x-request-id"])
    assert (record["decision"], record["status"]) == ("body_too_large", 413)


def test_an_oversized_upload_is_told_why(oversized: Oversized) -> None:
    error = oversized.answer.json()["error"]
    assert error["code"] == "body_too_large" and "25 MB" in error["message"]


def test_an_image_edit(providers: ProviderGateway, seen: Seen, pat: str) -> None:
    text = marker()
    edited = seen.openai_client(pat).images.edit(model="gpt-image-1", prompt=text,
                                          image=("in.png", io.BytesIO(b"\x89PNG fake"), "image/png"))
    assert edited.data and edited.data[0].b64_json
    assert only(providers, text)["path"] == "/v1/images/edits"


def test_anthropic_message_batches_check_every_model(providers: ProviderGateway, seen: Seen, pat: str) -> None:
    client = seen.anthropic_client(pat)

    def request(custom_id: str, model: str) -> Any:
        return {"custom_id": custom_id, "params": {"model": model, "max_tokens": 3, "messages": said("hi")}}

    allowed, refused_id = marker(), marker()
    batch = client.messages.batches.create(requests=[request(allowed, "claude-haiku-4-5")])
    assert batch.processing_status == "in_progress"
    assert only(providers, allowed)["path"] == "/v1/messages/batches"
    with pytest.raises(anthropic.PermissionDeniedError) as refused:
        client.messages.batches.create(requests=[request(refused_id, "claude-haiku-4-5"),
                                                 request(f"{refused_id}-2", "claude-opus-4-6")])
    assert refused.value.body["error"]["code"] == "model_not_allowed"  # type: ignore[index]
    assert reached(providers, refused_id) == []


# -- 8. GET /models -----------------------------------------------------------------------------------------


def priced(provider: str, pattern: str) -> set[str]:
    """The bundled price table's models of ``provider`` that ``pattern`` matches."""
    for entry in genai_prices.data_snapshot.get_snapshot().providers:
        if entry.id == provider:
            return {model.id for model in entry.models if fnmatch.fnmatchcase(model.id, pattern)}
    raise AssertionError(f"the price table has no provider {provider}")


def test_model_lists_are_the_tokens_models(providers: ProviderGateway, seen: Seen) -> None:
    team = new_team(providers, [
        {"provider": "openai", "pattern": "gpt-4o*"},
        {"provider": "openai", "pattern": LLAMA, "upstream": "vllm"},
        {"provider": "anthropic", "pattern": "claude-3-5-*"},
        {"provider": "anthropic", "pattern": "claude-haiku-4-5"},
        {"provider": "gemini", "pattern": "gemini-2.0-flash"},
    ])
    openai_models = priced("openai", "gpt-4o*") | {LLAMA}
    anthropic_models = priced("anthropic", "claude-3-5-*") | {"claude-haiku-4-5"}
    assert len(openai_models) > 3 and len(anthropic_models) > 2  # patterns that match something
    listings = sum(r["path"].endswith("/models") for r in providers.received())

    full = seen.mint(team).secret
    assert [m.id for m in seen.openai_client(full).models.list()] == sorted(openai_models)
    assert [m.id for m in seen.anthropic_client(full).models.list()] == sorted(anthropic_models)

    narrowed = seen.mint(team, models=["gpt-4o-mini", "claude-haiku-4-5"]).secret
    assert [m.id for m in seen.openai_client(narrowed).models.list()] == ["gpt-4o-mini"]
    assert [m.id for m in seen.anthropic_client(narrowed).models.list()] == ["claude-haiku-4-5"]
    assert sum(r["path"].endswith("/models") for r in providers.received()) == listings


# -- 9. denials, in each API's own shape --------------------------------------------------------------------


def test_denials_come_in_each_providers_shape(providers: ProviderGateway, seen: Seen, pat: str) -> None:
    texts = [marker() for _ in range(5)]

    with pytest.raises(genai_errors.ClientError) as gemini:
        seen.gemini_client(pat).models.generate_content(model="gemini-2.5-pro", contents=texts[0])
    assert (gemini.value.code, gemini.value.status) == (403, "PERMISSION_DENIED")
    error = gemini.value.details["error"]
    assert error["code"] == 403 and error["details"][0]["reason"] == "model_not_allowed"

    with pytest.raises(anthropic.PermissionDeniedError) as bedrock:
        seen.bedrock_client(pat).messages.create(model=OPUS, max_tokens=3, messages=said(texts[1]))
    assert bedrock.value.status_code == 403
    answer = converse(seen, pat, "converse", OPUS, texts[2])
    assert answer.status_code == 403 and answer.headers["x-amzn-errortype"] == "AccessDeniedException"
    assert answer.json()["code"] == "model_not_allowed"

    with pytest.raises(SDKError) as mistral:
        seen.mistral_client(pat).chat.complete(model="mistral-large-latest", messages=[UserMessage(content=texts[3])])
    assert mistral.value.status_code == 403 and "model_not_allowed" in mistral.value.body

    with pytest.raises(openai.PermissionDeniedError) as azure:
        seen.azure_client(pat).chat.completions.create(model="gpt-35-turbo", messages=said(texts[4]))
    assert azure.value.code == "model_not_allowed"

    assert [text for text in texts if reached(providers, text)] == []


# -- 10. red team -------------------------------------------------------------------------------------------


def test_no_pat_reached_a_provider_and_no_key_reached_a_client_or_a_log(providers: ProviderGateway, seen: Seen,
                                                                      pat: str) -> None:
    """Runs last: it checks what every test of the module sent, saw and logged (and makes a stream of its own,
    so it never checks nothing)."""
    assert converse(seen, pat, "converse-stream", HAIKU, "hi").status_code == 200
    # The recording transport saw what the client read of the stream.
    assert b"provider" in seen.last("/converse-stream").body

    received = json.dumps(providers.received())
    assert [index for index, secret in enumerate(seen.pats) if secret in received] == []

    secrets = set()
    for name, key in providers.upstream_keys.items():
        secrets.add(key)
        if name == "bedrock":
            secrets.update(key.split(":", 1))
    secrets.discard("")
    assert ":" in providers.upstream_keys["bedrock"] and len(secrets) >= 8

    # Failures name where a key was found, never the key.
    leaks = []
    for exchange in seen.exchanges:
        # A compressed body would hide a key from the search.
        assert all(not (k.lower() == "content-encoding" and v != "identity") for k, v in exchange.headers)
        visible = "\n".join(f"{k}: {v}" for k, v in exchange.headers) + "\n" + exchange.body.decode("latin-1")
        leaks += [(exchange.method, exchange.path) for secret in secrets if secret in visible]
    assert leaks == []

    logs = [path for path in providers.info.logs_dir.rglob("*") if path.is_file()]
    assert any(path.name == "envoy.log" for path in logs)
    assert [path.name for path in logs for secret in secrets if secret in path.read_bytes().decode("latin-1")] == []
