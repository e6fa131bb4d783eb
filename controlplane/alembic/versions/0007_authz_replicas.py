"""Live authz replicas, so a revocation can wait until every one of them has applied it.

Each authz process keeps a row here fresh (``seen_at``, about every second) for as long as its
change listener is connected, and answers every ``ack:<id>`` notification on ``keyward_changes`` with
``<replica>:<id>:<applied at>`` on ``keyward_acks`` once it has applied everything before it. The
control plane sends such an ack request in the transaction of every revocation and, after commit,
waits for the replicas seen recently (``controlplane.services.revocation``).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

APP_ROLE = "keyward_app"


def upgrade() -> None:
    ts = sa.DateTime(timezone=True)
    op.create_table(
        "authz_replicas",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("host", sa.Text, nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("started_at", ts, nullable=False),
        sa.Column("seen_at", ts, nullable=False),
    )
    op.create_index("authz_replicas_seen", "authz_replicas", ["seen_at"])
    op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON authz_replicas TO {APP_ROLE}")


def downgrade() -> None:
    op.drop_table("authz_replicas")
