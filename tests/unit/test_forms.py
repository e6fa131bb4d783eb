"""The model of a multipart upload, read from the head of its body: what the SDKs send, where the head may be cut,
and every form two parsers could read differently, which is refused rather than read one way."""

from __future__ import annotations

import doctest

import httpx2
import openai
import pytest

import authz.forms
from authz.forms import AMBIGUOUS, MISSING, NOT_MULTIPART, model_from_form
from controlplane.stack.envoy_config import UPLOAD_HEAD_BYTES

CT = "multipart/form-data; boundary=b0und"
AUDIO = b"RIFF" + bytes(range(256)) * 64  # a recording's bytes, boundary-free


def part(name: str, value: bytes, headers: str = "", disposition: str | None = None) -> bytes:
    disposition = disposition if disposition is not None else f'form-data; name="{name}"'
    return (f"--b0und\r\nContent-Disposition: {disposition}\r\n{headers}\r\n".encode() + value + b"\r\n")


END = b"--b0und--\r\n"
FILE = part("file", AUDIO, disposition='form-data; name="file"; filename="a.wav"',
            headers="Content-Type: audio/wav\r\n")


def test_the_doctests_hold() -> None:
    assert doctest.testmod(authz.forms).failed == 0


def _captured(send) -> httpx2.Request:
    """The request an OpenAI SDK call sends, caught before it leaves the process."""
    seen: list[httpx2.Request] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        return httpx2.Response(200, json={"text": "hi", "created": 0, "data": []})

    http = httpx2.Client(transport=httpx2.MockTransport(handler))
    send(openai.OpenAI(api_key="kw_pat_x", base_url="http://gw/openai/v1", http_client=http, max_retries=0))
    return seen[0]


@pytest.mark.parametrize(
    ("send", "model"),
    [
        pytest.param(lambda client: client.audio.transcriptions.create(
            model="whisper-1", file=("a.wav", AUDIO * 40, "audio/wav"), language="en", prompt="x" * 500),
            "whisper-1", id="transcription"),
        pytest.param(lambda client: client.images.edit(
            model="gpt-image-1", image=("a.png", AUDIO * 40, "image/png"), prompt="a cat"), "gpt-image-1",
            id="image-edit"),
    ],
)
def test_what_the_openai_sdk_sends_has_its_model_in_the_head(send, model: str) -> None:
    request = _captured(send)
    body = request.read()
    assert len(body) > UPLOAD_HEAD_BYTES  # Envoy passes only the head of it
    assert model_from_form(body[:UPLOAD_HEAD_BYTES], request.headers["content-type"]) == (model, None)


def test_a_head_cut_anywhere_gives_the_model_or_nothing_never_a_part_of_it() -> None:
    small_file = part("file", AUDIO[:600], disposition='form-data; name="file"; filename="a.wav"')
    body = part("model", b"whisper-1") + part("language", b"en") + small_file + END
    model_ends = len(part("model", b"whisper-1")) + len("--b0und\r\n")
    answers = [model_from_form(body[:cut], CT) for cut in range(len(body) + 1)]
    assert set(answers) <= {("whisper-1", None), (None, MISSING)}
    # Found as soon as the next boundary proves the value complete, and from then on.
    first = answers.index(("whisper-1", None))
    assert first <= model_ends and set(answers[first:]) == {("whisper-1", None)}
    assert answers[len(part("model", b"whisper-1")) - 2] == (None, MISSING)  # value read, its end not yet


def test_a_model_after_the_file_counts_only_when_the_head_reaches_it() -> None:
    body = FILE + part("model", b"whisper-1") + END
    assert model_from_form(body, CT) == ("whisper-1", None)
    assert model_from_form(body[:len(FILE) - 10], CT) == (None, MISSING)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(part("model", b"whisper-1") + part("model", b"gpt-4o-transcribe") + END, id="two-values"),
        pytest.param(part("model", b"whisper-1") + part("model", b"whisper-1") + END, id="same-value-twice"),
        pytest.param(part("model", b"whisper-1") + FILE + part("model", b"x")[:58], id="second-value-cut-short"),
        pytest.param(part("model", b"whisper-1") + part("Model", b"x", disposition='form-data; NAME="model"') + END,
                     id="second-in-other-case"),
        pytest.param(part("model", b"whisper-1", headers='Content-Disposition: form-data; name="file"\r\n') + END,
                     id="two-dispositions"),
        pytest.param(part("x", b"whisper-1", disposition='form-data; name="file"; name="model"') + END,
                     id="two-names"),
        pytest.param(part("x", b"whisper-1", disposition="form-data; name*=utf-8''model") + END, id="rfc2231-name"),
        pytest.param(part("x", b"whisper-1", disposition='form-data; name="model"; name*0="other"') + END,
                     id="rfc2231-continuation-beside-the-name"),
    ],
)
def test_model_twice_or_a_part_named_two_ways_is_ambiguous(body: bytes) -> None:
    assert model_from_form(body, CT) == (None, AMBIGUOUS)


