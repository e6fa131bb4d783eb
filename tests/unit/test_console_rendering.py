"""The console's rendering helpers: relative times, money, links that keep filters, and escaping."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from controlplane.web import console

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def test_ago_speaks_like_a_person() -> None:
    assert console.ago(None) == "never"
    assert console.ago(NOW - timedelta(seconds=20), now=NOW) == "just now"
    assert console.ago(NOW - timedelta(minutes=1), now=NOW) == "1 minute ago"
    assert console.ago(NOW - timedelta(hours=2, minutes=5), now=NOW) == "2 hours ago"
    assert console.ago(NOW - timedelta(days=47), now=NOW) == "47 days ago"
    assert console.ago(NOW + timedelta(days=3, hours=1), now=NOW) == "in 3 days"


def test_money_and_times() -> None:
    assert console.usd(None) == "—"
    assert console.usd(Decimal("1234.5")) == "$1,234.50"
    assert console.usd(Decimal("0.00123")) == "$0.0012"
    assert console.usd(Decimal("0.0000123")) == "$0.000012"  # one small request is not free
    assert console.usd(0) == "$0.00"
    assert console.when(None) == "—"
    assert console.when(datetime(2026, 12, 1, 4, 13, 7, tzinfo=UTC)) == "2026-12-01 04:13:07 UTC"


def test_query_keeps_filters_and_drops_empty_ones() -> None:
    params = {"state": "active", "team": "", "sort": "name"}
    assert console.query(params, sort="-name") == "?state=active&sort=-name"
    assert console.query(params, state=None, sort=None) == "?"
    assert console.query({"q": "a&b=c"}) == "?q=a%26b%3Dc"


def test_templates_escape_what_they_show() -> None:
    response = console.render("console/problem.html", {"title": "<b>t</b>", "message": "<script>x</script>",
                                                       "me": None, "path": "/console"})
    body = bytes(response.body).decode()
    assert "<script>x" not in body and "&lt;script&gt;x&lt;/script&gt;" in body
    assert "&lt;b&gt;t&lt;/b&gt;" in body
    assert response.headers["content-security-policy"].startswith("default-src 'none'")
