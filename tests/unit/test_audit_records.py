"""Audit lines built from authz decisions and Envoy access-log entries, accepted by the ingest models,
and put on the spool by the emitter (which refuses a request whose decision cannot be recorded).
Whatever a client sends (NUL, lone surrogates, bytes that are not UTF-8, a megabyte), the line stays
storable and says when it had to be changed.

The access-log entries are shaped the way Envoy's gRPC access logger fills ``HTTPAccessLogEntry``:
timings as durations since ``start_time``, ext_authz's dynamic metadata under the filter's name,
token usage under ``keyward.usage`` (numbers, from the json_to_metadata rules).
"""

from __future__ import annotations

import errno
import json
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from envoy.config.core.v3.base_pb2 import RequestMethod
from envoy.data.accesslog.v3.accesslog_pb2 import HTTPAccessLogEntry, ResponseFlags
from envoy.service.accesslog.v3 import als_pb2
from prometheus_client import REGISTRY

from authz.access_log import AccessLogReceiver
from authz.audit.emitter import AuditEmitter
from authz.audit.records import EXT_AUTHZ_NAMESPACE, USAGE_NAMESPACE, decision_line, outcome_line, storable
from authz.audit.spool import Spool
from authz.cache import ModelCatalog, TokenCache, TokenRecord
from authz.outcomes import DENIALS, Outcome
from authz.pipeline import Decision, Pipeline
from authz.request import GatewayRequest
from authz.request import parse as parse_check
from authz.routes import Api
from authz.tokens import generate_token, hash_token
from controlplane.audit.ingest import DecisionLine, OutcomeLine, parse_body
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


def ms(milliseconds: float) -> timedelta:
    return timedelta(milliseconds=milliseconds)


DURATION = timedelta(milliseconds=1234.5678)


def spooled(line: dict[str, Any]) -> Any:
    """The line as the shipper sends it: encoded by the spool, decoded by the control plane."""
    return json.loads(json.dumps(line, separators=(",", ":"), ensure_ascii=False))


# -- access-log entries ---------------------------------------------------------------------------


def access_log(
    *,
    method: str = "POST",
    path: str = "/openai/v1/chat/completions",
    original_path: str = "",
    status: int | None = 200,
    details: str = "via_upstream",
    duration: timedelta | None = DURATION,
    last_downstream_tx: timedelta | None = None,
    first_upstream_tx: timedelta | None = None,
    first_upstream_rx: timedelta | None = None,
    last_upstream_rx: timedelta | None = None,
    authz: dict[str, Any] | None = None,
    usage: dict[str, Any] | None = None,
    flags: tuple[str, ...] = (),
    uaex: bool = False,
    bytes_in: int = 0,
    bytes_out: int = 0,
) -> HTTPAccessLogEntry:
    entry = HTTPAccessLogEntry()
    common = entry.common_properties
    common.start_time.FromDatetime(START)
    for name, value in (
        ("duration", duration),
        ("time_to_last_downstream_tx_byte", last_downstream_tx),
        ("time_to_first_upstream_tx_byte", first_upstream_tx),
        ("time_to_first_upstream_rx_byte", first_upstream_rx),
        ("time_to_last_upstream_rx_byte", last_upstream_rx),
    ):
        if value is not None:
            getattr(common, name).FromTimedelta(value)
    for flag in flags:
        setattr(common.response_flags, flag, True)
    if uaex:  # how Envoy reports UAEX: a message, not a boolean
        common.response_flags.unauthorized_details.reason = ResponseFlags.Unauthorized.EXTERNAL_SERVICE
    if authz is not None:
        common.metadata.filter_metadata[EXT_AUTHZ_NAMESPACE].update(authz)
    if usage is not None:
        common.metadata.filter_metadata[USAGE_NAMESPACE].update(usage)
    entry.request.request_id = REQUEST_ID
    entry.request.request_method = RequestMethod.Value(method)
    entry.request.path = path
    entry.request.original_path = original_path
    entry.request.request_body_bytes = bytes_in
    if status is not None:
        entry.response.response_code.value = status
    entry.response.response_code_details = details
    entry.response.response_body_bytes = bytes_out
    return entry


