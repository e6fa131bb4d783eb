"""The credential register: every credential that can make a gateway request or change Keyward, one
row each, with who answers for it, what it is for, what it can reach now, how it is used, when it must
be rotated, what ends it, and what is open about it.

It is one module over 450 lines on purpose: the four kinds of row share one set of reads, one ordering
and one set of filter definitions, and splitting them would spread each definition over several files.

Rows (``subject_type`` / ``kind``):

* ``token`` / ``personal``: a person's live token (not revoked, not expired);
* ``service_account`` / ``service``: a service account, whatever its status, and ``token`` /
  ``service`` each of its live tokens;
* ``api_credential`` / ``admin``: a live admin-API credential; ``scim_credential`` / ``scim``: a live
  SCIM credential (its owner is its SCIM connection).

Asked for ``subject_ids`` (an access review freezing its items), those rows come whatever their state:
a revoked token is then a row whose effective status says so.

What each row says comes from one place each: effective access from the gateway's own decision code
(:func:`controlplane.services.access.judged`, so the register cannot disagree with the gateway);
requests in the last 7 and 30 days, and the models called, from the spend rollup (``spend_daily``,
one grouped query); the rotation cadence from the team's access profile (``rotation_days``: a token is
due that many days after it was minted, a rotation mints its successor); open exceptions and the last
review decision from ``access_exceptions`` and ``access_review_items``. Everything is read with a
handful of set-based queries, whatever the number of rows, in two passes: the database orders every
candidate and computes what the cheap filters need (orphaned, overdue); only the rows returned are then
read whole, judged and built (:func:`register_page`: one page; :func:`register_rows`: all of them).
``broader`` is the exception: it asks about every candidate's effective catalog, so every candidate is
judged.

The filters, defined:

* ``orphaned``: the owner departed (not active, or deleted) or is unknown. For a service account and
  its tokens: its business or technical owner, or it is flagged for reassignment. An admin credential
  without an ``owner_id`` is orphaned; a SCIM credential never is (its connection owns it).
* ``overdue``: any of ``rotation_overdue`` (past its rotation due date), ``never_used`` (never used, and
  minted more than 7 days ago), ``dormant`` (last used more than 30 days ago).
* ``broader``: it called at least one model in the last 30 days, and the gateway would let it reach a
  model it did not call. ``usage.models_30d`` lists the models it did call, per provider: narrowing
  the token to them is what a reviewer can offer. (A token that called nothing is ``never_used`` or
  ``dormant`` instead.)
"""

from __future__ import annotations

import csv
import heapq
import io
import json
import uuid
from collections import defaultdict
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.core.config import get_settings
from controlplane.services import access

KINDS = ("personal", "service", "admin", "scim")
NEVER_USED_DAYS = 7
DORMANT_DAYS = 30
USAGE_DAYS = 30
_KIND_ORDER = {kind: index for index, kind in enumerate(KINDS)}
_OWNER_ROLES = ("business", "technical", "security", "finance")
#: Every candidate token with what ordering and the cheap filters need, computed by the database:
#: orphaned (a person's token: its owner is not active, deleted or unknown; a service account's: its
#: business or technical owner is, or it is flagged), rotation overdue, never used, dormant.
_LIGHT = (
    "SELECT t.id::text AS id, t.service_account_id::text AS sa, COALESCE(tm.name, '') AS team_name, t.name,"
    " CASE WHEN t.service_account_id IS NOT NULL THEN t.last_used_at END AS last_used_at,"
    " CASE WHEN t.service_account_id IS NULL THEN u.id IS NULL OR u.status <> 'active' OR u.deleted_at IS NOT NULL"
    " ELSE sa.reassign_by IS NOT NULL OR bo.status IS DISTINCT FROM 'active' OR bo.deleted_at IS NOT NULL"
    " OR tec.status IS DISTINCT FROM 'active' OR tec.deleted_at IS NOT NULL END AS orphaned,"
    " array_remove(ARRAY["
    "CASE WHEN t.created_at + make_interval(days => p.rotation_days) <= {now} THEN 'rotation_overdue' END,"
    " CASE WHEN t.last_used_at IS NULL AND t.created_at < {now} - interval '{never} days' THEN 'never_used' END,"
    " CASE WHEN t.last_used_at < {now} - interval '{dormant} days' THEN 'dormant' END], NULL) AS overdue"
    " FROM tokens t LEFT JOIN users u ON u.id = t.user_id"
    " LEFT JOIN service_accounts sa ON sa.id = t.service_account_id"
    " LEFT JOIN users bo ON bo.id = sa.business_owner_id LEFT JOIN users tec ON tec.id = sa.technical_owner_id"
    " LEFT JOIN teams tm ON tm.id = t.team_id LEFT JOIN access_profiles p ON p.id = tm.profile_id WHERE ")
_LIGHT_ORDER = (""" ORDER BY COALESCE(tm.name, '') COLLATE "C", t.service_account_id IS NOT NULL,"""
                ' t.name COLLATE "C", t.id::text COLLATE "C"')
