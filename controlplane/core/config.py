"""The control plane's settings: one pydantic-settings object, created once, validated at start-up.

Outside development it refuses a short bootstrap admin token, so a placeholder never reaches production.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Shared with authz, which must not import control-plane code: one definition of each rule.
from authz.config import check_otlp_endpoint, sqlalchemy_url
from authz.tokens import check_hash_key
from authz.upstreams import Upstreams
from controlplane.core.keys import check_private_key


class OidcSettings(BaseModel):
    """Sign-in with OpenID Connect (unset issuer: off). Shared by the control plane's :class:`Settings`
    and the stack launcher, which passes them on as ``KEYWARD_OIDC_*``, so both know the same defaults.
    """

    #: The issuer URL; its discovery document is read from <issuer>/.well-known/openid-configuration.
    oidc_issuer: str | None = None
    #: The web sign-in client (authorization code with PKCE); the secret is optional for a public client.
    oidc_client_id: str | None = None
    oidc_client_secret: str | None = None
    #: The public client ``keyward login`` uses (loopback redirect with PKCE); default: oidc_client_id.
    oidc_cli_client_id: str | None = None
    #: The control plane's external URL: the redirect URI is <base>/auth/callback.
    oidc_redirect_base: str | None = None
    oidc_scopes: str = "openid email profile"
    #: Create a user on first sign-in (True) or refuse identities Keyward does not know (False).
    oidc_jit_provisioning: bool = False
    #: The claim holding the IdP groups (a dotted path reaches into objects, e.g. realm_access.roles).
    oidc_groups_claim: str = "groups"
    #: Comma-separated IdP groups whose members sign in with that admin role.
    oidc_admin_groups: str = ""
    oidc_auditor_groups: str = ""
    oidc_finance_groups: str = ""
    #: Lifetime of a browser session and of a ``keyward login`` credential.
    oidc_session_minutes: int = Field(default=60, gt=0, le=24 * 60)
    oidc_cli_credential_hours: int = Field(default=12, gt=0, le=24 * 30)
    #: A one-time console sign-in link works once, within this many minutes; the console session it
    #: opens lasts ``console_link_session_minutes``.
    console_link_minutes: int = Field(default=10, gt=0, le=60)
    console_link_session_minutes: int = Field(default=60, gt=0, le=12 * 60)


class Settings(OidcSettings, BaseSettings):
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
    #: How long a revocation waits for every live authz replica to confirm it before answering.
    revocation_wait_seconds: float = Field(default=2.0, gt=0, le=30)
    #: How often token expiry events and the dormant-token policy run.
    lifecycle_interval_seconds: float = Field(default=30, gt=0, le=3600)
    #: How often budget thresholds reached are looked for (and announced, once each).
    budget_alert_interval_seconds: float = Field(default=10, gt=0, le=3600)
    #: How often due notification deliveries (budget alerts, tests) are sent.
    notification_interval_seconds: float = Field(default=2, gt=0, le=3600)
    #: A failed delivery is retried after this many seconds, doubling each time up to the maximum.
    notification_retry_seconds: float = Field(default=5, gt=0, le=3600)
    notification_retry_max_seconds: float = Field(default=600, gt=0, le=86400)
    #: Attempts before a delivery is given up as ``failed`` (an event ``notification.failed``).
    notification_max_attempts: int = Field(default=8, ge=1, le=100)
    #: How long one delivery's HTTP request may take.
    notification_timeout_seconds: float = Field(default=5, gt=0, le=60)
    #: How long a service account or admin credential whose owner departed may wait for a new owner
    #: before the offboarding duty disables it (its tokens are then refused).
    reassign_grace_days: float = Field(default=7, ge=0, le=365)
    #: What an access-review exception's expiry does besides reopening its item and raising an event:
    #: True (default) also disables the credential it kept (token revoked, service account disabled,
    #: admin or SCIM credential revoked). An exception is a bounded "keep"; when the bound passes, the
    #: safe state is "off" until someone decides again.
    expired_exception_disables: bool = True
    #: Who reviews an item whose team has no owner (and escalated items): an email or a role name.
    security_reviewer: str | None = None
    #: The longest an access-review exception may run, in days.
    exception_max_days: int = Field(default=365, gt=0, le=3650)
    #: How often the audit chains are verified incrementally (the rows after the newest verified marker).
    verify_interval_seconds: float = Field(default=60, gt=0, le=86400)
    #: How often they are verified in full (every row re-hashed from each chain's start), in hours.
    full_verify_hours: float = Field(default=24, gt=0, le=24 * 31)
    log_level: str = "info"
    #: OpenTelemetry traces of the API and its database calls (:mod:`controlplane.tracing`): the OTLP/gRPC
    #: collector, ``http(s)://host:port``; unset or empty: off. Sampling as authz's.
    otlp_endpoint: str | None = None
    trace_sample_ratio: float = Field(default=1.0, ge=0, le=1)
    #: The operator's upstreams (:mod:`authz.upstreams`: JSON names, kinds and URLs, never a key), as authz
    #: and Envoy get them: catalog entries and MCP tool entries may only name these.
    upstreams: str | None = None

    #: Signs the short-lived sign-in state cookie and derives CSRF tokens (the runner generates one).
    session_secret: str | None = Field(default=None, min_length=32)
    #: Signs every audit chain head (Ed25519 seed, base64); the database never holds it.
    audit_signing_key: str

    @field_validator("database_url")
    @classmethod
    def _driver(cls, value: str) -> str:
        return sqlalchemy_url(value)

    @field_validator("otlp_endpoint")
    @classmethod
    def _otlp_endpoint(cls, value: str | None) -> str | None:
        return check_otlp_endpoint(value)

    @field_validator("upstreams")
    @classmethod
    def _upstreams(cls, value: str | None) -> str | None:
        Upstreams.parse(value)
        return value

    @field_validator("token_hash_key")
    @classmethod
    def _hex_key(cls, value: str) -> str:
        return check_hash_key(value)

    @field_validator("audit_signing_key")
    @classmethod
    def _signing_key(cls, value: str) -> str:
        return check_private_key(value)

    @model_validator(mode="after")
    def _production_secrets(self) -> Settings:
        if self.environment == "production" and len(self.admin_token) < 32:
            raise ValueError("KEYWARD_ADMIN_TOKEN must be at least 32 characters in production")
        return self

    @model_validator(mode="after")
    def _oidc_complete(self) -> Settings:
        if self.oidc_issuer:
            missing = [name for name, value in (("KEYWARD_OIDC_CLIENT_ID", self.oidc_client_id),
                                                ("KEYWARD_OIDC_REDIRECT_BASE", self.oidc_redirect_base),
                                                ("KEYWARD_SESSION_SECRET", self.session_secret)) if not value]
            if missing:
                raise ValueError(f"KEYWARD_OIDC_ISSUER is set, so {', '.join(missing)} must be set too")
        return self

    @property
    def oidc_enabled(self) -> bool:
        return bool(self.oidc_issuer)

    def oidc_groups(self, role: str) -> set[str]:
        """The IdP groups mapped to an admin role (admin, auditor or finance)."""
        raw = {"admin": self.oidc_admin_groups, "auditor": self.oidc_auditor_groups,
               "finance": self.oidc_finance_groups}[role]
        return {group.strip() for group in raw.split(",") if group.strip()}

    @property
    def upstream_list(self) -> Upstreams:
        """The configured upstreams (``openai`` and ``anthropic`` always among them). Only names, kinds and
        the APIs they serve matter here: the URLs of the two built-in ones are Envoy's business."""
        return Upstreams.parse(self.upstreams)

    @property
    def hash_key(self) -> bytes:
        return bytes.fromhex(self.token_hash_key)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()  # type: ignore[call-arg]
