"""The one HTTP client every command that talks to the control plane uses, ``keyward login`` included.

:func:`connect` gives an :class:`Api` with the credential :func:`controlplane.cli.store.resolve` picks
(imported when called: it costs pydantic's import, which ``--help`` and ``keyward up`` need not pay);
its methods return the decoded JSON document or end the command with a one-line error: exit 1 when the
API refuses, exit 3 when it cannot be reached or does not answer as Keyward does.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx

from controlplane.cli.output import Exit, fail
from controlplane.cli.vocabulary import ID_FIELDS, Kind

if TYPE_CHECKING:
    from controlplane.cli.store import Connection

LABEL_LOOKUPS = 25  # id → name look-ups per command (one GET each); beyond, ids are shown


def connect(*, api_url: str | None = None, read_timeout: float | None = None) -> Api:
    """The API at ``api_url`` (or the URL in effect), with the credential the precedence picks.
    ``read_timeout``: at least this long to wait for an answer (for work that reads every audit row)."""
    from controlplane.cli import store
    from controlplane.cli.settings import settings

    timeout = settings().timeout
    if read_timeout is not None and read_timeout > (timeout.read or 0):
        timeout = httpx.Timeout(read_timeout, connect=timeout.connect)
    return Api(store.resolve(settings(), api_url=api_url), timeout=timeout)


def payload(**fields: Any) -> dict[str, Any]:
    """A request body without the fields left out."""
    return {k: v for k, v in fields.items() if v is not None}


def is_id(ref: str) -> bool:
    try:
        uuid.UUID(ref)
    except ValueError:
        return False
    return True


class Api:
    """The admin API: a method per verb, each returning the decoded JSON document or exiting with a
    one-line error; plus pages, name resolution and id → name labels for tables."""

    def __init__(self, conn: Connection, *, timeout: httpx.Timeout) -> None:
        self.conn = conn
        self.url = conn.url
        self._timeout = timeout
        # Keyward-Client: the control plane records this command's actions with mechanism "cli".
        headers = {"User-Agent": "keyward-cli", "Keyward-Client": "cli"}
        if conn.token:
            headers["Authorization"] = f"Bearer {conn.token}"
        try:
            self._http = httpx.Client(base_url=f"{conn.url}/api/v1", timeout=timeout, headers=headers)
        except (httpx.InvalidURL, ValueError) as exc:
            fail(f"bad API URL or token: {exc}", Exit.CONNECTION)
        self._labels: dict[tuple[str, str], str] = {}

    def request(self, method: str, path: str, *, params: dict[str, Any] | None = None, body: Any = None,
                check: bool = True, refused: str | None = None) -> Any:
        """The decoded answer. Without ``check``, None instead of any failure; ``refused`` prefixes the
        API's refusal."""
        params = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            response = self._http.request(method, path, params=params, json=body)
        except httpx.TimeoutException:
            if not check:
                return None
            fail(f"no answer from {self.url} within {self._timeout.read:g}s", Exit.CONNECTION)
        except (httpx.HTTPError, httpx.InvalidURL, ValueError) as exc:
            if not check:
                return None
            fail(f"cannot reach the Keyward API at {self.url}: {str(exc) or type(exc).__name__}", Exit.CONNECTION)
        if response.is_error:
            if not check:
                return None
            fail(f"{refused}: {self._describe(response)}" if refused else self._describe(response))
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            if not check:
                return None
            fail(f"{self.url} answered {response.status_code} without JSON; is it the Keyward control plane?",
                 Exit.CONNECTION)

    def get(self, path: str, params: dict[str, Any] | None = None, *, check: bool = True) -> Any:
        return self.request("GET", path, params=params, check=check)

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, body=body)

    def patch(self, path: str, body: Any) -> Any:
        return self.request("PATCH", path, body=body)

    def put(self, path: str, body: Any = None) -> Any:
        return self.request("PUT", path, body=body)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    def export(self, path: str, params: dict[str, Any], write: Callable[[str], object]) -> None:
        """A streamed text export (CSV, JSON lines), handed to ``write`` chunk by chunk as it arrives;
        failures end the command as :meth:`request`'s do."""
        params = {k: v for k, v in params.items() if v is not None}
        try:
            with self._http.stream("GET", path, params=params) as response:
                if response.is_error:
                    response.read()
                    fail(self._describe(response))
                for chunk in response.iter_text():
                    write(chunk)
        except httpx.TimeoutException:
            fail(f"no answer from {self.url} within {self._timeout.read:g}s", Exit.CONNECTION)
        except (httpx.HTTPError, httpx.InvalidURL, ValueError) as exc:
            fail(f"cannot reach the Keyward API at {self.url}: {str(exc) or type(exc).__name__}", Exit.CONNECTION)

    def _describe(self, response: httpx.Response) -> str:
        """The API's ``detail`` (field errors joined) and ``code``, on one line."""
        try:
            document = response.json()
        except ValueError:
            document = None
        detail = document.get("detail") if isinstance(document, dict) else None
        if not detail:
            status = f"HTTP {response.status_code} {response.reason_phrase}"
            if response.status_code >= 500:
                return f"the API failed: {status}"
            return f"{self.url} answered {status}, not as the Keyward admin API does; is it the control plane's URL?"
        if isinstance(detail, list):  # FastAPI's validation errors: one "field: message" per problem
            detail = "; ".join(
                f"{'.'.join(str(p) for p in e.get('loc', [])[1:]) or 'request'}: {e.get('msg')}"
                for e in detail if isinstance(e, dict)
            )
        code = document.get("code") if isinstance(document, dict) else None
        reason = f"{response.status_code} {code}" if code else str(response.status_code)
        hint = f" - {self.conn.hint}" if response.status_code == 401 and self.conn.hint else ""
        return f"{detail} ({reason}){hint}"

    # -- pages and names --------------------------------------------------------------------------

    def pages(self, path: str, params: dict[str, Any], *, follow: bool) -> dict[str, Any]:
        """One page, or with ``follow`` every page, as one ``{"items", "next_cursor"}`` document."""
        params, items, seen = dict(params), [], set()
        while True:
            page = self.get(path, params)
            items.extend(page["items"])
            cursor = page.get("next_cursor")
            if not follow or not cursor or cursor in seen:
                return {"items": items, "next_cursor": None if follow else cursor}
            seen.add(cursor)
            params["cursor"] = cursor

    def listing(self, path: str, filters: dict[str, Any], *, limit: int | None, cursor: str | None,
                follow: bool) -> dict[str, Any]:
        """A list command's document: ``--limit`` (default 100; 500 with ``--all``), ``--cursor``, ``--all``."""
        page_size = limit or (500 if follow else 100)
        return self.pages(path, {**filters, "limit": page_size, "cursor": cursor}, follow=follow)

    def find(self, kind: Kind, ref: str) -> dict[str, Any]:
        """The record ``ref`` names: an id, or else an email / name matching exactly one record."""
        if is_id(ref):
            return self.get(f"{kind.path}/{ref}")
        if kind.query:
            found = self.get(kind.path, {kind.query: ref, "limit": 2})["items"]
        else:
            listed = self.pages(kind.path, {"limit": 500}, follow=True)["items"]
            found = [item for item in listed if str(item.get(kind.key, "")).lower() == ref.lower()]
        if not found:
            fail(f"no {kind.noun} with {kind.key} {ref!r}")
        if len(found) > 1:
            fail(f"{len(found)} {kind.noun}s have {kind.key} {ref!r}; give an id: "
                 + ", ".join(item["id"] for item in found))
        return found[0]

    def id_of(self, kind: Kind, ref: str) -> str:
        return ref if is_id(ref) else str(self.find(kind, ref)["id"])

    def set_status(self, kind: Kind, ref: str, status: str) -> dict[str, Any]:
        """Change the status of the record ``ref`` names (a user, a service account); returns it."""
        record: dict[str, Any] = self.patch(f"{kind.path}/{self.id_of(kind, ref)}", {"status": status})
        return record

    def label(self, kind: Kind, ident: str | None) -> str:
        """A readable name for an id in a table cell (the id itself if it cannot be looked up)."""
        if not ident:
            return "-"
        cache_key = (kind.path, ident)
        if cache_key not in self._labels:
            if len(self._labels) >= LABEL_LOOKUPS:
                return ident
            record = self.get(f"{kind.path}/{ident}", check=False)
            self._labels[cache_key] = str(record[kind.key]) if isinstance(record, dict) else ident
        return self._labels[cache_key]

    def labels(self, field: str, ident: str) -> str | None:
        """For :func:`controlplane.cli.output.show_record`: the name an id field points to."""
        kind = ID_FIELDS.get(field)
        return self.label(kind, ident) if kind else None
