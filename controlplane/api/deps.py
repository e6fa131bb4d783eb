"""Dependencies shared by the routes: a transactional session and the authenticated admin."""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Query
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.core.config import Settings, get_settings
from controlplane.core.db import get_sessionmaker
from controlplane.errors import Unauthorized
from controlplane.services import Actor

_bearer = HTTPBearer(auto_error=False, description="The bootstrap admin token (KEYWARD_ADMIN_TOKEN).")


async def _session() -> AsyncIterator[AsyncSession]:
    """One transaction per request: it commits when the route returns and rolls back on any error."""
    async with get_sessionmaker()() as session, session.begin():
        yield session


def _admin(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    settings: Annotated[Settings, Depends(get_settings)],
) -> Actor:
    presented = credentials.credentials if credentials else ""
    if not presented or not hmac.compare_digest(presented.encode(), settings.admin_token.encode()):
        raise Unauthorized("admin_token_invalid", "A valid admin bearer token is required.")
    return Actor(name="admin:bootstrap", mechanism="api")


# scope="function": commit before the response is sent, so a 201 always means "it is in the database".
def _ingest(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    settings: Annotated[Settings, Depends(get_settings)],
) -> Actor:
    presented = credentials.credentials if credentials else ""
    expected = settings.ingest_token or ""
    if not expected or not presented or not hmac.compare_digest(presented.encode(), expected.encode()):
        raise Unauthorized("ingest_token_invalid", "A valid data-plane ingest token is required.")
    return Actor(name="dataplane", mechanism="system")


SessionDep = Annotated[AsyncSession, Depends(_session, scope="function")]
SettingsDep = Annotated[Settings, Depends(get_settings)]
AdminActor = Annotated[Actor, Depends(_admin)]
IngestCaller = Annotated[Actor, Depends(_ingest)]
Limit = Annotated[int, Query(ge=1, le=500, description="Page size.")]
Cursor = Annotated[str | None, Query(max_length=400, description="next_cursor from the previous page.")]
