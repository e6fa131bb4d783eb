"""Sign-in with OpenID Connect, end to end, against a real provider (panva/oidc-provider, OpenID
Certified, started by tests/e2e/oidc) and the real stack.

A headless browser here is an httpx client that follows redirects and submits the provider's sign-in
and consent forms. The control plane is the session's shared one (JIT provisioning off, the
``keyward-admins`` group mapped to admin); the JIT and "OIDC off" cases start a second control plane
process on the same database.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit, urlunsplit

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey

from tests.e2e.conftest import Gateway, free_port
from tests.e2e.oidc.harness import ACCOUNTS, CLI_CLIENT_ID, SCOPES, Account, OidcProvider, node_problem

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def idp(oidc_provider: OidcProvider | None, gateway: Gateway) -> OidcProvider:
    if oidc_provider is None:
        pytest.fail(f"OIDC sign-in is required and cannot be tested here: {node_problem()}")
    return oidc_provider


# -- a headless browser ---------------------------------------------------------------------------


class Browser:
    def __init__(self, api_url: str, idp: OidcProvider) -> None:
        self.api_url = api_url
        self.idp = idp
        self.client = httpx.Client(base_url=api_url, timeout=15, follow_redirects=False)
        self.history: list[httpx.Response] = []

    def close(self) -> None:
        self.client.close()

    def follow(self, reply: httpx.Response, *, stop_at: str | None = None) -> httpx.Response:
        """Follow redirects, but not into ``stop_at`` (a URL prefix)."""
        self.history.append(reply)
        for _ in range(20):
            location = reply.headers.get("location")
            if reply.status_code not in (301, 302, 303, 307) or not location:
                return reply
            target = urljoin(str(reply.url), location)
            if stop_at and target.startswith(stop_at):
                return reply
            reply = self.client.get(target)
            self.history.append(reply)
        raise AssertionError("redirect loop")

    def through_idp(self, reply: httpx.Response, account: Account, *, stop_at: str | None = None,
                    password: str | None = None) -> httpx.Response:
        """Sign in and consent at the provider, as long as the pages are the provider's."""
        reply = self.follow(reply, stop_at=stop_at)
        for _ in range(4):
            if not str(reply.url).startswith(self.idp.issuer) or reply.status_code not in (200, 401):
                return reply
            action = re.search(r'<form method="post" action="([^"]+)"', reply.text)
            if action is None:
                return reply
            data = {"email": account.email, "password": password or account.password} \
                if action.group(1).endswith("/login") else {}
            reply = self.follow(self.client.post(urljoin(str(reply.url), action.group(1)), data=data),
                                stop_at=stop_at)
            if password:
                return reply
        return reply

    def sign_in(self, account: Account, next_path: str | None = None) -> httpx.Response:
        path = "/auth/login" + (f"?next={next_path}" if next_path else "")
        return self.through_idp(self.client.get(path), account)

    def set_cookie_header(self, name: str) -> str:
        for reply in reversed(self.history):
            for header in reply.headers.get_list("set-cookie"):
                if header.startswith(f"{name}="):
                    return header
        raise AssertionError(f"no Set-Cookie for {name}")

    @property
    def session_cookie(self) -> str | None:
        return self.client.cookies.get("keyward_session")

    def csrf(self) -> str:
        return self.client.get("/api/v1/me").json()["csrf_token"]


@pytest.fixture
def browser(gateway: Gateway, idp: OidcProvider) -> Iterator[Browser]:
    b = Browser(gateway.info.api_url, idp)
    yield b
    b.close()


def shouted(account: Account) -> str:
    """The account's e-mail as Keyward stores it here: another case than the IdP's, on purpose."""
    local, domain = account.email.split("@")
    return f"{local.upper()}@{domain}"


def keyward_user(gateway: Gateway, account: Account, team: dict | None = None) -> dict:
    """The account as a Keyward user (e-mail in another case: matching ignores it), in ``team``."""
    found = gateway.admin.get("/users", params={"email": account.email}).json()["items"]
    user = found[0] if found else gateway.user(email=shouted(account))
    if team is not None:
        gateway.join(user, team)
    return user


