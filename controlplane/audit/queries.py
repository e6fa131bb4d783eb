"""Read side of the audit store: the questions auditors ask, as bound-parameter SQL.

Request queries always carry a time window; partitions are by ingest time (``stored_at``), which is
never earlier than the request time, so a lower bound on it prunes older months. Postgres walks the
``(user_id, at)``, ``(team, at)``, ``(token_id, at)`` or ``(at)`` index; outcomes are joined by
request id within a minute of the decision, which the ``request_id`` index answers per partition.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

REQUEST_COLUMNS = (
    "seq", "at", "request_id", "source", "token_id", "user_id", "user_email", "team", "environment", "provider",
    "method", "route", "model", "decision", "status", "upstream_status", "response_flags", "details", "duration_ms",
    "upstream_ms", "bytes_in", "bytes_out", "prompt_tokens", "completion_tokens",
)

_SELECT_REQUESTS = """
SELECT r.seq, r.at, r.request_id, r.source, r.token_id, r.user_id, r.user_email, r.team, r.environment,
       r.provider, r.method, r.route, r.model, r.decision, COALESCE(o.status, r.status) AS status,
       o.upstream_status, o.response_flags, o.details, o.duration_ms, o.upstream_ms, o.bytes_in, o.bytes_out,
       o.prompt_tokens, o.completion_tokens
FROM request_records r
LEFT JOIN LATERAL (
    SELECT * FROM request_outcomes o
    WHERE o.request_id = r.request_id
      AND o.at BETWEEN r.at - interval '1 minute' AND r.at + interval '1 minute'
      -- an outcome is stored after it happened: this bound lets Postgres skip older partitions
      AND o.stored_at >= r.at - interval '1 day'
    ORDER BY o.seq LIMIT 1
) o ON true
"""


@dataclass
class RequestFilter:
    start: datetime
    end: datetime
    user_id: uuid.UUID | None = None
    user_email: str | None = None
    team: str | None = None
    token_id: uuid.UUID | None = None
    model: str | None = None
    decision: str | None = None
    status: int | None = None
    provider: str | None = None
    after: tuple[datetime, int] | None = None
    extra: list[str] = field(default_factory=list)

    def sql(self, *, limit: int | None) -> tuple[str, dict[str, Any]]:
        # stored_at >= at (less any clock skew between hosts), so this bound prunes older months.
        clauses = ["r.at >= :start", "r.at < :end",
                   "r.stored_at >= CAST(:start AS timestamptz) - interval '1 day'"]
        params: dict[str, Any] = {"start": self.start, "end": self.end}
        for column, value in (("user_id", self.user_id), ("team", self.team), ("token_id", self.token_id),
                              ("model", self.model), ("decision", self.decision), ("provider", self.provider)):
            if value is not None:
                clauses.append(f"r.{column} = :{column}")
                params[column] = value
        if self.user_email is not None:
            clauses.append("lower(r.user_email) = lower(:user_email)")
            params["user_email"] = self.user_email
        if self.status is not None:
            clauses.append("COALESCE(o.status, r.status) = :status")
            params["status"] = self.status
        if self.after is not None:
            clauses.append("(r.at, r.seq) > (:after_at, :after_seq)")
            params["after_at"], params["after_seq"] = self.after
        query = _SELECT_REQUESTS + " WHERE " + " AND ".join(clauses) + " ORDER BY r.at, r.seq"
        if limit is not None:
            query += " LIMIT :limit"
            params["limit"] = limit
        return query, params


USER_ACTIVITY = {
    "last_request": _SELECT_REQUESTS + " WHERE r.user_id = :user_id ORDER BY r.at DESC, r.seq DESC LIMIT 1",
    "last_allowed": _SELECT_REQUESTS
    + " WHERE r.user_id = :user_id AND r.decision = 'allowed' ORDER BY r.at DESC, r.seq DESC LIMIT 1",
    "allowed_after": _SELECT_REQUESTS
    + " WHERE r.user_id = :user_id AND r.decision = 'allowed' AND r.at > :since ORDER BY r.at, r.seq LIMIT 100",
    "count_allowed_after": "SELECT count(*) FROM request_records r"
    " WHERE r.user_id = :user_id AND r.decision = 'allowed' AND r.at > :since",
    "disabled_event": "SELECT * FROM events WHERE target_type = 'user' AND target_id = :user_id_text"
    " AND action IN ('user.deprovisioned', 'user.suspended', 'scim.deprovision') ORDER BY seq DESC LIMIT 1",
}
