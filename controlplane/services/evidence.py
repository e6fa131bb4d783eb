"""The evidence pack: the auditor's questions answered in one bundle, each answer with the record ids
and timestamps behind it.

=========================  ==================================================================
file                       question
=========================  ==================================================================
reach.json / reach.csv     Which identities can reach each provider now (and with which token)?
departed.json / .csv       When did each departed person last make a request, and were any of
                           their requests allowed after their deprovisioning (0, with the query)?
requests.csv               Who made the requests in the window?
tokens.json                How many tokens are stored active, and how many would the gateway accept?
revocation_latency.json    How long did recent revocations take to reach every gateway replica?
register.json / .csv       The credential register.
reviews.json               The last access reviews, and the exceptions still open.
chain.json                 Is the audit store intact? Its signed heads; the last full verification.
index.html                 All of the above on one plain page, for a human.
manifest.json              Every file above with its size and sha256.
=========================  ==================================================================

Nothing here decides anything: access is asked of :mod:`controlplane.services.access` (the gateway's
own decision code), each departed person's activity as :func:`controlplane.audit.queries.user_activity`
answers it (grouped: a few queries for everyone), the chain of
:func:`controlplane.audit.verify.verify_store` (incremental from each chain's newest signed marker unless
``verify=full``, with the last full verification), the register of
:func:`controlplane.services.register.register_rows`. Times are UTC, ISO 8601.

Over 450 lines because the pack's sections answer one auditor's questions from one consistent moment
and are written out together (JSON, CSV, the HTML summary, the manifest).
"""

from __future__ import annotations

import csv
import hashlib
import html
import io
import json
import statistics
import uuid
import zipfile
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.audit import queries, signing
from controlplane.audit.signing import Verifier
from controlplane.audit.verify import CHAINS, MARKER_LOOKBACK, MARKERS_SQL, first_valid, marker_summary, verify_store
from controlplane.errors import Code, Invalid
from controlplane.services import access
from controlplane.services import register as register_service

#: The most request records requests.csv holds; a wider window is refused (export it instead).
MAX_REQUESTS = 100_000
#: Recent revocations measured.
LATENCY_SAMPLE = 100
#: Reviews listed.
REVIEWS = 20

REACH_COLUMNS = ("provider", "owner_type", "owner_id", "owner", "team", "environment", "token_id", "token_name",
                 "expires_at", "models")
DEPARTED_COLUMNS = ("user_id", "email", "deprovision_event_seq", "deprovision_event_action", "deprovision_event_at",
                    "deprovision_event_actor", "effective_at", "last_request_id", "last_request_seq",
                    "last_request_at", "last_request_decision", "last_allowed_request_id",
                    "last_allowed_request_seq", "last_allowed_request_at", "allowed_after_deprovision")
REQUEST_COLUMNS = ("seq", "at", "request_id", "user_id", "user_email", "token_id", "team", "environment",
                   "provider", "model", "decision", "status")


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, uuid.UUID | Decimal):
        return str(value)
    if isinstance(value, bytes | memoryview):
        return bytes(value).hex()
    raise TypeError(f"{type(value).__name__} is not JSON")


def dump(document: Any) -> bytes:
    # Compact: with ``indent`` the standard library encodes in Python, not C, about ten times slower,
    # which at 100,000 tokens is most of the pack's time. index.html is the page for humans.
    return (json.dumps(document, default=_plain, sort_keys=True, separators=(",", ":")) + "\n").encode()


def table(columns: Sequence[str], rows: Iterable[dict[str, Any]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row.get(c) is None else _plain(row[c]) if isinstance(row[c], datetime | uuid.UUID)
                         else row[c] for c in columns])
    return buffer.getvalue().encode()


# -- the questions ----------------------------------------------------------------------------------


