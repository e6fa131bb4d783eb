"""Proving control: the credential register's fields, offboarding flags, access reviews with expiring
exceptions, and a summarised record of the bootstrap token's reads.

* Register fields. Tokens: ``purpose``, ``workload`` (service or repository), ``secret_location``
  (where the secret is declared to live), ``backup_owner_id`` (personal tokens). Service accounts:
  ``purpose``, ``workload``, ``security_owner_id``, ``finance_owner_id`` (besides the business and
  technical owners). Admin-API credentials: ``purpose``, ``owner_id``, ``secret_location``. Users:
  ``employment_type`` (employee, contractor, vendor, service) and ``end_date`` (a contractor's).
  Access profiles: ``rotation_days`` (the rotation cadence of their tokens) and
  ``rotation_disable_days`` (opt-in: disable tokens that long past their rotation).
* Offboarding flags: a service account or admin credential whose owner departed is flagged
  (``reassign_by``, ``flagged_reason``); after the grace without a new owner its tokens are disabled.
  A team can be deleted (``deleted_at`` exists); a project closed: both revoke their tokens.
* ``access_reviews`` (a scope, a due date, open/closed, the report's hash once closed) and their
  ``access_review_items``: register rows frozen at open time, a reviewer, a decision (keep, narrow,
  rotate, reassign, disable, delete, escalate) with its reason, and what carrying it out did.
  ``access_review_schedules`` open reviews on a cadence.
* ``access_exceptions``: keep a credential despite a failing condition, approved by someone other
  than the requester, until it expires; an expired one reopens its item (and may disable).
* ``break_glass_reads``: the bootstrap token's reads, one row per hour (count, first and last),
  summarised into one event per period instead of one per read.
* ``audit_verifications``: each verification of an audit chain (full, or incremental from an earlier
  one), "verified up to seq N whose hash is H", signed with the audit signing key the database never
  holds; incremental verification starts from the newest valid one. Append-only for the application.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

APP_ROLE = "keyward_app"
_NOW = sa.text("now()")
LOCATIONS = ("'vault', 'cloud_secret_manager', 'ci_secret_store', 'kubernetes_secret', 'password_manager', "
             "'laptop', 'other'")
DECISIONS = "('keep', 'narrow', 'rotate', 'reassign', 'disable', 'delete', 'escalate')"


def upgrade() -> None:
    ts = sa.DateTime(timezone=True)
    uuid = pg.UUID(as_uuid=True)

    # -- register fields ------------------------------------------------------------------------
    for table in ("tokens", "service_accounts", "api_credentials"):
        op.add_column(table, sa.Column("purpose", sa.Text))
    for table in ("tokens", "service_accounts"):
        op.add_column(table, sa.Column("workload", sa.Text))
    for table in ("tokens", "api_credentials"):
        op.add_column(table, sa.Column("secret_location", sa.String(32)))
        op.create_check_constraint(f"{table}_secret_location", table,
                                   f"secret_location IS NULL OR secret_location IN ({LOCATIONS})")
    op.add_column("tokens", sa.Column("backup_owner_id", uuid, sa.ForeignKey("users.id")))
    op.add_column("service_accounts", sa.Column("security_owner_id", uuid, sa.ForeignKey("users.id")))
    op.add_column("service_accounts", sa.Column("finance_owner_id", uuid, sa.ForeignKey("users.id")))
    op.add_column("api_credentials", sa.Column("owner_id", uuid, sa.ForeignKey("users.id")))
    op.add_column("users", sa.Column("employment_type", sa.String(16), nullable=False, server_default="employee"))
    op.create_check_constraint("users_employment_type", "users",
                               "employment_type IN ('employee', 'contractor', 'vendor', 'service')")
    op.add_column("users", sa.Column("end_date", sa.Date))
    op.add_column("access_profiles", sa.Column("rotation_days", sa.Integer))
    op.add_column("access_profiles", sa.Column("rotation_disable_days", sa.Integer))
    op.create_check_constraint("access_profiles_rotation", "access_profiles",
                               "(rotation_days IS NULL OR rotation_days > 0) AND (rotation_disable_days IS NULL "
                               "OR (rotation_days IS NOT NULL AND rotation_disable_days > 0))")
    op.execute("UPDATE access_profiles SET rotation_days = 90 WHERE name = 'Production'")
    op.execute("UPDATE access_profiles SET rotation_days = 30 WHERE name = 'Restricted'")

    # -- offboarding flags ------------------------------------------------------------------------
    for table in ("service_accounts", "api_credentials"):
        op.add_column(table, sa.Column("reassign_by", ts))
        op.add_column(table, sa.Column("flagged_reason", sa.Text))

    # -- exceptions -------------------------------------------------------------------------------
    op.create_table(
        "access_exceptions",
        sa.Column("id", uuid, primary_key=True),
        sa.Column("subject_type", sa.String(24), nullable=False),
        sa.Column("subject_id", uuid, nullable=False),
        sa.Column("condition", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("requested_by", sa.Text, nullable=False),
        sa.Column("approved_by", sa.Text),
        sa.Column("status", sa.String(16), nullable=False, server_default="pending"),
        sa.Column("expires_at", ts, nullable=False),
        sa.Column("created_at", ts, nullable=False, server_default=_NOW),
        sa.Column("decided_at", ts),
        sa.Column("review_item_id", uuid),
        sa.CheckConstraint("subject_type IN ('token', 'service_account', 'api_credential', 'scim_credential')",
                           name="access_exceptions_subject"),
        sa.CheckConstraint("status IN ('pending', 'approved', 'rejected', 'expired', 'withdrawn')",
                           name="access_exceptions_status"),
        sa.CheckConstraint("approved_by IS NULL OR approved_by <> requested_by", name="access_exceptions_four_eyes"),
        sa.CheckConstraint("expires_at > created_at", name="access_exceptions_expire"),
    )
    op.create_index("access_exceptions_subject", "access_exceptions", ["subject_type", "subject_id"])
    op.create_index("access_exceptions_due", "access_exceptions", ["status", "expires_at"])

    # -- reviews ----------------------------------------------------------------------------------
    op.create_table(
        "access_reviews",
        sa.Column("id", uuid, primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("scope", pg.JSONB, nullable=False),
        sa.Column("status", sa.String(16), nullable=False, server_default="open"),
        sa.Column("opened_by", sa.Text, nullable=False),
        sa.Column("opened_at", ts, nullable=False, server_default=_NOW),
        sa.Column("due_at", ts, nullable=False),
        sa.Column("closed_by", sa.Text),
        sa.Column("closed_at", ts),
        sa.Column("report", pg.JSONB),
        sa.Column("report_sha256", sa.String(64)),
        sa.Column("schedule_id", uuid),
        sa.Column("trigger", sa.Text),
        sa.CheckConstraint("status IN ('open', 'closed')", name="access_reviews_status"),
    )
    op.create_index("access_reviews_opened", "access_reviews", ["opened_at", "id"])
    op.create_table(
        "access_review_items",
        sa.Column("id", uuid, primary_key=True),
        sa.Column("review_id", uuid, sa.ForeignKey("access_reviews.id"), nullable=False),
        sa.Column("subject_type", sa.String(24), nullable=False),
        sa.Column("subject_id", uuid, nullable=False),
        sa.Column("snapshot", pg.JSONB, nullable=False),
        sa.Column("reviewer", sa.Text),
        sa.Column("decision", sa.String(16)),
        sa.Column("reason", sa.Text),
        sa.Column("decided_by", sa.Text),
        sa.Column("decided_at", ts),
        sa.Column("result", pg.JSONB),
        sa.Column("exception_id", uuid, sa.ForeignKey("access_exceptions.id")),
        sa.Column("reopened_at", ts),
        sa.CheckConstraint(f"decision IS NULL OR decision IN {DECISIONS}", name="access_review_items_decision"),
    )
    op.create_index("access_review_items_review", "access_review_items", ["review_id"])
    op.create_index("access_review_items_subject", "access_review_items", ["subject_type", "subject_id"])
    op.create_foreign_key("access_exceptions_item", "access_exceptions", "access_review_items",
                          ["review_item_id"], ["id"])
    op.create_table(
        "access_review_schedules",
        sa.Column("id", uuid, primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("scope", pg.JSONB, nullable=False),
        sa.Column("cadence", sa.String(16), nullable=False),
        sa.Column("due_days", sa.Integer, nullable=False, server_default="14"),
        sa.Column("next_run_at", ts, nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("created_at", ts, nullable=False, server_default=_NOW),
        sa.CheckConstraint("cadence IN ('weekly', 'monthly', 'quarterly', 'yearly')",
                           name="access_review_schedules_cadence"),
    )
    op.create_foreign_key("access_reviews_schedule", "access_reviews", "access_review_schedules",
                          ["schedule_id"], ["id"])

    # -- the bootstrap token's reads --------------------------------------------------------------
    op.create_table(
        "break_glass_reads",
        sa.Column("hour", ts, primary_key=True),
        sa.Column("reads", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("first_at", ts, nullable=False),
        sa.Column("last_at", ts, nullable=False),
        sa.Column("paths", pg.JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("summarised_at", ts),
    )

    # -- verification markers: "verified up to seq N, hash H", signed ------------------------------
    op.create_table(
        "audit_verifications",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("chain", sa.Text, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("base_id", sa.BigInteger),
        sa.Column("from_seq", sa.BigInteger, nullable=False),
        sa.Column("to_seq", sa.BigInteger, nullable=False),
        sa.Column("to_hash", sa.LargeBinary, nullable=False),
        sa.Column("rows", sa.BigInteger, nullable=False),
        sa.Column("ok", sa.Boolean, nullable=False),
        sa.Column("findings", pg.JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
        sa.Column("verified_at", ts, nullable=False),
        sa.Column("duration_ms", sa.Integer, nullable=False),
        sa.Column("signature", sa.LargeBinary, nullable=False),
        sa.CheckConstraint("kind IN ('full', 'incremental')", name="audit_verifications_kind"),
    )
    op.create_index("audit_verifications_newest", "audit_verifications", ["chain", "verified_at"])
    op.create_index("audit_verifications_full", "audit_verifications", ["chain", "verified_at"],
                    postgresql_where=sa.text("kind = 'full'"))
    # Append-only for the application, like every audit table: a marker is never changed or removed.
    op.execute(f"REVOKE ALL ON audit_verifications FROM {APP_ROLE}")
    op.execute(f"GRANT SELECT, INSERT ON audit_verifications TO {APP_ROLE}")
    op.execute(f"GRANT USAGE ON SEQUENCE audit_verifications_id_seq TO {APP_ROLE}")

    # A disabled service account or a deleted team already notify authz; a closed project does too (0009).
    op.execute(f"GRANT SELECT, INSERT, UPDATE ON access_exceptions, access_reviews, access_review_items, "
               f"access_review_schedules, break_glass_reads TO {APP_ROLE}")


def downgrade() -> None:
    op.drop_table("audit_verifications")
    op.drop_table("break_glass_reads")
    op.drop_constraint("access_reviews_schedule", "access_reviews")
    op.drop_table("access_review_schedules")
    op.drop_constraint("access_exceptions_item", "access_exceptions")
    op.drop_table("access_review_items")
    op.drop_table("access_reviews")
    op.drop_table("access_exceptions")
    for table in ("service_accounts", "api_credentials"):
        op.drop_column(table, "flagged_reason")
        op.drop_column(table, "reassign_by")
    op.drop_constraint("access_profiles_rotation", "access_profiles")
    op.drop_column("access_profiles", "rotation_disable_days")
    op.drop_column("access_profiles", "rotation_days")
    op.drop_column("users", "end_date")
    op.drop_constraint("users_employment_type", "users")
    op.drop_column("users", "employment_type")
    op.drop_column("api_credentials", "owner_id")
    op.drop_column("service_accounts", "finance_owner_id")
    op.drop_column("service_accounts", "security_owner_id")
    op.drop_column("tokens", "backup_owner_id")
    for table in ("tokens", "api_credentials"):
        op.drop_constraint(f"{table}_secret_location", table)
        op.drop_column(table, "secret_location")
    for table in ("tokens", "service_accounts"):
        op.drop_column(table, "workload")
    for table in ("tokens", "service_accounts", "api_credentials"):
        op.drop_column(table, "purpose")
