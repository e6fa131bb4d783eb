"""The embedded Postgres that ``make up`` and the tests use when ``DATABASE_URL`` is not set.

It is a real PostgreSQL server (the binaries of the ``pgserver`` wheel), listening only on a Unix
socket next to its data directory; the data survive restarts, so a second ``make up`` finds its tokens
again.

The server runs in the foreground as a child of the stack runner (not daemonised by ``pg_ctl``), so the
runner watches it, restarts it when it dies and takes it down when it dies itself, like every other
child. When the runner is root, Postgres runs as the unprivileged ``pgserver`` user, as the wheel does.

Every role logs in with a password (SCRAM-SHA-256), the Unix socket included: the application's
role cannot become the owner just by asking, and no other local user gets in. The runner keeps both
passwords with its other secrets. A cluster created by an earlier version (``trust``) is moved to
passwords at its next start (:meth:`require_passwords`).

A postmaster of this data directory that is *not* the runner's child (left by an earlier version of
the runner, or restarted by hand with ``pg_ctl``) is stopped before ours starts (:meth:`clear_foreign`),
and again when the stack stops: it is recognised by ``postmaster.pid`` and by ``/proc``: the process's
working directory is the data directory and its command is ``postgres``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg

from controlplane.stack.supervisor import cmdline, pid_alive, terminate

DATABASE = "keyward"
#: The application's login role, created by migration 0002 (append-only on audit tables).
APP_ROLE = "keyward_app"
_SYSTEM_USER = "pgserver"
_SUPERUSER = "postgres"
#: sun_path is 108 bytes; keep room for "/.s.PGSQL.5432".
_MAX_SOCKET_DIR = 90


def _bin(name: str) -> str:
    """A PostgreSQL binary of the pgserver wheel (found without importing pgserver, which warns at
    import and registers atexit hooks that stop servers)."""
    spec = importlib.util.find_spec("pgserver")
    if spec is None or spec.origin is None:
        raise RuntimeError("the pgserver wheel is not installed")
    return str(Path(spec.origin).parent / "pginstall" / "bin" / name)


def with_user(url: str, user: str, password: str | None = None) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    login = f"{user}:{quote(password, safe='')}" if password else user
    return urlunsplit(parts._replace(netloc=f"{login}@{host}"))


_HBA = """\
# Written by Keyward's stack runner: every role logs in with a password, on the Unix socket only.
local all all scram-sha-256
"""


class EmbeddedPostgres:
    def __init__(self, data_dir: Path, *, password: str, app_password: str) -> None:
        self.data_dir = data_dir.resolve()
        #: The superuser's password, and the application role's.
        self.password = password
        self.app_password = app_password
        self.user: int | None = None
        self.group: int | None = None
        self.socket_dir = self.data_dir
        self._temporary_socket_dir = False

    # -- preparation (once, before the first start) ---------------------------------------------------

    def prepare(self) -> None:
        """Create the cluster if needed and decide who runs it and where its socket lives."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            entry = _system_user()
            self.user, self.group = entry.pw_uid, entry.pw_gid
            _open_path_to(self.data_dir)
            _open_path_to(Path(_bin("initdb")))  # the wheel's binaries, wherever the checkout lives
            os.chown(self.data_dir, self.user, self.group)
        if len(str(self.data_dir)) > _MAX_SOCKET_DIR:
            # Too long a path for a socket: a fresh private directory in the temporary directory.
            self.socket_dir = Path(tempfile.mkdtemp(prefix="keyward-pg-"))
            self._temporary_socket_dir = True
            if self.user is not None:
                os.chown(self.socket_dir, self.user, self.group or -1)
        self._trusting = False
        if not (self.data_dir / "PG_VERSION").exists():
            with tempfile.NamedTemporaryFile("w", prefix="keyward-pw-", delete=False) as handle:
                handle.write(self.password + "\n")
            os.chmod(handle.name, 0o600)
            if self.user is not None:
                os.chown(handle.name, self.user, self.group or -1)
            try:
                done = subprocess.run(
                    [_bin("initdb"), "-D", str(self.data_dir), "--auth=scram-sha-256", "--auth-local=scram-sha-256",
                     f"--pwfile={handle.name}", "--encoding=utf8", "-U", _SUPERUSER],
                    capture_output=True, text=True, user=self.user, group=self.group,
                    extra_groups=[] if self.group is not None else None, check=False,
                )
            finally:
                os.unlink(handle.name)
            if done.returncode != 0:
                raise RuntimeError(f"initdb failed for {self.data_dir}: {done.stderr.strip()[-2000:]}")
        self._trusting = "trust" in _rules(self.data_dir / "pg_hba.conf")

    @property
    def argv(self) -> list[str]:
        # No TCP listener at all ("-h ''"): only the Unix socket in socket_dir.
        return [_bin("postgres"), "-D", str(self.data_dir), "-k", str(self.socket_dir), "-h", "",
                "-c", "logging_collector=off"]

    def url(self, database: str = DATABASE) -> str:
        return f"postgresql://{_SUPERUSER}:{quote(self.password, safe='')}@/{database}?host={self.socket_dir}"

    def app_url(self, database: str = DATABASE) -> str:
        return with_user(self.url(database), APP_ROLE, self.app_password)

    def require_passwords(self, pid: int) -> None:
        """Move a cluster an earlier version created with ``trust`` to passwords: set the superuser's
        (while trust still lets the runner in), then require SCRAM for everyone and reload."""
        if not self._trusting:
            return
        trusted = f"postgresql://{_SUPERUSER}@/{_SUPERUSER}?host={self.socket_dir}"
        asyncio.run(_set_password(trusted, _SUPERUSER, self.password))
        hba = self.data_dir / "pg_hba.conf"
        hba.write_text(_HBA)
        if self.user is not None:
            os.chown(hba, self.user, self.group or -1)
        os.kill(pid, signal.SIGHUP)
        self._trusting = False

    def set_app_password(self) -> None:
        """Give the application's role (created by the migrations) its password."""
        asyncio.run(_set_password(self.url(), APP_ROLE, self.app_password))

    # -- running ---------------------------------------------------------------------------------

    def ready(self, pid: int) -> bool:
        """Whether the postmaster ``pid`` says (in ``postmaster.pid``) that it accepts connections."""
        lines = _postmaster_lines(self.data_dir)
        return lines is not None and len(lines) >= 8 and lines[0].strip() == str(pid) and lines[7].strip() == "ready"

    def ensure_database(self) -> None:
        asyncio.run(_ensure_database(self.url(_SUPERUSER)))

    def foreign_postmaster(self, own: int | None = None) -> int | None:
        """The pid of a running postmaster of this data directory other than ``own``."""
        lines = _postmaster_lines(self.data_dir)
        if not lines or not lines[0].strip().isdigit():
            return None
        pid = int(lines[0])
        if pid == own or not _is_postmaster_of(pid, self.data_dir):
            return None
        return pid

    def cleanup(self) -> None:
        """Remove the temporary socket directory, if one was made (the server must be stopped)."""
        if self._temporary_socket_dir:
            shutil.rmtree(self.socket_dir, ignore_errors=True)

    def clear_foreign(self, own: int | None = None, timeout: float = 20) -> int | None:
        """Stop a postmaster of this data directory that is not ours (fast shutdown); its pid, if any."""
        pid = self.foreign_postmaster(own)
        if pid is not None:
            terminate(pid, signal.SIGINT, timeout)
        return pid