async def reach(session: AsyncSession) -> tuple[dict[str, Any], dict[str, Any]]:
    """Who can reach each provider now (reach.json), and the token counts (tokens.json)."""
    verdicts, judging = await access.judged(session)
    as_of = datetime.fromtimestamp(judging.now, tz=UTC)
    providers: dict[str, Any] = {}
    for provider in access.providers():
        grants = access.reach(verdicts, provider=provider, model=None, environment=None)
        identities: dict[str, dict[str, Any]] = {}
        for grant in grants:
            found = identities.setdefault(f"{grant['owner_type']}:{grant['owner_id']}", {
                "owner_type": grant["owner_type"], "owner_id": grant["owner_id"], "owner": grant["owner"],
                "tokens": []})
            found["tokens"].append(grant["token_id"])
        providers[provider] = {"identities": sorted(identities.values(), key=lambda i: str(i["owner"] or "")),
                               "grants": grants}
    stored: Counter[str] = Counter()
    effective: Counter[str] = Counter()
    refused = []
    for verdict in verdicts:
        row = access.token_access(verdict, judging.now)
        stored[row["stored"]] += 1
        effective[row["effective"]] += 1
        if row["stored"] == "active" and row["effective"] != "usable":
            refused.append({"token_id": row["token_id"], "token_name": row["token_name"], "team": row["team"],
                            "owner_type": verdict.record.owner_type, "owner_id": verdict.record.owner_id,
                            "owner": verdict.record.user_email, "refusal": row["effective"], "why": row["reason"]})
    revoked = (await session.execute(text("SELECT count(*) FROM tokens WHERE revoked_at IS NOT NULL"))).scalar_one()
    tokens = {
        "as_of": as_of, "stored_active": stored["active"], "stored_expired_not_revoked": stored["expired"],
        "stored_revoked": revoked, "effective_usable": effective["usable"],
        "effective_refused": {k: v for k, v in effective.items() if k != "usable"},
        "active_but_refused": refused,
        "note": "stored: the token's own row (not revoked; expired or not). effective: what the gateway's own "
                "decision code answers now for the same token (owner status, membership, profile, "
                "environment, catalog, budgets).",
    }
    return {"as_of": as_of, "summary": access.summary(verdicts), "providers": providers}, tokens


#: What the departed section asks, for every deprovisioned person at once: the same questions as
#: :func:`controlplane.audit.queries.user_activity` (same fragments, same order), grouped, so the pack's
#: cost does not grow by one round of queries per person.
_DISABLING = "('user.deprovisioned', 'user.suspended', 'scim.deprovision')"
DEPARTED_SQL = {
    # The disabling event (the newest), and the first confirmation after it from every replica.
    "people": f"""
        SELECT u.id, u.email, d.seq AS d_seq, d.action AS d_action, d.at AS d_at, d.actor AS d_actor,
               c.after AS c_after
        FROM users u
        LEFT JOIN LATERAL (
            SELECT seq, action, at, actor FROM events e
            WHERE e.target_type = 'user' AND e.target_id = u.id::text AND e.action IN {_DISABLING}
            ORDER BY e.seq DESC LIMIT 1) d ON true
        LEFT JOIN LATERAL (
            SELECT after FROM events c
            WHERE c.target_type = 'user' AND c.target_id = u.id::text AND c.action = 'revocation.confirmed'
              AND c.seq > d.seq
            ORDER BY c.seq LIMIT 1) c ON true
        WHERE u.status = 'deprovisioned'
        ORDER BY u.email""",  # noqa: S608 - fixed SQL fragments only
    # Each person's last request, and last request allowed (as the client got it).
    "last": f"""
        SELECT p.id AS user_id, l.request_id, l.seq, l.at, l.decision, a.request_id AS a_request_id,
               a.seq AS a_seq, a.at AS a_at
        FROM unnest(CAST(:ids AS uuid[])) AS p(id)
        LEFT JOIN LATERAL (
            SELECT r.seq, r.at, r.request_id, {queries.DECISION} AS decision
            FROM request_records r {queries._OUTCOME}
            WHERE r.user_id = p.id ORDER BY r.at DESC, r.seq DESC LIMIT 1) l ON true
        LEFT JOIN LATERAL (
            SELECT r.seq, r.at, r.request_id FROM request_records r {queries._OUTCOME}
            WHERE r.user_id = p.id AND r.decision = 'allowed' AND {queries.DECISION} = 'allowed'
            ORDER BY r.at DESC, r.seq DESC LIMIT 1) a ON true""",  # noqa: S608 - fixed SQL fragments only
    # Requests allowed after each person's deprovisioning took effect, counted per person. LATERAL: each
    # count walks that person's (user_id, at) index from their moment on; a join would sort every record.
    "allowed_after": f"""
        SELECT p.id AS user_id, n.n
        FROM unnest(CAST(:ids AS uuid[]), CAST(:since AS timestamptz[])) AS p(id, since)
        CROSS JOIN LATERAL (
            SELECT count(*) AS n FROM request_records r {queries._OUTCOME}
            WHERE r.user_id = p.id AND r.at > p.since AND r.decision = 'allowed' AND {queries.DECISION} = 'allowed'
        ) n""",  # noqa: S608 - fixed SQL fragments only
    # Up to 100 of them per person (asked only for the people who have any).
    "examples": f"""
        SELECT p.id AS user_id, x.request_id, x.seq, x.at
        FROM unnest(CAST(:ids AS uuid[]), CAST(:since AS timestamptz[])) AS p(id, since)
        CROSS JOIN LATERAL (
            SELECT r.seq, r.at, r.request_id FROM request_records r {queries._OUTCOME}
            WHERE r.user_id = p.id AND r.at > p.since AND r.decision = 'allowed' AND {queries.DECISION} = 'allowed'
            ORDER BY r.at, r.seq LIMIT 100) x
        ORDER BY p.id, x.at, x.seq""",  # noqa: S608 - fixed SQL fragments only
}


