"""What an ingest batch accepts, and how ``split`` turns its lines into request records and outcomes."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from controlplane.audit import chain
from controlplane.audit.ingest import IngestBatch, parse_body, split

AT = "2025-06-15T15:06:40.123456+00:00"
TOKEN_ID = "0b7e5c1a-3f2d-4e6b-8a9c-1d2e3f4a5b6c"
USER_ID = "5f4e3d2c-1b0a-4987-8765-43210fedcba9"

RECORD_COLUMNS = set(chain.FIELDS[chain.REQUESTS]) - {"seq"} | set(chain.EXTENSIONS[chain.REQUESTS])
OUTCOME_COLUMNS = set(chain.FIELDS[chain.OUTCOMES]) - {"seq"} | set(chain.EXTENSIONS[chain.OUTCOMES])


# -- factories: lines as they arrive in the JSON body ---------------------------------------------


def decision(request_id: str = "req-decided", **overrides: Any) -> dict[str, Any]:
    return {
        "kind": "decision", "at": AT, "request_id": request_id, "token_id": TOKEN_ID, "user_id": USER_ID,
        "user_email": "ada@example.com", "team": "research", "environment": "production", "provider": "openai",
        "method": "POST", "route": "/openai/v1/chat/completions", "model": "gpt-4o-mini", "decision": "allowed",
        "status": None,
    } | overrides


def outcome(request_id: str = "req-decided", *, decided: bool = True, **overrides: Any) -> dict[str, Any]:
    return {
        "kind": "outcome", "at": AT, "request_id": request_id, "status": 200, "upstream_status": 200,
        "response_flags": None, "details": "via_upstream", "duration_ms": 1234, "upstream_ms": 1197,
        "bytes_in": 1843, "bytes_out": 2201, "prompt_tokens": 12, "completion_tokens": 7, "decided": decided,
        "method": "POST", "route": "/openai/v1/chat/completions",
    } | overrides


def envoy_outcome(request_id: str = "req-envoy", **overrides: Any) -> dict[str, Any]:
    """A request Envoy answered alone: no authz decision, no upstream."""
    return outcome(request_id, decided=False, status=413, upstream_status=None, details="request_payload_too_large",
                   duration_ms=1, upstream_ms=None, bytes_in=0, bytes_out=152, prompt_tokens=None,
                   completion_tokens=None) | overrides


def batch(*lines: dict[str, Any]) -> IngestBatch:
    return IngestBatch.model_validate({"records": list(lines)})


def split_lines(*lines: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    return split(batch(*lines))


# -- split ----------------------------------------------------------------------------------------


def test_a_decision_becomes_an_authz_record() -> None:
    records, outcomes = split_lines(decision(decision="token_revoked", status=401, model=None))
    assert outcomes == []
    assert records == [{
        "at": datetime(2025, 6, 15, 15, 6, 40, 123456, tzinfo=UTC),
        "request_id": "req-decided",
        "source": "authz",
        "token_id": uuid.UUID(TOKEN_ID),
        "user_id": uuid.UUID(USER_ID),
        "user_email": "ada@example.com",
        "team": "research",
        "environment": "production",
        "provider": "openai",
        "method": "POST",
        "route": "/openai/v1/chat/completions",
        "model": None,
        "decision": "token_revoked",
        "status": 401,
        "sanitized": None,
        "project_id": None,
        "project": None,
        "limit_scope": None,
    }]


def test_a_decided_outcome_brings_a_stand_in_record_used_only_without_a_decision() -> None:
    # authz answered (Envoy saw its metadata) but its decision line never came: audit_unavailable, a
    # Check decided too late, an authz that died mid-Check. Ingest keeps the stand-in only then.
    records, outcomes = split_lines(outcome(authz_decision="audit_unavailable", status=503, upstream_status=None))
    assert [(r["source"], r["decision"], r["status"]) for r in records] == [("envoy", "audit_unavailable", 503)]
    records, outcomes = split_lines(outcome())
    assert [(r["source"], r["decision"]) for r in records] == [("envoy", "envoy:via_upstream")]
    assert outcomes == [{
        "at": datetime(2025, 6, 15, 15, 6, 40, 123456, tzinfo=UTC),
        "request_id": "req-decided",
        "status": 200,
        "upstream_status": 200,
        "response_flags": None,
        "details": "via_upstream",
        "duration_ms": 1234,
        "upstream_ms": 1197,
        "bytes_in": 1843,
        "bytes_out": 2201,
        "prompt_tokens": 12,
        "completion_tokens": 7,
        "sanitized": None,
        "decided": True,
        "cached_tokens": None,
        "cost_usd": None,
        "cost_input_usd": None,
        "cost_cached_usd": None,
        "cost_output_usd": None,
        "price_version": None,
        "usage_estimated": None,
        "spend": None,
    }]


def test_an_undecided_outcome_is_also_the_request_s_envoy_record() -> None:
    records, outcomes = split_lines(envoy_outcome())
    assert [o["request_id"] for o in outcomes] == ["req-envoy"]
    assert records == [{
        "at": datetime(2025, 6, 15, 15, 6, 40, 123456, tzinfo=UTC),
        "request_id": "req-envoy",
        "source": "envoy",
        "token_id": None,
        "user_id": None,
        "user_email": None,
        "team": None,
        "environment": None,
        "provider": None,
        "method": "POST",
        "route": "/openai/v1/chat/completions",
        "model": None,
        "decision": "envoy:request_payload_too_large",
        "status": 413,
        "sanitized": None,
        "project_id": None,
        "project": None,
        "limit_scope": None,
    }]


@pytest.mark.parametrize(
    ("details", "flags", "decision_text"),
    [
        ("route_not_found", "no_route_found", "envoy:route_not_found"),  # details win over flags
        (None, "no_route_found", "envoy:no_route_found"),
        (None, None, "envoy:unknown"),
        ("", "local_reset", "envoy:local_reset"),
        ("upstream_reset_before_response_started{remote_connection_failure,delayed_connect_error:_111}", None,
         "envoy:upstream_reset_before_response_started{remote_connection_f"),
    ],
    ids=["details", "flags", "neither", "empty-details", "long"],
)
def test_the_envoy_decision_names_the_reason_within_64_characters(
    details: str | None, flags: str | None, decision_text: str
) -> None:
    [record], _ = split_lines(envoy_outcome(details=details, response_flags=flags))
    assert record["decision"] == decision_text
    assert len(record["decision"]) <= 64


def test_a_mixed_batch_keeps_its_order() -> None:
    records, outcomes = split_lines(
        decision("r1"), envoy_outcome("r2"), outcome("r1"), decision("r3", decision="model_not_allowed", status=403),
        envoy_outcome("r4", status=404, details="route_not_found"), outcome("r3", status=403, upstream_status=None),
    )
    # Every outcome brings a stand-in; the decisions of r1 and r3 in the same batch win at write time.
    assert [(r["request_id"], r["source"]) for r in records] == [
        ("r1", "authz"), ("r2", "envoy"), ("r1", "envoy"), ("r3", "authz"), ("r4", "envoy"), ("r3", "envoy"),
    ]
    assert [o["request_id"] for o in outcomes] == ["r2", "r1", "r4", "r3"]


def test_rows_carry_exactly_the_chain_fields_and_can_be_linked() -> None:
    records, outcomes = split_lines(decision(), envoy_outcome(), outcome())
    for row in records:
        assert set(row) == RECORD_COLUMNS
        chain.link(chain.REQUESTS, chain.GENESIS, row | {"seq": 1})
    for row in outcomes:
        assert set(row) == OUTCOME_COLUMNS | {"spend"}  # the rollup's dimensions ride along, unchained
        chain.link(chain.OUTCOMES, chain.GENESIS, row | {"seq": 1})


def test_an_empty_batch_splits_into_nothing() -> None:
    assert split_lines() == ([], [])


# -- what a batch refuses -------------------------------------------------------------------------


def rejects(payload: Any) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        IngestBatch.model_validate(payload)
    return caught.value


@pytest.mark.parametrize("line", [decision(secret="x"), outcome(body="{...}")], ids=["decision", "outcome"])
def test_unknown_fields_in_a_line_are_refused(line: dict[str, Any]) -> None:
    assert rejects({"records": [line]}).errors()[0]["type"] == "extra_forbidden"


def test_unknown_fields_beside_the_records_are_refused() -> None:
    assert rejects({"records": [decision()], "source": "authz-0"}).errors()[0]["type"] == "extra_forbidden"


@pytest.mark.parametrize("kind", ["event", "Decision", "", None])
def test_unknown_kinds_are_refused(kind: str | None) -> None:
    assert rejects({"records": [decision(kind=kind)]}).errors()[0]["type"].startswith("union_tag")


def test_a_line_without_a_kind_is_refused() -> None:
    line = decision()
    del line["kind"]
    assert rejects({"records": [line]}).errors()[0]["type"] == "union_tag_not_found"


@pytest.mark.parametrize("line", [decision(at="2025-06-15T15:06:40.123456"), outcome(at="2025-06-15T15:06:40")],
                         ids=["decision", "outcome"])
def test_naive_timestamps_are_refused(line: dict[str, Any]) -> None:
    assert rejects({"records": [line]}).errors()[0]["type"] == "timezone_aware"


def test_timestamps_in_any_zone_are_accepted_as_the_same_instant() -> None:
    [row], _ = split_lines(decision(at="2025-06-15T17:06:40.123456+02:00"))
    assert row["at"] == datetime(2025, 6, 15, 15, 6, 40, 123456, tzinfo=UTC)


def test_at_most_20000_records_per_batch() -> None:
    lines = [decision(f"req-{n}") for n in range(20_000)]
    assert len(batch(*lines).records) == 20_000
    assert rejects({"records": [*lines, decision("one-too-many")]}).errors()[0]["type"] == "too_long"


@pytest.mark.parametrize(
    "line",
    [
        decision(request_id=""),
        decision(decision=""),
        decision(status=99),
        decision(token_id="not-a-uuid"),
        outcome(status=600),
        outcome(upstream_status=0),
        outcome(prompt_tokens=-1),
        outcome(decided=None),
    ],
    ids=["empty-id", "empty-decision", "status-99", "bad-uuid", "status-600",
         "upstream-0", "negative-tokens", "decided-null"],
)
def test_malformed_lines_are_refused(line: dict[str, Any]) -> None:
    rejects({"records": [line]})


# -- what a client chose is stored, not refused ------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "field", "stored"),
    [
        (decision(request_id="r" * 129), "request_id", "r" * 128),
        (decision(model="m" * 513), "model", "m" * 512),
        (decision(model="m" * 1_000_000), "model", "m" * 512),
        (decision(model="gpt-4o-mini\u0000x"), "model", "gpt-4o-mini\ufffdx"),
        (decision(route="/openai/v1/\ud800"), "route", "/openai/v1/\ufffd"),
        (outcome(details="x\u0000" * 400), "details", ("x\ufffd" * 400)[:512]),
    ],
    ids=["long-id", "long-model", "1MB-model", "nul", "lone-surrogate", "long-nul-details"],
)
def test_a_value_postgres_cannot_hold_is_made_storable_and_the_line_marked(line: dict[str, Any], field: str,
                                                                              stored: str) -> None:
    parsed = batch(line).records[0]
    assert getattr(parsed, field) == stored
    assert parsed.sanitized is True
    stored_text = getattr(parsed, field)
    assert "\x00" not in stored_text
    stored_text.encode("utf-8")  # storable: no lone surrogate left


def test_an_untouched_line_is_not_marked() -> None:
    assert batch(decision(), outcome()).records[0].sanitized is None


def test_a_body_the_strict_reader_refuses_for_its_characters_is_read_again_and_kept() -> None:
    good = json.dumps({"records": [decision(request_id="good")]})
    # Invalid UTF-8 and an escaped lone surrogate: the strict JSON reader refuses the whole body.
    for body in (good.replace("ada@example.com", "ada@exa\\ud800mple.com").encode(),
                 good.encode().replace(b"ada@example.com", b"ada@exa\xffmple.com")):
        with pytest.raises(ValidationError):
            IngestBatch.model_validate_json(body)
        [line] = parse_body(body).records
        assert line.request_id == "good"
        assert "\ufffd" in (line.user_email or "")
