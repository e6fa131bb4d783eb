"""Who is signed in to the admin console, and the one-time sign-in links of the bootstrap admin.

The console takes two kinds of session, both rows of ``sign_ins`` of kind ``web`` behind the
``keyward_session`` cookie:

* a person signed in with OpenID Connect (:mod:`controlplane.oidc.signin`), in the role their IdP
  groups gave them; a person with no admin role who owns a team (membership role ``owner``) works in
  the console as that team's owner, anyone else is sent to ``/me``;
* the bootstrap admin, for a stack without an IdP: ``make up`` prints a one-time link
  (``/console/enter?code=kw_link_…``) that works once, within ``KEYWARD_CONSOLE_LINK_MINUTES``, and opens
  a short session (``KEYWARD_CONSOLE_LINK_SESSION_MINUTES``) with no user. Such a session is never
  accepted by ``/me`` or by the admin API (:func:`controlplane.oidc.signin.lookup` wants a user).

Minting a link, redeeming it, and presenting a spent or expired one are events.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.audit.events import Actor, record_event
from controlplane.core.config import Settings
from controlplane.models import Membership, SignIn, Team, User
from controlplane.services import credentials

BOOTSTRAP_NAME = "admin:bootstrap"
BOOTSTRAP_SUBJECT = "bootstrap-link"
CONSOLE = "console"


@dataclass(frozen=True)
class ConsoleSession:
    """A live console session: whose it is and the role it was opened in."""

    id: uuid.UUID
    user_id: uuid.UUID | None
    email: str | None
    role: str
    expires_at: datetime

    @property
    def name(self) -> str:
        """The actor name its changes are recorded under (as the admin API and sign-in name it)."""
        return f"oidc:{self.email}" if self.email else BOOTSTRAP_NAME

    @property
    def actor(self) -> Actor:
        return Actor(name=self.name, mechanism=CONSOLE)


async def mint_link(session: AsyncSession, *, actor: Actor, settings: Settings) -> tuple[SignIn, str]:
    """A one-time sign-in link's code for the bootstrap admin; the secret is returned once."""
    issued = credentials.issue(credentials.CONSOLE_LINK, settings.hash_key)
    expires_at = datetime.now(UTC) + timedelta(minutes=settings.console_link_minutes)
    row = SignIn(id=uuid.uuid4(), kind="link", user_id=None, role="admin", token_hash=issued.token_hash,
                 subject=BOOTSTRAP_SUBJECT, expires_at=expires_at)
    session.add(row)
    await session.flush()
    await record_event(session, actor=actor, action="console.link_created", target_type="sign_in",
                       target_id=str(row.id), after={"expires_at": row.expires_at.isoformat(), "role": row.role})
    return row, issued.secret


async def redeem_link(session: AsyncSession, *, code: str, settings: Settings) -> tuple[SignIn, str] | None:
    """Spend a link and open the session it grants, or None (unknown, spent or expired: recorded).

    Finding the link and spending it are one UPDATE, so two browsers racing with one link get one session.
    """
    if not credentials.CONSOLE_LINK.well_formed(code):
        return None
    now = datetime.now(UTC)
    token_hash = credentials.hash_token(code, settings.hash_key)
    spent = await session.scalar(
        update(SignIn).where(SignIn.token_hash == token_hash, SignIn.kind == "link", SignIn.revoked_at.is_(None),
                             SignIn.expires_at > now)
        .values(revoked_at=now, last_used_at=now).returning(SignIn.id))
    actor = Actor(name=BOOTSTRAP_NAME, mechanism=CONSOLE)
    if spent is None:
        known = await session.scalar(select(SignIn).where(SignIn.token_hash == token_hash, SignIn.kind == "link"))
        reason = "unknown" if known is None else ("spent" if known.revoked_at is not None else "expired")
        await record_event(session, actor=actor, action="admin.login_refused", target_type="sign_in",
                           target_id=str(known.id) if known else "unknown",
                           after={"via": "link", "reason": reason})
        return None
    issued = credentials.issue(credentials.WEB_SESSION, settings.hash_key)
    row = SignIn(id=uuid.uuid4(), kind="web", user_id=None, role="admin", token_hash=issued.token_hash,
                 subject=BOOTSTRAP_SUBJECT,
                 expires_at=now + timedelta(minutes=settings.console_link_session_minutes))
    session.add(row)
    await session.flush()
    await record_event(session, actor=actor, action="admin.login", target_type="sign_in", target_id=str(row.id),
                       after={"role": "admin", "via": "link", "link": str(spent)})
    return row, issued.secret


async def lookup(session: AsyncSession, secret: str, settings: Settings) -> ConsoleSession | None:
    """The live console session behind the cookie: a person's (who must still be active) or the
    bootstrap admin's."""
    active = select(User.id).where(User.status == "active")
    row = await credentials.authenticate(session, credentials.WEB_SESSION, secret, hash_key=settings.hash_key,
                                         table=SignIn, where=(SignIn.kind == "web", or_(SignIn.user_id.is_(None),
                                                                                       SignIn.user_id.in_(active))))
    if row is None:
        return None
    email = None
    if row.user_id is not None:
        email = await session.scalar(select(User.email).where(User.id == row.user_id))
    return ConsoleSession(id=row.id, user_id=row.user_id, email=email, role=row.role, expires_at=row.expires_at)


async def owned_team(session: AsyncSession, user_id: uuid.UUID) -> uuid.UUID | None:
    """The team a person owns (the first by name, when several), for a console session without an admin role."""
    return await session.scalar(
        select(Membership.team_id).join(Team, Team.id == Membership.team_id)
        .where(Membership.user_id == user_id, Membership.role == "owner", Team.deleted_at.is_(None))
        .order_by(Team.name).limit(1))


async def sign_out(session: AsyncSession, console: ConsoleSession) -> None:
    await session.execute(update(SignIn).where(SignIn.id == console.id, SignIn.revoked_at.is_(None))
                          .values(revoked_at=datetime.now(UTC)))
    await record_event(session, actor=console.actor, action="user.logout" if console.user_id else "admin.logout",
                       target_type="sign_in", target_id=str(console.id), after={"via": CONSOLE})
