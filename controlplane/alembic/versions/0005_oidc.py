"""Sign-in with OpenID Connect: browser sessions and ``keyward login`` credentials.

One table holds both, as keyed hashes like every other Keyward secret: ``web`` rows back the
``keyward_session`` cookie (``kw_sess_…``), ``cli`` rows the bearer credential ``keyward login``
stores (``kw_cli_…``). A row acts for one user in one role: ``self`` (the user's own tokens only) or
the admin role (``admin``, ``auditor``, ``finance``) their IdP groups gave them at sign-in. The nonce
of the sign-in that produced a ``cli`` row is kept (hashed, unique), so an ID token cannot be
exchanged twice.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

APP_ROLE = "keyward_app"


def upgrade() -> None:
    ts = sa.DateTime(timezone=True)
    uuid = pg.UUID(as_uuid=True)
    op.create_table(
        "sign_ins",
        sa.Column("id", uuid, primary_key=True),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("user_id", uuid, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("nonce_hash", sa.String(64), unique=True),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("created_at", ts, nullable=False, server_default=sa.text("now()")),
        sa.Column("expires_at", ts, nullable=False),
        sa.Column("last_used_at", ts),
        sa.Column("revoked_at", ts),
        sa.CheckConstraint("kind IN ('web', 'cli')", name="sign_ins_kind"),
        sa.CheckConstraint("role IN ('self', 'admin', 'auditor', 'finance')", name="sign_ins_role"),
    )
    op.create_index("sign_ins_user", "sign_ins", ["user_id"])
    op.execute(f"GRANT SELECT, INSERT, UPDATE ON sign_ins TO {APP_ROLE}")


def downgrade() -> None:
    op.drop_table("sign_ins")