def authz_metadata(decision: str = "allowed") -> dict[str, Any]:
    return {"decision": decision, "token_id": TOKEN_ID, "user_id": USER_ID, "provider": "openai",
            "model": "gpt-4o-mini"}


def allowed_completion() -> HTTPAccessLogEntry:
    return access_log(
        path="/openai/v1/chat/completions?api-version=2024-06-01",
        first_upstream_tx=ms(3.2), first_upstream_rx=ms(412.9), last_upstream_rx=ms(1200.9),
        authz=authz_metadata(), usage={"prompt_tokens": 1234, "completion_tokens": 56},
        bytes_in=1843, bytes_out=2201,
    )


def denied_by_authz() -> HTTPAccessLogEntry:
    return access_log(status=401, details="ext_authz_denied", duration=ms(1.9), uaex=True,
                      authz=authz_metadata("token_revoked"), bytes_in=1843, bytes_out=187)


def body_too_large() -> HTTPAccessLogEntry:
    """Envoy's ext_authz filter refuses the buffered body itself; authz is never asked."""
    return access_log(status=413, details="request_payload_too_large", duration=ms(0.8), bytes_in=0, bytes_out=152)


def no_route() -> HTTPAccessLogEntry:
    return access_log(method="GET", path="/v1/models", status=404, details="route_not_found",
                      duration=ms(0.3), flags=("no_route_found",), bytes_out=140)


def upstream_unreachable() -> HTTPAccessLogEntry:
    return access_log(
        status=503, details="upstream_reset_before_response_started{remote_connection_failure}",
        duration=ms(5001), flags=("upstream_connection_failure",), authz=authz_metadata(), bytes_out=91,
    )


# -- outcome lines --------------------------------------------------------------------------------


def test_an_allowed_request_that_reached_the_provider() -> None:
    assert outcome_line(allowed_completion()) == {
        "kind": "outcome",
        "at": START_ISO,
        "request_id": REQUEST_ID,
        "status": 200,
        "upstream_status": 200,
        "response_flags": None,
        "details": "via_upstream",
        "duration_ms": 1234,
        "upstream_ms": 1197,  # last byte received (1200.9) - first byte sent (3.2), in whole ms
        "bytes_in": 1843,
        "bytes_out": 2201,
        "prompt_tokens": 1234,
        "completion_tokens": 56,
        "decided": True,
        "method": "POST",
        "route": "/openai/v1/chat/completions",
    }


def test_token_counts_are_integers() -> None:
    line = outcome_line(allowed_completion())
    assert type(line["prompt_tokens"]) is int
    assert type(line["completion_tokens"]) is int


def test_a_request_denied_by_authz_is_decided_and_never_reached_upstream() -> None:
    line = outcome_line(denied_by_authz())
    assert line["decided"] is True
    assert line["status"] == 401
    assert line["upstream_status"] is None
    assert line["upstream_ms"] is None
    assert line["details"] == "ext_authz_denied"
    assert line["prompt_tokens"] is None and line["completion_tokens"] is None


@pytest.mark.parametrize(
    ("entry", "status", "details", "flags"),
    [
        (body_too_large(), 413, "request_payload_too_large", None),
        (no_route(), 404, "route_not_found", "no_route_found"),
    ],
    ids=["body-too-large", "no-route"],
)
def test_a_request_envoy_answered_alone_is_not_decided(
    entry: HTTPAccessLogEntry, status: int, details: str, flags: str | None
) -> None:
    line = outcome_line(entry)
    assert line["decided"] is False
    assert line["status"] == status
    assert line["details"] == details
    assert line["response_flags"] == flags
    assert line["upstream_status"] is None


def test_ext_authz_metadata_without_a_decision_does_not_count_as_decided() -> None:
    assert outcome_line(access_log(authz={"provider": "openai"}))["decided"] is False


