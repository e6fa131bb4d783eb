"""The settings of one ``keyward`` process: one pydantic-settings object, read from the environment once
and validated before the first request. No other CLI module reads ``os.environ``.

* ``KEYWARD_API_URL``: the control plane (unset: the URL stored with the credential in use, else
  ``http://127.0.0.1:8000``);
* ``KEYWARD_API_TOKEN``, else ``KEYWARD_ADMIN_TOKEN``: an admin-API credential, used before the files;
* ``KEYWARD_CONFIG_DIR``: where ``config.toml`` and ``credentials.json`` are (``~/.config/keyward``);
* ``KEYWARD_CONFIG``: the older setting, config.toml's own path; set with ``KEYWARD_CONFIG_DIR``, both
  must name the same file;
* ``KEYWARD_API_TIMEOUT_SECONDS`` (15) and ``KEYWARD_API_CONNECT_TIMEOUT_SECONDS`` (5): the longest wait
  for an answer, and for a connection.

An empty variable counts as unset. Which credential a command uses is :mod:`controlplane.cli.store`'s
business. This module costs pydantic's import, so commands import it when they need it, not at start-up.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import httpx
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from controlplane.cli.output import Exit, fail

DEFAULT_API_URL = "http://127.0.0.1:8000"


def api_base(url: str) -> str:
    """``url`` as the CLI keeps it: no trailing ``/`` or ``/api/v1``.

    >>> api_base("https://keyward.example.com/api/v1/")
    'https://keyward.example.com'
    """
    base = url.strip().rstrip("/").removesuffix("/api/v1")
    if not base.startswith(("http://", "https://")):
        raise ValueError(f"the API URL {base!r} must start with http:// or https://")
    return base


class CliSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KEYWARD_", env_ignore_empty=True, extra="ignore")

    #: The control plane; unset: the URL stored with the credential in use, else DEFAULT_API_URL.
    api_url: str | None = None
    api_token: SecretStr | None = None
    admin_token: SecretStr | None = None
    config_dir: Path = Field(default_factory=lambda: Path.home() / ".config" / "keyward")
    #: KEYWARD_CONFIG, the path of config.toml before KEYWARD_CONFIG_DIR existed; still honoured.
    legacy_config_file: Path | None = Field(default=None, validation_alias="KEYWARD_CONFIG")
    api_timeout_seconds: float = Field(default=15, gt=0, le=600)
    api_connect_timeout_seconds: float = Field(default=5, gt=0, le=600)

    @field_validator("api_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return api_base(value) if value is not None else None

    @field_validator("config_dir", "legacy_config_file")
    @classmethod
    def _home(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None

    @model_validator(mode="after")
    def _one_config_file(self) -> CliSettings:
        if ("config_dir" in self.model_fields_set and self.legacy_config_file is not None
                and self.legacy_config_file != self.config_dir / "config.toml"):
            raise ValueError("KEYWARD_CONFIG_DIR and the older KEYWARD_CONFIG name different config files; "
                             "unset KEYWARD_CONFIG")
        return self

    @property
    def config_file(self) -> Path:
        """``config.toml``: what ``keyward configure`` writes."""
        return self.legacy_config_file or self.config_dir / "config.toml"

    @property
    def credentials_file(self) -> Path:
        """``credentials.json``: what ``keyward login`` stores."""
        return self.config_dir / "credentials.json"

    @property
    def env_token(self) -> tuple[str, str] | None:
        """The token the environment gives, with the variable's name."""
        for name, value in (("KEYWARD_API_TOKEN", self.api_token), ("KEYWARD_ADMIN_TOKEN", self.admin_token)):
            if value is not None:
                return name, value.get_secret_value()
        return None

    @property
    def timeout(self) -> httpx.Timeout:
        return httpx.Timeout(self.api_timeout_seconds, connect=self.api_connect_timeout_seconds)


_VARIABLES = {"legacy_config_file": "KEYWARD_CONFIG"}


def _variable(loc: tuple[Any, ...]) -> str:
    if not loc:
        return "configuration"
    return _VARIABLES.get(str(loc[0]), f"KEYWARD_{str(loc[0]).upper()}")


@cache
def settings() -> CliSettings:
    """The process's settings, read once; bad ones are a one-line error (exit 3) that never echoes a token."""
    try:
        return CliSettings()
    except ValidationError as exc:
        problems = "; ".join(f"{_variable(e['loc'])}: {e['msg'].removeprefix('Value error, ')}"
                             for e in exc.errors(include_input=False))
        fail(problems, Exit.CONNECTION)
