"""Getting into the console: the sign-in page, the one-time link, signing out, and minting a link.

``POST /api/v1/console/links`` (admin) mints a one-time link for the bootstrap admin; ``make up`` prints
one and ``keyward console link`` asks for another. ``GET /console/enter?code=…`` spends it and opens a
session. People with an IdP sign in through ``/auth/login?next=/console`` (:mod:`.web`).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import RedirectResponse, Response
from pydantic import BaseModel

from controlplane.api.deps import Admin, SessionDep, SettingsDep
from controlplane.api.routes.console._base import (
    ConsoleRefused,
    PostedForm,
    refused_page,
    require_secret,
    set_session_cookie,
)
from controlplane.api.routes.web import local_path
from controlplane.core.db import get_sessionmaker
from controlplane.errors import responses
from controlplane.services import console_sessions
from controlplane.web.console import render

router = APIRouter(include_in_schema=False)
api = APIRouter(prefix="/console", tags=["console"], responses=responses(401))


class ConsoleLink(BaseModel):
    id: uuid.UUID
    path: str
    expires_at: datetime


@api.post("/links", status_code=201, response_model=ConsoleLink, responses=responses(403))
async def mint_link(session: SessionDep, caller: Admin, settings: SettingsDep) -> ConsoleLink:
    """A one-time console sign-in link for the bootstrap admin (works once, within minutes).

    The code in ``path`` is shown only in this answer; append ``path`` to the control plane's URL."""
    require_secret(settings)
    row, code = await console_sessions.mint_link(session, actor=caller.actor, settings=settings)
    return ConsoleLink(id=row.id, path=f"/console/enter?code={code}", expires_at=row.expires_at)


@router.get("/console/sign-in")
async def sign_in_page(request: Request, settings: SettingsDep, next: Annotated[str | None, Query()] = None
                       ) -> Response:
    require_secret(settings)
    target = local_path(next, default="/console")
    return render("console/sign_in.html", {"me": None, "title": "Sign in", "path": request.url.path,
                                           "oidc": settings.oidc_enabled, "next": target,
                                           "link_minutes": settings.console_link_minutes})


@router.get("/console/enter")
async def enter(request: Request, settings: SettingsDep, code: Annotated[str, Query(max_length=200)] = "") -> Response:
    require_secret(settings)
    async with get_sessionmaker()() as session, session.begin():
        opened = await console_sessions.redeem_link(session, code=code, settings=settings)
    if opened is None:
        return refused_page(request, ConsoleRefused(
            "This sign-in link does not work", "A one-time sign-in link works once and only for "
            f"{settings.console_link_minutes} minutes; this one was already used, has expired, or was never "
            "issued. Ask for a new one with `keyward console link`."))
    _row, secret = opened
    response = RedirectResponse("/console", status_code=303, headers={"Cache-Control": "no-store"})
    set_session_cookie(response, request, secret, settings.console_link_session_minutes * 60)
    return response


@router.post("/console/sign-out")
async def sign_out(form: PostedForm) -> Response:
    async with get_sessionmaker()() as session, session.begin():
        await console_sessions.sign_out(session, form.console.session)
    response = RedirectResponse("/console/sign-in", status_code=303)
    response.delete_cookie("keyward_session", path="/")
    return response
