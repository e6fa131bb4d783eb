"""Run the whole stack on one machine: Postgres, control plane, authz, Envoy and (when no real
provider key is configured) the mock provider. ``make up`` and the end-to-end tests both use this.

Secrets are handled so that each process sees only its own:

* provider keys are written to Envoy's SDS files (0600) and removed from every child's environment;
* the token hash key and the bootstrap admin token live in ``<data_dir>/secrets`` (0600) and are
  given to the control plane (both) and authz (hash key only); so does the session secret that signs
  the control plane's sign-in state (control plane only).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from controlplane.audit import signing
from controlplane.core.config import OidcSettings
from controlplane.migrate import upgrade
from controlplane.stack.embedded_pg import APP_ROLE, EmbeddedPostgres, with_user
from controlplane.stack.envoy_config import GatewayLayout, Upstream, render, write_provider_secrets

#: Variables no child process may inherit: provider credentials belong to Envoy's secret files only.
_PROVIDER_SECRETS = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY")


class StackSettings(OidcSettings, BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KEYWARD_", extra="ignore", populate_by_name=True)

    data_dir: Path = Path(".keyward")
    gateway_port: int = Field(default=8080, ge=1, le=65535)
    api_port: int = Field(default=8000, ge=1, le=65535)
    envoy_admin_port: int = Field(default=9901, ge=1, le=65535)
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
    max_body_bytes: int = Field(default=1_048_576, gt=0)
    envoy_concurrency: int = Field(default=0, ge=0, description="0: one worker per core")
    #: Seconds between chunks of the mock provider's streams.
    mock_stream_interval: float = 0.1
    #: How often the control plane records expiries and applies the dormant-token policy.
    lifecycle_interval_seconds: float = 30
    # Sign-in with OpenID Connect: the OidcSettings fields, passed to the control plane as KEYWARD_OIDC_*
    # (the redirect base defaults to http://127.0.0.1:<api_port>).


@dataclass
class Service:
    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> None:
        if not self.alive():
            return
        assert self.process is not None
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


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


class StackError(RuntimeError):
    pass


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _read_or_create(path: Path, make: Callable[[], str]) -> tuple[str, bool]:
    if path.exists():
        return path.read_text().strip(), False
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    value = make()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    return value, True


def _upstream(url: str) -> Upstream:
    upstream = Upstream.parse(url)
    # People paste SDK base URLs ("…/v1"); the gateway forwards /v1/… itself.
    if upstream.path.endswith("/v1"):
        upstream = Upstream(upstream.scheme, upstream.host, upstream.port, upstream.path[:-3])
    return upstream


@dataclass
class Stack:
    settings: StackSettings
    services: dict[str, Service] = field(default_factory=dict)
    _postgres: EmbeddedPostgres | None = None
    info: StackInfo | None = None

    @property
    def data_dir(self) -> Path:
        return self.settings.data_dir.resolve()

    def start(self, timeout: float = 60) -> StackInfo:
        s = self.settings
        wanted = [s.gateway_port, s.api_port, s.envoy_admin_port]
        mocked = [name for name, key in (("openai", s.openai_api_key), ("anthropic", s.anthropic_api_key)) if not key]
        if mocked:
            wanted.append(s.mock_port)
        taken = [port for port in wanted if not _port_free(port)]
        if taken:
            raise StackError(
                f"port(s) {taken} already in use; set KEYWARD_GATEWAY_PORT / KEYWARD_API_PORT / "
                "KEYWARD_ENVOY_ADMIN_PORT / KEYWARD_MOCK_PORT to free ones"
            )
        data = self.data_dir
        data.mkdir(parents=True, exist_ok=True)
        secrets_dir, logs = data / "secrets", data / "logs"
        hash_key, _ = _read_or_create(secrets_dir / "token_hash_key", lambda: secrets.token_hex(32))
        if s.admin_token:
            admin_token, admin_new = s.admin_token, False
        else:
            admin_token, admin_new = _read_or_create(
                secrets_dir / "admin_token", lambda: "kw_admin_" + secrets.token_urlsafe(32)
            )

        if s.database_url:
            database_url = s.database_url
            owner_url = s.migration_database_url or database_url
        else:
            self._postgres = EmbeddedPostgres(data / "pgdata")
            owner_url = self._postgres.start()
            database_url = with_user(owner_url, APP_ROLE)
        upgrade(owner_url)
        ingest_token, _ = _read_or_create(secrets_dir / "ingest_token", lambda: secrets.token_urlsafe(32))
        session_secret, _ = _read_or_create(secrets_dir / "session_secret", lambda: secrets.token_urlsafe(32))
        audit_key, _ = _read_or_create(secrets_dir / "audit_signing_key", signing.new_private_key)
        (secrets_dir / "audit_public_key").write_text(signing.Signer(audit_key).public_key + "\n")

        base_env = {k: v for k, v in os.environ.items() if k not in _PROVIDER_SECRETS and not k.startswith("MOCK_")}
        python = sys.executable
        mock_keys = {name: "mock-" + secrets.token_hex(16) for name in mocked}
        mock_url = f"http://127.0.0.1:{s.mock_port}"
        if mocked:
            self._add(
                Service(
                    "mock-provider",
                    [
                        python,
                        "-m",
                        "uvicorn",
                        "--factory",
                        "controlplane.stack.mock_provider:create_app",
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(s.mock_port),
                        "--no-access-log",
                    ],
                    {
                        **base_env,
                        "MOCK_OPENAI_KEY": mock_keys.get("openai", ""),
                        "MOCK_ANTHROPIC_KEY": mock_keys.get("anthropic", ""),
                        "MOCK_STREAM_INTERVAL": str(s.mock_stream_interval),
                    },
                    logs / "mock-provider.log",
                )
            )

        common = {**base_env, "DATABASE_URL": database_url, "KEYWARD_TOKEN_HASH_KEY": hash_key,
                  "KEYWARD_INGEST_TOKEN": ingest_token}
        self._add(
            Service(
                "controlplane",
                [
                    python,
                    "-m",
                    "uvicorn",
                    "--factory",
                    "controlplane.main:create_app",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(s.api_port),
                ],
                {**common, "KEYWARD_ADMIN_TOKEN": admin_token,
                 "KEYWARD_LIFECYCLE_INTERVAL_SECONDS": str(s.lifecycle_interval_seconds),
                 "KEYWARD_SESSION_SECRET": session_secret, "KEYWARD_AUDIT_SIGNING_KEY": audit_key,
                 **self._oidc_env()},
                logs / "controlplane.log",
            )
        )

        authz_address = s.authz_address or f"unix:{data / 'authz.sock'}"
        authz_env = {
            **common,
            "KEYWARD_AUTHZ_ADDRESS": authz_address,
            "KEYWARD_AUDIT_SPOOL_DIR": str(data / "spool"),
            "KEYWARD_INGEST_URL": f"http://127.0.0.1:{s.api_port}/api/v1/audit/ingest",
        }
        self._add(Service("authz", [python, "-m", "authz"], authz_env, logs / "authz.log"))

        envoy_dir = data / "envoy"
        write_provider_secrets(
            envoy_dir / "secrets",
            openai_key=s.openai_api_key or mock_keys["openai"],
            anthropic_key=s.anthropic_api_key or mock_keys["anthropic"],
        )
        layout = GatewayLayout(
            gateway_port=s.gateway_port,
            admin_port=s.envoy_admin_port,
            authz_address=authz_address,
            access_log_path=logs / "access.log",
            secrets_dir=envoy_dir / "secrets",
            openai=Upstream.parse(mock_url) if "openai" in mocked else _upstream(s.openai_upstream),
            anthropic=Upstream.parse(mock_url) if "anthropic" in mocked else _upstream(s.anthropic_upstream),
            max_body_bytes=s.max_body_bytes,
        )
        config_path = envoy_dir / "envoy.yaml"
        config_path.write_text(yaml.safe_dump(render(layout), sort_keys=False))
        envoy_argv = [
            shutil.which("envoy", path=str(Path(python).parent)) or "envoy",
            "-c",
            str(config_path),
            "--disable-hot-restart",
            "--log-level",
            "warn",
            # Access-log lines reach the file within a second (Envoy's default is 10 s).
            "--file-flush-interval-msec",
            "1000",
        ]
        if s.envoy_concurrency:
            envoy_argv += ["--concurrency", str(s.envoy_concurrency)]
        self._add(Service("envoy", envoy_argv, base_env, logs / "envoy.log"))

        for service in self.services.values():
            service.start()
        self.info = StackInfo(
            gateway_url=f"http://127.0.0.1:{s.gateway_port}",
            api_url=f"http://127.0.0.1:{s.api_port}",
            admin_token=admin_token,
            admin_token_is_new=admin_new,
            database_url=database_url,
            owner_database_url=owner_url,
            mocked=mocked,
            mock_url=mock_url if mocked else None,
            access_log=logs / "access.log",
            logs_dir=logs,
        )
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self.info

    def _oidc_env(self) -> dict[str, str]:
        s = self.settings
        if not s.oidc_issuer:
            return {}
        values = {name: getattr(s, name) for name in OidcSettings.model_fields}
        values["oidc_redirect_base"] = s.oidc_redirect_base or f"http://127.0.0.1:{s.api_port}"
        return {f"KEYWARD_{name.upper()}": str(value).lower() if isinstance(value, bool) else str(value)
                for name, value in values.items() if value is not None}

    def _add(self, service: Service) -> None:
        self.services[service.name] = service

    # -- readiness --------------------------------------------------------------------------------

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        for name, probe in self._probes().items():
            while not probe():
                service = self.services[name]
                if not service.alive():
                    raise StackError(f"{name} exited during start-up; see {service.log_path}")
                if time.monotonic() > deadline:
                    raise StackError(f"{name} not ready after {timeout:.0f}s; see {service.log_path}")
                time.sleep(0.1)

    def _probes(self) -> dict[str, Callable[[], bool]]:
        s = self.settings
        probes: dict[str, Callable[[], bool]] = {}
        if "mock-provider" in self.services:
            probes["mock-provider"] = lambda: _http_ok(f"http://127.0.0.1:{s.mock_port}/__mock__/requests")
        probes["controlplane"] = lambda: _http_ok(f"http://127.0.0.1:{s.api_port}/readyz")
        probes["authz"] = self.authz_serving
        probes["envoy"] = lambda: _http_ok(f"http://127.0.0.1:{s.envoy_admin_port}/ready")
        return probes

    def authz_serving(self) -> bool:
        address = self.services["authz"].env["KEYWARD_AUTHZ_ADDRESS"]
        try:
            with grpc.insecure_channel(address) as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service="envoy.service.auth.v3.Authorization"), timeout=1
                )
        except grpc.RpcError:
            return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    # -- control ----------------------------------------------------------------------------------

    def restart(self, name: str, timeout: float = 30) -> None:
        service = self.services[name]
        service.stop()
        service.start()
        probe = self._probes()[name]
        deadline = time.monotonic() + timeout
        while not probe():
            if time.monotonic() > deadline or not service.alive():
                raise StackError(f"{name} did not come back; see {service.log_path}")
            time.sleep(0.05)

    def stop(self) -> None:
        for service in reversed(list(self.services.values())):
            service.stop()
        if self._postgres is not None:
            self._postgres.stop()
            self._postgres = None

    def first_dead(self) -> Service | None:
        return next((svc for svc in self.services.values() if not svc.alive()), None)


def _http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
