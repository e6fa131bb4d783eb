"""The admin console's sign-in without an IdP: one-time links for the bootstrap admin.

* ``sign_ins.kind`` admits ``link``: a one-time console sign-in link (``kw_link_…``), minted by the
  bootstrap admin (``make up`` prints one; ``keyward console link`` mints another). Redeeming it marks
  it revoked in the same statement that finds it, so it works once, and opens a ``web`` session.
* ``memberships.role`` can be changed by the application (``PUT /teams/{id}/members/{user}`` with another
  role answered 500: the grant had INSERT and DELETE only). The console makes and unmakes team owners.
* ``events.mechanism`` admits ``console``: what was done in the admin console.
* ``sign_ins.user_id`` may be empty, for that link and the session it opens only: the bootstrap admin is
  no person of the directory. A sign-in without a user is always in the ``admin`` role.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


APP_ROLE = "keyward_app"


def upgrade() -> None:
    op.execute(f"GRANT UPDATE (role) ON memberships TO {APP_ROLE}")
    op.drop_constraint("events_mechanism", "events", type_="check")
    op.create_check_constraint("events_mechanism", "events",
                               "mechanism IN ('api', 'cli', 'scim', 'oidc', 'system', 'console')")
    op.alter_column("sign_ins", "user_id", nullable=True)
    op.drop_constraint("sign_ins_kind", "sign_ins", type_="check")
    op.create_check_constraint("sign_ins_kind", "sign_ins", "kind IN ('web', 'cli', 'link')")
    op.create_check_constraint("sign_ins_bootstrap_is_admin", "sign_ins", "user_id IS NOT NULL OR role = 'admin'")


def downgrade() -> None:
    op.execute(f"REVOKE UPDATE (role) ON memberships FROM {APP_ROLE}")
    op.execute("DELETE FROM sign_ins WHERE user_id IS NULL OR kind = 'link'")
    op.drop_constraint("sign_ins_bootstrap_is_admin", "sign_ins", type_="check")
    op.drop_constraint("sign_ins_kind", "sign_ins", type_="check")
    op.create_check_constraint("sign_ins_kind", "sign_ins", "kind IN ('web', 'cli')")
    op.alter_column("sign_ins", "user_id", nullable=False)
    op.drop_constraint("events_mechanism", "events", type_="check")
    op.create_check_constraint("events_mechanism", "events", "mechanism IN ('api', 'cli', 'scim', 'oidc', 'system')")
