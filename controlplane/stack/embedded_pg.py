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

Its log is in Keyward's schema (:mod:`authz.logs`, ``"process": "postgres"``): Postgres 16 writes
``jsonlog`` (``log_destination = 'jsonlog'``), which needs its logging collector, and the collector
writes files itself, past the runner's redactor. So the collector's two files in ``<pgdata>/log``
(``postgres.json``, and ``postgres.log`` for output that is not a log message) are FIFOs the runner
reads (:meth:`EmbeddedPostgres.pump_logs`) into ``<logs>/postgres.log`` through the redactor, each
jsonlog object reshaped into the schema (:func:`log_line`: ``time``, ``level``, ``event`` = its message,
and its ``pid``, ``backend_type``, ``state_code``, ``detail``, ``hint``, ``statement``…). The postmaster's
own stderr, the lines it writes before the collector takes over, are reshaped too. Rotation is off
(the file is the runner's). The runner holds each FIFO open for writing as well, so a Postgres restart
is no end of file, and closes it in :meth:`EmbeddedPostgres.cleanup`.

A postmaster of this data directory that is *not* the runner's child (left by an earlier version of
the runner, or restarted by hand with ``pg_ctl``) is stopped before ours starts (:meth:`clear_foreign`),
and again when the stack stops: it is recognised by ``postmaster.pid`` and by ``/proc``: the process's
working directory is the data directory and its command is ``postgres``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg

from authz.logs import json_line
from controlplane.stack.redact import LogFile
from controlplane.stack.supervisor import cmdline, pid_alive, terminate

DATABASE = "keyward"
#: The application's login role, created by migration 0002 (append-only on audit tables).
APP_ROLE = "keyward_app"
_SYSTEM_USER = "pgserver"
_SUPERUSER = "postgres"
#: sun_path is 108 bytes; keep room for "/.s.PGSQL.5432".
_MAX_SOCKET_DIR = 90
#: The logging collector's files (in <pgdata>/log): jsonlog takes log_filename's name with ".json".
_LOG_NAMES = ("postgres.log", "postgres.json")
_SEVERITY = {"DEBUG1": "debug", "DEBUG2": "debug", "DEBUG3": "debug", "DEBUG4": "debug", "DEBUG5": "debug",
             "LOG": "info", "INFO": "info", "NOTICE": "info", "WARNING": "warning", "ERROR": "error",
             "FATAL": "critical", "PANIC": "critical", "DETAIL": "info", "HINT": "info", "STATEMENT": "info",
             "CONTEXT": "info"}
#: jsonlog fields carried over, besides the message, its severity and its time.
_FIELDS = ("pid", "backend_type", "state_code", "user", "dbname", "application_name", "detail", "hint",
           "context", "statement", "internal_query")
#: A line of the postmaster's stderr before the collector starts: '%m [%p] ' then "SEVERITY:  message".
_STDERR_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?) (\S+) \[(\d+)\] ([A-Z0-9]+):\s+(.*)$")


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
        self._log_writers: list[int] = []
        self._log_pumps: list[threading.Thread] = []

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
                "-c", "logging_collector=on", "-c", "log_destination=jsonlog",
                "-c", f"log_directory={self.log_dir}", "-c", f"log_filename={_LOG_NAMES[0]}",
                "-c", "log_rotation_age=0", "-c", "log_rotation_size=0", "-c", "log_truncate_on_rotation=off",
                "-c", "log_timezone=UTC"]

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "log"

    def pump_logs(self, log: LogFile) -> None:
        """Copy Postgres's log into ``log`` in the schema: the collector's FIFOs (made here, each read by a
        thread) and the postmaster's stderr (``log``'s shape). Call once, before the first start."""
        log.shape = log_line
        self.log_dir.mkdir(mode=0o700, exist_ok=True)
        if self.user is not None:
            os.chown(self.log_dir, self.user, self.group or -1)
        for name in _LOG_NAMES:
            path = self.log_dir / name
            if path.is_symlink() or (path.exists() and not stat.S_ISFIFO(path.stat().st_mode)):
                path.unlink()
            if not path.exists():
                os.mkfifo(path, 0o600)
                if self.user is not None:
                    os.chown(path, self.user, self.group or -1)
            reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            self._log_writers.append(os.open(path, os.O_WRONLY | os.O_CLOEXEC))  # no EOF between restarts
            os.set_blocking(reader, True)
            self._log_pumps.append(log.pump(os.fdopen(reader, "rb"), f"postgres-{name}"))

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
        """Remove the temporary socket directory, if one was made, and end the log pumps once they have
        copied what the collector wrote (the server must be stopped)."""
        if self._temporary_socket_dir:
            shutil.rmtree(self.socket_dir, ignore_errors=True)
        for fd in self._log_writers:
            os.close(fd)
        self._log_writers.clear()
        for pump in self._log_pumps:
            pump.join(2)
        self._log_pumps.clear()

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


def log_line(raw: bytes) -> bytes:
    """One line of Postgres's log (a jsonlog object, or a line of its stderr) as a line of the schema.
    Never raises: what it cannot read becomes the ``event`` of an ``info`` line; a blank line is dropped."""
    text = raw.decode("utf-8", "replace").rstrip("\r\n")
    if not text.strip():
        return b""
    try:
        line = _shaped(text)
    except Exception:  # a shape must not raise: the line is kept as text
        line = None
    return (line or json_line("postgres", text)).encode() + b"\n"


def _shaped(text: str) -> str | None:
    entry = json.loads(text) if text.startswith("{") else None
    if isinstance(entry, dict) and "error_severity" in entry:
        severity = str(entry.get("error_severity"))
        fields = {key: entry[key] for key in _FIELDS if entry.get(key) not in (None, "", "00000")}
        return json_line("postgres", str(entry.get("message", "")), level=_SEVERITY.get(severity, "info"),
                         time=_rfc3339(str(entry.get("timestamp", ""))), severity=severity, **fields)
    found = _STDERR_LINE.match(text)
    if found:
        stamp, zone, pid, severity, message = found.groups()
        return json_line("postgres", message, level=_SEVERITY.get(severity, "info"),
                         time=_rfc3339(f"{stamp} {zone}"), severity=severity, pid=int(pid))
    return None


def _rfc3339(stamp: str) -> str | None:
    """Postgres's ``2025-06-01 12:00:00.123 UTC`` (log_timezone is UTC) in RFC 3339; None if unreadable."""
    moment, _, zone = stamp.rpartition(" ")
    if zone not in ("UTC", "GMT"):
        return None
    for pattern in ("%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%d %H:%M:%S"):
        try:
            parsed = datetime.strptime(moment, pattern).replace(tzinfo=UTC)
        except ValueError:
            continue
        return parsed.isoformat(timespec="microseconds").replace("+00:00", "Z")
    return None
