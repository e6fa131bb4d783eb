"""``keyward audit``: the auditor's questions, and the audit store's integrity.

* ``requests``, ``events``, ``user-activity``: the audit API's queries (``/api/v1/audit/...``) with
  its filters; a table, ``--json``, or a streamed ``--csv`` / ``--jsonl`` export that ends with a
  signed trailer, so ``verify-export`` can check it later.
* ``verify``: the server verifies every chain (``GET /api/v1/audit/verify``, auditor role:
  incrementally from its newest signed marker, or with ``--full`` every row) and this command checks
  the signatures of the heads it returns against the public key; with ``--database-url`` it walks the
  chains itself, in full, straight from the database.
* ``verify-export FILE``: an export checked offline, with no database and no API
  (:func:`controlplane.audit.verify.verify_export`).
* ``retention``: connects to the database directly, with the owner's rights.

The database code is imported only by the commands that use it."""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from controlplane.cli.client import connect, is_id
from controlplane.cli.options import AllPages, CursorOpt, JsonOut, PageSize
from controlplane.cli.output import Columns, Exit, at, fail, key, out, print_json, render_table, say, show_page
from controlplane.cli.vocabulary import USERS

app = typer.Typer(help="Query, verify and maintain the audit store.", no_args_is_help=True)

OwnerUrl = Annotated[
    str,
    typer.Option("--database-url", envvar=["KEYWARD_MIGRATION_DATABASE_URL", "DATABASE_URL"],
                 help="A connection with the owner's rights."),
]
DirectUrl = Annotated[
    str | None,
    typer.Option("--database-url", help="Walk the chains from the database directly (read access is enough) "
                                        "instead of asking the API to."),
]


PublicKey = Annotated[
    str | None,
    typer.Option("--public-key", envvar="KEYWARD_AUDIT_PUBLIC_KEY",
                 help="The control plane's audit public key (make up writes it to .keyward/secrets/"
                      "audit_public_key; GET /api/v1/audit/public-key). Without it signatures are not checked."),
]


FullVerify = Annotated[
    bool,
    typer.Option("--full", help="Re-hash every row of every chain from its start. Without it the control plane "
                                "checks that the row its newest verified marker ends at still has its hash, and "
                                "re-hashes only the rows after it (an in-place edit before the marker is found "
                                "by a full verification only; the control plane runs one daily)."),
]


@app.command("verify")
def audit_verify(database_url: DirectUrl = None, public_key: PublicKey = None, full: FullVerify = False,
                 as_json: JsonOut = False) -> None:
    """Verify every hash chain and check its signatures; name the first record modified, deleted, out of
    order or appended without the signing key. Exit 1 if any.

    By default the control plane verifies the chains (auditor role), incrementally unless --full, and this
    command checks the signed heads it returns against --public-key (else the key the API publishes).
    With --database-url the chains are walked here, always in full."""
    if database_url is None:
        _verify_through_api(public_key, full, as_json)
        return
    import asyncio

    from controlplane.audit.verify import verify_all

    try:
        reports = asyncio.run(verify_all(database_url, public_key=public_key))
    except ValueError as exc:  # a malformed public key
        fail(str(exc), Exit.USAGE)
    if as_json:
        from controlplane.audit.verify import report_document

        document = [report_document(report) for report in reports]
        print_json({"intact": all(not r.findings for r in reports), "chains": document})
        raise typer.Exit(1 if any(r.findings for r in reports) else 0)
    broken = False
    for report in reports:
        if report.findings:
            broken = True
            for finding in report.findings:
                out.print(f"[red]TAMPERED[/red] {finding}", markup=True, highlight=False, soft_wrap=True)
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


#: A full verification reads every row of every chain: about 30 s per million rows on two cores.
VERIFY_TIMEOUT = 600.0


