"""Decision lines built from authz decisions, accepted by the ingest models, and put on the spool by
the emitter (which refuses a request whose decision cannot be recorded, and records nothing for a
Check Envoy no longer waits for). Whatever a client sends (NUL, lone surrogates, bytes that are not
UTF-8, a megabyte), the line stays storable and says when it had to be changed.

Outcome lines (from Envoy's audit log) are tested in test_audit_outcome_log.py.
"""

from __future__ import annotations

import errno
import json
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from envoy.data.accesslog.v3.accesslog_pb2 import ResponseFlags

from authz.audit.emitter import AuditEmitter
from authz.audit.records import decision_line, storable
from authz.audit.spool import Spool
from authz.cache import ModelCatalog, TokenCache, TokenRecord
from authz.outcomes import DENIALS, Outcome
from authz.pipeline import Decision, Pipeline
from authz.request import GatewayRequest
from authz.request import parse as parse_check
from authz.routes import Api
from authz.tokens import generate_token, hash_token
from controlplane.audit.ingest import DecisionLine, parse_body
from tests.unit import checkrequests as cr
from tests.unit.faults import FullDisk, logging_to

HASH_KEY = bytes.fromhex("3c" * 32)
#: Every boolean response flag Envoy knows: together their names run past the store's 512 characters.
_ALL_FLAGS = [field.name for field in ResponseFlags.DESCRIPTOR.fields if field.type == field.TYPE_BOOL]
START = datetime(2025, 6, 15, 15, 6, 40, 123456, tzinfo=UTC)
START_ISO = "2025-06-15T15:06:40.123456+00:00"
REQUEST_ID = "8d3c2f7e-5b1a-4c9e-9f0d-2a6b7c8d9e0f"
TOKEN_ID = "0b7e5c1a-3f2d-4e6b-8a9c-1d2e3f4a5b6c"
USER_ID = "5f4e3d2c-1b0a-4987-8765-43210fedcba9"


def spooled(line: dict[str, Any]) -> Any:
    """The line as the shipper sends it: encoded by the spool, decoded by the control plane."""
    return json.loads(json.dumps(line, separators=(",", ":"), ensure_ascii=False))


# -- decision lines -------------------------------------------------------------------------------

AT = 1_750_000_000.25
AT_ISO = "2025-06-15T15:06:40.250000+00:00"


def token_record(**overrides: Any) -> TokenRecord:
    fields: dict[str, Any] = {
        "token_id": TOKEN_ID, "token_hash": "h" * 64, "user_id": USER_ID, "user_email": "ada@example.com",
        "team": "research", "environment": "production", "catalog": ModelCatalog(["gpt-4o-mini", "claude-3-5-*"]),
        "expires_at": None, "owner_active": True,
    }
    return TokenRecord(**(fields | overrides))


def gateway_request(path: str = "/openai/v1/chat/completions?api-version=2024-06-01",
                    method: str = "POST") -> GatewayRequest:
    return GatewayRequest(request_id=REQUEST_ID, method=method, path=path, credential=None,
                          credential_unreadable=False, content_type="application/json",
                          body=b'{"model":"gpt-4o-mini"}', body_truncated=False)


def status_of(decision: Decision) -> int | None:
    """What authz passes along: no status for an allowed request, the denial's HTTP status otherwise."""
    return None if decision.allowed else DENIALS[decision.outcome].http_status


def test_an_allowed_decision() -> None:
    decision = Decision(Outcome.ALLOWED, Api.OPENAI, token_record(), "gpt-4o-mini")
    assert decision_line(decision, gateway_request(), AT, status_of(decision)) == {
        "kind": "decision",
        "at": AT_ISO,
        "request_id": REQUEST_ID,
        "token_id": TOKEN_ID,
        "user_id": USER_ID,
        "user_email": "ada@example.com",
        "team": "research",
        "environment": "production",
        "provider": "openai",
        "method": "POST",
        "route": "/openai/v1/chat/completions",
        "model": "gpt-4o-mini",
        "decision": "allowed",
        "status": None,
    }


def test_a_denial_with_a_known_token_names_its_owner() -> None:
    decision = Decision(Outcome.TOKEN_REVOKED, Api.ANTHROPIC, token_record(team=None))
    line = decision_line(decision, gateway_request("/anthropic/v1/messages"), AT, status_of(decision))
    assert line["decision"] == "token_revoked"
    assert line["status"] == 401
    assert (line["token_id"], line["user_id"], line["user_email"]) == (TOKEN_ID, USER_ID, "ada@example.com")
    assert line["team"] is None
    assert line["provider"] == "anthropic"
    assert line["model"] is None


