"""Decisions end to end: canned CheckRequest -> request.parse -> Pipeline.decide -> response.build.

One scenario per :class:`Outcome`, then the ordering guarantees (authentication before anything
looks at the body, the checksum before any lookup) and the usage side effect; then issue 14's additions:
endpoint families, models from paths and forms, uploads, routing to upstreams, MCP, and model listings.
"""

from __future__ import annotations

import asyncio
import dataclasses
import fnmatch
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import genai_prices
import pytest
from envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse

from authz import request as request_codec
from authz import response as response_codec
from authz.audit.emitter import AuditEmitter
from authz.audit.outcome_log import InFlight
from authz.cache import NO_PROFILE, ModelCatalog, ProfileCatalog, TokenCache, TokenRecord, revoked_key
from authz.limits import Budget, Policy, RateLimit
from authz.mcp import NOT_AUTHORISED, TOOL_NOT_ALLOWED, ToolCatalog
from authz.meter import Meter
from authz.outcomes import Outcome
from authz.pipeline import Decision, Limits, Pipeline
from authz.prices import Override, PriceTable
from authz.routes import DEFAULT_FAMILIES, Family
from authz.servicer import AuthorizationServicer
from authz.tokens import generate_token, hash_token
from authz.upstreams import ROUTE_HEADER, Api, Upstreams
from tests.unit import checkrequests as cr

HASH_KEY = bytes.fromhex("6b" * 32)
NOW = 1_750_000_000.0
CATALOG = ("gpt-4o-mini", "claude-3-5-haiku-*")


class RecordingCache(TokenCache):
    """A real cache that remembers every lookup, and every question to its revoked set."""

    __slots__ = ("lookups", "revoked_lookups")

    def __init__(self) -> None:
        super().__init__()
        self.lookups: list[str] = []
        self.revoked_lookups: list[str] = []

    def get(self, token_hash: str) -> TokenRecord | None:
        self.lookups.append(token_hash)
        return super().get(token_hash)

    def is_revoked(self, token_hash: str) -> bool:
        self.revoked_lookups.append(token_hash)
        return super().is_revoked(token_hash)


@dataclass
class RecordingSink:
    touches: list[tuple[str, float]] = field(default_factory=list)

    def touch(self, token_id: str, at: float) -> None:
        self.touches.append((token_id, at))


@dataclass
class Result:
    decision: Decision
    response: CheckResponse
    decision_request_id: str = ""

    @property
    def outcome(self) -> Outcome:
        return self.decision.outcome

    @property
    def token_id(self) -> str | None:
        return self.decision.record.token_id if self.decision.record else None

    @property
    def status(self) -> int:
        if self.response.HasField("ok_response"):
            return 200
        return self.response.denied_response.status.code

    @property
    def body(self) -> dict:
        return json.loads(self.response.denied_response.body)

    @property
    def error_code(self) -> str:
        """The machine code of a denial, where each API's error shape puts it."""
        document = self.body
        if self.decision.api is Api.MCP:
            return document["error"]["data"]["code"]
        if self.decision.api is Api.GEMINI:
            return document["error"]["details"][0]["reason"]
        if self.decision.api is Api.BEDROCK:
            return document["code"]
        return document["error"]["code"]

    @property
    def headers(self) -> dict[str, str]:
        """The headers added to the request going upstream (allowed), or to the client's answer (denied)."""
        if self.response.HasField("ok_response"):
            return {option.header.key: option.header.value for option in self.response.ok_response.headers}
        return {option.header.key: option.header.value for option in self.response.denied_response.headers}

    @property
    def metadata(self) -> dict:
        return dict(self.response.dynamic_metadata.items())


class Gateway:
    """authz's decision path with an in-memory cache, a recording usage sink and a settable clock."""

    def __init__(self) -> None:
        self.now = NOW
        self.cache = RecordingCache()
        self.usage = RecordingSink()
        self.upstreams = Upstreams.parse(None)
        self.pipeline = Pipeline(cache=self.cache, hash_key=HASH_KEY, usage=self.usage, clock=self.clock)
        self.records: dict[str, TokenRecord] = {}
        self._ids = 0

    def serve(self, *entries: dict) -> None:
        """Configure the gateway's upstreams (``KEYWARD_UPSTREAMS``) besides the built-in two."""
        self.upstreams = Upstreams.parse(json.dumps(list(entries)))
        self.pipeline = Pipeline(cache=self.cache, hash_key=HASH_KEY, usage=self.usage, clock=self.clock,
                                 limits=self.pipeline.limits, upstreams=self.upstreams)

    def clock(self) -> float:
        return self.now

    def mint(self, models: tuple[str, ...] = CATALOG, *, hash_key: bytes = HASH_KEY, **fields: object) -> str:
        """Put a fresh token into the cache the way a snapshot would, and return its secret."""
        self._ids += 1
        token = generate_token()
        values: dict = {
            "token_id": f"tok-{self._ids}",
            "user_id": f"user-{self._ids}",
            "user_email": f"dev{self._ids}@example.com",
            "team": "platform",
            "environment": "dev",
            "expires_at": None,
            "owner_active": True,
            **fields,
        }
        record = TokenRecord(token_hash=hash_token(token, hash_key), catalog=ModelCatalog(models), **values)
        self.records[record.token_id] = record
        self.cache.upsert(record)
        return token

    def revoke(self, token_id: str) -> None:
        """What the listener does on the NOTIFY for a revocation: upsert the re-read row, now revoked."""
        self.records[token_id] = dataclasses.replace(self.records[token_id], revoked=True)
        self.cache.upsert(self.records[token_id])

    def restart(self) -> None:
        """What a restarted authz holds after its first snapshot (see ``authz.snapshot.load_snapshot``):
        a new cache with the live tokens' records and the revoked tokens' keys, nothing else."""
        self.cache = RecordingCache()
        self.cache.replace_all([r for r in self.records.values() if not r.revoked],
                               {revoked_key(r.token_hash) for r in self.records.values() if r.revoked})
        self.pipeline = Pipeline(cache=self.cache, hash_key=HASH_KEY, usage=self.usage, clock=self.clock,
                                 upstreams=self.upstreams)

    def check(self, check: CheckRequest) -> Result:
        gateway_request = request_codec.parse(check)
        decision = self.pipeline.decide(gateway_request)
        return Result(decision, response_codec.build(decision, gateway_request.request_id, self.upstreams),
                      gateway_request.request_id)


@pytest.fixture
def gw() -> Gateway:
    return Gateway()


def assert_denied(result: Result, outcome: Outcome, status: int) -> None:
    assert result.outcome is outcome
    assert result.status == status
    assert result.error_code == outcome.value


# -- one scenario per outcome ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("canned", "model"),
    [
        pytest.param(cr.openai_chat, "gpt-4o-mini", id="openai-chat"),
        pytest.param(cr.anthropic_messages, "claude-3-5-haiku-latest", id="anthropic-messages"),
        pytest.param(cr.openai_model, "gpt-4o-mini", id="openai-model-in-path"),
        pytest.param(cr.openai_models, None, id="openai-list-models"),
        pytest.param(cr.anthropic_models, None, id="anthropic-list-models"),
    ],
)
def test_allowed(gw: Gateway, canned, model: str | None) -> None:
    token = gw.mint(token_id="tok-ok")
    result = gw.check(canned(token))
    # A listing is let through and answered by the gateway itself (see test_answered).
    assert result.outcome is (Outcome.ANSWERED if model is None else Outcome.ALLOWED)
    assert result.status == 200
    assert result.token_id == "tok-ok"
    assert result.decision.model == model


def test_allowed_without_raw_headers(gw: Gateway) -> None:
    """Older Envoy configs send the plain ``headers`` map and a string ``body``."""
    token = gw.mint()
    assert gw.check(cr.openai_chat(token, raw_headers=False)).outcome is Outcome.ALLOWED
    assert gw.check(cr.openai_chat(token, "gpt-4o", raw_headers=False)).outcome is Outcome.MODEL_NOT_ALLOWED


@pytest.mark.parametrize(
    "canned",
    [
        pytest.param(cr.no_credential, id="no-header"),
        pytest.param(lambda: cr.with_authorization(b"Bearer "), id="empty-bearer"),
        pytest.param(lambda: cr.with_authorization(b"Bearer"), id="bare-bearer-scheme"),
        pytest.param(lambda: cr.with_authorization(b"   "), id="blank-authorization"),
        pytest.param(cr.empty_x_api_key, id="empty-x-api-key"),
    ],
)
def test_token_missing(gw: Gateway, canned) -> None:
    assert_denied(gw.check(canned()), Outcome.TOKEN_MISSING, 401)


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param(lambda token: f"Bearer {cr.mistyped(token)}", id="bad-checksum"),
        pytest.param(lambda token: f"Bearer {token[:-1]}", id="truncated"),
        pytest.param(lambda token: b"Bearer \xff\xfe", id="non-utf8"),
        pytest.param(lambda token: "Bearer " + token.encode().hex()[:43], id="hex-garbage"),
        pytest.param(lambda token: "Bearer ghp_" + token[7:] + "abc", id="github-token"),
        pytest.param(lambda token: "Bearer sk-proj-" + token[8:], id="openai-key"),
        pytest.param(lambda token: f"Basic {token}", id="other-scheme"),
        pytest.param(cr.mistyped, id="typo-without-scheme"),
    ],
)
def test_token_malformed(gw: Gateway, authorization) -> None:
    token = gw.mint()
    assert_denied(gw.check(cr.with_authorization(authorization(token))), Outcome.TOKEN_MALFORMED, 401)


