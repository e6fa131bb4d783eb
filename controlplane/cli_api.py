"""The admin API from a terminal: ``keyward users | teams | profiles | service-accounts | tokens |
credentials``, ``keyward whoami`` and ``keyward configure``.

Connection: ``KEYWARD_API_URL`` (default ``http://127.0.0.1:8000``) and ``KEYWARD_API_TOKEN`` (or
``KEYWARD_ADMIN_TOKEN``); what the environment does not give is read from ``$KEYWARD_CONFIG`` or
``~/.config/keyward/config.toml`` (keys ``api_url`` and ``token``), which ``keyward configure``
writes with mode 0600. A token in a file that group or others may access is refused.

Output: Rich tables by default; with ``--json`` stdout carries the API's JSON document and nothing
else. Failures are one line on stderr, never a traceback. Exit codes: 0 done, 1 the API refused
(4xx/5xx) or a name matched no or several records, 2 bad usage, 3 no usable connection
(configuration, network, timeout).

Users, teams, profiles, service accounts and credentials may be named by id or by email / name.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import tomllib
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn

import httpx
import typer
from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

DEFAULT_API_URL = "http://127.0.0.1:8000"
TIMEOUT = httpx.Timeout(15.0, connect=5.0)
EXIT_API, EXIT_USAGE, EXIT_CONNECTION = 1, 2, 3
LABEL_LOOKUPS = 25  # id → name look-ups per command (one GET each); beyond, ids are shown


# The API's vocabularies (controlplane.schemas), repeated so the CLI starts without pydantic;
# tests/e2e/test_cli.py checks they still match.
class Env(StrEnum):
    dev = "dev"
    staging = "staging"
    prod = "prod"
    ci = "ci"


class Role(StrEnum):
    admin = "admin"
    auditor = "auditor"
    finance = "finance"
    owner = "owner"


PROVIDERS = ("openai", "anthropic", "*")

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def fail(message: str, code: int = EXIT_API) -> NoReturn:
    """One line on stderr, then exit with ``code``."""
    err.print(f"error: {' '.join(message.split())}", markup=False, soft_wrap=True)
    raise typer.Exit(code)


# -- connection settings --------------------------------------------------------------------------


@dataclass(frozen=True)
class Connection:
    url: str
    token: str


def config_path() -> Path:
    return Path(os.environ.get("KEYWARD_CONFIG") or Path.home() / ".config" / "keyward" / "config.toml").expanduser()


def _read_config(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            data = tomllib.load(handle)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        fail(f"cannot read {path}: {exc}", EXIT_CONNECTION)
    if "token" in data and mode & 0o077:
        fail(f"{path} holds a token but group or others may access it ({stat.filemode(mode)}); "
             f"run: chmod 600 {path}", EXIT_CONNECTION)
    bad = [name for name in ("api_url", "token") if name in data and not isinstance(data[name], str)]
    if bad:
        fail(f"{path}: {', '.join(bad)} must be a string", EXIT_CONNECTION)
    return data


def connection() -> Connection:
    url = os.environ.get("KEYWARD_API_URL")
    token = os.environ.get("KEYWARD_API_TOKEN") or os.environ.get("KEYWARD_ADMIN_TOKEN")
    if not url or not token:
        config = _read_config(config_path())
        url, token = url or config.get("api_url"), token or config.get("token")
    if not token:
        fail("no API token: set KEYWARD_API_TOKEN (or KEYWARD_ADMIN_TOKEN), or run `keyward configure`",
             EXIT_CONNECTION)
    return Connection(_base_url(url or DEFAULT_API_URL), token)


def _base_url(url: str) -> str:
    url = url.strip().rstrip("/").removesuffix("/api/v1")
    if not url.startswith(("http://", "https://")):
        fail(f"the API URL {url!r} must start with http:// or https://", EXIT_CONNECTION)
    return url


# -- the API client -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    """A resource the CLI names: its path and the field a human names it by."""

    noun: str
    path: str
    key: str  # email or name
    query: str | None = None  # the list endpoint's exact, case-insensitive filter on ``key``, if any


USERS = Kind("user", "/users", "email", "email")
TEAMS = Kind("team", "/teams", "name", "name")
PROFILES = Kind("profile", "/profiles", "name")
SERVICE_ACCOUNTS = Kind("service account", "/service-accounts", "name")
CREDENTIALS = Kind("credential", "/credentials", "name")


def _is_id(ref: str) -> bool:
    try:
        uuid.UUID(ref)
    except ValueError:
        return False
    return True


class Api:
    """The admin API: a method per verb, each returning the decoded JSON document or exiting with a
    one-line error; plus pages, name resolution and id → name labels for tables."""

    def __init__(self, conn: Connection) -> None:
        self.url = conn.url
        try:
            self._http = httpx.Client(base_url=f"{conn.url}/api/v1", timeout=TIMEOUT,
                                      headers={"Authorization": f"Bearer {conn.token}", "User-Agent": "keyward-cli"})
        except (httpx.InvalidURL, ValueError) as exc:
            fail(f"bad API URL or token: {exc}", EXIT_CONNECTION)
        self._labels: dict[tuple[str, str], str] = {}

    def request(self, method: str, path: str, *, params: dict[str, Any] | None = None, body: Any = None,
                check: bool = True) -> Any:
        params = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            response = self._http.request(method, path, params=params, json=body)
        except httpx.TimeoutException:
            fail(f"no answer from {self.url} within {TIMEOUT.read:g}s", EXIT_CONNECTION)
        except (httpx.HTTPError, httpx.InvalidURL, ValueError) as exc:
            fail(f"cannot reach the Keyward API at {self.url}: {str(exc) or type(exc).__name__}", EXIT_CONNECTION)
        if response.is_error:
            if not check:
                return None
            fail(_describe(response, self.url))
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            fail(f"{self.url} answered {response.status_code} without JSON; is it the Keyward control plane?",
                 EXIT_CONNECTION)

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

    def find(self, kind: Kind, ref: str) -> dict[str, Any]:
        """The record ``ref`` names: an id, or else an email / name matching exactly one record."""
        if _is_id(ref):
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
        return ref if _is_id(ref) else str(self.find(kind, ref)["id"])

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


def _describe(response: httpx.Response, url: str) -> str:
    """The API's ``detail`` (field errors joined) and ``code``, on one line."""
    try:
        payload = response.json()
    except ValueError:
        payload = None
    detail = payload.get("detail") if isinstance(payload, dict) else None
    if not detail:
        status = f"HTTP {response.status_code} {response.reason_phrase}"
        if response.status_code >= 500:
            return f"the API failed: {status}"
        return f"{url} answered {status}, not as the Keyward admin API does; is it the control plane's URL?"
    if isinstance(detail, list):  # FastAPI's validation errors: one "field: message" per problem
        detail = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', [])[1:]) or 'request'}: {e.get('msg')}"
            for e in detail if isinstance(e, dict)
        )
    code = payload.get("code") if isinstance(payload, dict) else None
    reason = f"{response.status_code} {code}" if code else str(response.status_code)
    hint = " - check KEYWARD_API_TOKEN or run `keyward configure`" if response.status_code == 401 else ""
    return f"{detail} ({reason}){hint}"