_USAGE_SELECT = ("SELECT token_id::text, service_account_id::text, provider, model,"
                 " COALESCE(sum(requests) FILTER (WHERE day > $1), 0)::bigint AS r7, sum(requests)::bigint AS r30"
                 " FROM spend_daily WHERE day > $2 AND (token_id IS NOT NULL OR service_account_id IS NOT NULL)")
_USAGE_GROUPS = " GROUP BY token_id, service_account_id, provider, model"
_USAGE = _USAGE_SELECT + _USAGE_GROUPS
_USAGE_OF = (_USAGE_SELECT + " AND (token_id = ANY($3::uuid[]) OR service_account_id = ANY($4::uuid[]))"
             + _USAGE_GROUPS)
_TOKENS = ("SELECT t.id, t.name, t.hint, t.user_id, t.service_account_id, t.team_id, t.project_id, t.environment,"
           " t.created_at, t.last_used_at, t.expires_at, t.revoked_at, t.rotated_from IS NOT NULL AS rotated,"
           " t.purpose, t.workload, t.secret_location, t.backup_owner_id FROM tokens t WHERE ")
_CREDENTIALS = ("SELECT id, name, hint, role, team_id, owner_id, purpose, secret_location, created_at, last_used_at,"
                " expires_at, revoked_at, reassign_by, flagged_reason FROM api_credentials")
_CREDENTIALS_BY_ID = _CREDENTIALS + " WHERE id = ANY($1::uuid[])"
_LIVE_CREDENTIALS = _CREDENTIALS + " WHERE revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $1)"
_SCIM = ("SELECT c.id, c.hint, c.created_at, c.last_used_at, c.revoked_at, s.id AS connection_id,"
         " s.name AS connection FROM scim_credentials c JOIN scim_connections s ON s.id = c.connection_id")
_SCIM_BY_ID = _SCIM + " WHERE c.id = ANY($1::uuid[])"
_LIVE_SCIM = _SCIM + " WHERE c.revoked_at IS NULL"


def _iso(value: datetime | date | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):  # as the rest of the API writes times: UTC, with a Z
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return value.isoformat()


async def _driver(session: AsyncSession) -> Any:
    connection = await session.connection()
    raw = await connection.get_raw_connection()
    return raw.driver_connection


class _Where:
    """SQL conditions over ``tokens t`` with ``$n`` parameters, shared by the register's token query and
    the gateway's own judgement (:func:`access.judged`), so both read the same tokens."""

    def __init__(self) -> None:
        self.clauses: list[str] = []
        self.params: list[Any] = []

    def add(self, clause: str, *values: Any) -> None:
        numbered = clause
        for value in values:
            self.params.append(value)
            numbered = numbered.replace("?", f"${len(self.params)}", 1)
        self.clauses.append(numbered)

    @property
    def sql(self) -> str:
        return " AND ".join(f"({c})" for c in self.clauses)


def _person(row: Any) -> dict[str, Any]:
    return {"type": "user", "id": row["id"], "email": row["email"], "name": row["display_name"],
            "status": "deleted" if row["deleted_at"] is not None else row["status"],
            "employment_type": row["employment_type"], "end_date": _iso(row["end_date"])}


class _People:
    """Users by id (text), each made a document the first time a row needs it."""

    def __init__(self, rows: Iterable[Any]) -> None:
        self._rows = {r["id"]: r for r in rows}
        self._documents: dict[str, dict[str, Any]] = {}

    def get(self, ident: str) -> dict[str, Any] | None:
        found = self._documents.get(ident)
        if found is None:
            row = self._rows.get(ident)
            if row is None:
                return None
            found = self._documents[ident] = _person(row)
        return found


def _gone(person: dict[str, Any] | None) -> bool:
    return person is None or person["status"] != "active"


@dataclass(slots=True)
class _Entry:
    """A row before it is built: what ordering and the cheap filters need, and the record to build it
    from. Building (effective access above all) is done only for the rows returned."""

    key: tuple[Any, ...]
    subject_type: str
    ident: str
    orphaned: bool
    overdue: list[str]
    record: Any


@dataclass
class _Filters:
    team_id: uuid.UUID | None = None
    environment: str | None = None
    owner_id: uuid.UUID | None = None
    kinds: set[str] = field(default_factory=lambda: set(KINDS))
    ids: set[str] | None = None