def form_field(page: str, name: str) -> str:
    found = re.search(rf"name={name} value='([^']+)'", page)
    assert found, f"no {name} field in the page"
    return found.group(1)


def events(gateway: Gateway, **filters: str) -> list[dict]:
    reply = gateway.admin.get("/audit/events", params={"limit": 500, **filters})
    assert reply.status_code == 200, reply.text
    return reply.json()["items"]


# -- the engineer's journey -----------------------------------------------------------------------


def test_engineer_signs_in_mints_a_token_on_me_calls_the_gateway_and_revokes_it(
        gateway: Gateway, browser: Browser) -> None:
    ada = ACCOUNTS["ada"]
    team = gateway.team()
    user = keyward_user(gateway, ada, team)

    landed = browser.sign_in(ada)
    assert landed.status_code == 200, landed.text
    assert str(landed.url).endswith("/me")
    assert "Your Keyward tokens" in landed.text and shouted(ada) in landed.text
    cookie = browser.set_cookie_header("keyward_session").lower()
    assert "httponly" in cookie and "samesite=lax" in cookie and "path=/" in cookie
    assert int(re.search(r"max-age=(\d+)", cookie).group(1)) <= 3600  # type: ignore[union-attr]
    assert landed.headers["cache-control"] == "no-store" and landed.headers["x-frame-options"] == "DENY"

    # Mint on the page: the secret is shown once.
    minted = browser.client.post("/me/tokens", data={
        "csrf": form_field(landed.text, "csrf"), "name": "laptop", "team_id": team["id"], "environment": "dev",
        "expires_in_days": "7"})
    assert minted.status_code == 200, minted.text
    secret = re.search(r"<code id=secret>(kw_pat_\w+)</code>", minted.text).group(1)  # type: ignore[union-attr]
    gateway.wait_until(lambda: gateway.known(secret), what="token to reach authz")
    assert gateway.status_of(secret) == 200

    mine = browser.client.get("/api/v1/me/tokens").json()["items"]
    assert [t["name"] for t in mine] == ["laptop"]
    token = mine[0]
    assert token["user_id"] == user["id"] and token["team_id"] == team["id"]
    assert token["created_by"] == f"oidc:{shouted(ada)}" and "token" not in token
    issued = events(gateway, target_id=token["id"], action="token.issued")
    assert [(e["actor"], e["mechanism"]) for e in issued] == [(f"oidc:{shouted(ada)}", "oidc")]
    again = browser.client.get("/me")
    assert secret not in again.text and token["hint"] in again.text and ">active<" in again.text

    # Revoke on the page; the very next call is refused.
    revoked = browser.client.post(f"/me/tokens/{token['id']}/revoke", data={"csrf": form_field(again.text, "csrf")})
    assert revoked.status_code == 303
    assert ">revoked<" in browser.client.get("/me").text
    gateway.wait_until(lambda: gateway.status_of(secret) == 401, what="revocation at the gateway")
    assert gateway.chat(secret).json()["error"]["code"] == "token_revoked"
    revocation = events(gateway, target_id=token["id"], action="token.revoked")
    assert [(e["actor"], e["mechanism"]) for e in revocation] == [(f"oidc:{shouted(ada)}", "oidc")]

    logins = events(gateway, target_id=user["id"], action="user.login")
    assert logins and logins[-1]["mechanism"] == "oidc" and logins[-1]["after"]["role"] == "self"