def _postmaster_lines(data_dir: Path) -> list[str] | None:
    try:
        return (data_dir / "postmaster.pid").read_text().splitlines()
    except OSError:
        return None


def _is_postmaster_of(pid: int, data_dir: Path) -> bool:
    if not pid_alive(pid):
        return False
    argv = cmdline(pid) or []
    try:
        cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return False
    return bool(argv) and Path(argv[0]).name == "postgres" and cwd == data_dir


def _system_user() -> pwd.struct_passwd:
    """The unprivileged user Postgres runs as when the runner is root (what the pgserver wheel uses)."""
    try:
        return pwd.getpwnam(_SYSTEM_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "-s", "/usr/sbin/nologin", _SYSTEM_USER],
                       check=True, capture_output=True)
        return pwd.getpwnam(_SYSTEM_USER)


def _open_path_to(path: Path) -> None:
    """Let the Postgres user traverse every directory above ``path`` (o+x only: no listing)."""
    for parent in path.parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)


def _rules(hba: Path) -> set[str]:
    """The authentication methods ``pg_hba.conf`` names."""
    methods = set()
    for line in hba.read_text().splitlines():
        fields = line.split("#", 1)[0].split()
        if fields:
            methods.add(fields[-1])
    return methods


async def _set_password(url: str, role: str, password: str) -> None:
    connection = await asyncpg.connect(url)
    try:
        # A literal, not a parameter (ALTER ROLE takes none): quoted by the server's own quote_literal.
        literal = await connection.fetchval("SELECT quote_literal($1)", password)
        await connection.execute(f'ALTER ROLE "{role}" PASSWORD {literal}')
    finally:
        await connection.close()


async def _ensure_database(admin_url: str) -> None:
    connection = await asyncpg.connect(admin_url)
    try:
        exists = await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DATABASE)
        if not exists:
            await connection.execute(f'CREATE DATABASE "{DATABASE}"')
    finally:
        await connection.close()