class _Register:
    """Everything the register reads, loaded with a handful of set-based queries; rows are built from it
    on demand."""

    def __init__(self, filters: _Filters, moment: datetime) -> None:
        self.filters = filters
        self.moment = moment
        self.where = _Where()
        #: Every candidate token, light: its order and flags, computed by the database.
        self.light: list[Any] = []
        self.account_light: dict[str, list[Any]] = defaultdict(list)
        #: The tokens whose rows are built, whole (:meth:`complete`).
        self.full: dict[str, Any] = {}
        self.account_tokens: dict[str, list[Any]] = defaultdict(list)
        self.conditions: list[str] = []
        self.params: list[Any] = []
        self.by_token: dict[str, dict[str, Any]] = {}
        self.by_account: dict[str, dict[str, Any]] = {}
        self.usage_loaded = False
        self.verdicts: dict[str, access.Verdict] = {}
        self.judged_at = moment.timestamp()
        self.built: dict[str, dict[str, Any]] = {}
        self.grace_days = get_settings().reassign_grace_days

    async def load(self, session: AsyncSession) -> None:
        f, moment = self.filters, self.moment
        driver = self.driver = await _driver(session)
        self.people = _People(await driver.fetch(
            "SELECT id::text, email, display_name, status, deleted_at, employment_type, end_date FROM users"))
        self.teams = {str(r["id"]): r for r in await driver.fetch(
            "SELECT tm.id, tm.name, tm.deleted_at, p.rotation_days, p.rotation_disable_days FROM teams tm"
            " LEFT JOIN access_profiles p ON p.id = tm.profile_id")}
        self.projects = {str(r["id"]): {"id": str(r["id"]), "name": r["name"], "status": r["status"]}
                         for r in await driver.fetch("SELECT id, name, status FROM projects")}
        self.accounts = {str(r["id"]): r for r in await driver.fetch(
            "SELECT id, name, team_id, project_id, status, business_owner_id, technical_owner_id, security_owner_id,"
            " finance_owner_id, purpose, workload, reassign_by, flagged_reason, created_at FROM service_accounts")}

        # The tokens: the same conditions serve this query and the gateway's judgement (access.judged).
        where = self.where
        if f.ids is not None:
            where.add("t.id = ANY(?::uuid[]) OR t.service_account_id = ANY(?::uuid[])", list(f.ids), list(f.ids))
        if f.team_id is not None:
            where.add("t.team_id = ?::uuid", str(f.team_id))
        if f.environment is not None:
            where.add("t.environment = ?", f.environment)
        if "personal" not in f.kinds:
            where.add("t.user_id IS NULL")
        if "service" not in f.kinds:
            where.add("t.service_account_id IS NULL")
        if f.owner_id is not None:
            where.add("t.user_id = ?::uuid OR t.service_account_id IN (SELECT s.id FROM service_accounts s WHERE"
                      " ?::uuid IN (s.business_owner_id, s.technical_owner_id, s.security_owner_id,"
                      " s.finance_owner_id))", str(f.owner_id), str(f.owner_id))
        if f.kinds & {"personal", "service"}:
            self.conditions = [where.sql] if where.clauses else []
            self.params = [*where.params, moment]
            # The moment is a parameter of every token query (:meth:`complete` reuses these conditions).
            self.conditions.append(f"${len(self.params)}::timestamptz IS NOT NULL")
            if f.ids is None:  # asked for by id, a token is a row whatever its state
                self.conditions.append(f"t.revoked_at IS NULL AND (t.expires_at IS NULL OR t.expires_at > "
                                       f"${len(self.params)})")
            now = f"${len(self.params)}::timestamptz"
            self.light = await driver.fetch(
                _LIGHT.format(now=now, never=NEVER_USED_DAYS, dormant=DORMANT_DAYS)
                + " AND ".join(f"({c})" for c in self.conditions) + _LIGHT_ORDER, *self.params)
            for t in self.light:
                if t["sa"] is not None:
                    self.account_light[t["sa"]].append(t)
        self.live_environments: dict[str, set[str]] = defaultdict(set)
        for r in await driver.fetch(
                "SELECT DISTINCT service_account_id, environment FROM tokens WHERE service_account_id IS NOT NULL"
                " AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $1)", moment):
            self.live_environments[str(r["service_account_id"])].add(r["environment"])

        self.exceptions: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        for r in await driver.fetch(
                "SELECT id, subject_type, subject_id, condition, status, expires_at FROM access_exceptions"
                " WHERE status IN ('pending', 'approved') AND expires_at > $1 ORDER BY expires_at", moment):
            self.exceptions[(r["subject_type"], str(r["subject_id"]))].append(
                {"id": str(r["id"]), "condition": r["condition"], "status": r["status"],
                 "expires_at": _iso(r["expires_at"])})
        self.reviews = {(r["subject_type"], str(r["subject_id"])): {
            "decision": r["decision"], "reason": r["reason"], "decided_by": r["decided_by"],
            "decided_at": _iso(r["decided_at"]), "review_id": str(r["review_id"]), "item_id": str(r["id"])}
            for r in await driver.fetch(
                "SELECT DISTINCT ON (subject_type, subject_id) id, review_id, subject_type, subject_id, decision,"
                " reason, decided_by, decided_at FROM access_review_items WHERE decided_at IS NOT NULL"
                " ORDER BY subject_type, subject_id, decided_at DESC")}
        self.credentials: list[Any] = []
        if "admin" in f.kinds and f.environment is None:
            found = await driver.fetch(_CREDENTIALS_BY_ID if f.ids is not None else _LIVE_CREDENTIALS,
                                       list(f.ids) if f.ids is not None else moment)
            self.credentials = [c for c in found
                                if (f.team_id is None or str(c["team_id"]) == str(f.team_id))
                                and (f.owner_id is None or str(c["owner_id"]) == str(f.owner_id))]
        self.scim: list[Any] = []
        if "scim" in f.kinds and f.environment is None and f.team_id is None and f.owner_id is None:
            self.scim = list(await driver.fetch(_SCIM_BY_ID if f.ids is not None else _LIVE_SCIM,
                                                *([list(f.ids)] if f.ids is not None else [])))

    # -- the cheap pass: every candidate row's order and flags ---------------------------------------

    def _idle(self, created: datetime | None, last_used: datetime | None) -> list[str]:
        if last_used is None:
            old = created is not None and created < self.moment - timedelta(NEVER_USED_DAYS)
            return ["never_used"] if old else []
        return ["dormant"] if last_used < self.moment - timedelta(DORMANT_DAYS) else []

    def _due(self, t: Any) -> datetime | None:
        team = self.teams.get(str(t["team_id"])) if t["team_id"] else None
        cadence = team["rotation_days"] if team is not None else None
        return t["created_at"] + timedelta(days=cadence) if cadence else None

    def _account_lost(self, account: Any) -> bool:
        return (_gone(self.people.get(str(account["business_owner_id"])))
                or _gone(self.people.get(str(account["technical_owner_id"])))
                or account["reassign_by"] is not None)

    def _team_name(self, ident: Any) -> str:
        team = self.teams.get(str(ident)) if ident else None
        return team["name"] if team is not None else ""

    @staticmethod
    def _token_entry(t: Any) -> _Entry:
        return _Entry((t["team_name"], 1 if t["sa"] else 0, True, t["name"], t["id"]), "token", t["id"],
                      t["orphaned"], t["overdue"], t)

    def entries(self) -> list[_Entry]:
        f = self.filters
        tokens = [self._token_entry(t) for t in self.light if f.ids is None or t["id"] in f.ids]
        found: list[_Entry] = []
        if "service" in f.kinds:
            for ident, account in self.accounts.items():
                if f.ids is not None and ident not in f.ids:
                    continue
                if f.team_id is not None and str(account["team_id"]) != str(f.team_id):
                    continue
                owners = {str(account[f"{role}_owner_id"]) for role in _OWNER_ROLES if account[f"{role}_owner_id"]}
                if f.owner_id is not None and str(f.owner_id) not in owners:
                    continue
                if f.environment is not None and f.environment not in self.live_environments.get(ident, ()):
                    continue
                light = self.account_light.get(ident, [])
                late = ["rotation_overdue"] if any("rotation_overdue" in t["overdue"] for t in light) else []
                if light:
                    last = max((t["last_used_at"] for t in light if t["last_used_at"]), default=None)
                    late += self._idle(account["created_at"], last)
                found.append(_Entry((self._team_name(account["team_id"]), _KIND_ORDER["service"], False,
                                     account["name"], ident), "service_account", ident,
                                    self._account_lost(account), late, account))
        for c in self.credentials:
            owner = self.people.get(str(c["owner_id"])) if c["owner_id"] else None
            found.append(_Entry((self._team_name(c["team_id"]), _KIND_ORDER["admin"], True, c["name"], str(c["id"])),
                                "api_credential", str(c["id"]), _gone(owner) or c["reassign_by"] is not None,
                                self._idle(c["created_at"], c["last_used_at"]), c))
        for c in self.scim:
            found.append(_Entry(("", _KIND_ORDER["scim"], True, c["connection"], str(c["id"])), "scim_credential",
                                str(c["id"]), False, self._idle(c["created_at"], c["last_used_at"]), c))
        found.sort(key=lambda e: e.key)
        # The tokens come ordered by the database (byte order, as Python compares), the rest sorted here.
        return list(heapq.merge(tokens, found, key=lambda e: e.key))

    # -- the gateway's judgement, for the tokens whose rows are built ------------------------------

    async def _usage_of(self, tokens: list[str] | None, accounts: list[str] | None) -> None:
        """Requests in 7 and 30 days and the models called, per token and service account (``None``: of
        every one): one grouped query over the spend rollup."""
        if self.usage_loaded:
            return
        self.usage_loaded = tokens is None
        today = self.moment.date()
        for r in await self.driver.fetch(
                _USAGE if tokens is None else _USAGE_OF, today - timedelta(days=7), today - timedelta(days=USAGE_DAYS),
                *([] if tokens is None else [tokens, accounts or []])):
            for key, table in ((r["token_id"], self.by_token), (r["service_account_id"], self.by_account)):
                if key is None:
                    continue
                used = table.get(key)
                if used is None:
                    used = table[key] = {"requests_7d": 0, "requests_30d": 0, "models_30d": defaultdict(set)}
                used["requests_7d"] += r["r7"]
                used["requests_30d"] += r["r30"]
                if r["model"] and r["r30"] > 0:
                    used["models_30d"][r["provider"] or "unknown"].add(r["model"])

    async def complete(self, session: AsyncSession, entries: list[_Entry] | None) -> None:
        """Read whole, and judge as the gateway would, the tokens behind ``entries`` (a token, a service
        account's tokens), or every candidate token when None (then with the register's own conditions)."""
        accounts = None if entries is None else [e.ident for e in entries if e.subject_type == "service_account"]
        if not self.light:
            await self._usage_of(None if entries is None else [], accounts)
            return
        if entries is None:
            await self._usage_of(None, None)
            conditions, params = self.conditions, self.params
            where, judge_params = self.where.sql, self.where.params
        else:
            ids = [e.ident for e in entries if e.subject_type == "token"]
            ids += [t["id"] for e in entries if e.subject_type == "service_account"
                    for t in self.account_light.get(e.ident, [])]
            await self._usage_of(ids, accounts)
            if not ids:
                return
            conditions, params = ["t.id = ANY($1::uuid[])"], [ids]
            where, judge_params = conditions[0], params
        for t in await self.driver.fetch(_TOKENS + " AND ".join(f"({c})" for c in conditions), *params):
            ident = str(t["id"])
            self.full[ident] = t
            if t["service_account_id"] is not None:
                self.account_tokens[str(t["service_account_id"])].append(t)
        found, judging = await access.judged(session, where=where, params=judge_params)
        self.verdicts.update((verdict.record.token_id, verdict) for verdict in found)
        self.judged_at = judging.now

    # -- building rows ---------------------------------------------------------------------------------

    def _team_doc(self, ident: Any) -> dict[str, Any] | None:
        team = self.teams.get(str(ident)) if ident else None
        if team is None:
            return None
        return {"id": str(team["id"]), "name": team["name"], "deleted": team["deleted_at"] is not None}

    def _owners(self, account: Any) -> dict[str, Any]:
        return {role: self.people.get(str(account[f"{role}_owner_id"])) if account[f"{role}_owner_id"] else None
                for role in _OWNER_ROLES}

    def _usage(self, used: dict[str, Any] | None) -> dict[str, Any]:
        if used is None:
            return {"requests_7d": 0, "requests_30d": 0, "models_30d": {}}
        return {"requests_7d": used["requests_7d"], "requests_30d": used["requests_30d"],
                "models_30d": {p: sorted(m) for p, m in sorted(used["models_30d"].items())}}

    def _common(self, entry: _Entry) -> dict[str, Any]:
        return {"open_exceptions": self.exceptions.get((entry.subject_type, entry.ident), []),
                "last_review": self.reviews.get((entry.subject_type, entry.ident))}

    def build(self, entry: _Entry) -> dict[str, Any]:
        if entry.subject_type == "token":
            return self._token_row(entry)
        if entry.subject_type == "service_account":
            return self._account_row(entry)
        if entry.subject_type == "api_credential":
            return self._credential_row(entry)
        return self._scim_row(entry)

    def _token_row(self, entry: _Entry) -> dict[str, Any]:
        if entry.ident in self.built:
            return self.built[entry.ident]
        t, moment = self.full[entry.ident], self.moment
        account = self.accounts.get(str(t["service_account_id"])) if t["service_account_id"] else None
        team = self.teams.get(str(t["team_id"])) if t["team_id"] else None
        verdict = self.verdicts.get(entry.ident)
        if verdict is not None:
            seen = access.token_access(verdict, self.judged_at)
            effective = {k: seen[k] for k in ("stored", "effective", "reason", "models", "blocked")}
        else:
            stored = "revoked" if t["revoked_at"] is not None else "expired"
            code = "token_revoked" if stored == "revoked" else "token_expired"
            effective = {"stored": stored, "effective": code, "reason": access.reason(code), "models": {},
                         "blocked": {}}
        due = self._due(t)
        rotation: dict[str, Any] = {
            "cadence_days": team["rotation_days"] if team is not None else None,
            "last_rotated_at": _iso(t["created_at"]) if t["rotated"] else None, "due_at": _iso(due),
            "overdue": due is not None and due <= moment, "disable_at": None}
        if due is not None and team is not None and team["rotation_disable_days"]:
            rotation["disable_at"] = _iso(due + timedelta(days=team["rotation_disable_days"]))
        used = self._usage(self.by_token.get(entry.ident))
        triggers: list[str] = []
        if account is None:
            owner = self.people.get(str(t["user_id"])) if t["user_id"] else None
            owners = None
            triggers += ["owner deprovisioned", "owner leaves the team"]
            if owner is not None and owner["end_date"]:
                triggers.append(f"{owner['employment_type']} end_date {owner['end_date']}")
        else:
            owner = {"type": "service_account", "id": str(account["id"]), "name": account["name"],
                     "status": account["status"]}
            owners = self._owners(account)
            triggers += _account_triggers(owners, self.grace_days)
        if team is not None:
            triggers.append("team deleted")
        if t["project_id"]:
            triggers.append("project closed")
        if rotation["disable_at"]:
            triggers.append(f"not rotated by {rotation['disable_at'][:10]}")
        row = self.built[entry.ident] = {
            "subject_type": "token", "id": entry.ident, "alias": f"{t['name']} ({t['hint']})",
            "kind": "service" if account is not None else "personal", "owner": owner,
            "backup_owner": self.people.get(str(t["backup_owner_id"])) if t["backup_owner_id"] else None,
            "owners": owners, "team": self._team_doc(t["team_id"]),
            "project": self.projects.get(str(t["project_id"])) if t["project_id"] else None,
            "purpose": t["purpose"], "workload": t["workload"], "environment": t["environment"],
            "effective": effective, "secret_location": t["secret_location"],
            "created_at": _iso(t["created_at"]), "last_used_at": _iso(t["last_used_at"]), "usage": used,
            "rotation": rotation, "expires_at": _iso(t["expires_at"]), "offboarding_triggers": triggers,
            "flags": {"orphaned": entry.orphaned, "overdue": entry.overdue,
                      "broader_than_used": _wider(effective["models"], used["models_30d"]),
                      "reassign_by": _iso(account["reassign_by"]) if account is not None else None,
                      "flagged_reason": account["flagged_reason"] if account is not None else None},
            **self._common(entry),
        }
        return row

    def _account_row(self, entry: _Entry) -> dict[str, Any]:
        """A service account's row, summarising its live tokens' rows."""
        account = entry.record
        owners = self._owners(account)
        light = {t["id"]: t for t in self.account_light.get(entry.ident, [])}
        tokens = [self._token_row(self._token_entry(light[str(t["id"])]))
                  for t in self.account_tokens.get(entry.ident, []) if str(t["id"]) in light]
        models: dict[str, set[str]] = defaultdict(set)
        for token in tokens:
            for provider, names in token["effective"]["models"].items():
                models[provider].update(names)
        usable = [t for t in tokens if t["effective"]["effective"] == "usable"]
        if account["status"] != "active":
            effective = "owner_disabled"
        elif usable:
            effective = "usable"
        elif tokens:
            effective = tokens[0]["effective"]["effective"]
        else:
            effective = "no_live_token"
        dues = [t["rotation"]["due_at"] for t in tokens if t["rotation"]["due_at"]]
        used_times = [t["last_used_at"] for t in tokens if t["last_used_at"]]
        project = self.projects.get(str(account["project_id"])) if account["project_id"] else None
        triggers = [*_account_triggers(owners, self.grace_days), "team deleted"]
        if project is not None:
            triggers.append("project closed")
        return {
            "subject_type": "service_account", "id": entry.ident, "alias": account["name"], "kind": "service",
            "owner": owners["business"], "backup_owner": None, "owners": owners,
            "team": self._team_doc(account["team_id"]), "project": project, "purpose": account["purpose"],
            "workload": account["workload"], "environment": sorted(self.live_environments.get(entry.ident, ())),
            "effective": {"stored": account["status"], "effective": effective,
                          "reason": None if effective == "usable" else access.reason(effective),
                          "models": {p: sorted(m) for p, m in sorted(models.items())}, "blocked": {},
                          "live_tokens": len(tokens), "usable_tokens": len(usable)},
            "secret_location": None, "created_at": _iso(account["created_at"]),
            "last_used_at": max(used_times) if used_times else None,
            "usage": self._usage(self.by_account.get(entry.ident)),
            "rotation": {"cadence_days": tokens[0]["rotation"]["cadence_days"] if tokens else None,
                         "last_rotated_at": max((t["rotation"]["last_rotated_at"] for t in tokens
                                                 if t["rotation"]["last_rotated_at"]), default=None),
                         "due_at": min(dues) if dues else None, "overdue": "rotation_overdue" in entry.overdue,
                         "disable_at": min((t["rotation"]["disable_at"] for t in tokens
                                            if t["rotation"]["disable_at"]), default=None)},
            "expires_at": None, "offboarding_triggers": triggers,
            "flags": {"orphaned": entry.orphaned, "overdue": entry.overdue,
                      "broader_than_used": any(t["flags"]["broader_than_used"] for t in tokens),
                      "reassign_by": _iso(account["reassign_by"]), "flagged_reason": account["flagged_reason"]},
            **self._common(entry),
        }

    def _credential_row(self, entry: _Entry) -> dict[str, Any]:
        c = entry.record
        owner = self.people.get(str(c["owner_id"])) if c["owner_id"] else None
        if c["revoked_at"] is not None:
            stored = "revoked"
        elif c["expires_at"] is not None and c["expires_at"] <= self.moment:
            stored = "expired"
        else:
            stored = "active"
        triggers = [f"owner deprovisioned: reassign within {self.grace_days:g} days, then revoked"]
        if owner is not None and owner["end_date"]:
            triggers.append(f"owner {owner['employment_type']} end_date {owner['end_date']}")
        return {
            "subject_type": "api_credential", "id": entry.ident, "alias": f"{c['name']} ({c['hint']})",
            "kind": "admin", "owner": owner, "backup_owner": None, "owners": None,
            "team": self._team_doc(c["team_id"]), "project": None, "purpose": c["purpose"], "workload": None,
            "environment": None,
            "effective": {"stored": stored, "effective": "usable" if stored == "active" else stored, "reason": None,
                          "role": c["role"], "models": {}, "blocked": {}},
            "secret_location": c["secret_location"], "created_at": _iso(c["created_at"]),
            "last_used_at": _iso(c["last_used_at"]), "usage": None, "rotation": None,
            "expires_at": _iso(c["expires_at"]), "offboarding_triggers": triggers,
            "flags": {"orphaned": entry.orphaned, "overdue": entry.overdue, "broader_than_used": False,
                      "reassign_by": _iso(c["reassign_by"]), "flagged_reason": c["flagged_reason"]},
            **self._common(entry),
        }

    def _scim_row(self, entry: _Entry) -> dict[str, Any]:
        c = entry.record
        stored = "revoked" if c["revoked_at"] is not None else "active"
        return {
            "subject_type": "scim_credential", "id": entry.ident, "alias": f"scim:{c['connection']} ({c['hint']})",
            "kind": "scim", "owner": {"type": "scim_connection", "id": str(c["connection_id"]),
                                      "name": c["connection"], "status": "active"},
            "backup_owner": None, "owners": None, "team": None, "project": None, "purpose": None,
            "workload": None, "environment": None,
            "effective": {"stored": stored, "effective": "usable" if stored == "active" else "revoked",
                          "reason": None, "models": {}, "blocked": {}},
            "secret_location": None, "created_at": _iso(c["created_at"]), "last_used_at": _iso(c["last_used_at"]),
            "usage": None, "rotation": None, "expires_at": None,
            "offboarding_triggers": ["SCIM connection retired"],
            "flags": {"orphaned": False, "overdue": entry.overdue, "broader_than_used": False,
                      "reassign_by": None, "flagged_reason": None},
            **self._common(entry),
        }


