"""Users, tokens, events, and the NOTIFY triggers authz listens to.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_NOW = sa.text("now()")


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
        sa.Column("email", sa.Text, nullable=False),
        sa.Column("display_name", sa.Text),
        sa.Column("status", sa.String(16), nullable=False, server_default="active"),
        sa.Column("external_id", sa.Text),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_NOW),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=_NOW),
        sa.CheckConstraint("status IN ('active', 'suspended', 'deprovisioned')", name="users_status"),
    )
    op.create_index("users_email_lower", "users", [sa.text("lower(email)")], unique=True)
    op.create_index("users_created", "users", ["created_at", "id"])

    op.create_table(
        "tokens",
        sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("hint", sa.Text, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("user_id", pg.UUID(as_uuid=True), sa.ForeignKey("users.id"), nullable=False),
        sa.Column("team", sa.Text),
        sa.Column("environment", sa.String(16), nullable=False),
        sa.Column("scopes", pg.ARRAY(sa.Text), nullable=False, server_default="{}"),
        sa.Column("models", pg.ARRAY(sa.Text), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_NOW),
        sa.Column("created_by", sa.Text, nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True)),
        sa.Column("last_used_at", sa.DateTime(timezone=True)),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
        sa.Column("revoked_by", sa.Text),
        sa.Column("revoke_reason", sa.Text),
        sa.Column("rotated_from", pg.UUID(as_uuid=True), sa.ForeignKey("tokens.id")),
        sa.CheckConstraint("environment IN ('dev', 'staging', 'prod', 'ci')", name="tokens_environment"),
    )
    op.create_index("tokens_user", "tokens", ["user_id"])
    op.create_index("tokens_created", "tokens", ["created_at", "id"])
    op.create_index("tokens_live", "tokens", ["id"], postgresql_where=sa.text("revoked_at IS NULL"))

    op.create_table(
        "events",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("clock_timestamp()")),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("mechanism", sa.String(16), nullable=False),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("target_type", sa.Text, nullable=False),
        sa.Column("target_id", sa.Text, nullable=False),
        sa.Column("before", pg.JSONB),
        sa.Column("after", pg.JSONB),
        sa.CheckConstraint("mechanism IN ('api', 'cli', 'scim', 'oidc', 'system')", name="events_mechanism"),
    )
    op.create_index("events_target", "events", ["target_type", "target_id", "id"])
    op.create_index("events_at", "events", ["at"])

    # NOTIFY is delivered at commit, so a listener never sees a change that was rolled back.
    op.execute(
        """
        CREATE FUNCTION keyward_notify_change() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('keyward_changes', TG_ARGV[0] || ':' || COALESCE(NEW.id, OLD.id)::text);
            RETURN NULL;
        END $$
        """
    )
    # Only columns that change a decision: the batched last_used_at writes must not echo back.
    op.execute(
        """
        CREATE TRIGGER tokens_notify
        AFTER INSERT OR DELETE OR UPDATE OF token_hash, user_id, team, environment, models, expires_at, revoked_at
        ON tokens FOR EACH ROW EXECUTE FUNCTION keyward_notify_change('token')
        """
    )
    op.execute(
        """
        CREATE TRIGGER users_notify
        AFTER UPDATE OF status, email ON users
        FOR EACH ROW EXECUTE FUNCTION keyward_notify_change('user')
        """
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER users_notify ON users")
    op.execute("DROP TRIGGER tokens_notify ON tokens")
    op.execute("DROP FUNCTION keyward_notify_change()")
    op.drop_table("events")
    op.drop_table("tokens")
    op.drop_table("users")