def _effective(disabled_at: datetime, confirmation: dict[str, Any] | None) -> datetime:
    """When a disabling took effect: every replica's confirmation (the latest of their times), else
    the event itself (an older record, or a replica that did not answer); as ``user_activity`` has it."""
    if confirmation and confirmation.get("applied") and confirmation.get("confirmed"):
        return max(datetime.fromisoformat(at) for at in confirmation["confirmed"].values())
    return disabled_at


async def departed(session: AsyncSession) -> dict[str, Any]:
    """Every deprovisioned person: the deprovisioning, their last request, and the requests allowed after
    (four grouped queries whatever the number of people)."""
    people = (await session.execute(text(DEPARTED_SQL["people"]))).mappings().all()
    ids = [person["id"] for person in people]
    last = {row["user_id"]: dict(row) for row in (await session.execute(
        text(DEPARTED_SQL["last"]), {"ids": ids})).mappings().all()} if ids else {}
    since = {person["id"]: _effective(person["d_at"], person["c_after"]) for person in people
             if person["d_seq"] is not None}
    window = {"ids": list(since), "since": list(since.values())}
    counts: dict[uuid.UUID, int] = {}
    examples: dict[uuid.UUID, list[dict[str, Any]]] = {}
    if since:
        counts = {row[0]: row[1] for row in (await session.execute(text(DEPARTED_SQL["allowed_after"]), window)).all()}
        some = [user_id for user_id, n in counts.items() if n]
        if some:
            for row in (await session.execute(text(DEPARTED_SQL["examples"]), {
                    "ids": some, "since": [since[user_id] for user_id in some]})).mappings().all():
                examples.setdefault(row["user_id"], []).append(
                    {"request_id": row["request_id"], "seq": row["seq"], "at": row["at"]})
    rows = []
    for person in people:
        user_id = person["id"]
        found: dict[str, Any] = last.get(user_id) or {}
        rows.append({
            "user_id": user_id, "email": person["email"], "deprovision_event_seq": person["d_seq"],
            "deprovision_event_action": person["d_action"], "deprovision_event_at": person["d_at"],
            "deprovision_event_actor": person["d_actor"], "effective_at": since.get(user_id),
            "last_request_id": found.get("request_id"), "last_request_seq": found.get("seq"),
            "last_request_at": found.get("at"), "last_request_decision": found.get("decision"),
            "last_allowed_request_id": found.get("a_request_id"), "last_allowed_request_seq": found.get("a_seq"),
            "last_allowed_request_at": found.get("a_at"),
            "allowed_after_deprovision": counts.get(user_id, 0) if user_id in since else None,
            "allowed_after_deprovision_examples": examples.get(user_id, []),
        })
    return {
        "people": rows, "total_allowed_after_deprovision": sum(r["allowed_after_deprovision"] or 0 for r in rows),
        "query": {
            "sql": " ".join(queries.USER_ACTIVITY["count_allowed_after"].split()),
            "parameters": {":user_id": "the person's user_id", ":since": "effective_at: when every gateway replica "
                           "confirmed the deprovisioning (its revocation.confirmed event), else the event's time"},
            "allowed": "decision 'allowed' as authz recorded it and as the client got it (an answer Envoy gave "
                       "without authz is never counted as allowed)",
        },
    }


