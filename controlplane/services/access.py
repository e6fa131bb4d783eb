"""Effective access: what the gateway would do with each token now, decided by the gateway's own code.

The tokens are authz's own records, from the control plane's mirror of authz's cache (the same
snapshot and NOTIFY updates: :mod:`controlplane.services.mirror`), or read with authz's own query
when the mirror cannot answer; and each question is put to authz's own decision function
(:func:`authz.pipeline.judge`: the token's and its owner's state, the team's profile, the token's
models) and budget check (:meth:`authz.pipeline.Limits.admit`, dry: nothing counted, rate limits left
out, since they say nothing about access beyond the next minute), with the budgets, prices and spend
counts authz itself reads. So this report and the gateway cannot disagree: a token listed as able to
reach a model is one the gateway would let through, and a refused one is listed with the gateway's
own reason (``token_revoked``, ``not_a_member``, ``budget_exceeded``, …).

"Which models" is asked of a known universe per provider: every model an access profile names
exactly, every model in the bundled price table, every model the spend rollup saw in the last 30
days. Tokens that share an access profile version, a model list and an environment get the same
answer for a model, so each such group is asked once.
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from typing import Any

import genai_prices
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from authz.cache import Interner, TokenRecord
from authz.limits import DAY
from authz.meter import Hit, Meter
from authz.outcomes import DENIALS, Outcome
from authz.pipeline import Limits, families_of, judge, token_refusal
from authz.prices import bundled_provider
from authz.request import GatewayRequest
from authz.routes import Family, probe
from authz.snapshot import RECORD_FROM, RECORD_SELECT, load_policy, record_from_row
from authz.upstreams import Api, Upstreams
from controlplane.core.config import get_settings
from controlplane.services.mirror import mirror


def upstreams() -> Upstreams:
    return Upstreams.parse(get_settings().upstreams)


def providers() -> tuple[str, ...]:
    """The model APIs this gateway serves (an API with an upstream), which the report covers."""
    served = upstreams()
    return tuple(api.value for api in Api if api is not Api.MCP and served.default(api) is not None)



#: Stored as live: not revoked. (An expired token is stored as expired: the report says so apart.)
_LIVE = " WHERE t.revoked_at IS NULL"


async def _driver(session: AsyncSession) -> Any:
    connection = await session.connection()
    raw = await connection.get_raw_connection()
    return raw.driver_connection


async def records(session: AsyncSession, *, where: str = "", params: Iterable[Any] = ()) -> list[TokenRecord]:
    """Live tokens as authz holds them, optionally narrowed (``where``: SQL over ``t``, ``u``, ``sa``,
    ``tm``, ``p``, ``pj`` with ``$n`` parameters): from the control plane's mirror of authz's cache
    (:mod:`controlplane.services.mirror`), else read and built here the way authz builds them."""
    driver = await _driver(session)
    mirrored = await mirror().current()
    if mirrored is not None:
        if not where:
            return mirrored
        wanted = {row[0] for row in await driver.fetch(
            f"SELECT t.id::text {RECORD_FROM}{_LIVE} AND ({where})", *params)}
        return [record for record in mirrored if record.token_id in wanted]
    interner = Interner()
    query = RECORD_SELECT + _LIVE + (f" AND ({where})" if where else "")
    return [record_from_row(row, interner) for row in await driver.fetch(query, *params)]


async def limits(session: AsyncSession, now: float) -> Limits:
    """The budgets and prices authz enforces, and this month's spend as every replica counted it."""
    driver = await _driver(session)
    policy = await load_policy(driver)
    starts = [budget.window[0] for budget in policy.budgets.values() if budget.window is not None]
    moment = datetime.fromtimestamp(now, tz=UTC)
    first = datetime(moment.year, moment.month, 1, tzinfo=UTC).timestamp()
    if starts:
        first = min(first, min(starts) - min(starts) % DAY)
    rows = await driver.fetch(
        "SELECT scope_type, scope_id::text, extract(epoch FROM bucket_start)::float8 AS start, requests, tokens,"
        " cost_usd::float8 AS cost FROM usage_counters WHERE bucket = 'day' AND bucket_start >= to_timestamp($1)",
        first)
    meter = Meter(clock=lambda: now)
    meter.apply(((r["scope_type"], r["scope_id"], "day", r["start"], r["requests"], r["tokens"], r["cost"])
                 for r in rows), now)
    return Limits(meter, policy)


