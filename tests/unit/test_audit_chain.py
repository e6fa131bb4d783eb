"""The audit hash chains: what a link depends on, and what it must not depend on."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from controlplane.audit import chain
from controlplane.audit.chain import EVENTS, FIELDS, GENESIS, OUTCOMES, REQUESTS, canonical, link

AT = datetime(2025, 6, 15, 15, 6, 40, 123456, tzinfo=UTC)
OTHER_HASH = hashlib.sha256(b"the record before").digest()


# -- factories: one realistic record per chain, every field set -----------------------------------


def event(**overrides: Any) -> dict[str, Any]:
    return {
        "seq": 41,
        "at": AT,
        "actor": "admin@example.com",
        "mechanism": "api",
        "action": "token.revoke",
        "target_type": "token",
        "target_id": "0b7e5c1a-3f2d-4e6b-8a9c-1d2e3f4a5b6c",
        "before": {"revoked": False, "name": "laptop"},
        "after": {"revoked": True, "name": "laptop"},
    } | overrides


def request_record(**overrides: Any) -> dict[str, Any]:
    return {
        "seq": 1207,
        "at": AT,
        "request_id": "8d3c2f7e-5b1a-4c9e-9f0d-2a6b7c8d9e0f",
        "source": "authz",
        "token_id": uuid.UUID("0b7e5c1a-3f2d-4e6b-8a9c-1d2e3f4a5b6c"),
        "user_id": uuid.UUID("5f4e3d2c-1b0a-4987-8765-43210fedcba9"),
        "user_email": "ada@example.com",
        "team": "research",
        "environment": "production",
        "provider": "openai",
        "method": "POST",
        "route": "/openai/v1/chat/completions",
        "model": "gpt-4o-mini",
        "decision": "allowed",
        "status": 200,
    } | overrides


def outcome(**overrides: Any) -> dict[str, Any]:
    return {
        "seq": 1190,
        "at": AT,
        "request_id": "8d3c2f7e-5b1a-4c9e-9f0d-2a6b7c8d9e0f",
        "status": 200,
        "upstream_status": 200,
        "response_flags": "upstream_retry_limit_exceeded",
        "details": "via_upstream",
        "duration_ms": 1234,
        "upstream_ms": 1197,
        "bytes_in": 1843,
        "bytes_out": 2201,
        "prompt_tokens": 1234,
        "completion_tokens": 56,
    } | overrides


RECORDS = {EVENTS: event, REQUESTS: request_record, OUTCOMES: outcome}


def changed(value: Any) -> Any:
    """A different value of the same kind."""
    if isinstance(value, datetime):
        return value + timedelta(microseconds=1)
    if isinstance(value, uuid.UUID):
        return uuid.UUID(int=value.int ^ 1)
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, dict):
        return value | {"revoked": not value["revoked"]}
    raise AssertionError(f"no change defined for {value!r}")


def every_field() -> list[tuple[str, str]]:
    return [(name, column) for name, columns in FIELDS.items() for column in columns]


# -- what a link depends on -----------------------------------------------------------------------


def test_every_chain_has_a_record_factory_covering_exactly_its_fields() -> None:
    assert set(RECORDS) == set(FIELDS)
    for name, make in RECORDS.items():
        assert set(make()) == set(FIELDS[name]), name


@pytest.mark.parametrize(("name", "column"), every_field())
def test_changing_any_field_changes_the_link(name: str, column: str) -> None:
    record = RECORDS[name]()
    assert link(name, GENESIS, record) != link(name, GENESIS, record | {column: changed(record[column])})


@pytest.mark.parametrize(("name", "column"), [(n, c) for n, c in every_field() if c != "seq"])
def test_a_value_and_null_link_differently(name: str, column: str) -> None:
    record = RECORDS[name]()
    assert link(name, GENESIS, record) != link(name, GENESIS, record | {column: None})


@pytest.mark.parametrize("name", list(FIELDS))
def test_the_link_depends_on_the_previous_hash(name: str) -> None:
    record = RECORDS[name]()
    assert link(name, GENESIS, record) != link(name, OTHER_HASH, record)


def test_the_link_depends_on_the_chain_name(monkeypatch: pytest.MonkeyPatch) -> None:
    # A second chain with the very same fields: only the name differs.
    monkeypatch.setitem(chain.FIELDS, "request_records_copy", FIELDS[REQUESTS])
    record = request_record()
    assert link(REQUESTS, GENESIS, record) != link("request_records_copy", GENESIS, record)


def test_values_cannot_slide_between_fields() -> None:
    record = request_record(team="production", environment="research")
    assert link(REQUESTS, GENESIS, record) != link(REQUESTS, GENESIS, request_record())


def test_the_link_is_sha256_of_the_previous_hash_and_the_canonical_record() -> None:
    record = outcome()
    digest = link(OUTCOMES, OTHER_HASH, record)
    assert len(digest) == 32
    assert digest == hashlib.sha256(OTHER_HASH + canonical(OUTCOMES, record)).digest()


def test_each_hash_seals_everything_before_it() -> None:
    first, second = outcome(seq=1), outcome(seq=2, request_id="another")
    head = link(OUTCOMES, link(OUTCOMES, GENESIS, first), second)
    tampered = link(OUTCOMES, link(OUTCOMES, GENESIS, first | {"bytes_out": 1}), second)
    assert head != tampered


def test_genesis_is_32_zero_bytes() -> None:
    assert GENESIS == bytes(32)


def test_fields_outside_the_chain_do_not_count() -> None:
    assert link(REQUESTS, GENESIS, request_record()) == link(REQUESTS, GENESIS, request_record(stored_at=AT))


# -- what a link must not depend on ---------------------------------------------------------------


@pytest.mark.parametrize(
    "same_instant",
    [
        AT.astimezone(timezone(timedelta(hours=2))),
        AT.astimezone(timezone(timedelta(hours=-7, minutes=-30))),
        AT.astimezone(timezone(timedelta(hours=14))),  # another calendar day
    ],
    ids=str,
)
def test_the_time_zone_of_a_timestamp_does_not_matter(same_instant: datetime) -> None:
    assert same_instant == AT
    for name, make in RECORDS.items():
        assert link(name, GENESIS, make(at=same_instant)) == link(name, GENESIS, make()), name


def test_a_uuid_and_its_text_link_the_same() -> None:
    record = request_record()
    as_text = record | {"token_id": str(record["token_id"]), "user_id": str(record["user_id"])}
    assert link(REQUESTS, GENESIS, as_text) == link(REQUESTS, GENESIS, record)


def test_key_order_inside_json_fields_does_not_matter() -> None:
    nested = {"revoked": True, "name": "laptop", "limits": {"rpm": 60, "models": ["a", "b"]}}
    reordered = json.loads(json.dumps({"limits": {"models": ["a", "b"], "rpm": 60}, "name": "laptop", "revoked": True}))
    assert list(reordered) != list(nested)
    assert link(EVENTS, GENESIS, event(after=reordered)) == link(EVENTS, GENESIS, event(after=nested))


def test_the_order_of_the_record_mapping_does_not_matter() -> None:
    record = outcome()
    backwards = dict(reversed(list(record.items())))
    assert link(OUTCOMES, GENESIS, backwards) == link(OUTCOMES, GENESIS, record)


def test_the_previous_hash_may_come_back_from_the_database_as_a_memoryview() -> None:
    record = event()
    assert link(EVENTS, memoryview(OTHER_HASH), record) == link(EVENTS, OTHER_HASH, record)
