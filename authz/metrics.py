"""Prometheus metrics of the authz process (served on ``KEYWARD_AUTHZ_METRICS_PORT`` when set).

Label values come from fixed sets (outcome codes, task names, HTTP statuses), never from a request.
"""

from prometheus_client import Counter, Gauge

DECISIONS = Counter("keyward_authz_decisions_total", "Check decisions by outcome", ["outcome"])
SNAPSHOT_SECONDS = Gauge("keyward_authz_snapshot_seconds", "Duration of the last snapshot load")
SNAPSHOT_TOKENS = Gauge("keyward_authz_snapshot_tokens", "Tokens in the last snapshot")
SNAPSHOT_REVOKED = Gauge("keyward_authz_snapshot_revoked_tokens", "Revoked tokens in the last snapshot")
LISTENER_RECONNECTS = Counter("keyward_authz_listener_reconnects_total", "Listener connection losses")
LAST_USED_FLUSHES = Counter("keyward_authz_last_used_flushes_total", "Batched last_used_at writes")
LAST_USED_FLUSH_FAILURES = Counter(
    "keyward_authz_last_used_flush_failures_total", "Batched last_used_at writes that failed (kept for the next)"
)
AUDIT_LINES_SHIPPED = Counter("keyward_authz_audit_lines_shipped_total", "Audit lines confirmed by the control plane")
AUDIT_SHIP_FAILURES = Counter("keyward_authz_audit_ship_failures_total", "Failed attempts to ship audit lines")
AUDIT_SPOOL_FAILURES = Counter(
    "keyward_authz_audit_spool_failures_total", "Audit lines that could not be spooled", ["kind"]
)
AUDIT_LINES_QUARANTINED = Counter(
    "keyward_authz_audit_lines_quarantined_total",
    "Audit lines the control plane could not store, set aside in rejected/rejected.jsonl",
    ["status"],
)
LOG_WRITE_FAILURES = Counter(
    "keyward_authz_log_write_failures_total", "Log lines that could not be written (a full disk, a closed stream)"
)
BACKGROUND_TASK_UP = Gauge(
    "keyward_authz_background_task_up", "1 while a background task runs, 0 while it waits to be restarted", ["task"]
)
BACKGROUND_TASK_RESTARTS = Counter(
    "keyward_authz_background_task_restarts_total", "Restarts of a background task after it failed", ["task"]
)
LOOP_STALL_SECONDS = Gauge(
    "keyward_authz_loop_stall_seconds", "How long the event loop has left a callback waiting (0: responsive)"
)
AUDIT_OUTCOME_LINES_READ = Counter(
    "keyward_authz_audit_outcome_lines_total", "Lines of Envoy's audit log read into the spool"
)
AUDIT_OUTCOME_LINES_UNREADABLE = Counter(
    "keyward_authz_audit_outcome_lines_unreadable_total", "Lines of Envoy's audit log that were not JSON objects"
)
LATE_CHECKS = Counter(
    "keyward_authz_late_checks_total",
    "Checks decided after Envoy had answered without them (authz stalled): recorded by Envoy's outcome instead",
)
