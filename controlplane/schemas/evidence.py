"""What the auditor's integrity and evidence endpoints answer: the server's verification of the audit
chains, with heads anyone can check against the published public key."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


class ChainFinding(BaseModel):
    seq: int
    problem: str
    identity: str


class SignedHead(BaseModel):
    seq: int
    hash: str = Field(description="hex")
    signature: str = Field(description="Ed25519 over the checkpoint message, hex; verify with GET /audit/public-key.")


class VerificationMarker(BaseModel):
    """A recorded verification of a chain ("verified from seq A to seq N, whose hash is H"), signed with
    the audit signing key under the purpose ``keyward.audit.verification.v1``."""

    id: int | None
    kind: str = Field(description="full (every row from the chain's start) or incremental.")
    verified_at: datetime
    ok: bool
    from_seq: int
    to_seq: int
    to_hash: str = Field(description="hex")
    rows: int = Field(description="Rows that verification hashed.")
    duration_ms: int
    findings: list[ChainFinding]
    signature: str = Field(description="Ed25519, hex")


class ChainVerification(BaseModel):
    chain: str
    records: int = Field(description="Records vouched for, from the chain's start (or retention anchor) to its head.")
    intact: bool
    head_seq: int | None = Field(description="The last row checked.")
    head_hash: str | None
    signed_seq: int | None = Field(description="The highest seq a valid signature covers.")
    findings: list[ChainFinding] = Field(description="The first record that breaks the chain, if any.")
    signed_head: SignedHead | None
    kind: str = Field(description="full: every row re-hashed from the chain's start; incremental: the row at the "
                                  "marker still has its hash, and every row after it was re-hashed.")
    from_marker: VerificationMarker | None = Field(description="The marker an incremental verification started from.")
    from_seq: int = Field(description="The first seq hashed.")
    rows_checked: int = Field(description="Rows hashed by this verification.")
    duration_ms: int
    marker: VerificationMarker | None = Field(
        description="The marker this verification recorded (none when nothing new was checked).")
    ignored_markers: list[int] = Field(description="Newer markers skipped: their signature does not verify.")
    last_full: VerificationMarker | None = Field(description="The newest full verification of this chain.")


class AuditVerification(BaseModel):
    intact: bool
    signatures_checked: bool
    public_key: str
    kind: str = Field(description="full when every chain was verified in full, else incremental.")
    rows_checked: int
    verified_at: datetime
    duration_ms: int
    chains: list[ChainVerification]
