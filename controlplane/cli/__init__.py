"""``keyward``: the operator's and the engineer's command line.

One configuration, one client, one way to print::

    settings.py          the process's settings (KEYWARD_API_URL, KEYWARD_API_TOKEN, KEYWARD_CONFIG_DIR, …)
    store.py             the config directory: config.toml, credentials.json, and which credential is used
    client.py            the one HTTP client (Api) every command that calls the control plane uses
    output.py            tables, --json, one-line errors, the exit codes
    vocabulary.py        environments, roles, providers, catalog entries, resources named by name
    options.py           options the command groups share
    users.py  teams.py  profiles.py  service_accounts.py  tokens.py  credentials.py
                         the admin API, one module per command group
    session.py           login, me, logout, whoami, configure (loopback.py: login's redirect receiver)
    stack.py  audit.py   up and migrate; audit verify and retention (straight to the database)

Start-up stays quick: pydantic (settings), the OIDC client, the stack runner and the database code are
imported by the commands that use them. Nothing else in ``controlplane`` imports this package.
"""

from __future__ import annotations

import typer

from controlplane.cli import (
    audit,
    credentials,
    profiles,
    service_accounts,
    session,
    stack,
    teams,
    tokens,
    users,
)

__all__ = ["app"]

app = typer.Typer(
    help="Keyward: one provider key at the proxy, one personal access token per person.", no_args_is_help=True
)

app.command()(stack.up)
app.command()(stack.migrate)
app.add_typer(audit.app, name="audit")
app.add_typer(users.app, name="users")
app.add_typer(teams.app, name="teams")
app.add_typer(profiles.app, name="profiles")
app.add_typer(service_accounts.app, name="service-accounts")
app.add_typer(tokens.app, name="tokens")
app.add_typer(credentials.app, name="credentials")
for command in (session.whoami, session.configure, session.login, session.me, session.logout):
    app.command()(command)
