"""Prometheus metrics of the authz process (served on ``KEYWARD_AUTHZ_METRICS_PORT`` when set)."""

from prometheus_client import Counter, Gauge

DECISIONS = Counter("keyward_authz_decisions_total", "Check decisions by outcome", ["outcome"])
SNAPSHOT_SECONDS = Gauge("keyward_authz_snapshot_seconds", "Duration of the last snapshot load")
SNAPSHOT_TOKENS = Gauge("keyward_authz_snapshot_tokens", "Tokens in the last snapshot")
LISTENER_RECONNECTS = Counter("keyward_authz_listener_reconnects_total", "Listener connection losses")
LAST_USED_FLUSHES = Counter("keyward_authz_last_used_flushes_total", "Batched last_used_at writes")
AUDIT_LINES_SHIPPED = Counter("keyward_authz_audit_lines_shipped_total", "Audit lines confirmed by the control plane")
AUDIT_SHIP_FAILURES = Counter("keyward_authz_audit_ship_failures_total", "Failed attempts to ship audit lines")
AUDIT_SPOOL_FAILURES = Counter(
    "keyward_authz_audit_spool_failures_total", "Audit lines that could not be spooled", ["kind"]
)
AUDIT_LINES_QUARANTINED = Counter(
    "keyward_authz_audit_lines_quarantined_total", "Audit lines the control plane refused"
)
