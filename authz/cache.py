"""The in-memory token index the hot path reads, and the compiled catalogs its records point at.

Invariants:

* keys are keyed hashes of PATs (:func:`authz.tokens.hash_token`); no secret is ever held here;
* mutations happen on one thread (the listener's event loop) while Checks read from gRPC worker
  threads; every mutation is a single dict operation, atomic under the GIL, so a Check sees each
  record either before or after a change. Between the operations of one batch a Check can see some
  tokens updated and others not yet (for microseconds), and a token whose hash changed is briefly
  unknown: both only ever err towards refusing;
* a revoked token is known as revoked for good, so its denial says "revoked" rather than "unknown",
  across restarts too: a snapshot holds the records of tokens that are not revoked plus the set of
  revoked ones (:meth:`TokenCache.is_revoked`, keyed by :func:`revoked_key`: 16 raw bytes of the
  digest, not a record, because there may be millions); a token revoked since the snapshot also
  stays as a tombstone record until the next one, so its denial can still name its owner;
* the revoked set follows every update: a revoked upsert adds the token, an upsert that is not
  revoked (or that moves a token to another hash) takes its old key out, and forgetting a token
  the cache knows by id takes it out too. A revoked token known only from the snapshot has no id
  here, so if its row is deleted it stays "revoked" (still refused) until the next snapshot;
* records share compiled catalogs and profiles through an :class:`Interner` that lives exactly as
  long as one snapshot, so a catalog or profile no token uses any more goes with the next reload;
* the cache knows how old its news may be (:meth:`TokenCache.stale`): past ``fresh_until``, set by
  the listener from its last proof that Postgres was answering, nothing is allowed, because a
  revocation made since may not have arrived.
"""

from __future__ import annotations

import fnmatch
import math
import re
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, TypeVar

from authz.routes import DEFAULT_FAMILIES, Family

if TYPE_CHECKING:
    from authz.limits import Budget, RateLimit


class ToolPolicy(Protocol):
    """What the Check asks of a profile's MCP tool catalog (:class:`authz.mcp.ToolCatalog`)."""

    def serves(self, server: str) -> bool: ...

    def allows(self, server: str, tool: str) -> bool: ...


class ModelCatalog:
    """The models a token may call: exact names plus shell-style patterns (``gpt-4o*``, ``claude-*``).

    >>> ModelCatalog(["gpt-4o", "claude-3-*"]).allows("claude-3-haiku")
    True
    """

    __slots__ = ("_exact", "_pattern", "entries")

    def __init__(self, entries: Iterable[str]) -> None:
        self.entries = tuple(entries)
        self._exact = frozenset(e for e in self.entries if not _is_pattern(e))
        patterns = [fnmatch.translate(e) for e in self.entries if _is_pattern(e)]
        self._pattern = re.compile("|".join(patterns)) if patterns else None

    def allows(self, model: str) -> bool:
        if model in self._exact:
            return True
        return self._pattern is not None and self._pattern.match(model) is not None


def _is_pattern(entry: str) -> bool:
    return any(c in entry for c in "*?[")


class ProfileCatalog:
    """A team's access profile as the hot path needs it: which token environments it allows, which
    endpoint families, which models each API offers in which environment and which upstream serves
    them, and which MCP servers and tools its agents may call.

    Entries are ``(api, pattern, environments, upstream)``; api ``*`` means every API, ``environments``
    of ``None`` means every environment the profile allows and ``upstream`` of ``None`` the API's
    default upstream. The first entry that offers a model decides its upstream.
    """

    __slots__ = ("_entries", "budgets", "environments", "families", "rate_limits", "tools")

    def __init__(self, entries: Iterable[tuple[str, str, tuple[str, ...] | None]
                                         | tuple[str, str, tuple[str, ...] | None, str | None]],
                 environments: Iterable[str], budgets: dict[str, Budget] | None = None,
                 rate_limits: dict[str, RateLimit] | None = None, *,
                 families: Iterable[Family] = DEFAULT_FAMILIES, tools: ToolPolicy | None = None):
        self.environments = frozenset(environments)
        self.families = frozenset(families)
        #: The MCP tool catalog; ``None``: no MCP server at all.
        self.tools = tools
        #: The default budget and rate limit per scope type (see :mod:`authz.limits`).
        self.budgets: dict[str, Budget] = budgets or {}
        self.rate_limits: dict[str, RateLimit] = rate_limits or {}
        self._entries = tuple(
            (provider, ModelCatalog([pattern]), frozenset(envs) if envs is not None else None,
             upstream[0] if upstream else None)
            for provider, pattern, envs, *upstream in entries
        )

    def model_in(self, provider: str, environment: str, model: str) -> bool | None:
        """True: allowed here. False: offered, but only in other environments. None: not offered."""
        found = self.route(provider, environment, model)
        return found if found is None or found is False else True

    def route(self, provider: str, environment: str, model: str) -> str | bool | None:
        """Where the model goes: the upstream the entry names ("" for the API's default). False: offered,
        but only in other environments. None: not offered."""
        offered = False
        for entry_provider, catalog, envs, upstream in self._entries:
            if entry_provider not in ("*", provider) or not catalog.allows(model):
                continue
            if envs is None or environment in envs:
                return upstream or ""
            offered = True
        return False if offered else None

    def only_in(self, provider: str, model: str) -> list[str]:
        found: set[str] = set()
        for entry_provider, catalog, envs, _ in self._entries:
            if entry_provider in ("*", provider) and catalog.allows(model):
                found |= envs if envs is not None else self.environments
        return sorted(found)

    def offered(self, provider: str, environment: str) -> list[tuple[ModelCatalog, str]]:
        """The catalogs (with their upstream, "" for the default) the profile offers ``provider`` in
        ``environment``, in order: what a model listing shows."""
        return [(catalog, upstream or "") for entry_provider, catalog, envs, upstream in self._entries
                if entry_provider in ("*", provider) and (envs is None or environment in envs)]


