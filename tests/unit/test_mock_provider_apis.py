"""The mock provider speaks every provider API well enough for each provider's official SDK.

One mock runs (as the stack runner starts it: uvicorn's factory in its own process) with a named
upstream of every kind, and each SDK talks to it directly, no gateway: ``openai`` (every family, Azure
included), ``anthropic`` (message batches), ``google-genai``, ``boto3`` (Bedrock Runtime, SigV4-signed,
which the mock verifies) and ``mistralai``. A wrong or missing credential gets each kind's own refusal.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anthropic
import boto3  # type: ignore[import-untyped]
import httpx
import openai
import pytest
from botocore.config import Config  # type: ignore[import-untyped]
from botocore.exceptions import ClientError  # type: ignore[import-untyped]
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types
from mistralai.client import Mistral
from mistralai.client.errors import SDKError
from mistralai.client.models import UserMessage
from starlette.requests import Request

from controlplane.stack.mock.core import Account, Call, MockSettings, root_denial

REPO = Path(__file__).resolve().parents[2]
OPENAI_KEY, ANTHROPIC_KEY = "sk-root-openai", "sk-ant-root"
ACCESS_KEY, SECRET_KEY, REGION = "AKIAMOCKEXAMPLE", "mock/secret+key", "eu-west-3"
UPSTREAMS: dict[str, dict[str, Any]] = {
    "oai": {"kind": "openai", "key": "sk-oai"},
    "vllm": {"kind": "openai-compatible", "key": "vllm-key"},
    "gemoai": {"kind": "gemini-openai", "key": "gem-oai-key"},
    "mistral": {"kind": "mistral", "key": "mistral-key"},
    "azure": {"kind": "azure", "key": "azure-key"},
    "claude": {"kind": "anthropic", "key": "sk-ant-named"},
    "gemini": {"kind": "gemini", "key": "gemini-key"},
    "bedrock": {"kind": "bedrock", "key": f"{ACCESS_KEY}:{SECRET_KEY}", "region": REGION},
}
WORDS = "Hello from the mock provider."


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    port = _free_port()
    env = {**os.environ, "MOCK_OPENAI_KEY": OPENAI_KEY, "MOCK_ANTHROPIC_KEY": ANTHROPIC_KEY,
           "MOCK_UPSTREAMS": json.dumps(UPSTREAMS), "MOCK_STREAM_INTERVAL": "0", "MOCK_LOG_LEVEL": "warning"}
    process = subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory",
                                "controlplane.stack.mock_provider:create_app", "--host", "127.0.0.1",
                                "--port", str(port), "--no-access-log"],
                               cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(base + "/__mock__/requests", timeout=1)
            break
        except httpx.TransportError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                output = process.communicate()[0]
                pytest.fail(f"the mock did not start: {output.decode(errors='replace')}")
            time.sleep(0.05)
    try:
        yield base
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


def _recorded(url: str) -> list[dict[str, Any]]:
    return list(httpx.get(url + "/__mock__/requests").json())


def _openai(url: str, path: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + path, api_key=key, max_retries=0)


# -- OpenAI ---------------------------------------------------------------------------------------------------


def test_responses_create_stream_retrieve_delete(url: str) -> None:
    client = _openai(url, "/x/oai/v1", "sk-oai")
    made = client.responses.create(model="gpt-4o-mini", input="Say hello", max_output_tokens=3)
    assert made.status == "completed" and made.output_text == "Hello from the"
    assert made.usage is not None and (made.usage.input_tokens, made.usage.output_tokens) == (9, 3)

    with client.responses.stream(model="gpt-4o-mini", input="Say hello") as stream:
        types = [event.type for event in stream]
        final = stream.get_final_response()
    assert types[0] == "response.created" and types[-1] == "response.completed"
    assert types.count("response.output_text.delta") == 6
    assert final.output_text == WORDS and final.usage is not None and final.usage.total_tokens == 15

    assert client.responses.retrieve(made.id).output_text == "Hello from the"
    client.responses.delete(made.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(made.id)


def test_completions_moderations_and_embeddings(url: str) -> None:
    client = _openai(url, "/x/oai/v1", "sk-oai")
    done = client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say", max_tokens=2)
    assert done.choices[0].text == "Hello from" and done.usage is not None and done.usage.completion_tokens == 2
    chunks = list(client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say", stream=True,
                                            stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == WORDS
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 15
    plain = list(client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say", stream=True))
    assert all(c.usage is None for c in plain) and plain[-1].choices[0].finish_reason == "stop"

    checked = client.moderations.create(model="omni-moderation-latest", input=["fine", "also fine"])
    assert len(checked.results) == 2 and not checked.results[0].flagged
    assert checked.results[0].categories.violence is False

    vectors = client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert [len(v.embedding) for v in vectors.data] == [3, 3] and vectors.usage.prompt_tokens == 2


def test_images_and_audio(url: str) -> None:
    client = _openai(url, "/x/oai/v1", "sk-oai")
    made = client.images.generate(model="gpt-image-1", prompt="a square", n=2, quality="low")
    assert made.data is not None and len(made.data) == 2
    assert base64.b64decode(made.data[0].b64_json or "").startswith(b"\x89PNG")
    assert made.usage is not None and (made.usage.input_tokens, made.usage.output_tokens) == (9, 544)

    edited = client.images.edit(model="gpt-image-1", image=("in.png", io.BytesIO(b"\x89PNG fake"), "image/png"),
                                prompt="make it blue")
    assert edited.data is not None and edited.usage is not None
    assert edited.usage.input_tokens_details.image_tokens == 194

    heard = client.audio.transcriptions.create(model="gpt-4o-transcribe", file=("a.wav", b"RIFF....", "audio/wav"))
    assert heard.text == WORDS
    assert heard.usage is not None and heard.usage.type == "tokens" and heard.usage.output_tokens == 6
    whisper = client.audio.transcriptions.create(model="whisper-1", file=("a.wav", b"RIFF....", "audio/wav"))
    assert whisper.usage is not None and whisper.usage.type == "duration"
    streamed = list(client.audio.transcriptions.create(model="gpt-4o-mini-transcribe", stream=True,
                                                       file=("a.wav", b"RIFF....", "audio/wav")))
    assert streamed[-1].type == "transcript.text.done" and streamed[-1].text == WORDS
    assert streamed[-1].usage is not None and streamed[-1].usage.output_tokens == 6
    with pytest.warns(DeprecationWarning):  # the SDK's own: translations are deprecated, still served
        translated = client.audio.translations.create(model="whisper-1", file=("a.wav", b"RIFF....", "audio/wav"))
    assert translated.text == WORDS

    spoken = client.audio.speech.create(model="gpt-4o-mini-tts", voice="alloy", input="Hello")
    assert spoken.response.headers["content-type"] == "audio/mpeg" and len(spoken.content) > 100

    with pytest.raises(openai.BadRequestError):
        client.images.generate(model="gpt-image-1", prompt="")


def test_files_and_batches(url: str) -> None:
    client = _openai(url, "/x/oai/v1", "sk-oai")
    lines = [{"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": i}}
             for i in (1, 2)]
    content = "\n".join(json.dumps(line) for line in lines).encode()
    uploaded = client.files.create(file=("in.jsonl", content), purpose="batch")
    assert (uploaded.bytes, uploaded.purpose, uploaded.filename) == (len(content), "batch", "in.jsonl")
    assert uploaded.id in [f.id for f in client.files.list(purpose="batch")]
    assert client.files.retrieve(uploaded.id).id == uploaded.id
    assert client.files.content(uploaded.id).content == content

    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
    assert batch.status == "validating"
    done = client.batches.retrieve(batch.id)
    assert done.status == "completed" and done.request_counts is not None and done.request_counts.completed == 2
    assert done.output_file_id is not None
    answers = [json.loads(line) for line in client.files.content(done.output_file_id).text.splitlines()]
    assert [(a["custom_id"], a["response"]["body"]["usage"]["completion_tokens"]) for a in answers] == [
        ("r1", 1), ("r2", 2)]

    stopped = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                    completion_window="24h")
    assert client.batches.cancel(stopped.id).status == "cancelling"
    assert client.batches.retrieve(stopped.id).status == "cancelled"
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(stopped.id)
    assert {b.id for b in client.batches.list()} >= {batch.id, stopped.id}

    wrong = client.files.create(file=("bad.jsonl", b'{"custom_id": "x", "method": "POST", "url": "/v1/embeddings"}'),
                                purpose="batch")
    failed = client.batches.retrieve(client.batches.create(input_file_id=wrong.id, endpoint="/v1/chat/completions",
                                                           completion_window="24h").id)
    assert failed.status == "failed" and failed.errors is not None and failed.errors.data
    assert failed.errors.data[0].line == 1

    assert client.files.delete(uploaded.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(uploaded.id)


@pytest.mark.parametrize(("path", "key"), [("/v1", OPENAI_KEY), ("/x/vllm/v1", "vllm-key"),
                                           ("/x/gemoai/v1beta/openai", "gem-oai-key"),
                                           ("/x/mistral/v1", "mistral-key")])
def test_the_openai_api_of_every_kind(url: str, path: str, key: str) -> None:
    client = _openai(url, path, key)
    chunks = list(client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], stream=True,
                                                 stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == WORDS
    assert [c.usage.total_tokens for c in chunks if c.usage] == [15]
    assert client.responses.create(model="m", input="hi").output_text == WORDS
    assert client.models.list().data


# -- Azure OpenAI ---------------------------------------------------------------------------------------------


def test_azure_deployments_and_v1(url: str) -> None:
    client = openai.AzureOpenAI(azure_endpoint=url + "/x/azure", api_key="azure-key", api_version="2024-10-21",
                                max_retries=0)
    done = client.chat.completions.create(model="my-gpt4o", messages=[{"role": "user", "content": "hi"}])
    assert done.model == "my-gpt4o" and done.choices[0].message.content == WORDS
    assert done.usage is not None and done.usage.prompt_tokens == 9
    chunks = list(client.chat.completions.create(model="my-gpt4o", messages=[{"role": "user", "content": "hi"}],
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices == [] and chunks[0].usage is None  # Azure's prompt-filter chunk
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6
    assert client.embeddings.create(model="my-embedder", input="x").model == "my-embedder"
    assert client.audio.transcriptions.create(model="my-whisper", file=("a.wav", b"RIFF", "audio/wav")).text == WORDS
    assert client.images.generate(model="my-images", prompt="a square").data
    uploaded = client.files.create(file=("in.jsonl", b"{}\n"), purpose="batch")
    assert client.files.retrieve(uploaded.id).purpose == "batch"

    paths = [(r["path"], r["query"]) for r in _recorded(url) if r["path"].startswith("/x/azure/")]
    assert ("/x/azure/openai/deployments/my-gpt4o/chat/completions", "api-version=2024-10-21") in paths
    assert ("/x/azure/openai/files", "api-version=2024-10-21") in paths

    unversioned = httpx.post(url + "/x/azure/openai/deployments/d/chat/completions", json={"messages": []},
                             headers={"api-key": "azure-key"})
    assert unversioned.status_code == 400 and unversioned.json()["error"]["code"] == "MissingApiVersionParameter"

    v1 = openai.OpenAI(base_url=url + "/x/azure/openai/v1", api_key="unused", default_headers={"api-key": "azure-key"},
                       max_retries=0)
    chat = v1.chat.completions.create(model="my-gpt4o", messages=[{"role": "user", "content": "hi"}])
    assert chat.model == "my-gpt4o"
    assert v1.responses.create(model="my-gpt4o", input="hi").usage is not None


# -- Anthropic ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "key"), [("", ANTHROPIC_KEY), ("/x/claude", "sk-ant-named")])
def test_anthropic_message_batches(url: str, path: str, key: str) -> None:
    # This SDK sends api_key as a bearer token; the key Envoy injects goes in x-api-key.
    client = anthropic.Anthropic(base_url=url + path, api_key="unused", default_headers={"x-api-key": key},
                                 max_retries=0)
    assert client.messages.create(model="claude-haiku-4-5", max_tokens=2,
                                  messages=[{"role": "user", "content": "hi"}]).usage.output_tokens == 2
    batch = client.messages.batches.create(requests=[
        {"custom_id": "good", "params": {"model": "claude-haiku-4-5", "max_tokens": 3,
                                         "messages": [{"role": "user", "content": "hi"}]}},
        {"custom_id": "bad", "params": {"model": "claude-haiku-4-5", "messages": []}},  # type: ignore[typeddict-item]
    ])
    assert batch.processing_status == "in_progress" and batch.request_counts.processing == 2
    ended = client.messages.batches.retrieve(batch.id)
    assert ended.processing_status == "ended"
    assert (ended.request_counts.succeeded, ended.request_counts.errored) == (1, 1)
    assert ended.results_url is not None and ended.results_url.startswith(url + path + "/v1/messages/batches/")
    results = {r.custom_id: r.result for r in client.messages.batches.results(batch.id)}
    assert results["good"].type == "succeeded" and results["good"].message.usage.output_tokens == 3
    assert results["bad"].type == "errored"

    stopped = client.messages.batches.create(requests=[{"custom_id": "one", "params": {
        "model": "claude-haiku-4-5", "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]}}])
    assert client.messages.batches.cancel(stopped.id).processing_status == "canceling"
    assert client.messages.batches.retrieve(stopped.id).request_counts.canceled == 1
    assert [r.result.type for r in client.messages.batches.results(stopped.id)] == ["canceled"]
    assert {b.id for b in client.messages.batches.list()} >= {batch.id, stopped.id}
    assert client.messages.batches.delete(stopped.id).type == "message_batch_deleted"
    with pytest.raises(anthropic.NotFoundError):
        client.messages.batches.retrieve(stopped.id)


# -- Gemini ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["v1", "v1beta"])
def test_gemini_native(url: str, version: str) -> None:
    client = genai.Client(api_key="gemini-key",
                          http_options=genai_types.HttpOptions(base_url=url + "/x/gemini", api_version=version))
    done = client.models.generate_content(model="gemini-2.5-flash", contents="hi",
                                          config=genai_types.GenerateContentConfig(max_output_tokens=4))
    assert done.text == "Hello from the mock" and done.usage_metadata is not None
    assert (done.usage_metadata.prompt_token_count, done.usage_metadata.candidates_token_count,
            done.usage_metadata.total_token_count) == (9, 4, 13)
    chunks = list(client.models.generate_content_stream(model="gemini-2.5-flash", contents="hi"))
    assert "".join(c.text or "" for c in chunks) == WORDS
    assert all(c.usage_metadata is not None for c in chunks)
    last = chunks[-1].usage_metadata
    assert last is not None and last.candidates_token_count == 6 and last.total_token_count == 15
    assert client.models.count_tokens(model="gemini-2.5-flash", contents="hi").total_tokens == 9
    embedded = client.models.embed_content(model="gemini-embedding-001", contents=["a", "b"])
    assert embedded.embeddings is not None and [e.values for e in embedded.embeddings] == [[0.1, 0.2, 0.3]] * 2
    assert "models/gemini-2.5-flash" in [m.name for m in client.models.list(config={"page_size": 2})]
    assert client.models.get(model="gemini-2.5-pro").name == "models/gemini-2.5-pro"
    assert any(r["path"] == f"/x/gemini/{version}/models/gemini-2.5-flash:streamGenerateContent"
               and r["query"] == "alt=sse" for r in _recorded(url))

    stranger = genai.Client(api_key="not-the-key", http_options=genai_types.HttpOptions(base_url=url + "/x/gemini"))
    with pytest.raises(genai_errors.ClientError) as refused:
        stranger.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert refused.value.code == 403 and refused.value.status == "PERMISSION_DENIED"


def test_gemini_reports_cached_tokens(url: str) -> None:
    answer = httpx.post(url + "/x/gemini/v1beta/models/gemini-2.5-flash:generateContent",
                        headers={"x-goog-api-key": "gemini-key"},
                        json={"contents": [{"parts": [{"text": "hi"}]}], "cachedContent": "cachedContents/abc"})
    assert answer.json()["usageMetadata"]["cachedContentTokenCount"] == 4


# -- Bedrock --------------------------------------------------------------------------------------------------


def _bedrock(url: str, *, access: str = ACCESS_KEY, secret: str = SECRET_KEY, region: str = REGION) -> Any:
    return boto3.client("bedrock-runtime", endpoint_url=url + "/x/bedrock", region_name=region,
                        aws_access_key_id=access, aws_secret_access_key=secret,
                        config=Config(retries={"max_attempts": 1, "mode": "standard"}))


HAIKU = "anthropic.claude-3-haiku-20240307-v1:0"


def test_bedrock_runtime_with_boto3(url: str) -> None:
    client = _bedrock(url)
    said = client.converse(modelId=HAIKU, messages=[{"role": "user", "content": [{"text": "hi"}]}],
                           inferenceConfig={"maxTokens": 5})
    assert said["output"]["message"]["content"][0]["text"] == "Hello from the mock provider"
    assert said["usage"] == {"inputTokens": 9, "outputTokens": 5, "totalTokens": 14}
    assert said["stopReason"] == "end_turn"

    events = list(client.converse_stream(modelId=HAIKU, messages=[{"role": "user", "content": [{"text": "hi"}]}])
                  ["stream"])
    assert list(events[0]) == ["messageStart"] and list(events[-1]) == ["metadata"]
    assert "".join(e["contentBlockDelta"]["delta"]["text"] for e in events if "contentBlockDelta" in e) == WORDS
    assert events[-1]["metadata"]["usage"]["outputTokens"] == 6

    body = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]}
    invoked = client.invoke_model(modelId=HAIKU, body=json.dumps(body), contentType="application/json")
    assert json.loads(invoked["body"].read())["usage"] == {"input_tokens": 9, "output_tokens": 3}
    headers = invoked["ResponseMetadata"]["HTTPHeaders"]
    assert (headers["x-amzn-bedrock-input-token-count"], headers["x-amzn-bedrock-output-token-count"]) == ("9", "3")

    streamed = client.invoke_model_with_response_stream(modelId=HAIKU, body=json.dumps(body))
    chunks = [json.loads(e["chunk"]["bytes"]) for e in streamed["body"]]
    assert chunks[0]["type"] == "message_start" and chunks[-1]["type"] == "message_stop"
    assert chunks[-1]["amazon-bedrock-invocationMetrics"]["outputTokenCount"] == 3

    recorded = [r["path"] for r in _recorded(url) if r["path"].startswith("/x/bedrock/")]
    assert f"/x/bedrock/model/{HAIKU}/converse-stream" in recorded


@pytest.mark.parametrize(("change", "error"), [
    ({"secret": "wrong-secret"}, "InvalidSignatureException"),
    ({"access": "AKIAWRONGWRONG"}, "UnrecognizedClientException"),
    ({"region": "us-east-1"}, "InvalidSignatureException"),
])
def test_bedrock_refuses_bad_signatures(url: str, change: dict[str, str], error: str) -> None:
    with pytest.raises(ClientError) as refused:
        _bedrock(url, **change).converse(modelId=HAIKU, messages=[{"role": "user", "content": [{"text": "hi"}]}])
    assert refused.value.response["Error"]["Code"] == error
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def _sign(method: str, path: str, body: bytes, host: str, stamp: str, secret: str = SECRET_KEY) -> str:
    """A SigV4 Authorization header, built by hand from AWS's documented steps."""
    payload = hashlib.sha256(body).hexdigest()
    canonical_path = path.replace("%", "%25")
    canonical = f"{method}\n{canonical_path}\n\nhost:{host}\nx-amz-date:{stamp}\n\nhost;x-amz-date\n{payload}"
    scope = f"{stamp[:8]}/{REGION}/bedrock/aws4_request"
    to_sign = f"AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
    key = f"AWS4{secret}".encode()
    for part in (stamp[:8], REGION, "bedrock", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    return f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/{scope}, SignedHeaders=host;x-amz-date, Signature={signature}"


def test_bedrock_signature_covers_body_path_and_time(url: str) -> None:
    path = "/x/bedrock/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse"
    host = url.removeprefix("http://")
    body = json.dumps({"messages": [{"role": "user", "content": [{"text": "hi"}]}]}).encode()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")

    def send(sent_body: bytes, authorization: str | None, at: str = stamp) -> httpx.Response:
        headers = {"x-amz-date": at, "content-type": "application/json"}
        if authorization:
            headers["authorization"] = authorization
        return httpx.post(url + path, content=sent_body, headers=headers)

    assert send(body, _sign("POST", path, body, host, stamp)).status_code == 200
    tampered = send(body.replace(b"hi", b"ho"), _sign("POST", path, body, host, stamp))
    assert tampered.status_code == 403 and tampered.headers["x-amzn-errortype"] == "InvalidSignatureException"
    assert tampered.json()["message"].startswith("The request signature we calculated does not match")
    # Signed once-encoded (as S3 would be), the path does not match what a non-S3 service computes.
    once = _sign("POST", path.replace("%3A", ":"), body, host, stamp)
    assert send(body, once).status_code == 403
    old = (datetime.now(UTC) - timedelta(minutes=20)).strftime("%Y%m%dT%H%M%SZ")
    expired = send(body, _sign("POST", path, body, host, old), at=old)
    assert expired.status_code == 403 and expired.json()["message"].startswith("Signature expired")
    missing = send(body, None)
    assert missing.status_code == 403 and missing.headers["x-amzn-errortype"] == "MissingAuthenticationTokenException"


# -- Mistral --------------------------------------------------------------------------------------------------


def test_mistral_sdk(url: str) -> None:
    client = Mistral(api_key="mistral-key", server_url=url + "/x/mistral")
    done = client.chat.complete(model="mistral-small-latest", messages=[UserMessage(content="hi")])
    assert done.choices[0].message is not None and done.choices[0].message.content == WORDS
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (9, 6)
    events = list(client.chat.stream(model="mistral-small-latest", messages=[UserMessage(content="hi")]))
    assert "".join(str(e.data.choices[0].delta.content or "") for e in events) == WORDS
    assert events[-1].data.usage is not None and events[-1].data.usage.total_tokens == 15
    vectors = client.embeddings.create(model="mistral-embed", inputs=["a", "b"])
    assert len(vectors.data) == 2 and vectors.usage.prompt_tokens == 2
    listed = client.models.list()
    assert listed.data is not None and "mistral-embed" in [m.id for m in listed.data if hasattr(m, "id")]
    filled = client.fim.complete(model="codestral-latest", prompt="def f(", suffix="):")
    assert filled.choices[0].message is not None and filled.usage.completion_tokens == 6

    with pytest.raises(SDKError) as refused:
        Mistral(api_key="wrong", server_url=url + "/x/mistral").chat.complete(
            model="mistral-small-latest", messages=[UserMessage(content="hi")])
    assert refused.value.status_code == 401


# -- keys -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "headers", "status", "shape"), [
    ("/x/oai/v1/models", {"Authorization": "Bearer sk-wrong"}, 401, {"error": {"code": "invalid_api_key"}}),
    ("/x/vllm/v1/models", {}, 401, {"error": {"code": "invalid_api_key"}}),
    ("/x/oai/v1/models", {"Authorization": "Bearer vllm-key"}, 401, {"error": {"code": "invalid_api_key"}}),
    ("/x/mistral/v1/models", {"Authorization": "Bearer sk-oai"}, 401, {"detail": "Unauthorized"}),
    ("/x/gemoai/v1beta/openai/models", {}, 403, {"error": {"status": "PERMISSION_DENIED"}}),
    ("/x/azure/openai/v1/models", {"Authorization": "Bearer azure-key"}, 401, {"error": {"code": "401"}}),
    ("/x/claude/v1/models", {"anthropic-version": "2023-06-01", "x-api-key": ANTHROPIC_KEY}, 401,
     {"type": "error", "error": {"type": "authentication_error"}}),
    ("/x/gemini/v1beta/models", {"x-goog-api-key": "wrong"}, 403, {"error": {"code": 403}}),
    ("/x/gemini/v1beta/models", {"Authorization": "Bearer gemini-key"}, 403,
     {"error": {"status": "PERMISSION_DENIED"}}),
])
def test_a_wrong_or_missing_key_gets_the_kinds_refusal(url: str, path: str, headers: dict[str, str], status: int,
                                                       shape: dict[str, Any]) -> None:
    answer = httpx.get(url + path, headers=headers)
    assert answer.status_code == status

    def contains(value: Any, expected: Any) -> bool:
        if isinstance(expected, dict):
            return isinstance(value, dict) and all(contains(value.get(k), v) for k, v in expected.items())
        return bool(value == expected)

    assert contains(answer.json(), shape), answer.text
    assert _recorded(url)[-1]["path"] == path