async def requests(session: AsyncSession, start: datetime, end: datetime) -> list[dict[str, Any]]:
    """Who made the requests in the window (requests.csv)."""
    query, params = queries.RequestFilter(start=start, end=end).sql(limit=MAX_REQUESTS + 1)
    rows = [dict(row) for row in (await session.execute(text(query), params)).mappings().all()]
    if len(rows) > MAX_REQUESTS:
        raise Invalid(Code.WINDOW_TOO_LARGE, f"The window holds more than {MAX_REQUESTS} requests: narrow it, or "
                      "export it with GET /api/v1/audit/requests?format=csv.")
    return rows


async def revocation_latency(session: AsyncSession) -> dict[str, Any]:
    """Recent revocations: from the revoking event to the last replica's confirmation."""
    found = (await session.execute(text("""
        SELECT c.seq, c.at, c.target_type, c.target_id, c.after, r.seq AS revoke_seq, r.at AS revoke_at,
               r.action AS revoke_action, r.actor AS revoke_actor
        FROM (SELECT * FROM events WHERE action = 'revocation.confirmed' ORDER BY seq DESC LIMIT :sample) c
        LEFT JOIN LATERAL (
            SELECT seq, at, action, actor FROM events e
            WHERE e.target_type = c.target_type AND e.target_id = c.target_id AND e.seq < c.seq
              AND e.action <> 'revocation.confirmed'
            ORDER BY e.seq DESC LIMIT 1) r ON true
        ORDER BY c.seq DESC"""), {"sample": LATENCY_SAMPLE})).mappings().all()
    rows = []
    for row in found:
        after = row["after"] or {}
        confirmed = {replica: datetime.fromisoformat(at) for replica, at in (after.get("confirmed") or {}).items()}
        latency = None
        if row["revoke_at"] is not None and confirmed and after.get("applied"):
            latency = max(0, round((max(confirmed.values()) - row["revoke_at"]).total_seconds() * 1000, 1))
        rows.append({"confirmation_event_seq": row["seq"], "confirmed_at": row["at"],
                     "target_type": row["target_type"], "target_id": row["target_id"],
                     "revoke_event_seq": row["revoke_seq"], "revoke_event_action": row["revoke_action"],
                     "revoke_event_at": row["revoke_at"], "revoke_actor": row["revoke_actor"],
                     "applied": after.get("applied"), "replicas_confirmed": after.get("confirmed") or {},
                     "replicas_unconfirmed": after.get("unconfirmed") or [], "waited_ms": after.get("waited_ms"),
                     "latency_ms": latency})
    measured = [r["latency_ms"] for r in rows if r["latency_ms"] is not None]
    return {
        "sample": len(rows), "measured": len(measured),
        "unconfirmed": [r["confirmation_event_seq"] for r in rows if not r["applied"]],
        "median_ms": statistics.median(measured) if measured else None,
        "p95_ms": sorted(measured)[max(0, int(len(measured) * 0.95 + 0.5) - 1)] if measured else None,
        "max_ms": max(measured) if measured else None,
        "method": "latency_ms = the last replica's applied time (its revocation.confirmed event) minus the time of "
                  "the event that revoked (the latest earlier event on the same target); replica times are "
                  "each replica's own clock.",
        "revocations": rows,
    }


async def reviews(session: AsyncSession) -> dict[str, Any]:
    """The last access reviews (with their decisions counted) and the exceptions still open."""
    found = (await session.execute(text(
        "SELECT id, name, scope, status, opened_by, opened_at, due_at, closed_by, closed_at, report_sha256, trigger "
        "FROM access_reviews ORDER BY opened_at DESC LIMIT :n"), {"n": REVIEWS})).mappings().all()
    listed = [dict(row) for row in found]
    if listed:
        counts = (await session.execute(text(
            "SELECT review_id, COALESCE(decision, 'undecided') AS decision, count(*) AS n FROM access_review_items "
            "WHERE review_id = ANY(:ids) GROUP BY 1, 2"), {"ids": [r["id"] for r in listed]})).all()
        for review in listed:
            review["items"] = {decision: n for review_id, decision, n in counts if review_id == review["id"]}
        closing = (await session.execute(text(
            "SELECT target_id, seq, at FROM events WHERE action = 'review.closed' AND target_type = 'access_review' "
            "AND target_id = ANY(:ids)"), {"ids": [str(r["id"]) for r in listed]})).all()
        for review in listed:
            event = next((c for c in closing if c[0] == str(review["id"])), None)
            review["closed_event"] = {"seq": event[1], "at": event[2]} if event else None
    exceptions = (await session.execute(text(
        "SELECT id, subject_type, subject_id, condition, reason, requested_by, approved_by, status, expires_at, "
        "created_at, decided_at, review_item_id FROM access_exceptions "
        "WHERE status IN ('pending', 'approved') AND expires_at > now() ORDER BY expires_at"))).mappings().all()
    return {"reviews": listed, "open_exceptions": [dict(row) for row in exceptions]}