def _wider(effective: dict[str, list[str]], used: dict[str, list[str]]) -> bool:
    if not any(used.values()):
        return False
    return any(set(models) - set(used.get(provider, ())) for provider, models in effective.items())


def _account_triggers(owners: dict[str, Any], grace_days: float) -> list[str]:
    triggers = [f"business or technical owner deprovisioned: reassign within {grace_days:g} days, then disabled"]
    for role in ("business", "technical"):
        person = owners.get(role)
        if person is not None and person["end_date"]:
            triggers.append(f"{role} owner {person['employment_type']} end_date {person['end_date']}")
    return triggers


async def _prepared(session: AsyncSession, *, team_id: uuid.UUID | None, environment: str | None,
                    owner_id: uuid.UUID | None, kinds: Collection[str] | None, orphaned: bool, overdue: bool,
                    subject_ids: Collection[uuid.UUID] | None, now: datetime | None,
                    ) -> tuple[_Register, list[_Entry]]:
    filters = _Filters(team_id=team_id, environment=environment, owner_id=owner_id,
                       kinds=set(kinds) if kinds else set(KINDS),
                       ids={str(i) for i in subject_ids} if subject_ids is not None else None)
    register = _Register(filters, now or datetime.now(UTC))
    await register.load(session)
    entries = register.entries()
    if orphaned:
        entries = [e for e in entries if e.orphaned]
    if overdue:
        entries = [e for e in entries if e.overdue]
    return register, entries


