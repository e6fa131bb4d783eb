"""The console's token search: the admin API's token list with the filters a person looking for a token needs.

Every filter the admin API has is the API's own (:func:`lifecycle.list_query`, :func:`lifecycle.dormant_query`)
and a page is :func:`lifecycle.page` whenever the sort is one the API offers, so the console and
``GET /api/v1/tokens`` cannot disagree. On top, and only here:

* ``owner``: a substring of the owner's e-mail or display name, or of a service account's name;
* ``expires_before``: a stored expiry before a moment;
* ``effective``: what the gateway would do with the token now (``usable`` or its refusal code), decided
  by :mod:`.access` (the gateway's own code). That is not a column: every live token in the search's
  scope (the caller's team, or the ``team_id`` / ``user_id`` / ``service_account_id`` filter) is judged
  (:func:`access.judged`) and the page is then cut in SQL to the matching ids. Its cost is that of
  judging those tokens, a few µs each (about 0.8 s at 100k live tokens, the ``/access`` figure in
  ``bench/RESULTS.md``), paid on every page of a filtered list; without the filter only the page's
  50 rows are judged (:func:`access.annotate`);
* the sort ``revoked_at`` (newest revocations first with ``-revoked_at``), which the API does not offer:
  paged here with :func:`rows.paginate`, the same keyset cursors, a NULL sorting as the earliest.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import Select, any_, false, func, literal, or_, select
from sqlalchemy.dialects.postgresql import ARRAY, UUID
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.models import Project, ServiceAccount, Team, Token, User
from controlplane.services import access, lifecycle
from controlplane.services.rows import EPOCH, paginate

#: The sort keys the admin API offers (:func:`lifecycle.page`), and the one only the console adds.
API_SORTS = ("created_at", "name", "last_used_at", "expires_at")
SORTS = (*API_SORTS, "revoked_at")
#: What ``effective`` can be: usable, or a reason the gateway refuses a token whatever it asks
#: (``authz.pipeline.token_refusal``), a spent budget, or no model left to call.
EFFECTIVE = ("usable", "token_revoked", "token_expired", "owner_disabled", "not_a_member", "team_has_no_profile",
             "environment_not_allowed", "budget_exceeded", "no_model")


def search_query(*, within_team: uuid.UUID | None, team_id: uuid.UUID | None = None,
                 user_id: uuid.UUID | None = None, service_account_id: uuid.UUID | None = None,
                 environment: str | None = None, state: str | None = None, name: str | None = None,
                 owner: str | None = None, dormant_days: int | None = None,
                 expires_before: datetime | None = None) -> Select:
    """The tokens matching every filter given (dormant ones are live by definition: with ``state``
    revoked or expired, none match)."""
    if dormant_days is not None:
        query = lifecycle.dormant_query(dormant_days, within_team=within_team, team_id=team_id)
        if state not in (None, "active"):
            query = query.where(false())
        extra = lifecycle.list_query(user_id=user_id, service_account_id=service_account_id,
                                     environment=environment, name=name)
        if extra.whereclause is not None:
            query = query.where(extra.whereclause)
    else:
        query = lifecycle.list_query(within_team=within_team, user_id=user_id, team_id=team_id,
                                     service_account_id=service_account_id, environment=environment,
                                     state=state, name=name)
    if owner:
        needle = owner.strip().lower()
        people = select(User.id).where(or_(func.lower(User.email).contains(needle, autoescape=True),
                                           func.lower(func.coalesce(User.display_name, ""))
                                           .contains(needle, autoescape=True)))
        accounts = select(ServiceAccount.id).where(func.lower(ServiceAccount.name).contains(needle, autoescape=True))
        query = query.where(or_(Token.user_id.in_(people), Token.service_account_id.in_(accounts)))
    if expires_before is not None:
        query = query.where(Token.expires_at < expires_before)
    return query


def _scope(within_team: uuid.UUID | None, team_id: uuid.UUID | None, user_id: uuid.UUID | None,
           service_account_id: uuid.UUID | None) -> tuple[str, list[str]]:
    """The tokens to judge, as :func:`access.records` narrows them (SQL over ``t``)."""
    clauses, params = [], []
    for column, value in (("t.team_id", within_team), ("t.team_id", team_id), ("t.user_id", user_id),
                          ("t.service_account_id", service_account_id)):
        if value is not None:
            params.append(str(value))
            clauses.append(f"{column} = ${len(params)}::uuid")
    return " AND ".join(clauses), params


async def with_effective(session: AsyncSession, query: Select, code: str, *, within_team: uuid.UUID | None,
                         team_id: uuid.UUID | None = None, user_id: uuid.UUID | None = None,
                         service_account_id: uuid.UUID | None = None) -> Select:
    """``query`` cut to the tokens the gateway would treat as ``code`` now (see the module docstring for
    the cost). Revoked tokens are never judged (the gateway drops them from its cache): the gateway's
    first check refuses every one of them as ``token_revoked``."""
    where, params = _scope(within_team, team_id, user_id, service_account_id)
    verdicts, judging = await access.judged(session, where=where, params=params)
    ids = [uuid.UUID(verdict.record.token_id) for verdict in verdicts
           if access.token_access(verdict, judging.now)["effective"] == code]
    matching = Token.id == any_(literal(ids, ARRAY(UUID(as_uuid=True))))
    if code == "token_revoked":
        return query.where(or_(Token.revoked_at.is_not(None), matching))
    return query.where(matching)


async def page(session: AsyncSession, query: Select, *, sort: str, cursor: str | None, limit: int) -> dict[str, Any]:
    """One page of ``query``: the admin API's own paging for its sorts, the same keyset paging by the
    revocation time for ``revoked_at``."""
    if sort.lstrip("-") in API_SORTS:
        return await lifecycle.page(session, query, sort=sort, cursor=cursor, limit=limit)
    return await paginate(session, query, sort=func.coalesce(Token.revoked_at, EPOCH), id_col=Token.id,
                          cursor=cursor, limit=limit, descending=sort.startswith("-"))


async def count(session: AsyncSession, query: Select) -> int:
    return int(await session.scalar(select(func.count()).select_from(query.order_by(None).subquery())) or 0)


async def names(session: AsyncSession, tokens: Iterable[Any]) -> dict[str, dict[uuid.UUID, str]]:
    """Who and what the tokens (rows or their documents) name, by id: users (e-mail), service accounts,
    teams and projects (name), read in one query per kind."""
    rows = list(tokens)
    wanted: dict[str, set[uuid.UUID]] = {"users": set(), "accounts": set(), "teams": set(), "projects": set()}
    for token in rows:
        for kind, value in (("users", token.user_id), ("users", token.backup_owner_id),
                            ("accounts", token.service_account_id), ("teams", token.team_id),
                            ("projects", token.project_id)):
            if value is not None:
                wanted[kind].add(value)
    found: dict[str, dict[uuid.UUID, str]] = {kind: {} for kind in wanted}
    for kind, id_col, label in (("users", User.id, User.email), ("accounts", ServiceAccount.id, ServiceAccount.name),
                                ("teams", Team.id, Team.name), ("projects", Project.id, Project.name)):
        if wanted[kind]:
            result = await session.execute(select(id_col, label).where(id_col.in_(wanted[kind])))
            found[kind] = {row_id: text for row_id, text in result.all()}
    return found


async def successors(session: AsyncSession, token_id: uuid.UUID) -> list[Token]:
    """The tokens minted by rotating this one."""
    return list((await session.scalars(select(Token).where(Token.rotated_from == token_id)
                                       .order_by(Token.created_at).limit(20))).all())


