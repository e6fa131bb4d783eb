"""Row operations every service shares: one row or a 404, insert-and-record, a row as its public
document, and keyset pages.

Every list endpoint pages with :func:`paginate` on ``(sort key, id)``: stable under inserts, no OFFSET
scans, and a cursor that carries the sort key's value (tagged with its type) and the row id. A cursor
this API did not issue, or one edited by hand, is a 422 ``cursor_invalid``, never a database error.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import Select, tuple_
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane import schemas
from controlplane.audit.events import Actor, record_event
from controlplane.errors import Code, Conflict, Invalid, NotFound

T = TypeVar("T")

#: A timestamp earlier than any row, so NULL sorts first under keyset pagination.
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


async def get_or_404(session: AsyncSession, model: type[T], ident: Any, *, code: Code, label: str) -> T:
    """The row of ``model`` with primary key ``ident``, or a 404 with a stable code."""
    row = await session.get(model, ident)
    if row is None:
        raise NotFound(code, f"No {label} with id {ident}.")
    return row


def public(model: type[schemas.Output], row: Any) -> dict[str, Any]:
    """``row`` as the JSON document ``model`` publishes (what events record as before / after)."""
    return model.model_validate(row).model_dump(mode="json")


async def flush_unique(session: AsyncSession, code: Code, message: str) -> None:
    """Flush, turning a unique-index violation (a concurrent create won the race) into a 409."""
    try:
        await session.flush()
    except IntegrityError as exc:
        raise Conflict(code, message) from exc


async def insert_recorded(session: AsyncSession, row: Any, *, actor: Actor, action: str, target_type: str,
                          published: type[schemas.Output], conflict: tuple[Code, str]) -> Any:
    """Insert ``row`` (a unique-index race becomes the 409 ``conflict``), then record ``action`` with the
    row's public document."""
    session.add(row)
    await flush_unique(session, *conflict)
    await session.refresh(row)
    await record_event(session, actor=actor, action=action, target_type=target_type, target_id=str(row.id),
                       after=public(published, row))
    return row


# -- cursors --------------------------------------------------------------------------------------


def _tagged(value: Any) -> str:
    if isinstance(value, datetime):
        return "d" + value.isoformat()
    if isinstance(value, int):
        return "i" + str(value)
    return "s" + str(value)


def _untagged(text_value: str) -> Any:
    tag, rest = text_value[:1], text_value[1:]
    if tag == "d":
        return datetime.fromisoformat(rest)
    if tag == "i":
        return int(rest)
    if tag == "s":
        return rest
    raise ValueError(tag)


def _cursor_invalid() -> Invalid:
    return Invalid(Code.CURSOR_INVALID, "The cursor is not one this API issued.")


def encode_cursor(value: Any, row_id: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps([_tagged(value), str(row_id)]).encode()).decode()


def decode_cursor(cursor: str) -> tuple[Any, str]:
    try:
        value, row_id = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        return _untagged(value), row_id
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError) as exc:
        raise _cursor_invalid() from exc


def _sorts_as(value: Any, sort: Any) -> bool:
    """Whether a cursor's value has the type of the sort key it continues: a timestamp, or else text
    (every other sort key is text, ``lower(name)`` included, whose SQL type SQLAlchemy does not know)."""
    if sort.type.python_type is datetime:
        return isinstance(value, datetime) and value.tzinfo is not None
    return isinstance(value, str)


async def paginate(
    session: AsyncSession,
    query: Select,
    *,
    sort: Any,
    id_col: Any,
    cursor: str | None,
    limit: int,
    descending: bool = False,
) -> dict[str, Any]:
    """One page of ``query`` as ``{"items", "next_cursor"}``, in keyset order on ``(sort, id)``.

    ``sort`` may be a column or an expression (``coalesce(last_used_at, EPOCH)``); the cursor carries
    its value."""
    key = query.add_columns(sort.label("_sort_key"))
    if cursor:
        value, row_id = decode_cursor(cursor)
        try:
            ident = id_col.type.python_type(row_id)
        except (ValueError, TypeError) as exc:
            raise _cursor_invalid() from exc
        if not _sorts_as(value, sort):  # a cursor edited by hand, or issued for another sort order
            raise _cursor_invalid()
        key_now, key_then = tuple_(sort, id_col), tuple_(value, ident)
        after = key_now < key_then if descending else key_now > key_then
        key = key.where(after)
    order = (sort.desc(), id_col.desc()) if descending else (sort, id_col)
    rows = list((await session.execute(key.order_by(*order).limit(limit + 1))).all())
    items = [row[0] for row in rows[:limit]]
    if len(rows) <= limit:
        return {"items": items, "next_cursor": None}
    last = rows[limit - 1]
    return {"items": items, "next_cursor": encode_cursor(last[-1], getattr(last[0], id_col.key))}


def sort_key(sort: str, columns: dict[str, Any]) -> tuple[Any, bool]:
    """``sort=name`` ascending, ``sort=-name`` descending: the column and the direction."""
    descending = sort.startswith("-")
    return columns[sort.lstrip("-")], descending


def offset_cursor(offset: int, kind: str) -> str:
    """The cursor of a page that starts ``offset`` rows into a report computed whole (``kind`` names
    the report, so another's cursor is refused)."""
    return encode_cursor(offset, kind)


def offset_of(cursor: str | None, kind: str) -> int:
    """The offset an :func:`offset_cursor` carries (0 without one); a 422 for any other cursor."""
    if not cursor:
        return 0
    offset, ident = decode_cursor(cursor)
    if not isinstance(offset, int) or offset <= 0 or ident != kind:
        raise Invalid(Code.CURSOR_INVALID, "The cursor is not one this API issued.")
    return offset
