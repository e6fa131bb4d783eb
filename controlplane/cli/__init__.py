"""``keyward``: the operator's and the engineer's command line.

One configuration, one client, one way to print::

    settings.py          the process's settings (KEYWARD_API_URL, KEYWARD_API_TOKEN, KEYWARD_CONFIG_DIR, …)
    store.py             the config directory: config.toml, credentials.json, and which credential is used
    client.py            the one HTTP client (Api) every command that calls the control plane uses
    output.py            tables, --json, one-line errors, the exit codes
    vocabulary.py        environments, roles, providers, catalog entries, resources named by name
    options.py           options the command groups share
    users.py  teams.py  profiles.py  service_accounts.py  tokens.py  credentials.py  notifications.py
                         the admin API, one module per command group
    projects.py  budgets.py  limits.py  prices.py
                         spend policy (scopes.py: how budgets and limits name a scope)
    session.py           login, me, logout, whoami, configure (loopback.py: login's redirect receiver)
    spend.py             keyward spend: the spend report, a table or a CSV / JSON lines export
    register.py          keyward register: the credential register, a table or a CSV / JSON lines export
    reviews.py           keyward review (open, decide, close, report, schedule) and keyward exception
    evidence.py          keyward evidence --out DIR: the evidence pack, checked against its manifest
    stack.py  audit.py   up and migrate; audit queries, verify (through the API, or the database), verify-export
                         (offline) and retention (straight to the database)

Start-up stays quick: pydantic (settings), the OIDC client, the stack runner and the database code are
imported by the commands that use them. Nothing else in ``controlplane`` imports this package.
"""

from __future__ import annotations

import typer

from controlplane.cli import (
    access,
    audit,
    budgets,
    console,
    credentials,
    evidence,
    limits,
    notifications,
    prices,
    profiles,
    projects,
    register,
    reviews,
    service_accounts,
    session,
    spend,
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
app.add_typer(notifications.app, name="notifications")
app.add_typer(projects.app, name="projects")
app.add_typer(budgets.app, name="budgets")
app.add_typer(limits.app, name="limits")
app.add_typer(prices.app, name="prices")
app.command("spend")(spend.spend)
app.add_typer(access.app, name="access")
app.command("register")(register.register)
app.add_typer(reviews.app, name="review")
app.add_typer(reviews.exception_app, name="exception")
app.command("evidence")(evidence.evidence)
app.add_typer(console.app, name="console")
for command in (session.whoami, session.configure, session.login, session.me, session.logout):
    app.command()(command)