async def register_rows(
    session: AsyncSession,
    *,
    team_id: uuid.UUID | None = None,
    environment: str | None = None,
    owner_id: uuid.UUID | None = None,
    kinds: Collection[str] | None = None,
    orphaned: bool = False,
    overdue: bool = False,
    broader: bool = False,
    subject_ids: Collection[uuid.UUID] | None = None,
    now: datetime | None = None,
) -> list[dict[str, Any]]:
    """The register's rows matching every filter given (see the module docstring), JSON-serialisable,
    ordered by team, kind and alias."""
    register, entries = await _prepared(session, team_id=team_id, environment=environment, owner_id=owner_id,
                                        kinds=kinds, orphaned=orphaned, overdue=overdue, subject_ids=subject_ids,
                                        now=now)
    if broader:
        return await _broader(session, register, entries)
    await register.complete(session, None)
    return [register.build(entry) for entry in entries]


async def _broader(session: AsyncSession, register: _Register, entries: list[_Entry]) -> list[dict[str, Any]]:
    """The rows broader than used. Only a token that called something in 30 days can be (and a service
    account with such a token), so only those are judged and built."""
    await register._usage_of(None, None)
    used = register.by_token
    candidates = [e for e in entries if (e.subject_type == "token" and e.ident in used) or (
        e.subject_type == "service_account" and any(t["id"] in used for t in register.account_light.get(e.ident, [])))]
    await register.complete(session, candidates)
    rows = [register.build(entry) for entry in candidates]
    return [row for row in rows if row["flags"]["broader_than_used"]]