#: The profile of a token whose team has no access profile: the pipeline refuses such a token with
#: ``team_has_no_profile`` (compared by identity), and it allows nothing anyway.
NO_PROFILE = ProfileCatalog((), (), families=())

_Source = TypeVar("_Source")
_FAMILIES = {family.value: family for family in Family}


def family_set(names: Iterable[str]) -> frozenset[Family]:
    """The families named; a name this authz does not know allows nothing (it errs towards refusing).

    >>> sorted(f.value for f in family_set(["chat", "teleport"]))
    ['chat']
    """
    return frozenset(_FAMILIES[name] for name in names if name in _FAMILIES)


class Interner:
    """One compiled object per distinct model list and per access-profile version, shared by every
    record built through this interner (a million tokens, a few lists: a few regexes, not a million).

    The listener starts a fresh one with every full snapshot and keeps using it for the updates until
    the next, so entries only accumulate between two snapshots. Used on the loop thread only.

    >>> shared = Interner()
    >>> shared.catalog(["gpt-4o"]) is shared.catalog(("gpt-4o",))
    True
    """

    __slots__ = ("_catalogs", "_families", "_profiles", "_texts")

    def __init__(self) -> None:
        self._catalogs: dict[tuple[str, ...], ModelCatalog] = {}
        self._profiles: dict[Hashable, ProfileCatalog] = {}
        self._texts: dict[str, str] = {}
        self._families: dict[tuple[str, ...], frozenset[Family]] = {}

    def families(self, names: Iterable[str] | None) -> frozenset[Family] | None:
        """One set per distinct list of family names (``None``: no narrowing). A name this authz does not
        know allows nothing: it errs towards refusing."""
        if names is None:
            return None
        key = tuple(names)
        found = self._families.get(key)
        if found is None:
            found = self._families[key] = family_set(key)
        return found

    def text(self, value: str | None) -> str | None:
        """One string object per distinct value (team and project ids repeat across many records)."""
        if value is None:
            return None
        return self._texts.setdefault(value, value)

    def catalog(self, entries: Iterable[str]) -> ModelCatalog:
        """The catalog of this list of entries (same entries in the same order: same object)."""
        key = tuple(entries)
        catalog = self._catalogs.get(key)
        if catalog is None:
            catalog = self._catalogs[key] = ModelCatalog(key)
        return catalog

    def profile(self, key: Hashable, compile_profile: Callable[[_Source], ProfileCatalog],
                source: _Source) -> ProfileCatalog:
        """The profile stored under ``key``, which the caller chooses so that equal keys mean equal
        profiles (the snapshot uses the profile's id and version); ``compile_profile(source)`` runs
        only for a key not seen before."""
        profile = self._profiles.get(key)
        if profile is None:
            profile = self._profiles[key] = compile_profile(source)
        return profile


@dataclass(slots=True)
class TokenRecord:
    """Everything a Check needs to know about one token, with its owner's state folded in."""

    token_id: str
    token_hash: str
    user_id: str
    user_email: str
    team: str | None
    environment: str
    catalog: ModelCatalog
    #: Seconds since the epoch; ``None`` means the token never expires.
    expires_at: float | None
    owner_active: bool
    revoked: bool = False
    name: str = field(default="")
    #: The team's access profile; ``None`` for tokens minted before teams existed (their own
    #: model list is then the whole policy), :data:`NO_PROFILE` when the team has none.
    profile: ProfileCatalog | None = None
    #: The owner still belongs to the token's team (a user's membership, a service account's team).
    member: bool = True
    #: Whom spend is attributed to besides the token: the team, the owner (``user`` or
    #: ``service_account`` and its id), the project if the token has one.
    team_id: str | None = None
    owner_type: str = "user"
    owner_id: str | None = None
    project_id: str | None = None
    project: str | None = None
    #: The token's own narrowing of its profile's endpoint families; ``None``: the profile's.
    families: frozenset[Family] | None = None

    def scopes(self) -> tuple[tuple[str, str], ...]:
        """The (scope type, id) keys a request with this token counts against, narrowest first."""
        keys: list[tuple[str, str]] = [("token", self.token_id)]
        if self.owner_id:
            keys.append((self.owner_type, self.owner_id))
        if self.project_id:
            keys.append(("project", self.project_id))
        if self.team_id:
            keys.append(("team", self.team_id))
        return tuple(keys)


