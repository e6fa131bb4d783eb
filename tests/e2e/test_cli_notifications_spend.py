"""``keyward notifications`` and ``keyward spend`` against the real stack, run as a process the way an
operator runs them (see tests/e2e/test_cli.py for the harness)."""

from __future__ import annotations

import csv
import io
import json
import threading
import uuid
from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, get_args

import pytest

from controlplane import schemas
from controlplane.cli import spend as spend_cli
from controlplane.core.signatures import verify
from controlplane.services import spend
from tests.e2e.conftest import Gateway
from tests.e2e.test_cli import document, keyward, ok
from tests.e2e.test_denials import sql

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def receiver() -> Iterator[tuple[str, list[tuple[dict[str, str], bytes]]]]:
    """A webhook receiver on 127.0.0.1 that takes everything, and what it got."""
    got: list[tuple[dict[str, str], bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            got.append((dict(self.headers.items()), self.rfile.read(int(self.headers.get("Content-Length", "0")))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", got
    finally:
        server.shutdown()
        server.server_close()


def test_the_cli_knows_the_apis_groups() -> None:
    assert spend_cli.GROUPS == tuple(spend.GROUPS) == get_args(schemas.SpendGroup)
    assert set(spend_cli.NAMED) == set(spend.ID_COLUMNS)


def test_an_operator_sets_up_a_signed_webhook_and_tests_it(gateway: Gateway, receiver: tuple) -> None:
    url, got = receiver
    name = f"cli-hook-{uuid.uuid4().hex[:6]}"
    created = ok(keyward(gateway, "notifications", "create", name, "--kind", "webhook", "--url", url))
    secret = created.strip().splitlines()[-1]
    assert secret.startswith("kw_whsec_") and f"Created webhook channel {name}" in created
    assert "shown this once" in created
    # Named by name from here on; show never prints the secret.
    shown = document(keyward(gateway, "notifications", "show", name, "--json"))
    assert shown["name"] == name and shown["url"] == url and "signing_secret" not in shown
    assert secret not in ok(keyward(gateway, "notifications", "list", "--all"))
    assert name in ok(keyward(gateway, "notifications", "list", "--all"))
    paused = document(keyward(gateway, "notifications", "update", name, "--disable", "--json"))
    assert paused["enabled"] is False
    refused = keyward(gateway, "notifications", "test", name)
    assert refused.returncode == 1 and "notification_channel_disabled" in refused.stderr, refused.stderr
    assert name in ok(keyward(gateway, "notifications", "list", "--disabled", "--all"))
    ok(keyward(gateway, "notifications", "update", name, "--enable"))
    tested = ok(keyward(gateway, "notifications", "test", name, "--wait", "20"))
    assert "delivered after 1 attempt(s)" in tested, tested
    headers, body = got[-1]
    assert verify(secret, headers["Keyward-Signature"], body) and json.loads(body)["kind"] == "notification.test"
    rotated = ok(keyward(gateway, "notifications", "rotate-secret", name, "--quiet")).strip()
    assert rotated.startswith("kw_whsec_") and rotated != secret
    listed = document(keyward(gateway, "notifications", "deliveries", "--channel", name, "--json"))
    assert [d["status"] for d in listed["items"]] == ["delivered"]
    nothing = keyward(gateway, "notifications", "update", name)
    assert nothing.returncode == 2 and "nothing to change" in nothing.stderr
    removed = ok(keyward(gateway, "notifications", "remove", name, "--yes"))
    assert f"Removed channel {name}" in removed
    assert document(keyward(gateway, "notifications", "show", name, "--json"))["enabled"] is False
    bad = keyward(gateway, "notifications", "create", "x", "--kind", "webhook", "--url", "ftp://example.com")
    assert bad.returncode == 1 and "url" in bad.stderr, bad.stderr


def test_a_slack_channel_has_no_secret_to_print(gateway: Gateway) -> None:
    name = f"cli-slack-{uuid.uuid4().hex[:6]}"
    made = document(keyward(gateway, "notifications", "create", name, "--kind", "slack", "--url",
                            "http://127.0.0.1:9/services/T0/B0/secretABCD", "--json"))
    assert made["signing_secret"] is None and made["url"] == "http://127.0.0.1:9/…ABCD"
    ok(keyward(gateway, "notifications", "remove", made["id"], "--yes"))


@pytest.fixture(scope="module")
def spent(gateway: Gateway) -> dict:
    team = gateway.team(f"cli-spend-{uuid.uuid4().hex[:6]}")
    project = uuid.uuid4()
    sql(gateway, "INSERT INTO projects (id, team_id, name) VALUES ($1, $2, 'cli-spend-project')", project,
        uuid.UUID(team["id"]))
    for model, cost, requests, in_project in (("gpt-4o", "1.25", 4, True), ("gpt-4o-mini", "0.05", 9, False)):
        sql(gateway, "INSERT INTO spend_daily (day, provider, model, environment, team_id, project_id, requests, "
            "input_tokens, output_tokens, cost_usd) VALUES ($1, 'openai', $2, 'prod', $3, $4, $5, 100, 10, $6)",
            date(2025, 3, 5), model, uuid.UUID(team["id"]), project if in_project else None, requests, Decimal(cost))
    return team


def test_spend_prints_a_table_with_a_total(gateway: Gateway, spent: dict) -> None:
    out = ok(keyward(gateway, "spend", "--group-by", "team,model", "--team", spent["name"], "--start", "2025-03-01",
                     "--end", "2025-04-01"))
    lines = out.splitlines()
    assert lines[0] == "Spend from 2025-03-01 to 2025-04-01 (exclusive), by team, model:"
    rows = [line for line in lines if spent["name"] in line]
    assert len(rows) == 2 and "gpt-4o " in rows[0] and "1.2500" in rows[0] and "0.0500" in rows[1]
    assert lines[-1] == ("Total: 1.3000 USD, 13 requests, 200 input tokens (0 cached), 20 output tokens, 0 estimated; "
                         "2 groups.")


def test_spend_as_json_and_as_exports(gateway: Gateway, spent: dict) -> None:
    window = ("--start", "2025-03-01", "--end", "2025-04-01", "--team", spent["id"])
    report = document(keyward(gateway, "spend", "--group-by", "model", *window, "--json", "--limit", "1", "--all"))
    assert [(i["model"], Decimal(i["cost_usd"])) for i in report["items"]] == [
        ("gpt-4o", Decimal("1.25")), ("gpt-4o-mini", Decimal("0.05"))]
    assert report["total"]["groups"] == 2 and report["next_cursor"] is None
    exported = ok(keyward(gateway, "spend", "--group-by", "day,model", *window, "--format", "csv"))
    rows = list(csv.reader(io.StringIO(exported)))
    assert rows[0][:2] == ["day", "model"] and [r[:2] for r in rows[1:]] == [["2025-03-05", "gpt-4o"],
                                                                            ["2025-03-05", "gpt-4o-mini"]]
    lines = ok(keyward(gateway, "spend", "--group-by", "team", *window, "--format", "jsonl")).splitlines()
    [line] = [json.loads(x) for x in lines]
    assert line["team_name"] == spent["name"] and Decimal(line["cost_usd"]) == Decimal("1.30")
    # A project is named by name within its team.
    by_project = document(keyward(gateway, "spend", "--group-by", "project", "--team", spent["name"], "--project",
                                  "cli-spend-project", "--start", "2025-03-01", "--end", "2025-04-01", "--json"))
    assert [(i["project_name"], Decimal(i["cost_usd"])) for i in by_project["items"]] == [
        ("cli-spend-project", Decimal("1.25"))]


def test_spend_refuses_what_it_cannot_ask(gateway: Gateway) -> None:
    bad = keyward(gateway, "spend", "--group-by", "team,colour")
    assert bad.returncode == 2 and "--group-by" in bad.stderr
    bad = keyward(gateway, "spend", "--start", "March")
    assert bad.returncode == 2 and "--start" in bad.stderr
    refused = keyward(gateway, "spend", "--start", "2025-04-01", "--end", "2025-03-01")
    assert refused.returncode == 1 and "window_empty" in refused.stderr, refused.stderr
    empty = keyward(gateway, "spend", "--start", "2025-04-01", "--end", "2025-04-02", "--model", "none",
                    "--format", "csv")
    assert ok(empty).startswith("team_id,team_name,requests")