def test_token_unknown(gw: Gateway) -> None:
    gw.mint()
    stranger = generate_token()  # well formed, never stored
    assert_denied(gw.check(cr.openai_chat(stranger)), Outcome.TOKEN_UNKNOWN, 401)


def test_token_hashed_under_another_key_is_unknown(gw: Gateway) -> None:
    token = gw.mint(hash_key=bytes(32))
    assert_denied(gw.check(cr.openai_chat(token)), Outcome.TOKEN_UNKNOWN, 401)


def test_token_revoked(gw: Gateway) -> None:
    token = gw.mint(token_id="tok-r")
    assert gw.check(cr.openai_chat(token)).outcome is Outcome.ALLOWED
    gw.revoke("tok-r")
    assert_denied(gw.check(cr.openai_chat(token)), Outcome.TOKEN_REVOKED, 401)


def test_a_revoked_token_stays_revoked_after_a_restart(gw: Gateway) -> None:
    token, live = gw.mint(token_id="tok-r"), gw.mint(token_id="tok-live")
    gw.revoke("tok-r")
    gw.restart()
    assert gw.cache.get(hash_token(token, HASH_KEY)) is None  # no record: only its key is kept
    result = gw.check(cr.openai_chat(token))
    assert_denied(result, Outcome.TOKEN_REVOKED, 401)
    assert result.token_id is None
    assert gw.check(cr.openai_chat(live)).outcome is Outcome.ALLOWED
    assert_denied(gw.check(cr.openai_chat(generate_token())), Outcome.TOKEN_UNKNOWN, 401)


def test_the_revoked_set_is_asked_only_on_a_miss(gw: Gateway) -> None:
    token = gw.mint()
    gw.restart()
    gw.check(cr.openai_chat(token))
    assert gw.cache.revoked_lookups == []
    stranger = generate_token()
    gw.check(cr.openai_chat(stranger))
    assert gw.cache.revoked_lookups == [hash_token(stranger, HASH_KEY)]


@pytest.mark.parametrize("late_by", [0.0, 0.001, 86_400.0])
def test_token_expired(gw: Gateway, late_by: float) -> None:
    token = gw.mint(expires_at=NOW + 60)
    gw.now = NOW + 60 - 0.001
    assert gw.check(cr.openai_chat(token)).outcome is Outcome.ALLOWED
    gw.now = NOW + 60 + late_by
    assert_denied(gw.check(cr.openai_chat(token)), Outcome.TOKEN_EXPIRED, 401)


def test_owner_disabled(gw: Gateway) -> None:
    token = gw.mint(owner_active=False)
    assert_denied(gw.check(cr.anthropic_messages(token)), Outcome.OWNER_DISABLED, 401)


@pytest.mark.parametrize(
    "canned", [cr.openai_fine_tuning_job, cr.delete_model, cr.unprefixed_chat, cr.anthropic_legacy_complete]
)
def test_route_unknown(gw: Gateway, canned) -> None:
    token = gw.mint()
    assert_denied(gw.check(canned(token)), Outcome.ROUTE_UNKNOWN, 404)


def test_body_too_large(gw: Gateway) -> None:
    token = gw.mint()
    assert_denied(gw.check(cr.truncated_chat(token)), Outcome.BODY_TOO_LARGE, 413)


@pytest.mark.parametrize("value", ["false", ""])
def test_only_partial_body_true_means_too_large(gw: Gateway, value: str) -> None:
    token = gw.mint()
    check = cr.check_request(
        "POST", "/openai/v1/chat/completions",
        {"authorization": f"Bearer {token}", "content-type": "application/json", cr.PARTIAL_BODY_HEADER: value},
        cr.chat_body(),
    )
    assert gw.check(check).outcome is Outcome.ALLOWED


@pytest.mark.parametrize(
    "canned",
    [
        pytest.param(cr.garbage_body, id="garbage"),
        pytest.param(cr.array_body, id="json-array"),
        pytest.param(cr.form_encoded_body, id="form-content-type"),
        pytest.param(lambda token: cr.chat_with_body(token, b'"gpt-4o-mini"'), id="json-string"),
        pytest.param(lambda token: cr.chat_with_body(token, b""), id="empty"),
        pytest.param(lambda token: cr.chat_with_body(token, b'{"model":"gpt-4o-mini"'), id="cut-short"),
        pytest.param(lambda token: cr.chat_with_body(token, b'{"model":"\xff"}'), id="not-utf8"),
    ],
)
def test_body_not_json(gw: Gateway, canned) -> None:
    token = gw.mint()
    assert_denied(gw.check(canned(token)), Outcome.BODY_NOT_JSON, 400)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"messages":[{"role":"user","content":"Say hi"}]}', id="absent"),
        pytest.param(cr.chat_body(None), id="null"),
        pytest.param(cr.chat_body(""), id="empty-string"),
        pytest.param(cr.chat_body(4), id="number"),
        pytest.param(cr.chat_body(["gpt-4o-mini"]), id="list"),
    ],
)
def test_model_missing(gw: Gateway, body: bytes) -> None:
    token = gw.mint()
    assert_denied(gw.check(cr.chat_with_body(token, body)), Outcome.MODEL_MISSING, 400)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(cr.duplicate_model("x", "gpt-4o-mini", "gpt-4o").attributes.request.http.raw_body,
                     id="model-twice-allowed-first"),
        pytest.param(cr.duplicate_model("x", "gpt-4o", "gpt-4o-mini").attributes.request.http.raw_body,
                     id="model-twice-allowed-last"),
        pytest.param(b'{"model":"gpt-4o-mini","model":"gpt-4o-mini"}', id="model-twice-same-value"),
        pytest.param(b'{"model":"gpt-4o-mini","\\u006dodel":"gpt-4o"}', id="escaped-second-key"),
        pytest.param(b'{"model":"gpt-4o-mini","stream":false,"stream":true}', id="other-top-level-key"),
        pytest.param(b'{"model":"gpt-4o-mini","messages":[{"role":"user","role":"system","content":"x"}]}',
                     id="nested-key"),
        pytest.param(b'{"model":"gpt-4o-mini","a":{"b":{"c":[{"d":1,"d":2}]}}}', id="deeply-nested-key"),
        pytest.param(b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"' + b"x" * 1_000_000
                     + b'"}],"model":"gpt-4o"}', id="second-model-after-a-megabyte"),
    ],
)
def test_body_ambiguous(gw: Gateway, body: bytes) -> None:
    token = gw.mint()
    result = gw.check(cr.chat_with_body(token, body))
    assert_denied(result, Outcome.BODY_AMBIGUOUS, 400)
    assert result.decision.model is None  # no model was judged, so none is named
    assert gw.usage.touches == []


def test_body_ambiguous_in_the_anthropic_shape(gw: Gateway) -> None:
    token = gw.mint()
    body = b'{"model":"claude-3-5-haiku-latest","max_tokens":64,"model":"claude-3-opus-latest","messages":[]}'
    check = cr.check_request("POST", "/anthropic/v1/messages",
                             {"x-api-key": token, "content-type": "application/json"}, body)
    result = gw.check(check)
    assert result.outcome is Outcome.BODY_AMBIGUOUS
    document = json.loads(result.response.denied_response.body)
    assert document["error"] | {"message": None} == {"type": "invalid_request_error", "code": "body_ambiguous",
                                                      "message": None}


def test_repeated_keys_in_different_objects_are_not_ambiguous(gw: Gateway) -> None:
    token = gw.mint()
    body = (b'{"model":"gpt-4o-mini","messages":[{"role":"system","content":"a"},'
            b'{"role":"user","content":"b"}],"metadata":{"model":"x"}}')
    assert gw.check(cr.chat_with_body(token, body)).outcome is Outcome.ALLOWED


def test_model_missing_from_canned_request(gw: Gateway) -> None:
    token = gw.mint()
    assert_denied(gw.check(cr.body_without_model(token)), Outcome.MODEL_MISSING, 400)


@pytest.mark.parametrize(
    ("canned", "model"),
    [
        pytest.param(lambda token: cr.openai_chat(token, "gpt-4o"), "gpt-4o", id="body"),
        pytest.param(lambda token: cr.anthropic_messages(token, "claude-3-opus-latest"),
                     "claude-3-opus-latest", id="anthropic-body"),
        pytest.param(lambda token: cr.openai_model(token, "o1-pro"), "o1-pro", id="path"),
    ],
)
def test_model_not_allowed(gw: Gateway, canned, model: str) -> None:
    token = gw.mint()
    result = gw.check(canned(token))
    assert_denied(result, Outcome.MODEL_NOT_ALLOWED, 403)
    assert result.decision.model == model


# -- team policy: membership, environments, the profile's catalog --------------------------------

