"""The PAT format: what the control plane mints and what authz accepts before any lookup."""

from __future__ import annotations

import string

import pytest

from authz.tokens import TOKEN_LENGTH, TOKEN_PREFIX, generate_token, hash_token, is_well_formed, token_hint

BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase

#: Minted by an earlier build. Tokens already handed out must stay valid, and their stored hashes
#: must keep matching, whatever happens to the implementation.
KNOWN_TOKEN = "kw_pat_0123456789abcdefghijABCDEFGHIJ3mpbCX"
KNOWN_KEY = bytes(32)
#: printf %s "$KNOWN_TOKEN" | openssl dgst -sha256 -mac HMAC -macopt hexkey:<64 zeros>
KNOWN_HASH = "5f66418ba72a0c6a888012cdb15945d8e709892b28c7344c71bb94135df89fec"


@pytest.fixture(scope="module")
def tokens() -> list[str]:
    return [generate_token() for _ in range(2000)]


# -- generation -----------------------------------------------------------------------------------


def test_generated_tokens_have_prefix_length_and_base62_alphabet(tokens: list[str]) -> None:
    assert TOKEN_PREFIX == "kw_pat_"
    assert TOKEN_LENGTH == 43
    for token in tokens:
        assert token.startswith("kw_pat_")
        assert len(token) == 43
        assert set(token.removeprefix("kw_pat_")) <= set(BASE62)


def test_generated_tokens_are_well_formed(tokens: list[str]) -> None:
    assert all(is_well_formed(token) for token in tokens)


def test_generated_tokens_are_unique(tokens: list[str]) -> None:
    assert len(set(tokens)) == len(tokens)


def test_random_part_uses_the_whole_alphabet(tokens: list[str]) -> None:
    # 60,000 draws from 62 symbols: a missing symbol means a narrower alphabet, i.e. less entropy.
    used = {c for token in tokens for c in token[len(TOKEN_PREFIX) : -6]}
    assert used == set(BASE62)


def test_known_token_is_still_well_formed() -> None:
    assert is_well_formed(KNOWN_TOKEN)


# -- checksum: reject before lookup ---------------------------------------------------------------


def _one_character_typos(token: str):
    for position, original in enumerate(token):
        for replacement in BASE62 + "_-. ":
            if replacement != original:
                yield token[:position] + replacement + token[position + 1 :]


def test_every_single_character_typo_is_rejected(tokens: list[str]) -> None:
    for token in [KNOWN_TOKEN, *tokens[:20]]:
        accepted = [typo for typo in _one_character_typos(token) if is_well_formed(typo)]
        assert accepted == [], f"typos of {token} accepted"


@pytest.mark.parametrize(
    "candidate",
    [
        pytest.param("ghp_" + KNOWN_TOKEN[7:] + "abc", id="github-prefix"),
        pytest.param("KW_PAT_" + KNOWN_TOKEN[7:], id="upper-case-prefix"),
        pytest.param("kw-pat-" + KNOWN_TOKEN[7:], id="dashes"),
        pytest.param("kw_tok_" + KNOWN_TOKEN[7:], id="other-kind"),
        pytest.param("sk-proj-" + KNOWN_TOKEN[8:], id="openai-key-shape"),
        pytest.param("0000000" + KNOWN_TOKEN[7:], id="no-prefix"),
    ],
)
def test_wrong_prefix_is_rejected(candidate: str) -> None:
    assert len(candidate) == TOKEN_LENGTH  # only the prefix is wrong
    assert not is_well_formed(candidate)


@pytest.mark.parametrize("cut", [1, 4, 6, 20, 36])
def test_truncated_token_is_rejected(cut: int) -> None:
    assert not is_well_formed(KNOWN_TOKEN[:-cut])


@pytest.mark.parametrize(
    "candidate",
    ["", TOKEN_PREFIX, KNOWN_TOKEN + "X", KNOWN_TOKEN + " ", " " + KNOWN_TOKEN, KNOWN_TOKEN + "\n"],
)
def test_padded_or_empty_token_is_rejected(candidate: str) -> None:
    assert not is_well_formed(candidate)


@pytest.mark.parametrize(
    "character",
    [
        pytest.param("\u00e9", id="e-acute"),
        pytest.param("\uff11", id="fullwidth-digit-one"),  # str.isalnum() is True for it
        pytest.param("\u0430", id="cyrillic-a"),
        pytest.param("\u00df", id="sharp-s"),
    ],
)
@pytest.mark.parametrize("position", [0, 10, len(TOKEN_PREFIX) + 5, TOKEN_LENGTH - 1])
def test_non_ascii_character_is_rejected(character: str, position: int) -> None:
    candidate = KNOWN_TOKEN[:position] + character + KNOWN_TOKEN[position + 1 :]
    assert len(candidate) == TOKEN_LENGTH
    assert not is_well_formed(candidate)


# -- hashing --------------------------------------------------------------------------------------


def test_hash_is_stable_hex_sha256() -> None:
    assert hash_token(KNOWN_TOKEN, KNOWN_KEY) == KNOWN_HASH
    assert hash_token(KNOWN_TOKEN, KNOWN_KEY) == hash_token(KNOWN_TOKEN, bytes(32))


def test_hash_is_keyed() -> None:
    other_key = bytes(31) + b"\x01"
    assert hash_token(KNOWN_TOKEN, other_key) != hash_token(KNOWN_TOKEN, KNOWN_KEY)


def test_hash_differs_per_token(tokens: list[str]) -> None:
    hashes = {hash_token(token, KNOWN_KEY) for token in tokens[:200]}
    assert len(hashes) == 200


# -- hint -----------------------------------------------------------------------------------------


def test_hint_shows_prefix_and_last_four_only() -> None:
    hint = token_hint(KNOWN_TOKEN)
    assert hint == "kw_pat_\u2026" + "pbCX"
    secret_part = hint.removeprefix(TOKEN_PREFIX)
    assert sum(c.isalnum() for c in secret_part) == 4


def test_hint_of_generated_token(tokens: list[str]) -> None:
    for token in tokens[:50]:
        hint = token_hint(token)
        assert hint.startswith(TOKEN_PREFIX)
        assert hint.endswith(token[-4:])
        assert token[len(TOKEN_PREFIX) : -4] not in hint
