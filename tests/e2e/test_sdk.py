"""Engineers call the gateway with the official SDKs, unchanged but for base_url and api_key."""

from __future__ import annotations

import itertools
import shutil
import subprocess
import time

import anthropic
import openai
import pytest

from tests.e2e.conftest import STREAM_INTERVAL, Gateway

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def pat(gateway: Gateway) -> str:
    return gateway.mint().secret


def test_openai_chat_completion(gateway: Gateway, pat: str) -> None:
    with openai.OpenAI(base_url=gateway.openai_base, api_key=pat) as client:
        reply = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Say hello"}])
    assert reply.choices[0].message.content == "Hello from the mock provider."
    assert reply.usage is not None and reply.usage.total_tokens == 15


def test_openai_streaming_arrives_chunk_by_chunk(gateway: Gateway, pat: str) -> None:
    arrivals: list[float] = []
    text = []
    with openai.OpenAI(base_url=gateway.openai_base, api_key=pat) as client:
        stream = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "stream"}], stream=True
        )
        for chunk in stream:
            arrivals.append(time.monotonic())
            if chunk.choices and chunk.choices[0].delta.content:
                text.append(chunk.choices[0].delta.content)
    assert "".join(text) == "Hello from the mock provider."
    # The provider spaces its 7 chunks STREAM_INTERVAL apart. Buffering would deliver them together.
    spread = arrivals[-1] - arrivals[0]
    assert spread >= 4 * STREAM_INTERVAL, f"chunks arrived within {spread:.3f}s: the stream was buffered"
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert sum(gap >= STREAM_INTERVAL / 2 for gap in gaps) >= 4


def test_openai_embeddings_and_models(gateway: Gateway, pat: str) -> None:
    with openai.OpenAI(base_url=gateway.openai_base, api_key=pat) as client:
        embedding = client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
        models = [m.id for m in client.models.list()]
        one = client.models.retrieve("gpt-4o")
    assert len(embedding.data) == 2
    assert "gpt-4o-mini" in models
    assert one.id == "gpt-4o"


def test_anthropic_messages(gateway: Gateway, pat: str) -> None:
    with anthropic.Anthropic(base_url=gateway.anthropic_base, api_key=pat) as client:
        message = client.messages.create(
            model="claude-haiku-4-5", max_tokens=64, messages=[{"role": "user", "content": "Hi"}]
        )
        count = client.messages.count_tokens(model="claude-haiku-4-5", messages=[{"role": "user", "content": "Hi"}])
        models = [m.id for m in client.models.list()]
    assert message.content[0].text == "Hello from the mock provider."  # type: ignore[union-attr]
    assert message.usage.output_tokens == 6
    assert count.input_tokens == 9
    assert "claude-opus-4-6" in models


def test_anthropic_streaming_arrives_chunk_by_chunk(gateway: Gateway, pat: str) -> None:
    arrivals: list[float] = []
    with (
        anthropic.Anthropic(base_url=gateway.anthropic_base, api_key=pat) as client,
        client.messages.stream(
            model="claude-haiku-4-5", max_tokens=64, messages=[{"role": "user", "content": "Hi"}]
        ) as stream,
    ):
        for _text in stream.text_stream:
            arrivals.append(time.monotonic())
        final = stream.get_final_message()
    assert final.content[0].text == "Hello from the mock provider."  # type: ignore[union-attr]
    assert len(arrivals) == 6
    assert arrivals[-1] - arrivals[0] >= 3 * STREAM_INTERVAL


def test_sdk_sees_provider_shaped_errors(gateway: Gateway, pat: str) -> None:
    with openai.OpenAI(base_url=gateway.openai_base, api_key="kw_pat_wrong", max_retries=0) as client:
        with pytest.raises(openai.AuthenticationError) as denied:
            client.models.list()
    assert denied.value.code == "token_malformed"
    assert denied.value.request_id
    with anthropic.Anthropic(base_url=gateway.anthropic_base, api_key=pat, max_retries=0) as client:
        with pytest.raises(anthropic.NotFoundError):
            client.post("/v1/files", cast_to=object, body={})


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_plain_curl(gateway: Gateway, pat: str) -> None:
    completed = subprocess.run(
        [
            "curl",
            "-sS",
            "-w",
            "\n%{http_code}",
            f"{gateway.openai_base}/chat/completions",
            "-H",
            f"Authorization: Bearer {pat}",
            "-H",
            "content-type: application/json",
            "-d",
            '{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}',
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    body, status = completed.stdout.rsplit("\n", 1)
    assert status == "200"
    assert "Hello from the mock provider." in body
