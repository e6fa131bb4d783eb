"""The in-memory token index, the model catalogs it points at, the interner that shares them, and the
revoked set that keeps revocations across snapshots."""

from __future__ import annotations

import pytest

from authz.cache import Interner, ModelCatalog, ProfileCatalog, TokenCache, TokenRecord, revoked_key
from authz.tokens import generate_token, hash_token

# -- ModelCatalog ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entries", "model", "allowed"),
    [
        (["gpt-4o"], "gpt-4o", True),
        (["gpt-4o"], "gpt-4o-mini", False),  # an exact name is not a prefix
        (["gpt-4o"], "GPT-4O", False),
        (["gpt-4o"], "gpt-4o ", False),
        (["gpt-4o", "o1"], "o1", True),
        (["gpt-4o.1"], "gpt-4oX1", False),  # a dot is literal, not a regex wildcard
    ],
)
def test_exact_entries(entries: list[str], model: str, allowed: bool) -> None:
    assert ModelCatalog(entries).allows(model) is allowed


@pytest.mark.parametrize(
    ("entries", "model", "allowed"),
    [
        (["gpt-4o*"], "gpt-4o", True),
        (["gpt-4o*"], "gpt-4o-mini-2024-07-18", True),
        (["gpt-4o*"], "my-gpt-4o", False),  # anchored at the start
        (["claude-3-*"], "claude-3-haiku", True),
        (["claude-3-*"], "claude-2.1", False),
        (["*-haiku"], "claude-3-haiku-20240307", False),  # anchored at the end
        (["o?-mini"], "o1-mini", True),
        (["o?-mini"], "o10-mini", False),
        (["gpt-[34]*"], "gpt-3.5-turbo", True),
        (["gpt-[34]*"], "gpt-5", False),
        # several patterns compile into one expression: each alternative must stay anchored
        (["gpt-4o*", "*-haiku"], "claude-3-haiku", True),
        (["gpt-4o*", "*-haiku"], "xgpt-4o", False),
        (["gpt-4o*", "*-haiku"], "claude-3-haiku-x", False),
        (["claude-*-haiku-*", "gpt-*-mini-*"], "gpt-4o-mini-2024", True),
        (["claude-*-haiku-*", "gpt-*-mini-*"], "claude-3-5-haiku-latest", True),
        (["claude-*-haiku-*", "gpt-*-mini-*"], "claude-3-opus-latest", False),
        # exact names and patterns together
        (["o1", "claude-*"], "o1", True),
        (["o1", "claude-*"], "claude-3-opus", True),
        (["o1", "claude-*"], "o1-pro", False),
    ],
)
def test_patterns(entries: list[str], model: str, allowed: bool) -> None:
    assert ModelCatalog(entries).allows(model) is allowed


@pytest.mark.parametrize("model", ["gpt-4o", "", "*"])
def test_empty_catalog_allows_nothing(model: str) -> None:
    assert not ModelCatalog([]).allows(model)


def test_catalog_keeps_its_entries_in_order() -> None:
    assert ModelCatalog(iter(["b*", "a"])).entries == ("b*", "a")


# -- Interner -------------------------------------------------------------------------------------


def test_interner_shares_one_catalog_per_list() -> None:
    shared = Interner()
    first = shared.catalog(["gpt-4o", "claude-*"])
    assert shared.catalog(("gpt-4o", "claude-*")) is first
    assert shared.catalog(e for e in ["gpt-4o", "claude-*"]) is first
    assert shared.catalog(["gpt-4o"]) is not first
    assert first.allows("claude-3-haiku")


def test_a_new_interner_shares_nothing_with_the_last() -> None:
    """Each snapshot gets its own: what no token of the new snapshot uses is not kept alive."""
    assert Interner().catalog(["gpt-4o"]) is not Interner().catalog(["gpt-4o"])


