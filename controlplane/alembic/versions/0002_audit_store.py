"""The audit store: request records and outcomes (monthly partitions), hash chains, append-only role.

* ``request_records``: one row per gateway request (the authz decision, or Envoy's own answer when
  the request never reached authz). ``request_outcomes``: what happened after the decision (status,
  latency, bytes, token usage), from Envoy's gRPC access log. Both are partitioned by month of
  ``stored_at``, the time of ingest. Ingest order is chain order, so dropping the oldest partition
  removes a prefix of the chain, never a record from its middle (records that arrive late, after a
  control-plane outage, would otherwise sit in an old month between newer ones).
* Every audit table is a hash chain: ``seq`` orders it, ``hash = sha256(prev_hash || record)``;
  ``audit_checkpoints`` pins the chain head at intervals and anchors it across retention.
* The application connects as ``keyward_app``, which may INSERT and SELECT audit tables and nothing
  more: no UPDATE, DELETE or TRUNCATE. Partitions are created through a SECURITY DEFINER function.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

APP_ROLE = "keyward_app"
AUDIT_TABLES = ("events", "request_records", "request_outcomes", "audit_checkpoints")


def _chain_columns() -> list[sa.Column]:
    return [
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("prev_hash", sa.LargeBinary, nullable=False),
        sa.Column("hash", sa.LargeBinary, nullable=False),
    ]


def upgrade() -> None:
    ts = sa.DateTime(timezone=True)
    op.execute(
        """
        CREATE TABLE request_records (
            seq bigint NOT NULL,
            at timestamptz NOT NULL,
            request_id text NOT NULL,
            source text NOT NULL CHECK (source IN ('authz', 'envoy')),
            token_id uuid,
            user_id uuid,
            user_email text,
            team text,
            environment text,
            provider text,
            method text,
            route text,
            model text,
            decision text NOT NULL,
            status integer,
            prev_hash bytea NOT NULL,
            hash bytea NOT NULL,
            stored_at timestamptz NOT NULL DEFAULT clock_timestamp()
        ) PARTITION BY RANGE (stored_at)
        """
    )
    op.execute(
        """
        CREATE TABLE request_outcomes (
            seq bigint NOT NULL,
            at timestamptz NOT NULL,
            request_id text NOT NULL,
            status integer NOT NULL,
            upstream_status integer,
            response_flags text,
            details text,
            duration_ms integer,
            upstream_ms integer,
            bytes_in bigint,
            bytes_out bigint,
            prompt_tokens integer,
            completion_tokens integer,
            prev_hash bytea NOT NULL,
            hash bytea NOT NULL,
            stored_at timestamptz NOT NULL DEFAULT clock_timestamp()
        ) PARTITION BY RANGE (stored_at)
        """
    )
    for table in ("request_records", "request_outcomes"):
        op.execute(f"CREATE INDEX {table}_at ON {table} (at)")
        op.execute(f"CREATE INDEX {table}_seq ON {table} (seq)")
        op.execute(f"CREATE INDEX {table}_stored ON {table} (stored_at)")
        op.execute(f"CREATE INDEX {table}_request ON {table} (request_id)")
    op.execute("CREATE INDEX request_records_user_at ON request_records (user_id, at)")
    op.execute("CREATE INDEX request_records_team_at ON request_records (team, at)")
    op.execute("CREATE INDEX request_records_token_at ON request_records (token_id, at)")

    op.create_table(
        "audit_checkpoints",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("chain", sa.Text, nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("hash", sa.LargeBinary, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("at", ts, nullable=False, server_default=sa.text("clock_timestamp()")),
        sa.CheckConstraint("kind IN ('periodic', 'retention')", name="audit_checkpoints_kind"),
    )
    op.create_index("audit_checkpoints_chain", "audit_checkpoints", ["chain", "seq"])

    # The events table joins the chain; rows written before this migration are chained in id order.
    for column in _chain_columns():
        op.add_column("events", sa.Column(column.name, column.type, nullable=True))
    _chain_existing_events()
    for name in ("seq", "prev_hash", "hash"):
        op.alter_column("events", name, nullable=False)
    op.create_index("events_seq", "events", ["seq"], unique=True)
    op.create_index("events_actor_at", "events", ["actor", "at"])

    # Partitions are created on demand by the ingest path through this function, which runs with
    # the owner's rights so the application role itself never needs CREATE.
    op.execute(
        """
        CREATE FUNCTION keyward_ensure_audit_partition(month date) RETURNS void
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
        DECLARE
            first date := date_trunc('month', month)::date;
            next date := (date_trunc('month', month) + interval '1 month')::date;
            suffix text := to_char(first, 'YYYY_MM');
            parent text;
        BEGIN
            FOREACH parent IN ARRAY ARRAY['request_records', 'request_outcomes'] LOOP
                IF to_regclass(parent || '_' || suffix) IS NULL THEN
                    EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                                   parent || '_' || suffix, parent, first, next);
                END IF;
            END LOOP;
        END $$
        """
    )
    op.execute(
        "SELECT keyward_ensure_audit_partition((date_trunc('month', now()) + make_interval(months => m))::date) "
        "FROM generate_series(-1, 2) AS m"
    )

    # The append-only application role.
    op.execute(
        f"""
        DO $$ BEGIN
            IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{APP_ROLE}') THEN
                CREATE ROLE {APP_ROLE} LOGIN;
            END IF;
        END $$
        """
    )
    op.execute(f"DO $$ BEGIN EXECUTE format('GRANT CONNECT ON DATABASE %I TO {APP_ROLE}', current_database()); END $$")
    op.execute(f"GRANT USAGE ON SCHEMA public TO {APP_ROLE}")
    op.execute(f"GRANT SELECT, INSERT, UPDATE ON users, tokens TO {APP_ROLE}")
    op.execute(f"GRANT SELECT ON alembic_version TO {APP_ROLE}")
    for table in AUDIT_TABLES:
        op.execute(f"REVOKE ALL ON {table} FROM {APP_ROLE}")
        op.execute(f"GRANT SELECT, INSERT ON {table} TO {APP_ROLE}")
    op.execute(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {APP_ROLE}")
    op.execute("REVOKE ALL ON FUNCTION keyward_ensure_audit_partition(date) FROM PUBLIC")
    op.execute(f"GRANT EXECUTE ON FUNCTION keyward_ensure_audit_partition(date) TO {APP_ROLE}")


def _chain_existing_events() -> None:
    # Imported here: the chain's definition lives with the code that writes and verifies it.
    from controlplane.audit.chain import EVENTS, GENESIS, link

    connection = op.get_bind()
    rows = connection.execute(
        sa.text(
            "SELECT id, at, actor, mechanism, action, target_type, target_id, before, after FROM events ORDER BY id"
        )
    ).mappings().all()
    previous = GENESIS
    for seq, row in enumerate(rows, start=1):
        record = dict(row) | {"seq": seq}
        digest = link(EVENTS, previous, record)
        connection.execute(
            sa.text("UPDATE events SET seq = :seq, prev_hash = :prev, hash = :hash WHERE id = :id"),
            {"seq": seq, "prev": previous, "hash": digest, "id": row["id"]},
        )
        previous = digest


def downgrade() -> None:
    for table in AUDIT_TABLES:
        op.execute(f"REVOKE ALL ON {table} FROM {APP_ROLE}")
    op.execute("DROP FUNCTION keyward_ensure_audit_partition(date)")
    op.drop_index("events_actor_at", "events")
    op.drop_index("events_seq", "events")
    for name in ("seq", "prev_hash", "hash"):
        op.drop_column("events", name)
    op.drop_table("audit_checkpoints")
    op.execute("DROP TABLE request_outcomes")
    op.execute("DROP TABLE request_records")
