"""The ``keyward`` command line against the real stack, run the way an operator runs it: as a process,
configured by the environment (or its config directory), reading its stdout and exit code.

``keyward login`` itself needs the test OpenID provider: tests/e2e/test_oidc.py drives it."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, get_args

import pytest

from controlplane import schemas
from controlplane.cli import vocabulary
from tests.e2e.conftest import Gateway, free_port
from tests.e2e.test_denials import sql

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def keyward(gateway: Gateway, *args: str, env: dict[str, str | None] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``keyward ARGS`` with the stack's URL and admin token in the environment; ``env`` adds to it,
    and a None value removes a variable."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("KEYWARD_")}
    environment |= {"KEYWARD_API_URL": gateway.info.api_url, "KEYWARD_API_TOKEN": gateway.info.admin_token,
                    "KEYWARD_CONFIG_DIR": "/nonexistent/keyward", "PYTHONIOENCODING": "utf-8",
                    "NO_COLOR": "1"}
    for name, value in (env or {}).items():
        if value is None:
            environment.pop(name, None)
        else:
            environment[name] = value
    return subprocess.run([sys.executable, "-m", "controlplane.cli", *args], env=environment, cwd=ROOT,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60, check=False)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.args, result.stdout, result.stderr)
    return result.stdout


def document(result: subprocess.CompletedProcess[str]) -> Any:
    """With --json, stdout is the JSON document and nothing else."""
    return json.loads(ok(result))


def refused(gateway: Gateway, secret: str) -> bool:
    return gateway.status_of(secret) == 401


def test_vocabularies_match_the_api() -> None:
    assert tuple(vocabulary.Env) == get_args(schemas.Environment)
    assert tuple(vocabulary.Role) == get_args(schemas.Role)
    assert vocabulary.PROVIDERS == get_args(schemas.Provider)
    assert vocabulary.parse_model("anthropic:claude-*@dev,ci") == {
        "provider": "anthropic", "pattern": "claude-*", "environments": ["dev", "ci"]}
    # A model name may contain ':' and '@'; only a list of environments after the last '@' is one.
    assert vocabulary.parse_model("openai:ft:gpt-4o:acme@2024") == {
        "provider": "openai", "pattern": "ft:gpt-4o:acme@2024"}


def test_operator_sets_up_a_team_and_mints_a_working_token(gateway: Gateway) -> None:
    suffix = uuid.uuid4().hex[:8]
    profile = document(keyward(gateway, "profiles", "create", f"cli-{suffix}", "--model", "openai:gpt-4o*",
                               "--model", "anthropic:claude-*@dev", "--environment", "dev", "--environment", "ci",
                               "--max-token-days", "30", "--json"))
    assert profile["catalog"] == [{"provider": "openai", "pattern": "gpt-4o*", "environments": None},
                                  {"provider": "anthropic", "pattern": "claude-*", "environments": ["dev"]}]
    assert profile["environments"] == ["dev", "ci"] and profile["max_token_days"] == 30
    # Named by name and email from here on.
    team = document(keyward(gateway, "teams", "create", f"cli-team-{suffix}", "--profile", f"cli-{suffix}", "--json"))
    assert team["profile_id"] == profile["id"]
    email = f"cli-{suffix}@example.com"
    assert email in ok(keyward(gateway, "users", "create", email, "--name", "CLI Person"))
    ok(keyward(gateway, "teams", "add-member", f"cli-team-{suffix}", email))

    issued = document(keyward(gateway, "tokens", "mint", "--user", email, "--team", f"cli-team-{suffix}",
                              "--model", "gpt-4o-mini", "--expires-in-days", "7", "--name", "laptop", "--json"))
    secret = issued["token"]
    assert secret.startswith("kw_pat_") and issued["team_id"] == team["id"] and issued["models"] == ["gpt-4o-mini"]
    gateway.wait_until(lambda: gateway.known(secret), what="the CLI-minted token to reach authz")
    assert gateway.status_of(secret) == 200

    listed = ok(keyward(gateway, "tokens", "list", "--user", email))
    assert issued["id"] in listed and issued["hint"] in listed and email in listed and f"cli-team-{suffix}" in listed
    assert secret not in listed


def test_rotate_then_revoke(gateway: Gateway) -> None:
    minted = gateway.mint()
    rotated = document(keyward(gateway, "tokens", "rotate", minted.id, "--grace-hours", "0", "--json"))
    new = rotated["new"]
    assert rotated["old"]["id"] == minted.id and new["rotated_from"] == minted.id
    gateway.wait_until(lambda: gateway.known(new["token"]), what="the successor to reach authz")
    assert gateway.status_of(new["token"]) == 200
    gateway.wait_until(lambda: refused(gateway, minted.secret), what="the rotated-out token to be refused")

    said = ok(keyward(gateway, "tokens", "revoke", new["id"], "--reason", "laptop lost"))
    assert "Revoked" in said and new["hint"] in said and new["token"] not in said
    gateway.wait_until(lambda: refused(gateway, new["token"]), what="the revoked token to be refused")
    # --all follows the cursors, here one token per page.
    listed = document(keyward(gateway, "tokens", "list", "--user", minted.user["email"], "--sort", "created_at",
                              "--limit", "1", "--all", "--json"))
    assert [(t["id"], t["revoke_reason"]) for t in listed["items"]] == [(minted.id, None), (new["id"], "laptop lost")]
    assert listed["next_cursor"] is None and all("token" not in t for t in listed["items"])


def test_a_revocation_no_replica_confirmed_says_so(gateway: Gateway) -> None:
    minted = gateway.mint()
    authz = gateway.stack.services["authz"].process
    assert authz is not None
    os.kill(authz.pid, signal.SIGSTOP)  # alive, beating a moment ago, applying nothing
    try:
        result = keyward(gateway, "tokens", "revoke", minted.id)
    finally:
        os.kill(authz.pid, signal.SIGCONT)
    said = ok(result)
    assert "Revoked" in said and "warning" not in said  # stdout keeps the result alone
    assert result.stderr.startswith("warning: not yet confirmed by gateway replica(s) "), result.stderr
    gateway.wait_until(lambda: refused(gateway, minted.secret), what="the revoked token to be refused")
    again = keyward(gateway, "tokens", "revoke", gateway.mint().id, "--json")
    assert document(again)["revocation"]["applied"] is True and again.stderr == ""


def test_dormant_report(gateway: Gateway) -> None:
    stale, fresh = gateway.mint(), gateway.mint()
    sql(gateway, "UPDATE tokens SET created_at = now() - interval '40 days' WHERE id = $1::uuid", stale.id)
    report = document(keyward(gateway, "tokens", "dormant", "--days", "30", "--all", "--json"))
    ids = {item["id"] for item in report["items"]}
    assert stale.id in ids and fresh.id not in ids
    assert all("token" not in item for item in report["items"])
    table = ok(keyward(gateway, "tokens", "dormant", "--days", "30"))
    assert stale.id in table and stale.token["hint"] in table and stale.secret not in table


def test_names_suspend_and_bulk_revoke(gateway: Gateway) -> None:
    team = gateway.team()
    minted = gateway.mint(team=team)
    ok(keyward(gateway, "users", "suspend", minted.user["email"]))
    gateway.wait_until(lambda: refused(gateway, minted.secret), what="a suspended user's token to be refused")
    ok(keyward(gateway, "users", "activate", minted.user["email"]))
    gateway.wait_until(lambda: gateway.status_of(minted.secret) == 200, what="the token to work again")
    result = document(keyward(gateway, "teams", "revoke-tokens", team["name"], "--reason", "incident", "--yes",
                              "--json"))
    assert result["revoked"] == 1 and result["revocation"]["applied"] is True
    gateway.wait_until(lambda: refused(gateway, minted.secret), what="the team's tokens to be refused")


def test_api_errors_are_one_line_and_a_nonzero_exit(gateway: Gateway) -> None:
    cases: list[tuple[list[str], dict[str, str | None], int, str]] = [
        (["users", "show", str(uuid.uuid4())], {}, 1, "(404 user_not_found)"),
        (["users", "create", "not-an-email", "--json"], {}, 1, "email: value is not a valid email address"),
        (["teams", "show", "no-such-team"], {}, 1, "no team with name 'no-such-team'"),
        (["whoami"], {"KEYWARD_API_TOKEN": "wrong-token"}, 1, "(401 credential_invalid)"),
        (["tokens", "list"], {"KEYWARD_API_URL": f"http://127.0.0.1:{free_port()}"}, 3, "cannot reach the Keyward API"),
    ]
    for args, env, code, message in cases:
        result = keyward(gateway, *args, env=env)
        assert result.returncode == code, (args, result.stderr)
        assert result.stdout == "", args
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, (args, result.stderr)
        assert message in result.stderr and "Traceback" not in result.stderr


def test_credentials_carry_their_role(gateway: Gateway) -> None:
    name = f"cli-auditor-{uuid.uuid4().hex[:6]}"
    issued = document(keyward(gateway, "credentials", "create", name, "--role", "auditor", "--json"))
    as_auditor = {"KEYWARD_API_TOKEN": issued["token"], "KEYWARD_ADMIN_TOKEN": None}
    assert document(keyward(gateway, "whoami", "--json", env=as_auditor))["role"] == "auditor"
    denied = keyward(gateway, "users", "create", f"{name}@example.com", env=as_auditor)
    assert denied.returncode == 1 and "(403 role_forbidden)" in denied.stderr
    ok(keyward(gateway, "credentials", "revoke", name))
    assert keyward(gateway, "whoami", env=as_auditor).returncode == 1


def test_config_file_is_written_private_and_refused_when_not(gateway: Gateway, tmp_path: Path) -> None:
    from_file = {"HOME": str(tmp_path), "KEYWARD_CONFIG_DIR": None, "KEYWARD_API_URL": None,
                 "KEYWARD_API_TOKEN": None, "KEYWARD_ADMIN_TOKEN": None}
    ok(keyward(gateway, "configure", "--api-url", gateway.info.api_url, "--token", gateway.info.admin_token,
               env=from_file))
    path = tmp_path / ".config" / "keyward" / "config.toml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert document(keyward(gateway, "whoami", "--json", env=from_file))["actor"] == "admin:bootstrap"

    path.chmod(0o644)
    result = keyward(gateway, "whoami", env=from_file)
    assert result.returncode == 3 and f"chmod 600 {path}" in result.stderr and result.stdout == ""
    assert gateway.info.admin_token not in result.stderr


# -- one configuration: the environment, then a `keyward login` sign-in, then config.toml -------------


def write_sign_in(path: Path, api_url: str, *, expires_in: timedelta) -> None:
    """A credentials.json as `keyward login` writes it, with a token Keyward never issued."""
    path.write_text(json.dumps({"api_url": api_url, "token": "kw_cli_" + "x" * 43, "email": "nobody@example.com",
                                "role": "admin", "expires_at": (datetime.now(UTC) + expires_in).isoformat()}))
    path.chmod(0o600)


def test_whoami_names_the_credential_it_used_in_the_order_documented(gateway: Gateway, tmp_path: Path) -> None:
    url, admin_token = gateway.info.api_url, gateway.info.admin_token
    said = ok(keyward(gateway, "whoami"))
    assert "environment (KEYWARD_API_TOKEN)" in said and "admin:bootstrap" in said and url in said
    said = ok(keyward(gateway, "whoami", env={"KEYWARD_API_TOKEN": None, "KEYWARD_ADMIN_TOKEN": admin_token}))
    assert "environment (KEYWARD_ADMIN_TOKEN)" in said

    # KEYWARD_CONFIG_DIR holds config.toml ...
    config_dir = tmp_path / "keyward"
    files = {"KEYWARD_CONFIG_DIR": str(config_dir), "KEYWARD_API_TOKEN": None, "KEYWARD_ADMIN_TOKEN": None}
    ok(keyward(gateway, "configure", "--api-url", url, "--token", admin_token, env=files))
    config = config_dir / "config.toml"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600 and stat.S_IMODE(config_dir.stat().st_mode) == 0o700
    assert f"config ({config})" in ok(keyward(gateway, "whoami", env=files))

    # ... and the sign-in, which comes first while it is live: this one Keyward never issued.
    sign_in = config_dir / "credentials.json"
    write_sign_in(sign_in, url, expires_in=timedelta(hours=1))
    refused = keyward(gateway, "whoami", env=files)
    assert refused.returncode == 1 and refused.stdout == ""
    assert "(401 credential_invalid) - run `keyward login` again" in refused.stderr
    # The environment comes before both.
    assert "environment (KEYWARD_API_TOKEN)" in ok(keyward(gateway, "whoami", env={
        **files, "KEYWARD_API_TOKEN": admin_token}))
    # A sign-in to another control plane is not used for KEYWARD_API_URL's.
    write_sign_in(sign_in, f"http://127.0.0.1:{free_port()}", expires_in=timedelta(hours=1))
    assert f"config ({config})" in ok(keyward(gateway, "whoami", env=files))
    # Nor is an expired one; with nothing after it, the error says what to do.
    write_sign_in(sign_in, url, expires_in=-timedelta(minutes=1))
    assert f"config ({config})" in ok(keyward(gateway, "whoami", env=files))
    config.unlink()
    expired = keyward(gateway, "users", "list", env=files)
    assert expired.returncode == 3 and expired.stdout == "" and expired.stderr.count("\n") == 1
    assert "expired" in expired.stderr and "run `keyward login`" in expired.stderr
    # A sign-in that others may read is refused, not used.
    write_sign_in(sign_in, url, expires_in=timedelta(hours=1))
    sign_in.chmod(0o644)
    loose = keyward(gateway, "whoami", env=files)
    assert loose.returncode == 3 and "may be read by others" in loose.stderr and "kw_cli_" not in loose.stderr
    # Nothing at all: the error names every way to connect.
    sign_in.unlink()
    nothing = keyward(gateway, "whoami", env=files)
    assert nothing.returncode == 3 and "keyward login" in nothing.stderr and "KEYWARD_API_TOKEN" in nothing.stderr


def test_the_older_keyward_config_still_names_config_toml(gateway: Gateway, tmp_path: Path) -> None:
    legacy = tmp_path / "elsewhere" / "keyward.toml"
    env = {"HOME": str(tmp_path), "KEYWARD_CONFIG_DIR": None, "KEYWARD_CONFIG": str(legacy),
           "KEYWARD_API_URL": None, "KEYWARD_API_TOKEN": None, "KEYWARD_ADMIN_TOKEN": None}
    ok(keyward(gateway, "configure", "--api-url", gateway.info.api_url, "--token", gateway.info.admin_token, env=env))
    assert stat.S_IMODE(legacy.stat().st_mode) == 0o600
    assert f"config ({legacy})" in ok(keyward(gateway, "whoami", env=env))
    # Set together, the two must name the same file.
    both = keyward(gateway, "whoami", env={**env, "KEYWARD_CONFIG_DIR": str(tmp_path / "other")})
    assert both.returncode == 3 and "KEYWARD_CONFIG" in both.stderr and both.stderr.count("\n") == 1
    same = {**env, "KEYWARD_CONFIG_DIR": str(legacy.parent), "KEYWARD_CONFIG": str(legacy.parent / "config.toml")}
    agreed = keyward(gateway, "whoami", env=same)  # no config.toml there: nothing to connect with
    assert agreed.returncode == 3 and "no API token" in agreed.stderr