async def universe(session: AsyncSession) -> dict[str, list[str]]:
    """The models questions are asked about, per provider (see the module docstring)."""
    served = upstreams()
    every = providers()
    found: dict[str, set[str]] = {provider: set() for provider in every}
    priced_as = {provider: {bundled_provider(u.name) for u in served.serving(Api(provider))} for provider in every}
    for bundled in genai_prices.data_snapshot.get_snapshot().providers:
        for provider, ids in priced_as.items():
            if bundled.id in ids:
                found[provider].update(model.id for model in bundled.models)
    rows = await session.execute(text("SELECT catalog FROM access_profiles"))
    for (catalog,) in rows:
        for entry in catalog or []:
            pattern = str(entry.get("pattern", ""))
            if pattern and not any(c in pattern for c in "*?["):
                named = str(entry.get("provider"))
                for provider in (every if named == "*" else (named,)):
                    if provider in found:
                        found[provider].add(pattern)
    seen = await session.execute(text(
        "SELECT DISTINCT provider, model FROM spend_daily WHERE day >= current_date - 30 AND model IS NOT NULL"))
    for provider, model in seen:
        if provider in found:
            found[provider].add(model)
    return {provider: sorted(models) for provider, models in found.items()}


def _request(provider: str, families: frozenset[Family], model: str) -> GatewayRequest | None:
    """The question "may this token use ``model``" as a request to ``provider``'s API, through the first of
    the token's endpoint families that names a model; None when it has none."""
    asked = probe(Api(provider), families, model)
    if asked is None:
        return None
    method, path, body = asked
    return GatewayRequest(request_id=f"access-{uuid.uuid4()}", method=method, path=path, credential=None,
                          credential_unreadable=False, content_type="application/json", body=body,
                          body_truncated=False)


@dataclass(slots=True)
class Verdict:
    """The gateway's answer for one token: usable at all, and if so which models of which provider.

    Tokens of one group share their ``models`` mapping (and its lists): read it, never change it."""

    record: TokenRecord
    #: Why the gateway refuses the token whatever it asks (its machine code), or None.
    refusal: str | None = None
    #: Provider -> the models of the universe the gateway lets it call now.
    models: dict[str, list[str]] = field(default_factory=dict)
    #: Provider -> why every model is refused, where one reason covers them all (e.g. a spent budget).
    blocked: dict[str, str] = field(default_factory=dict)
    usable: bool = False


def _group(record: TokenRecord) -> tuple[int, int, int, str]:
    # Records built through one Interner share their compiled profile, model list and family narrowing.
    return id(record.profile), id(record.catalog), id(record.families), record.environment


