"""The admin console's pages, timed end to end at scale: each page fetched ``repeats`` times by a browser
session (a one-time link spent for it), the HTML read in full.

Asked twice in ``make bench``: with the snapshot phase's 100,000 bulk tokens (the token, people and
overview pages), and with the audit-query phase's millions of request records (the audit log and the
spend pages). The answer column gives the page's size and status, so a fast error page cannot pass for
a fast page.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
from auditquery import Question

#: "Every page renders in under 300 ms with 100k tokens and 10M request records."
MAX_PAGE_MS = 300.0

TOKEN_PAGES = [
    ("overview", "Overview: live, usable, dormant tokens, reach per provider, spend, chains", "/console", {}),
    ("tokens", "Tokens: first page, newest first", "/console/tokens", {}),
    ("tokens-dormant", "Tokens: dormant 30+ days", "/console/tokens", {"state": "active", "dormant_days": "30"}),
    ("tokens-search", "Tokens: search by owner", "/console/tokens", {"owner": "bench"}),
    ("people", "People: first page", "/console/people", {}),
    ("teams", "Teams & policy", "/console/teams", {}),
    ("register", "The credential register (first page)", "/console/register", {}),
    ("reviews", "Access reviews", "/console/reviews", {}),
]

RECORD_PAGES = [
    ("audit-requests", "Audit log: requests of the last 24 hours", "/console/audit", {"kind": "requests"}),
    ("audit-events", "Audit log: events", "/console/audit", {"kind": "events"}),
    ("audit-denied", "Audit log: refused requests", "/console/audit", {"kind": "requests", "decision": "denied"}),
    ("spend", "Spend: this month by team, stacked by day", "/console/spend", {}),
    ("overview-records", "Overview (denials of the last 24 hours counted over the records)", "/console", {}),
]


def signed_in(api_url: str, admin_token: str) -> httpx.Client:
    """A client holding a console session of the bootstrap admin."""
    minted = httpx.post(f"{api_url}/api/v1/console/links", headers={"Authorization": f"Bearer {admin_token}"},
                        timeout=30)
    minted.raise_for_status()
    client = httpx.Client(base_url=api_url, timeout=120, follow_redirects=False)
    entered = client.get(minted.json()["path"])
    if entered.status_code != 303 or "keyward_session" not in client.cookies:
        raise RuntimeError(f"the console link did not sign in: {entered.status_code} {entered.text[:200]}")
    return client


def ask(api_url: str, admin_token: str, pages: list[tuple[str, str, str, dict[str, Any]]],
        repeats: int = 5) -> list[Question]:
    asked = []
    client = signed_in(api_url, admin_token)
    try:
        for key, title, path, params in pages:
            question = Question(key=key, title=title, method="GET", path=path, params=params, sql=[])
            for _ in range(repeats):
                started = time.perf_counter()
                reply = client.get(path, params=params)
                question.api_ms.append((time.perf_counter() - started) * 1000)
                if reply.status_code != 200:
                    raise RuntimeError(f"{key}: {reply.status_code} {reply.text[:300]}")
                question.answer = f"{reply.status_code}, {len(reply.content) / 1024:,.0f} KiB of HTML"
            asked.append(question)
    finally:
        client.close()
    return asked