def test_the_me_api_is_for_the_signed_in_user_only(gateway: Gateway, browser: Browser) -> None:
    rosalind = ACCOUNTS["rosalind"]
    team = gateway.team()
    user = keyward_user(gateway, rosalind, team)
    browser.sign_in(rosalind)

    me = browser.client.get("/api/v1/me")
    assert me.status_code == 200, me.text
    body = me.json()
    assert body["role"] == "self" and body["via"] == "web" and body["csrf_token"]
    assert [t["id"] for t in body["teams"]] == [team["id"]]

    # Changes through the cookie need the CSRF header.
    wanted = {"name": "ci", "team_id": team["id"], "environment": "ci"}
    refused = browser.client.post("/api/v1/me/tokens", json=wanted)
    assert refused.status_code == 403 and refused.json()["code"] == "csrf_token_invalid"
    minted = browser.client.post("/api/v1/me/tokens", json=wanted, headers={"X-CSRF-Token": body["csrf_token"]})
    assert minted.status_code == 201, minted.text
    assert minted.json()["token"].startswith("kw_pat_")
    # A form without the CSRF token is refused too.
    assert browser.client.post("/me/tokens", data={"name": "x", "team_id": team["id"]}).status_code == 403

    # Within the team's profile and membership only; someone else's token is not found.
    other_team = gateway.team()
    not_member = browser.client.post("/api/v1/me/tokens", json={**wanted, "team_id": other_team["id"]},
                                     headers={"X-CSRF-Token": body["csrf_token"]})
    assert not_member.status_code == 409 and not_member.json()["code"] == "not_a_member"
    too_long = browser.client.post("/api/v1/me/tokens", json={**wanted, "expires_in_days": 3000},
                                   headers={"X-CSRF-Token": body["csrf_token"]})
    assert too_long.status_code == 422 and too_long.json()["code"] == "lifetime_too_long"
    someone_else = gateway.mint()
    stolen = browser.client.post(f"/api/v1/me/tokens/{someone_else.id}/revoke", json={},
                                 headers={"X-CSRF-Token": body["csrf_token"]})
    assert stolen.status_code == 404
    assert gateway.status_of(someone_else.secret) == 200

    # The self role is not an admin role.
    assert browser.client.get("/api/v1/users").status_code == 403
    assert browser.client.get("/api/v1/whoami").json()["code"] == "role_forbidden"
    # And an admin-API credential is not a sign-in.
    assert gateway.admin.get("/me").status_code == 401

    # Signing out ends the session.
    assert browser.client.post("/api/v1/me/logout", headers={"X-CSRF-Token": body["csrf_token"]}).status_code == 204
    assert browser.client.get("/api/v1/me").status_code == 401
    assert browser.client.get("/me").headers["location"].startswith("/auth/login")
    logout = events(gateway, target_id=user["id"], action="user.logout")
    assert logout and (logout[-1]["mechanism"], logout[-1]["after"]) == ("oidc", {"via": "web"})


# -- who may sign in ------------------------------------------------------------------------------


def test_an_unknown_identity_is_refused_when_jit_provisioning_is_off(gateway: Gateway, browser: Browser) -> None:
    mallory = ACCOUNTS["mallory"]
    refused = browser.sign_in(mallory)
    assert refused.status_code == 403
    assert "no Keyward account" in refused.text
    assert browser.session_cookie is None
    assert gateway.admin.get("/users", params={"email": mallory.email}).json()["items"] == []
    recorded = events(gateway, action="user.login_refused", target_id=mallory.email)
    assert recorded and recorded[-1]["after"]["reason"] == "user_unknown" and recorded[-1]["mechanism"] == "oidc"


def test_an_unverified_email_is_refused(gateway: Gateway, browser: Browser) -> None:
    una = ACCOUNTS["una"]
    keyward_user(gateway, una)
    refused = browser.sign_in(una)
    assert refused.status_code == 403 and "not verified" in refused.text
    assert browser.session_cookie is None


def test_a_deprovisioned_user_cannot_sign_in_and_loses_their_session(gateway: Gateway, idp: OidcProvider) -> None:
    linus = ACCOUNTS["linus"]
    user = keyward_user(gateway, linus, gateway.team())
    first = Browser(gateway.info.api_url, idp)
    try:
        assert first.sign_in(linus).status_code == 200
        assert first.client.get("/api/v1/me").status_code == 200
        reply = gateway.admin.patch(f"/users/{user['id']}", json={"status": "deprovisioned"})
        assert reply.status_code == 200, reply.text
        assert first.client.get("/api/v1/me").status_code == 401
        assert first.client.get("/me").status_code == 303
    finally:
        first.close()
    again = Browser(gateway.info.api_url, idp)
    try:
        refused = again.sign_in(linus)
        assert refused.status_code == 403 and "deprovisioned" in refused.text
        assert again.session_cookie is None
    finally:
        again.close()


