"""Run the whole stack on one machine: Postgres, control plane, authz, Envoy and (when no real
provider key is configured) the mock provider. ``make up`` and the end-to-end tests both use this.

Secrets are handled so that each process sees only its own:

* provider keys are written to Envoy's SDS files (0600) and removed from every child's environment;
* the token hash key and the bootstrap admin token live in ``<data_dir>/secrets`` (0600) and are
  given to the control plane (both) and authz (hash key only); so does the session secret that signs
  the control plane's sign-in state (control plane only);
* no log line holds one: every child writes through the runner's redactor (:mod:`.redact`) into
  ``<data_dir>/logs`` (0700, files 0600), Envoy included, whose debug and trace levels print headers.

The children are supervised (:mod:`.supervisor`): a crashed one is restarted with back-off while the
others keep running (authz down means 503s, fail closed; the control plane down leaves the gateway
serving), each is recorded in ``<data_dir>/run/<name>.pid`` so the next start stops anything an
earlier run left behind, and none outlives the runner, even a SIGKILLed one. :meth:`Stack.stop` takes
them down in order: Envoy drained first, then authz (which ships what Envoy logged), the control
plane, the mock provider, Postgres.

Envoy's admin interface is a Unix socket (``<data_dir>/run/envoy-admin.sock``, mode 0600) unless
``KEYWARD_ENVOY_ADMIN_PORT`` opts into 127.0.0.1:<port>; its Prometheus stats are ``/stats/prometheus``
there. authz serves its metrics on 127.0.0.1 (``KEYWARD_AUTHZ_METRICS_PORT``, else a free port:
``StackInfo.authz_metrics_url``), the control plane at ``/metrics`` on its own port.

Over 450 lines because it starts, orders and stops every process of the local stack; supervision and
Envoy's configuration live in their own modules.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import grpc
import httpx
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from authz.config import check_otlp_endpoint
from authz.upstreams import Kind, Upstreams, key_variable
from authz.upstreams import Upstream as UpstreamConfig
from controlplane.audit import signing
from controlplane.core.config import OidcSettings
from controlplane.logging import ENVOY_LOG_FORMAT, json_line
from controlplane.migrate import upgrade
from controlplane.stack.embedded_pg import EmbeddedPostgres
from controlplane.stack.envoy_config import (
    GatewayLayout,
    Target,
    Upstream,
    render,
    write_provider_secrets,
    write_upstream_key,
)
from controlplane.stack.redact import LogFile, Redactor, private_dir
from controlplane.stack.supervisor import Service, Supervisor, describe_exit, leftover, stop_leftover

__all__ = ["Service", "Stack", "StackError", "StackInfo", "StackSettings"]

#: Variables no child inherits from the runner's environment: each child is given exactly the secrets
#: it needs, explicitly (provider keys go to Envoy's secret files only).
_PRIVATE_ENV = frozenset({
    "OPENAI_API_KEY", "ANTHROPIC_API_KEY", "DATABASE_URL", "KEYWARD_MIGRATION_DATABASE_URL", "KEYWARD_ADMIN_TOKEN",
    "KEYWARD_TOKEN_HASH_KEY", "KEYWARD_INGEST_TOKEN", "KEYWARD_SESSION_SECRET", "KEYWARD_AUDIT_SIGNING_KEY",
})
_PRIVATE_PREFIXES = ("MOCK_", "KEYWARD_OIDC_", "KEYWARD_UPSTREAM_KEY_")
#: Start order; stop order is the reverse (Envoy first, Postgres last).
_ORDER = ("postgres", "mock-provider", "controlplane", "authz", "envoy")
#: A header value Envoy may send as is: visible ASCII, no spaces.
_HEADER_VALUE = r"^[\x21-\x7e]+$"

EnvoyLogLevel = Literal["trace", "debug", "info", "warn", "warning", "error", "critical", "off"]


class StackSettings(OidcSettings, BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KEYWARD_", extra="ignore", populate_by_name=True)

    data_dir: Path = Path(".keyward")
    gateway_port: int = Field(default=8080, ge=1, le=65535)
    api_port: int = Field(default=8000, ge=1, le=65535)
    #: Unset: Envoy's admin interface is a Unix socket in <data_dir>/run (mode 0600). A port opts into
    #: 127.0.0.1:<port>, where any local process can change the log level or stop the gateway.
    envoy_admin_port: int | None = Field(default=None, ge=1, le=65535)
    #: Port of authz's Prometheus metrics on 127.0.0.1 (``/metrics``); unset: a free one, in the banner.
    authz_metrics_port: int | None = Field(default=None, ge=1, le=65535)
    #: Envoy's own log level. Debug and trace print every request header; the runner's redactor removes
    #: credentials from them before they reach envoy.log.
    envoy_log_level: EnvoyLogLevel = "warn"
    #: On stop, how long Envoy drains open requests before it is stopped.
    envoy_drain_seconds: float = Field(default=5, ge=0, le=600)
    #: How long Envoy waits for a Check before it answers 503 (authz is told the same, so it knows
    #: when a late Check no longer matters).
    authz_timeout_seconds: float = Field(default=1.0, gt=0, le=60)
    mock_port: int = Field(default=8090, ge=1, le=65535)
    #: Empty: a Unix socket in the data directory (authz as Envoy's sidecar).
    authz_address: str = ""
    database_url: str | None = Field(default=None, validation_alias="DATABASE_URL")
    #: Owner credentials for migrations and retention; defaults to DATABASE_URL. When DATABASE_URL is
    #: the owner too, the audit tables are not append-only for the application: use two roles.
    migration_database_url: str | None = None
    admin_token: str | None = None
    openai_api_key: str | None = Field(default=None, validation_alias="OPENAI_API_KEY")
    anthropic_api_key: str | None = Field(default=None, validation_alias="ANTHROPIC_API_KEY")
    openai_upstream: str = "https://api.openai.com"
    anthropic_upstream: str = "https://api.anthropic.com"
    #: More upstreams (:mod:`authz.upstreams`: JSON, no keys). Each one's key is read from
    #: ``KEYWARD_UPSTREAM_KEY_<NAME>``; without it the mock provider stands in (an MCP server needs its key).
    upstreams: str | None = None
    #: The OpenAI organization and project the gateway sends (openai-organization / openai-project);
    #: whatever a client sends in those headers is removed either way.
    openai_organization: str | None = Field(default=None, pattern=_HEADER_VALUE)
    openai_project: str | None = Field(default=None, pattern=_HEADER_VALUE)
    max_body_bytes: int = Field(default=1_048_576, gt=0)
    envoy_concurrency: int = Field(default=0, ge=0, description="0: one worker per core")
    #: Seconds between chunks of the mock provider's streams.
    mock_stream_interval: float = 0.1
    #: How often the control plane records expiries and applies the dormant-token policy.
    lifecycle_interval_seconds: float = 30
    #: Notification delivery: how often due deliveries are sent, the first retry delay (doubling) and
    #: the attempts before a delivery is given up (the control plane's KEYWARD_NOTIFICATION_* settings).
    notification_interval_seconds: float = Field(default=2, gt=0, le=3600)
    notification_retry_seconds: float = Field(default=5, gt=0, le=3600)
    notification_max_attempts: int = Field(default=8, ge=1, le=100)
    #: How often budget thresholds are checked and announced (the control plane's setting).
    budget_alert_interval_seconds: float = Field(default=10, gt=0, le=3600)
    #: OpenTelemetry traces from Envoy, authz and the control plane to this OTLP/gRPC collector
    #: (``http(s)://host:port``); unset: tracing off everywhere. The share of new traces sampled (a
    #: client's sampled ``traceparent`` is always continued).
    otlp_endpoint: str | None = None
    trace_sample_ratio: float = Field(default=1.0, ge=0, le=1)

    @field_validator("otlp_endpoint")
    @classmethod
    def _otlp_endpoint(cls, value: str | None) -> str | None:
        return check_otlp_endpoint(value)

    @field_validator("upstreams")
    @classmethod
    def _upstreams(cls, value: str | None) -> str | None:
        Upstreams.parse(value)
        return value

    def extra_upstreams(self) -> tuple[UpstreamConfig, ...]:
        """The operator's upstreams besides openai and anthropic."""
        return Upstreams.parse(self.upstreams).all[2:]

    # Sign-in with OpenID Connect: the OidcSettings fields, passed to the control plane as KEYWARD_OIDC_*
    # (the redirect base defaults to http://127.0.0.1:<api_port>).


