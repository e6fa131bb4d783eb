"""Read token records from Postgres: the whole snapshot, or the tokens a notification names.

One row per token carries everything a Check needs (the owner's state, membership, the team's
access profile), so a record is built from its row alone. Rows are turned into records through an
:class:`~authz.cache.Interner`, so the rows of one snapshot that share a model list or a profile
version share one compiled object. Nothing here touches the cache; :mod:`authz.listener` decides
what to do with the records.

A snapshot also carries the keys (:func:`~authz.cache.revoked_key`) of every revoked token, read in
the same repeatable-read transaction as the live ones, so a restart forgets no revocation.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

import asyncpg

from authz.cache import NO_PROFILE, Interner, ProfileCatalog, TokenRecord, family_set, revoked_key
from authz.limits import Policy, defaults_from, policy_from
from authz.mcp import ToolCatalog
from authz.prices import Override, PriceTable

#: One row per token with everything a Check needs: the owner's state (a user or a service account),
#: whether the owner still belongs to the token's team, and the team's access profile. (The control
#: plane's effective-access report reads tokens with it too.)
RECORD_SELECT = """
    SELECT t.id::text AS token_id, t.token_hash, t.user_id::text AS user_id,
           COALESCE(u.email, 'service-account:' || sa.name) AS email, tm.name AS team,
           t.environment, t.models, extract(epoch FROM t.expires_at)::float8 AS expires_at,
           COALESCE(u.status = 'active', sa.status = 'active') AS owner_active,
           t.revoked_at IS NOT NULL AS revoked, t.name,
           t.team_id IS NOT NULL AS has_team, p.id::text AS profile_id,
           extract(epoch FROM p.updated_at)::float8 AS profile_version, p.catalog::text AS catalog,
           p.environments AS profile_environments, p.budget_defaults::text AS budget_defaults,
           p.rate_limit_defaults::text AS rate_limit_defaults,
           CASE WHEN t.team_id IS NULL THEN true
                WHEN t.user_id IS NOT NULL THEN m.user_id IS NOT NULL
                ELSE sa.team_id = t.team_id END AS member,
           t.team_id::text AS team_id, t.service_account_id::text AS service_account_id,
           t.project_id::text AS project_id, pj.name AS project,
           p.endpoints AS profile_endpoints, p.tools::text AS profile_tools, t.endpoints AS token_endpoints
"""
#: The tables :data:`RECORD_SELECT` reads, with its aliases (``t``, ``m``, ``u``, ``sa``, ``tm``, ``p``, ``pj``).
RECORD_FROM = """
    FROM tokens t
    LEFT JOIN memberships m ON m.user_id = t.user_id AND m.team_id = t.team_id
    LEFT JOIN users u ON u.id = t.user_id
    LEFT JOIN service_accounts sa ON sa.id = t.service_account_id
    LEFT JOIN teams tm ON tm.id = t.team_id
    LEFT JOIN access_profiles p ON p.id = tm.profile_id
    LEFT JOIN projects pj ON pj.id = t.project_id
