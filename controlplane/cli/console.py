"""``keyward console link``: a one-time sign-in link to the admin console for the bootstrap admin
(``POST /api/v1/console/links``). It works once, within minutes; ``make up`` prints the first one."""

from __future__ import annotations

import typer

from controlplane.cli.client import connect
from controlplane.cli.options import JsonOut
from controlplane.cli.output import print_json, say

app = typer.Typer(help="The admin console in the browser.", no_args_is_help=True)


@app.command("link")
def link(as_json: JsonOut = False) -> None:
    """Print a one-time console sign-in link (needs the bootstrap admin token or an admin credential)."""
    api = connect()
    minted = api.post("/console/links")
    url = api.url.rstrip("/") + minted["path"]
    if as_json:
        print_json({"url": url, "expires_at": minted["expires_at"]})
        return
    say(f"{url}\n(works once, until {minted['expires_at']})")
