"""Every OpenAI and Anthropic endpoint family end to end, through the official SDKs and the gateway.

Responses, completions, moderations, image generation, speech, stored files and batches (OpenAI), and
token counting, model lookups and message batches (Anthropic): each reaches the mock provider with the
injected key and never the PAT, its usage is recorded as the provider reported it, and what the gateway
adds on the way (``stream_options`` for a completions stream, a batch's ``results_url`` pointing back at
the gateway) works with the SDK unchanged.
"""

from __future__ import annotations

import io
import uuid

import anthropic
import openai
import pytest

from tests.e2e.conftest import Minted, ProviderGateway
from tests.e2e.test_audit import wait_for_records

pytestmark = pytest.mark.e2e

EVERY_FAMILY = ["chat", "responses", "completions", "embeddings", "moderations", "images", "audio", "files",
                "batches", "models", "count_tokens"]


@pytest.fixture(scope="module")
def minted(providers: ProviderGateway) -> Minted:
    reply = providers.admin.post("/profiles", json={
        "name": f"families-{uuid.uuid4().hex[:6]}", "environments": ["dev"], "endpoints": EVERY_FAMILY,
        "catalog": [{"provider": "openai", "pattern": "*"}, {"provider": "anthropic", "pattern": "claude-*"}]})
    assert reply.status_code == 201, reply.text
    return providers.mint(team=providers.team(profile_id=reply.json()["id"]))


@pytest.fixture(scope="module")
def client(providers: ProviderGateway, minted: Minted) -> openai.OpenAI:
    return openai.OpenAI(api_key=minted.secret, base_url=providers.openai_base, max_retries=0)


@pytest.fixture(scope="module")
def claude(providers: ProviderGateway, minted: Minted) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key=minted.secret, base_url=providers.anthropic_base, max_retries=0)


def _reached(providers: ProviderGateway, path: str, minted: Minted) -> dict:
    """The last request the mock received at ``path``: with OpenAI's injected key, never the PAT."""
    found = [r for r in providers.received() if r["path"] == path]
    assert found, f"nothing reached {path}"
    last = found[-1]
    assert minted.secret not in repr(last)
    return last


def test_responses_json_and_stream_record_their_usage(providers: ProviderGateway, client: openai.OpenAI,
                                                      minted: Minted) -> None:
    raw = client.responses.with_raw_response.create(model="gpt-4o-mini", input="hi")
    answer = raw.parse()
    assert answer.output_text and answer.usage is not None and answer.usage.input_tokens == 9
    with client.responses.with_streaming_response.create(model="gpt-4o-mini", input="hi", stream=True) as streamed:
        streamed_id = streamed.headers["x-request-id"]
        events = [event.type for event in streamed.parse()]
    assert events[-1] == "response.completed"
    headers = dict(_reached(providers, "/v1/responses", minted)["headers"])
    assert headers["authorization"] == f"Bearer {providers.upstream_keys['openai']}"
    records = wait_for_records(providers, [raw.headers["x-request-id"], streamed_id])
    for record in records.values():
        assert (record["provider"], record["model"], record["prompt_tokens"]) == ("openai", "gpt-4o-mini", 9)
        assert record["completion_tokens"] and record["decision"] == "allowed"
    assert client.responses.retrieve(answer.id).id == answer.id
    client.responses.delete(answer.id)


def test_a_completions_stream_reports_the_usage_the_gateway_asked_for(providers: ProviderGateway,
                                                                     client: openai.OpenAI, minted: Minted) -> None:
    with client.completions.with_streaming_response.create(model="gpt-4o-mini", prompt="hi", stream=True) as raw:
        request_id = raw.headers["x-request-id"]
        chunks = list(raw.parse())
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 9
    body = _reached(providers, "/v1/completions", minted)["body"]
    assert '"stream_options":{"include_usage":true}' in body.replace(" ", "")
    record = wait_for_records(providers, [request_id])[request_id]
    assert (record["prompt_tokens"], record["completion_tokens"]) == (9, chunks[-1].usage.completion_tokens)


def test_moderations_images_and_speech(providers: ProviderGateway, client: openai.OpenAI, minted: Minted) -> None:
    moderated = client.moderations.with_raw_response.create(model="omni-moderation-latest", input="hi")
    assert moderated.parse().results
    image = client.images.generate(model="gpt-image-1", prompt="a gateway")
    assert image.data and image.data[0].b64_json
    speech = client.audio.speech.create(model="gpt-4o-mini-tts", voice="alloy", input="hi")
    assert speech.content
    for path in ("/v1/moderations", "/v1/images/generations", "/v1/audio/speech"):
        _reached(providers, path, minted)
    # Moderation costs nothing: its record is priced at zero whatever it reports.
    record = wait_for_records(providers, [moderated.headers["x-request-id"]])[moderated.headers["x-request-id"]]
    assert record["decision"] == "allowed" and float(record["cost_usd"] or 0) == 0


def test_stored_files_and_batches(providers: ProviderGateway, client: openai.OpenAI, minted: Minted) -> None:
    line = b'{"custom_id": "1", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "gpt-4o-mini"}}\n'
    uploaded = client.files.create(file=("batch.jsonl", io.BytesIO(line)), purpose="batch")
    assert uploaded.id in {f.id for f in client.files.list()}
    assert client.files.retrieve(uploaded.id).filename == "batch.jsonl"
    assert client.files.content(uploaded.id).content == line
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
    assert batch.id in {b.id for b in client.batches.list()}
    assert client.batches.retrieve(batch.id).id == batch.id
    second = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                   completion_window="24h")
    assert client.batches.cancel(second.id).status in ("cancelling", "cancelled")
    assert client.files.delete(uploaded.id).deleted
    _reached(providers, "/v1/files", minted)


def test_anthropic_count_tokens_model_lookup_and_batches(providers: ProviderGateway, claude: anthropic.Anthropic,
                                                        minted: Minted) -> None:
    counted = claude.messages.count_tokens(model="claude-haiku-4-5", messages=[{"role": "user", "content": "hi"}])
    assert counted.input_tokens == 9
    assert claude.models.retrieve("claude-haiku-4-5").id == "claude-haiku-4-5"
    batch = claude.messages.batches.create(requests=[{"custom_id": "a", "params": {
        "model": "claude-haiku-4-5", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}}])
    ended = claude.messages.batches.retrieve(batch.id)
    # The provider names the results by an absolute URL at its own host; the client is sent back through the
    # gateway instead, so following it never takes the PAT to the provider directly.
    assert ended.results_url is not None and ended.results_url.startswith(f"{providers.url}/anthropic/v1/")
    assert [result.custom_id for result in claude.messages.batches.results(batch.id)] == ["a"]
    assert batch.id in {b.id for b in claude.messages.batches.list()}
    assert minted.secret not in repr(providers.received())
