"""The control plane's settings: one pydantic-settings object, created once, validated at start-up.

Outside development it refuses a short bootstrap admin token, so a placeholder never reaches production.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def sqlalchemy_url(url: str) -> str:
    """Accept libpq-style URLs (``postgresql://``) and name the asyncpg driver for SQLAlchemy."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    return url


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KEYWARD_", extra="ignore", populate_by_name=True)

    environment: Literal["development", "production"] = "development"
    database_url: str = Field(validation_alias="DATABASE_URL")
    #: Break-glass credential for automation; every use is recorded as actor ``admin:bootstrap``.
    admin_token: str = Field(min_length=16)
    token_hash_key: str
    #: Credential the data plane's audit shipper presents to /api/v1/audit/ingest (unset: no ingest).
    ingest_token: str | None = Field(default=None, min_length=16)
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=1, le=65535)
    #: Largest admin API request body, in bytes.
    max_body_bytes: int = Field(default=1_048_576, gt=0)
    #: How often token expiry events and the dormant-token policy run.
    lifecycle_interval_seconds: float = Field(default=30, gt=0, le=3600)
    log_level: str = "info"

    @field_validator("database_url")
    @classmethod
    def _driver(cls, value: str) -> str:
        return sqlalchemy_url(value)

    @field_validator("token_hash_key")
    @classmethod
    def _hex_key(cls, value: str) -> str:
        try:
            raw = bytes.fromhex(value)
        except ValueError as exc:
            raise ValueError("KEYWARD_TOKEN_HASH_KEY must be hex") from exc
        if len(raw) < 32:
            raise ValueError("KEYWARD_TOKEN_HASH_KEY must be at least 32 bytes (64 hex characters)")
        return value

    @model_validator(mode="after")
    def _production_secrets(self) -> Settings:
        if self.environment == "production" and len(self.admin_token) < 32:
            raise ValueError("KEYWARD_ADMIN_TOKEN must be at least 32 characters in production")
        return self

    @property
    def hash_key(self) -> bytes:
        return bytes.fromhex(self.token_hash_key)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()  # type: ignore[call-arg]