PRODUCTION = ProfileCatalog(
    [("openai", "gpt-4o*", None), ("openai", "o3*", ("prod",)), ("anthropic", "claude-*", None)],
    ["dev", "staging", "prod"],
)
#: Every model of every API, with the default endpoint families.
ANY = ProfileCatalog([("*", "*", None)], ["dev", "prod"])
#: Every model, and the MCP tools: ``docs``'s search tools and all of ``github``'s.
TOOLS = ProfileCatalog([("*", "*", None)], ["dev"], families=DEFAULT_FAMILIES | {Family.TOOLS},
                       tools=ToolCatalog([("docs", "search_*"), ("github", "*")]))


def test_not_a_member(gw: Gateway) -> None:
    token = gw.mint(member=False, profile=PRODUCTION)
    assert_denied(gw.check(cr.openai_chat(token)), Outcome.NOT_A_MEMBER, 403)


def test_environment_not_allowed(gw: Gateway) -> None:
    dev = gw.mint(profile=PRODUCTION, environment="dev", models=("*",))
    result = gw.check(cr.openai_chat(dev, "o3-mini"))
    assert_denied(result, Outcome.ENVIRONMENT_NOT_ALLOWED, 403)
    assert "prod" in (result.decision.detail or "")
    prod = gw.mint(profile=PRODUCTION, environment="prod", models=("*",))
    assert gw.check(cr.openai_chat(prod, "o3-mini")).outcome is Outcome.ALLOWED


def test_a_token_environment_the_profile_dropped_is_refused_everywhere(gw: Gateway) -> None:
    ci = gw.mint(profile=PRODUCTION, environment="ci", models=("*",))
    assert_denied(gw.check(cr.openai_models(ci)), Outcome.ENVIRONMENT_NOT_ALLOWED, 403)


def test_the_profile_bounds_the_token_and_the_token_narrows_the_profile(gw: Gateway) -> None:
    wide_token = gw.mint(profile=PRODUCTION, models=("*",))
    assert gw.check(cr.openai_chat(wide_token, "gpt-4o-mini")).outcome is Outcome.ALLOWED
    assert_denied(gw.check(cr.openai_chat(wide_token, "gpt-3.5-turbo")), Outcome.MODEL_NOT_ALLOWED, 403)
    narrow_token = gw.mint(profile=PRODUCTION, models=("gpt-4o-mini",))
    assert_denied(gw.check(cr.openai_chat(narrow_token, "gpt-4o")), Outcome.MODEL_NOT_ALLOWED, 403)


def test_a_profile_that_allows_no_environment_allows_nothing(gw: Gateway) -> None:
    token = gw.mint(profile=ProfileCatalog([], []), models=("*",))
    assert_denied(gw.check(cr.openai_chat(token)), Outcome.ENVIRONMENT_NOT_ALLOWED, 403)


@pytest.mark.parametrize("canned", [cr.openai_chat, cr.anthropic_messages, cr.openai_models])
def test_team_has_no_profile(gw: Gateway, canned) -> None:
    token = gw.mint(profile=NO_PROFILE, models=("*",))
    result = gw.check(canned(token))
    assert_denied(result, Outcome.TEAM_HAS_NO_PROFILE, 403)
    assert "no access profile" in result.response.denied_response.body


def test_membership_is_judged_before_the_missing_profile(gw: Gateway) -> None:
    token = gw.mint(profile=NO_PROFILE, member=False, models=("*",))
    assert_denied(gw.check(cr.openai_chat(token)), Outcome.NOT_A_MEMBER, 403)


class FullSpool:
    """A spool on a full disk: every append fails, as ENOSPC or EFBIG would."""

    def __init__(self) -> None:
        self.attempts = 0

    def append(self, record: dict) -> None:
        self.attempts += 1
        raise OSError(28, "No space left on device")

    def append_many(self, records: Iterable[dict]) -> None:
        self.attempts += 1
        raise OSError(28, "No space left on device")


def test_audit_unavailable(gw: Gateway) -> None:
    token = gw.mint()
    ready = asyncio.Event()
    ready.set()
    spool = FullSpool()
    in_flight = InFlight(1.0)
    servicer = AuthorizationServicer(gw.pipeline, ready, AuditEmitter(spool), in_flight)
    request = cr.openai_chat(token)
    response = servicer.check(request, context=None)
    assert spool.attempts == 1
    assert request_codec.parse(request).request_id not in in_flight  # the outcome need not wait for it
    assert response.denied_response.status.code == 503
    assert response.status.code == 14  # UNAVAILABLE
    body = json.loads(response.denied_response.body)
    assert body["error"]["code"] == "audit_unavailable"
    assert token.encode() not in response.SerializeToString()


def test_policy_stale(gw: Gateway) -> None:
    # The listener has not heard from Postgres for longer than the bound: a revocation may be
    # missing, so nothing is allowed; what is refused stays refused for its own reason.
    live, revoked = gw.mint(), gw.mint()
    gw.revoke("tok-2")
    gw.cache.fresh_until = time.monotonic() - 0.001
    stale = gw.check(cr.openai_chat(live))
    assert stale.outcome is Outcome.POLICY_STALE and stale.status == 503
    assert stale.error_code == "policy_stale" and stale.token_id == "tok-1"  # still attributed
    assert gw.usage.touches == []  # a refused request is no use of the token
    assert gw.check(cr.openai_chat(revoked)).outcome is Outcome.TOKEN_REVOKED
    assert gw.check(cr.openai_chat(live, "o1-pro")).outcome is Outcome.MODEL_NOT_ALLOWED
    gw.cache.fresh_until = time.monotonic() + 10  # the next heartbeat
    assert gw.check(cr.openai_chat(live)).outcome is Outcome.ALLOWED


def _limited(gw: Gateway, policy: Policy) -> Limits:
    limits = Limits(Meter(), policy)
    gw.pipeline = Pipeline(cache=gw.cache, hash_key=HASH_KEY, usage=gw.usage, clock=gw.clock, limits=limits,
                           upstreams=gw.upstreams)
    return limits


#: gpt-4o-mini at a price that makes a few requests cost dollars.
PRICEY = PriceTable([Override("test", "openai", "gpt-4o-mini", Decimal(1000), None, Decimal(10_000), 0.0)])


