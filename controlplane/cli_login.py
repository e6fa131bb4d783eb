"""``keyward login``, ``keyward me`` and ``keyward logout``: sign in from a terminal with the identity
provider Keyward trusts.

``keyward login`` asks the control plane which issuer and public client to use
(``GET /api/v1/auth/oidc``), then signs in the way RFC 8252 describes for native apps: a one-shot HTTP
server on ``127.0.0.1`` (a free port) receives the redirect of an authorization-code request with
PKCE (S256), state and nonce; the browser opens on the sign-in page (or, with ``--no-browser``, the
URL is printed for you to open). The code is exchanged at the issuer for an ID token, which the control
plane verifies and trades for a short-lived ``kw_cli_…`` credential in your role (``self``: your own
tokens; or the admin role your IdP groups give).

The credential is written to ``$KEYWARD_CONFIG_DIR/credentials.json`` (default
``~/.config/keyward``), mode 0600 in a 0700 directory, and never printed. A file that group or others
may read is refused. ``keyward me`` shows who you are with it; ``keyward logout`` revokes it and
deletes the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
import sys
import time
import webbrowser
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, urlsplit

import httpx
import typer

app = typer.Typer()

DEFAULT_API_URL = "http://127.0.0.1:8000"
TIMEOUT = httpx.Timeout(15.0, connect=5.0)
EXIT_FAILED, EXIT_CONNECTION = 1, 3

ApiUrl = Annotated[str | None, typer.Option("--api-url", envvar="KEYWARD_API_URL",
                                            help=f"The control plane (default {DEFAULT_API_URL}).")]


def config_dir() -> Path:
    return Path(os.environ.get("KEYWARD_CONFIG_DIR") or Path.home() / ".config" / "keyward").expanduser()


def credentials_path() -> Path:
    return config_dir() / "credentials.json"


def _fail(message: str, code: int = EXIT_FAILED) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _api_base(url: str | None) -> str:
    return (url or DEFAULT_API_URL).rstrip("/")


def _detail(reply: httpx.Response) -> str:
    try:
        body = reply.json()
    except ValueError:
        return f"HTTP {reply.status_code}"
    if isinstance(body, dict) and isinstance(body.get("detail"), str):
        return f"{body['detail']} ({body.get('code', reply.status_code)})"
    return f"HTTP {reply.status_code}"


# -- the credential file --------------------------------------------------------------------------


def save_credential(document: dict[str, Any]) -> Path:
    """Write the credential atomically: 0600 file, 0700 directory."""
    directory = config_dir()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if stat.S_IMODE(directory.stat().st_mode) & 0o077:
        directory.chmod(0o700)
    path = directory / "credentials.json"
    temporary = directory / f".credentials.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(document, handle, indent=2)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise
    return path


def load_credential() -> dict[str, Any]:
    path = credentials_path()
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        raise _fail("not signed in: run `keyward login`") from None
    if mode & 0o077:
        raise _fail(f"{path} may be read by others (mode {mode:04o}); delete it and run `keyward login` again")
    try:
        document = json.loads(path.read_text())
    except ValueError:
        raise _fail(f"{path} is not a Keyward credential; run `keyward login` again") from None
    if not isinstance(document, dict) or not isinstance(document.get("token"), str):
        raise _fail(f"{path} is not a Keyward credential; run `keyward login` again")
    expires = document.get("expires_at")
    if isinstance(expires, str) and datetime.fromisoformat(expires) <= datetime.now(UTC):
        raise _fail("your sign-in expired: run `keyward login` again")
    return document


# -- the loopback redirect ------------------------------------------------------------------------


class _Callback(BaseHTTPRequestHandler):
    server: _LoopbackServer

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


class _LoopbackServer(HTTPServer):
    def __init__(self, expected_state: str) -> None:
        super().__init__(("127.0.0.1", 0), _Callback)
        self.expected_state = expected_state
        self.outcome: dict[str, str] | None = None

    @property
    def redirect_uri(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/callback"

    def wait(self, timeout: float) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while self.outcome is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _fail(f"no sign-in within {timeout:.0f} seconds")
            self.timeout = min(remaining, 1.0)
            self.handle_request()
        return self.outcome


# -- commands -------------------------------------------------------------------------------------


@app.command()
def login(
    api_url: ApiUrl = None,
    no_browser: Annotated[bool, typer.Option("--no-browser", help="Print the sign-in URL instead of opening it.")]
    = False,
    timeout: Annotated[float, typer.Option(min=10, help="Seconds to wait for the sign-in.")] = 300,
) -> None:
    """Sign in with your identity provider and store a short-lived credential for this Keyward."""
    from controlplane.oidc.client import Issuer, LoginRequest, OidcError

    base = _api_base(api_url)
    try:
        reply = httpx.get(f"{base}/api/v1/auth/oidc", timeout=TIMEOUT)
    except httpx.HTTPError as exc:
        raise _fail(f"cannot reach {base}: {type(exc).__name__}", EXIT_CONNECTION) from exc
    if reply.status_code != 200:
        raise _fail(f"{base} does not offer sign-in: {_detail(reply)}")
    config = reply.json()
    issuer = Issuer(config["issuer"])
    attempt = LoginRequest.new()
    with _LoopbackServer(attempt.state) as server:
        try:
            url = asyncio.run(issuer.authorization_url(client_id=config["cli_client_id"],
                                                       redirect_uri=server.redirect_uri, scopes=config["scopes"],
                                                       request=attempt))
        except OidcError as exc:
            raise _fail(exc.message, EXIT_CONNECTION) from exc
        print(f"To sign in, open this URL in a browser:\n\n  {url}\n\nWaiting for the sign-in to finish…",
              file=sys.stderr, flush=True)
        if not no_browser:
            with contextlib.suppress(webbrowser.Error):
                webbrowser.open(url)
        outcome = server.wait(timeout)
    if "error" in outcome:
        raise _fail(f"sign-in failed: {outcome['error']}: {outcome.get('error_description', '')}".rstrip(": "))
    try:
        answer = asyncio.run(issuer.exchange_code(client_id=config["cli_client_id"], client_secret=None,
                                                  code=outcome.get("code", ""), redirect_uri=server.redirect_uri,
                                                  code_verifier=attempt.code_verifier))
    except OidcError as exc:
        raise _fail(exc.message) from exc
    try:
        reply = httpx.post(f"{base}/api/v1/auth/oidc/cli-token", timeout=TIMEOUT, json={
            "id_token": answer["id_token"], "nonce": attempt.nonce,
            "access_token": answer.get("access_token") if isinstance(answer.get("access_token"), str) else None})
    except httpx.HTTPError as exc:
        raise _fail(f"cannot reach {base}: {type(exc).__name__}", EXIT_CONNECTION) from exc
    if reply.status_code != 201:
        raise _fail(f"Keyward refused the sign-in: {_detail(reply)}")
    credential = reply.json()
    path = save_credential({"api_url": base, "issuer": config["issuer"], "token": credential["token"],
                            "email": credential["email"], "role": credential["role"],
                            "user_id": credential["user_id"], "expires_at": credential["expires_at"]})
    typer.echo(f"Signed in to {base} as {credential['email']} (role {credential['role']}) until "
               f"{credential['expires_at']}. Credential stored in {path}.")


def _session(document: dict[str, Any]) -> httpx.Client:
    return httpx.Client(base_url=f"{document['api_url']}/api/v1", timeout=TIMEOUT,
                        headers={"Authorization": f"Bearer {document['token']}"})


@app.command()
def me(as_json: Annotated[bool, typer.Option("--json", help="Print the API's JSON document.")] = False) -> None:
    """Who you are signed in as (with `keyward login`), your role and your teams."""
    document = load_credential()
    try:
        with _session(document) as client:
            reply = client.get("/me")
    except httpx.HTTPError as exc:
        raise _fail(f"cannot reach {document['api_url']}: {type(exc).__name__}", EXIT_CONNECTION) from exc
    if reply.status_code != 200:
        raise _fail(f"{_detail(reply)}; run `keyward login` again" if reply.status_code == 401 else _detail(reply))
    body = reply.json()
    if as_json:
        typer.echo(json.dumps(body, indent=2))
        return
    typer.echo(f"{body['user']['email']}  role {body['role']}  signed in until {body['expires_at']}")
    for team in body["teams"]:
        profile = team["profile"]
        allowed = f"{profile['name']}: {', '.join(profile['environments'])}" if profile else "no profile"
        typer.echo(f"  team {team['name']} ({team['role']}; {allowed})")


@app.command()
def logout() -> None:
    """Revoke the stored credential and delete it."""
    path = credentials_path()
    if not path.exists():
        typer.echo("Not signed in.")
        return
    try:
        document = json.loads(path.read_text())
        with _session(document) as client:
            client.post("/me/logout")
    except (ValueError, KeyError, TypeError, httpx.HTTPError):
        pass  # an unreadable credential, or an unreachable control plane: the file goes all the same
    path.unlink(missing_ok=True)
    typer.echo("Signed out.")