def test_interner_compiles_a_profile_once_per_key() -> None:
    shared = Interner()
    compiled: list[str] = []

    def compile_profile(environments: list[str]) -> ProfileCatalog:
        compiled.append("x")
        return ProfileCatalog([("*", "gpt-4o*", None)], environments)

    first = shared.profile(("profile-1", 1.0), compile_profile, ["dev"])
    assert shared.profile(("profile-1", 1.0), compile_profile, ["dev"]) is first
    newer = shared.profile(("profile-1", 2.0), compile_profile, ["dev", "prod"])
    assert newer is not first
    assert newer.environments == {"dev", "prod"}
    assert len(compiled) == 2


# -- TokenCache -----------------------------------------------------------------------------------


def record(token_id: str, token_hash: str | None = None, **fields: object) -> TokenRecord:
    values: dict = {
        "user_id": f"user-of-{token_id}",
        "user_email": f"{token_id}@example.com",
        "team": "platform",
        "environment": "dev",
        "catalog": ModelCatalog(["gpt-4o"]),
        "expires_at": None,
        "owner_active": True,
        **fields,
    }
    return TokenRecord(token_id=token_id, token_hash=token_hash or f"hash-of-{token_id}", **values)


def is_revoked(cache: TokenCache, token_hash: str) -> bool:
    found = cache.get(token_hash)
    assert found is not None, f"{token_hash} is not cached"
    return found.revoked


@pytest.fixture
def cache() -> TokenCache:
    return TokenCache()


def test_empty_cache(cache: TokenCache) -> None:
    assert len(cache) == 0
    assert cache.get("hash-of-a") is None


def test_upsert_adds(cache: TokenCache) -> None:
    a = record("a")
    cache.upsert(a)
    assert cache.get("hash-of-a") is a
    assert len(cache) == 1


def test_upsert_with_the_same_hash_replaces_the_record(cache: TokenCache) -> None:
    cache.upsert(record("a"))
    disabled = record("a", owner_active=False)
    cache.upsert(disabled)
    assert cache.get("hash-of-a") is disabled
    assert len(cache) == 1


def test_upsert_with_a_changed_hash_drops_the_old_hash(cache: TokenCache) -> None:
    cache.upsert(record("a", "old"))
    cache.upsert(record("b", "other"))
    rotated = record("a", "new")
    cache.upsert(rotated)
    assert cache.get("old") is None
    assert cache.get("new") is rotated
    assert cache.get("other") is not None
    assert len(cache) == 2


def test_replace_all_swaps_everything(cache: TokenCache) -> None:
    cache.upsert(record("a"))
    cache.replace_all([record("b"), record("c")])
    assert cache.get("hash-of-a") is None
    assert cache.get("hash-of-b") is not None
    assert cache.get("hash-of-c") is not None
    assert len(cache) == 2
    cache.replace_all([])
    assert len(cache) == 0
    assert cache.get("hash-of-b") is None


def test_only_snapshots_replace_everything(cache: TokenCache) -> None:
    cache.replace_all([record("a"), record("c")])
    cache.upsert(record("b"))
    cache.upsert(record("a", revoked=True))
    cache.forget("b")
    assert is_revoked(cache, "hash-of-a")
    assert cache.get("hash-of-b") is None
    assert not is_revoked(cache, "hash-of-c")
    assert len(cache) == 2


# What the listener does on a NOTIFY for a revoked token: re-read its row and upsert it, revoked.


def test_a_revoked_upsert_leaves_a_tombstone(cache: TokenCache) -> None:
    cache.upsert(record("a"))
    cache.upsert(record("b"))
    cache.upsert(record("a", revoked=True))
    assert is_revoked(cache, "hash-of-a")  # still there, as a tombstone
    assert not is_revoked(cache, "hash-of-b")
    assert len(cache) == 2


def test_a_revoked_upsert_follows_a_changed_hash(cache: TokenCache) -> None:
    cache.upsert(record("a", "old"))
    cache.upsert(record("a", "new", revoked=True))  # rotated, then revoked, before the listener ran
    assert is_revoked(cache, "new")
    assert cache.get("old") is None
    assert len(cache) == 1