@dataclass
class StackInfo:
    gateway_url: str
    api_url: str
    admin_token: str
    admin_token_is_new: bool
    database_url: str
    owner_database_url: str
    mocked: list[str]
    mock_url: str | None
    access_log: Path
    logs_dir: Path
    #: Pidfiles of the children, Envoy's admin socket.
    run_dir: Path
    #: ``unix:<path>`` or ``127.0.0.1:<port>``.
    envoy_admin: str
    #: authz's Prometheus metrics (``http://127.0.0.1:<port>/metrics``).
    authz_metrics_url: str | None = None


class StackError(RuntimeError):
    pass


@dataclass(frozen=True)
class GatewayPair:
    """One gateway replica: an Envoy and the authz beside it, and where each keeps its files."""

    authz: str
    envoy: str
    gateway_url: str
    admin_address: str
    control_address: str
    audit_log: Path
    access_log: Path
    #: authz's Prometheus metrics.
    authz_metrics_url: str | None = None


@dataclass(frozen=True)
class _PairContext:
    """What every gateway replica of a stack shares."""

    authz_env: dict[str, str]
    envoy_env: dict[str, str]
    openai: Upstream
    anthropic: Upstream
    secrets_dir: Path
    extra: tuple[Target, ...] = ()


@dataclass(frozen=True)
class _Keys:
    """The secrets the runner hands to its children (and redacts from every log line)."""

    hash_key: str
    admin_token: str
    admin_token_is_new: bool
    ingest_token: str
    session_secret: str
    audit_key: str
    #: Provider name -> the key the mock provider insists on, for each provider without a real key.
    mock: dict[str, str]
    #: The embedded Postgres's superuser password, and the application role's.
    postgres_password: str
    app_database_password: str
    #: The operator's upstreams' real keys (from ``KEYWARD_UPSTREAM_KEY_<NAME>``), by upstream name.
    upstream_keys: dict[str, str] = field(default_factory=dict)