def test_a_model_part_cut_before_its_headers_end_is_not_yet_a_second_model() -> None:
    # Only what the head shows can be judged: a part whose headers are not complete names nothing yet.
    body = part("model", b"whisper-1") + FILE + part("model", b"x")[:25]
    assert model_from_form(body, CT) == ("whisper-1", None)


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        pytest.param(part("model", b"whisper-1") + END, "application/json", id="json"),
        pytest.param(b"model=whisper-1", "application/x-www-form-urlencoded", id="urlencoded"),
        pytest.param(part("model", b"whisper-1") + END, "multipart/mixed; boundary=b0und", id="multipart-mixed"),
        pytest.param(part("model", b"whisper-1") + END, "multipart/form-data", id="no-boundary"),
        pytest.param(part("model", b"whisper-1") + END, "multipart/form-data; boundary=", id="empty-boundary"),
        pytest.param(part("model", b"whisper-1") + END, "", id="no-content-type"),
        pytest.param(part("model", b"whisper-1") + END, "multipart/form-data; boundary=B0UND", id="boundary-case"),
        pytest.param(b"preamble\r\n" + part("model", b"whisper-1") + END, CT, id="preamble"),
        pytest.param(b"hello, is this thing on?", CT, id="garbage"),
        pytest.param(part("model", b"whisper-1") + END, "multipart/form-data; boundary=other; boundary=b0und",
                     id="boundary-twice"),
        pytest.param(part("model", b"whisper-1") + END, "multipart/form-data; BOUNDARY=other; boundary=b0und",
                     id="boundary-twice-other-case"),
        pytest.param(part("model", b"whisper-1") + END,
                     "multipart/form-data; boundary=other,multipart/form-data; boundary=b0und",
                     id="two-content-types-joined-by-envoy"),
        pytest.param(part("model", b"whisper-1") + END, "multipart/form-data; boundary*=utf-8''b0und",
                     id="rfc2231-boundary"),
    ],
)
def test_what_is_not_one_multipart_form_is_not_multipart(body: bytes, content_type: str) -> None:
    assert model_from_form(body, content_type) == (None, NOT_MULTIPART)


def test_a_decoy_form_before_the_real_boundary_is_not_read_as_the_form() -> None:
    """A body whose first "form" uses the lower-cased boundary is a preamble to a parser using the real one:
    read with the boundary as sent, the gateway refuses it rather than judge the decoy's model."""
    decoy = part("model", b"whisper-1").replace(b"b0und", b"real") + b"--real--\r\n"
    body = decoy + part("model", b"gpt-4o-transcribe").replace(b"b0und", b"REAL") + b"--REAL--\r\n"
    assert model_from_form(body, "multipart/form-data; boundary=REAL") == (None, NOT_MULTIPART)
    assert model_from_form(body, "multipart/form-data; boundary=real") == ("whisper-1", None)


@pytest.mark.parametrize(
    "content_type",
    [
        "multipart/form-data; boundary=----WebKitFormBoundary7MA4YWxkTrZu0gW",
        'multipart/form-data; boundary="----WebKitFormBoundary7MA4YWxkTrZu0gW"',
        "Multipart/Form-Data; BOUNDARY=----WebKitFormBoundary7MA4YWxkTrZu0gW",
        "multipart/form-data;boundary=----WebKitFormBoundary7MA4YWxkTrZu0gW; charset=utf-8",
    ],
)
def test_boundaries_are_taken_as_sent_and_parameter_names_in_any_case(content_type: str) -> None:
    body = part("model", b"whisper-1").replace(b"b0und", b"----WebKitFormBoundary7MA4YWxkTrZu0gW")
    assert model_from_form(body + b"------WebKitFormBoundary7MA4YWxkTrZu0gW--\r\n", content_type) == ("whisper-1", None)


@pytest.mark.parametrize(
    ("disposition", "model"),
    [
        ("form-data; name=model", "whisper-1"),
        ('FORM-DATA; NAME="model"', "whisper-1"),
        ('form-data; name="model"; filename="model.txt"', "whisper-1"),
        ('form-data; name="prompt"; filename="a; name=model"', None),  # a quoted ";" names nothing
        ('form-data; name="models"', None),
        ('form-data; name="Model"', None),  # field names are case-sensitive
    ],
)
def test_which_part_is_the_model(disposition: str, model: str | None) -> None:
    body = part("", b"whisper-1", disposition=disposition) + END
    assert model_from_form(body, CT) == ((model, None) if model else (None, MISSING))


def test_the_content_disposition_header_name_is_case_insensitive() -> None:
    body = b'--b0und\r\ncontent-DISPOSITION: form-data; name="model"\r\n\r\nwhisper-1\r\n' + END
    assert model_from_form(body, CT) == ("whisper-1", None)


@pytest.mark.parametrize(
    ("value", "model"),
    [
        (b"m" * 256, "m" * 256),
        ("é".encode() * 256, "é" * 256),  # the limit is in characters
        (b"m" * 257, None),
        (b"m" * 5000, None),
        (b"", None),
        (b"\xff\xfe", None),
        (b"whisper-\xc3", None),  # UTF-8 cut short
    ],
)
def test_model_values_that_are_no_model_name(value: bytes, model: str | None) -> None:
    answer = model_from_form(part("model", value) + END, CT)
    assert answer == ((model, None) if model else (None, MISSING))


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(part("prompt", b"hi") + FILE + END, id="no-model-part"),
        pytest.param(FILE[:300], id="file-first-cut"),
        pytest.param(b"", id="empty"),
        pytest.param(b"--b0und\r\n", id="only-a-boundary"),
    ],
)
def test_no_model_in_the_head_is_missing(body: bytes) -> None:
    assert model_from_form(body, CT) == (None, MISSING)
