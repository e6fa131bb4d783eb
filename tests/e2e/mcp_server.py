"""A real MCP server for the tests: the official ``mcp`` SDK's :class:`MCPServer`, served over Streamable HTTP.

Run as its own process::

    python -m tests.e2e.mcp_server --port P --key K --name N

It serves MCP at ``http://127.0.0.1:P/mcp`` (``--port 0``: any free port) and prints the port it listens on
as its first line of stdout once the socket listens; a connection made from then on waits in the backlog
until the app has started, so the line is a readiness signal. It offers the tools ``search_docs``,
``search_code``, ``delete_repo`` and ``add``; each text answer starts with the server's name (``N``), so a
test can tell which of several servers behind the gateway answered.

It insists on the key Envoy must inject: every request needs exactly one ``Authorization`` header, equal to
``Bearer K``, or gets 401 the way the SDK's own bearer-auth middleware answers. So a second Authorization
header (Envoy adding the key beside the client's PAT instead of replacing it) fails too. It records every
request it receives (method, path, query, headers, body, and the status it answered) and serves the log at
``GET /__mcp__/requests`` (``DELETE`` clears it), without the key, like the mock provider's
``/__mock__/requests``: tests can prove that a client's PAT never reached it and that a refused call never
arrived.

Host and Origin checks (the SDK's DNS-rebinding protection, on by default for 127.0.0.1) are off: the
gateway rewrites Host to the upstream's host:port, and no browser visits a test server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import socket
import time

import uvicorn
from mcp.server import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: Where the request log is served: outside ``/mcp``, and never behind the key.
LOG_PATH = "/__mcp__/requests"
#: The tools every instance offers.
TOOLS = ("search_docs", "search_code", "delete_repo", "add")


def build_server(server_name: str) -> MCPServer:
    server = MCPServer(name=server_name, log_level="WARNING")

    @server.tool()
    def search_docs(query: str) -> str:
        """Search the documentation."""
        return f"{server_name}: docs matching {query!r}"

    @server.tool()
    def search_code(query: str) -> str:
        """Search the code."""
        return f"{server_name}: code matching {query!r}"

    @server.tool()
    def delete_repo(name: str) -> str:
        """Delete a repository (it only says so)."""
        return f"{server_name}: deleted {name}"

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    return server


async def _json(send: Send, status: int, document: object, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps(document).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":  # the client went away
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


class Gate:
    """ASGI middleware in front of the SDK's app: records each request, serves the log, checks the key."""

    def __init__(self, app: ASGIApp, key: str, server_name: str) -> None:
        self.app = app
        self.requests: list[dict] = []
        self._expected = f"Bearer {key}".encode()
        self._name = server_name

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan: the SDK's session manager starts and stops with it
            await self.app(scope, receive, send)
            return
        if scope["path"] == LOG_PATH:
            await self._log(scope, send)
            return
        body = await _read_body(receive)
        entry: dict = {
            "method": scope["method"],
            "path": scope["path"],
            "query": scope["query_string"].decode("latin-1"),
            "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]],
            "body": body.decode("utf-8", "replace"),
            "status": None,
            "at": time.time(),
        }
        self.requests.append(entry)
        authorizations = [v for k, v in scope["headers"] if k.lower() == b"authorization"]
        if len(authorizations) != 1 or not secrets.compare_digest(authorizations[0], self._expected):
            entry["status"] = 401
            await _json(send, 401, {"error": "invalid_token",
                                    "error_description": f"{self._name}: missing or wrong server key"},
                        [(b"www-authenticate", b'Bearer error="invalid_token"')])
            return

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        async def observe(message: Message) -> None:
            if message["type"] == "http.response.start":
                entry["status"] = message["status"]
            await send(message)

        await self.app(scope, replay, observe)

    async def _log(self, scope: Scope, send: Send) -> None:
        if scope["method"] == "DELETE":
            self.requests.clear()
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})
        elif scope["method"] == "GET":
            await _json(send, 200, self.requests)
        else:
            await _json(send, 405, {"error": "GET or DELETE"}, [(b"allow", b"GET, DELETE")])


def create_app(key: str, server_name: str) -> Gate:
    if not key:
        raise ValueError("the server key must not be empty")
    app = build_server(server_name).streamable_http_app(
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False))
    return Gate(app, key, server_name)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True, help="0: any free port (printed on stdout)")
    parser.add_argument("--key", required=True, help="the bearer key every request must carry")
    parser.add_argument("--name", required=True, help="the server's name, in its answers and its MCP info")
    args = parser.parse_args(argv)
    app = create_app(args.key, args.name)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", args.port))
    listener.listen(128)
    print(listener.getsockname()[1], flush=True)
    config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=1)
    asyncio.run(uvicorn.Server(config).serve(sockets=[listener]))


if __name__ == "__main__":
    main()