"""
RECORD_SELECT += RECORD_FROM
SNAPSHOT_SQL = RECORD_SELECT + " WHERE t.revoked_at IS NULL"
#: Only the hash: a revoked token needs nothing else to be refused as revoked.
REVOKED_SQL = "SELECT token_hash FROM tokens WHERE revoked_at IS NOT NULL"
# Revoked tokens included: a token revoked since the snapshot must become a tombstone.
_BY_TOKEN_SQL = RECORD_SELECT + " WHERE t.id = ANY($1::uuid[])"
_LIVE = " AND t.revoked_at IS NULL"
#: NOTIFY payload kind -> the live tokens it can affect.
_AFFECTED_SQL = {
    "user": RECORD_SELECT + " WHERE t.user_id = ANY($1::uuid[])" + _LIVE,
    "team": RECORD_SELECT + " WHERE t.team_id = ANY($1::uuid[])" + _LIVE,
    "profile": RECORD_SELECT + " WHERE tm.profile_id = ANY($1::uuid[])" + _LIVE,
    "sa": RECORD_SELECT + " WHERE t.service_account_id = ANY($1::uuid[])" + _LIVE,
    # "member:<user>:<team>" is looked up by user alone: every live token of the user is re-read,
    # not only that team's. Broader than needed but harmless, and one query serves the whole batch.
    "member": RECORD_SELECT + " WHERE t.user_id = ANY($1::uuid[])" + _LIVE,
    "project": RECORD_SELECT + " WHERE t.project_id = ANY($1::uuid[])" + _LIVE,
}
#: The NOTIFY payload kinds :func:`load_affected` understands, besides ``token``.
AFFECTED_KINDS = tuple(_AFFECTED_SQL)


def _compile_profile(row: asyncpg.Record) -> ProfileCatalog:
    entries = [(e["provider"], e["pattern"], tuple(e["environments"]) if e.get("environments") else None,
                e.get("upstream") or None)
               for e in json.loads(row["catalog"])]
    budgets, rate_limits = defaults_from(json.loads(row["budget_defaults"] or "{}"),
                                         json.loads(row["rate_limit_defaults"] or "{}"))
    tools = json.loads(row["profile_tools"] or "[]")
    return ProfileCatalog(entries, row["profile_environments"], budgets, rate_limits,
                          families=family_set(row["profile_endpoints"] or ()),
                          tools=ToolCatalog([(t["server"], t["tools"]) for t in tools]) if tools else None)


def _profile(row: asyncpg.Record, interner: Interner) -> ProfileCatalog | None:
    if not row["has_team"]:
        return None  # a token from before teams: its own model list is its policy
    if row["profile_id"] is None:
        return NO_PROFILE  # a team without a profile may use nothing
    # Keyed by id and version (updated_at), so a million rows of a few profiles parse a few catalogs.
    return interner.profile((row["profile_id"], row["profile_version"]), _compile_profile, row)


def record_from_row(row: asyncpg.Record, interner: Interner) -> TokenRecord:
    account = row["service_account_id"]
    return TokenRecord(
        token_id=row["token_id"],
        token_hash=row["token_hash"],
        user_id=row["user_id"],
        user_email=row["email"],
        team=row["team"],
        environment=row["environment"],
        catalog=interner.catalog(row["models"]),
        expires_at=row["expires_at"],
        owner_active=row["owner_active"],
        revoked=row["revoked"],
        name=row["name"],
        profile=_profile(row, interner),
        member=row["member"],
        team_id=interner.text(row["team_id"]),
        owner_type="service_account" if account else "user",
        owner_id=interner.text(account) if account else row["user_id"],
        project_id=interner.text(row["project_id"]),
        project=interner.text(row["project"]),
        families=interner.families(row["token_endpoints"]),
    )


@dataclass(slots=True)
class Snapshot:
    #: Every live token.
    records: list[TokenRecord]
    #: The :func:`~authz.cache.revoked_key` of every revoked token.
    revoked: set[bytes]


async def load_snapshot(connection: asyncpg.Connection, interner: Interner, *, batch: int = 20_000) -> Snapshot:
    """Every live token with its owner's state, and every revoked token's key, streamed through
    cursors to bound memory, in one consistent view of the database."""
    records: list[TokenRecord] = []
    revoked: set[bytes] = set()
    async with connection.transaction(readonly=True, isolation="repeatable_read"):
        async for row in connection.cursor(SNAPSHOT_SQL, prefetch=batch):
            records.append(record_from_row(row, interner))
        async for row in connection.cursor(REVOKED_SQL, prefetch=batch):
            revoked.add(revoked_key(row["token_hash"]))
    return Snapshot(records, revoked)


async def load_tokens(connection: asyncpg.Connection, token_ids: Iterable[str],
                      interner: Interner) -> list[TokenRecord]:
    """The named tokens, revoked ones included; a token that is not returned no longer exists."""
    return [record_from_row(row, interner) for row in await connection.fetch(_BY_TOKEN_SQL, list(token_ids))]


async def load_affected(connection: asyncpg.Connection, kind: str, idents: Iterable[str],
                        interner: Interner) -> list[TokenRecord]:
    """The live tokens a change to these users, teams, profiles, service accounts or memberships
    (``kind`` from :data:`AFFECTED_KINDS`) can affect."""
    return [record_from_row(row, interner) for row in await connection.fetch(_AFFECTED_SQL[kind], list(idents))]


_BUDGETS_SQL = ("SELECT scope_type, scope_id, amount_usd, period, window_start, window_end, posture, thresholds "
                "FROM budgets")
_LIMITS_SQL = "SELECT scope_type, scope_id, rpm, tpm FROM rate_limits"
_OVERRIDES_SQL = ("SELECT id::text AS id, provider, model, input_per_mtok, cached_input_per_mtok, output_per_mtok, "
                  "extract(epoch FROM effective_from)::float8 AS effective_from FROM price_overrides")


async def load_policy(connection: asyncpg.Connection) -> Policy:
    """The explicit budgets and rate limits and the price overrides, in one consistent view (inside a
    caller's transaction, the control plane's, that transaction's view)."""
    if connection.is_in_transaction():
        return await _read_policy(connection)
    async with connection.transaction(readonly=True, isolation="repeatable_read"):
        return await _read_policy(connection)


async def _read_policy(connection: asyncpg.Connection) -> Policy:
    budgets = await connection.fetch(_BUDGETS_SQL)
    limits = await connection.fetch(_LIMITS_SQL)
    overrides = await connection.fetch(_OVERRIDES_SQL)
    return policy_from(budgets, limits, PriceTable(Override(**dict(row)) for row in overrides))