class Judge:
    """Asks :func:`authz.pipeline.judge` and the dry budget check, once per token group and model."""

    def __init__(self, models: dict[str, list[str]], limits: Limits, now: float,
                 served: Upstreams | None = None) -> None:
        self._models = models
        self._limits = limits
        self._now = self.now = now
        self._upstreams = served if served is not None else upstreams()
        self._providers = tuple(models)
        self._allowed: dict[tuple[tuple[int, int, int, str], str], list[str]] = {}
        #: The question for each (provider, families, model), shared by every group asking it.
        self._requests: dict[tuple[str, frozenset[Family], str], GatewayRequest | None] = {}
        #: Each budget scope's answer, shared by the tokens of one team, project or owner.
        self._budgets: dict[Any, Hit | None] = {}
        #: Each group's models per provider, shared by its tokens' verdicts.
        self._by_group: dict[tuple[int, int, int, str], dict[str, list[str]]] = {}

    def _allows(self, record: TokenRecord, families: frozenset[Family], provider: str, model: str) -> bool:
        key = (provider, families, model)
        if key not in self._requests:
            self._requests[key] = _request(provider, families, model)
        request = self._requests[key]
        return request is not None and judge(record, request, self._now, self._upstreams).allowed

    def _group_models(self, record: TokenRecord, provider: str) -> list[str]:
        key = (_group(record), provider)
        found = self._allowed.get(key)
        if found is None:
            families = families_of(record)
            found = self._allowed[key] = [model for model in self._models.get(provider, ())
                                          if self._allows(record, families, provider, model)]
        return found

    def verdict(self, record: TokenRecord) -> Verdict:
        refused = token_refusal(record, self._now)  # the first step of judge(): the token itself
        if refused is not None:
            return Verdict(record, refused.value)
        group = _group(record)
        models = self._by_group.get(group)
        if models is None:
            models = self._by_group[group] = {provider: self._group_models(record, provider)
                                              for provider in self._providers}
        if not any(models.values()):
            return Verdict(record, None, models)
        if self._limits.exhausted(record, self._now, self._budgets) is not None:
            return Verdict(record, None, {provider: [] for provider in models},
                           {provider: Outcome.BUDGET_EXCEEDED.value for provider, names in models.items() if names})
        return Verdict(record, None, models, usable=True)


def reason(code: str) -> str:
    """The gateway's own words for a refusal code."""
    try:
        return DENIALS[Outcome(code)].message
    except (ValueError, KeyError):
        return code


async def judged(session: AsyncSession, *, where: str = "", params: Iterable[Any] = ()
                 ) -> tuple[list[Verdict], Judge]:
    """The live tokens (narrowed by ``where``), each judged; and the judge, for more questions."""
    now = time.time()
    found = await records(session, where=where, params=params)
    judging = Judge(await universe(session), await limits(session, now), now)
    return [judging.verdict(record) for record in found], judging


def matches(model: str, query: str | None) -> bool:
    return query is None or fnmatchcase(model, query)


def reach(verdicts: Iterable[Verdict], *, provider: str | None, model: str | None,
          environment: str | None) -> list[dict[str, Any]]:
    """Who can reach ``provider`` (and ``model``, a name or a pattern; ``environment``) now: one row
    per token that can, with the models that answer the question."""
    return [grant_row(verdict, models) for verdict, models in
            grants(verdicts, provider=provider, model=model, environment=environment)]


def grant_row(verdict: Verdict, models: dict[str, list[str]]) -> dict[str, Any]:
    return {**describe(verdict.record), "models": models}


def grants(verdicts: Iterable[Verdict], *, provider: str | None, model: str | None,
           environment: str | None) -> list[tuple[Verdict, dict[str, list[str]]]]:
    """:func:`reach` before its rows are written out (a page needs only its own)."""
    rows = []
    # Tokens of one group share their model lists: each list is filtered once.
    narrowed: dict[int, list[str]] = {}
    for verdict in verdicts:
        record = verdict.record
        if verdict.refusal is not None or (environment is not None and record.environment != environment):
            continue
        granted = {}
        for p, models in verdict.models.items():
            if models and (provider is None or p == provider):
                if model is not None:
                    found = narrowed.get(id(models))
                    if found is None:
                        found = narrowed[id(models)] = [m for m in models if matches(m, model)]
                    models = found
                if models:
                    granted[p] = models
        if granted:
            rows.append((verdict, granted))
    return rows


def describe(record: TokenRecord) -> dict[str, Any]:
    return {"token_id": record.token_id, "token_name": record.name, "owner_type": record.owner_type,
            "owner_id": record.owner_id, "owner": record.user_email, "team": record.team,
            "team_id": record.team_id, "project_id": record.project_id, "environment": record.environment,
            "expires_at": datetime.fromtimestamp(record.expires_at, tz=UTC) if record.expires_at else None}