def test_the_admin_group_signs_in_as_admin(gateway: Gateway, browser: Browser) -> None:
    grace = ACCOUNTS["grace"]
    user = keyward_user(gateway, grace)
    assert browser.sign_in(grace).status_code == 200
    whoami = browser.client.get("/api/v1/whoami")
    assert whoami.status_code == 200, whoami.text
    assert whoami.json() == {"actor": f"oidc:{shouted(grace)}", "role": "admin", "team_id": None, "break_glass": False}
    # Admin changes through the session cookie need the CSRF header, and are on record as OIDC.
    email = f"oidc-made-{secrets.token_hex(4)}@example.com"
    assert browser.client.post("/api/v1/users", json={"email": email}).status_code == 403
    created = browser.client.post("/api/v1/users", json={"email": email}, headers={"X-CSRF-Token": browser.csrf()})
    assert created.status_code == 201, created.text
    made = events(gateway, target_id=created.json()["id"], action="user.created")
    assert [(e["actor"], e["mechanism"]) for e in made] == [(f"oidc:{shouted(grace)}", "oidc")]
    login = events(gateway, target_id=user["id"], action="admin.login")
    assert login and login[-1]["after"]["role"] == "admin" and login[-1]["after"]["groups"] == ["keyward-admins"]


# -- what the callback refuses --------------------------------------------------------------------


def test_a_forged_state_or_nonce_is_refused(gateway: Gateway, browser: Browser) -> None:
    ada = ACCOUNTS["ada"]
    keyward_user(gateway, ada, gateway.team())
    callback = f"{gateway.info.api_url}/auth/callback"

    # A callback this browser did not start.
    assert browser.client.get("/auth/callback", params={"code": "x", "state": "y"}).status_code == 400

    # The right browser, the wrong state.
    started = browser.client.get("/auth/login")
    assert started.status_code == 303
    idp_url = started.headers["location"]
    assert parse_qs(urlsplit(idp_url).query)["code_challenge_method"] == ["S256"]
    at_callback = browser.through_idp(browser.client.get(idp_url), ada, stop_at=callback)
    real = parse_qs(urlsplit(at_callback.headers["location"]).query)
    forged = browser.client.get("/auth/callback", params={"code": real["code"][0], "state": "forged"})
    assert forged.status_code == 400 and "state" in forged.text
    assert browser.session_cookie is None

    # The right state, an ID token minted for another nonce (an injected or replayed code).
    started = browser.client.get("/auth/login")
    parts = urlsplit(started.headers["location"])
    query = {k: v[0] for k, v in parse_qs(parts.query).items()} | {"nonce": "attacker-chosen-nonce-value"}
    tampered = urlunsplit(parts._replace(query=urlencode(query)))
    refused = browser.through_idp(browser.client.get(tampered), ada)
    assert refused.status_code == 400 and "nonce" in refused.text
    assert browser.session_cookie is None

    # A wrong password stays at the provider (a browser without a provider session).
    fresh = Browser(gateway.info.api_url, browser.idp)
    try:
        stuck = fresh.through_idp(fresh.client.get("/auth/login"), ada, password="wrong")
        assert stuck.status_code == 401 and fresh.session_cookie is None
    finally:
        fresh.close()