def _verify_through_api(public_key: str | None, full: bool, as_json: bool) -> None:
    from controlplane.audit.signing import Verifier

    api = connect(read_timeout=VERIFY_TIMEOUT)
    published = api.get("/audit/public-key")["public_key"]
    try:
        verifier = Verifier(public_key or published)
    except ValueError as exc:
        fail(str(exc), Exit.USAGE)
    result: dict[str, Any] = api.get("/audit/verify", {"full": "true"} if full else None)
    broken = not result["intact"]
    for report in result["chains"]:
        head = report.get("signed_head")
        report["head_signature_valid"] = bool(head) and verifier.valid(
            report["chain"], head["seq"], bytes.fromhex(head["hash"]), bytes.fromhex(head["signature"]))
        if head and not report["head_signature_valid"]:
            broken = True
    if public_key and public_key != published:
        broken = True
        result["public_key_mismatch"] = "the API publishes another public key than the one given"
    if as_json:
        print_json(result | {"intact": not broken})
        raise typer.Exit(1 if broken else 0)
    if result.get("public_key_mismatch"):
        out.print(f"[red]TAMPERED[/red] {result['public_key_mismatch']}", markup=True, highlight=False,
                  soft_wrap=True)
    for report in result["chains"]:
        head = report.get("signed_head")
        for finding in report["findings"]:
            who = f" ({finding['identity']})" if finding.get("identity") else ""
            out.print(f"[red]TAMPERED[/red] {report['chain']} seq {finding['seq']}{who}: {finding['problem']}",
                      markup=True, highlight=False, soft_wrap=True)
        if head and not report["head_signature_valid"]:
            out.print(f"[red]TAMPERED[/red] {report['chain']}: the signature of head seq {head['seq']} does not "
                      "verify with the public key", markup=True, highlight=False, soft_wrap=True)
        elif not report["findings"]:
            signed = (f", signed head seq {head['seq']} hash {head['hash']} (signature valid)" if head
                      else ", no signed head yet")
            out.print(f"[green]ok[/green] {report['chain']}: {report['records']} records, chain intact{signed}",
                      highlight=False, soft_wrap=True)
        say("  " + _how_verified(report))
    say(f"Verified ({result.get('kind', 'full')}) by {api.url} in {result['duration_ms']} ms.")
    raise typer.Exit(1 if broken else 0)


def _how_verified(report: dict[str, Any]) -> str:
    """One line: what this verification hashed, from where, and the chain's last full verification."""
    base = report.get("from_marker")
    if report.get("kind") == "incremental" and base:
        how = (f"incremental: {report['rows_checked']} rows hashed after marker {base['id']} (seq {base['to_seq']}, "
               f"{base['verified_at']}), whose row still has its hash")
    else:
        how = f"{report.get('kind', 'full')}: {report.get('rows_checked', report['records'])} rows hashed"
    last = report.get("last_full")
    if last:
        how += (f"; last full verification {last['verified_at']}: "
                + ("intact" if last["ok"] else f"BROKEN at seq {last['findings'][0]['seq']}" if last["findings"]
                   else "BROKEN"))
    else:
        how += "; no full verification recorded yet"
    return how


