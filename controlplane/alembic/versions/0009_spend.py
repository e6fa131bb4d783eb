"""Spend control: projects, prices, budgets, rate limits, the counters authz enforces them with, and
what every request cost.

* ``projects`` belong to a team; a token (and a service account, as the default of its tokens) may
  carry one. Spend rolls up token -> user or service account -> project -> team.
* ``price_overrides`` replace the bundled price table (genai-prices) for a provider and model from a
  date on (negotiated prices, self-hosted models).
* ``budgets`` and ``rate_limits`` are set per scope (team, project, user, service account, token);
  ``access_profiles.budget_defaults`` / ``rate_limit_defaults`` give every scope under a team with
  that profile its default, per scope type. A change to any of them notifies authz (``limits``).
* ``usage_counters`` are what authz enforces with: requests, tokens and cost per scope, per day and
  per minute, which every authz replica adds its own deltas to and reads the others' from every few
  hundred milliseconds. Derived data, not audit: the audit store keeps each request's cost.
* ``spend_daily`` rolls the audit store's costs up per day and dimension at ingest, for ``/spend``.
* ``budget_alerts`` remembers which threshold of which budget period has been announced;
  ``notification_channels`` / ``notification_deliveries`` are where announcements go, and how each
  delivery went.
* The audit tables gain the request's project and the limit that refused it, and the outcome's cost
  (input, cached input, output, total), cached tokens, the price version and whether usage was
  estimated; hashed into the chain when set, so rows written before stay valid.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

import json

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

APP_ROLE = "keyward_app"
_NOW = sa.text("now()")
SCOPES = "('team', 'project', 'user', 'service_account', 'token')"

#: The seeded profiles' spend posture (issue: Experiment "modest monthly cap, hard stop", Production
#: "project-level budget, alerts then enforcement", Restricted "tight caps").
SEEDED = {
    "Experiment": (
        {"team": {"amount_usd": "200", "period": "month", "posture": "hard", "thresholds": [80, 100]}},
        {"token": {"rpm": 60, "tpm": 200_000}},
    ),
    "Production": (
        {"project": {"amount_usd": "2000", "period": "month", "posture": "alert_then_hard",
                     "thresholds": [50, 80, 100]},
         "team": {"amount_usd": "10000", "period": "month", "posture": "alert_then_hard",
                  "thresholds": [50, 80, 100]}},
        {"token": {"rpm": 600, "tpm": 2_000_000}},
    ),
    "Restricted": (
        {"user": {"amount_usd": "20", "period": "month", "posture": "hard", "thresholds": [80, 100]},
         "team": {"amount_usd": "100", "period": "month", "posture": "hard", "thresholds": [80, 100]}},
        {"token": {"rpm": 20, "tpm": 40_000}, "user": {"rpm": 30, "tpm": 60_000}},
    ),
}


def upgrade() -> None:
    ts = sa.DateTime(timezone=True)
    uuid = pg.UUID(as_uuid=True)
    money = sa.Numeric(20, 10)

    op.create_table(
        "projects",
        sa.Column("id", uuid, primary_key=True),
        sa.Column("team_id", uuid, sa.ForeignKey("teams.id"), nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("description", sa.Text),
        sa.Column("status", sa.String(16), nullable=False, server_default="open"),
        sa.Column("created_at", ts, nullable=False, server_default=_NOW),
        sa.Column("closed_at", ts),
        sa.CheckConstraint("status IN ('open', 'closed')", name="projects_status"),
    )
    op.create_index("projects_name", "projects", ["team_id", sa.text("lower(name)")], unique=True)
    op.create_index("projects_created", "projects", ["created_at", "id"])
    op.add_column("tokens", sa.Column("project_id", uuid, sa.ForeignKey("projects.id")))
    op.add_column("service_accounts", sa.Column("project_id", uuid, sa.ForeignKey("projects.id")))
    op.create_index("tokens_project", "tokens", ["project_id"])

    op.create_table(
        "price_overrides",
        sa.Column("id", uuid, primary_key=True),
        sa.Column("provider", sa.Text, nullable=False),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("input_per_mtok", sa.Numeric(14, 6), nullable=False),
        sa.Column("cached_input_per_mtok", sa.Numeric(14, 6)),
        sa.Column("output_per_mtok", sa.Numeric(14, 6), nullable=False),
        sa.Column("effective_from", ts, nullable=False),
        sa.Column("note", sa.Text),
        sa.Column("created_by", sa.Text, nullable=False),
        sa.Column("created_at", ts, nullable=False, server_default=_NOW),
        sa.CheckConstraint("input_per_mtok >= 0 AND output_per_mtok >= 0 "
                           "AND (cached_input_per_mtok IS NULL OR cached_input_per_mtok >= 0)",
                           name="price_overrides_non_negative"),
    )
    op.create_index("price_overrides_model", "price_overrides", ["provider", "model", "effective_from"])

    op.create_table(
        "budgets",
        sa.Column("id", uuid, primary_key=True),
        sa.Column("scope_type", sa.String(16), nullable=False),
        sa.Column("scope_id", uuid, nullable=False),
        sa.Column("amount_usd", sa.Numeric(14, 4), nullable=False),
        sa.Column("period", sa.String(8), nullable=False, server_default="month"),
        sa.Column("window_start", ts),
        sa.Column("window_end", ts),
        sa.Column("posture", sa.String(16), nullable=False),
        sa.Column("thresholds", pg.ARRAY(sa.Integer), nullable=False, server_default="{50,80,100}"),
        sa.Column("created_at", ts, nullable=False, server_default=_NOW),
        sa.Column("updated_at", ts, nullable=False, server_default=_NOW),
        sa.CheckConstraint(f"scope_type IN {SCOPES}", name="budgets_scope"),
        sa.CheckConstraint("amount_usd > 0", name="budgets_amount"),
        sa.CheckConstraint("period IN ('month', 'day', 'window')", name="budgets_period"),
        sa.CheckConstraint("posture IN ('hard', 'alert', 'alert_then_hard')", name="budgets_posture"),
        sa.CheckConstraint("(period = 'window') = (window_start IS NOT NULL AND window_end IS NOT NULL)"
                           " AND (window_end IS NULL OR window_end > window_start)", name="budgets_window"),
    )
    op.create_index("budgets_scope_key", "budgets", ["scope_type", "scope_id"], unique=True)

    op.create_table(
        "rate_limits",
        sa.Column("id", uuid, primary_key=True),
        sa.Column("scope_type", sa.String(16), nullable=False),
        sa.Column("scope_id", uuid, nullable=False),
        sa.Column("rpm", sa.Integer),
        sa.Column("tpm", sa.BigInteger),
        sa.Column("created_at", ts, nullable=False, server_default=_NOW),
        sa.Column("updated_at", ts, nullable=False, server_default=_NOW),
        sa.CheckConstraint(f"scope_type IN {SCOPES}", name="rate_limits_scope"),
        sa.CheckConstraint("(rpm IS NULL OR rpm > 0) AND (tpm IS NULL OR tpm > 0) "
                           "AND (rpm IS NOT NULL OR tpm IS NOT NULL)", name="rate_limits_values"),
    )
    op.create_index("rate_limits_scope_key", "rate_limits", ["scope_type", "scope_id"], unique=True)

    op.add_column("access_profiles", sa.Column("budget_defaults", pg.JSONB, nullable=False,
                                               server_default=sa.text("'{}'::jsonb")))
    op.add_column("access_profiles", sa.Column("rate_limit_defaults", pg.JSONB, nullable=False,
                                               server_default=sa.text("'{}'::jsonb")))
    # What the two stored-but-unenforced columns said becomes an enforced default.
    op.execute("""
        UPDATE access_profiles SET budget_defaults = jsonb_build_object('team', jsonb_build_object(
            'amount_usd', monthly_budget_usd::text, 'period', 'month', 'posture', 'hard',
            'thresholds', jsonb_build_array(80, 100)))
        WHERE monthly_budget_usd IS NOT NULL
    """)
    op.execute("""
        UPDATE access_profiles SET rate_limit_defaults = jsonb_build_object('token', jsonb_build_object(
            'rpm', rate_limit_rpm))
        WHERE rate_limit_rpm IS NOT NULL
    """)
    for name, (budgets, limits) in SEEDED.items():
        op.execute(sa.text("UPDATE access_profiles SET budget_defaults = CAST(:b AS jsonb), "
                           "rate_limit_defaults = CAST(:l AS jsonb) WHERE name = :n AND budget_defaults = '{}'::jsonb "
                           "AND rate_limit_defaults = '{}'::jsonb")
                   .bindparams(b=json.dumps(budgets), l=json.dumps(limits), n=name))
    op.drop_column("access_profiles", "rate_limit_rpm")
    op.drop_column("access_profiles", "monthly_budget_usd")

    op.create_table(
        "usage_counters",
        sa.Column("scope_type", sa.String(16), primary_key=True),
        sa.Column("scope_id", uuid, primary_key=True),
        sa.Column("bucket", sa.String(8), primary_key=True),
        sa.Column("bucket_start", ts, primary_key=True),
        sa.Column("requests", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("tokens", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("cost_usd", money, nullable=False, server_default="0"),
        sa.Column("updated_at", ts, nullable=False, server_default=sa.text("clock_timestamp()")),
        sa.CheckConstraint(f"scope_type IN {SCOPES}", name="usage_counters_scope"),
        sa.CheckConstraint("bucket IN ('day', 'minute')", name="usage_counters_bucket"),
    )
    op.create_index("usage_counters_updated", "usage_counters", ["updated_at"])
    op.create_index("usage_counters_bucket", "usage_counters", ["bucket", "bucket_start"])

    op.execute("""
        CREATE TABLE spend_daily (
            day date NOT NULL,
            provider text,
            model text,
            environment text,
            team_id uuid,
            project_id uuid,
            user_id uuid,
            service_account_id uuid,
            token_id uuid,
            requests bigint NOT NULL DEFAULT 0,
            input_tokens bigint NOT NULL DEFAULT 0,
            cached_tokens bigint NOT NULL DEFAULT 0,
            output_tokens bigint NOT NULL DEFAULT 0,
            cost_usd numeric(20, 10) NOT NULL DEFAULT 0,
            estimated_requests bigint NOT NULL DEFAULT 0,
            CONSTRAINT spend_daily_key UNIQUE NULLS NOT DISTINCT
                (day, provider, model, environment, team_id, project_id, user_id, service_account_id, token_id)
        )
    """)
    op.create_index("spend_daily_team", "spend_daily", ["team_id", "day"])
    op.create_index("spend_daily_user", "spend_daily", ["user_id", "day"])
    op.create_index("spend_daily_project", "spend_daily", ["project_id", "day"])

    op.create_table(
        "budget_alerts",
        sa.Column("scope_type", sa.String(16), primary_key=True),
        sa.Column("scope_id", uuid, primary_key=True),
        sa.Column("period_start", ts, primary_key=True),
        sa.Column("threshold", sa.Integer, primary_key=True),
        sa.Column("amount_usd", sa.Numeric(14, 4), nullable=False),
        sa.Column("spent_usd", money, nullable=False),
        sa.Column("reached_at", ts, nullable=False, server_default=_NOW),
    )
    op.create_table(
        "notification_channels",
        sa.Column("id", uuid, primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("signing_secret", sa.Text),
        sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("created_at", ts, nullable=False, server_default=_NOW),
        sa.CheckConstraint("kind IN ('slack', 'webhook')", name="notification_channels_kind"),
        sa.CheckConstraint("(kind = 'webhook') = (signing_secret IS NOT NULL)", name="notification_channels_secret"),
    )
    op.create_index("notification_channels_name", "notification_channels", [sa.text("lower(name)")], unique=True)
    op.create_table(
        "notification_deliveries",
        sa.Column("id", uuid, primary_key=True),
        sa.Column("channel_id", uuid, sa.ForeignKey("notification_channels.id"), nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("payload", pg.JSONB, nullable=False),
        sa.Column("status", sa.String(16), nullable=False, server_default="pending"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", ts, nullable=False, server_default=_NOW),
        sa.Column("last_error", sa.Text),
        sa.Column("created_at", ts, nullable=False, server_default=_NOW),
        sa.Column("delivered_at", ts),
        sa.CheckConstraint("status IN ('pending', 'delivered', 'failed')", name="notification_deliveries_status"),
    )
    op.create_index("notification_deliveries_due", "notification_deliveries", ["status", "next_attempt_at"])

    added: list[tuple[str, str, sa.types.TypeEngine]] = [
        ("request_records", "project_id", uuid), ("request_records", "project", sa.Text()),
        ("request_records", "limit_scope", sa.Text()),
        ("request_outcomes", "cached_tokens", sa.Integer()), ("request_outcomes", "cost_usd", money),
        ("request_outcomes", "cost_input_usd", money), ("request_outcomes", "cost_cached_usd", money),
        ("request_outcomes", "cost_output_usd", money), ("request_outcomes", "price_version", sa.Text()),
        ("request_outcomes", "usage_estimated", sa.Boolean()),
    ]
    for table, name, kind in added:
        op.add_column(table, sa.Column(name, kind))

    # authz reacts to every change of what limits a request.
    op.execute("""
        CREATE FUNCTION keyward_notify_limits() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('keyward_changes', 'limits:' || TG_TABLE_NAME);
            RETURN NULL;
        END $$
    """)
    for table in ("budgets", "rate_limits", "price_overrides"):
        op.execute(f"CREATE TRIGGER {table}_notify AFTER INSERT OR UPDATE OR DELETE ON {table} "
                   "FOR EACH STATEMENT EXECUTE FUNCTION keyward_notify_limits()")
    op.execute("DROP TRIGGER tokens_notify ON tokens")
    op.execute("""
        CREATE TRIGGER tokens_notify
        AFTER INSERT OR DELETE OR UPDATE OF token_hash, user_id, service_account_id, team_id, environment, models,
            expires_at, revoked_at, project_id
        ON tokens FOR EACH ROW EXECUTE FUNCTION keyward_notify_change('token')
    """)
    op.execute("DROP TRIGGER access_profiles_notify ON access_profiles")
    op.execute("CREATE TRIGGER access_profiles_notify AFTER UPDATE OF catalog, environments, budget_defaults, "
               "rate_limit_defaults ON access_profiles FOR EACH ROW EXECUTE FUNCTION keyward_notify_change('profile')")
    op.execute("CREATE TRIGGER projects_notify AFTER UPDATE OF status, team_id, name ON projects "
               "FOR EACH ROW EXECUTE FUNCTION keyward_notify_change('project')")

    op.execute(f"GRANT SELECT, INSERT, UPDATE ON projects, price_overrides, notification_channels, "
               f"notification_deliveries TO {APP_ROLE}")
    op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON budgets, rate_limits, usage_counters TO {APP_ROLE}")
    op.execute(f"GRANT SELECT, INSERT, UPDATE ON spend_daily TO {APP_ROLE}")
    op.execute(f"GRANT SELECT, INSERT ON budget_alerts TO {APP_ROLE}")


def downgrade() -> None:
    op.execute("DROP TRIGGER projects_notify ON projects")
    op.execute("DROP TRIGGER access_profiles_notify ON access_profiles")
    op.execute("CREATE TRIGGER access_profiles_notify AFTER UPDATE OF catalog, environments ON access_profiles "
               "FOR EACH ROW EXECUTE FUNCTION keyward_notify_change('profile')")
    op.execute("DROP TRIGGER tokens_notify ON tokens")
    op.execute("""
        CREATE TRIGGER tokens_notify
        AFTER INSERT OR DELETE OR UPDATE OF token_hash, user_id, service_account_id, team_id, environment, models,
            expires_at, revoked_at
        ON tokens FOR EACH ROW EXECUTE FUNCTION keyward_notify_change('token')
    """)
    for table in ("budgets", "rate_limits", "price_overrides"):
        op.execute(f"DROP TRIGGER {table}_notify ON {table}")
    op.execute("DROP FUNCTION keyward_notify_limits()")
    for column in ("cached_tokens", "cost_usd", "cost_input_usd", "cost_cached_usd", "cost_output_usd",
                   "price_version", "usage_estimated"):
        op.drop_column("request_outcomes", column)
    for column in ("project_id", "project", "limit_scope"):
        op.drop_column("request_records", column)
    op.add_column("access_profiles", sa.Column("rate_limit_rpm", sa.Integer))
    op.add_column("access_profiles", sa.Column("monthly_budget_usd", sa.Numeric(12, 2)))
    op.drop_column("access_profiles", "rate_limit_defaults")
    op.drop_column("access_profiles", "budget_defaults")
    for table in ("notification_deliveries", "notification_channels", "budget_alerts", "spend_daily",
                  "usage_counters", "rate_limits", "budgets", "price_overrides"):
        op.drop_table(table)
    op.drop_index("tokens_project", "tokens")
    op.drop_column("service_accounts", "project_id")
    op.drop_column("tokens", "project_id")
    op.drop_table("projects")