def cli_id_token(idp: OidcProvider, client: httpx.Client, account: Account, nonce: str) -> dict:
    """An ID token for the CLI client, obtained the way `keyward login` does (loopback redirect, PKCE)."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    redirect = f"http://127.0.0.1:{free_port()}/callback"
    query = {"response_type": "code", "client_id": CLI_CLIENT_ID, "redirect_uri": redirect, "scope": SCOPES,
             "state": "s" * 20, "nonce": nonce, "code_challenge": challenge, "code_challenge_method": "S256"}
    b = Browser(idp.issuer, idp)
    b.client = client
    at_redirect = b.through_idp(client.get(f"{idp.issuer}/auth?{urlencode(query)}"), account, stop_at=redirect)
    code = parse_qs(urlsplit(at_redirect.headers["location"]).query)["code"][0]
    reply = httpx.post(f"{idp.issuer}/token", data={"grant_type": "authorization_code", "code": code,
                                                   "redirect_uri": redirect, "client_id": CLI_CLIENT_ID,
                                                   "code_verifier": verifier})
    assert reply.status_code == 200, reply.text
    return reply.json()


def test_the_cli_exchange_checks_signature_nonce_and_replay(gateway: Gateway, idp: OidcProvider) -> None:
    hedy = ACCOUNTS["hedy"]
    user = keyward_user(gateway, hedy, gateway.team())
    api = httpx.Client(base_url=f"{gateway.info.api_url}/api/v1", timeout=15)
    with httpx.Client(timeout=15) as client:
        nonce = secrets.token_urlsafe(24)
        answer = cli_id_token(idp, client, hedy, nonce)

    # Signed by a key the issuer never published.
    rogue = RSAKey.generate_key(2048, parameters={"kid": "rogue", "alg": "RS256"})
    claims = jwt.decode(answer["id_token"], idp_key_set(idp)).claims
    forged = jwt.encode({"alg": "RS256", "kid": "rogue"}, {**claims, "email": ACCOUNTS["grace"].email}, rogue)
    reply = api.post("/auth/oidc/cli-token", json={"id_token": forged, "nonce": nonce})
    assert reply.status_code == 401 and reply.json()["code"] == "id_token_invalid"
    # Genuine, but for another nonce.
    reply = api.post("/auth/oidc/cli-token", json={"id_token": answer["id_token"], "nonce": "x" * 24,
                                                   "access_token": answer["access_token"]})
    assert reply.status_code == 401 and "nonce" in reply.json()["detail"]
    # Genuine: exchanged once, never twice.
    good = {"id_token": answer["id_token"], "nonce": nonce, "access_token": answer["access_token"]}
    first = api.post("/auth/oidc/cli-token", json=good)
    assert first.status_code == 201, first.text
    assert first.json()["email"] == shouted(hedy) and first.json()["role"] == "self"
    replayed = api.post("/auth/oidc/cli-token", json=good)
    assert replayed.status_code == 403 and replayed.json()["code"] == "id_token_replayed"
    login = events(gateway, target_id=user["id"], action="user.login")
    assert login and (login[-1]["mechanism"], login[-1]["after"]["via"]) == ("oidc", "cli")
    api.close()


def idp_key_set(idp: OidcProvider) -> object:
    from joserfc.jwk import KeySet

    return KeySet.import_key_set(idp.jwks())


def test_sign_in_survives_signing_key_rotation(gateway: Gateway, idp: OidcProvider) -> None:
    ada = ACCOUNTS["ada"]
    keyward_user(gateway, ada, gateway.team())
    before = Browser(gateway.info.api_url, idp)
    try:
        assert before.sign_in(ada).status_code == 200  # the control plane has the current JWKS
    finally:
        before.close()
    old_kids = {key["kid"] for key in idp.jwks()["keys"]}
    time.sleep(2.1)  # the control plane fetches a JWKS at most every 2 s
    new_kid = idp.rotate_keys()
    assert new_kid not in old_kids and {key["kid"] for key in idp.jwks()["keys"]} == {new_kid}
    after = Browser(gateway.info.api_url, idp)
    try:
        landed = after.sign_in(ada)
        assert landed.status_code == 200, landed.text
        assert after.client.get("/api/v1/me").json()["role"] == "self"
    finally:
        after.close()


# -- settings: JIT provisioning, OIDC off ---------------------------------------------------------


@contextmanager
def control_plane(gateway: Gateway, port: int | None = None, **env: str | None) -> Iterator[str]:
    """Another control plane process on the session's database, with some settings changed."""
    port = port or free_port()
    base = dict(gateway.stack.services["controlplane"].env)
    for name, value in env.items():
        if value is None:
            base.pop(name, None)
        else:
            base[name] = value
    log = (gateway.info.logs_dir / f"controlplane-{port}.log").open("ab")
    process = subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory", "controlplane.main:create_app",
                                "--host", "127.0.0.1", "--port", str(port)], env=base, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, "the second control plane did not start"
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(10)