def test_budget_exceeded(gw: Gateway) -> None:
    token = gw.mint(team_id="team-1")
    body = json.dumps({"model": "gpt-4o-mini", "messages": [], "max_tokens": 10}).encode()
    estimate = len(body) * 0.001 + 10 * 0.01
    limits = _limited(gw, Policy({("team", "team-1"): Budget(1.0, "month", "hard")}, {}, PRICEY))
    admitted = []
    while (result := gw.check(cr.chat_with_body(token, body))).outcome is Outcome.ALLOWED:
        admitted.append(result)
    # Admitted while what is reserved stays within the budget; never one more.
    assert len(admitted) == int(1.0 // estimate) > 0
    assert result.outcome is Outcome.BUDGET_EXCEEDED and result.status == 429
    error = json.loads(result.response.denied_response.body)["error"]
    assert (error["code"], error["type"]) == ("budget_exceeded", "insufficient_quota")
    assert error["limit"]["scope"] == "team" and error["limit"]["id"] == "team-1"
    assert error["limit"]["period_end"] == "2025-07-01T00:00:00+00:00"  # NOW is in June 2025
    headers = {h.header.key: h.header.value for h in result.response.denied_response.headers}
    assert headers["x-should-retry"] == "false" and int(headers["retry-after"]) > 0
    # What a request really cost replaces its reservation: the cheap outcomes make room again.
    for done in admitted:
        limits.meter.settle(done.decision_request_id, (("team", "team-1"),), 0.01, 15, NOW)
    assert gw.check(cr.chat_with_body(token, body)).outcome is Outcome.ALLOWED
    # alert only: announced, never refused.
    _limited(gw, Policy({("team", "team-1"): Budget(0.000001, "month", "alert")}, {}, PRICEY))
    assert gw.check(cr.chat_with_body(token, body)).outcome is Outcome.ALLOWED


def test_rate_limit_exceeded(gw: Gateway) -> None:
    token = gw.mint()
    _limited(gw, Policy({}, {("token", "tok-1"): RateLimit(rpm=2)}))
    first, second, third = (gw.check(cr.openai_chat(token)) for _ in range(3))
    assert (first.outcome, second.outcome) == (Outcome.ALLOWED, Outcome.ALLOWED)
    added = {h.header.key: h.header.value for h in second.response.ok_response.response_headers_to_add}
    assert added["x-ratelimit-limit-requests"] == "2" and added["x-ratelimit-remaining-requests"] == "0"
    assert third.outcome is Outcome.RATE_LIMITED and third.status == 429
    headers = {h.header.key: h.header.value for h in third.response.denied_response.headers}
    assert "x-should-retry" not in headers and int(headers["retry-after"]) >= 1
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert json.loads(third.response.denied_response.body)["error"]["code"] == "rate_limit_exceeded"
    assert gw.usage.touches == [("tok-1", NOW), ("tok-1", NOW)]  # the refused one is no use of the token
    gw.now += 120  # a fresh window
    assert gw.check(cr.openai_chat(token)).outcome is Outcome.ALLOWED


def test_every_outcome_has_a_scenario() -> None:
    scenario_tests = {name for name in globals() if name.startswith("test_")}
    missing = {o for o in Outcome if f"test_{o.value}" not in scenario_tests}
    assert missing == set()


# -- ambiguous credentials -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "canned",
    [
        pytest.param(lambda token, other: cr.two_x_api_keys(token, other), id="x-api-key-twice"),
        pytest.param(lambda token, other: cr.two_x_api_keys(other, token), id="x-api-key-twice-reversed"),
        pytest.param(lambda token, other: cr.two_x_api_keys(token, token), id="x-api-key-twice-same"),
        pytest.param(lambda token, other: cr.two_x_api_keys(token, ""), id="x-api-key-and-an-empty-one"),
        pytest.param(lambda token, other: cr.two_x_api_keys(token, other, raw_headers=False),
                     id="x-api-key-twice-plain-map"),
        pytest.param(lambda token, other: cr.two_authorizations(token, other), id="authorization-joined-by-envoy"),
        pytest.param(lambda token, other: cr.check_request(
            "POST", "/openai/v1/chat/completions", {"content-type": "application/json"}, cr.chat_body(),
            repeated=[("authorization", f"Bearer {token}"), ("authorization", f"Bearer {other}")]),
            id="authorization-twice-raw"),
        pytest.param(lambda token, other: cr.with_authorization(f"Bearer {token}, {other}"),
                     id="authorization-two-values"),
        pytest.param(lambda token, other: cr.azure_chat(f"{token},{other}"), id="api-key-joined"),
        pytest.param(lambda token, other: cr.azure_chat(f"{token}, {token}"), id="api-key-same-twice-joined"),
        pytest.param(lambda token, other: cr.gemini_generate(f"{token},{other}"), id="x-goog-api-key-joined"),
        pytest.param(lambda token, other: cr.check_request(
            "POST", "/gemini/v1beta/models/gemini-2.0-flash:generateContent", {"content-type": "application/json"},
            b"{}", repeated=[("x-goog-api-key", token), ("x-goog-api-key", other)]), id="x-goog-api-key-twice-raw"),
        pytest.param(lambda token, other: cr.check_request(
            "POST", "/azure/openai/deployments/gpt-4o/chat/completions", {"content-type": "application/json"},
            cr.chat_body(), repeated=[("api-key", token), ("api-key", token)]), id="api-key-twice-raw"),
        pytest.param(lambda token, other: cr.check_request(
            "POST", "/openai/v1/chat/completions", {"content-type": "application/json", "api-key": token},
            cr.chat_body(), repeated=[("x-goog-api-key", f"{other},{token}")]), id="a-second-header-joined"),
    ],
)
def test_credential_ambiguous(gw: Gateway, canned) -> None:
    token, other = gw.mint(models=("*",)), gw.mint(models=("*",))
    result = gw.check(canned(token, other))
    assert_denied(result, Outcome.CREDENTIAL_AMBIGUOUS, 400)
    assert result.token_id is None
    assert gw.cache.lookups == []  # judged before any hashing or lookup
    assert gw.usage.touches == []


def test_credential_ambiguous_before_the_body_is_read(gw: Gateway) -> None:
    token, other = gw.mint(), gw.mint()
    check = cr.check_request("POST", "/openai/v1/chat/completions", {"content-type": "application/json"},
                             b"{not json", repeated=[("x-api-key", token), ("x-api-key", other)])
    assert_denied(gw.check(check), Outcome.CREDENTIAL_AMBIGUOUS, 400)


# -- credentials as the SDKs send them ------------------------------------------------------------


def test_openai_sdk_bearer_and_anthropic_sdk_x_api_key_both_work(gw: Gateway) -> None:
    token = gw.mint(token_id="tok-both", models=("*",))
    assert gw.check(cr.openai_chat(token)).token_id == "tok-both"
    assert gw.check(cr.anthropic_messages(token)).token_id == "tok-both"


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "Bearer ", ""], ids=["lower", "upper", "two-spaces", "none"])
def test_bearer_scheme_is_case_insensitive_and_optional(gw: Gateway, scheme: str) -> None:
    token = gw.mint()
    assert gw.check(cr.with_authorization(f"{scheme} {token}")).outcome is Outcome.ALLOWED


def _chat(path: str, **headers: str) -> CheckRequest:
    return cr.check_request("POST", path, {"content-type": "application/json", **headers}, cr.chat_body())


@pytest.mark.parametrize("authorization", [None, "Bearer ", "Bearer"])
def test_x_api_key_works_on_openai_paths_too(gw: Gateway, authorization: str | None) -> None:
    token = gw.mint()
    headers = {"x-api-key": token} if authorization is None else {"x-api-key": token, "authorization": authorization}
    assert gw.check(_chat("/openai/v1/chat/completions", **headers)).outcome is Outcome.ALLOWED


@pytest.mark.parametrize(
    ("path", "winner"),
    [("/openai/v1/chat/completions", "tok-bearer"), ("/anthropic/v1/messages", "tok-header")],
    ids=["openai", "anthropic"],
)
def test_the_apis_native_header_wins_when_both_carry_a_pat(gw: Gateway, path: str, winner: str) -> None:
    bearer, header = gw.mint(token_id="tok-bearer", models=("*",)), gw.mint(token_id="tok-header", models=("*",))
    result = gw.check(_chat(path, authorization=f"Bearer {bearer}", **{"x-api-key": header}))
    assert result.token_id == winner


@pytest.mark.parametrize(
    ("path", "pat_in", "provider_key"),
    [
        pytest.param("/anthropic/v1/messages", "authorization", "sk-ant-api03-" + "x" * 40, id="anthropic"),
        pytest.param("/openai/v1/chat/completions", "x-api-key", "sk-proj-" + "x" * 40, id="openai"),
    ],
)
def test_a_pat_wins_over_a_stale_provider_key(gw: Gateway, path: str, pat_in: str, provider_key: str) -> None:
    token = gw.mint(models=("*",))
    values = {"authorization": f"Bearer {provider_key}", "x-api-key": provider_key}
    values[pat_in] = f"Bearer {token}" if pat_in == "authorization" else token
    assert gw.check(_chat(path, **values)).outcome is Outcome.ALLOWED


# -- ordering -------------------------------------------------------------------------------------


def test_unauthenticated_garbage_body_is_401_not_400(gw: Gateway) -> None:
    assert_denied(gw.check(cr.no_credential_garbage_body()), Outcome.TOKEN_MISSING, 401)


@pytest.mark.parametrize("canned", [cr.garbage_body, cr.openai_fine_tuning_job, cr.openai_files, cr.truncated_chat,
                                    lambda token: cr.openai_transcription(token, declared=None),
                                    lambda token: cr.mcp_post(token, b"not json")])
def test_bad_token_is_judged_before_route_and_body(gw: Gateway, canned) -> None:
    token = gw.mint(token_id="tok-r")
    gw.revoke("tok-r")
    assert_denied(gw.check(canned(token)), Outcome.TOKEN_REVOKED, 401)
    assert_denied(gw.check(canned(cr.mistyped(token))), Outcome.TOKEN_MALFORMED, 401)


@pytest.mark.parametrize(
    "canned",
    [
        pytest.param(lambda token: cr.openai_chat(cr.mistyped(token)), id="bad-checksum"),
        pytest.param(lambda token: cr.openai_chat("ghp_" + token[7:] + "abc"), id="wrong-prefix"),
        pytest.param(lambda token: cr.non_utf8_bearer(), id="non-utf8"),
        pytest.param(lambda token: cr.no_credential(), id="missing"),
    ],
)
def test_rejected_credential_is_never_looked_up(gw: Gateway, canned) -> None:
    token = gw.mint()
    result = gw.check(canned(token))
    assert result.status == 401
    assert gw.cache.lookups == []


def test_well_formed_credential_is_looked_up_once_by_its_keyed_hash(gw: Gateway) -> None:
    token = gw.mint()
    gw.check(cr.openai_chat(token))
    assert gw.cache.lookups == [hash_token(token, HASH_KEY)]
    assert gw.cache.revoked_lookups == []


# -- the request id -------------------------------------------------------------------------------


def test_the_request_id_is_never_empty() -> None:
    check = cr.check_request("GET", "/openai/v1/models", {"x-request-id": None})
    check.attributes.request.http.id = ""
    first, second = request_codec.parse(check).request_id, request_codec.parse(check).request_id
    assert first and second and first != second


def test_undecodable_request_id_bytes_are_kept_for_the_audit_record_to_judge() -> None:
    check = cr.check_request("GET", "/openai/v1/models", {"x-request-id": b"req-\xff\xfe"})
    assert request_codec.parse(check).request_id == "req-\udcff\udcfe"


# -- usage ----------------------------------------------------------------------------------------


def test_usage_is_touched_with_the_clock_time_when_allowed(gw: Gateway) -> None:
    token = gw.mint(token_id="tok-u")
    gw.now = NOW + 12.5
    gw.check(cr.openai_chat(token))
    gw.now = NOW + 20
    gw.check(cr.openai_models(token))
    assert gw.usage.touches == [("tok-u", NOW + 12.5), ("tok-u", NOW + 20)]


