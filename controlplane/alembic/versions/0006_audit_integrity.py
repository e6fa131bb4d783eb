"""Audit integrity: signed chain heads, anchors only the owner may write, and what a record was.

* ``audit_checkpoints`` gains ``signature``: every transaction that appends to a chain ends with a
  ``signed`` checkpoint of the new head, signed with the control plane's Ed25519 key, which the
  database never holds. A row appended by anyone else (the application's own database role
  included) lies beyond the last signature, and ``keyward audit verify`` says so.
* The application role may insert ``signed`` checkpoints and nothing else (row-level security):
  a ``retention`` anchor, where verification of a chain starts, is the owner's to write.
* ``sanitized`` marks a record or outcome in which a client-controlled value was cut or had
  characters PostgreSQL cannot hold replaced; ``decided`` says whether Envoy acted on an authz
  decision for the request (false: Envoy answered alone, e.g. authz timed out). Both are hashed into
  the chain when set (see ``controlplane.audit.chain``), so rows written before stay valid.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

APP_ROLE = "keyward_app"


def upgrade() -> None:
    op.add_column("request_records", sa.Column("sanitized", sa.Boolean))
    op.add_column("request_outcomes", sa.Column("sanitized", sa.Boolean))
    op.add_column("request_outcomes", sa.Column("decided", sa.Boolean))
    op.add_column("audit_checkpoints", sa.Column("signature", sa.LargeBinary))
    op.drop_constraint("audit_checkpoints_kind", "audit_checkpoints")
    op.create_check_constraint("audit_checkpoints_kind", "audit_checkpoints",
                               "kind IN ('periodic', 'retention', 'signed')")
    op.create_check_constraint("audit_checkpoints_signed", "audit_checkpoints",
                               "(kind = 'signed') = (signature IS NOT NULL)")
    op.execute("ALTER TABLE audit_checkpoints ENABLE ROW LEVEL SECURITY")
    op.execute(f"CREATE POLICY audit_checkpoints_read ON audit_checkpoints FOR SELECT TO {APP_ROLE} USING (true)")
    op.execute(f"CREATE POLICY audit_checkpoints_sign ON audit_checkpoints FOR INSERT TO {APP_ROLE} "
               "WITH CHECK (kind = 'signed')")


def downgrade() -> None:
    op.execute("DROP POLICY audit_checkpoints_sign ON audit_checkpoints")
    op.execute("DROP POLICY audit_checkpoints_read ON audit_checkpoints")
    op.execute("ALTER TABLE audit_checkpoints DISABLE ROW LEVEL SECURITY")
    op.execute("DELETE FROM audit_checkpoints WHERE kind = 'signed'")
    op.drop_constraint("audit_checkpoints_signed", "audit_checkpoints")
    op.drop_constraint("audit_checkpoints_kind", "audit_checkpoints")
    op.create_check_constraint("audit_checkpoints_kind", "audit_checkpoints", "kind IN ('periodic', 'retention')")
    op.drop_column("audit_checkpoints", "signature")
    op.drop_column("request_outcomes", "decided")
    op.drop_column("request_outcomes", "sanitized")
    op.drop_column("request_records", "sanitized")
