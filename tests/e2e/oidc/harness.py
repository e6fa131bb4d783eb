"""Start and drive the test OpenID Connect provider (``provider.mjs``: panva/oidc-provider on Node.js).

:meth:`OidcProvider.start` installs the pinned npm package on first use (``npm ci``, a few seconds),
starts the provider on a free 127.0.0.1 port with the static :data:`ACCOUNTS`, and waits for its
discovery document. :meth:`OidcProvider.stack_settings` registers a confidential web client for a
control plane (dynamic client registration) and gives the ``StackSettings`` fields that point the
control plane at it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
CLI_CLIENT_ID = "keyward-cli"
ADMIN_GROUP = "keyward-admins"
AUDITOR_GROUP = "keyward-auditors"
FINANCE_GROUP = "keyward-finance"
SCOPES = "openid email profile groups"
MIN_NODE = (20, 19)


@dataclass(frozen=True)
class Account:
    sub: str
    email: str
    password: str
    name: str
    groups: tuple[str, ...] = ("engineering",)
    email_verified: bool = True


def _account(handle: str, name: str, groups: tuple[str, ...] = ("engineering",), verified: bool = True) -> Account:
    return Account(sub=f"sub-{handle}", email=f"{handle}@oidc.example.com", password=f"pw-{handle}-{handle[::-1]}",
                   name=name, groups=groups, email_verified=verified)


#: The IdP's people. Who of them Keyward knows is up to each test.
ACCOUNTS = {
    "ada": _account("ada", "Ada Lovelace"),
    "grace": _account("grace", "Grace Hopper", ("engineering", ADMIN_GROUP)),
    "mallory": _account("mallory", "Mallory Unknown"),
    "linus": _account("linus", "Linus Leaver"),
    "joan": _account("joan", "Joan Newcomer"),
    "hedy": _account("hedy", "Hedy Lamarr"),
    "una": _account("una", "Una Verified", verified=False),
    "rosalind": _account("rosalind", "Rosalind Franklin"),
    # The console's people (tests/e2e/console), apart from the others so their Keyward users differ: an
    # admin, an auditor, a finance analyst, a team owner (no IdP role; owner of a team in Keyward) and
    # someone with neither.
    "adele": _account("adele", "Adele Admin", ("engineering", ADMIN_GROUP)),
    "audrey": _account("audrey", "Audrey Auditor", ("engineering", AUDITOR_GROUP)),
    "fiona": _account("fiona", "Fiona Finance", ("finance", FINANCE_GROUP)),
    "otto": _account("otto", "Otto Owner"),
    "nora": _account("nora", "Nora Nobody"),
}


def node_problem() -> str | None:
    """Why the provider cannot run here, or None."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        return ("the OIDC end-to-end tests need Node.js >= 20.19 and npm on PATH (they run the OpenID Certified "
                "provider oidc-provider from tests/e2e/oidc); install them, e.g. `apt-get install nodejs npm`")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=False).stdout.strip()
    try:
        found = tuple(int(part) for part in version.lstrip("v").split(".")[:2])
    except ValueError:
        return f"cannot read the Node.js version ({version!r})"
    if found < MIN_NODE:
        return f"oidc-provider needs Node.js >= {MIN_NODE[0]}.{MIN_NODE[1]}, found {version}"
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def install() -> None:
    """``npm ci`` from the committed lock file, once per clone (node_modules is not committed)."""
    if (HERE / "node_modules" / "oidc-provider" / "package.json").exists():
        return
    done = subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=HERE,
                          capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"npm ci in {HERE} failed:\n{done.stdout}\n{done.stderr}")


class OidcProvider:
    def __init__(self, port: int, workdir: Path) -> None:
        self.port = port
        self.issuer = f"http://127.0.0.1:{port}"
        self.workdir = workdir
        self.control_secret = secrets.token_urlsafe(32)
        self.log_path = workdir / "provider.log"
        self.process: subprocess.Popen | None = None
        self.http = httpx.Client(base_url=self.issuer, timeout=10)

    @classmethod
    def start(cls, timeout: float = 30) -> OidcProvider:
        install()
        provider = cls(_free_port(), Path(tempfile.mkdtemp(prefix="keyward-oidc-")))
        provider._launch(timeout)
        return provider

    def _launch(self, timeout: float) -> None:
        config = {
            "issuer": self.issuer,
            "port": self.port,
            "controlSecret": self.control_secret,
            "cookieKey": secrets.token_urlsafe(32),
            "accounts": [
                {"sub": a.sub, "email": a.email, "password": a.password, "name": a.name, "groups": list(a.groups),
                 "email_verified": a.email_verified}
                for a in ACCOUNTS.values()
            ],
            # `keyward login`: a public native client; any loopback port (RFC 8252 §7.3).
            "clients": [{"client_id": CLI_CLIENT_ID, "application_type": "native",
                         "token_endpoint_auth_method": "none", "grant_types": ["authorization_code"],
                         "response_types": ["code"], "redirect_uris": ["http://127.0.0.1/callback"]}],
        }
        path = self.workdir / "config.json"
        path.write_text(json.dumps(config))
        path.chmod(0o600)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(["node", str(HERE / "provider.mjs"), str(path)], cwd=HERE, stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True,
                                        env={**os.environ, "NODE_ENV": "test"})
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.http.get("/.well-known/openid-configuration").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the test OIDC provider did not start; see {self.log_path}:\n{self.log()}")
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def register_web_client(self, redirect_base: str) -> tuple[str, str]:
        """A confidential web client whose redirect URI is ``<redirect_base>/auth/callback``."""
        reply = self.http.post("/reg", headers={"Authorization": f"Bearer {self.control_secret}"}, json={
            "redirect_uris": [redirect_base.rstrip("/") + "/auth/callback"], "grant_types": ["authorization_code"],
            "response_types": ["code"], "token_endpoint_auth_method": "client_secret_basic",
            "client_name": f"Keyward at {redirect_base}"})
        assert reply.status_code == 201, reply.text
        return reply.json()["client_id"], reply.json()["client_secret"]

    def stack_settings(self, redirect_base: str) -> dict[str, str]:
        client_id, client_secret = self.register_web_client(redirect_base)
        return {"oidc_issuer": self.issuer, "oidc_client_id": client_id, "oidc_client_secret": client_secret,
                "oidc_cli_client_id": CLI_CLIENT_ID, "oidc_redirect_base": redirect_base, "oidc_scopes": SCOPES,
                "oidc_admin_groups": ADMIN_GROUP, "oidc_auditor_groups": AUDITOR_GROUP,
                "oidc_finance_groups": FINANCE_GROUP}

    def jwks(self) -> dict:
        return self.http.get("/jwks").json()

    def rotate_keys(self) -> str:
        """A fresh signing key; the old one leaves the JWKS. Returns the new kid."""
        reply = self.http.post("/__control__/rotate", headers={"Authorization": f"Bearer {self.control_secret}"})
        assert reply.status_code == 200, reply.text
        return reply.json()["kid"]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.http.close()
        shutil.rmtree(self.workdir, ignore_errors=True)
