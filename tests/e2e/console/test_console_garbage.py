"""Every console page fed garbage: unknown ids, malformed ids, hostile query values, forged and oversized
forms. Each answer is a page with a 3xx/4xx status (never a 500), and nothing changes."""

from __future__ import annotations

import re
import uuid

import httpx
import pytest

from controlplane.api.routes.console import PAGES
from tests.e2e.conftest import Gateway
from tests.e2e.console.conftest import Console

pytestmark = pytest.mark.e2e

HOSTILE = ["", "'; DROP TABLE tokens;--", "<script>alert(1)</script>", "%00", "\u0000", "9" * 400,
           "-1", "2026-13-45T99:99", "../../etc/passwd", "*", "NaN"]


def _routes() -> list[tuple[str, str, list[str]]]:
    found = []
    for module in PAGES:
        for route in module.router.routes:
            path = getattr(route, "path", "")
            for method in sorted(getattr(route, "methods", ()) or ()):
                if path.startswith("/console") and method in ("GET", "POST"):
                    found.append((method, path, re.findall(r"{([^}]+)}", path)))
    return found


def _query_names(route_path: str) -> list[str]:
    for module in PAGES:
        for route in module.router.routes:
            if getattr(route, "path", "") == route_path:
                return [param.name for param in route.dependant.query_params]  # type: ignore[attr-defined]
    return []


def test_every_console_route_answers_garbage_without_a_server_error(gateway: Gateway, console: Console) -> None:
    browser = console.as_bootstrap()
    secret = browser.cookie("keyward_session")["value"]
    csrf = browser.find("form[action='/console/sign-out'] input[name=csrf]").get_attribute("value")
    routes = _routes()
    assert len(routes) > 10, routes
    tokens_before = gateway.admin.get("/tokens", params={"limit": 1}).json()
    with httpx.Client(base_url=gateway.info.api_url, cookies={"keyward_session": secret}, timeout=30,
                      follow_redirects=False) as client:
        for method, path, names in routes:
            if path in ("/console/sign-out", "/console/enter"):
                continue
            for filler in (str(uuid.uuid4()), "not-an-id", "%2e%2e"):
                url = path
                for name in names:
                    url = url.replace("{" + name + "}", filler)
                queries = _query_names(path)
                for value in HOSTILE:
                    params = dict.fromkeys(queries, value)
                    if method == "GET":
                        reply = client.get(url, params=params)
                    else:
                        # A forged form (no CSRF token) and a garbage one with the right token.
                        reply = client.post(url, data={"x": value})
                        assert reply.status_code in (403, 404, 422), (method, url, reply.status_code)
                        reply = client.post(url, data={**dict.fromkeys(queries, value), "csrf": csrf,
                                                       "reason": value, "name": value})
                    assert reply.status_code < 500, (method, url, params, reply.status_code, reply.text[:300])
                    if reply.headers.get("content-type", "").startswith("text/html"):
                        assert "<script>alert(1)</script>" not in reply.text, (method, url)
        # Oversized forms are refused before anything reads them.
        big = client.post("/console/sign-out", content=b"csrf=" + b"a" * 3_000_000,
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert big.status_code == 413
    assert gateway.admin.get("/tokens", params={"limit": 1}).json()["items"][:1] == tokens_before["items"][:1]