#: What chain.json says incremental verification proves, and what only a full one does.
VERIFICATION_NOTE = (
    "incremental: for each chain, the row at the newest signed verification marker still has the hash that "
    "verification found (so no row up to it was removed, inserted, or edited and re-hashed since), and every "
    "row after it was re-hashed, linked and found covered by a signature. Only a full verification re-hashes "
    "every row from the chain's start, which also finds a row edited in place with its stored hashes left "
    "alone; last_full says when the last one ran and what it found (verify=full runs one now).")


async def _last_full(session: AsyncSession, verifier: Verifier) -> dict[str, Any]:
    """Each chain's newest full verification whose signature verifies."""
    found: dict[str, dict[str, Any] | None] = {}
    for name in CHAINS:
        rows = (await session.execute(text(MARKERS_SQL.format(":chain", ":kind", ":n")),
                                      {"chain": name, "kind": "full", "n": MARKER_LOOKBACK})).mappings().all()
        found[name] = marker_summary(first_valid([dict(row) for row in rows], name, verifier)[0])
    return found


async def chain_state(database_url: str, *, verify: str, session: AsyncSession) -> dict[str, Any]:
    """The chains' verification (``incremental`` from each chain's newest signed marker, or ``full``; or
    ``none``: the signed heads alone), and each chain's last full verification."""
    signer = signing.current()
    if verify != "none":
        state = await verify_store(database_url, signer=signer, full=verify == "full")
        last = {c["chain"]: c["last_full"] for c in state["chains"]}
        return {"verified": True, **state, "last_full": _summary_of_full(last), "note": VERIFICATION_NOTE}
    heads: list[dict[str, Any]] = []
    for name in CHAINS:
        row = (await session.execute(text(
            "SELECT seq, hash, signature FROM audit_checkpoints WHERE chain = :chain AND kind = 'signed' "
            "ORDER BY seq DESC LIMIT 1"), {"chain": name})).first()
        heads.append({"chain": name, "signed_head": {"seq": row[0], "hash": bytes(row[1]).hex(),
                                                     "signature": bytes(row[2]).hex()} if row else None})
    last = await _last_full(session, Verifier(signer.public_key))
    for head in heads:
        head["last_full"] = last[head["chain"]]
    return {"verified": False, "public_key": signer.public_key, "chains": heads, "last_full": _summary_of_full(last),
            "note": "not verified in this pack (verify=false): run keyward audit verify"}


def _summary_of_full(last: dict[str, dict[str, Any] | None]) -> dict[str, Any]:
    """The last full verification of the store: the oldest of the chains' (None: one never had one)."""
    if any(marker is None for marker in last.values()):
        return {"verified_at": None, "intact": None,
                "never": sorted(name for name, marker in last.items() if marker is None)}
    return {"verified_at": min(marker["verified_at"] for marker in last.values() if marker),
            "intact": all(marker["ok"] for marker in last.values() if marker)}


# -- the pack ---------------------------------------------------------------------------------------


@dataclass
class Pack:
    files: dict[str, bytes]
    manifest: dict[str, Any]

    def zip(self) -> bytes:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for name, content in self.files.items():
                archive.writestr(name, content)
            archive.writestr("manifest.json", dump(self.manifest))
        return buffer.getvalue()