def test_a_denial_without_a_token_names_nobody() -> None:
    decision = Decision(Outcome.TOKEN_MISSING, None)
    line = decision_line(decision, gateway_request("/v1/chat/completions"), AT, status_of(decision))
    assert line["decision"] == "token_missing"
    assert line["status"] == 401
    for key in ("token_id", "user_id", "user_email", "team", "environment", "provider", "model"):
        assert line[key] is None, key
    assert line["route"] == "/v1/chat/completions"


def test_a_model_denial_records_the_model_asked_for() -> None:
    decision = Decision(Outcome.MODEL_NOT_ALLOWED, Api.OPENAI, token_record(), "gpt-4o", detail="Model: 'gpt-4o'.")
    line = decision_line(decision, gateway_request(), AT, status_of(decision))
    assert (line["decision"], line["model"], line["status"]) == ("model_not_allowed", "gpt-4o", 403)


def test_a_long_route_is_cut_to_what_the_store_accepts() -> None:
    decision = Decision(Outcome.ROUTE_UNKNOWN, Api.OPENAI, token_record())
    line = decision_line(decision, gateway_request("/openai/" + "x" * 700 + "?q=" + "y" * 50), AT, 404)
    assert line["route"] == "/openai/" + "x" * 504
    DecisionLine.model_validate(spooled(line))


@pytest.mark.parametrize(
    "decision",
    [
        Decision(Outcome.ALLOWED, Api.OPENAI, token_record(), "gpt-4o-mini"),
        Decision(Outcome.TOKEN_REVOKED, Api.ANTHROPIC, token_record()),
        Decision(Outcome.TOKEN_MISSING, None),
        Decision(Outcome.MODEL_NOT_ALLOWED, Api.OPENAI, token_record(), "o1"),
    ],
    ids=lambda d: d.outcome.value,
)
def test_decision_lines_are_accepted_by_the_ingest_model(decision: Decision) -> None:
    line = decision_line(decision, gateway_request(), AT, status_of(decision))
    parsed = DecisionLine.model_validate(spooled(line))
    assert parsed.at == datetime.fromisoformat(AT_ISO)
    assert parsed.token_id == (uuid.UUID(TOKEN_ID) if decision.record else None)
    assert parsed.decision == decision.outcome.value
    assert parsed.status == status_of(decision)


def test_a_client_chosen_model_name_of_any_length_still_makes_a_valid_line() -> None:
    model = "claude-3-5-" + "x" * 600  # matches the catalog pattern "claude-3-5-*", so it is even allowed
    record = token_record()
    assert record.catalog.allows(model)
    decision = Decision(Outcome.ALLOWED, Api.ANTHROPIC, record, model)
    DecisionLine.model_validate(spooled(decision_line(decision, gateway_request("/anthropic/v1/messages"), AT, None)))


# -- the emitter ----------------------------------------------------------------------------------


class RecordingSpool:
    """Keeps every line it is given, in one list per write; refuses, as a full disk would, every batch
    when ``refuse_batches`` and every line of a request in ``refuse``."""

    def __init__(self, *, refuse_batches: bool = False, refuse: Iterable[str] = ()) -> None:
        self.writes: list[list[dict[str, Any]]] = []
        self.refuse_batches = refuse_batches
        self.refuse = set(refuse)

    def append(self, record: dict[str, Any]) -> None:
        self._write([record])

    def append_many(self, records: Iterable[dict[str, Any]]) -> None:
        records = list(records)
        if self.refuse_batches:
            raise OSError(errno.ENOSPC, "No space left on device")
        self._write(records)

    def _write(self, records: list[dict[str, Any]]) -> None:
        if any(record["request_id"] in self.refuse for record in records):
            raise OSError(errno.EFBIG, "File too large")
        self.writes.append(records)

    @property
    def lines(self) -> list[dict[str, Any]]:
        return [line for write in self.writes for line in write]