def _denied(outcome: Outcome, canned, **state: object):
    return pytest.param(outcome, canned, state, id=outcome.value)


@pytest.mark.parametrize(
    ("outcome", "canned", "state"),
    [
        _denied(Outcome.CREDENTIAL_AMBIGUOUS, lambda token: cr.two_x_api_keys(token, token)),
        _denied(Outcome.BODY_AMBIGUOUS, cr.duplicate_model),
        _denied(Outcome.TEAM_HAS_NO_PROFILE, cr.openai_chat, profile=NO_PROFILE),
        _denied(Outcome.MODEL_NOT_ALLOWED, lambda token: cr.openai_chat(token, "gpt-4o")),
        _denied(Outcome.MODEL_MISSING, cr.body_without_model),
        _denied(Outcome.BODY_NOT_JSON, cr.garbage_body),
        _denied(Outcome.BODY_TOO_LARGE, cr.truncated_chat),
        _denied(Outcome.ROUTE_UNKNOWN, cr.openai_fine_tuning_job),
        _denied(Outcome.ENDPOINT_NOT_ALLOWED, cr.openai_files),
        _denied(Outcome.UPSTREAM_UNAVAILABLE, cr.openai_chat,
                profile=ProfileCatalog([("openai", "*", None, "azure-west")], ["dev"])),
        _denied(Outcome.LENGTH_REQUIRED, lambda token: cr.openai_transcription(token, declared=None), profile=ANY),
        _denied(Outcome.BODY_NOT_FORM, lambda token: cr.openai_transcription(token, content_type="application/json"),
                profile=ANY),
        _denied(Outcome.TOOL_NOT_ALLOWED, lambda token: cr.mcp_call(token, tool="delete_page"), profile=TOOLS),
        _denied(Outcome.RPC_INVALID, lambda token: cr.mcp_post(token, b"not json"), profile=TOOLS),
        _denied(Outcome.OWNER_DISABLED, cr.openai_chat, owner_active=False),
        _denied(Outcome.TOKEN_EXPIRED, cr.openai_chat, expires_at=NOW),
        _denied(Outcome.TOKEN_REVOKED, cr.openai_chat, revoked=True),
        _denied(Outcome.TOKEN_MALFORMED, lambda token: cr.openai_chat(cr.mistyped(token))),
        _denied(Outcome.TOKEN_UNKNOWN, lambda token: cr.openai_chat(generate_token())),
        _denied(Outcome.TOKEN_MISSING, lambda token: cr.no_credential()),
    ],
)
def test_usage_is_not_touched_when_denied(gw: Gateway, outcome: Outcome, canned, state: dict) -> None:
    token = gw.mint(**state)
    result = gw.check(canned(token))
    assert result.outcome is outcome
    assert result.status >= 400
    assert gw.usage.touches == []


# -- hostile bodies --------------------------------------------------------------------------------


def test_deeply_nested_json_body_is_body_not_json(gw: Gateway) -> None:
    token = gw.mint()
    body = b'{"model":"gpt-4o-mini","messages":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert_denied(gw.check(cr.chat_with_body(token, body)), Outcome.BODY_NOT_JSON, 400)


@pytest.mark.parametrize(
    ("models", "acceptable"),
    [
        pytest.param(("gpt-4o-mini",), {400, 403}, id="not-in-catalog"),
        pytest.param(("gpt-*",), {200, 400, 403}, id="matches-pattern"),
    ],
)
def test_model_with_lone_surrogate_gets_an_answer(
    gw: Gateway, models: tuple[str, ...], acceptable: set[int]
) -> None:
    token = gw.mint(models=models)
    result = gw.check(cr.chat_with_body(token, b'{"model":"gpt-\\ud800"}'))
    assert result.response.SerializeToString()
    assert result.status in acceptable
    assert gw.usage.touches == []


# -- endpoint families ------------------------------------------------------------------------------

WITH_FILES = ProfileCatalog([("*", "*", None)], ["dev"], families=DEFAULT_FAMILIES | {Family.FILES})


def test_endpoint_not_allowed(gw: Gateway) -> None:
    token = gw.mint(profile=ANY)
    result = gw.check(cr.openai_files(token))
    assert_denied(result, Outcome.ENDPOINT_NOT_ALLOWED, 403)
    assert "'files'" in result.body["error"]["message"]
    assert gw.usage.touches == []
    assert gw.check(cr.openai_chat(token)).outcome is Outcome.ALLOWED
    granted = gw.mint(profile=WITH_FILES)
    assert gw.check(cr.openai_files(granted)).outcome is Outcome.ALLOWED


def test_a_tokens_families_narrow_its_profiles_and_never_widen_them(gw: Gateway) -> None:
    chat_only = gw.mint(profile=WITH_FILES, families=frozenset({Family.CHAT}))
    assert gw.check(cr.openai_chat(chat_only)).outcome is Outcome.ALLOWED
    assert_denied(gw.check(cr.openai_files(chat_only)), Outcome.ENDPOINT_NOT_ALLOWED, 403)
    assert_denied(gw.check(cr.openai_models(chat_only)), Outcome.ENDPOINT_NOT_ALLOWED, 403)
    wider = gw.mint(profile=ANY, families=frozenset({Family.CHAT, Family.FILES}))  # ANY does not grant files
    assert_denied(gw.check(cr.openai_files(wider)), Outcome.ENDPOINT_NOT_ALLOWED, 403)
    nothing = gw.mint(profile=ANY, families=frozenset())
    assert_denied(gw.check(cr.openai_chat(nothing)), Outcome.ENDPOINT_NOT_ALLOWED, 403)


@pytest.mark.parametrize(
    ("canned", "outcome"),
    [
        pytest.param(cr.openai_chat, Outcome.ALLOWED, id="chat"),
        pytest.param(lambda token: cr.openai_model(token), Outcome.ALLOWED, id="models"),
        pytest.param(cr.openai_image, Outcome.ENDPOINT_NOT_ALLOWED, id="images"),
        pytest.param(cr.openai_transcription, Outcome.ENDPOINT_NOT_ALLOWED, id="audio"),
        pytest.param(cr.openai_files, Outcome.ENDPOINT_NOT_ALLOWED, id="files"),
        pytest.param(cr.openai_batch, Outcome.ENDPOINT_NOT_ALLOWED, id="batches"),
        pytest.param(cr.mcp_call, Outcome.ENDPOINT_NOT_ALLOWED, id="tools"),
    ],
)
def test_legacy_tokens_keep_only_the_legacy_families(gw: Gateway, canned, outcome: Outcome) -> None:
    token = gw.mint(models=("*",))  # no profile: minted before teams existed
    assert gw.check(canned(token)).outcome is outcome


BATCHING = ProfileCatalog([("*", "*", None)], ["dev"], families={Family.BATCHES, Family.CHAT})


@pytest.mark.parametrize(
    ("target", "outcome"),
    [
        ("/v1/chat/completions", Outcome.ALLOWED),
        ("/v1/embeddings", Outcome.ENDPOINT_NOT_ALLOWED),  # a family the token lacks
        ("/v1/responses", Outcome.ENDPOINT_NOT_ALLOWED),
        ("/v1/fine_tuning/jobs", Outcome.ROUTE_UNKNOWN),
        ("/v1/files", Outcome.ROUTE_UNKNOWN),
        ("/openai/v1/chat/completions", Outcome.ROUTE_UNKNOWN),
        (None, Outcome.ROUTE_UNKNOWN),
    ],
)
def test_an_openai_batch_needs_the_family_it_runs(gw: Gateway, target: object, outcome: Outcome) -> None:
    token = gw.mint(profile=BATCHING)
    result = gw.check(cr.openai_batch(token, target))
    assert result.outcome is outcome
    if outcome is Outcome.ALLOWED:
        assert result.decision.free and result.decision.model is None
    else:
        assert result.error_code == outcome.value


def test_an_openai_batch_needs_the_batches_family_itself(gw: Gateway) -> None:
    token = gw.mint(profile=ANY)  # chat, but not batches
    assert_denied(gw.check(cr.openai_batch(token)), Outcome.ENDPOINT_NOT_ALLOWED, 403)


CLAUDE_BATCHES = ProfileCatalog([("anthropic", "claude-3-5-*", None), ("anthropic", "claude-opus-*", ("prod",))],
                                ["dev", "prod"], families={Family.BATCHES, Family.CHAT})