async def register_page(
    session: AsyncSession,
    *,
    offset: int,
    limit: int,
    team_id: uuid.UUID | None = None,
    environment: str | None = None,
    owner_id: uuid.UUID | None = None,
    kinds: Collection[str] | None = None,
    orphaned: bool = False,
    overdue: bool = False,
    broader: bool = False,
) -> tuple[list[dict[str, Any]], int]:
    """One page of :func:`register_rows` and how many rows match in all. Only the page's rows are built
    and judged, so a page costs the set-based reads and ``limit`` rows, not the whole register; with
    ``broader`` every candidate must be judged first (its effective catalog is the question)."""
    if broader:
        rows = await register_rows(session, team_id=team_id, environment=environment, owner_id=owner_id,
                                   kinds=kinds, orphaned=orphaned, overdue=overdue, broader=True)
        return rows[offset:offset + limit], len(rows)
    register, entries = await _prepared(session, team_id=team_id, environment=environment, owner_id=owner_id,
                                        kinds=kinds, orphaned=orphaned, overdue=overdue, subject_ids=None, now=None)
    page = entries[offset:offset + limit]
    await register.complete(session, page)
    return [register.build(entry) for entry in page], len(entries)


# -- exports --------------------------------------------------------------------------------------

#: The columns of the register's CSV export: one line per row, nested documents flattened. What a row can
#: reach is given as a count per provider (``openai:412``; the JSON row lists the models); what it called
#: in 30 days, in full.
COLUMNS = ("subject_type", "id", "alias", "kind", "owner", "owner_status", "backup_owner", "business_owner",
           "technical_owner", "security_owner", "finance_owner", "team", "project", "purpose", "workload",
           "environment", "stored_status", "effective_status", "reachable_models", "secret_location", "created_at",
           "last_used_at", "requests_7d", "requests_30d", "models_used_30d", "rotation_cadence_days",
           "last_rotated_at", "rotation_due_at", "expires_at", "offboarding_triggers", "orphaned", "overdue",
           "broader_than_used", "reassign_by", "open_exceptions", "last_review_decision", "last_review_at")


