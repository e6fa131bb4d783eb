"""Shapes every document shares: input and output bases, pages, names, patterns, vocabularies."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, ClassVar, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

UserStatus = Literal["active", "suspended", "deprovisioned"]

Environment = Literal["dev", "staging", "prod", "ci"]

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]

ModelPattern = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._:/@*?\[\]-]+$")]

T = TypeVar("T")

Reason = Annotated[str, StringConstraints(strip_whitespace=True, max_length=500)]

#: The largest value of a PostgreSQL integer column.
MAX_INT = 2**31 - 1


class Input(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: Update fields that may be left out but not set to null (the column cannot be empty).
    _not_null: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="before")
    @classmethod
    def _explicit_nulls(cls, data: Any) -> Any:
        if isinstance(data, dict):
            nulls = [name for name in cls._not_null if name in data and data[name] is None]
            if nulls:
                raise ValueError(f"{', '.join(nulls)} may be left out but not set to null")
        return data


class Output(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = Field(description="Pass as ?cursor= to get the next page; null on the last page.")


Provider = Literal["openai", "anthropic", "*"]

Role = Literal["admin", "auditor", "finance", "owner"]

MemberRole = Literal["member", "owner"]


class RevocationStatus(BaseModel):
    """Whether the gateway already refuses what was revoked: every live authz replica confirmed it."""

    applied: bool = Field(description="Every live authz replica applied it within the wait: from this response "
                                      "on, the gateway refuses. False: see unconfirmed.")
    confirmed: dict[str, datetime] = Field(description="Replica id -> when it applied the change.")
    unconfirmed: list[str] = Field(description="Replicas seen alive that did not confirm within the wait.")
    waited_ms: int