@pytest.mark.parametrize(
    ("models", "outcome", "named"),
    [
        pytest.param(["claude-3-5-haiku-latest"], Outcome.ALLOWED, "claude-3-5-haiku-latest", id="one"),
        pytest.param(["claude-3-5-sonnet-latest", "claude-3-5-haiku-latest", "claude-3-5-haiku-latest"],
                     Outcome.ALLOWED, "claude-3-5-haiku-latest,claude-3-5-sonnet-latest", id="several"),
        pytest.param(["claude-3-5-haiku-latest", "claude-3-opus-latest"], Outcome.MODEL_NOT_ALLOWED,
                     "claude-3-opus-latest", id="the-last-not-offered"),
        pytest.param(["claude-opus-4-1", "claude-3-5-haiku-latest"], Outcome.ENVIRONMENT_NOT_ALLOWED,
                     "claude-opus-4-1", id="one-in-prod-only"),
        pytest.param(["claude-3-5-haiku-latest", None], Outcome.MODEL_MISSING, None, id="one-without-model"),
        pytest.param([], Outcome.MODEL_MISSING, None, id="no-requests"),
    ],
)
def test_an_anthropic_batch_checks_every_requests_model(gw: Gateway, models: list, outcome: Outcome,
                                                        named: str | None) -> None:
    token = gw.mint(profile=CLAUDE_BATCHES, models=("claude-*",))
    result = gw.check(cr.anthropic_batch(token, models))
    assert result.outcome is outcome
    assert result.decision.model == named


def test_an_anthropic_batch_is_narrowed_by_the_tokens_own_list(gw: Gateway) -> None:
    token = gw.mint(profile=CLAUDE_BATCHES, models=("claude-3-5-haiku-*",))
    result = gw.check(cr.anthropic_batch(token, ["claude-3-5-haiku-latest", "claude-3-5-sonnet-latest"]))
    assert_denied(result, Outcome.MODEL_NOT_ALLOWED, 403)
    assert result.decision.model == "claude-3-5-sonnet-latest"


@pytest.mark.parametrize("body", [b'{"requests": {"params": {"model": "claude-3-5-haiku-latest"}}}',
                                  b'{"requests": [{"custom_id": "r0"}]}', b'{"requests": ["x"]}'])
def test_an_anthropic_batch_without_requests_to_judge_names_no_model(gw: Gateway, body: bytes) -> None:
    token = gw.mint(profile=CLAUDE_BATCHES, models=("*",))
    check = cr.check_request("POST", "/anthropic/v1/messages/batches",
                             {"x-api-key": token, "content-type": "application/json"}, body)
    assert_denied(gw.check(check), Outcome.MODEL_MISSING, 400)


# -- the model from the path ------------------------------------------------------------------------

AZURE_EAST = {"name": "azure-east", "kind": "azure", "url": "https://x.openai.azure.com"}
GEMINI = {"name": "gemini", "kind": "gemini", "url": "https://generativelanguage.googleapis.com"}
BEDROCK = {"name": "bedrock-us", "kind": "bedrock", "url": "https://bedrock-runtime.us-east-1.amazonaws.com",
           "region": "us-east-1"}
MISTRAL = {"name": "mistral", "kind": "mistral", "url": "https://api.mistral.ai"}


@pytest.mark.parametrize(
    ("canned", "model", "refused_model"),
    [
        pytest.param(cr.azure_chat, "gpt-4o", "gpt-4-32k", id="azure-deployment"),
        pytest.param(cr.gemini_generate, "gemini-2.0-flash", "gemini-2.5-pro", id="gemini"),
        pytest.param(cr.bedrock_converse, "anthropic.claude-3-haiku-20240307-v1:0",
                     "anthropic.claude-3-opus-20240229-v1:0", id="bedrock-escaped-colon"),
        pytest.param(cr.azure_transcription, "whisper", "whisper-large", id="azure-upload"),
    ],
)
def test_the_model_in_the_path_is_checked(gw: Gateway, canned, model: str, refused_model: str) -> None:
    gw.serve(AZURE_EAST, GEMINI, BEDROCK)
    profile = ProfileCatalog([("azure", "gpt-4o", None), ("azure", "whisper", None), ("gemini", "gemini-2.0-*", None),
                              ("bedrock", "anthropic.claude-3-haiku-*", None)], ["dev"])
    token = gw.mint(profile=profile, models=("*",))
    allowed = gw.check(canned(token, model))
    assert allowed.outcome is Outcome.ALLOWED and allowed.decision.model == model
    assert allowed.metadata["model"] == model
    refused = gw.check(canned(token, refused_model))
    assert refused.outcome is Outcome.MODEL_NOT_ALLOWED and refused.decision.model == refused_model
    assert refused.error_code == "model_not_allowed"


def test_a_path_model_is_narrowed_by_the_tokens_list_too(gw: Gateway) -> None:
    gw.serve(BEDROCK)
    token = gw.mint(profile=ANY, models=("anthropic.claude-3-5-*",))
    result = gw.check(cr.bedrock_converse(token))
    assert result.outcome is Outcome.MODEL_NOT_ALLOWED
    assert result.headers["x-amzn-errortype"] == "AccessDeniedException"  # what boto3 raises from


def test_a_gemini_model_outside_the_catalog_gets_googles_error_shape(gw: Gateway) -> None:
    gw.serve(GEMINI)
    token = gw.mint(profile=ANY, models=("gemini-2.0-*",))
    result = gw.check(cr.gemini_generate(token, "gemini-2.5-pro"))
    assert result.status == 403
    assert result.body["error"]["status"] == "PERMISSION_DENIED" and result.body["error"]["code"] == 403
    assert result.error_code == "model_not_allowed"


# -- the model from an upload's head ------------------------------------------------------------------

WHISPER = ProfileCatalog([("openai", "whisper-1", None), ("openai", "gpt-image-1", None)], ["dev"])


def test_the_model_of_an_upload_is_read_from_its_head(gw: Gateway) -> None:
    token = gw.mint(profile=WHISPER, models=("*",))
    check = cr.openai_transcription(token)
    assert check.attributes.request.http.raw_body != cr.form([("model", b"whisper-1"), ("file", cr.RECORDING)])
    result = gw.check(check)
    assert result.outcome is Outcome.ALLOWED and result.decision.model == "whisper-1"
    assert not result.decision.free
    refused = gw.check(cr.openai_transcription(token, "gpt-4o-transcribe"))
    assert_denied(refused, Outcome.MODEL_NOT_ALLOWED, 403)
    assert refused.decision.model == "gpt-4o-transcribe"


def test_model_missing_from_a_form(gw: Gateway) -> None:
    token = gw.mint(profile=WHISPER, models=("*",))
    body = cr.form([("file", cr.RECORDING), ("model", b"whisper-1")])  # after the file: past the head
    assert_denied(gw.check(cr.openai_transcription(token, body=body)), Outcome.MODEL_MISSING, 400)
    body = cr.form([("language", b"en"), ("file", b"RIFF")])
    assert_denied(gw.check(cr.openai_transcription(token, body=body)), Outcome.MODEL_MISSING, 400)


def test_a_model_field_twice_is_body_ambiguous(gw: Gateway) -> None:
    token = gw.mint(profile=WHISPER, models=("*",))
    body = cr.form([("model", b"whisper-1"), ("model", b"gpt-4o-transcribe"), ("file", cr.RECORDING)])
    result = gw.check(cr.openai_transcription(token, body=body))
    assert_denied(result, Outcome.BODY_AMBIGUOUS, 400)
    assert result.decision.model is None


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "application/x-www-form-urlencoded", "multipart/form-data", "multipart/mixed; boundary=x",
     f"multipart/form-data; boundary={cr.BOUNDARY}; boundary=other"],
)
def test_body_not_form(gw: Gateway, content_type: str) -> None:
    token = gw.mint(profile=WHISPER, models=("*",))
    assert_denied(gw.check(cr.openai_transcription(token, content_type=content_type)), Outcome.BODY_NOT_FORM, 400)


def test_a_boundary_is_read_in_the_case_it_was_sent(gw: Gateway) -> None:
    """Lower-casing it would read a decoy form: to a parser with the real boundary that is only a preamble,
    and the model the provider runs comes after it."""
    token = gw.mint(profile=WHISPER, models=("*",))
    boundary = "----WebKitFormBoundary7MA4YWxkTrZu0gW"
    content_type = f"multipart/form-data; boundary={boundary}"
    honest = cr.form([("model", b"whisper-1"), ("file", cr.RECORDING)], boundary)
    assert gw.check(cr.openai_transcription(token, body=honest, content_type=content_type)).outcome is Outcome.ALLOWED
    decoy = cr.form([("model", b"whisper-1")], boundary.lower())
    smuggled = decoy + cr.form([("model", b"gpt-4o-transcribe"), ("file", cr.RECORDING)], boundary)
    result = gw.check(cr.openai_transcription(token, body=smuggled, content_type=content_type))
    assert_denied(result, Outcome.BODY_NOT_FORM, 400)


def test_length_required(gw: Gateway) -> None:
    token = gw.mint(profile=WHISPER, models=("*",))
    result = gw.check(cr.openai_transcription(token, declared=None))
    assert_denied(result, Outcome.LENGTH_REQUIRED, 411)
    assert gw.usage.touches == []


