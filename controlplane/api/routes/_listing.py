"""Sort parameters shared by the list endpoints: ``sort=name`` ascending, ``sort=-name`` descending."""

from __future__ import annotations

from typing import Any


def sort_key(sort: str, columns: dict[str, Any]) -> tuple[Any, bool]:
    descending = sort.startswith("-")
    return columns[sort.lstrip("-")], descending