def test_jit_provisioning_creates_the_user_at_first_sign_in(gateway: Gateway, idp: OidcProvider) -> None:
    joan = ACCOUNTS["joan"]
    assert gateway.admin.get("/users", params={"email": joan.email}).json()["items"] == []
    port = free_port()
    client_id, client_secret = idp.register_web_client(f"http://127.0.0.1:{port}")
    with control_plane(gateway, port, KEYWARD_OIDC_JIT_PROVISIONING="true", KEYWARD_OIDC_CLIENT_ID=client_id,
                       KEYWARD_OIDC_CLIENT_SECRET=client_secret,
                       KEYWARD_OIDC_REDIRECT_BASE=f"http://127.0.0.1:{port}") as url:
        b = Browser(url, idp)
        try:
            landed = b.sign_in(joan)
            assert landed.status_code == 200, landed.text
            assert "not a member of any team" in landed.text
        finally:
            b.close()
    users = gateway.admin.get("/users", params={"email": joan.email}).json()["items"]
    assert len(users) == 1 and users[0]["display_name"] == joan.name
    created = events(gateway, target_id=users[0]["id"], action="user.created")
    assert [(e["actor"], e["mechanism"]) for e in created] == [(f"oidc:{joan.email}", "oidc")]


def test_routes_answer_404_when_oidc_is_off(gateway: Gateway) -> None:
    with control_plane(gateway, KEYWARD_OIDC_ISSUER=None) as url:
        for path in ("/auth/login", "/me", "/api/v1/me", "/api/v1/auth/oidc"):
            reply = httpx.get(f"{url}{path}")
            assert reply.status_code == 404, path
            assert reply.json()["code"] == "oidc_not_configured"
            assert "KEYWARD_OIDC_ISSUER" in reply.json()["detail"]


# -- keyward login --------------------------------------------------------------------------------

CLI = [sys.executable, "-m", "controlplane.cli"]