@pytest.mark.parametrize(
    ("path", "declared", "outcome"),
    [
        ("/openai/v1/audio/transcriptions", 25 * 1024 * 1024, Outcome.ALLOWED),
        ("/openai/v1/audio/transcriptions", 25 * 1024 * 1024 + 1, Outcome.BODY_TOO_LARGE),
        ("/openai/v1/audio/translations", 26 * 1024 * 1024, Outcome.BODY_TOO_LARGE),
        ("/openai/v1/images/edits", 26 * 1024 * 1024, Outcome.ALLOWED),  # images take up to 50 MB
        ("/openai/v1/images/edits", 50 * 1024 * 1024 + 1, Outcome.BODY_TOO_LARGE),
        ("/openai/v1/audio/transcriptions", 10**30, Outcome.LENGTH_REQUIRED),  # no number a client could mean
    ],
)
def test_an_upload_is_bounded_by_its_declared_size(gw: Gateway, path: str, declared: int, outcome: Outcome) -> None:
    token = gw.mint(profile=WHISPER, models=("*",))
    result = gw.check(cr.openai_transcription(token, "gpt-image-1" if "images" in path else "whisper-1",
                                              declared=declared, path=path))
    assert result.outcome is outcome
    if outcome is Outcome.BODY_TOO_LARGE:
        assert result.status == 413 and "MB" in result.body["error"]["message"]


def test_only_an_upload_may_arrive_truncated(gw: Gateway) -> None:
    token = gw.mint(profile=WHISPER, models=("*",))
    upload = cr.openai_transcription(token)
    assert (upload.attributes.request.http.header_map.headers[-1].key, len(upload.attributes.request.http.raw_body)) \
        == (cr.PARTIAL_BODY_HEADER, 65_536)
    assert gw.check(upload).outcome is Outcome.ALLOWED
    assert_denied(gw.check(cr.truncated_chat(token)), Outcome.BODY_TOO_LARGE, 413)


# -- routing to upstreams ---------------------------------------------------------------------------

ROUTED = ProfileCatalog([("openai", "gpt-4o", None, "azure-east"), ("openai", "gpt-4o*", None)], ["dev", "prod"])


def test_a_catalog_entry_routes_its_model_to_its_upstream(gw: Gateway) -> None:
    gw.serve(AZURE_EAST)
    token = gw.mint(profile=ROUTED, models=("*",))
    result = gw.check(cr.openai_chat(token, "gpt-4o"))
    assert result.outcome is Outcome.ALLOWED
    assert result.decision.upstream == "azure-east"
    assert result.headers[ROUTE_HEADER] == "azure-east"
    assert result.metadata["provider"] == "azure-east" and result.metadata["model"] == "gpt-4o"
    other = gw.check(cr.openai_chat(token, "gpt-4o-mini"))  # the second entry: the API's default
    assert other.headers[ROUTE_HEADER] == "openai" and other.metadata["provider"] == "openai"


def test_the_first_entry_offering_a_model_decides_its_upstream(gw: Gateway) -> None:
    gw.serve(AZURE_EAST)
    token = gw.mint(profile=ProfileCatalog([("openai", "gpt-4o*", None), ("openai", "gpt-4o", None, "azure-east")],
                                           ["dev"]), models=("*",))
    assert gw.check(cr.openai_chat(token, "gpt-4o")).headers[ROUTE_HEADER] == "openai"


def test_the_first_entry_offering_a_model_in_the_tokens_environment_decides(gw: Gateway) -> None:
    gw.serve(AZURE_EAST)
    profile = ProfileCatalog([("openai", "gpt-4o", ("prod",), "azure-east"), ("openai", "gpt-4o", None)],
                             ["dev", "prod"])
    prod = gw.mint(profile=profile, environment="prod", models=("*",))
    dev = gw.mint(profile=profile, environment="dev", models=("*",))
    assert gw.check(cr.openai_chat(prod, "gpt-4o")).headers[ROUTE_HEADER] == "azure-east"
    assert gw.check(cr.openai_chat(dev, "gpt-4o")).headers[ROUTE_HEADER] == "openai"


@pytest.mark.parametrize(
    ("entries", "canned", "says"),
    [
        pytest.param([("openai", "gpt-4o", None, "azure-west")], lambda t: cr.openai_chat(t, "gpt-4o"), "azure-west",
                     id="unconfigured"),
        pytest.param([("openai", "claude-*", None, "anthropic")], lambda t: cr.openai_chat(t, "claude-3-5-haiku"),
                     "anthropic", id="an-upstream-not-serving-the-api"),
        pytest.param([("gemini", "*", None)], cr.gemini_generate, "gemini API", id="no-upstream-for-the-api"),
        pytest.param([("*", "*", None)], lambda t: cr.mcp_call(t, "github", "create_issue"), "github",
                     id="mcp-server-not-configured"),
    ],
)
def test_upstream_unavailable(gw: Gateway, entries: list, canned, says: str) -> None:
    gw.serve(AZURE_EAST)
    profile = ProfileCatalog(entries, ["dev"], families=DEFAULT_FAMILIES | {Family.TOOLS},
                             tools=ToolCatalog([("github", "*")]))
    token = gw.mint(profile=profile, models=("*",))
    result = gw.check(canned(token))
    assert_denied(result, Outcome.UPSTREAM_UNAVAILABLE, 503)
    assert says in (result.decision.detail or "")
    assert result.decision.upstream is None and ROUTE_HEADER not in result.headers
    assert gw.usage.touches == []


@pytest.mark.parametrize(
    ("upstream", "canned", "asked"),
    [
        pytest.param(None, cr.openai_stream, True, id="openai"),
        pytest.param(AZURE_EAST, cr.openai_stream, True, id="azure"),
        pytest.param(MISTRAL, cr.openai_stream, False, id="mistral-through-the-openai-api"),
        pytest.param(None, lambda t, m: cr.openai_stream(t, m, stream_options={"include_usage": False}), False,
                     id="the-client-already-says"),
        pytest.param(MISTRAL, lambda t, m: cr.mistral_chat(t, m, stream=True), False, id="mistrals-own-api"),
    ],
)
def test_stream_usage_is_asked_only_of_upstreams_that_take_the_option(gw: Gateway, upstream: dict | None, canned,
                                                                       asked: bool) -> None:
    gw.serve(*([upstream] if upstream else []))
    name = upstream["name"] if upstream else None
    profile = ProfileCatalog([("openai", "mistral-large-latest", None, name), ("mistral", "*", None)], ["dev"])
    token = gw.mint(profile=profile, models=("*",))
    result = gw.check(canned(token, "mistral-large-latest"))
    assert result.outcome is Outcome.ALLOWED
    assert result.decision.stream_usage is asked
    assert (response_codec.STREAM_USAGE_HEADER in result.headers) is asked


# -- MCP ----------------------------------------------------------------------------------------------

MCP_SERVERS = [{"name": name, "kind": "mcp", "url": f"https://mcp.example.com/{name}"}
               for name in ("docs", "github", "jira")]


def _mcp(gw: Gateway, **fields: Any) -> str:
    gw.serve(*MCP_SERVERS)
    return gw.mint(profile=TOOLS, **fields)


def test_an_allowed_tool_call_goes_to_its_server(gw: Gateway) -> None:
    token = _mcp(gw, token_id="tok-mcp")
    result = gw.check(cr.mcp_call(token, "docs", "search_docs"))
    assert result.outcome is Outcome.ALLOWED
    assert result.decision.model == "search_docs" and result.decision.free
    assert result.headers[ROUTE_HEADER] == "docs" and result.metadata["model"] == "search_docs"
    assert gw.usage.touches == [("tok-mcp", NOW)]
    assert gw.check(cr.mcp_call(token, "github", "delete_repo")).outcome is Outcome.ALLOWED  # github: "*"


def test_other_mcp_messages_are_recorded_by_method(gw: Gateway) -> None:
    token = _mcp(gw)
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}).encode()
    result = gw.check(cr.mcp_post(token, body))
    assert result.outcome is Outcome.ALLOWED and result.decision.model == "tools/list"


#: JSON-RPC's own codes for a message the server cannot take: parse error, invalid request, invalid params.
INVALID_INPUT = (-32700, -32600, -32602)


def _assert_rpc_denial(result: Result, outcome: Outcome, status: int, code: int | tuple[int, ...],
                       rpc_id: object) -> None:
    assert_denied(result, outcome, status)
    body = result.body
    assert body["jsonrpc"] == "2.0" and body["id"] == rpc_id
    assert body["error"]["code"] in (code if isinstance(code, tuple) else (code,)) and body["error"]["message"]
    assert body["error"]["data"] == {"code": outcome.value, "request_id": result.decision_request_id}


@pytest.mark.parametrize(
    ("server", "tool", "rpc_id"),
    [
        pytest.param("jira", "search_issues", 7, id="server-not-in-the-catalog"),
        pytest.param("docs", "delete_page", "call-42", id="tool-outside-the-patterns"),
        pytest.param("docs", "Search_docs", 0, id="patterns-are-case-sensitive"),
    ],
)
def test_tool_not_allowed(gw: Gateway, server: str, tool: str, rpc_id: object) -> None:
    token = _mcp(gw)
    result = gw.check(cr.mcp_call(token, server, tool, rpc_id))
    _assert_rpc_denial(result, Outcome.TOOL_NOT_ALLOWED, 403, TOOL_NOT_ALLOWED, rpc_id)
    assert server in (result.decision.detail or "")
    assert gw.usage.touches == []


