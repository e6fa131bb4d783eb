"""``keyward audit``: check the audit store's hash chains, and apply the retention policy. Both connect
to the database directly (``--database-url``, or KEYWARD_MIGRATION_DATABASE_URL, else DATABASE_URL),
not through the API, and import the database code only when they run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from controlplane.cli.output import Exit, fail, out

app = typer.Typer(help="Verify and maintain the audit store.", no_args_is_help=True)

OwnerUrl = Annotated[
    str,
    typer.Option("--database-url", envvar=["KEYWARD_MIGRATION_DATABASE_URL", "DATABASE_URL"],
                 help="A connection with read access (verify) or the owner's rights (retention)."),
]


PublicKey = Annotated[
    str | None,
    typer.Option("--public-key", envvar="KEYWARD_AUDIT_PUBLIC_KEY",
                 help="The control plane's audit public key (make up writes it to .keyward/secrets/"
                      "audit_public_key; GET /api/v1/audit/public-key). Without it signatures are not checked."),
]


@app.command("verify")
def audit_verify(database_url: OwnerUrl, public_key: PublicKey = None) -> None:
    """Walk every hash chain and check its signatures; name the first record modified, deleted, out of
    order or appended without the signing key. Exit 1 if any."""
    import asyncio

    from controlplane.audit.verify import verify_all

    try:
        reports = asyncio.run(verify_all(database_url, public_key=public_key))
    except ValueError as exc:  # a malformed public key
        fail(str(exc), Exit.USAGE)
    broken = False
    for report in reports:
        if report.findings:
            broken = True
            for finding in report.findings:
                out.print(f"[red]TAMPERED[/red] {finding}", markup=True, highlight=False)
        elif report.signed_seq is None:
            out.print(f"[green]ok[/green] {report.chain}: {report.records} records, chain intact "
                      "[yellow](signatures not checked: give --public-key)[/yellow]")
        else:
            out.print(f"[green]ok[/green] {report.chain}: {report.records} records, chain intact, signed")
    raise typer.Exit(1 if broken else 0)


@app.command("retention")
def audit_retention(
    database_url: OwnerUrl,
    keep_months: Annotated[int, typer.Option(min=1, help="Months of ingest to keep, besides the current one.")],
    export_dir: Annotated[Path, typer.Option(help="Where each dropped partition is exported first.")],
    signing_key: Annotated[str, typer.Option("--signing-key", envvar="KEYWARD_AUDIT_SIGNING_KEY",
                                             help="The control plane's audit signing key: each drop is a "
                                                  "signed event.")],
) -> None:
    """Export, then drop, audit partitions older than the kept months; each drop is an event."""
    import asyncio

    from controlplane.audit import signing
    from controlplane.audit.events import Actor
    from controlplane.audit.retention import apply_retention

    try:
        signing.install(signing.Signer(signing_key))
    except ValueError as exc:
        fail(str(exc), Exit.USAGE)

    dropped = asyncio.run(apply_retention(database_url, keep_months=keep_months, export_dir=export_dir,
                                          actor=Actor(name="cli:retention", mechanism="cli")))
    for item in dropped:
        out.print(f"dropped {item.partition}: {item.rows} rows exported to {item.export_file} "
                  f"(sha256 {item.export_sha256})")
    if not dropped:
        out.print("Nothing older than the kept months.")
