"""Pure parts of notification delivery and the spend report: back-off, the documents sent, signatures,
shortened Slack URLs, report windows and the report's SQL."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, date, datetime

import pytest

from controlplane.core.signatures import sign, verify
from controlplane.errors import Invalid
from controlplane.models import NotificationChannel, NotificationDelivery
from controlplane.schemas.spend_reports import NotificationChannelCreate, shown_url
from controlplane.services import delivery, spend


def test_back_off_doubles_from_the_first_delay_up_to_the_cap() -> None:
    policy = delivery.Policy(retry_seconds=5, retry_max_seconds=600)
    assert [policy.backoff(n) for n in range(1, 10)] == [5, 10, 20, 40, 80, 160, 320, 600, 600]
    assert policy.backoff(10_000) == 600  # no overflow however many attempts


def _delivery(kind: str = "budget.threshold_reached", payload: dict | None = None) -> NotificationDelivery:
    return NotificationDelivery(id=uuid.uuid4(), kind=kind, payload=payload or {"summary": "Team a at 80%",
                                                                                "threshold": 80, "note": None},
                                created_at=datetime(2026, 12, 1, tzinfo=UTC))


def test_a_webhook_request_is_the_generic_document_signed_with_the_channel_secret() -> None:
    item = _delivery()
    channel = NotificationChannel(kind="webhook", url="https://example.com/h", signing_secret="kw_whsec_x")
    body, headers = delivery.request_for(item, channel)
    assert json.loads(body) == {"id": str(item.id), "kind": item.kind, "created_at": "2026-12-01T00:00:00+00:00",
                                "data": item.payload}
    assert headers["Keyward-Event"] == item.kind and headers["Keyward-Delivery"] == str(item.id)
    assert verify("kw_whsec_x", headers["Keyward-Signature"], body)
    assert not verify("kw_whsec_y", headers["Keyward-Signature"], body)


def test_a_slack_request_is_written_for_people_and_unsigned() -> None:
    body, headers = delivery.request_for(_delivery(), NotificationChannel(kind="slack", url="https://hooks/x"))
    message = json.loads(body)
    assert "Keyward-Signature" not in headers
    assert message["text"] == "Budget threshold reached: Team a at 80%"
    fields = next(block for block in message["blocks"] if "fields" in block)["fields"]
    assert fields == [{"type": "mrkdwn", "text": "*threshold*\n80"}]  # no summary again, no nulls
    plain = delivery.slack_message("something.else", {})
    assert plain["text"] == "something.else" and all("fields" not in block for block in plain["blocks"])


def test_signatures_expire_and_tolerate_rotation_overlap() -> None:
    header = sign("k", b"{}", timestamp=1000)
    assert verify("k", header, b"{}", now=1000 + 300) and not verify("k", header, b"{}", now=1000 + 301)
    assert not verify("k", header, b"{}", now=1000 - 301)
    assert verify("k", f"t=1000,v1={'ab' * 32}, {header.split(',')[1]}", b"{}", now=1000)


def test_slack_urls_are_shown_shortened_and_webhook_urls_in_full() -> None:
    assert shown_url("slack", "https://user:pw@hooks.slack.com/services/T/B/abcdWXYZ") == "https://hooks.slack.com/…WXYZ"
    assert shown_url("slack", "https://hooks.slack.com/…WXYZ") == "https://hooks.slack.com/…WXYZ"
    assert shown_url("webhook", "https://example.com/a?b=c") == "https://example.com/a?b=c"


@pytest.mark.parametrize("url", ["https://example.com", "http://127.0.0.1:8080/hook?x=1", "HTTPS://EXAMPLE.COM/"])
def test_http_urls_are_channels(url: str) -> None:
    assert NotificationChannelCreate(name="n", kind="webhook", url=url).url == url


@pytest.mark.parametrize("url", ["ftp://example.com", "//example.com", "https://", "http://a b", "http://x:0x1/",
                                 "https://exa\x00mple.com"])
def test_other_urls_are_not(url: str) -> None:
    with pytest.raises(ValueError, match="url"):
        NotificationChannelCreate(name="n", kind="webhook", url=url)


def test_the_report_window_defaults_to_the_calendar_month() -> None:
    today = date(2026, 12, 17)
    assert spend.window(None, None, today=today) == (date(2026, 12, 1), date(2027, 1, 1))
    assert spend.window(None, date(2026, 3, 1), today=today) == (date(2026, 2, 1), date(2026, 3, 1))
    assert spend.window(date(2026, 11, 5), None, today=today) == (date(2026, 11, 5), date(2027, 1, 1))
    assert spend.window(None, date(2026, 3, 15), today=today) == (date(2026, 3, 1), date(2026, 3, 15))
    with pytest.raises(Invalid):
        spend.window(date(2026, 3, 2), date(2026, 3, 2))
    with pytest.raises(Invalid):
        spend.window(None, date.min)
    assert spend.window(date(9999, 12, 1), None, today=date(9999, 12, 31)) == (date(9999, 12, 1), date.max)


def test_groups_keep_their_order_once_each() -> None:
    assert spend.parse_groups(" team, model ,team,day") == ["team", "model", "day"]


def test_a_report_groups_by_position_and_filters_by_bound_parameters() -> None:
    report = spend.Report(groups=["team", "month"], start=date(2026, 1, 1), end=date(2026, 2, 1),
                          filters={"model": "gpt-4o'; --", "team_id": uuid.uuid4()})
    query, params = report.page_sql(limit=101, offset=0)
    assert "GROUP BY 1, 2" in query and "s.model = :model" in query and "gpt-4o'" not in query
    assert params["model"] == "gpt-4o'; --" and params["limit"] == 101
    assert "LEFT JOIN teams t ON t.id = p.team_id" in query and "LEFT JOIN users" not in query
    assert report.columns == ["team_id", "team_name", "month", "requests", "input_tokens", "cached_tokens",
                              "output_tokens", "cost_usd", "estimated_requests"]
    export, _ = report.export_sql()
    assert "p.cost_usd::text AS cost_usd" in export and "LIMIT" not in export


def test_a_budget_alert_reads_as_a_sentence_in_slack() -> None:
    payload = {"scope_type": "service_account", "scope_id": str(uuid.uuid4()), "scope_name": "nightly-batch",
               "threshold": 80, "source": "own", "team_ids": [], "amount_usd": "50.0000", "period": "month",
               "posture": "alert_then_hard", "thresholds": [50, 80, 100], "period_start": "2026-12-01T00:00:00Z",
               "period_end": "2027-01-01T00:00:00Z", "active": True, "spent_usd": "41.2000000000", "percent": "82.40",
               "remaining_usd": "8.8000000000", "thresholds_reached": [50, 80], "refused": False}
    message = delivery.slack_message("budget.threshold_reached", payload)
    assert message["text"] == ("Budget threshold reached: service account nightly-batch has reached 80% of its monthly "
                               "budget: $41.20 of $50.00 spent; the period ends 2027-01-01 00:00 UTC.")
    names = [field["text"].split("*")[1] for block in message["blocks"] if "fields" in block
             for field in block["fields"]]
    assert names == ["scope type", "scope name", "threshold", "spent usd", "amount usd", "remaining usd", "posture",
                     "period end"]
    refused = delivery.slack_message("budget.threshold_reached", payload | {"threshold": 100, "refused": True})
    assert refused["text"].endswith("Its requests are refused until then.")
    # A payload this code does not know how to word still goes out, with its title.
    assert delivery.slack_message("budget.threshold_reached", {"threshold": 80})["text"] == "Budget threshold reached"
