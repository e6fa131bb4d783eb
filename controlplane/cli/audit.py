"""``keyward audit``: check the audit store's hash chains, and apply the retention policy. Both connect
to the database directly (``--database-url``, or KEYWARD_MIGRATION_DATABASE_URL, else DATABASE_URL),
not through the API, and import the database code only when they run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from controlplane.cli.output import out

app = typer.Typer(help="Verify and maintain the audit store.", no_args_is_help=True)

OwnerUrl = Annotated[
    str,
    typer.Option("--database-url", envvar=["KEYWARD_MIGRATION_DATABASE_URL", "DATABASE_URL"],
                 help="A connection with read access (verify) or the owner's rights (retention)."),
]


@app.command("verify")
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
                out.print(f"[red]TAMPERED[/red] {finding}", markup=True, highlight=False)
        else:
            out.print(f"[green]ok[/green] {report.chain}: {report.records} records, chain intact")
    raise typer.Exit(1 if broken else 0)


@app.command("retention")
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
        out.print(f"dropped {item.partition}: {item.rows} rows exported to {item.export_file} "
                  f"(sha256 {item.export_sha256})")
    if not dropped:
        out.print("Nothing older than the kept months.")
