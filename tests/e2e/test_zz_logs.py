"""After a full run: every line of every log the session's stack wrote is JSON in Keyward's log schema, and
none holds a secret.

**This module must run last among the e2e tests that use the session's ``gateway``.** pytest collects a
directory's entries in name order, so ``test_zz_logs.py`` comes after every other module of tests/e2e
(and after its ``console/`` and ``oidc/`` directories); keep its name sorting last. Run alone, it still
checks what its own requests left in the logs: it sends a few with credentials while Envoy logs at
trace (through its admin socket; put back to the stack's level after).

What is read: every file under ``<data_dir>/logs`` (the children's logs, the runner's ``stack.log``,
Envoy's access logs, any a test wrote there, such as test_oidc's second control plane). A line still
being written (no newline yet) is left for the next run. For each complete line:

* it is one JSON object; in a process log (every file but the access logs) its first keys are ``time``
  (RFC 3339, UTC), ``level``, ``process`` (the one the file's name says), ``event``;
* it holds none of the stack's secrets, read from ``<data_dir>/secrets`` (the admin token, the ingest
  token, the token hash key, the session secret, the audit signing key, both database passwords), the
  provider keys Envoy injects (``gateway.provider_keys``) and the OIDC client secret, nor anything shaped
  like a Keyward credential (``kw_pat_…``, ``kw_api_…``, ``kw_scim_…``, ``kw_sess_…``, ``kw_cli_…``,
  ``kw_admin_…``, ``kw_link_…``) that was not redacted.

Exceptions to the schema (documented, and the only ones):

* ``access*.log``: Envoy's access log, one record per request with its own fields (``time``,
  ``request_id``, ``method``, ``route``, ``status``…; envoy/gateway.yaml), already JSON; it is the
  request record the README describes, not a process's log. Its lines must be JSON objects with ``time``
  and ``request_id``, and hold no secret.

Postgres has none: its log is ``jsonlog`` read through FIFOs and reshaped by the runner, and the few lines
its postmaster writes to stderr before the collector starts are reshaped too
(controlplane/stack/embedded_pg.py).
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from authz.logs import SCHEMA
from tests.e2e.conftest import Gateway

pytestmark = pytest.mark.e2e

CREDENTIAL = re.compile(r"kw_(pat|api|scim|sess|cli|admin|link)_[A-Za-z0-9_-]{8,}")
LEVELS = {"trace", "debug", "info", "warning", "error", "critical"}
#: <data_dir>/secrets files that are not secret.
PUBLIC = {"audit_public_key"}
#: Which process writes each log (by the file name's stem, before any "-<suffix>" of another replica).
PROCESS_OF = {"authz": "authz", "envoy": "envoy", "controlplane": "controlplane", "mock-provider": "mock-provider",
              "stack": "stack", "postgres": "postgres"}


def _secrets(gateway: Gateway) -> dict[str, str]:
    found = {f"secrets/{path.name}": path.read_text().strip()
             for path in sorted((gateway.stack.data_dir / "secrets").iterdir())
             if path.is_file() and path.name not in PUBLIC}
    found |= {f"the {name} provider key": key for name, key in gateway.provider_keys.items()}
    if gateway.stack.settings.oidc_client_secret:
        found["the OIDC client secret"] = gateway.stack.settings.oidc_client_secret
    assert {"secrets/admin_token", "secrets/ingest_token", "secrets/token_hash_key", "secrets/session_secret",
            "secrets/audit_signing_key", "secrets/postgres_password", "secrets/app_database_password"} <= set(found)
    assert all(len(value) >= 16 for value in found.values()), "a secret too short to look for"
    return found


def _complete_lines(path: Path) -> list[str]:
    text = path.read_bytes().decode("utf-8", "replace")
    lines = text.split("\n")
    return [line for line in lines[:-1] if line.strip()]  # the last piece has no newline yet (or is empty)


def _process_of(path: Path) -> str | None:
    stem = path.stem
    for prefix in sorted(PROCESS_OF, key=len, reverse=True):
        if stem == prefix or stem.startswith(prefix + "-"):
            return PROCESS_OF[prefix]
    return None


def _schema_problem(record: dict[str, Any], process: str | None) -> str | None:
    if list(record)[:4] != list(SCHEMA):
        return f"first keys {list(record)[:4]}"
    try:
        when = datetime.fromisoformat(str(record["time"]).replace("Z", "+00:00"))
    except ValueError:
        return f"time {record['time']!r}"
    if when.utcoffset() is None or when.utcoffset().total_seconds() != 0:  # type: ignore[union-attr]
        return f"time {record['time']!r} not UTC"
    if record["level"] not in LEVELS:
        return f"level {record['level']!r}"
    if process is not None and record["process"] != process:
        return f"process {record['process']!r}, expected {process!r}"
    if not isinstance(record["event"], str):
        return "event not a string"
    return None


def _traffic(gateway: Gateway) -> tuple[str, str]:
    """Requests that put credentials where a log could see them: a PAT through the gateway while Envoy
    logs at trace (every header, the CheckRequest dump), the admin token and a credential-looking query
    string and request id on the control plane. The request id the control plane logged the last one
    under."""
    minted = gateway.mint()
    with gateway.stack.envoy_admin() as admin:
        assert admin.post("/logging", params={"level": "trace"}).status_code == 200
        try:
            assert gateway.chat(minted.secret).status_code == 200
            assert gateway.chat("kw_pat_" + "N" * 36).status_code == 401
            anthropic = gateway.http.post("/anthropic/v1/messages", headers={
                "x-api-key": minted.secret, "anthropic-version": "2023-06-01"}, json={
                "model": "claude-haiku-4-5", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})
            assert anthropic.status_code == 200
        finally:
            admin.post("/logging", params={"level": gateway.stack.settings.envoy_log_level})
    api = gateway.info.api_url
    sent = f"e2e-logs-{uuid.uuid4().hex[:8]}"
    reply = httpx.get(f"{api}/api/v1/users", params={"email": minted.secret},
                      headers={"Authorization": f"Bearer {gateway.info.admin_token}", "X-Request-Id": sent})
    assert reply.status_code == 200 and reply.headers["x-request-id"] == sent
    return minted.secret, sent


def test_every_log_line_is_json_in_the_schema_and_holds_no_secret(gateway: Gateway) -> None:
    pat, request_id = _traffic(gateway)
    logs = gateway.info.logs_dir

    def logged() -> bool:
        return any(json.loads(line).get("request_id") == request_id
                   for line in _complete_lines(logs / "controlplane.log"))

    gateway.wait_until(logged, timeout=10, what="the control plane's access line")
    forbidden = _secrets(gateway) | {"the PAT used in this test": pat}

    files = sorted(path for path in logs.rglob("*") if path.is_file())
    names = {path.name for path in files}
    assert {"stack.log", "postgres.log", "controlplane.log", "authz.log", "envoy.log", "mock-provider.log",
            "access.log"} <= names, names
    problems: list[str] = []
    counted: dict[str, int] = {}
    for path in files:
        access = path.name.startswith("access")
        process = _process_of(path)
        lines = _complete_lines(path)
        counted[path.name] = len(lines)
        for number, line in enumerate(lines, 1):
            where = f"{path.name}:{number}"
            for what, value in forbidden.items():
                if value in line:
                    problems.append(f"{where}: {what}")
            if (found := CREDENTIAL.search(line)) is not None:
                problems.append(f"{where}: an unredacted credential {found.group()[:10]}…")
            try:
                record = json.loads(line)
            except ValueError:
                problems.append(f"{where}: not JSON: {line[:200]}")
                continue
            if not isinstance(record, dict):
                problems.append(f"{where}: not a JSON object")
            elif access:
                if not {"time", "request_id"} <= set(record):
                    problems.append(f"{where}: an access record without time and request_id")
            elif (problem := _schema_problem(record, process)) is not None:
                problems.append(f"{where}: {problem}: {line[:200]}")
    assert problems == [], "\n".join(problems[:50])
    # The premise: each process did log (a check that read nothing would pass), Envoy's trace included.
    for name in ("stack.log", "postgres.log", "controlplane.log", "envoy.log", "access.log"):
        assert counted[name] > 0, f"{name} is empty"
    envoy = (logs / "envoy.log").read_text(errors="replace")
    assert "'authorization', '[REDACTED]'" in envoy and "'x-api-key', '[REDACTED]'" in envoy
    access_lines = [json.loads(line) for line in _complete_lines(logs / "controlplane.log")]
    mine = [r for r in access_lines if r.get("request_id") == request_id and r["event"] == "http.access"]
    assert [(r["method"], r["path"], r["status"]) for r in mine] == [("GET", "/api/v1/users", 200)]
