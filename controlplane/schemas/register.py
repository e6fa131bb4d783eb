"""The credential register: the fields every credential's row adds to its owner and scope (purpose,
workload, where the secret lives, backup owner), and the register's rows as the API publishes them.

A row is built by :func:`controlplane.services.register.register_rows`; its nested documents (owner,
effective access, usage, rotation, flags) are described field by field there. They are published as
plain objects so the register can grow a field without a breaking change to its clients.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, StringConstraints

#: Where a credential's secret is declared to live.
SecretLocation = Literal["vault", "cloud_secret_manager", "ci_secret_store", "kubernetes_secret",
                         "password_manager", "laptop", "other"]
EmploymentType = Literal["employee", "contractor", "vendor", "service"]
#: What a register row is.
SubjectType = Literal["token", "service_account", "api_credential", "scim_credential"]
#: How a credential is used: a person's token, a workload's (its service account and its tokens), an
#: admin-API credential, a SCIM credential.
RegisterKind = Literal["personal", "service", "admin", "scim"]
Purpose = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)]
Workload = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=300)]


class RegisterRow(BaseModel):
    """One credential: who answers for it, what it is for, what it can reach now, how it is used,
    when it must be rotated, what ends it, and what is open about it."""

    subject_type: SubjectType
    id: str
    alias: str = Field(description="Its name and hint (prefix and last four characters); never the secret.")
    kind: RegisterKind
    owner: dict[str, Any] | None = Field(description="id, type (user, service_account, scim_connection), "
                                                     "email or name, status.")
    backup_owner: dict[str, Any] | None = Field(description="Personal tokens: who answers when the owner cannot.")
    owners: dict[str, Any] | None = Field(description="Service accounts and their tokens: business, technical, "
                                                      "security and finance owners.")
    team: dict[str, Any] | None
    project: dict[str, Any] | None
    purpose: str | None
    workload: str | None
    environment: str | list[str] | None = Field(description="A token's environment; a service account's: those "
                                                            "of its live tokens.")
    effective: dict[str, Any] = Field(description="stored and effective status (the gateway's own decision), "
                                                  "its reason, and the models per provider it can reach now.")
    secret_location: str | None
    created_at: str | None
    last_used_at: str | None
    usage: dict[str, Any] | None = Field(description="requests_7d, requests_30d and the models called in 30 days.")
    rotation: dict[str, Any] | None = Field(description="cadence_days, last_rotated_at, due_at, overdue, "
                                                        "disable_at.")
    expires_at: str | None
    offboarding_triggers: list[str]
    flags: dict[str, Any] = Field(description="orphaned, overdue (reasons), broader_than_used, reassign_by, "
                                              "flagged_reason.")
    open_exceptions: list[dict[str, Any]]
    last_review: dict[str, Any] | None


class RegisterPage(BaseModel):
    items: list[RegisterRow]
    total: int = Field(description="Rows matching the filters, on every page.")
    next_cursor: str | None = Field(description="Pass as ?cursor= to get the next page; null on the last page.")
