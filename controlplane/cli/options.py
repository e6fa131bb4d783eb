"""Options and arguments that several command groups share, so each reads and helps the same way."""

from __future__ import annotations

from typing import Annotated

import typer

JsonOut = Annotated[bool, typer.Option("--json", help="Print the API's JSON document on stdout, nothing else.")]
AllPages = Annotated[bool, typer.Option("--all", help="Follow cursors to the last page.")]
PageSize = Annotated[int | None, typer.Option("--limit", min=1, max=500,
                                            help="Page size (default 100; 500 with --all).")]
CursorOpt = Annotated[str | None, typer.Option("--cursor", help="next_cursor of the previous page.")]
Yes = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
ReasonOpt = Annotated[str | None, typer.Option("--reason", help="Recorded with each revocation.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print only the secret (for $(...)).")]
Description = Annotated[str | None, typer.Option()]

UserRef = Annotated[str, typer.Argument(help="User id or email.", metavar="USER")]
TeamRef = Annotated[str, typer.Argument(help="Team id or name.", metavar="TEAM")]
ProfileRef = Annotated[str, typer.Argument(help="Access profile id or name.", metavar="PROFILE")]
