"""Who the CLI is, to the API: ``keyward login``, ``me``, ``logout``, ``whoami`` and ``configure``.

``keyward login`` asks the control plane which issuer and public client to use (``GET
/api/v1/auth/oidc``), then signs in the way RFC 8252 describes for native apps: the browser opens on an
authorization-code request with PKCE (S256), state and nonce (``--no-browser`` prints the URL), whose
redirect :mod:`controlplane.cli.loopback` receives. The code is exchanged at the issuer for an ID token,
which the control plane verifies and trades for a short-lived ``kw_cli_…`` credential in your role
(``self``: your own tokens; or the admin role your IdP groups give). It is stored, never printed, in the
config directory (:mod:`controlplane.cli.store`), and from then on every command uses it, as far as its
role allows. ``keyward me`` and ``keyward logout`` are about that sign-in, whatever else is configured.

``keyward configure`` saves an API URL and an admin-API token to config.toml; ``keyward whoami`` says
who the credential in effect is, and where it came from.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import webbrowser
from typing import Annotated

import typer

from controlplane.cli.client import Api, connect
from controlplane.cli.options import JsonOut
from controlplane.cli.output import Exit, fail, note, print_json, say, show_record, usage

ApiUrlOpt = Annotated[str | None, typer.Option(
    "--api-url", help="The control plane (default: KEYWARD_API_URL, else the URL already configured, else "
                      "http://127.0.0.1:8000).")]


def _url(option: str | None) -> str:
    from controlplane.cli import store
    from controlplane.cli.settings import api_base, settings

    if option is None:
        return store.default_url(settings())
    try:
        return api_base(option)
    except ValueError as exc:
        fail(str(exc), Exit.CONNECTION)


def login(
    api_url: ApiUrlOpt = None,
    no_browser: Annotated[bool, typer.Option("--no-browser", help="Print the sign-in URL instead of opening it.")]
    = False,
    timeout: Annotated[float, typer.Option(min=10, help="Seconds to wait for the sign-in.")] = 300,
) -> None:
    """Sign in with your identity provider; every command then uses the short-lived credential it stores."""
    from controlplane.cli import store
    from controlplane.cli.loopback import LoopbackServer
    from controlplane.cli.settings import settings
    from controlplane.oidc.client import Issuer, LoginRequest, OidcError

    base = _url(api_url)
    api = Api(store.Connection(base, None, "none"), timeout=settings().timeout)
    config = api.request("GET", "/auth/oidc", refused=f"{base} does not offer sign-in")
    issuer = Issuer(config["issuer"])
    attempt = LoginRequest.new()
    with LoopbackServer(attempt.state) as server:
        try:
            url = asyncio.run(issuer.authorization_url(client_id=config["cli_client_id"],
                                                       redirect_uri=server.redirect_uri, scopes=config["scopes"],
                                                       request=attempt))
        except OidcError as exc:
            fail(exc.message, Exit.CONNECTION)
        note(f"To sign in, open this URL in a browser:\n\n  {url}\n\nWaiting for the sign-in to finish…")
        if not no_browser:
            with contextlib.suppress(webbrowser.Error):
                webbrowser.open(url)
        outcome = server.wait(timeout)
    if "error" in outcome:
        fail(f"sign-in failed: {outcome['error']}: {outcome.get('error_description', '')}".rstrip(": "))
    try:
        answer = asyncio.run(issuer.exchange_code(client_id=config["cli_client_id"], client_secret=None,
                                                  code=outcome.get("code", ""), redirect_uri=server.redirect_uri,
                                                  code_verifier=attempt.code_verifier))
    except OidcError as exc:
        fail(exc.message)
    access_token = answer.get("access_token")
    credential = api.request("POST", "/auth/oidc/cli-token", refused="Keyward refused the sign-in", body={
        "id_token": answer["id_token"], "nonce": attempt.nonce,
        "access_token": access_token if isinstance(access_token, str) else None})
    path = store.save_sign_in(settings(), {
        "api_url": base, "issuer": config["issuer"], "token": credential["token"], "email": credential["email"],
        "role": credential["role"], "user_id": credential["user_id"], "expires_at": credential["expires_at"]})
    say(f"Signed in to {base} as {credential['email']} (role {credential['role']}) until "
        f"{credential['expires_at']}. Credential stored in {path}.")
    from_env = settings().env_token
    if from_env is not None:
        note(f"{from_env[0]} is set, and commands use it before this sign-in; unset it to use the sign-in.")


def me(as_json: JsonOut = False) -> None:
    """Who you are signed in as (with `keyward login`), your role and your teams."""
    from controlplane.cli import store
    from controlplane.cli.settings import settings

    sign_in = store.signed_in(settings())
    body = Api(sign_in.connection(), timeout=settings().timeout).get("/me")
    if as_json:
        print_json(body)
        return
    say(f"{body['user']['email']}  role {body['role']}  signed in until {body['expires_at']}")
    for team in body["teams"]:
        profile = team["profile"]
        allowed = f"{profile['name']}: {', '.join(profile['environments'])}" if profile else "no profile"
        say(f"  team {team['name']} ({team['role']}; {allowed})")


def logout() -> None:
    """Revoke the `keyward login` credential and delete it."""
    from controlplane.cli import store
    from controlplane.cli.settings import settings

    if not settings().credentials_file.exists():
        say("Not signed in.")
        return
    sign_in = store.peek_sign_in(settings().credentials_file)
    if sign_in is not None:
        # An unreachable control plane, or a credential it no longer knows: the file goes all the same.
        Api(sign_in.connection(), timeout=settings().timeout).request("POST", "/me/logout", check=False)
    store.forget_sign_in(settings())
    say("Signed out.")


def whoami(as_json: JsonOut = False) -> None:
    """Who the credential in effect is, its role, and where it came from (environment, login or config)."""
    api = connect()
    caller = api.get("/whoami")
    if as_json:
        print_json(caller)
        return
    show_record({**caller, "api_url": api.url, "credential": api.conn.describe()}, False, labels=api.labels)
    if caller.get("break_glass"):
        note("This is the break-glass bootstrap token: every request is recorded as an event. "
             "Issue a credential with `keyward credentials create` for daily use.")


def configure(
    api_url: ApiUrlOpt = None,
    token: Annotated[str | None, typer.Option(
        help="Admin-API credential; without it, prompted for (or read from stdin when piped).")] = None,
    verify: Annotated[bool, typer.Option(help="Check the URL and token with /whoami first.")] = True,
) -> None:
    """Save the API URL and an admin-API token to config.toml (mode 0600)."""
    from controlplane.cli import store
    from controlplane.cli.settings import settings

    base = _url(api_url)
    if token is None:
        token = typer.prompt("Token", hide_input=True, err=True) if sys.stdin.isatty() else sys.stdin.readline()
    token = token.strip()
    if not token or not token.isprintable() or " " in token:
        usage("the token must be one printable word")
    if verify:
        caller = Api(store.Connection(base, token, "argument"), timeout=settings().timeout).get("/whoami")
        say(f"Connected to {base} as {caller['actor']} ({caller['role']}).")
    path = store.write_config(settings(), api_url=base, token=token)
    say(f"Wrote {path} (mode 0600).")
    from_env, sign_in = settings().env_token, store.peek_sign_in(settings().credentials_file)
    if from_env is not None:
        note(f"{from_env[0]} is set, and commands use it before {path}.")
    elif sign_in is not None and sign_in.live:
        note(f"Commands use your `keyward login` sign-in to {sign_in.api_url} before {path}, until it expires "
             "or you run `keyward logout`.")
