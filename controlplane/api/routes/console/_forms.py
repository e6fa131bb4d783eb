"""Reading what a console form or filter sent: each value checked, an empty field meaning "not given", and
anything that does not parse answered with a 422 page that says which field and why (nothing is done).
Request documents are checked by the admin API's own schemas, so the console accepts what the API accepts."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, time
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.api.routes.console._base import Console, ConsoleRefused
from controlplane.services import teams, users

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

#: How many teams a form's team list offers (the first by name; an id in the URL is always accepted).
TEAM_CHOICES = 200


def not_understood(message: str, title: str = "That was not understood") -> ConsoleRefused:
    return ConsoleRefused(title, message, 422)


def given(value: str | None) -> str | None:
    """A form sends an empty field as an empty value: not given."""
    value = (value or "").strip()
    return value or None


def parsed(value: str | None, convert: Callable[[str], T], problem: str) -> T | None:
    """An optional value converted (empty: None); one that does not convert is a 422 page saying ``problem``."""
    text = given(value)
    if text is None:
        return None
    try:
        return convert(text)
    except ValueError:
        raise not_understood(problem) from None


def an_id(value: str | None, label: str) -> uuid.UUID | None:
    return parsed(value, uuid.UUID, f"{label}: {given(value)!r} is not an id (such as 7c0e4f52-…).")


def a_number(value: str | None, label: str, *, low: float, high: float) -> float | None:
    def bounded(text: str) -> float:
        if not low <= (number := float(text)) <= high:
            raise ValueError(text)
        return number

    return parsed(value, bounded, f"{label} is a number from {low:g} to {high:g}.")


def a_day(value: str | None, label: str) -> date | None:
    return parsed(value, date.fromisoformat, f"{label} is not a date (YYYY-MM-DD).")


def a_day_end(value: str | None, label: str) -> datetime | None:
    """A date as the end of that day, UTC: an expiry or a due date lasts the whole day."""
    day = a_day(value, label)
    return datetime.combine(day, time(23, 59, 59), tzinfo=UTC) if day else None


def one_of(value: str | None, choices: tuple[str, ...], label: str) -> str | None:
    def known(text: str) -> str:
        if text not in choices:
            raise ValueError(text)
        return text

    return parsed(value, known, f"{label} is one of {', '.join(choices)}.")


def validated(model: type[M], data: dict[str, Any], *, title: str = "Check the form") -> M:
    """The form as the API's request document; what the schema refuses is said on a 422 page."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        said = "; ".join(f"{'.'.join(str(p) for p in error['loc']) or 'form'}: {error['msg']}"
                         for error in exc.errors())
        raise not_understood(said, title) from None


async def person_id(session: AsyncSession, text: str, label: str) -> uuid.UUID:
    """A person named by e-mail address or by id (a 422 page when nobody has that address)."""
    text = text.strip()
    if "@" not in text:
        found_id = an_id(text, label)
        if found_id is None:
            raise not_understood(f"{label}: give an e-mail address or an id.")
        return found_id
    found = await users.list_users(session, status=None, email=text, q=None, sort="email", cursor=None, limit=1)
    if not found["items"]:
        raise not_understood(f"{label}: nobody has the e-mail address {text}.", "No such person")
    return found["items"][0].id


async def team_choices(session: AsyncSession, console: Console) -> list[tuple[str, str]]:
    """The teams a form may offer this user (a team owner: their own), as (id, name)."""
    found = await teams.list_teams(session, within_team=console.caller.within_team, name=None, profile_id=None,
                                   sort="name", cursor=None, limit=TEAM_CHOICES)
    return [(str(team.id), team.name) for team in found["items"]]