def test_the_right_key_opens_each_kind(url: str) -> None:
    for path, headers in [("/x/oai/v1/models", {"Authorization": "Bearer sk-oai"}),
                          ("/x/gemoai/v1beta/openai/models", {"Authorization": "Bearer gem-oai-key"}),
                          ("/x/azure/openai/v1/models", {"api-key": "azure-key"}),
                          ("/x/claude/v1/models", {"anthropic-version": "2023-06-01", "x-api-key": "sk-ant-named"}),
                          ("/x/gemini/v1/models", {"x-goog-api-key": "gemini-key"})]:
        assert httpx.get(url + path, headers=headers).status_code == 200, path
    unversioned = httpx.get(url + "/x/claude/v1/models", headers={"x-api-key": "sk-ant-named"})
    assert unversioned.status_code == 400 and unversioned.json()["error"]["type"] == "invalid_request_error"


def test_an_empty_root_key_refuses_everything() -> None:
    # A provider with a real key is not mocked: the runner leaves its MOCK_*_KEY empty.
    settings = MockSettings(openai_key="", anthropic_key="", upstreams={})
    root = Account(None, None, "", root_denial(settings))

    def call(*headers: tuple[str, str]) -> Call:
        scope = {"type": "http", "method": "POST", "path": "/v1/responses", "query_string": b"",
                 "headers": [(name.encode(), value.encode()) for name, value in headers]}
        return Call(Request(scope), b"", root, 0)

    for headers in [(("authorization", "Bearer "),), (("authorization", "Bearer"),), (),
                    (("x-api-key", ""), ("anthropic-version", "2023-06-01"))]:
        refused = root.deny(call(*headers))
        assert refused is not None and refused.status_code == 401
    opened = MockSettings(openai_key="sk-x", anthropic_key="", upstreams={})
    assert root_denial(opened)(call(("authorization", "Bearer sk-x"))) is None
