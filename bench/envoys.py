"""The two Envoy processes the benchmark runs next to the stack: the fixed-response upstream and plain Envoy.

Both bind port 0 (listener and admin) and report what they got through ``--admin-address-path`` and the
admin ``/listeners`` endpoint, so nothing races another process for a port.

Plain Envoy is the gateway's own configuration (``controlplane.stack.envoy_config.render``) with the
ext_authz filter and the authz cluster taken out: same listener, connection manager, access log, local
reply mappers, route rewrite and credential-injecting provider cluster; each API's route goes to its default
upstream without waiting for authz to name it. The only difference left between (b) and (c) is the
authorization call (and the second route match its routing header makes Envoy do).
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

from controlplane.stack.envoy_config import GatewayLayout, Upstream, render, write_provider_secrets

#: What the fixed upstream answers to every request: a small, valid OpenAI chat completion.
FIXED_COMPLETION = json.dumps({
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "created": 1700000000,
    "model": "gpt-4o-mini",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello!"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 8, "completion_tokens": 2, "total_tokens": 10},
}, separators=(",", ":"))

_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
_BUFFER = "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer"
_EXT_AUTHZ = "envoy.filters.http.ext_authz"


def envoy_binary() -> Path:
    return Path(__file__).resolve().parents[1] / ".venv" / "bin" / "envoy"


def envoy_version() -> str:
    argv = [str(envoy_binary()), "--version"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    return out.strip().split("version:", 1)[-1].strip()


def _admin_on_port_zero() -> dict:
    return {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}}


def upstream_config() -> dict:
    """A listener whose only route is a ``direct_response`` with :data:`FIXED_COMPLETION`.

    The buffer filter makes Envoy read the whole request body before answering: an HTTP/1.1 response
    sent before the request is complete makes Envoy close the connection, which would turn the
    keep-alive benchmark into a connect-per-request one.
    """
    return {
        "admin": _admin_on_port_zero(),
        "static_resources": {"listeners": [{
            "name": "upstream",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": _HCM,
                    "stat_prefix": "upstream",
                    "codec_type": "AUTO",
                    "route_config": {
                        "name": "fixed",
                        "virtual_hosts": [{"name": "fixed", "domains": ["*"], "routes": [{
                            "match": {"prefix": "/"},
                            "direct_response": {"status": 200, "body": {"inline_string": FIXED_COMPLETION}},
                        }]}],
                        "response_headers_to_add": [{
                            "header": {"key": "content-type", "value": "application/json"},
                            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                        }],
                    },
                    "http_filters": [
                        {"name": "envoy.filters.http.buffer",
                         "typed_config": {"@type": _BUFFER, "max_request_bytes": 1_048_576}},
                        {"name": "envoy.filters.http.router", "typed_config": {"@type": _ROUTER}},
                    ],
                },
            }]}],
        }]},
    }


def plain_config(work: Path, upstream_url: str) -> dict:
    """The gateway's rendered configuration without ext_authz (see the module docstring)."""
    secrets_dir = work / "secrets"
    write_provider_secrets(secrets_dir, openai_key="bench-dummy-key", anthropic_key="bench-dummy-key")
    upstream = Upstream.parse(upstream_url)
    layout = GatewayLayout(
        gateway_port=0,
        # This bench-only Envoy reports its admin port through --admin-address-path (see EnvoyProcess);
        # the gateway's own admin is a Unix socket.
        admin_address="127.0.0.1:0",
        authz_address="unix:/nonexistent/authz.sock",  # removed below; render() needs a value
        access_log_path=work / "access.log",
        audit_log_path=work / "audit.jsonl",
        control_address=f"unix:{work / 'control.sock'}",
        secrets_dir=secrets_dir,
        openai=upstream,
        anthropic=upstream,
    )
    config = render(layout)
    removed = 0
    for listener in config["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for network_filter in chain["filters"]:
                hcm = network_filter["typed_config"]
                before = len(hcm["http_filters"])
                hcm["http_filters"] = [f for f in hcm["http_filters"] if f["name"] != _EXT_AUTHZ]
                removed += before - len(hcm["http_filters"])
                if before != len(hcm["http_filters"]):
                    _route_without_authz(hcm)
    if removed != 1:  # the gateway listener has it; the control listener has none
        raise RuntimeError("gateway template changed: expected exactly one ext_authz filter")
    clusters = config["static_resources"]["clusters"]
    config["static_resources"]["clusters"] = [c for c in clusters if c["name"] != "keyward_authz"]
    return config


def _route_without_authz(hcm: dict) -> None:
    """Without authz nobody names the upstream (``x-keyward-upstream``): each API's routes go to its default
    upstream as they would once authz has named it, and the routes that wait for authz's answer go."""
    for host in hcm["route_config"]["virtual_hosts"]:
        routed = [route for route in host["routes"] if "route" in route and route["match"].get("headers")]
        for route in routed:
            del route["match"]["headers"]
        host["routes"] = routed


@dataclass
class EnvoyProcess:
    """One Envoy started from a config dict, on ports it picked itself."""

    name: str
    config: dict
    work: Path
    concurrency: int
    process: subprocess.Popen | None = None
    admin_url: str = ""
    port: int = 0

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def argv(self) -> list[str]:
        return [str(envoy_binary()), "-c", str(self.work / "envoy.yaml"), "--disable-hot-restart",
                "--log-level", "warn", "--concurrency", str(self.concurrency),
                "--admin-address-path", str(self.work / "admin-address")]

    def start(self, timeout: float = 30) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        (self.work / "envoy.yaml").write_text(yaml.safe_dump(self.config, sort_keys=False))
        with (self.work / "envoy.log").open("ab") as log:
            self.process = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        deadline = time.monotonic() + timeout
        address_file = self.work / "admin-address"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"envoy {self.name} exited; see {self.work / 'envoy.log'}")
            if address_file.exists() and address_file.read_text().strip():
                self.admin_url = "http://" + address_file.read_text().strip()
                if self._ready():
                    self.port = self._listener_port()
                    return
            time.sleep(0.05)
        raise RuntimeError(f"envoy {self.name} not ready after {timeout}s; see {self.work / 'envoy.log'}")

    def _ready(self) -> bool:
        try:
            return httpx.get(f"{self.admin_url}/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def _listener_port(self) -> int:
        reply = httpx.get(f"{self.admin_url}/listeners?format=json", timeout=2).json()
        return int(reply["listener_statuses"][0]["local_address"]["socket_address"]["port_value"])

    def counter(self, name: str) -> int:
        """One counter from the admin stats endpoint (0 when absent)."""
        stats = httpx.get(f"{self.admin_url}/stats?format=json&filter=^{name}$", timeout=2).json()["stats"]
        return int(stats[0]["value"]) if stats else 0

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