@app.command("verify-export")
def audit_verify_export(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True,
                                         help="An export of events or requests, CSV or JSON lines.")],
    public_key: PublicKey = None,
    complete: Annotated[bool, typer.Option("--complete", help="The export was not filtered: a gap in seq is a "
                                                              "removed row (without a signed trailer).")] = False,
    as_json: JsonOut = False,
) -> None:
    """Check an exported range offline, with no database: every row's hash recomputed from its fields,
    every link to the row before it, the order, and the signed trailer if the export has one. Exit 1
    naming the row, its seq and the expected and found hashes when a row was edited, removed or
    reordered."""
    from controlplane.audit.verify import ExportUnreadable, verify_export

    try:
        report = verify_export(file.read_text(encoding="utf-8"), public_key=public_key, complete=complete)
    except ExportUnreadable as exc:
        fail(f"{file}: {exc}", Exit.USAGE)
    except (UnicodeDecodeError, ValueError) as exc:
        fail(f"{file}: {exc}", Exit.USAGE)
    if as_json:
        print_json(report.document())
        raise typer.Exit(0 if report.intact else 1)
    for finding in report.findings:
        out.print(f"[red]TAMPERED[/red] {finding}", markup=True, highlight=False, soft_wrap=True)
    if report.intact:
        span = f"seq {report.first_seq}..{report.last_seq}" if report.rows else "no rows"
        out.print(f"[green]ok[/green] {report.chain}: {report.rows} rows, {span}, hashes and links intact",
                  highlight=False, soft_wrap=True)
        if report.rows:
            say(f"first hash {report.first_hash}\nlast hash  {report.last_hash}")
        if report.gaps:
            say(f"{len(report.gaps)} gap(s) in seq (rows outside the export's filters or window)"
                + ("; the signed trailer counts every row" if report.trailer else
                   "; without a signed trailer a removed row cannot be told from a filtered one"))
    trailer = {"valid": "signed trailer: signature valid, row count and digest match",
               "not checked": "signed trailer: row count and digest match; signature not checked (give "
                              "--public-key)",
               "absent": "no trailer: export with signed=true (keyward audit requests/events --csv) to prove "
                         "that no row was removed",
               "invalid": ""}[report.signature]
    if trailer and report.intact:
        say(trailer)
    raise typer.Exit(0 if report.intact else 1)


# -- queries ----------------------------------------------------------------------------------------

Start = Annotated[str | None, typer.Option(help="Window start, ISO 8601 with a timezone.")]
End = Annotated[str | None, typer.Option(help="Window end, exclusive, ISO 8601 with a timezone.")]
CsvOut = Annotated[bool, typer.Option("--csv", help="Stream the whole window as CSV (verifiable: signed trailer).")]
JsonlOut = Annotated[bool, typer.Option("--jsonl", help="Stream the whole window as JSON lines (signed trailer).")]

REQUESTS: Columns = [("AT", at("at")), ("REQUEST ID", key("request_id")), ("USER", key("user_email")),
                     ("TEAM", key("team")), ("ENV", key("environment")), ("PROVIDER", key("provider")),
                     ("MODEL", key("model")), ("DECISION", key("decision")), ("STATUS", key("status")),
                     ("MS", key("duration_ms"))]
EVENTS: Columns = [("SEQ", key("seq")), ("AT", at("at")), ("ACTOR", key("actor")), ("VIA", key("mechanism")),
                   ("ACTION", key("action")), ("TARGET", lambda r: f"{r['target_type']} {r['target_id']}")]


def _export_or_page(path: str, params: dict[str, Any], columns: Columns, noun: str, *, csv_out: bool,
                    jsonl_out: bool, limit: int | None, cursor: str | None, follow: bool, as_json: bool) -> None:
    if csv_out and jsonl_out:
        fail("give --csv or --jsonl, not both", Exit.USAGE)
    api = connect()
    if csv_out or jsonl_out:
        api.export(path, params | {"format": "csv" if csv_out else "jsonl", "signed": "true"}, sys.stdout.write)
        return
    show_page(api.listing(path, params, limit=limit, cursor=cursor, follow=follow), columns, as_json, noun)


