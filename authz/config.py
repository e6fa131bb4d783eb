"""The authz process's settings: one object, read from the environment once and validated at start-up.

Nothing else in authz reads the environment. The validators both processes need are plain functions
here and in :mod:`authz.tokens` (:func:`check_hash_key`), so the control plane's settings reuse them.

Authz never reads provider keys: nothing here names one, and ``extra="ignore"`` only means unrelated
variables in the environment are not looked at.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from authz.tokens import check_hash_key
from authz.upstreams import Upstreams

_ASYNCPG_SCHEME = "postgresql://"
_SQLALCHEMY_SCHEME = "postgresql+asyncpg://"


def asyncpg_dsn(url: str) -> str:
    """The libpq form asyncpg connects with: a SQLAlchemy ``postgresql+asyncpg://`` URL loses its driver.

    >>> asyncpg_dsn("postgresql+asyncpg://keyward@db/keyward")
    'postgresql://keyward@db/keyward'
    """
    if url.startswith(_SQLALCHEMY_SCHEME):
        return _ASYNCPG_SCHEME + url[len(_SQLALCHEMY_SCHEME) :]
    return url


def sqlalchemy_url(url: str) -> str:
    """The SQLAlchemy form the control plane connects with: a libpq URL (``postgresql://`` or
    ``postgres://``) gains the asyncpg driver.

    >>> sqlalchemy_url("postgres://keyward@db/keyward")
    'postgresql+asyncpg://keyward@db/keyward'
    """
    for prefix in (_ASYNCPG_SCHEME, "postgres://"):
        if url.startswith(prefix):
            return _SQLALCHEMY_SCHEME + url[len(prefix) :]
    return url


def check_otlp_endpoint(value: str | None) -> str | None:
    """An OTLP/gRPC endpoint, ``http(s)://host:port`` (empty or unset: tracing off).

    >>> check_otlp_endpoint("http://127.0.0.1:4317")
    'http://127.0.0.1:4317'
    >>> check_otlp_endpoint("") is None
    True
    """
    if value is None or not value.strip():
        return None
    parts = urlsplit(value.strip())
    try:
        port = parts.port
    except ValueError:
        port = None
    if (parts.scheme not in ("http", "https") or not parts.hostname or port is None or parts.path not in ("", "/")
            or parts.username is not None or parts.query):
        # Not the value: a URL with credentials in it would put them in the error.
        raise ValueError("KEYWARD_OTLP_ENDPOINT must be http(s)://host:port (OTLP over gRPC, no credentials, "
                         "no path)")
    return f"{parts.scheme}://{parts.netloc}"


class AuthzSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KEYWARD_", extra="ignore", populate_by_name=True)

    database_url: str = Field(validation_alias="DATABASE_URL")
    #: ``unix:/path/authz.sock`` (sidecar) or ``127.0.0.1:9191``.
    authz_address: str = "127.0.0.1:9191"
    #: Hex key for the HMAC of tokens; shared with the control plane, never with Envoy.
    token_hash_key: str
    #: Postgres channel the control plane NOTIFYs on every change that can alter a decision.
    notify_channel: str = "keyward_changes"
    #: How often batched ``last_used_at`` writes go out.
    last_used_flush_seconds: float = Field(default=2.0, gt=0, le=60)
    #: How often the listener proves its connection is alive when no NOTIFY arrives.
    listener_keepalive_seconds: float = Field(default=5.0, gt=0, le=300)
    #: How long authz keeps allowing requests from its cache after it last heard from Postgres. Past
    #: this it answers 503 ``policy_stale``: a replica that cannot hear revocations must not go on
    #: allowing what may have been revoked. The control plane waits for a silent replica this long
    #: (plus a margin) before its revocations stop counting on it. Longer rides out longer database
    #: outages (a failover) at the price of a longer "revocation unconfirmed" window.
    max_staleness_seconds: float = Field(default=15.0, ge=2, le=3600)
    #: How often this replica adds its spend and request counts to Postgres and reads every replica's:
    #: across replicas, budgets and rate limits may be overshot by what the others admit in one interval.
    meter_sync_seconds: float = Field(default=0.25, gt=0, le=60)
    #: Directory of the audit spool (decision and outcome lines waiting to be shipped).
    audit_spool_dir: str
    #: Envoy's audit log (one JSON line per finished request), which authz reads into the spool.
    envoy_audit_log: str
    #: Envoy's control socket (``unix:/path``) or ``host:port``, where authz asks it to reopen its logs
    #: after rotating the audit log; unset: whoever rotates Envoy's logs asks it (then set
    #: ``envoy_audit_log_rotate_bytes`` very high).
    envoy_control: str | None = None
    envoy_audit_log_rotate_bytes: int = Field(default=64 << 20, ge=1 << 16)
    #: Envoy's timeout for a Check (its ext_authz ``timeout``): a Check later than this is moot.
    envoy_authz_timeout_seconds: float = Field(default=1.0, gt=0, le=60)
    #: The control plane's ingest endpoint and the credential for it.
    ingest_url: str
    ingest_token: str = Field(min_length=16)
    audit_batch_lines: int = Field(default=2000, gt=0, le=20_000)
    audit_fsync_seconds: float = Field(default=0.2, gt=0, le=10)
    #: Largest ingest request body the shipper sends; the control plane refuses bodies over its
    #: ``KEYWARD_MAX_BODY_BYTES`` (1 MiB by default) with a 413.
    audit_batch_bytes: int = Field(default=1_000_000, ge=4096, le=1 << 30)
    #: Threads that run Checks. A Check never blocks for long and the GIL runs one thread at a time,
    #: so a few are enough; more only add thread switches (measured: 4 is cheaper per Check than 16).
    authz_check_threads: int = Field(default=4, ge=1, le=256)
    #: How long a background task (listener, last-used writer, audit shipper, fsync timer) may stay
    #: down, failing and being restarted, before health ``keyward.authz.Background`` says NOT_SERVING.
    background_grace_seconds: float = Field(default=30.0, gt=0, le=3600)
    #: How long the event loop may leave a callback waiting before ``keyward.authz.Background`` says
    #: NOT_SERVING: a loop that runs nothing runs none of the background tasks either.
    loop_stall_seconds: float = Field(default=10.0, gt=0, le=3600)
    #: Port for Prometheus metrics on 127.0.0.1; 0 turns the endpoint off.
    authz_metrics_port: int = Field(default=0, ge=0, le=65535)
    #: OpenTelemetry traces (:mod:`authz.tracing`): the OTLP/gRPC collector, ``http(s)://host:port``;
    #: unset or empty: tracing off (no exporter loaded, nothing done per Check).
    otlp_endpoint: str | None = None
    #: Share of the traces authz starts itself that are sampled; a sampled parent (Envoy's span,
    #: continuing a client's ``traceparent``) is always followed.
    trace_sample_ratio: float = Field(default=1.0, ge=0, le=1)
    log_level: str = "info"
    #: The operator's upstreams (:mod:`authz.upstreams`; JSON, no keys): authz routes to them by name.
    upstreams: str | None = None

    @field_validator("upstreams")
    @classmethod
    def _upstreams(cls, value: str | None) -> str | None:
        Upstreams.parse(value)
        return value

    @property
    def upstream_list(self) -> Upstreams:
        return Upstreams.parse(self.upstreams)

    @model_validator(mode="after")
    def _staleness_outlasts_the_keepalive(self) -> AuthzSettings:
        if self.max_staleness_seconds <= self.listener_keepalive_seconds:
            raise ValueError("KEYWARD_MAX_STALENESS_SECONDS must be longer than KEYWARD_LISTENER_KEEPALIVE_SECONDS")
        return self

    @field_validator("token_hash_key")
    @classmethod
    def _key_is_strong(cls, value: str) -> str:
        return check_hash_key(value)

    @field_validator("otlp_endpoint")
    @classmethod
    def _otlp_endpoint(cls, value: str | None) -> str | None:
        return check_otlp_endpoint(value)

    @field_validator("database_url")
    @classmethod
    def _asyncpg_dsn(cls, value: str) -> str:
        # One DATABASE_URL serves both processes; the control plane's may name its SQLAlchemy driver.
        return asyncpg_dsn(value)

    @property
    def hash_key(self) -> bytes:
        return bytes.fromhex(self.token_hash_key)
