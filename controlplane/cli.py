"""``keyward``: the operator's command line.

``keyward up`` runs the whole stack in the foreground (what ``make up`` calls); ``keyward migrate``
applies database migrations to ``DATABASE_URL``.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from controlplane import cli_api, cli_login

if TYPE_CHECKING:
    from controlplane.stack.runner import StackInfo, StackSettings

app = typer.Typer(
    help="Keyward: one provider key at the proxy, one personal access token per person.", no_args_is_help=True
)
console = Console()


def _banner(info: StackInfo, settings: StackSettings) -> str:
    token_line = (
        f"{info.admin_token}  (shown once; also in {settings.data_dir / 'secrets/admin_token'})"
        if info.admin_token_is_new
        else f"from KEYWARD_ADMIN_TOKEN or {settings.data_dir / 'secrets/admin_token'}"
    )
    providers = ", ".join(
        f"{name}: {'mock ' + (info.mock_url or '') if name in info.mocked else 'real (key in Envoy secret)'}"
        for name in ("openai", "anthropic")
    )
    api = info.api_url
    return f"""Keyward is up.

  Gateway      {info.gateway_url}
                 OpenAI SDK:    base_url="{info.gateway_url}/openai/v1"
                 Anthropic SDK: base_url="{info.gateway_url}/anthropic"
  Admin API    {api}/api/v1   (OpenAPI docs: {api}/docs)
  Admin token  {token_line}
  Providers    {providers}
  Logs         {info.logs_dir}  (access log: {info.access_log})

Mint a first token (in another terminal, from this directory):
  export KEYWARD_API_URL={api} KEYWARD_ADMIN_TOKEN=$(cat {settings.data_dir / "secrets/admin_token"})
  .venv/bin/keyward teams create research --profile Experiment
  .venv/bin/keyward users create you@example.com
  .venv/bin/keyward teams add-member research you@example.com
  .venv/bin/keyward tokens mint --user you@example.com --team research --name laptop

Ctrl-C stops everything."""


@app.command()
def up() -> None:
    """Run Postgres, the control plane, authz, Envoy (and the mock provider) until Ctrl-C."""
    from controlplane.stack.runner import Stack, StackError, StackSettings

    settings = StackSettings()
    stack = Stack(settings=settings)
    stopping = False

    def _stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    with console.status("Starting Postgres, control plane, authz and Envoy…"):
        try:
            info = stack.start()
        except StackError as exc:
            console.print(f"[red]Could not start:[/red] {exc}")
            raise typer.Exit(1) from exc
    # Plain text, never wrapped: the commands in it are meant to be copied.
    console.print(_banner(info, settings), markup=False, highlight=False, soft_wrap=True)
    code = 0
    while not stopping:
        dead = stack.first_dead()
        if dead is not None:
            console.print(f"[red]{dead.name} stopped unexpectedly; see {dead.log_path}[/red]")
            code = 1
            break
        time.sleep(0.5)
    console.print("Stopping…")
    stack.stop()
    console.print("Stopped. Data kept in " + str(settings.data_dir))
    raise typer.Exit(code)


@app.command()
def migrate(database_url: Annotated[str, typer.Option(envvar="DATABASE_URL")]) -> None:
    """Apply every pending database migration."""
    from controlplane.migrate import upgrade

    upgrade(database_url)
    console.print("Database is at the latest migration.")


audit_app = typer.Typer(help="Verify and maintain the audit store.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")

OwnerUrl = Annotated[
    str,
    typer.Option("--database-url", envvar=["KEYWARD_MIGRATION_DATABASE_URL", "DATABASE_URL"],
                 help="A connection with read access (verify) or the owner's rights (retention)."),
]


@audit_app.command("verify")
def audit_verify(database_url: OwnerUrl) -> None:
    """Walk every hash chain; name the first record modified, deleted or out of order. Exit 1 if any."""
    import asyncio

    from controlplane.audit.verify import verify_all

    reports = asyncio.run(verify_all(database_url))
    broken = False
    for report in reports:
        if report.findings:
            broken = True
            for finding in report.findings:
                console.print(f"[red]TAMPERED[/red] {finding}", markup=True, highlight=False)
        else:
            console.print(f"[green]ok[/green] {report.chain}: {report.records} records, chain intact")
    raise typer.Exit(1 if broken else 0)


@audit_app.command("retention")
def audit_retention(
    database_url: OwnerUrl,
    keep_months: Annotated[int, typer.Option(min=1, help="Months of ingest to keep, besides the current one.")],
    export_dir: Annotated[Path, typer.Option(help="Where each dropped partition is exported first.")],
) -> None:
    """Export, then drop, audit partitions older than the kept months; each drop is an event."""
    import asyncio

    from controlplane.audit.events import Actor
    from controlplane.audit.retention import apply_retention

    dropped = asyncio.run(apply_retention(database_url, keep_months=keep_months, export_dir=export_dir,
                                          actor=Actor(name="cli:retention", mechanism="cli")))
    for item in dropped:
        console.print(f"dropped {item.partition}: {item.rows} rows exported to {item.export_file} "
                      f"(sha256 {item.export_sha256})")
    if not dropped:
        console.print("Nothing older than the kept months.")


app.add_typer(cli_api.users_app, name="users")
app.add_typer(cli_api.teams_app, name="teams")
app.add_typer(cli_api.profiles_app, name="profiles")
app.add_typer(cli_api.accounts_app, name="service-accounts")
app.add_typer(cli_api.tokens_app, name="tokens")
app.add_typer(cli_api.credentials_app, name="credentials")
app.command("whoami")(cli_api.whoami)
app.command("configure")(cli_api.configure)
app.add_typer(cli_login.app)


if __name__ == "__main__":
    app()