def _accepts(path: str) -> bool:
    """Whether something listens on the Unix socket ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1)
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


def _free_port() -> int:
    """A port nobody listens on now (the kernel's choice)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _write_public(path: Path, value: str) -> None:
    """A value anyone may read (a public key), kept next to the secrets it belongs to."""
    path.write_text(value + "\n")
    path.chmod(0o644)


def _read_or_create(path: Path, make: Callable[[], str]) -> tuple[str, bool]:
    if path.exists():
        return path.read_text().strip(), False
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    value = make()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    return value, True


def _mock_key(kind: Kind | None) -> str:
    """A key the mock provider insists on: for Bedrock an AWS access key id and secret, which Envoy signs with."""
    if kind is Kind.BEDROCK:
        return f"AKIAMOCK{secrets.token_hex(6).upper()}:{secrets.token_urlsafe(30)}"
    return "mock-" + secrets.token_hex(16)


def _upstream(url: str) -> Upstream:
    upstream = Upstream.parse(url)
    # People paste SDK base URLs ("…/v1"); the gateway forwards /v1/… itself.
    if upstream.path.endswith("/v1"):
        upstream = Upstream(upstream.scheme, upstream.host, upstream.port, upstream.path[:-3])
    return upstream


def _password(url: str | None) -> str | None:
    return urlsplit(url).password if url else None


def _console(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class Stack:
    settings: StackSettings
    #: Where restarts and other events are told, besides <logs>/stack.log (default: stderr).
    report: Callable[[str], None] = _console
    services: dict[str, Service] = field(default_factory=dict)
    info: StackInfo | None = None
    _postgres: EmbeddedPostgres | None = None
    _supervisor: Supervisor | None = None
    _log: LogFile | None = None
    _redactor: Redactor = field(default_factory=Redactor)
    #: The gateway replicas by suffix ("" is the stack's own).
    pairs: dict[str, GatewayPair] = field(default_factory=dict)
    _pairs: _PairContext | None = None

    @property
    def data_dir(self) -> Path:
        return self.settings.data_dir.resolve()

    @property
    def run_dir(self) -> Path:
        return self.data_dir / "run"

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def envoy_admin_address(self) -> str:
        port = self.settings.envoy_admin_port
        return f"127.0.0.1:{port}" if port else f"unix:{self.run_dir / 'envoy-admin.sock'}"

    def envoy_admin(self, timeout: float = 2, address: str | None = None) -> httpx.Client:
        """A client of Envoy's admin interface (over its Unix socket unless a port was asked for)."""
        address = address or self.envoy_admin_address
        if address.startswith("unix:"):
            return httpx.Client(transport=httpx.HTTPTransport(uds=address[len("unix:") :]),
                                base_url="http://envoy-admin", timeout=timeout)
        return httpx.Client(base_url=f"http://{address}", timeout=timeout)

    # -- start ------------------------------------------------------------------------------------

    def start(self, timeout: float = 60) -> StackInfo:
        """Start every child in order and wait until each is ready; on any failure stop them all."""
        s = self.settings
        self.data_dir.mkdir(parents=True, exist_ok=True)
        private_dir(self.run_dir)
        private_dir(self.logs_dir)
        keys = self._keys()
        self._redactor = Redactor([
            s.openai_api_key, s.anthropic_api_key, *keys.mock.values(), *keys.upstream_keys.values(),
            *(part for key in (*keys.mock.values(), *keys.upstream_keys.values()) for part in key.split(":")[1:]),
            keys.ingest_token, keys.admin_token,
            keys.hash_key, keys.session_secret, keys.audit_key, keys.postgres_password, keys.app_database_password,
            s.oidc_client_secret, _password(s.database_url),
            _password(s.migration_database_url),
        ])
        self._log = LogFile(self.logs_dir / "stack.log", self._redactor)

        self._stop_leftovers()
        wanted = [s.gateway_port, s.api_port]
        if s.envoy_admin_port:
            wanted.append(s.envoy_admin_port)
        if s.authz_metrics_port:
            wanted.append(s.authz_metrics_port)
        if keys.mock:
            wanted.append(s.mock_port)
        taken = [port for port in wanted if not _port_free(port)]
        if taken:
            raise StackError(
                f"port(s) {taken} already in use; set KEYWARD_GATEWAY_PORT / KEYWARD_API_PORT / "
                "KEYWARD_MOCK_PORT (and KEYWARD_ENVOY_ADMIN_PORT, KEYWARD_AUTHZ_METRICS_PORT if set) to free ones"
            )
        try:
            return self._start(keys, time.monotonic() + timeout)
        except BaseException:
            self.stop()
            raise

    def _keys(self) -> _Keys:
        s = self.settings
        secrets_dir = self.data_dir / "secrets"
        hash_key, _ = _read_or_create(secrets_dir / "token_hash_key", lambda: secrets.token_hex(32))
        if s.admin_token:
            admin_token, admin_new = s.admin_token, False
        else:
            admin_token, admin_new = _read_or_create(
                secrets_dir / "admin_token", lambda: "kw_admin_" + secrets.token_urlsafe(32)
            )
        ingest_token, _ = _read_or_create(secrets_dir / "ingest_token", lambda: secrets.token_urlsafe(32))
        session_secret, _ = _read_or_create(secrets_dir / "session_secret", lambda: secrets.token_urlsafe(32))
        # The audit signing key goes to the control plane alone; its public half is for verifiers.
        audit_key, _ = _read_or_create(secrets_dir / "audit_signing_key", signing.new_private_key)
        _write_public(secrets_dir / "audit_public_key", signing.Signer(audit_key).public_key)
        mocked = [name for name, key in (("openai", s.openai_api_key), ("anthropic", s.anthropic_api_key)) if not key]
        upstream_keys = {u.name: os.environ.get(key_variable(u.name), "") for u in s.extra_upstreams()}
        for upstream in s.extra_upstreams():
            if upstream_keys[upstream.name]:
                continue
            if upstream.kind is Kind.MCP:
                raise StackError(f"the MCP server {upstream.name} needs its key in {key_variable(upstream.name)}")
            mocked.append(upstream.name)
        kinds = {u.name: u.kind for u in s.extra_upstreams()}
        postgres_password, _ = _read_or_create(secrets_dir / "postgres_password", lambda: secrets.token_urlsafe(32))
        app_password, _ = _read_or_create(secrets_dir / "app_database_password", lambda: secrets.token_urlsafe(32))
        return _Keys(hash_key=hash_key, admin_token=admin_token, admin_token_is_new=admin_new,
                     ingest_token=ingest_token, session_secret=session_secret, audit_key=audit_key,
                     mock={name: _mock_key(kinds.get(name)) for name in mocked},
                     upstream_keys={name: key for name, key in upstream_keys.items() if key},
                     postgres_password=postgres_password, app_database_password=app_password)

    def _start(self, keys: _Keys, deadline: float) -> StackInfo:
        s = self.settings
        data, logs = self.data_dir, self.logs_dir
        mocked, mock_keys = list(keys.mock), keys.mock
        base_env = {k: v for k, v in os.environ.items()
                    if k not in _PRIVATE_ENV and not k.startswith(_PRIVATE_PREFIXES)}

        if s.database_url:
            database_url = s.database_url
            owner_url = s.migration_database_url or database_url
        else:
            postgres = self._postgres = EmbeddedPostgres(data / "pgdata", password=keys.postgres_password,
                                                         app_password=keys.app_database_password)
            postgres.prepare()
            self._add("postgres", postgres.argv, base_env, stop_signal=signal.SIGINT, death_signal=signal.SIGINT,
                      stop_timeout=20, user=postgres.user, group=postgres.group, before_start=self._clear_postmaster)
            postgres.pump_logs(self.services["postgres"].log)  # its log in the schema, through the redactor
            self.services["postgres"].start()
            self._wait("postgres", deadline)
            postgres.require_passwords(self._pid("postgres") or 0)
            postgres.ensure_database()
            owner_url = postgres.url()
            database_url = postgres.app_url()
        upgrade(owner_url)
        if self._postgres is not None:
            self._postgres.set_app_password()  # the role exists once the migrations ran

        python = sys.executable
        mock_url = f"http://127.0.0.1:{s.mock_port}"
        if mocked:
            self._add(
                "mock-provider",
                [python, "-m", "uvicorn", "--factory", "controlplane.stack.mock_provider:create_app",
                 "--host", "127.0.0.1", "--port", str(s.mock_port), "--no-access-log"],
                {**base_env, "MOCK_OPENAI_KEY": mock_keys.get("openai", ""),
                 "MOCK_ANTHROPIC_KEY": mock_keys.get("anthropic", ""),
                 "MOCK_UPSTREAMS": json.dumps({u.name: {"kind": u.kind.value, "key": mock_keys[u.name],
                                                        "region": u.region}
                                               for u in s.extra_upstreams() if u.name in mock_keys}),
                 "MOCK_STREAM_INTERVAL": str(s.mock_stream_interval)},
            )

        common = {**base_env, "DATABASE_URL": database_url, "KEYWARD_TOKEN_HASH_KEY": keys.hash_key,
                  "KEYWARD_INGEST_TOKEN": keys.ingest_token, **self._tracing_env(),
                  **({"KEYWARD_UPSTREAMS": s.upstreams} if s.upstreams else {})}
        self._add(
            "controlplane",
            [python, "-m", "uvicorn", "--factory", "controlplane.main:create_app",
             "--host", "127.0.0.1", "--port", str(s.api_port)],
            {**common, "KEYWARD_ADMIN_TOKEN": keys.admin_token,
             "KEYWARD_LIFECYCLE_INTERVAL_SECONDS": str(s.lifecycle_interval_seconds),
             "KEYWARD_NOTIFICATION_INTERVAL_SECONDS": str(s.notification_interval_seconds),
             "KEYWARD_NOTIFICATION_RETRY_SECONDS": str(s.notification_retry_seconds),
             "KEYWARD_NOTIFICATION_MAX_ATTEMPTS": str(s.notification_max_attempts),
             "KEYWARD_BUDGET_ALERT_INTERVAL_SECONDS": str(s.budget_alert_interval_seconds),
             "KEYWARD_SESSION_SECRET": keys.session_secret, "KEYWARD_AUDIT_SIGNING_KEY": keys.audit_key,
             **self._oidc_env()},
        )

        envoy_dir = data / "envoy"
        write_provider_secrets(
            envoy_dir / "secrets",
            openai_key=s.openai_api_key or mock_keys["openai"],
            anthropic_key=s.anthropic_api_key or mock_keys["anthropic"],
        )
        extra = []
        for upstream in s.extra_upstreams():
            mocked_here = upstream.name in mock_keys
            write_upstream_key(envoy_dir / "secrets", upstream,
                               mock_keys[upstream.name] if mocked_here else keys.upstream_keys[upstream.name])
            extra.append(Target(upstream, Upstream.parse(f"{mock_url}/x/{upstream.name}" if mocked_here
                                                         else upstream.url)))
        self._pairs = _PairContext(
            authz_env={**common, "KEYWARD_INGEST_URL": f"http://127.0.0.1:{s.api_port}/api/v1/audit/ingest",
                       "KEYWARD_ENVOY_AUTHZ_TIMEOUT_SECONDS": str(s.authz_timeout_seconds)},
            envoy_env={**base_env, "TZ": "UTC"},  # Envoy's log times (ENVOY_LOG_FORMAT) in UTC
            openai=Upstream.parse(mock_url) if "openai" in mocked else _upstream(s.openai_upstream),
            anthropic=Upstream.parse(mock_url) if "anthropic" in mocked else _upstream(s.anthropic_upstream),
            secrets_dir=envoy_dir / "secrets",
            extra=tuple(extra),
        )
        self._gateway_pair("", s.gateway_port, s.authz_address or f"unix:{data / 'authz.sock'}",
                           self.envoy_admin_address)

        for name in _ORDER:
            if name in self.services and name != "postgres":
                self.services[name].start()
        self.info = StackInfo(
            gateway_url=f"http://127.0.0.1:{s.gateway_port}",
            api_url=f"http://127.0.0.1:{s.api_port}",
            admin_token=keys.admin_token,
            admin_token_is_new=keys.admin_token_is_new,
            database_url=database_url,
            owner_database_url=owner_url,
            mocked=mocked,
            mock_url=mock_url if mocked else None,
            access_log=logs / "access.log",
            logs_dir=logs,
            run_dir=self.run_dir,
            envoy_admin=self.envoy_admin_address,
            authz_metrics_url=self.pairs[""].authz_metrics_url,
        )
        self.wait_ready(max(deadline - time.monotonic(), 1))
        self._supervisor = Supervisor([self.services[n] for n in _ORDER if n in self.services], self._event)
        self._supervisor.start()
        self._note(f"stack up: {', '.join(f'{n} pid {self._pid(n)}' for n in self.services)}")
        return self.info

    def _gateway_pair(self, suffix: str, gateway_port: int, authz_address: str, admin_address: str,
                      authz_env: Mapping[str, str] | None = None) -> GatewayPair:
        """Add an authz and the Envoy it decides for (not started): one gateway replica. The stack's own
        has no suffix; :meth:`add_gateway` adds more, with their own sockets, spool and logs, sharing
        the database, the control plane and the provider keys."""
        s, ctx = self.settings, self._pairs
        assert ctx is not None
        tag = f"-{suffix}" if suffix else ""
        metrics_port = (s.authz_metrics_port if not suffix else None) or _free_port()
        pair = GatewayPair(authz=f"authz{tag}", envoy=f"envoy{tag}", gateway_url=f"http://127.0.0.1:{gateway_port}",
                           admin_address=admin_address,
                           control_address=f"unix:{self.run_dir / f'envoy-control{tag}.sock'}",
                           audit_log=self.data_dir / f"outcomes{tag}" / "envoy-audit.jsonl",
                           access_log=self.logs_dir / f"access{tag}.log",
                           authz_metrics_url=f"http://127.0.0.1:{metrics_port}/metrics")
        self._add(pair.authz, [sys.executable, "-m", "authz"], {
            **ctx.authz_env,
            "KEYWARD_AUTHZ_ADDRESS": authz_address,
            "KEYWARD_AUDIT_SPOOL_DIR": str(self.data_dir / f"spool{tag}"),
            "KEYWARD_ENVOY_AUDIT_LOG": str(pair.audit_log),
            "KEYWARD_ENVOY_CONTROL": pair.control_address,
            "KEYWARD_AUTHZ_METRICS_PORT": str(metrics_port),
            **(authz_env or {}),
        })
        layout = GatewayLayout(
            gateway_port=gateway_port,
            admin_address=admin_address,
            authz_address=authz_address,
            access_log_path=pair.access_log,
            audit_log_path=pair.audit_log,
            control_address=pair.control_address,
            authz_timeout=f"{s.authz_timeout_seconds}s",
            secrets_dir=ctx.secrets_dir,
            openai=ctx.openai,
            anthropic=ctx.anthropic,
            extra=ctx.extra,
            max_body_bytes=s.max_body_bytes,
            openai_organization=s.openai_organization,
            openai_project=s.openai_project,
            node_id=f"keyward-gateway{tag or '-0'}",
            otlp_endpoint=s.otlp_endpoint,
            trace_sample_ratio=s.trace_sample_ratio,
        )
        config_path = self.data_dir / f"envoy{tag}" / "envoy.yaml"
        config_path.parent.mkdir(parents=True, exist_ok=True)
        config_path.write_text(yaml.safe_dump(render(layout), sort_keys=False))
        envoy_argv = [
            shutil.which("envoy", path=str(Path(sys.executable).parent)) or "envoy",
            "-c", str(config_path),
            "--disable-hot-restart",
            "--log-level", s.envoy_log_level,
            "--log-format", ENVOY_LOG_FORMAT,  # its own log as JSON lines in Keyward's schema
            "--drain-time-s", str(max(1, round(s.envoy_drain_seconds))),
            # Each log line is handed to Envoy's file writer as soon as it is logged (min size 0), not
            # every 10 s: the audit log is the record of what each request became, and a killed Envoy
            # loses only what it had not yet written.
            "--file-flush-min-size-kb", "0",
            "--file-flush-interval-msec", "10",
        ]
        if s.envoy_concurrency:
            envoy_argv += ["--concurrency", str(s.envoy_concurrency)]
        self._add(pair.envoy, envoy_argv, ctx.envoy_env, before_start=lambda: self._prepare_envoy(pair))
        self.pairs[suffix] = pair
        return pair

    def add_gateway(self, suffix: str, timeout: float = 60, authz_env: Mapping[str, str] | None = None
                    ) -> GatewayPair:
        """Start another gateway replica (authz + Envoy on a port of its own) against this stack's
        database and control plane, supervised like the rest; :meth:`stop` stops it first.
        ``authz_env`` overrides its authz's settings (another ``DATABASE_URL``, other bounds)."""
        if not suffix or suffix in self.pairs:
            raise StackError(f"gateway {suffix!r} exists")
        pair = self._gateway_pair(suffix, _free_port(), f"unix:{self.data_dir / f'authz-{suffix}.sock'}",
                                  f"unix:{self.run_dir / f'envoy-admin-{suffix}.sock'}", authz_env)
        deadline = time.monotonic() + timeout
        for name in (pair.authz, pair.envoy):
            self.services[name].start()
            self._wait(name, deadline)
            if self._supervisor is not None:
                self._supervisor.watch(self.services[name])
        return pair

    def remove_gateway(self, suffix: str) -> None:
        """Stop a replica :meth:`add_gateway` started (Envoy, then its authz) and forget it."""
        pair = self.pairs.pop(suffix)
        for name in (pair.envoy, pair.authz):
            self.services[name].stop()

    def _add(self, name: str, argv: list[str], env: dict[str, str], *, stop_signal: int = signal.SIGTERM,
             death_signal: int = signal.SIGTERM, stop_timeout: float = 10, user: int | None = None,
             group: int | None = None, before_start: Callable[[], None] | None = None) -> None:
        self.services[name] = Service(
            name, argv, env, LogFile(self.logs_dir / f"{name}.log", self._redactor), self.run_dir / f"{name}.pid",
            stop_signal=stop_signal, death_signal=death_signal, stop_timeout=stop_timeout, user=user, group=group,
            before_start=before_start,
        )

    def _tracing_env(self) -> dict[str, str]:
        """Tracing for authz and the control plane: the stack's setting, whatever the runner inherited
        (an empty endpoint is "off")."""
        s = self.settings
        return {"KEYWARD_OTLP_ENDPOINT": s.otlp_endpoint or "", "KEYWARD_TRACE_SAMPLE_RATIO": str(s.trace_sample_ratio)}

    def _oidc_env(self) -> dict[str, str]:
        s = self.settings
        if not s.oidc_issuer:
            return {}
        values = {name: getattr(s, name) for name in OidcSettings.model_fields}
        values["oidc_redirect_base"] = s.oidc_redirect_base or f"http://127.0.0.1:{s.api_port}"
        return {f"KEYWARD_{name.upper()}": str(value).lower() if isinstance(value, bool) else str(value)
                for name, value in values.items() if value is not None}

    def _prepare_envoy(self, pair: GatewayPair) -> None:
        # A socket file left by a killed Envoy would make the next one fail to bind it. The access log
        # is created private before Envoy opens it, whatever mode Envoy would give it.
        for address in (pair.admin_address, pair.control_address):
            if address.startswith("unix:"):
                Path(address[len("unix:") :]).unlink(missing_ok=True)
        private_dir(pair.audit_log.parent)
        os.close(os.open(pair.access_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
        pair.access_log.chmod(0o600)

    def _clear_postmaster(self) -> None:
        assert self._postgres is not None
        pid = self._postgres.clear_foreign()
        if pid is not None:
            self._event(f"stopped a Postgres (pid {pid}) on {self._postgres.data_dir} that this stack had not "
                        "started")

    def _stop_leftovers(self) -> None:
        """Stop children an earlier run left running (found by pidfile, checked in /proc), Envoy first."""
        rank = {name: i for i, name in enumerate(reversed(_ORDER))}
        for pidfile in sorted(self.run_dir.glob("*.pid"), key=lambda p: (rank.get(p.stem, -1), p.stem)):
            found = leftover(pidfile)
            if found is None:
                pidfile.unlink(missing_ok=True)
                continue
            self._event(f"stopping {found.name} (pid {found.pid}), left running by an earlier run")
            stop_leftover(found)

    # -- events -----------------------------------------------------------------------------------

    def _note(self, message: str) -> None:
        """A line in <logs>/stack.log."""
        if self._log is not None:
            self._log.line(json_line("stack", message))

    def _event(self, message: str) -> None:
        """A line in <logs>/stack.log that is also reported (the console, for ``keyward up``)."""
        self._note(message)
        self.report(self._redactor.text(message))

    def _pid(self, name: str) -> int | None:
        process = self.services[name].process
        return process.pid if process is not None else None

    # -- readiness --------------------------------------------------------------------------------

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        for name in self._probes():
            self._wait(name, deadline)

    def ready(self, name: str) -> bool:
        """Whether child ``name`` answers its readiness probe now."""
        return self._probes()[name]()

    def _wait(self, name: str, deadline: float) -> None:
        probe = self._probes()[name]
        service = self.services[name]
        while not probe():
            if not service.alive():
                code = service.process.returncode if service.process is not None else None
                raise StackError(f"{name} exited during start-up ({describe_exit(code)}); see {service.log_path}")
            if time.monotonic() > deadline:
                raise StackError(f"{name} not ready in time; see {service.log_path}")
            time.sleep(0.05)

    def _probes(self) -> dict[str, Callable[[], bool]]:
        s = self.settings
        probes: dict[str, Callable[[], bool]] = {}
        if self._postgres is not None:
            postgres, service = self._postgres, self.services["postgres"]
            probes["postgres"] = lambda: service.process is not None and postgres.ready(service.process.pid)
        if "mock-provider" in self.services:
            probes["mock-provider"] = lambda: _http_ok(f"http://127.0.0.1:{s.mock_port}/__mock__/requests")
        probes["controlplane"] = lambda: _http_ok(f"http://127.0.0.1:{s.api_port}/readyz")
        for pair in self.pairs.values():
            probes[pair.authz] = lambda name=pair.authz: self.authz_serving(name)  # type: ignore[misc]
            probes[pair.envoy] = lambda pair=pair: self.envoy_ready(pair.admin_address)  # type: ignore[misc]
        return {name: probe for name, probe in probes.items() if name in self.services}

    def authz_serving(self, name: str = "authz") -> bool:
        address = self.services[name].env["KEYWARD_AUTHZ_ADDRESS"]
        try:
            with grpc.insecure_channel(address) as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service="envoy.service.auth.v3.Authorization"), timeout=1
                )
        except grpc.RpcError:
            return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    def envoy_ready(self, admin_address: str | None = None) -> bool:
        address = admin_address or self.envoy_admin_address
        # httpx leaves the socket of a refused Unix-socket connect for the garbage collector: ask first.
        if address.startswith("unix:") and not _accepts(address[len("unix:") :]):
            return False
        try:
            with self.envoy_admin(timeout=1, address=admin_address) as admin:
                return admin.get("/ready").status_code == 200
        except httpx.HTTPError:
            return False

    # -- control ----------------------------------------------------------------------------------

    def restart(self, name: str, timeout: float = 30) -> None:
        """Stop ``name`` on purpose, start it again and wait until it is ready."""
        service = self.services[name]
        service.stop()
        service.start()
        self._wait(name, time.monotonic() + timeout)

    def stop(self) -> None:
        """Stop every child, in order: Envoy (drained), authz, control plane, mock provider, Postgres."""
        if self._supervisor is not None:
            self._supervisor.pause()
        self._drain_envoy()
        extra = [name for pair in self.pairs.values() if pair.envoy != "envoy" for name in (pair.envoy, pair.authz)]
        for name in [*extra, *reversed(_ORDER)]:
            service = self.services.get(name)
            if service is None or service.process is None:
                continue
            was_running = service.alive()
            try:
                service.stop()
            except Exception as exc:  # keep stopping the others
                self._event(f"could not stop {name}: {type(exc).__name__}: {exc}")
                continue
            if was_running:
                self._note(f"{name} stopped ({describe_exit(service.process.returncode)})")
        if self._postgres is not None:
            # A postmaster started by hand (pg_ctl restart) must not outlive the stack either.
            self._clear_postmaster()
            self._postgres.cleanup()
        if self._supervisor is not None:
            self._supervisor.finish()
            self._supervisor = None
        for service in self.services.values():
            service.flush_log()
            service.log.close()
        if self._log is not None:
            self._log.close()

    def _drain_envoy(self) -> None:
        """Ask Envoy to drain its listeners, and wait (up to envoy_drain_seconds) for open requests."""
        envoy = self.services.get("envoy")
        if envoy is None or not envoy.alive():
            return
        deadline = time.monotonic() + self.settings.envoy_drain_seconds
        try:
            with self.envoy_admin() as admin:
                admin.post("/drain_listeners?graceful")
                self._note("envoy draining")
                time.sleep(min(0.2, self.settings.envoy_drain_seconds))
                while time.monotonic() < deadline and _active_requests(admin):
                    time.sleep(0.1)
        except httpx.HTTPError as exc:
            self._note(f"envoy could not be drained: {type(exc).__name__}")


def _active_requests(admin: httpx.Client) -> int:
    reply = admin.get("/stats", params={"filter": r"^http\.gateway\.downstream_rq_active$", "format": "json"})
    stats = reply.json().get("stats", [])
    return int(stats[0]["value"]) if stats else 0


def _http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
