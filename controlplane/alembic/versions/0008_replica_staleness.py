"""What a revocation needs to know about each authz replica besides its heartbeat.

``stale_after_seconds``: how long the replica keeps answering from its cache after its last heartbeat
(``KEYWARD_MAX_STALENESS_SECONDS``); past that it refuses every request. A revocation waits for a
replica that has gone silent until then (plus a margin), and not a moment less: a replica cut off
from Postgres still answers Checks until its own bound says stop.

``loaded_at``: Postgres's clock when the replica's current snapshot began. A replica whose snapshot
began after a revocation committed has it, ack or not (a restarted process never saw the ack request).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Replicas that beat before this migration bound nothing; they count as alive for the old 10 s.
    op.add_column("authz_replicas", sa.Column("stale_after_seconds", sa.Float, nullable=False,
                                              server_default=sa.text("10")))
    op.add_column("authz_replicas", sa.Column("loaded_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("authz_replicas", "loaded_at")
    op.drop_column("authz_replicas", "stale_after_seconds")