async def build(session: AsyncSession, *, start: datetime, end: datetime, verify: str, database_url: str,
                generated_by: str) -> Pack:
    """Every file of the pack, and its manifest."""
    generated_at = datetime.now(UTC)
    reach_doc, tokens_doc = await reach(session)
    departed_doc = await departed(session)
    window = await requests(session, start, end)
    latency = await revocation_latency(session)
    reviews_doc = await reviews(session)
    register_doc = await register(session)
    chain_doc = await chain_state(database_url, verify=verify, session=session)
    grants = [{**grant, "provider": provider, "models": "; ".join(grant["models"].get(provider, []))}
              for provider, section in reach_doc["providers"].items() for grant in section["grants"]]
    files = {
        "reach.json": dump(reach_doc),
        "reach.csv": table(REACH_COLUMNS, grants),
        "departed.json": dump(departed_doc),
        "departed.csv": table(DEPARTED_COLUMNS, departed_doc["people"]),
        "requests.csv": table(REQUEST_COLUMNS, window),
        "tokens.json": dump(tokens_doc),
        "revocation_latency.json": dump(latency),
        "register.json": dump(register_doc),
        "register.csv": register_csv(register_doc["rows"]),
        "reviews.json": dump(reviews_doc),
        "chain.json": dump(chain_doc),
    }
    files["index.html"] = page(generated_at=generated_at, generated_by=generated_by, start=start, end=end,
                               reach_doc=reach_doc, tokens_doc=tokens_doc, departed_doc=departed_doc,
                               window=window, latency=latency, reviews_doc=reviews_doc, register_doc=register_doc,
                               chain_doc=chain_doc).encode()
    manifest = {
        "generated_at": generated_at, "generated_by": generated_by,
        "window": {"start": start, "end": end},
        "files": [{"name": name, "bytes": len(content), "sha256": hashlib.sha256(content).hexdigest()}
                  for name, content in files.items()],
    }
    return Pack(files, json.loads(dump(manifest)))


# -- the register -----------------------------------------------------------------------------------


async def register(session: AsyncSession) -> dict[str, Any]:
    """The whole credential register, as ``GET /api/v1/register`` gives it."""
    return {"rows": await register_service.register_rows(session)}


def register_csv(rows: Sequence[dict[str, Any]]) -> bytes:
    return "".join(register_service.export(rows, "csv")).encode()


# -- index.html -------------------------------------------------------------------------------------

_STYLE = """body{font:14px/1.4 system-ui,sans-serif;margin:2em;max-width:80em;color:#111}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #bbb;padding:.2em .5em;text-align:left;
vertical-align:top}th{background:#eee}code{font-size:12px}.bad{color:#a00;font-weight:bold}.ok{color:#070}"""


def _cell(value: Any) -> str:
    if value is None:
        return "&ndash;"
    if isinstance(value, datetime):
        value = value.astimezone(UTC).isoformat()
    if isinstance(value, list | dict):
        value = json.dumps(value, default=_plain, sort_keys=True)
    return html.escape(str(value))


