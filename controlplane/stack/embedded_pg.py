"""The embedded Postgres that ``make up`` and the tests use when ``DATABASE_URL`` is not set.

It is a real PostgreSQL server (shipped by the ``pgserver`` wheel), listening on a Unix socket next
to its data directory; the data survives restarts, so a second ``make up`` finds its tokens again.
"""

from __future__ import annotations

import asyncio
import warnings
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

# pgserver asks platformdirs for a runtime directory at import; without XDG_RUNTIME_DIR (CI, ssh) it
# warns and falls back to /tmp, which is what we want anyway.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    import pgserver

DATABASE = "keyward"
#: The application's login role, created by migration 0002 (append-only on audit tables).
APP_ROLE = "keyward_app"


def with_user(url: str, user: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}@{host}"))


class EmbeddedPostgres:
    def __init__(self, data_dir: Path) -> None:
        self._data_dir = data_dir
        self._server: pgserver.PostgresServer | None = None

    def start(self) -> str:
        """Start (or attach to) the server and return a URL for the ``keyward`` database."""
        self._data_dir.mkdir(parents=True, exist_ok=True)
        self._server = pgserver.get_server(self._data_dir, cleanup_mode="stop")
        admin_url = self._server.get_uri()
        asyncio.run(_ensure_database(admin_url))
        parts = urlsplit(admin_url)
        return urlunsplit(parts._replace(path=f"/{DATABASE}"))

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None


async def _ensure_database(admin_url: str) -> None:
    connection = await asyncpg.connect(admin_url)
    try:
        exists = await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DATABASE)
        if not exists:
            await connection.execute(f'CREATE DATABASE "{DATABASE}"')
    finally:
        await connection.close()
