"""``/evidence``: the evidence pack for an auditor (:mod:`controlplane.services.evidence`).

A zip by default (``curl -o evidence.zip``); ``format=json`` gives the same files as one document
(``{"manifest", "files": {name: text}}``), which is what ``keyward evidence --out DIR`` writes out and
checks against the manifest's sha256.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse, Response

from authz.config import asyncpg_dsn
from controlplane import errors
from controlplane.api.deps import Auditor, SessionDep, SettingsDep
from controlplane.services import evidence

router = APIRouter(prefix="/evidence", tags=["evidence"], responses=errors.responses(401, 403, 422))

_PACK: dict[int | str, dict[str, Any]] = {
    200: {"description": "The evidence pack: a zip of its files and manifest.json, or (format=json) one document.",
          "content": {"application/zip": {"schema": {"type": "string", "format": "binary"}},
                      "application/json": {"schema": {"type": "object"}}}}
}


@router.get("", response_class=Response, responses=_PACK)
async def evidence_pack(
    session: SessionDep,
    caller: Auditor,
    settings: SettingsDep,
    start: Annotated[datetime | None, Query(description="Requests window start (default: end - 24 h).")] = None,
    end: Annotated[datetime | None, Query(description="Requests window end, exclusive (default: now).")] = None,
    verify: Annotated[Literal["incremental", "full", "true", "false"], Query(
        description="chain.json: incremental (default; true says the same) verifies each audit chain from its "
                    "newest signed verification marker; full re-hashes every row (one pass over every row); "
                    "false: the signed heads only. Each states the chain's last full verification.")]
    = "incremental",
    format: Annotated[Literal["zip", "json"], Query()] = "zip",
) -> Response:
    """Which identities can reach each provider now; each departed person's last request and the requests
    allowed after their deprovisioning (0, with the query); who made the requests in the window; stored
    and effective token counts; revocation latency; the register; the last reviews and open exceptions;
    the chain's verification (incremental unless verify=full), its last full verification and its signed
    heads. JSON + CSV, an index.html, and manifest.json with every file's sha256."""
    start, end = evidence.check_window(start, end)
    chain = {"true": "incremental", "false": "none"}.get(verify, verify)
    pack = await evidence.build(session, start=start, end=end, verify=chain,
                                database_url=asyncpg_dsn(settings.database_url), generated_by=caller.actor.name)
    if format == "json":
        return JSONResponse({"manifest": pack.manifest,
                             "files": {name: content.decode() for name, content in pack.files.items()}})
    stamp = pack.manifest["generated_at"][:19].replace(":", "").replace("-", "")
    return Response(pack.zip(), media_type="application/zip",
                    headers={"content-disposition": f'attachment; filename="keyward-evidence-{stamp}.zip"'})