@pytest.mark.parametrize(
    "decision",
    [
        Decision(Outcome.ALLOWED, Api.OPENAI, token_record(), "gpt-4o-mini"),
        Decision(Outcome.MODEL_NOT_ALLOWED, Api.OPENAI, token_record(), "o1"),
        Decision(Outcome.TOKEN_MISSING, None),
    ],
    ids=lambda d: d.outcome.value,
)
def test_a_recorded_decision_is_answered_as_decided(decision: Decision) -> None:
    spool = RecordingSpool()
    answer = AuditEmitter(spool, clock=lambda: AT).decision(decision, gateway_request())
    assert answer is decision
    assert spool.lines == [decision_line(decision, gateway_request(), AT, status_of(decision))]


def test_a_decision_that_cannot_be_recorded_is_refused_as_audit_unavailable() -> None:
    decision = Decision(Outcome.ALLOWED, Api.ANTHROPIC, token_record(), "claude-3-5-haiku-latest")
    spool = RecordingSpool(refuse={REQUEST_ID})
    answer = AuditEmitter(spool, clock=lambda: AT).decision(decision, gateway_request())
    assert answer.outcome is Outcome.AUDIT_UNAVAILABLE
    assert (answer.api, answer.record, answer.model) == (decision.api, decision.record, decision.model)
    assert spool.lines == []


class NoUsage:
    def touch(self, token_id: str, at: float) -> None:
        pass


def test_a_check_envoy_stopped_waiting_for_records_nothing() -> None:
    # authz stalled past Envoy's timeout: Envoy answered 503 alone, and its outcome line is the record.
    spool = RecordingSpool()
    decision = Decision(Outcome.ALLOWED, Api.OPENAI, token_record(), "gpt-4o-mini")
    request = gateway_request()
    request.started = AT - 5
    answer = AuditEmitter(spool, clock=lambda: AT, late=lambda started: started is not None and started < AT - 2) \
        .decision(decision, request)
    assert answer is decision and spool.lines == []
    request.started = AT - 0.5  # still on time: recorded as ever
    AuditEmitter(spool, clock=lambda: AT, late=lambda started: started is not None and started < AT - 2) \
        .decision(decision, request)
    assert [line["request_id"] for line in spool.lines] == [request.request_id]


# -- hostile values: every line stays storable ----------------------------------------------------

MEGABYTE = 1_000_000


def ingested(line: bytes) -> Any:
    """The line as the control plane's ingest reads it from a batch body."""
    return parse_body(b'{"records":[' + line + b"]}").records[0]


def spool_bytes(directory: Path, line: dict[str, Any]) -> bytes:
    """The line as the real spool writes it (the bytes the shipper sends)."""
    spool = Spool(directory)
    try:
        spool.append(line)
    finally:
        spool.close()
    [written] = spool.current.read_bytes().splitlines()
    return written


def assert_stored_as_is(line: dict[str, Any], written: bytes) -> None:
    """Valid JSON, accepted by ingest, and nothing left for ingest to change: the line was storable."""
    assert json.loads(written) == line
    parsed = ingested(written)
    for key, value in line.items():
        if key in ("token_id", "user_id") and value:
            value = uuid.UUID(value)
        if key != "at":
            assert getattr(parsed, key) == value, key


def test_a_nul_in_a_denied_model_reaches_the_spool_replaced_and_marked(tmp_path: Path) -> None:
    """The issue's request, end to end through authz: body -> pipeline -> emitter -> spool -> ingest."""
    token = generate_token()
    cache = TokenCache()
    cache.upsert(token_record(token_hash=hash_token(token, HASH_KEY)))
    pipeline = Pipeline(cache=cache, hash_key=HASH_KEY, usage=NoUsage(), clock=lambda: AT)
    request = parse_check(cr.chat_with_body(token, b'{"model":"gpt-4o-mini\\u0000x","messages":[]}'))
    spool = Spool(tmp_path / "spool")
    try:
        answer = AuditEmitter(spool, clock=lambda: AT).decision(pipeline.decide(request), request)
    finally:
        spool.close()
    assert answer.outcome is Outcome.MODEL_NOT_ALLOWED
    [written] = spool.current.read_bytes().splitlines()
    assert b"\\u0000" not in written and b"\x00" not in written
    line = json.loads(written)
    assert line["model"] == "gpt-4o-mini\ufffdx"
    assert line["sanitized"] is True
    assert_stored_as_is(line, written)