async def effective_statuses(session: AsyncSession, token_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, str]:
    """``usable``, or the gateway's reason for refusing, for each of these tokens (revoked ones
    included: ``token_revoked``)."""
    ids = [str(token_id) for token_id in token_ids]
    if not ids:
        return {}
    found: list[TokenRecord] = []
    if await mirror().current() is not None:
        cache = mirror().cache
        found = [record for token_id in ids if (record := cache.by_id(token_id)) is not None]
    # Revoked before the mirror's snapshot (tombstones are only kept for revocations it saw), or new.
    missing = set(ids) - {record.token_id for record in found}
    if missing:
        driver = await _driver(session)
        interner = Interner()
        rows = await driver.fetch(RECORD_SELECT + " WHERE t.id = ANY($1::uuid[])", list(missing))
        found += [record_from_row(row, interner) for row in rows]
    now = time.time()
    judging = Judge(await universe(session), await limits(session, now), now)
    return {uuid.UUID(record.token_id): token_access(judging.verdict(record), now)["effective"] for record in found}


def summary(verdicts: Iterable[Verdict]) -> dict[str, Any]:
    """Counts an auditor asks for first: tokens stored live, usable, refused and why, per provider."""
    refused: dict[str, int] = defaultdict(int)
    per_provider: dict[str, set[str]] = defaultdict(set)
    people: dict[str, set[str]] = defaultdict(set)
    total = usable = 0
    for verdict in verdicts:
        total += 1
        if verdict.refusal is not None:
            refused[verdict.refusal] += 1
            continue
        if verdict.usable:
            usable += 1
        for provider, models in verdict.models.items():
            if models:
                per_provider[provider].add(verdict.record.token_id)
                people[provider].add(f"{verdict.record.owner_type}:{verdict.record.owner_id}")
    return {"tokens_stored_live": total, "tokens_usable": usable, "tokens_refused": dict(refused),
            "by_provider": {p: {"tokens": len(per_provider[p]), "identities": len(people[p])}
                            for p in providers()}}


def token_access(verdict: Verdict, now: float) -> dict[str, Any]:
    record = verdict.record
    stored = "expired" if record.expires_at is not None and now >= record.expires_at else "active"
    effective = verdict.refusal or ("usable" if verdict.usable else next(iter(verdict.blocked.values()),
                                                                          "no_model"))
    return {"token_id": record.token_id, "token_name": record.name, "team": record.team,
            "environment": record.environment, "stored": stored, "effective": effective,
            "reason": None if effective == "usable" else reason(effective),
            "models": verdict.models, "blocked": verdict.blocked}


async def of_identity(session: AsyncSession, *, identity_type: str, identity_id: uuid.UUID,
                      team_id: uuid.UUID | None = None) -> list[dict[str, Any]]:
    """Every live token of a person or a service account (acting for ``team_id``, if given), as the
    gateway sees it now."""
    column = "t.user_id" if identity_type == "user" else "t.service_account_id"
    where, params = f"{column} = $1::uuid", [str(identity_id)]
    if team_id is not None:
        where, params = where + " AND t.team_id = $2::uuid", [*params, str(team_id)]
    verdicts, judging = await judged(session, where=where, params=params)
    return [token_access(verdict, judging.now) for verdict in verdicts]


async def refused(session: AsyncSession, *, team_id: uuid.UUID | None = None) -> tuple[list[Verdict], float]:
    """Tokens whose own row says active (not revoked, not expired) that the gateway refuses (each
    written out by :func:`refusal_row`), and the moment they were judged."""
    where, params = ("t.team_id = $1::uuid", [str(team_id)]) if team_id is not None else ("", [])
    verdicts, judging = await judged(session, where=where, params=params)
    now = judging.now
    return [verdict for verdict in verdicts if not verdict.usable and (
        verdict.record.expires_at is None or now < verdict.record.expires_at)], now


def refusal_row(verdict: Verdict, now: float) -> dict[str, Any]:
    record = verdict.record
    return {"token": token_access(verdict, now), "owner": record.user_email, "owner_type": record.owner_type,
            "owner_id": record.owner_id}


async def annotate(session: AsyncSession, tokens: Iterable[Any]) -> None:
    """Give each token row its ``effective_status`` (see :func:`effective_statuses`) beside its stored one."""
    rows = list(tokens)
    statuses = await effective_statuses(session, (row.id for row in rows))
    for row in rows:
        row.effective_status = statuses.get(row.id, "token_unknown")