def _who(person: dict[str, Any] | None) -> str:
    if person is None:
        return ""
    return str(person.get("email") or person.get("name") or person.get("id"))


def _models(models: dict[str, list[str]]) -> str:
    return " ".join(f"{provider}:{model}" for provider, names in models.items() for model in names)


def flat(row: dict[str, Any]) -> dict[str, Any]:
    """One register row as a CSV line's cells."""
    owners = row.get("owners") or {}
    usage, rotation, flags = row.get("usage") or {}, row.get("rotation") or {}, row["flags"]
    environment = row.get("environment")
    return {
        "subject_type": row["subject_type"], "id": row["id"], "alias": row["alias"], "kind": row["kind"],
        "owner": _who(row.get("owner")), "owner_status": (row.get("owner") or {}).get("status", ""),
        "backup_owner": _who(row.get("backup_owner")),
        **{f"{role}_owner": _who(owners.get(role)) for role in ("business", "technical", "security", "finance")},
        "team": (row.get("team") or {}).get("name", ""), "project": (row.get("project") or {}).get("name", ""),
        "purpose": row.get("purpose") or "", "workload": row.get("workload") or "",
        "environment": " ".join(environment) if isinstance(environment, list) else environment or "",
        "stored_status": row["effective"]["stored"], "effective_status": row["effective"]["effective"],
        "reachable_models": " ".join(f"{provider}:{len(names)}" for provider, names in
                                     (row["effective"].get("models") or {}).items()),
        "secret_location": row.get("secret_location") or "",
        "created_at": row.get("created_at") or "", "last_used_at": row.get("last_used_at") or "",
        "requests_7d": usage.get("requests_7d", ""), "requests_30d": usage.get("requests_30d", ""),
        "models_used_30d": _models(usage.get("models_30d") or {}),
        "rotation_cadence_days": rotation.get("cadence_days") or "",
        "last_rotated_at": rotation.get("last_rotated_at") or "", "rotation_due_at": rotation.get("due_at") or "",
        "expires_at": row.get("expires_at") or "", "offboarding_triggers": "; ".join(row["offboarding_triggers"]),
        "orphaned": flags["orphaned"], "overdue": " ".join(flags["overdue"]),
        "broader_than_used": flags["broader_than_used"], "reassign_by": flags.get("reassign_by") or "",
        "open_exceptions": " ".join(f"{e['id']}:{e['condition']}" for e in row["open_exceptions"]),
        "last_review_decision": (row.get("last_review") or {}).get("decision", ""),
        "last_review_at": (row.get("last_review") or {}).get("decided_at", ""),
    }


def export(rows: Iterable[dict[str, Any]], fmt: str) -> Iterable[str]:
    """The rows as CSV (a header line first) or JSON lines, in chunks."""
    buffer = io.StringIO()
    if fmt == "csv":
        writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow(flat(row))
            if buffer.tell() > 65536:
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
    else:
        for row in rows:
            buffer.write(json.dumps(row) + "\n")
            if buffer.tell() > 65536:
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
    yield buffer.getvalue()
