"""SCIM connections: one per IdP, each with bearer credentials (two may be valid at once, to rotate).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

APP_ROLE = "keyward_app"


def upgrade() -> None:
    ts = sa.DateTime(timezone=True)
    uuid = pg.UUID(as_uuid=True)
    op.create_table(
        "scim_connections",
        sa.Column("id", uuid, primary_key=True),
        sa.Column("name", sa.Text, nullable=False, unique=True),
        sa.Column("idp", sa.String(16), nullable=False),
        sa.Column("created_at", ts, nullable=False, server_default=sa.text("now()")),
        sa.CheckConstraint("idp IN ('okta', 'entra', 'google', 'other')", name="scim_connections_idp"),
    )
    op.create_table(
        "scim_credentials",
        sa.Column("id", uuid, primary_key=True),
        sa.Column("connection_id", uuid, sa.ForeignKey("scim_connections.id"), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("hint", sa.Text, nullable=False),
        sa.Column("created_at", ts, nullable=False, server_default=sa.text("now()")),
        sa.Column("last_used_at", ts),
        sa.Column("revoked_at", ts),
    )
    op.create_index("scim_credentials_connection", "scim_credentials", ["connection_id"])
    # SCIM resources carry their own metadata; users and teams learn which connection owns them.
    op.add_column("users", sa.Column("scim_connection_id", uuid, sa.ForeignKey("scim_connections.id")))
    op.add_column("users", sa.Column("given_name", sa.Text))
    op.add_column("users", sa.Column("family_name", sa.Text))
    op.add_column("users", sa.Column("scim_attributes", pg.JSONB))
    op.add_column("users", sa.Column("deleted_at", ts))
    op.add_column("teams", sa.Column("scim_connection_id", uuid, sa.ForeignKey("scim_connections.id")))
    op.add_column("teams", sa.Column("deleted_at", ts))
    op.create_index("users_external", "users", ["scim_connection_id", "external_id"])
    op.create_index("teams_external", "teams", ["scim_connection_id", "external_id"])
    op.execute(f"GRANT SELECT, INSERT, UPDATE ON scim_connections, scim_credentials TO {APP_ROLE}")


def downgrade() -> None:
    op.drop_index("teams_external", "teams")
    op.drop_index("users_external", "users")
    op.drop_column("teams", "deleted_at")
    op.drop_column("teams", "scim_connection_id")
    for column in ("deleted_at", "scim_attributes", "family_name", "given_name", "scim_connection_id"):
        op.drop_column("users", column)
    op.drop_table("scim_credentials")
    op.drop_table("scim_connections")
