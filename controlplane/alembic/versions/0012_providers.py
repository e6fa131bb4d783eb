"""More providers, endpoint-family permissions and the MCP tool catalog.

* ``access_profiles.endpoints``: the endpoint families a team's tokens may call (``chat``, ``embeddings``,
  ``files``, ``batches``, ``tools``, …). Profiles that exist keep exactly what the gateway served them
  until now (no images, audio, files, batches or tools: those arrive with this change and are granted
  by an admin, not by an upgrade).
* ``access_profiles.tools``: the MCP tool catalog, ``[{"server", "tools"}]`` (shell-style tool patterns).
* ``tokens.endpoints``: a token's own narrowing of its profile's families; null: the profile's.
* Catalog entries (JSON) may name the ``upstream`` that serves their models; no column changes for it.
* The NOTIFY triggers of tokens and access profiles fire on the new columns too, so a narrowing reaches
  every authz replica at once, like any other change to a decision.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

_SERVED_UNTIL_NOW = "{chat,responses,completions,embeddings,moderations,models,count_tokens}"


_TOKENS_WATCHED = "token_hash, user_id, service_account_id, team_id, environment, models, expires_at, revoked_at, " \
                 "project_id"
_PROFILES_WATCHED = "catalog, environments, budget_defaults, rate_limit_defaults"


def _triggers(token_columns: str, profile_columns: str) -> None:
    op.execute("DROP TRIGGER tokens_notify ON tokens")
    op.execute(f"CREATE TRIGGER tokens_notify AFTER INSERT OR DELETE OR UPDATE OF {token_columns} ON tokens "
               "FOR EACH ROW EXECUTE FUNCTION keyward_notify_change('token')")
    op.execute("DROP TRIGGER access_profiles_notify ON access_profiles")
    op.execute(f"CREATE TRIGGER access_profiles_notify AFTER UPDATE OF {profile_columns} ON access_profiles "
               "FOR EACH ROW EXECUTE FUNCTION keyward_notify_change('profile')")


def upgrade() -> None:
    op.add_column("access_profiles", sa.Column("endpoints", ARRAY(sa.Text), nullable=False,
                                               server_default=sa.text(f"'{_SERVED_UNTIL_NOW}'::text[]")))
    op.add_column("access_profiles", sa.Column("tools", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")))
    op.add_column("tokens", sa.Column("endpoints", ARRAY(sa.Text), nullable=True))
    _triggers(f"{_TOKENS_WATCHED}, endpoints", f"{_PROFILES_WATCHED}, endpoints, tools")


def downgrade() -> None:
    _triggers(_TOKENS_WATCHED, _PROFILES_WATCHED)
    op.drop_column("tokens", "endpoints")
    op.drop_column("access_profiles", "tools")
    op.drop_column("access_profiles", "endpoints")