def test_several_response_flags_are_listed() -> None:
    entry = access_log(status=504, details="upstream_response_timeout",
                       flags=("upstream_request_timeout", "upstream_retry_limit_exceeded"))
    assert outcome_line(entry)["response_flags"] == "upstream_request_timeout,upstream_retry_limit_exceeded"


def test_the_unauthorized_external_service_flag_is_kept() -> None:
    assert outcome_line(denied_by_authz())["response_flags"] is not None


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
def test_the_method_is_named(method: str) -> None:
    assert outcome_line(access_log(method=method))["method"] == method


@pytest.mark.parametrize(
    ("path", "original_path", "route"),
    [
        ("/openai/v1/chat/completions?api-version=2024-06-01&x=1", "", "/openai/v1/chat/completions"),
        ("/anthropic/v1/messages", "", "/anthropic/v1/messages"),
        # after a prefix rewrite Envoy logs the rewritten path and keeps the client's in original_path
        ("/v1/models", "/openai/v1/models?limit=5", "/openai/v1/models"),
        ("/" + "a" * 600 + "?q=1", "", "/" + "a" * 511),
    ],
)
def test_the_route_is_the_client_path_without_its_query(path: str, original_path: str, route: str) -> None:
    assert outcome_line(access_log(path=path, original_path=original_path))["route"] == route


def test_durations_are_whole_milliseconds() -> None:
    line = outcome_line(access_log(duration=timedelta(seconds=2, microseconds=999_999),
                                   first_upstream_tx=ms(10.9), first_upstream_rx=ms(20), last_upstream_rx=ms(2500.1)))
    assert line["duration_ms"] == 2999
    assert line["upstream_ms"] == 2490


def test_without_a_total_duration_the_last_byte_sent_downstream_is_used() -> None:
    assert outcome_line(access_log(duration=None, last_downstream_tx=ms(42.7)))["duration_ms"] == 42
    assert outcome_line(access_log(duration=None))["duration_ms"] is None


@pytest.mark.parametrize(
    ("entry", "upstream_status"),
    [
        (allowed_completion(), 200),
        (access_log(status=429, details="via_upstream", first_upstream_tx=ms(2), first_upstream_rx=ms(80),
                    last_upstream_rx=ms(81), authz=authz_metadata()), 429),
        (upstream_unreachable(), None),  # Envoy's own 503: the provider never answered
        (denied_by_authz(), None),
        (body_too_large(), None),
        # the provider started answering, then the client went away before Envoy had a status to log
        (access_log(status=None, details="downstream_remote_disconnect", first_upstream_tx=ms(2),
                    first_upstream_rx=ms(300), authz=authz_metadata()), None),
    ],
    ids=["200", "429", "connect-failure", "denied", "envoy-413", "no-status"],
)
def test_upstream_status_only_when_the_upstream_answered(
    entry: HTTPAccessLogEntry, upstream_status: int | None
) -> None:
    assert outcome_line(entry)["upstream_status"] == upstream_status


def test_start_time_keeps_microseconds_in_utc() -> None:
    at = datetime.fromisoformat(outcome_line(allowed_completion())["at"])
    assert at == START
    assert at.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "entry",
    [allowed_completion(), denied_by_authz(), body_too_large(), no_route(), upstream_unreachable(),
     access_log(status=None, details="downstream_remote_disconnect", duration=None)],
    ids=["allowed", "denied", "envoy-413", "no-route", "connect-failure", "bare"],
)
def test_outcome_lines_are_accepted_by_the_ingest_model(entry: HTTPAccessLogEntry) -> None:
    line = outcome_line(entry)
    parsed = OutcomeLine.model_validate(spooled(line))
    assert parsed.at == datetime.fromisoformat(line["at"])
    assert parsed.model_dump(exclude={"at"}, exclude_unset=True) == {k: v for k, v in line.items() if k != "at"}


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