def _api() -> Api:
    return Api(connection())


def _body(**fields: Any) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


def _confirm(question: str, yes: bool) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        fail(f"{question} Add --yes to confirm.", EXIT_USAGE)
    if not typer.confirm(question, err=True):
        raise typer.Exit(EXIT_API)


def _usage(message: str) -> NoReturn:
    fail(message, EXIT_USAGE)


# -- output ---------------------------------------------------------------------------------------

Row = dict[str, Any]
Columns = Sequence[tuple[str, Callable[[Any], object]]]


def _when(value: object) -> str:
    if not isinstance(value, str):
        return _cell(value)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return value
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%MZ")


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(_cell(v) for v in value) or "-"
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def key(name: str) -> Callable[[Row], object]:
    return lambda row: row.get(name)


def at(name: str) -> Callable[[Row], object]:
    return lambda row: _when(row.get(name))


def _state(row: Row) -> str:
    if row.get("revoked_at"):
        return "revoked"
    expires = row.get("expires_at")
    if expires and datetime.fromisoformat(expires) <= datetime.now(UTC):
        return "expired"
    return "active"


def render_table(rows: Sequence[Any], columns: Columns, *, header: bool = True) -> None:
    """The one renderer: a Rich table whose ids and hints never wrap, so they stay copyable. Piped
    output is as wide as the table, never cut at 80 columns. Without ``header``: a record, label
    then value."""
    table = Table(box=box.SIMPLE_HEAD if header else None, show_header=header, show_edge=False, pad_edge=False)
    for index, (title, _) in enumerate(columns):
        label = not header and index == 0
        table.add_column(title, no_wrap=label or title in ("ID", "HINT"), overflow="fold",
                         style="bold" if label else None)
    for row in rows:
        table.add_row(*(Text(_cell(getter(row))) for _, getter in columns))
    if out.is_terminal:
        out.print(table)
    else:
        width = Measurement.get(out, out.options.update(max_width=100_000), table).maximum
        Console(width=width, highlight=False).print(table)


def print_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, indent=2) + "\n")


# Id fields shown with the name of what they point to.
_ID_FIELDS = {"user_id": USERS, "team_id": TEAMS, "profile_id": PROFILES, "service_account_id": SERVICE_ACCOUNTS,
              "business_owner_id": USERS, "technical_owner_id": USERS}


def show_record(api: Api, record: Row, as_json: bool, *, note: str | None = None) -> None:
    """One record: the JSON document, or a two-column table of its fields (times in UTC, ids with
    the name of what they point to), after an optional one-line note."""
    if as_json:
        print_json(record)
        return
    if note:
        out.print(note, markup=False, soft_wrap=True)
    pairs = []
    for name, value in record.items():
        shown = _when(value) if name.endswith("_at") else _cell(value)
        if name in _ID_FIELDS and value:
            shown = f"{value} ({api.label(_ID_FIELDS[name], value)})"
        pairs.append((name.replace("_", " "), shown))
    render_table(pairs, [("", lambda p: p[0]), ("", lambda p: p[1])], header=False)


def show_page(page: dict[str, Any], columns: Columns, as_json: bool, noun: str) -> None:
    if as_json:
        print_json(page)
        return
    if page["items"]:
        render_table(page["items"], columns)
    else:
        out.print(f"No {noun}.")
    if page.get("next_cursor"):
        err.print(f"More {noun}: add --all, or --cursor {page['next_cursor']}", markup=False, soft_wrap=True)


def done(as_json: bool, document: Any, message: str) -> None:
    """The outcome of an action: the JSON document, or one line for a human."""
    if as_json:
        print_json(document)
    else:
        out.print(message, markup=False, soft_wrap=True)


# -- shared options -------------------------------------------------------------------------------