def test_lone_surrogates_in_any_text_are_replaced(tmp_path: Path) -> None:
    lone = json.loads('"\\ud800"')  # what JSON lets a client send
    request = GatewayRequest(request_id=f"req-{lone}", method=f"PO{lone}ST", path=f"/openai/{lone}/x?q={lone}",
                             credential=None, credential_unreadable=False, content_type="application/json",
                             body=b"", body_truncated=False)
    decision = Decision(Outcome.MODEL_NOT_ALLOWED, Api.OPENAI, token_record(), f"gpt-{lone}")
    line = decision_line(decision, request, AT, 403)
    assert (line["request_id"], line["method"], line["route"], line["model"]) == (
        "req-\ufffd", "PO\ufffdST", "/openai/\ufffd/x", "gpt-\ufffd")
    assert line["sanitized"] is True
    written = spool_bytes(tmp_path / "spool", line)
    written.decode("utf-8")  # strict: it is UTF-8 text now
    assert_stored_as_is(line, written)


def test_undecodable_header_bytes_become_replacement_characters(tmp_path: Path) -> None:
    check = cr.check_request("GET", "/openai/v1/models", {"x-request-id": b"req-\xff\xfe-1"})
    line = decision_line(Decision(Outcome.TOKEN_MISSING, Api.OPENAI), parse_check(check), AT, 401)
    assert line["request_id"] == "req-\ufffd\ufffd-1"
    assert line["sanitized"] is True
    assert_stored_as_is(line, spool_bytes(tmp_path / "spool", line))


def test_storable_reads_bytes_as_utf8_with_replacement() -> None:
    assert storable(b"caf\xc3\xa9") == ("café", False)
    assert storable(b"caf\xc3") == ("caf\ufffd", True)
    assert storable(b"a\x00b") == ("a\ufffdb", True)


def test_a_megabyte_in_every_client_chosen_field_of_a_decision(tmp_path: Path) -> None:
    huge = "m" * MEGABYTE
    request = GatewayRequest(request_id=huge, method=huge, path="/" + huge + "?" + huge, credential=None,
                             credential_unreadable=False, content_type="application/json", body=b"",
                             body_truncated=False)
    line = decision_line(Decision(Outcome.ROUTE_UNKNOWN, Api.OPENAI, token_record(), huge), request, AT, 404)
    assert len(line["request_id"]) == 128
    assert (len(line["method"]), len(line["route"]), len(line["model"])) == (512, 512, 512)
    assert line["sanitized"] is True
    written = spool_bytes(tmp_path / "spool", line)
    assert len(written) < 4096
    assert_stored_as_is(line, written)


@pytest.mark.parametrize("empty", ["", b""], ids=["str", "bytes"])
def test_an_empty_request_id_is_replaced_by_a_fresh_one(empty: str | bytes) -> None:
    request = gateway_request()
    request.request_id = empty  # type: ignore[assignment]
    line = decision_line(Decision(Outcome.TOKEN_MISSING, None), request, AT, 401)
    assert uuid.UUID(line["request_id"])
    assert line["sanitized"] is True


def test_a_long_request_id_is_cut_to_what_the_store_accepts() -> None:
    request = gateway_request()
    request.request_id = "x" * 129
    line = decision_line(Decision(Outcome.TOKEN_MISSING, None), request, AT, 401)
    assert line["request_id"] == "x" * 128
    assert line["sanitized"] is True


@pytest.mark.parametrize(
    "line",
    [
        decision_line(Decision(Outcome.ALLOWED, Api.OPENAI, token_record(), "gpt-4o-mini"), gateway_request(), AT,
                      None),
        decision_line(Decision(Outcome.TOKEN_MISSING, None), gateway_request("/anthropic/v1/messages"), AT, 401),
    ],
    ids=["allowed", "denied"],
)
def test_a_line_that_needed_nothing_has_no_sanitized_key(line: dict[str, Any]) -> None:
    assert "sanitized" not in line


# -- a full disk refuses the spool and the log alike ----------------------------------------------


def test_a_decision_still_answers_audit_unavailable_when_the_log_is_on_the_full_disk_too() -> None:
    decision = Decision(Outcome.ALLOWED, Api.OPENAI, token_record(), "gpt-4o-mini")
    spool = RecordingSpool(refuse={REQUEST_ID})
    with logging_to(FullDisk()):
        answer = AuditEmitter(spool, clock=lambda: AT).decision(decision, gateway_request())
    assert answer.outcome is Outcome.AUDIT_UNAVAILABLE