def revoked_key(token_hash: str) -> bytes:
    """The revoked set's key for a keyed hash: its first 16 bytes (a hash that is not hex is kept whole).

    >>> revoked_key("00ff" + "a" * 60).hex()
    '00ffaaaaaaaaaaaaaaaaaaaaaaaaaaaa'
    """
    try:
        return bytes.fromhex(token_hash[:32])
    except ValueError:
        return token_hash.encode("utf-8", "surrogatepass")


class TokenCache:
    """``hash → record`` for the hot path, with a ``token id → hash`` index for NOTIFY updates and the
    set of revoked tokens' keys, asked only when a hash has no record."""

    __slots__ = ("_by_hash", "_hash_by_id", "_revoked", "fresh_until")

    def __init__(self) -> None:
        self._by_hash: dict[str, TokenRecord] = {}
        self._hash_by_id: dict[str, str] = {}
        self._revoked: set[bytes] = set()
        #: ``time.monotonic()`` past which the cache may be missing changes (its listener has not
        #: heard from Postgres since): :meth:`stale`. Kept current by the listener's heartbeat.
        self.fresh_until = math.inf

    def stale(self) -> bool:
        """Whether the cache may no longer match Postgres: nothing it allows can be trusted then."""
        return time.monotonic() > self.fresh_until

    def __len__(self) -> int:
        return len(self._by_hash)

    @property
    def revoked_count(self) -> int:
        return len(self._revoked)

    def get(self, token_hash: str) -> TokenRecord | None:
        return self._by_hash.get(token_hash)

    def by_id(self, token_id: str) -> TokenRecord | None:
        """A token's record by its id (on the loop thread, like the mutators: off the request path)."""
        token_hash = self._hash_by_id.get(token_id)
        return self._by_hash.get(token_hash) if token_hash is not None else None

    def live(self) -> list[TokenRecord]:
        """Every record that is not a revoked tombstone (the control plane's what-if questions)."""
        return [record for record in self._by_hash.values() if not record.revoked]

    def is_revoked(self, token_hash: str) -> bool:
        """Whether the token with this hash was revoked (for a hash :meth:`get` has no record of)."""
        return revoked_key(token_hash) in self._revoked

    def replace_all(self, records: Iterable[TokenRecord], revoked: Iterable[bytes] = ()) -> None:
        """Swap in a snapshot: its live ``records`` and the :func:`revoked_key` of every revoked token."""
        by_hash: dict[str, TokenRecord] = {}
        hash_by_id: dict[str, str] = {}
        for record in records:
            by_hash[record.token_hash] = record
            hash_by_id[record.token_id] = record.token_hash
        revoked_set = revoked if isinstance(revoked, set) else set(revoked)
        # Checks read ``_by_hash`` and, on a miss, ``_revoked``; each is swapped whole, and whichever mix
        # a Check sees, it answers for each token as the old or the new snapshot would.
        # ``_hash_by_id`` is read only by the mutators, all on the loop thread.
        self._revoked = revoked_set
        self._by_hash, self._hash_by_id = by_hash, hash_by_id

    def upsert(self, record: TokenRecord) -> None:
        """Add or replace one token; a revoked record stays as a tombstone until the next snapshot and
        its key joins the revoked set for good."""
        old_hash = self._hash_by_id.get(record.token_id)
        if old_hash is not None and old_hash != record.token_hash:
            self._by_hash.pop(old_hash, None)
            self._revoked.discard(revoked_key(old_hash))  # no token has that hash any more
        key = revoked_key(record.token_hash)
        if record.revoked:
            self._revoked.add(key)
        else:
            self._revoked.discard(key)  # un-revoked by hand in the database: live again
        self._by_hash[record.token_hash] = record
        self._hash_by_id[record.token_id] = record.token_hash

    def forget(self, token_id: str) -> None:
        """Drop a token that no longer exists (its row was deleted)."""
        token_hash = self._hash_by_id.pop(token_id, None)
        if token_hash is not None:
            self._by_hash.pop(token_hash, None)
            self._revoked.discard(revoked_key(token_hash))
