"""``keyward evidence --out DIR``: the evidence pack (``GET /api/v1/evidence``, auditor role) written out
as files, each checked against the sha256 its manifest states before the command says it is done."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from controlplane.cli.client import connect
from controlplane.cli.options import JsonOut
from controlplane.cli.output import Columns, fail, key, print_json, render_table, say, usage


def _moment(option: str, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        usage(f"{option} {value!r}: expected an ISO 8601 time with a timezone, e.g. 2026-11-01T00:00:00Z")
    if moment.tzinfo is None:
        usage(f"{option} {value!r}: give a timezone, e.g. 2026-11-01T00:00:00Z")
    return moment.isoformat()


class Verification(StrEnum):
    INCREMENTAL = "incremental"
    FULL = "full"
    NONE = "none"


FILES: Columns = [("FILE", key("name")), ("BYTES", key("bytes")), ("SHA256", key("sha256"))]


def evidence(
    out: Annotated[Path, typer.Option("--out", file_okay=False, help="Directory to write the pack's files to.")],
    since: Annotated[str | None, typer.Option(help="Requests window start (default: a day before --until).")]
    = None,
    until: Annotated[str | None, typer.Option(help="Requests window end, exclusive (default: now).")] = None,
    verify: Annotated[Verification, typer.Option(
        help="incremental: from the last signed verification marker on (fast); full: every row of every "
             "chain, from the start; none: the signed heads only.")] = Verification.INCREMENTAL,
    as_json: JsonOut = False,
) -> None:
    """Write the evidence pack: who can reach each provider now, departed people and the requests allowed
    after their deprovisioning, who made the requests in the window, token counts, revocation latency,
    the register, reviews and open exceptions, the chain's verification; JSON, CSV and index.html, with
    manifest.json."""
    params = {"format": "json", "start": _moment("--since", since), "end": _moment("--until", until),
              "verify": "false" if verify is Verification.NONE else verify.value}
    pack: dict[str, Any] = connect(read_timeout=600).get("/evidence", params)
    manifest, files = pack["manifest"], pack["files"]
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        fail(f"cannot create {out}: {exc}")
    for entry in manifest["files"]:
        content = files[entry["name"]].encode()
        if hashlib.sha256(content).hexdigest() != entry["sha256"]:
            fail(f"{entry['name']} does not match the sha256 its manifest states; nothing more written")
        (out / entry["name"]).write_bytes(content)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    if as_json:
        print_json(manifest | {"out": str(out)})
        return
    render_table(manifest["files"], FILES)
    chain = json.loads(files["chain.json"])
    departed = json.loads(files["departed.json"])
    tokens = json.loads(files["tokens.json"])
    intact = chain.get("intact")
    say(f"Audit chain: {'intact' if intact else 'BROKEN' if intact is False else 'not verified'}. Tokens stored "
        f"active {tokens['stored_active']}, usable now {tokens['effective_usable']}. Departed people "
        f"{len(departed['people'])}, requests allowed after deprovisioning "
        f"{departed['total_allowed_after_deprovision']}.")
    say(f"Written to {out}/ (open index.html).")
