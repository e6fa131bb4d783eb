"""The credential store: the config directory, its two files, and which credential a command uses.

``$KEYWARD_CONFIG_DIR`` (default ``~/.config/keyward``, created 0700) holds

* ``config.toml``: ``api_url`` and ``token``, written by ``keyward configure`` (0600). The older
  ``KEYWARD_CONFIG`` may name another path for this file;
* ``credentials.json``: the short-lived ``kw_cli_…`` credential ``keyward login`` stores (0600), with the
  API URL it is for, the e-mail, the role and the expiry.

A command that calls the API uses the first of these (:func:`resolve`):

1. a token in the environment: ``KEYWARD_API_TOKEN``, else ``KEYWARD_ADMIN_TOKEN``;
2. the ``keyward login`` credential, while it is live; when ``KEYWARD_API_URL`` is set, only one for
   that URL;
3. the token in ``config.toml``.

The API URL is ``KEYWARD_API_URL`` when set, else the one stored with that credential (``config.toml``'s
for a token from the environment), else ``http://127.0.0.1:8000``. A file holding a token that group or
others may read is refused, never used, and so is a file that is not what it should be. An expired
sign-in with nothing after it is a one-line error naming ``keyward login``. All of these exit 3.
"""

from __future__ import annotations

import json
import os
import stat
import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from controlplane.cli.output import Exit, fail
from controlplane.cli.settings import DEFAULT_API_URL, CliSettings, api_base

Source = Literal["environment", "login", "config", "argument", "none"]


@dataclass(frozen=True)
class Connection:
    """Where the API is and the credential for it, with where that credential came from."""

    url: str
    token: str | None
    #: environment (KEYWARD_API_TOKEN / KEYWARD_ADMIN_TOKEN), login (credentials.json), config
    #: (config.toml), argument (``keyward configure --token``), none (``keyward login`` before it has one).
    source: Source
    #: The variable or file it came from, and anything else worth saying about it.
    origin: str = ""

    def describe(self) -> str:
        """What ``keyward whoami`` says about the credential, e.g. ``login (~/.config/keyward/credentials.json)``."""
        return f"{self.source} ({self.origin})" if self.origin else self.source

    @property
    def hint(self) -> str:
        """What to do when the API answers 401."""
        return {"environment": f"check {self.origin}", "login": "run `keyward login` again",
                "config": f"check the token in {self.origin}, or run `keyward configure`",
                "argument": "check the token"}.get(self.source, "")


@dataclass(frozen=True)
class ConfigFile:
    path: Path
    api_url: str | None = None
    token: str | None = None


@dataclass(frozen=True)
class SignIn:
    """What ``keyward login`` stored."""

    path: Path
    api_url: str
    token: str
    email: str | None
    role: str | None
    expires_at: datetime | None

    @property
    def live(self) -> bool:
        return self.expires_at is None or self.expires_at > datetime.now(UTC)

    @property
    def until(self) -> str:
        return self.expires_at.astimezone(UTC).strftime("%Y-%m-%d %H:%MZ") if self.expires_at else "-"

    def connection(self) -> Connection:
        return Connection(self.api_url, self.token, "login", f"{self.path}, until {self.until}")


# -- precedence -----------------------------------------------------------------------------------


def resolve(settings: CliSettings, *, api_url: str | None = None) -> Connection:
    """The API URL and the credential a command uses (the module docstring gives the order)."""
    explicit = api_url or settings.api_url
    from_env = settings.env_token
    if from_env is not None:
        name, token = from_env
        url = explicit or read_config(settings.config_file).api_url or DEFAULT_API_URL
        return Connection(url, token, "environment", name)
    sign_in = read_sign_in(settings.credentials_file)
    ours = sign_in is not None and (explicit is None or sign_in.api_url == explicit)
    if sign_in is not None and ours and sign_in.live:
        return sign_in.connection()
    config = read_config(settings.config_file)
    if config.token:
        return Connection(explicit or config.api_url or DEFAULT_API_URL, config.token, "config", str(config.path))
    if sign_in is not None and ours:
        fail(f"your sign-in to {sign_in.api_url} expired at {sign_in.until}: run `keyward login`", Exit.CONNECTION)
    if sign_in is not None:
        fail(f"no API token for {explicit} (the `keyward login` credential is for {sign_in.api_url}); run "
             f"`keyward login --api-url {explicit}`, set KEYWARD_API_TOKEN, or run `keyward configure`",
             Exit.CONNECTION)
    fail("no API token: run `keyward login`, set KEYWARD_API_TOKEN (or KEYWARD_ADMIN_TOKEN), or run "
         "`keyward configure`", Exit.CONNECTION)


def signed_in(settings: CliSettings) -> SignIn:
    """The live ``keyward login`` credential (for ``keyward me``), or a one-line error."""
    sign_in = read_sign_in(settings.credentials_file)
    if sign_in is None:
        fail("not signed in: run `keyward login`", Exit.CONNECTION)
    if not sign_in.live:
        fail(f"your sign-in to {sign_in.api_url} expired at {sign_in.until}: run `keyward login`", Exit.CONNECTION)
    return sign_in


