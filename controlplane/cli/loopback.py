"""The loopback redirect of ``keyward login`` (RFC 8252, section 7.3): a one-shot HTTP server on
``127.0.0.1``, on a free port, that takes the authorization response whose ``state`` is the one sent,
answers the browser with a short page, and hands the query to the waiting command."""

from __future__ import annotations

import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from controlplane.cli.output import fail


class _Callback(BaseHTTPRequestHandler):
    server: LoopbackServer

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        if parts.path != "/callback":
            self._reply(404, "Not found.")
            return
        query = {name: values[0] for name, values in parse_qs(parts.query).items()}
        if query.get("state") != self.server.expected_state:
            self._reply(400, "This sign-in does not belong to the waiting `keyward login` (state mismatch).")
            self.server.outcome = {"error": "state_mismatch",
                                   "error_description": "the redirect's state is not the one sent"}
            return
        if "error" in query:
            self._reply(400, f"Sign-in failed: {query['error']}. You can close this tab.")
        else:
            self._reply(200, "Signed in. You can close this tab and return to the terminal.")
        self.server.outcome = query

    def _reply(self, status: int, message: str) -> None:
        body = (f"<!doctype html><meta charset=utf-8><title>Keyward</title><p>{message}</p>").encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return


class LoopbackServer(HTTPServer):
    def __init__(self, expected_state: str) -> None:
        super().__init__(("127.0.0.1", 0), _Callback)
        self.expected_state = expected_state
        self.outcome: dict[str, str] | None = None

    @property
    def redirect_uri(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/callback"

    def wait(self, timeout: float) -> dict[str, str]:
        """The redirect's query, or a one-line error after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while self.outcome is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                fail(f"no sign-in within {timeout:.0f} seconds")
            self.timeout = min(remaining, 1.0)
            self.handle_request()
        return self.outcome
