"""JSON read strictly: an object that repeats a key is refused, not resolved by "last one wins".

The gateway judges a body and a provider (or an MCP server) acts on it; if they could read a repeated
key differently (``{"model": "cheap", "model": "expensive"}``), the check would be worthless, so such a
body is refused. The hook sees every object at every depth, escapes resolved (``"model"`` and
``"\\u006dodel"`` are the same key).
"""

from __future__ import annotations


class RepeatedKey(ValueError):
    """An object in the document repeats a key."""


def unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """``json.loads(..., object_pairs_hook=unique_keys)``: each object, or :class:`RepeatedKey`."""
    document = dict(pairs)
    if len(document) != len(pairs):
        raise RepeatedKey
    return document


def is_text(value: str) -> bool:
    """Whether a decoded JSON string is text: JSON allows lone surrogates (``"\\ud800"``), which cannot be
    encoded, stored or put into metadata."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