def default_url(settings: CliSettings) -> str:
    """The URL ``keyward login`` and ``keyward configure`` use without ``--api-url``: KEYWARD_API_URL, else
    the current sign-in's, else config.toml's, else the default. Only the URL is read here, so a file
    that is refused elsewhere does not stop anyone from replacing it."""
    if settings.api_url:
        return settings.api_url
    sign_in = peek_sign_in(settings.credentials_file)
    if sign_in is not None:
        return sign_in.api_url
    try:
        url = tomllib.loads(settings.config_file.read_text(encoding="utf-8")).get("api_url")
        return api_base(url) if isinstance(url, str) else DEFAULT_API_URL
    except (OSError, ValueError):
        return DEFAULT_API_URL


# -- the files ------------------------------------------------------------------------------------


def _read(path: Path) -> tuple[bytes, int] | None:
    """The file's content and mode (read from the open file), or None if there is none."""
    try:
        with path.open("rb") as handle:
            return handle.read(), os.fstat(handle.fileno()).st_mode
    except FileNotFoundError:
        return None
    except OSError as exc:
        fail(f"cannot read {path}: {exc}", Exit.CONNECTION)


def _refuse_shared(path: Path, mode: int) -> None:
    if mode & 0o077:
        fail(f"{path} holds a token but may be read by others ({stat.filemode(mode)}); run: chmod 600 {path}",
             Exit.CONNECTION)


def read_config(path: Path) -> ConfigFile:
    """config.toml (empty if there is none)."""
    found = _read(path)
    if found is None:
        return ConfigFile(path)
    content, mode = found
    try:
        data = tomllib.loads(content.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        fail(f"cannot read {path}: {exc}", Exit.CONNECTION)
    if "token" in data:
        _refuse_shared(path, mode)
    bad = [name for name in ("api_url", "token") if name in data and not isinstance(data[name], str)]
    if bad:
        fail(f"{path}: {', '.join(bad)} must be a string", Exit.CONNECTION)
    try:
        url = api_base(data["api_url"]) if data.get("api_url") else None
    except ValueError as exc:
        fail(f"{path}: {exc}", Exit.CONNECTION)
    return ConfigFile(path, url, data.get("token") or None)


def write_config(settings: CliSettings, *, api_url: str, token: str) -> Path:
    path = settings.config_file
    text = f"api_url = {json.dumps(api_url)}\ntoken = {json.dumps(token)}\n"
    assert tomllib.loads(text) == {"api_url": api_url, "token": token}
    _write_private(path, text, settings)
    return path


def _sign_in(path: Path, content: bytes) -> SignIn | None:
    try:
        document = json.loads(content)
        token, url, expires = document["token"], document["api_url"], document.get("expires_at")
        if not isinstance(token, str) or not token.isascii() or not token.isprintable() or " " in token \
                or not token or not isinstance(url, str):
            return None
        expires_at = datetime.fromisoformat(expires) if isinstance(expires, str) else None
        if expires_at is not None and expires_at.tzinfo is None:
            expires_at = expires_at.replace(tzinfo=UTC)
        email, role = document.get("email"), document.get("role")
        return SignIn(path, api_base(url), token, email if isinstance(email, str) else None,
                      role if isinstance(role, str) else None, expires_at)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def read_sign_in(path: Path) -> SignIn | None:
    """credentials.json, or None if there is none; refused if others may read it or it is not one."""
    found = _read(path)
    if found is None:
        return None
    content, mode = found
    _refuse_shared(path, mode)
    sign_in = _sign_in(path, content)
    if sign_in is None:
        fail(f"{path} is not a Keyward credential; run `keyward login` again", Exit.CONNECTION)
    return sign_in


def peek_sign_in(path: Path) -> SignIn | None:
    """credentials.json whatever its mode, or None if it cannot be read: for replacing or revoking it."""
    try:
        return _sign_in(path, path.read_bytes())
    except OSError:
        return None


def save_sign_in(settings: CliSettings, document: dict[str, Any]) -> Path:
    path = settings.credentials_file
    _write_private(path, json.dumps(document, indent=2) + "\n", settings)
    return path


def forget_sign_in(settings: CliSettings) -> None:
    settings.credentials_file.unlink(missing_ok=True)


def _write_private(path: Path, text: str, settings: CliSettings) -> None:
    """Write atomically, mode 0600. The config directory is made (or tightened to) 0700; another
    directory (named by KEYWARD_CONFIG) is only created, never changed."""
    directory = path.parent
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if directory == settings.config_dir and stat.S_IMODE(directory.stat().st_mode) & 0o077:
            directory.chmod(0o700)
        temporary = directory / f".{path.name}.{os.getpid()}.tmp"
        temporary.unlink(missing_ok=True)
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.fchmod(descriptor, 0o600)
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)
    except OSError as exc:
        fail(f"cannot write {path}: {exc}", Exit.CONNECTION)