def _table(columns: Sequence[str], rows: Iterable[dict[str, Any]], *, empty: str = "None.") -> str:
    body = "".join("<tr>" + "".join(f"<td>{_cell(row.get(c))}</td>" for c in columns) + "</tr>" for row in rows)
    if not body:
        return f"<p>{html.escape(empty)}</p>"
    return ("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in columns) + "</tr>" + body + "</table>")


def page(*, generated_at: datetime, generated_by: str, start: datetime, end: datetime, reach_doc: dict[str, Any],
         tokens_doc: dict[str, Any], departed_doc: dict[str, Any], window: list[dict[str, Any]],
         latency: dict[str, Any], reviews_doc: dict[str, Any], register_doc: dict[str, Any],
         chain_doc: dict[str, Any]) -> str:
    """One plain, self-contained page (no scripts, no external assets)."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>Keyward evidence pack "
             f"{_cell(generated_at)}</title><style>{_STYLE}</style></head><body>",
             f"<h1>Keyward evidence pack</h1><p>Generated {_cell(generated_at)} by {_cell(generated_by)}. "
             f"Request window {_cell(start)} to {_cell(end)} (exclusive). Every figure names the records behind "
             "it; the machine-readable files beside this page hold all of them (manifest.json lists their "
             "sha256).</p>"]
    intact = chain_doc.get("intact")
    verdict = ("<span class='ok'>intact</span>" if intact else "<span class='bad'>BROKEN</span>"
               if intact is False else "not verified in this pack")
    last = chain_doc.get("last_full") or {}
    full = ("never" if last.get("verified_at") is None else
            f"{_cell(last['verified_at'])}, " + ("<span class='ok'>intact</span>" if last.get("intact")
                                                  else "<span class='bad'>BROKEN</span>"))
    parts.append(f"<h2>1. Audit chain</h2><p>Verification ({_cell(chain_doc.get('kind', 'none'))}): {verdict}. "
                 f"Last full verification of every chain: {full}. {_cell(chain_doc.get('note'))}</p>")
    parts.append(_table(("chain", "kind", "records", "rows_checked", "intact", "head_seq", "signed_head", "findings",
                         "last_full"),
                        [{**c, "signed_head": c.get("signed_head"),
                          "last_full": {k: (c.get("last_full") or {}).get(k) for k in ("verified_at", "ok", "to_seq")}
                          if c.get("last_full") else None} for c in chain_doc.get("chains", [])]))
    parts.append("<h2>2. Who can reach each provider now</h2>")
    summary = reach_doc["summary"]
    parts.append(f"<p>As of {_cell(reach_doc['as_of'])}: {summary['tokens_stored_live']} live tokens, "
                 f"{summary['tokens_usable']} usable.</p>")
    for provider, section in reach_doc["providers"].items():
        parts.append(f"<h3>{html.escape(provider)}: {len(section['identities'])} identities</h3>")
        parts.append(_table(("owner_type", "owner", "owner_id", "tokens"), section["identities"]))
    parts.append("<h2>3. Tokens: stored versus effective</h2>")
    parts.append(_table(("stored_active", "stored_expired_not_revoked", "stored_revoked", "effective_usable",
                         "effective_refused"), [tokens_doc]))
    parts.append("<p>Stored active but refused by the gateway:</p>")
    parts.append(_table(("token_id", "token_name", "owner", "team", "refusal", "why"),
                        tokens_doc["active_but_refused"]))
    total = departed_doc["total_allowed_after_deprovision"]
    parts.append(f"<h2>4. Departed people</h2><p>{len(departed_doc['people'])} deprovisioned; requests allowed "
                 f"after deprovisioning: <span class='{'ok' if total == 0 else 'bad'}'>{total}</span>. Query: "
                 f"<code>{html.escape(departed_doc['query']['sql'])}</code></p>")
    parts.append(_table(DEPARTED_COLUMNS, departed_doc["people"]))
    who = Counter((r.get("user_email") or f"token {r.get('token_id') or '-'}") for r in window)
    parts.append(f"<h2>5. Who made the requests</h2><p>{len(window)} requests from {_cell(start)} to "
                 f"{_cell(end)} (requests.csv lists each with its request id and seq).</p>")
    parts.append(_table(("identity", "requests", "first_request_id", "last_request_id"), [
        {"identity": name, "requests": count,
         "first_request_id": next(r["request_id"] for r in window
                                  if (r.get("user_email") or f"token {r.get('token_id') or '-'}") == name),
         "last_request_id": next(r["request_id"] for r in reversed(window)
                                 if (r.get("user_email") or f"token {r.get('token_id') or '-'}") == name)}
        for name, count in who.most_common(50)]))
    parts.append(f"<h2>6. Revocation latency</h2><p>{latency['measured']} of the last {latency['sample']} "
                 f"revocations measured: median {_cell(latency['median_ms'])} ms, p95 {_cell(latency['p95_ms'])} "
                 f"ms, max {_cell(latency['max_ms'])} ms; unconfirmed: {_cell(latency['unconfirmed'])}. "
                 f"{html.escape(latency['method'])}</p>")
    parts.append(_table(("revoke_event_seq", "revoke_event_action", "revoke_event_at", "target_type", "target_id",
                         "confirmation_event_seq", "applied", "latency_ms"), latency["revocations"][:20]))
    parts.append(f"<h2>7. Credential register</h2><p>{len(register_doc['rows'])} credentials "
                 "(register.csv, register.json).</p>")
    parts.append("<h2>8. Access reviews and open exceptions</h2>")
    parts.append(_table(("id", "name", "status", "opened_at", "due_at", "closed_at", "report_sha256", "items",
                         "closed_event"), reviews_doc["reviews"]))
    parts.append(_table(("id", "subject_type", "subject_id", "condition", "status", "requested_by", "approved_by",
                         "expires_at"), reviews_doc["open_exceptions"], empty="No open exceptions."))
    parts.append("</body></html>\n")
    return "".join(parts)


def check_window(start: datetime | None, end: datetime | None) -> tuple[datetime, datetime]:
    """The requests window: ``end`` defaults to now, ``start`` to a day before it."""
    return queries.window(start, end, default=timedelta(days=1))