@app.command("requests")
def audit_requests(
    start: Start = None, end: End = None,
    user: Annotated[str | None, typer.Option(help="User id or email.")] = None,
    team: Annotated[str | None, typer.Option(help="Team name, as recorded.")] = None,
    token: Annotated[str | None, typer.Option(help="Token id.")] = None,
    model: Annotated[str | None, typer.Option()] = None,
    decision: Annotated[str | None, typer.Option(help="allowed, token_revoked, …, envoy:<reason>.")] = None,
    status: Annotated[int | None, typer.Option(min=0, max=599)] = None,
    provider: Annotated[str | None, typer.Option()] = None,
    limit: PageSize = None, cursor: CursorOpt = None, all_pages: AllPages = False, as_json: JsonOut = False,
    csv_out: CsvOut = False, jsonl_out: JsonlOut = False,
) -> None:
    """Gateway requests in a window (default: the last 24 h), oldest first: who, what, the decision."""
    params = {"start": start, "end": end, "user_id": user if user and is_id(user) else None,
              "user": user if user and not is_id(user) else None, "team": team, "token_id": token, "model": model,
              "decision": decision, "status": status, "provider": provider}
    _export_or_page("/audit/requests", params, REQUESTS, "requests", csv_out=csv_out, jsonl_out=jsonl_out,
                    limit=limit, cursor=cursor, follow=all_pages, as_json=as_json)


@app.command("events")
def audit_events(
    start: Start = None, end: End = None,
    target_type: Annotated[str | None, typer.Option(help="user, token, team, service_account, …")] = None,
    target_id: Annotated[str | None, typer.Option()] = None,
    action: Annotated[str | None, typer.Option(help="e.g. token.revoked")] = None,
    actor: Annotated[str | None, typer.Option(help="e.g. admin:bootstrap, credential:NAME, oidc:EMAIL")] = None,
    limit: PageSize = None, cursor: CursorOpt = None, all_pages: AllPages = False, as_json: JsonOut = False,
    csv_out: CsvOut = False, jsonl_out: JsonlOut = False,
) -> None:
    """Admin, SCIM, OIDC and token actions in chain order, with actor and mechanism."""
    params = {"start": start, "end": end, "target_type": target_type, "target_id": target_id, "action": action,
              "actor": actor}
    _export_or_page("/audit/events", params, EVENTS, "events", csv_out=csv_out, jsonl_out=jsonl_out,
                    limit=limit, cursor=cursor, follow=all_pages, as_json=as_json)


ACTIVITY_FIELDS = ("user_id", "email", "status", "last_request_id", "last_request_at", "last_request_decision",
                   "last_allowed_request_id", "last_allowed_request_at", "disabled_at", "disabled_event_seq",
                   "disabled_action", "effective_at", "allowed_after_disabled")


def _activity_row(found: dict[str, Any]) -> dict[str, Any]:
    last, allowed, disabled = found.get("last_request") or {}, found.get("last_allowed_request") or {}, \
        found.get("disabled_by") or {}
    return {"user_id": found["user"]["id"], "email": found["user"]["email"], "status": found["user"].get("status"),
            "last_request_id": last.get("request_id"), "last_request_at": last.get("at"),
            "last_request_decision": last.get("decision"), "last_allowed_request_id": allowed.get("request_id"),
            "last_allowed_request_at": allowed.get("at"), "disabled_at": found.get("disabled_at"),
            "disabled_event_seq": disabled.get("seq"), "disabled_action": disabled.get("action"),
            "effective_at": found.get("effective_at"), "allowed_after_disabled": found.get("allowed_after_disabled")}


@app.command("user-activity")
def audit_user_activity(user: Annotated[str, typer.Argument(help="User id or email.")], as_json: JsonOut = False,
                        csv_out: Annotated[bool, typer.Option("--csv", help="One CSV row.")] = False) -> None:
    """When a person last made a request, and whether anything of theirs was allowed after they were
    disabled (0 for a correctly revoked user), with the records that prove it."""
    api = connect()
    found = api.get(f"/audit/users/{api.id_of(USERS, user)}/activity")
    if as_json:
        print_json(found)
        return
    row = _activity_row(found)
    if csv_out:
        writer = csv.DictWriter(sys.stdout, fieldnames=ACTIVITY_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerow(row)
        return
    render_table([(name.replace("_", " "), row[name]) for name in ACTIVITY_FIELDS],
                 [("", lambda p: p[0]), ("", lambda p: p[1])], header=False)
    for example in found.get("allowed_after_disabled_examples") or []:
        say(f"allowed after disabling: {example['request_id']} at {example['at']}")