JsonOut = Annotated[bool, typer.Option("--json", help="Print the API's JSON document on stdout, nothing else.")]
AllPages = Annotated[bool, typer.Option("--all", help="Follow cursors to the last page.")]
PageSize = Annotated[int | None, typer.Option("--limit", min=1, max=500,
                                            help="Page size (default 100; 500 with --all).")]
CursorOpt = Annotated[str | None, typer.Option("--cursor", help="next_cursor of the previous page.")]
Yes = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
ReasonOpt = Annotated[str | None, typer.Option("--reason", help="Recorded with each revocation.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print only the secret (for $(...)).")]


def _listing(api: Api, path: str, filters: dict[str, Any], *, limit: int | None, cursor: str | None,
             follow: bool) -> dict[str, Any]:
    page_size = limit or (500 if follow else 100)
    return api.pages(path, {**filters, "limit": page_size, "cursor": cursor}, follow=follow)


# -- users ----------------------------------------------------------------------------------------

users_app = typer.Typer(help="People: create, suspend, deprovision, revoke their tokens.", no_args_is_help=True)
UserRef = Annotated[str, typer.Argument(help="User id or email.", metavar="USER")]
USER_COLUMNS: Columns = [("ID", key("id")), ("EMAIL", key("email")), ("NAME", key("display_name")),
                         ("STATUS", key("status")), ("CREATED", at("created_at"))]


@users_app.command("list")
def users_list(
    status: Annotated[Literal["active", "suspended", "deprovisioned"] | None, typer.Option()] = None,
    search: Annotated[str | None, typer.Option(help="Substring of email or display name.")] = None,
    sort: Annotated[Literal["created_at", "-created_at", "email", "-email"], typer.Option()] = "created_at",
    limit: PageSize = None, cursor: CursorOpt = None, all_pages: AllPages = False, as_json: JsonOut = False,
) -> None:
    """List users."""
    page = _listing(_api(), "/users", {"status": status, "q": search, "sort": sort}, limit=limit, cursor=cursor,
                    follow=all_pages)
    show_page(page, USER_COLUMNS, as_json, "users")


@users_app.command("create")
def users_create(
    email: Annotated[str, typer.Argument()],
    name: Annotated[str | None, typer.Option("--name", help="Display name.")] = None,
    external_id: Annotated[str | None, typer.Option(help="The identity provider's id.")] = None,
    as_json: JsonOut = False,
) -> None:
    """Create a user."""
    api = _api()
    user = api.post("/users", _body(email=email, display_name=name, external_id=external_id))
    show_record(api, user, as_json, note=f"Created user {user['email']}.")


@users_app.command("show")
def users_show(user: UserRef, as_json: JsonOut = False) -> None:
    """Show one user."""
    api = _api()
    show_record(api, api.find(USERS, user), as_json)


def _set_user_status(ref: str, status: str, as_json: bool, message: str) -> None:
    api = _api()
    user = api.patch(f"/users/{api.id_of(USERS, ref)}", {"status": status})
    done(as_json, user, message.format(email=user["email"]))


@users_app.command("suspend")
def users_suspend(user: UserRef, as_json: JsonOut = False) -> None:
    """Suspend a user: their tokens stop working at the gateway at once (and work again on activate)."""
    _set_user_status(user, "suspended", as_json, "Suspended {email}: their tokens are refused until activated.")


@users_app.command("activate")
def users_activate(user: UserRef, as_json: JsonOut = False) -> None:
    """Re-activate a suspended user."""
    _set_user_status(user, "active", as_json, "Activated {email}.")


@users_app.command("deprovision")
def users_deprovision(user: UserRef, yes: Yes = False, as_json: JsonOut = False) -> None:
    """Deprovision a user (someone who left): every token they own is revoked."""
    _confirm(f"Deprovision {user} and revoke every token they own?", yes)
    _set_user_status(user, "deprovisioned", as_json, "Deprovisioned {email}; every token of theirs is revoked.")


@users_app.command("revoke-tokens")
def users_revoke_tokens(user: UserRef, reason: ReasonOpt = None, yes: Yes = False, as_json: JsonOut = False) -> None:
    """Revoke every live token a user owns, in one transaction."""
    api = _api()
    user_id = api.id_of(USERS, user)
    _confirm(f"Revoke every live token of {user}?", yes)
    result = api.post(f"/users/{user_id}/tokens/revoke", _body(reason=reason))
    done(as_json, result, f"Revoked {result['revoked']} token(s) of {user}.")


# -- teams ----------------------------------------------------------------------------------------

teams_app = typer.Typer(help="Teams: their access profile, members, and tokens.", no_args_is_help=True)
TeamRef = Annotated[str, typer.Argument(help="Team id or name.", metavar="TEAM")]
ProfileRef = Annotated[str, typer.Argument(help="Access profile id or name.", metavar="PROFILE")]


def _team_columns(api: Api) -> Columns:
    return [("ID", key("id")), ("NAME", key("name")), ("PROFILE", lambda r: api.label(PROFILES, r["profile_id"])),
            ("DESCRIPTION", key("description")), ("CREATED", at("created_at"))]


@teams_app.command("list")
def teams_list(
    name: Annotated[str | None, typer.Option(help="Exact name, case-insensitive.")] = None,
    profile: Annotated[str | None, typer.Option(help="Only teams using this profile (id or name).")] = None,
    sort: Annotated[Literal["created_at", "-created_at", "name", "-name"], typer.Option()] = "created_at",
    limit: PageSize = None, cursor: CursorOpt = None, all_pages: AllPages = False, as_json: JsonOut = False,
) -> None:
    """List teams."""
    api = _api()
    profile_id = api.id_of(PROFILES, profile) if profile else None
    page = _listing(api, "/teams", {"name": name, "profile_id": profile_id, "sort": sort}, limit=limit,
                    cursor=cursor, follow=all_pages)
    show_page(page, _team_columns(api), as_json, "teams")