def test_next_snapshot_drops_the_tombstone(cache: TokenCache) -> None:
    cache.replace_all([record("a"), record("b")])
    cache.upsert(record("a", revoked=True))
    cache.replace_all([record("b")])
    assert cache.get("hash-of-a") is None


def test_a_revoked_upsert_of_an_unknown_token_touches_no_other(cache: TokenCache) -> None:
    cache.upsert(record("a"))
    cache.upsert(record("nope", revoked=True))
    assert not is_revoked(cache, "hash-of-a")
    assert is_revoked(cache, "hash-of-nope")


def test_forget(cache: TokenCache) -> None:
    cache.upsert(record("a", "old"))
    cache.upsert(record("a", "new"))
    cache.upsert(record("b"))
    cache.forget("a")
    cache.forget("never-seen")
    assert cache.get("new") is None
    assert cache.get("old") is None
    assert cache.get("hash-of-b") is not None
    assert len(cache) == 1
    cache.forget("a")  # a second NOTIFY for a deleted token must not fail


# -- the revoked set: revocations survive snapshots ---------------------------------------------

REAL_HASH = hash_token(generate_token(), bytes(32))


def test_revoked_keys_are_sixteen_raw_bytes_of_the_digest() -> None:
    key = revoked_key(REAL_HASH)
    assert key == bytes.fromhex(REAL_HASH)[:16]
    assert isinstance(key, bytes) and len(key) == 16


def test_a_snapshot_carries_revoked_tokens_as_keys_not_records(cache: TokenCache) -> None:
    cache.replace_all([record("live")], {revoked_key(REAL_HASH)})
    assert cache.get(REAL_HASH) is None
    assert cache.is_revoked(REAL_HASH)
    assert not cache.is_revoked("hash-of-live")
    assert (len(cache), cache.revoked_count) == (1, 1)


def test_a_revocation_notice_adds_the_key_and_keeps_the_tombstone(cache: TokenCache) -> None:
    cache.replace_all([record("a", REAL_HASH)])
    assert not cache.is_revoked(REAL_HASH)
    cache.upsert(record("a", REAL_HASH, revoked=True))
    assert cache.is_revoked(REAL_HASH)
    assert is_revoked(cache, REAL_HASH)  # the tombstone record too, naming the owner until the next snapshot


def test_the_next_snapshot_keeps_a_revocation_it_lists(cache: TokenCache) -> None:
    cache.replace_all([record("a", REAL_HASH)])
    cache.upsert(record("a", REAL_HASH, revoked=True))
    cache.replace_all([], {revoked_key(REAL_HASH)})
    assert cache.get(REAL_HASH) is None
    assert cache.is_revoked(REAL_HASH)


def test_an_unrevoked_token_leaves_the_set(cache: TokenCache) -> None:
    cache.replace_all([], {revoked_key(REAL_HASH)})
    cache.upsert(record("a", REAL_HASH))  # revoked_at set back to NULL by hand, then the NOTIFY
    assert not cache.is_revoked(REAL_HASH)
    assert cache.get(REAL_HASH) is not None


def test_a_forgotten_token_leaves_the_set(cache: TokenCache) -> None:
    cache.upsert(record("a", REAL_HASH, revoked=True))
    cache.forget("a")  # its row was deleted
    assert not cache.is_revoked(REAL_HASH)
    assert cache.get(REAL_HASH) is None
    assert cache.revoked_count == 0


def test_a_token_moved_to_another_hash_takes_its_old_key_out(cache: TokenCache) -> None:
    cache.upsert(record("a", "old", revoked=True))
    cache.upsert(record("a", "new", revoked=True))
    assert not cache.is_revoked("old")
    assert cache.is_revoked("new")
    assert cache.revoked_count == 1


def test_a_replaced_snapshot_forgets_revocations_it_no_longer_lists(cache: TokenCache) -> None:
    cache.replace_all([], {revoked_key(REAL_HASH)})
    cache.replace_all([], set())
    assert not cache.is_revoked(REAL_HASH)