def cli_env(gateway: Gateway, config_dir: Path, **extra: str) -> dict[str, str]:
    """The CLI's environment: the stack's URL and ``config_dir``, and no token (none of the caller's)."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("KEYWARD_")},
            "KEYWARD_CONFIG_DIR": str(config_dir), "KEYWARD_API_URL": gateway.info.api_url, "NO_COLOR": "1", **extra}


def keyward(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL, check=False)


def keyward_login(idp: OidcProvider, account: Account, env: dict[str, str]) -> tuple[str, str]:
    """Run ``keyward login --no-browser`` and sign in at the provider as ``account`` with the URL it
    prints, as a person would; its stdout and stderr."""
    login = subprocess.Popen([*CLI, "login", "--no-browser", "--timeout", "60"], env=env, cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert login.stderr is not None
        url = ""
        deadline = time.monotonic() + 30
        while not url and time.monotonic() < deadline:
            line = login.stderr.readline()
            if not line:
                break
            if line.strip().startswith(f"{idp.issuer}/auth?"):
                url = line.strip()
        assert url, "keyward login printed no sign-in URL"
        with httpx.Client(timeout=15) as client:
            b = Browser(idp.issuer, idp)
            b.client = client
            done = b.through_idp(client.get(url), account)
        assert done.status_code == 200 and "Signed in" in done.text
        out, err = login.communicate(timeout=60)
    finally:
        if login.poll() is None:
            login.kill()
    assert login.returncode == 0, err
    return out, err


def test_keyward_login_stores_a_private_credential_that_works(gateway: Gateway, idp: OidcProvider,
                                                              tmp_path: Path) -> None:
    hedy = ACCOUNTS["hedy"]
    team = gateway.team()
    keyward_user(gateway, hedy, team)
    config_dir = tmp_path / "keyward-config"
    env = cli_env(gateway, config_dir)
    out, err = keyward_login(idp, hedy, env)
    assert shouted(hedy) in out and "role self" in out

    path = config_dir / "credentials.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(config_dir.stat().st_mode) == 0o700
    credential = json.loads(path.read_text())
    secret = credential["token"]
    assert secret.startswith("kw_cli_") and secret not in out + err

    me = keyward(env, "me")
    assert me.returncode == 0, me.stderr
    assert "role self" in me.stdout and team["name"] in me.stdout

    api = httpx.Client(base_url=f"{gateway.info.api_url}/api/v1", timeout=15,
                       headers={"Authorization": f"Bearer {secret}"})
    assert api.get("/me").json()["via"] == "cli"
    minted = api.post("/me/tokens", json={"name": "from-cli", "team_id": team["id"]})
    assert minted.status_code == 201, minted.text
    pat = minted.json()["token"]
    gateway.wait_until(lambda: gateway.known(pat), what="token to reach authz")
    assert gateway.status_of(pat) == 200
    assert api.get("/users").status_code == 403  # a self credential is not an admin credential
    # The CLI's admin commands say the same, with the one error line and exit code.
    denied = keyward(env, "users", "list")
    assert denied.returncode == 1 and "(403 role_forbidden)" in denied.stderr and denied.stdout == ""

    path.chmod(0o644)
    loose = keyward(env, "me")
    assert loose.returncode != 0 and "may be read by others" in loose.stderr
    path.chmod(0o600)

    out = keyward(env, "logout")
    assert out.returncode == 0, out.stderr
    assert not path.exists()
    assert api.get("/me").status_code == 401
    api.close()


def test_after_keyward_login_every_command_uses_the_sign_in(gateway: Gateway, idp: OidcProvider,
                                                            tmp_path: Path) -> None:
    grace = ACCOUNTS["grace"]
    keyward_user(gateway, grace)
    config_dir = tmp_path / "keyward"
    # Only the directory: no KEYWARD_API_URL either (the sign-in remembers its control plane).
    env = cli_env(gateway, config_dir)
    out, _ = keyward_login(idp, grace, env)
    assert "role admin" in out
    env.pop("KEYWARD_API_URL")

    # An admin's sign-in works for the admin commands, with no token configured anywhere.
    listed = keyward(env, "users", "list", "--search", "grace", "--json")
    assert listed.returncode == 0, listed.stderr
    assert shouted(grace) in [u["email"] for u in json.loads(listed.stdout)["items"]]
    whoami = keyward(env, "whoami")
    assert whoami.returncode == 0, whoami.stderr
    assert f"oidc:{shouted(grace)}" in whoami.stdout and gateway.info.api_url in whoami.stdout
    assert f"login ({config_dir / 'credentials.json'}" in whoami.stdout
    made = keyward(env, "users", "create", f"made-by-cli-{secrets.token_hex(4)}@example.com", "--json")
    assert made.returncode == 0, made.stderr
    created = events(gateway, target_id=json.loads(made.stdout)["id"], action="user.created")
    assert [e["actor"] for e in created] == [f"oidc:{shouted(grace)}"]

    # config.toml in the same directory comes after a live sign-in; the environment before it.
    auditor = gateway.admin.post("/credentials", json={"name": f"cli-{secrets.token_hex(4)}", "role": "auditor"})
    assert auditor.status_code == 201, auditor.text
    configured = keyward(env, "configure", "--token", auditor.json()["token"])
    assert configured.returncode == 0, configured.stderr
    assert "keyward login" in configured.stderr  # it says the sign-in comes first
    assert (config_dir / "config.toml").exists() and (config_dir / "credentials.json").exists()
    assert json.loads(keyward(env, "whoami", "--json").stdout)["role"] == "admin"
    from_env = keyward({**env, "KEYWARD_API_TOKEN": auditor.json()["token"]}, "whoami")
    assert from_env.returncode == 0 and "environment (KEYWARD_API_TOKEN)" in from_env.stdout
    assert "auditor" in from_env.stdout

    # Signed out, config.toml's credential is the one in effect.
    assert keyward(env, "logout").returncode == 0
    after = keyward(env, "whoami")
    assert after.returncode == 0, after.stderr
    assert "auditor" in after.stdout and f"config ({config_dir / 'config.toml'})" in after.stdout
