"""The questions that prove control, asked at scale: effective access, the credential register and
the evidence pack, through the admin API over every live token the snapshot phase loaded.

They run while the database holds the first step of bulk tokens (100,000 in the full run, over
25,000 people in four teams) plus the people, teams and service accounts the earlier phases made.
Each question is asked ``repeats`` times end to end (the JSON page or the CSV); the answer column
says what came back, so a fast empty answer cannot pass for a fast full one.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
from auditquery import Question

#: Each question's target: "every register/evidence/access query answers in under 1 s".
MAX_GOVERNANCE_MS = 1000.0


async def _identities(owner_dsn: str) -> tuple[int, int, str, str | None]:
    connection = await asyncpg.connect(owner_dsn)
    try:
        people = await connection.fetchval("SELECT count(*) FROM users")
        tokens = await connection.fetchval("SELECT count(*) FROM tokens WHERE revoked_at IS NULL")
        person = await connection.fetchval("SELECT user_id::text FROM tokens WHERE name = 'bench' LIMIT 1")
        account = await connection.fetchval("SELECT id::text FROM service_accounts LIMIT 1")
        return people, tokens, person, account
    finally:
        await connection.close()


def _question(key: str, title: str, path: str, **params: Any) -> Question:
    return Question(key=key, title=title, method="GET", path=path, params=params, sql=[])


def questions(person: str, account: str | None) -> list[Question]:
    now = datetime.now(UTC)
    items = [
        _question("reach", "Who can reach Anthropic now (first page, with the summary over every token)",
                  "/access", provider="anthropic", limit=100),
        _question("reach-model", "Who can reach gpt-4o-mini in prod now", "/access", provider="openai",
                  model="gpt-4o-mini", environment="prod", limit=100),
        _question("refused", "Tokens stored active that the gateway refuses", "/access/refused"),
        _question("person", "What one person can reach", f"/access/users/{person}"),
        _question("register", "The credential register (first page)", "/register", limit=100),
        _question("register-overdue", "Register: overdue (rotation, never used, dormant)", "/register",
                  overdue="true", limit=100),
        _question("register-orphaned", "Register: orphaned (owner departed or unknown)", "/register",
                  orphaned="true", limit=100),
        _question("register-csv", "The whole register as CSV", "/register", format="csv"),
        # The requests window is the last minute: the earlier phases' requests are not the question here.
        _question("evidence", "The evidence pack (JSON; the chain verified incrementally; requests of the "
                  "last minute)", "/evidence", format="json",
                  start=(now - timedelta(minutes=1)).isoformat(), end=now.isoformat()),
    ]
    if account is not None:
        items.insert(4, _question("account", "What one service account can reach",
                                  f"/access/service-accounts/{account}"))
    return items


def _describe(reply: httpx.Response) -> str:
    if reply.headers.get("content-type", "").startswith("text/csv"):
        return f"{max(0, reply.text.count(chr(10)) - 1):,} CSV rows"
    body = reply.json()
    if isinstance(body, list):
        return f"{len(body):,} rows"
    if "summary" in body:
        summary = body["summary"]
        return (f"{len(body['items'])} rows of {summary['tokens_stored_live']:,} live tokens "
                f"({summary['tokens_usable']:,} usable)")
    if "tokens" in body:
        return f"{len(body['tokens'])} tokens"
    if "items" in body:
        more = " (more pages)" if body.get("next_cursor") else ""
        return f"{len(body['items'])} rows{more}"
    return f"{len(reply.content):,} bytes"


async def _reload(owner_dsn: str) -> None:
    connection = await asyncpg.connect(owner_dsn)
    try:
        await connection.execute("SELECT pg_notify('keyward_changes', 'reload')")
    finally:
        await connection.close()


def mirrored(api: httpx.Client, owner_dsn: str, live: int, timeout: float = 180) -> float:
    """The bulk COPY sent no notifications: ask every listener for a fresh snapshot, and wait until the
    control plane's mirror of the gateway's cache holds every live token (seconds taken)."""
    asyncio.run(_reload(owner_dsn))
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        summary = api.get("/access", params={"limit": 1}).json()["summary"]
        if summary["tokens_stored_live"] >= live:
            return time.perf_counter() - started
        time.sleep(0.5)
    raise RuntimeError(f"the control plane's token mirror did not reach {live:,} live tokens in {timeout:g} s")


def ask(api: httpx.Client, owner_dsn: str, repeats: int = 3) -> tuple[list[Question], int, int]:
    """Each question ``repeats`` times through the API: (questions, people, live tokens)."""
    people, tokens, person, account = asyncio.run(_identities(owner_dsn))
    mirrored(api, owner_dsn, tokens)
    items = questions(person, account)
    for question in items:
        for _ in range(repeats):
            started = time.perf_counter()
            reply = api.request(question.method, question.path, params=question.params)
            elapsed = (time.perf_counter() - started) * 1000
            if reply.status_code != 200:
                raise RuntimeError(f"{question.key}: {reply.status_code} {reply.text[:300]}")
            question.api_ms.append(elapsed)
            question.answer = _describe(reply)
    return items, people, tokens
