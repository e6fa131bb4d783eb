"""``keyward up`` runs the whole stack in the foreground (what ``make up`` calls); ``keyward migrate``
applies the database migrations. Both import what they run only when they run, so every other command
starts quickly."""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING, Annotated

import typer

from authz.upstreams import Api
from controlplane.cli.output import out

if TYPE_CHECKING:
    from controlplane.stack.runner import StackInfo, StackSettings


def console_link(info: StackInfo) -> str:
    """A one-time console sign-in link for the bootstrap admin, or why there is none."""
    import httpx

    try:
        reply = httpx.post(f"{info.api_url}/api/v1/console/links", timeout=10,
                           headers={"Authorization": f"Bearer {info.admin_token}", "Keyward-Client": "cli"})
    except httpx.HTTPError as exc:
        return f"(no sign-in link: {exc})"
    if reply.status_code != 201:
        return f"(no sign-in link: the control plane answered {reply.status_code})"
    return f"{info.api_url}{reply.json()['path']}  (works once, within minutes; more: keyward console link)"


def envoy_stats(admin: str) -> str:
    """How to read Envoy's Prometheus stats through its admin interface (``unix:<path>`` or ``host:port``).

    >>> envoy_stats("unix:/data/run/envoy-admin.sock")
    'curl --unix-socket /data/run/envoy-admin.sock http://envoy/stats/prometheus'
    >>> envoy_stats("127.0.0.1:9901")
    'http://127.0.0.1:9901/stats/prometheus'
    """
    if admin.startswith("unix:"):
        return f"curl --unix-socket {admin.removeprefix('unix:')} http://envoy/stats/prometheus"
    return f"http://{admin}/stats/prometheus"


def _banner(info: StackInfo, settings: StackSettings, link: str) -> str:
    token_line = (
        f"{info.admin_token}  (shown once; also in {settings.data_dir / 'secrets/admin_token'})"
        if info.admin_token_is_new
        else f"from KEYWARD_ADMIN_TOKEN or {settings.data_dir / 'secrets/admin_token'}"
    )
    names = ("openai", "anthropic", *(u.name for u in settings.extra_upstreams()))
    providers = ", ".join(
        f"{name}: {'mock ' + (info.mock_url or '') if name in info.mocked else 'real (key in Envoy secret)'}"
        for name in names
    )
    bases = {Api.AZURE: 'AzureOpenAI: azure_endpoint="{}/azure"', Api.GEMINI: 'google-genai: base_url="{}/gemini"',
             Api.BEDROCK: 'AnthropicBedrock / boto3: base_url / endpoint_url="{}/bedrock"',
             Api.MISTRAL: 'Mistral SDK:  server_url="{}/mistral"'}
    served = {api for u in settings.extra_upstreams() for api in u.apis}
    more = "".join(f"\n                 {line.format(info.gateway_url)}"
                   for api, line in bases.items() if api in served)
    more += "".join(f'\n                 MCP server {u.name}: "{info.gateway_url}/mcp/{u.name}"'
                    for u in settings.extra_upstreams() if Api.MCP in u.apis)
    api = info.api_url
    return f"""Keyward is up.

  Gateway      {info.gateway_url}
                 OpenAI SDK:    base_url="{info.gateway_url}/openai/v1"
                 Anthropic SDK: base_url="{info.gateway_url}/anthropic"{more}
  Console      {link}
  Admin API    {api}/api/v1   (OpenAPI docs: {api}/docs)
  Admin token  {token_line}
  Providers    {providers}
  Logs         {info.logs_dir}  (access log: {info.access_log})
  Metrics      control plane: {api}/metrics
               authz:         {info.authz_metrics_url or "(off)"}
               Envoy:         {envoy_stats(info.envoy_admin)}

Mint a first token (in another terminal, from this directory):
  export KEYWARD_API_URL={api} KEYWARD_ADMIN_TOKEN=$(cat {settings.data_dir / "secrets/admin_token"})
  .venv/bin/keyward teams create research --profile Experiment
  .venv/bin/keyward users create you@example.com
  .venv/bin/keyward teams add-member research you@example.com
  .venv/bin/keyward tokens mint --user you@example.com --team research --name laptop

A service that crashes is restarted (reported here and in {info.logs_dir / "stack.log"}).
Ctrl-C stops everything."""


class _Stop(BaseException):
    """A stop signal (SIGINT, SIGTERM, SIGHUP), raised once in the main thread wherever it is."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def up() -> None:
    """Run Postgres, the control plane, authz, Envoy (and the mock provider) until Ctrl-C.

    A child that crashes is restarted; Ctrl-C, SIGTERM and SIGHUP stop them all in order (Envoy drained
    first, Postgres last), and so does an error. If this process is killed outright, the children get
    a signal from the kernel and stop too; anything still left is stopped by the next ``keyward up``.
    """
    from controlplane.stack.runner import Stack, StackError, StackSettings

    settings = StackSettings()
    stack = Stack(settings=settings, report=lambda message: out.print(message, style="yellow", markup=False,
                                                                      highlight=False, soft_wrap=True))
    stopping = False

    def _on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        if stopping:
            return  # already stopping, in order; a second Ctrl-C does not cut that short
        stopping = True
        raise _Stop(signum)

    stop_signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    for signum in stop_signals:
        signal.signal(signum, _on_signal)
    code = 0
    try:
        with out.status("Starting Postgres, control plane, authz and Envoy…"):
            info = stack.start()
        # Plain text, never wrapped: the commands in it are meant to be copied.
        out.print(_banner(info, settings, console_link(info)), markup=False, highlight=False, soft_wrap=True)
        while True:
            signal.pause()
    except _Stop as stop:
        out.print(f"{signal.Signals(stop.signum).name}: stopping (Envoy drains first)…")
    except StackError as exc:
        out.print(f"[red]Could not start:[/red] {exc}")
        code = 1
    finally:
        stopping = True
        stack.stop()
    out.print("Stopped. Data kept in " + str(settings.data_dir))
    raise typer.Exit(code)


def migrate(database_url: Annotated[str, typer.Option(envvar="DATABASE_URL")]) -> None:
    """Apply every pending database migration."""
    from controlplane.migrate import upgrade

    upgrade(database_url)
    out.print("Database is at the latest migration.")
