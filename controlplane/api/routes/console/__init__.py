"""The admin console (``/console``): server-rendered pages over the same service functions as the admin API.

One module per section (see :data:`._base.SECTIONS`); :mod:`._base` holds the session, role and CSRF
checks every page shares, :mod:`controlplane.web.console` the rendering.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from controlplane.api.routes.console import audit, overview, people, register, reviews, signin, spend, teams, tokens
from controlplane.api.routes.console._base import ConsoleRefused, SignInRequired, on_refused, on_sign_in_required
from controlplane.web.console import STATIC, render

PAGES = (signin, overview, tokens, people, teams, audit, spend, reviews, register)


def outage_page(status_code: int, message: str) -> HTMLResponse:
    """A console page for a database outage (the admin API answers the same as JSON)."""
    return render("console/problem.html", {"title": "Keyward cannot reach its database", "message": message,
                                           "me": None, "path": "/console"}, status_code=status_code)


def install(app: FastAPI) -> None:
    """Add the console's pages, its stylesheet, its API route (one-time links) and its error pages."""
    for module in PAGES:
        app.include_router(module.router)
    app.include_router(signin.api, prefix="/api/v1")
    app.mount("/console/static", StaticFiles(directory=STATIC), name="console-static")
    app.add_exception_handler(SignInRequired, on_sign_in_required)
    app.add_exception_handler(ConsoleRefused, on_refused)


__all__ = ["install"]