def test_a_batch_with_one_tool_outside_the_catalog_is_refused_whole(gw: Gateway) -> None:
    token = _mcp(gw)
    calls = [{"jsonrpc": "2.0", "id": n, "method": "tools/call", "params": {"name": name}}
             for n, name in enumerate(["search_docs", "delete_page"])]
    result = gw.check(cr.mcp_post(token, json.dumps(calls).encode()))
    _assert_rpc_denial(result, Outcome.TOOL_NOT_ALLOWED, 403, TOOL_NOT_ALLOWED, None)
    assert result.decision.model == "delete_page"


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_the_event_stream_and_the_session_of_a_server_outside_the_catalog_are_refused(gw: Gateway,
                                                                                     method: str) -> None:
    token = _mcp(gw)
    assert gw.check(cr.mcp_stream(token, "docs", method)).outcome is Outcome.ALLOWED
    result = gw.check(cr.mcp_stream(token, "jira", method))
    _assert_rpc_denial(result, Outcome.TOOL_NOT_ALLOWED, 403, TOOL_NOT_ALLOWED, None)


@pytest.mark.parametrize(
    ("body", "rpc_id"),
    [
        pytest.param(b"not json", None, id="not-json"),
        pytest.param(b'{"jsonrpc": "1.0", "id": 3, "method": "tools/list"}', None, id="not-json-rpc-2"),
        pytest.param(b'{"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {}}', 3, id="no-tool-name"),
        pytest.param(b"[]", None, id="empty-batch"),
    ],
)
def test_rpc_invalid(gw: Gateway, body: bytes, rpc_id: object) -> None:
    token = _mcp(gw)
    result = gw.check(cr.mcp_post(token, body))
    _assert_rpc_denial(result, Outcome.RPC_INVALID, 400, INVALID_INPUT, rpc_id)


def test_an_mcp_body_repeating_a_key_is_ambiguous_in_json_rpc_shape(gw: Gateway) -> None:
    token = _mcp(gw)
    body = b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "search_docs", "name": "x"}}'
    _assert_rpc_denial(gw.check(cr.mcp_post(token, body)), Outcome.BODY_AMBIGUOUS, 400, INVALID_INPUT, None)


def test_a_revoked_token_on_an_mcp_path_is_refused_in_json_rpc_shape(gw: Gateway) -> None:
    token = _mcp(gw, token_id="tok-r")
    gw.revoke("tok-r")
    result = gw.check(cr.mcp_call(token, rpc_id=9))
    _assert_rpc_denial(result, Outcome.TOKEN_REVOKED, 401, NOT_AUTHORISED, None)  # the body is never read
    assert result.headers["www-authenticate"] == 'Bearer realm="keyward"'
    missing = gw.check(cr.check_request("POST", "/mcp/docs", {"content-type": "application/json"}, b"{}"))
    _assert_rpc_denial(missing, Outcome.TOKEN_MISSING, 401, NOT_AUTHORISED, None)


def test_mcp_needs_the_tools_family(gw: Gateway) -> None:
    gw.serve(*MCP_SERVERS)
    token = gw.mint(profile=ProfileCatalog([("*", "*", None)], ["dev"], tools=ToolCatalog([("docs", "*")])))
    _assert_rpc_denial(gw.check(cr.mcp_call(token)), Outcome.ENDPOINT_NOT_ALLOWED, 403, NOT_AUTHORISED, None)


# -- model listings -----------------------------------------------------------------------------------


def bundled(provider: str, pattern: str) -> set[str]:
    """The bundled price table's models of ``provider`` matching ``pattern`` (read here, not through authz)."""
    providers = genai_prices.data_snapshot.get_snapshot().providers
    return {m.id for p in providers if p.id == provider for m in p.models if fnmatch.fnmatchcase(m.id, pattern)}


LISTED = ProfileCatalog([("openai", "gpt-4o", None), ("openai", "o3*", ("prod",)), ("openai", "gpt-4o-mini*", None),
                         ("anthropic", "claude-3-5-haiku-latest", None), ("gemini", "gemini-2.0-flash", None)],
                        ["dev", "prod"])


def test_answered(gw: Gateway) -> None:
    """A listing is let through like any request (a use of the token) and answered by the gateway: its record
    says ``answered``, never ``allowed``, since no provider saw it."""
    token = gw.mint(token_id="tok-list", profile=LISTED, models=("gpt-4o*", "claude-*"))
    result = gw.check(cr.openai_models(token))
    assert result.outcome is Outcome.ANSWERED and result.decision.listing
    assert result.response.HasField("denied_response") and result.status == 200  # Envoy sends it as the reply
    assert result.headers["content-type"] == "application/json"
    listed = {entry["id"] for entry in result.body["data"]}
    mini = bundled("openai", "gpt-4o-mini*")
    assert "gpt-4o-mini" in mini
    assert listed == {"gpt-4o"} | mini  # o3 only in prod; the token's list leaves out nothing else here
    assert result.body["object"] == "list" and {e["owned_by"] for e in result.body["data"]} == {"openai"}
    assert result.metadata["decision"] == "answered"
    assert gw.usage.touches == [("tok-list", NOW)]


def test_a_listing_is_per_environment_and_narrowed_by_the_tokens_list(gw: Gateway) -> None:
    prod = gw.mint(profile=LISTED, environment="prod", models=("o3-mini", "gpt-4o"))
    assert {e["id"] for e in gw.check(cr.openai_models(prod)).body["data"]} == {"o3-mini", "gpt-4o"}


def test_anthropic_and_gemini_listings_in_their_own_shapes(gw: Gateway) -> None:
    gw.serve(GEMINI)
    token = gw.mint(profile=LISTED, models=("*",))
    anthropic = gw.check(cr.anthropic_models(token))
    assert anthropic.status == 200 and [m["id"] for m in anthropic.body["data"]] == ["claude-3-5-haiku-latest"]
    assert anthropic.body["has_more"] is False and anthropic.body["first_id"] == "claude-3-5-haiku-latest"
    gemini = gw.check(cr.gemini_models(token))
    assert gemini.status == 200 and [m["name"] for m in gemini.body["models"]] == ["models/gemini-2.0-flash"]


def test_a_legacy_token_lists_its_own_list_on_each_apis_default_upstream(gw: Gateway) -> None:
    token = gw.mint(models=("gpt-4o-mini*", "claude-3-5-*"))
    openai_listed = gw.check(cr.openai_models(token)).body["data"]
    assert {e["id"] for e in openai_listed} == bundled("openai", "gpt-4o-mini*") | bundled("openai", "claude-3-5-*")
    assert {e["owned_by"] for e in openai_listed} == {"openai"}
    anthropic_listed = gw.check(cr.anthropic_models(token)).body["data"]
    assert {e["id"] for e in anthropic_listed} == bundled("anthropic", "claude-3-5-*") != set()


# -- credentials of the other SDKs ------------------------------------------------------------------


@pytest.mark.parametrize(
    "canned",
    [
        pytest.param(cr.azure_chat, id="azure-sdk-api-key"),
        pytest.param(cr.gemini_generate, id="google-genai-x-goog-api-key"),
        pytest.param(lambda token: cr.azure_chat(token, header="authorization"), id="azure-bearer"),
        pytest.param(lambda token: cr.gemini_generate(token, header="api-key"), id="gemini-api-key"),
        pytest.param(lambda token: cr.check_request("POST", "/openai/v1/chat/completions",
                                                    {"content-type": "application/json", "x-goog-api-key": token},
                                                    cr.chat_body()), id="openai-with-x-goog-api-key"),
    ],
)
def test_a_pat_is_found_in_every_sdks_header(gw: Gateway, canned) -> None:
    gw.serve(AZURE_EAST, GEMINI)
    token = gw.mint(token_id="tok-sdk", profile=ANY, models=("*",))
    result = gw.check(canned(token))
    assert result.outcome is Outcome.ALLOWED and result.token_id == "tok-sdk"
    assert set(response_codec.CLIENT_CREDENTIAL_HEADERS) >= {"api-key", "x-goog-api-key"}
    assert set(result.response.ok_response.headers_to_remove) == set(response_codec.CLIENT_CREDENTIAL_HEADERS)


@pytest.mark.parametrize(
    ("canned", "winner"),
    [
        pytest.param(lambda native, other: cr.check_request(
            "POST", "/azure/openai/deployments/gpt-4o/chat/completions",
            {"content-type": "application/json", "api-key": native, "authorization": f"Bearer {other}"},
            cr.chat_body("gpt-4o")), "tok-native", id="azure"),
        pytest.param(lambda native, other: cr.check_request(
            "POST", "/gemini/v1beta/models/gemini-2.0-flash:generateContent",
            {"content-type": "application/json", "x-goog-api-key": native, "api-key": other}, b"{}"),
            "tok-native", id="gemini"),
    ],
)
def test_the_native_header_of_azure_and_gemini_wins(gw: Gateway, canned, winner: str) -> None:
    gw.serve(AZURE_EAST, GEMINI)
    native = gw.mint(token_id="tok-native", profile=ANY, models=("*",))
    other = gw.mint(token_id="tok-other", profile=ANY, models=("*",))
    assert gw.check(canned(native, other)).token_id == winner