def entries_of(*request_ids: str) -> list[HTTPAccessLogEntry]:
    entries = []
    for request_id in request_ids:
        entry = allowed_completion()
        entry.request.request_id = request_id
        entries.append(entry)
    return entries


def test_outcome_lines_of_one_message_go_to_the_spool_in_one_write() -> None:
    spool = RecordingSpool()
    entries = entries_of("r1", "r2", "r3")
    AuditEmitter(spool).outcomes(entries)
    assert spool.writes == [[outcome_line(entry) for entry in entries]]


class NoUsage:
    def touch(self, token_id: str, at: float) -> None:
        pass


def test_when_the_write_fails_each_outcome_line_is_tried_alone() -> None:
    spool = RecordingSpool(refuse_batches=True, refuse={"r2"})
    AuditEmitter(spool).outcomes(entries_of("r1", "r2", "r3"))
    assert [line["request_id"] for line in spool.lines] == ["r1", "r3"]


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


def test_a_megabyte_in_every_client_chosen_field_of_an_outcome(tmp_path: Path) -> None:
    entry = access_log(path="/" + "p" * MEGABYTE, original_path="/" + "o" * MEGABYTE + "\x00",
                       details="d" * MEGABYTE, flags=tuple(name for name in _ALL_FLAGS))
    entry.request.request_id = "r" * MEGABYTE
    line = outcome_line(entry)
    assert (len(line["request_id"]), len(line["route"]), len(line["details"])) == (128, 512, 512)
    assert line["route"] == "/" + "o" * 511
    assert len(line["response_flags"]) <= 512
    assert line["sanitized"] is True
    assert_stored_as_is(line, spool_bytes(tmp_path / "spool", line))


def test_a_nul_in_an_outcome_path_or_details_is_replaced(tmp_path: Path) -> None:
    line = outcome_line(access_log(path="/openai/v1/chat\x00/completions", details="via\x00upstream"))
    assert (line["route"], line["details"]) == ("/openai/v1/chat\ufffd/completions", "via\ufffdupstream")
    assert line["sanitized"] is True
    assert_stored_as_is(line, spool_bytes(tmp_path / "spool", line))


@pytest.mark.parametrize("empty", ["", b""], ids=["str", "bytes"])
def test_an_empty_request_id_is_replaced_by_a_fresh_one(empty: str | bytes) -> None:
    request = gateway_request()
    request.request_id = empty  # type: ignore[assignment]
    line = decision_line(Decision(Outcome.TOKEN_MISSING, None), request, AT, 401)
    assert uuid.UUID(line["request_id"])
    assert line["sanitized"] is True
    entry = allowed_completion()
    entry.request.request_id = ""
    assert uuid.UUID(outcome_line(entry)["request_id"])


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
        outcome_line(allowed_completion()),
        outcome_line(denied_by_authz()),
        outcome_line(no_route()),
    ],
    ids=["allowed", "denied", "outcome", "outcome-denied", "outcome-no-route"],
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


def test_the_access_log_stream_outlives_lines_it_cannot_spool_or_log() -> None:
    spool = RecordingSpool(refuse_batches=True, refuse={"r1", "r2"})
    messages = []
    for request_ids in (("r1", "r2"), ("r3",)):
        message = als_pb2.StreamAccessLogsMessage()
        message.http_logs.log_entry.extend(entries_of(*request_ids))
        messages.append(message)
    before = REGISTRY.get_sample_value("keyward_authz_audit_spool_failures_total", {"kind": "outcome"}) or 0.0
    with logging_to(FullDisk()):
        reply = AccessLogReceiver(AuditEmitter(spool)).StreamAccessLogs(iter(messages), None)
    assert isinstance(reply, als_pb2.StreamAccessLogsResponse)
    assert [line["request_id"] for line in spool.lines] == ["r3"]  # the message after the failures went on
    assert REGISTRY.get_sample_value("keyward_authz_audit_spool_failures_total", {"kind": "outcome"}) == before + 2
