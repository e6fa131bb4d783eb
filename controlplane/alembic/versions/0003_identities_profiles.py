"""Teams, memberships, access profiles, service accounts, admin credentials; tokens belong to a team.

The rule for a token's effective policy (documented in the README): a token acts for exactly one
team and gets that team's access profile. Its owner must be a member of that team (users) or be
owned by it (service accounts), and the token's own model list can only narrow the profile.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

import json

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

APP_ROLE = "keyward_app"
_NOW = sa.text("now()")

STARTER_PROFILES = [
    {
        "name": "Experiment",
        "description": "Any model, for trying things out on laptops and in CI; short-lived tokens.",
        "catalog": [{"provider": "*", "pattern": "*", "environments": None}],
        "environments": ["dev", "ci"],
        "default_token_days": 30,
        "max_token_days": 90,
        "dormant_disable_days": 30,
    },
    {
        "name": "Production",
        "description": "The models approved for products; reasoning models only in prod.",
        "catalog": [
            {"provider": "openai", "pattern": "gpt-4o*", "environments": None},
            {"provider": "openai", "pattern": "gpt-4.1*", "environments": None},
            {"provider": "openai", "pattern": "text-embedding-3-*", "environments": None},
            {"provider": "openai", "pattern": "o3*", "environments": ["prod"]},
            {"provider": "anthropic", "pattern": "claude-*", "environments": None},
        ],
        "environments": ["dev", "staging", "prod", "ci"],
        "default_token_days": 90,
        "max_token_days": 365,
        "dormant_disable_days": None,
    },
    {
        "name": "Restricted",
        "description": "Small, cheap models only, for contractors and new joiners.",
        "catalog": [
            {"provider": "openai", "pattern": "gpt-4o-mini", "environments": None},
            {"provider": "openai", "pattern": "text-embedding-3-small", "environments": None},
            {"provider": "anthropic", "pattern": "claude-haiku-*", "environments": None},
        ],
        "environments": ["dev", "staging"],
        "default_token_days": 7,
        "max_token_days": 30,
        "dormant_disable_days": 14,
    },
]


def upgrade() -> None:
    ts = sa.DateTime(timezone=True)
    uuid = pg.UUID(as_uuid=True)
    op.create_table(
        "access_profiles",
        sa.Column("id", uuid, primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("description", sa.Text),
        sa.Column("catalog", pg.JSONB, nullable=False),
        sa.Column("environments", pg.ARRAY(sa.Text), nullable=False),
        sa.Column("default_token_days", sa.Integer, nullable=False),
        sa.Column("max_token_days", sa.Integer, nullable=False),
        sa.Column("dormant_disable_days", sa.Integer),
        # Room for the limits issue: enforced there, stored here.
        sa.Column("rate_limit_rpm", sa.Integer),
        sa.Column("monthly_budget_usd", sa.Numeric(12, 2)),
        sa.Column("created_at", ts, nullable=False, server_default=_NOW),
        sa.Column("updated_at", ts, nullable=False, server_default=_NOW),
        sa.CheckConstraint("default_token_days > 0 AND default_token_days <= max_token_days", name="profile_days"),
    )
    op.create_index("access_profiles_name", "access_profiles", [sa.text("lower(name)")], unique=True)
    op.create_table(
        "teams",
        sa.Column("id", uuid, primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("description", sa.Text),
        sa.Column("profile_id", uuid, sa.ForeignKey("access_profiles.id")),
        sa.Column("external_id", sa.Text),
        sa.Column("created_at", ts, nullable=False, server_default=_NOW),
        sa.Column("updated_at", ts, nullable=False, server_default=_NOW),
    )
    op.create_index("teams_name", "teams", [sa.text("lower(name)")], unique=True)
    op.create_index("teams_created", "teams", ["created_at", "id"])
    op.create_table(
        "memberships",
        sa.Column("team_id", uuid, sa.ForeignKey("teams.id"), primary_key=True),
        sa.Column("user_id", uuid, sa.ForeignKey("users.id"), primary_key=True),
        sa.Column("role", sa.String(16), nullable=False, server_default="member"),
        sa.Column("created_at", ts, nullable=False, server_default=_NOW),
        sa.CheckConstraint("role IN ('member', 'owner')", name="memberships_role"),
    )
    op.create_index("memberships_user", "memberships", ["user_id"])
    op.create_table(
        "service_accounts",
        sa.Column("id", uuid, primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("description", sa.Text),
        sa.Column("team_id", uuid, sa.ForeignKey("teams.id"), nullable=False),
        sa.Column("business_owner_id", uuid, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("technical_owner_id", uuid, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("status", sa.String(16), nullable=False, server_default="active"),
        sa.Column("created_at", ts, nullable=False, server_default=_NOW),
        sa.Column("updated_at", ts, nullable=False, server_default=_NOW),
        sa.CheckConstraint("status IN ('active', 'disabled')", name="service_accounts_status"),
    )
    op.create_index("service_accounts_name", "service_accounts", ["team_id", sa.text("lower(name)")], unique=True)
    op.create_index("service_accounts_created", "service_accounts", ["created_at", "id"])
    op.create_table(
        "api_credentials",
        sa.Column("id", uuid, primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("team_id", uuid, sa.ForeignKey("teams.id")),
        sa.Column("user_id", uuid, sa.ForeignKey("users.id")),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("hint", sa.Text, nullable=False),
        sa.Column("created_by", sa.Text, nullable=False),
        sa.Column("created_at", ts, nullable=False, server_default=_NOW),
        sa.Column("expires_at", ts),
        sa.Column("last_used_at", ts),
        sa.Column("revoked_at", ts),
        sa.CheckConstraint("role IN ('admin', 'auditor', 'finance', 'owner')", name="api_credentials_role"),
        sa.CheckConstraint("(role = 'owner') = (team_id IS NOT NULL)", name="api_credentials_owner_team"),
    )
    op.create_index("api_credentials_created", "api_credentials", ["created_at", "id"])

    # Tokens: owned by a user or a service account, acting for one team.
    op.add_column("tokens", sa.Column("team_id", uuid, sa.ForeignKey("teams.id")))
    op.add_column("tokens", sa.Column("service_account_id", uuid, sa.ForeignKey("service_accounts.id")))
    op.add_column("tokens", sa.Column("expired_recorded_at", ts))
    op.alter_column("tokens", "user_id", nullable=True)
    op.execute(
        "INSERT INTO teams (id, name) SELECT gen_random_uuid(), team FROM tokens WHERE team IS NOT NULL "
        "GROUP BY team ON CONFLICT DO NOTHING"
    )
    op.execute("UPDATE tokens SET team_id = teams.id FROM teams WHERE lower(teams.name) = lower(tokens.team)")
    op.execute("DROP TRIGGER tokens_notify ON tokens")  # it watches the column dropped next
    op.drop_column("tokens", "team")
    op.create_check_constraint(
        "tokens_one_owner", "tokens", "(user_id IS NULL) <> (service_account_id IS NULL)"
    )
    op.create_index("tokens_team", "tokens", ["team_id"])
    op.create_index("tokens_service_account", "tokens", ["service_account_id"])
    op.create_index("tokens_last_used", "tokens", ["last_used_at"])

    # Changes that alter decisions notify authz, like tokens and users already do.
    op.execute(
        """
        CREATE TRIGGER tokens_notify
        AFTER INSERT OR DELETE OR UPDATE OF token_hash, user_id, service_account_id, team_id, environment, models,
            expires_at, revoked_at
        ON tokens FOR EACH ROW EXECUTE FUNCTION keyward_notify_change('token')
        """
    )
    for table, kind, columns in (
        ("teams", "team", "profile_id, name"),
        ("access_profiles", "profile", "catalog, environments"),
        ("service_accounts", "sa", "status, team_id, name"),
    ):
        op.execute(
            f"CREATE TRIGGER {table}_notify AFTER UPDATE OF {columns} ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION keyward_notify_change('{kind}')"
        )
    # authz caches compiled profiles by (id, updated_at): every change, by any path, gets a new stamp.
    op.execute(
        """
        CREATE FUNCTION keyward_touch_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            NEW.updated_at := clock_timestamp();
            RETURN NEW;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER access_profiles_touch BEFORE UPDATE ON access_profiles "
        "FOR EACH ROW EXECUTE FUNCTION keyward_touch_updated_at()"
    )
    op.execute(
        """
        CREATE FUNCTION keyward_notify_membership() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('keyward_changes',
                'member:' || COALESCE(NEW.user_id, OLD.user_id)::text
                || ':' || COALESCE(NEW.team_id, OLD.team_id)::text);
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER memberships_notify AFTER INSERT OR DELETE ON memberships "
        "FOR EACH ROW EXECUTE FUNCTION keyward_notify_membership()"
    )

    profiles = sa.table(
        "access_profiles",
        sa.column("id", uuid), sa.column("name", sa.Text), sa.column("description", sa.Text),
        sa.column("catalog", pg.JSONB), sa.column("environments", pg.ARRAY(sa.Text)),
        sa.column("default_token_days", sa.Integer), sa.column("max_token_days", sa.Integer),
        sa.column("dormant_disable_days", sa.Integer),
    )
    import uuid as uuidlib

    op.bulk_insert(profiles, [{"id": uuidlib.uuid4(), **p} for p in json.loads(json.dumps(STARTER_PROFILES))])

    op.execute(
        f"GRANT SELECT, INSERT, UPDATE ON teams, access_profiles, service_accounts, api_credentials TO {APP_ROLE}"
    )
    op.execute(f"GRANT SELECT, INSERT, DELETE ON memberships TO {APP_ROLE}")


def downgrade() -> None:
    op.execute("DROP TRIGGER access_profiles_touch ON access_profiles")
    op.execute("DROP FUNCTION keyward_touch_updated_at()")
    op.execute("DROP TRIGGER memberships_notify ON memberships")
    op.execute("DROP FUNCTION keyward_notify_membership()")
    for table in ("teams", "access_profiles", "service_accounts"):
        op.execute(f"DROP TRIGGER {table}_notify ON {table}")
    op.add_column("tokens", sa.Column("team", sa.Text))
    op.execute("UPDATE tokens SET team = teams.name FROM teams WHERE teams.id = tokens.team_id")
    op.drop_constraint("tokens_one_owner", "tokens")
    for column in ("expired_recorded_at", "service_account_id", "team_id"):
        op.drop_column("tokens", column)
    for table in ("api_credentials", "service_accounts", "memberships", "teams", "access_profiles"):
        op.drop_table(table)