@teams_app.command("create")
def teams_create(
    name: Annotated[str, typer.Argument()],
    profile: Annotated[str | None, typer.Option(help="Access profile (id or name); without one, no token "
                                                     "can be minted for the team.")] = None,
    description: Annotated[str | None, typer.Option()] = None,
    as_json: JsonOut = False,
) -> None:
    """Create a team."""
    api = _api()
    profile_id = api.id_of(PROFILES, profile) if profile else None
    team = api.post("/teams", _body(name=name, description=description, profile_id=profile_id))
    show_record(api, team, as_json, note=f"Created team {team['name']}.")


@teams_app.command("show")
def teams_show(team: TeamRef, as_json: JsonOut = False) -> None:
    """Show one team."""
    api = _api()
    show_record(api, api.find(TEAMS, team), as_json)


@teams_app.command("set-profile")
def teams_set_profile(team: TeamRef, profile: ProfileRef, as_json: JsonOut = False) -> None:
    """Give a team an access profile: every token of the team follows it at once."""
    api = _api()
    team_id, profile_id = api.id_of(TEAMS, team), api.id_of(PROFILES, profile)
    updated = api.patch(f"/teams/{team_id}", {"profile_id": profile_id})
    done(as_json, updated, f"Team {updated['name']} now uses profile {profile}.")


@teams_app.command("members")
def teams_members(
    team: TeamRef,
    role: Annotated[Literal["member", "owner"] | None, typer.Option()] = None,
    limit: PageSize = None, cursor: CursorOpt = None, all_pages: AllPages = False, as_json: JsonOut = False,
) -> None:
    """List a team's members."""
    api = _api()
    page = _listing(api, f"/teams/{api.id_of(TEAMS, team)}/members", {"role": role}, limit=limit, cursor=cursor,
                    follow=all_pages)
    columns: Columns = [("USER ID", key("user_id")), ("EMAIL", lambda r: api.label(USERS, r["user_id"])),
                        ("ROLE", key("role")), ("SINCE", at("created_at"))]
    show_page(page, columns, as_json, "members")


@teams_app.command("add-member")
def teams_add_member(
    team: TeamRef, user: UserRef,
    role: Annotated[Literal["member", "owner"], typer.Option()] = "member",
    as_json: JsonOut = False,
) -> None:
    """Add a user to a team, or change their role there."""
    api = _api()
    membership = api.put(f"/teams/{api.id_of(TEAMS, team)}/members/{api.id_of(USERS, user)}", {"role": role})
    article = "an" if membership["role"] == "owner" else "a"
    done(as_json, membership, f"{user} is {article} {membership['role']} of team {team}.")


@teams_app.command("remove-member")
def teams_remove_member(team: TeamRef, user: UserRef, as_json: JsonOut = False) -> None:
    """Remove a user from a team: their tokens for the team stop working at once."""
    api = _api()
    team_id, user_id = api.id_of(TEAMS, team), api.id_of(USERS, user)
    api.delete(f"/teams/{team_id}/members/{user_id}")
    done(as_json, {"team_id": team_id, "user_id": user_id, "removed": True}, f"Removed {user} from team {team}.")


@teams_app.command("revoke-tokens")
def teams_revoke_tokens(team: TeamRef, reason: ReasonOpt = None, yes: Yes = False, as_json: JsonOut = False) -> None:
    """Revoke every live token that acts for a team."""
    api = _api()
    team_id = api.id_of(TEAMS, team)
    _confirm(f"Revoke every live token of team {team}?", yes)
    result = api.post(f"/teams/{team_id}/tokens/revoke", _body(reason=reason))
    done(as_json, result, f"Revoked {result['revoked']} token(s) of team {team}.")


# -- access profiles ------------------------------------------------------------------------------

profiles_app = typer.Typer(help="Access profiles: model catalog, environments, token lifetimes.",
                           no_args_is_help=True)


def parse_model(spec: str) -> dict[str, Any]:
    """``PROVIDER:PATTERN[@env1,env2]`` → a catalog entry. The ``@…`` suffix is read as environments
    only when each item is one (a model name may contain ``@``)."""
    provider, sep, rest = spec.partition(":")
    if not sep or provider not in PROVIDERS or not rest:
        _usage(f"--model {spec!r}: expected PROVIDER:PATTERN[@env1,env2] with PROVIDER one of "
               f"{', '.join(PROVIDERS)} (e.g. openai:gpt-4o* or anthropic:claude-*@dev,ci)")
    pattern, at_sign, envs = rest.rpartition("@")
    names = envs.split(",")
    if at_sign and pattern and all(name in Env.__members__ for name in names):
        return {"provider": provider, "pattern": pattern, "environments": names}
    return {"provider": provider, "pattern": rest}


def model_spec(entry: dict[str, Any]) -> str:
    envs = entry.get("environments")
    return f"{entry.get('provider')}:{entry.get('pattern')}" + (f"@{','.join(envs)}" if envs else "")


