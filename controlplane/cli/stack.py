"""``keyward up`` runs the whole stack in the foreground (what ``make up`` calls); ``keyward migrate``
applies the database migrations. Both import what they run only when they run, so every other command
starts quickly."""

from __future__ import annotations

import signal
import time
from typing import TYPE_CHECKING, Annotated

import typer

from controlplane.cli.output import out

if TYPE_CHECKING:
    from controlplane.stack.runner import StackInfo, StackSettings


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
    with out.status("Starting Postgres, control plane, authz and Envoy…"):
        try:
            info = stack.start()
        except StackError as exc:
            out.print(f"[red]Could not start:[/red] {exc}")
            raise typer.Exit(1) from exc
    # Plain text, never wrapped: the commands in it are meant to be copied.
    out.print(_banner(info, settings), markup=False, highlight=False, soft_wrap=True)
    code = 0
    while not stopping:
        dead = stack.first_dead()
        if dead is not None:
            out.print(f"[red]{dead.name} stopped unexpectedly; see {dead.log_path}[/red]")
            code = 1
            break
        time.sleep(0.5)
    out.print("Stopping…")
    stack.stop()
    out.print("Stopped. Data kept in " + str(settings.data_dir))
    raise typer.Exit(code)


def migrate(database_url: Annotated[str, typer.Option(envvar="DATABASE_URL")]) -> None:
    """Apply every pending database migration."""
    from controlplane.migrate import upgrade

    upgrade(database_url)
    out.print("Database is at the latest migration.")