def _budget(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        Decimal(value)
    except InvalidOperation:
        _usage(f"--monthly-budget-usd {value!r} is not a number")
    return value


PROFILE_COLUMNS: Columns = [
    ("ID", key("id")), ("NAME", key("name")), ("MODELS", lambda r: [model_spec(e) for e in r["catalog"]]),
    ("ENVIRONMENTS", key("environments")), ("DEFAULT DAYS", key("default_token_days")),
    ("MAX DAYS", key("max_token_days")), ("DORMANT DAYS", key("dormant_disable_days")),
]
CATALOG_HELP = "Catalog entry PROVIDER:PATTERN\\[@env1,env2], repeatable (provider: openai, anthropic or *)."
ENVS_HELP = "Allowed token environment, repeatable."
ModelsOpt = Annotated[list[str] | None, typer.Option("--model", help=CATALOG_HELP)]
EnvsOpt = Annotated[list[Env] | None, typer.Option("--environment", help=ENVS_HELP)]
DefaultDays = Annotated[int | None, typer.Option(min=1, max=3650, help="Default token lifetime (API default 30).")]
MaxDays = Annotated[int | None, typer.Option(min=1, max=3650, help="Longest token lifetime (API default 90).")]
DormantDays = Annotated[int | None, typer.Option(min=1, max=3650, help="Revoke tokens unused this many days.")]
RateLimit = Annotated[int | None, typer.Option(min=1, help="Requests per minute.")]
Budget = Annotated[str | None, typer.Option(help="Monthly budget in USD, e.g. 250.00.")]
Description = Annotated[str | None, typer.Option()]


def _profile_fields(models: list[str] | None, environments: list[Env] | None, **fields: Any) -> dict[str, Any]:
    return _body(catalog=[parse_model(m) for m in models] if models else None,
                 environments=[str(e) for e in environments] if environments else None, **fields)


def _show_profile(api: Api, profile: Row, as_json: bool, note: str | None = None) -> None:
    readable = profile if as_json else {**profile, "catalog": [model_spec(e) for e in profile["catalog"]]}
    show_record(api, readable, as_json, note=note)


@profiles_app.command("list")
def profiles_list(
    sort: Annotated[Literal["created_at", "-created_at", "name", "-name"], typer.Option()] = "name",
    limit: PageSize = None, cursor: CursorOpt = None, all_pages: AllPages = False, as_json: JsonOut = False,
) -> None:
    """List access profiles."""
    page = _listing(_api(), "/profiles", {"sort": sort}, limit=limit, cursor=cursor, follow=all_pages)
    show_page(page, PROFILE_COLUMNS, as_json, "profiles")


@profiles_app.command("show")
def profiles_show(profile: ProfileRef, as_json: JsonOut = False) -> None:
    """Show one access profile."""
    api = _api()
    _show_profile(api, api.find(PROFILES, profile), as_json)


@profiles_app.command("create")
def profiles_create(
    name: Annotated[str, typer.Argument()],
    models: Annotated[list[str], typer.Option("--model", help=CATALOG_HELP)],
    environments: Annotated[list[Env], typer.Option("--environment", help=ENVS_HELP)],
    default_token_days: DefaultDays = None, max_token_days: MaxDays = None, dormant_days: DormantDays = None,
    rate_limit_rpm: RateLimit = None, monthly_budget_usd: Budget = None, description: Description = None,
    as_json: JsonOut = False,
) -> None:
    """Create an access profile, e.g. --model openai:gpt-4o* --model anthropic:claude-*@prod --environment dev
    --environment prod."""
    api = _api()
    body = _profile_fields(models, environments, name=name, description=description,
                           default_token_days=default_token_days, max_token_days=max_token_days,
                           dormant_disable_days=dormant_days, rate_limit_rpm=rate_limit_rpm,
                           monthly_budget_usd=_budget(monthly_budget_usd))
    _show_profile(api, api.post("/profiles", body), as_json, note=f"Created profile {name}.")


Clearable = Literal["description", "dormant-days", "rate-limit-rpm", "monthly-budget-usd"]
_CLEARED = {"description": "description", "dormant-days": "dormant_disable_days",
            "rate-limit-rpm": "rate_limit_rpm", "monthly-budget-usd": "monthly_budget_usd"}


@profiles_app.command("update")
def profiles_update(
    profile: ProfileRef,
    name: Annotated[str | None, typer.Option("--name", help="New name.")] = None,
    models: ModelsOpt = None, environments: EnvsOpt = None,
    default_token_days: DefaultDays = None, max_token_days: MaxDays = None, dormant_days: DormantDays = None,
    rate_limit_rpm: RateLimit = None, monthly_budget_usd: Budget = None, description: Description = None,
    clear: Annotated[list[str] | None, typer.Option(
        help="Unset one of: description, dormant-days, rate-limit-rpm, monthly-budget-usd (repeatable).")] = None,
    as_json: JsonOut = False,
) -> None:
    """Change an access profile. --model and --environment replace the whole list; narrowing applies
    to every live token of every team using the profile at once."""
    unknown = [c for c in clear or [] if c not in _CLEARED]
    if unknown:
        _usage(f"--clear {unknown[0]!r}: expected one of {', '.join(_CLEARED)}")
    body = _profile_fields(models, environments, name=name, description=description,
                           default_token_days=default_token_days, max_token_days=max_token_days,
                           dormant_disable_days=dormant_days, rate_limit_rpm=rate_limit_rpm,
                           monthly_budget_usd=_budget(monthly_budget_usd))
    body |= {_CLEARED[c]: None for c in clear or []}
    if not body:
        _usage("nothing to change: give at least one option")
    api = _api()
    updated = api.patch(f"/profiles/{api.id_of(PROFILES, profile)}", body)
    _show_profile(api, updated, as_json, note=f"Updated profile {updated['name']}.")


# -- service accounts -----------------------------------------------------------------------------

accounts_app = typer.Typer(help="Service accounts: workloads owned by a team.", no_args_is_help=True)
AccountRef = Annotated[str, typer.Argument(help="Service account id or name.", metavar="SERVICE_ACCOUNT")]


def _account_columns(api: Api) -> Columns:
    return [("ID", key("id")), ("NAME", key("name")), ("TEAM", lambda r: api.label(TEAMS, r["team_id"])),
            ("STATUS", key("status")), ("BUSINESS OWNER", lambda r: api.label(USERS, r["business_owner_id"])),
            ("TECHNICAL OWNER", lambda r: api.label(USERS, r["technical_owner_id"])),
            ("CREATED", at("created_at"))]


@accounts_app.command("list")
def accounts_list(
    team: Annotated[str | None, typer.Option(help="Team id or name.")] = None,
    status: Annotated[Literal["active", "disabled"] | None, typer.Option()] = None,
    sort: Annotated[Literal["created_at", "-created_at", "name", "-name"], typer.Option()] = "created_at",
    limit: PageSize = None, cursor: CursorOpt = None, all_pages: AllPages = False, as_json: JsonOut = False,
) -> None:
    """List service accounts."""
    api = _api()
    filters = {"team_id": api.id_of(TEAMS, team) if team else None, "status": status, "sort": sort}
    page = _listing(api, "/service-accounts", filters, limit=limit, cursor=cursor, follow=all_pages)
    show_page(page, _account_columns(api), as_json, "service accounts")


@accounts_app.command("create")
def accounts_create(
    name: Annotated[str, typer.Argument()],
    team: Annotated[str, typer.Option(help="The owning team (id or name); its tokens act for it.")],
    business_owner: Annotated[str, typer.Option(help="User id or email.")],
    technical_owner: Annotated[str, typer.Option(help="User id or email.")],
    description: Description = None,
    as_json: JsonOut = False,
) -> None:
    """Create a service account."""
    api = _api()
    body = _body(name=name, description=description, team_id=api.id_of(TEAMS, team),
                 business_owner_id=api.id_of(USERS, business_owner),
                 technical_owner_id=api.id_of(USERS, technical_owner))
    show_record(api, api.post("/service-accounts", body), as_json, note=f"Created service account {name}.")


@accounts_app.command("show")
def accounts_show(account: AccountRef, as_json: JsonOut = False) -> None:
    """Show one service account."""
    api = _api()
    show_record(api, api.find(SERVICE_ACCOUNTS, account), as_json)


def _set_account_status(ref: str, status: str, as_json: bool, message: str) -> None:
    api = _api()
    account = api.patch(f"/service-accounts/{api.id_of(SERVICE_ACCOUNTS, ref)}", {"status": status})
    done(as_json, account, message.format(name=account["name"]))


@accounts_app.command("disable")
def accounts_disable(account: AccountRef, as_json: JsonOut = False) -> None:
    """Disable a service account: its tokens stop working at the gateway at once."""
    _set_account_status(account, "disabled", as_json, "Disabled service account {name}; its tokens are refused.")


@accounts_app.command("enable")
def accounts_enable(account: AccountRef, as_json: JsonOut = False) -> None:
    """Enable a disabled service account."""
    _set_account_status(account, "active", as_json, "Enabled service account {name}.")


# -- tokens ---------------------------------------------------------------------------------------

tokens_app = typer.Typer(help="Personal access tokens: mint, list, narrow, rotate, revoke.", no_args_is_help=True)
TokenId = Annotated[str, typer.Argument(help="Token id.", metavar="TOKEN_ID")]
TokenSort = Literal["created_at", "-created_at", "last_used_at", "-last_used_at", "expires_at", "-expires_at",
                    "name", "-name"]


def _owner(api: Api, row: Row) -> str:
    if row.get("user_id"):
        return api.label(USERS, row["user_id"])
    return "sa:" + api.label(SERVICE_ACCOUNTS, row.get("service_account_id"))


def _token_columns(api: Api) -> Columns:
    return [("ID", key("id")), ("NAME", key("name")), ("HINT", key("hint")), ("OWNER", lambda r: _owner(api, r)),
            ("TEAM", lambda r: api.label(TEAMS, r["team_id"])), ("ENV", key("environment")),
            ("MODELS", key("models")), ("STATE", _state), ("EXPIRES", at("expires_at")),
            ("LAST USED", lambda r: _when(r["last_used_at"]) if r["last_used_at"] else "never")]


def show_secret(issued: Row, as_json: bool, quiet: bool, summary: Callable[[], str], *,
                document: Any = None, use: str = "") -> None:
    """A new secret, once: alone on its own line after a summary; alone on stdout with --quiet;
    inside the API's JSON document with --json."""
    if as_json:
        print_json(document if document is not None else issued)
    elif quiet:
        sys.stdout.write(issued["token"] + "\n")
    else:
        out.print(summary(), markup=False, soft_wrap=True)
        out.print(f"\nSecret, shown this once (Keyward keeps only a hash; store it now{use}):\n", markup=False,
                  soft_wrap=True)
        out.print(issued["token"] + "\n", markup=False, soft_wrap=True)


def _token_summary(api: Api, heading: str, token: Row) -> Callable[[], str]:
    return lambda: (f"{heading} {token['name']} ({token['hint']}) for {_owner(api, token)}, team "
                    f"{api.label(TEAMS, token['team_id'])}, {token['environment']}, expires "
                    f"{_when(token['expires_at'])}. Token id: {token['id']}")


@tokens_app.command("mint")
def tokens_mint(
    user: Annotated[str | None, typer.Option(help="Owner: user id or email.")] = None,
    service_account: Annotated[str | None, typer.Option(help="Owner: service account id or name.")] = None,
    team: Annotated[str | None, typer.Option(help="Team the token acts for (id or name); default: the "
                                                  "user's only team.")] = None,
    name: Annotated[str, typer.Option(help="What the token is for, e.g. laptop or ci.")] = "cli",
    env: Annotated[Env, typer.Option(help="Token environment.")] = Env.dev,
    models: Annotated[list[str] | None, typer.Option(
        "--model", help="Narrow to these models or patterns, repeatable (default: all the profile offers).")] = None,
    scopes: Annotated[list[str] | None, typer.Option("--scope", help="Scope, repeatable.")] = None,
    expires_in_days: Annotated[int | None, typer.Option(min=1, help="Default: the profile's default.")] = None,
    quiet: QuietOpt = False,
    as_json: JsonOut = False,
) -> None:
    """Mint a token. The secret is printed once and can never be shown again."""
    if (user is None) == (service_account is None):
        _usage("give exactly one of --user and --service-account")
    api = _api()
    body = _body(user_id=api.id_of(USERS, user) if user else None,
                 service_account_id=api.id_of(SERVICE_ACCOUNTS, service_account) if service_account else None,
                 team_id=api.id_of(TEAMS, team) if team else None, name=name, environment=str(env),
                 models=models or None, scopes=scopes or None, expires_in_days=expires_in_days)
    issued = api.post("/tokens", body)
    show_secret(issued, as_json, quiet, _token_summary(api, "Minted token", issued))


@tokens_app.command("list")
def tokens_list(
    user: Annotated[str | None, typer.Option(help="User id or email.")] = None,
    team: Annotated[str | None, typer.Option(help="Team id or name.")] = None,
    service_account: Annotated[str | None, typer.Option(help="Service account id or name.")] = None,
    env: Annotated[Env | None, typer.Option()] = None,
    state: Annotated[Literal["active", "revoked", "expired"] | None, typer.Option()] = None,
    name: Annotated[str | None, typer.Option(help="Substring of the token's name.")] = None,
    sort: Annotated[TokenSort, typer.Option()] = "created_at",
    limit: PageSize = None, cursor: CursorOpt = None, all_pages: AllPages = False, as_json: JsonOut = False,
) -> None:
    """List tokens (never their secrets: each shows its prefix and last four characters)."""
    api = _api()
    filters = {"user_id": api.id_of(USERS, user) if user else None,
               "team_id": api.id_of(TEAMS, team) if team else None,
               "service_account_id": api.id_of(SERVICE_ACCOUNTS, service_account) if service_account else None,
               "environment": str(env) if env else None, "state": state, "name": name, "sort": sort}
    page = _listing(api, "/tokens", filters, limit=limit, cursor=cursor, follow=all_pages)
    show_page(page, _token_columns(api), as_json, "tokens")


@tokens_app.command("show")
def tokens_show(token_id: TokenId, as_json: JsonOut = False) -> None:
    """Show one token."""
    api = _api()
    show_record(api, api.get(f"/tokens/{token_id}"), as_json)


@tokens_app.command("dormant")
def tokens_dormant(
    days: Annotated[int, typer.Option(min=1, max=3650, help="Unused for at least this many days.")] = 30,
    team: Annotated[str | None, typer.Option(help="Team id or name.")] = None,
    sort: Annotated[TokenSort, typer.Option()] = "last_used_at",
    limit: PageSize = None, cursor: CursorOpt = None, all_pages: AllPages = False, as_json: JsonOut = False,
) -> None:
    """Live tokens unused for --days days (never used: minted more than --days ago)."""
    api = _api()
    filters = {"days": days, "team_id": api.id_of(TEAMS, team) if team else None, "sort": sort}
    page = _listing(api, "/tokens/dormant", filters, limit=limit, cursor=cursor, follow=all_pages)
    show_page(page, _token_columns(api), as_json, "dormant tokens")


@tokens_app.command("revoke")
def tokens_revoke(token_id: TokenId, reason: ReasonOpt = None, as_json: JsonOut = False) -> None:
    """Revoke a token; the gateway refuses it within a second."""
    token = _api().post(f"/tokens/{token_id}/revoke", _body(reason=reason))
    done(as_json, token, f"Revoked token {token['name']} ({token['hint']}).")


@tokens_app.command("rotate")
def tokens_rotate(
    token_id: TokenId,
    grace_hours: Annotated[float, typer.Option(min=0, max=720, help="How long the old token keeps working.")] = 24,
    name: Annotated[str | None, typer.Option(help="Name of the new token (default: the old one's).")] = None,
    quiet: QuietOpt = False,
    as_json: JsonOut = False,
) -> None:
    """Mint a successor with the same attributes; the old token works until the grace period ends."""
    api = _api()
    rotated = api.post(f"/tokens/{token_id}/rotate", _body(grace_hours=grace_hours, name=name))
    if not as_json and not quiet:
        out.print(f"Old token {rotated['old']['hint']} works until {_when(rotated['old']['expires_at'])}.",
                  markup=False, soft_wrap=True)
    show_secret(rotated["new"], as_json, quiet, _token_summary(api, "New token", rotated["new"]), document=rotated)


@tokens_app.command("narrow")
def tokens_narrow(
    token_id: TokenId,
    models: Annotated[list[str] | None, typer.Option("--model", help="The new, narrower model list, "
                                                                     "repeatable.")] = None,
    expires_at: Annotated[datetime | None, typer.Option(help="An earlier expiry (UTC unless an offset is "
                                                             "given).")] = None,
    expires_in_days: Annotated[float | None, typer.Option(min=0, help="An earlier expiry, from now.")] = None,
    as_json: JsonOut = False,
) -> None:
    """Narrow a live token in place (fewer models, an earlier expiry); widening needs a new token."""
    if expires_at and expires_in_days is not None:
        _usage("give --expires-at or --expires-in-days, not both")
    if expires_in_days is not None:
        expires_at = datetime.now(UTC) + timedelta(days=expires_in_days)
    if expires_at and expires_at.tzinfo is None:
        expires_at = expires_at.replace(tzinfo=UTC)
    body = _body(models=models or None, expires_at=expires_at.isoformat() if expires_at else None)
    if not body:
        _usage("nothing to narrow: give --model or an earlier expiry")
    token = _api().patch(f"/tokens/{token_id}", body)
    done(as_json, token, f"Narrowed token {token['name']} ({token['hint']}): models "
                         f"{_cell(token['models'])}, expires {_when(token['expires_at'])}.")


# -- admin-API credentials ------------------------------------------------------------------------

credentials_app = typer.Typer(help="Admin-API credentials with a role (admin, auditor, finance, team owner).",
                              no_args_is_help=True)


@credentials_app.command("create")
def credentials_create(
    name: Annotated[str, typer.Argument()],
    role: Annotated[Role, typer.Option(help="owner needs --team.")],
    team: Annotated[str | None, typer.Option(help="The team an owner credential manages (id or name).")] = None,
    expires_in_days: Annotated[int | None, typer.Option(min=1, max=3650)] = None,
    quiet: QuietOpt = False,
    as_json: JsonOut = False,
) -> None:
    """Issue a credential for the admin API. Its secret is printed once."""
    api = _api()
    issued = api.post("/credentials", _body(name=name, role=str(role), team_id=api.id_of(TEAMS, team) if team
                                            else None, expires_in_days=expires_in_days))
    show_secret(issued, as_json, quiet, lambda: f"Issued {issued['role']} credential {issued['name']} "
                f"({issued['hint']}), id {issued['id']}.", use="; use it as KEYWARD_API_TOKEN")


@credentials_app.command("list")
def credentials_list(limit: PageSize = None, cursor: CursorOpt = None, all_pages: AllPages = False,
                     as_json: JsonOut = False) -> None:
    """List admin-API credentials (never their secrets)."""
    api = _api()
    columns: Columns = [("ID", key("id")), ("NAME", key("name")), ("ROLE", key("role")),
                        ("TEAM", lambda r: api.label(TEAMS, r["team_id"])), ("HINT", key("hint")),
                        ("STATE", _state), ("EXPIRES", at("expires_at")), ("LAST USED", at("last_used_at")),
                        ("CREATED BY", key("created_by"))]
    show_page(_listing(api, "/credentials", {}, limit=limit, cursor=cursor, follow=all_pages), columns, as_json,
              "credentials")


@credentials_app.command("revoke")
def credentials_revoke(
    credential: Annotated[str, typer.Argument(help="Credential id or name.", metavar="CREDENTIAL")],
    as_json: JsonOut = False,
) -> None:
    """Revoke an admin-API credential."""
    api = _api()
    revoked = api.post(f"/credentials/{api.id_of(CREDENTIALS, credential)}/revoke")
    done(as_json, revoked, f"Revoked credential {revoked['name']} ({revoked['hint']}).")


# -- whoami, configure ----------------------------------------------------------------------------


def whoami(as_json: JsonOut = False) -> None:
    """Who the configured credential is, and its role."""
    api = _api()
    me = api.get("/whoami")
    show_record(api, me, as_json)
    if me.get("break_glass") and not as_json:
        err.print("This is the break-glass bootstrap token: every request is recorded as an event. "
                  "Issue a credential with `keyward credentials create` for daily use.", markup=False,
                  soft_wrap=True)


def configure(
    api_url: Annotated[str, typer.Option(help="The control plane's URL.")] = DEFAULT_API_URL,
    token: Annotated[str | None, typer.Option(
        help="Admin-API credential; without it, prompted for (or read from stdin when piped).")] = None,
    verify: Annotated[bool, typer.Option(help="Check the URL and token with /whoami first.")] = True,
) -> None:
    """Save the API URL and token to the config file (mode 0600)."""
    if token is None:
        token = typer.prompt("Token", hide_input=True, err=True) if sys.stdin.isatty() else sys.stdin.readline()
    token = token.strip()
    if not token or not token.isprintable() or " " in token:
        _usage("the token must be one printable word")
    conn = Connection(_base_url(api_url), token)
    if verify:
        me = Api(conn).get("/whoami")
        out.print(f"Connected to {conn.url} as {me['actor']} ({me['role']}).", markup=False, soft_wrap=True)
    path = config_path()
    text = f"api_url = {json.dumps(conn.url)}\ntoken = {json.dumps(conn.token)}\n"
    assert tomllib.loads(text) == {"api_url": conn.url, "token": conn.token}
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.fchmod(descriptor, 0o600)
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                handle.write(text)
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)
    except OSError as exc:
        fail(f"cannot write {path}: {exc}", EXIT_CONNECTION)
    out.print(f"Wrote {path} (mode 0600).", markup=False, soft_wrap=True)
