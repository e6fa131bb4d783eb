"""Copy the generated parts of the local Envoy configuration into the Helm chart.

controlplane/stack/envoy_config.py builds these parts of it in Python: the local-reply mappers, the token
usage rules of the JSON and SSE filters, the audit log's format, the Lua filter's script, the per-route
filter settings some kinds' routes carry (Lua scripts) and the entry routes (what a request matches before
authz has chosen its upstream). authz/upstreams.py says what each kind of upstream serves, where its paths
go and which header carries its key. The chart ships all of it as files/*.json, which its templates
include. Run this after changing any of them (tests/unit/test_helm_chart.py says when):

    .venv/bin/python k8s/sync_envoy_files.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILES = ROOT / "k8s" / "keyward" / "files"

def _kinds(routes: list[dict]) -> dict[str, object]:
    """What the chart needs to know of each kind of upstream, from authz/upstreams.py: the routes one gets
    (the API's gateway prefix and what replaces it after the URL's path; ``mcp``: a route per server at
    ``/mcp/<name>`` to the URL's path), each with the per-route filter settings its kind's routes carry in
    ``routes`` (the rendered upstream routes of one upstream of every kind, named like its kind), the
    header its key goes in and the value's form (``{key}`` is the key; no header: AWS-signed), and the
    forms of a name and of a region."""
    from authz import upstreams
    from authz.upstreams import Api

    table: dict[str, object] = {}
    for kind in upstreams.Kind:
        header = upstreams.KEY_HEADERS[kind]
        rendered = [route for route in routes if route["route"]["cluster"] == kind.value]
        assert len(rendered) == len(upstreams.SERVES[kind]), kind
        table[kind.value] = {
            "routes": [{"api": api.value, "prefix": upstreams.PREFIXES[api], "mcp": api is Api.MCP,
                        "rewrite": upstreams.UPSTREAM_PATHS[kind][api],
                        "typedPerFilterConfig": route.get("typed_per_filter_config")}
                       for api, route in zip(upstreams.SERVES[kind], rendered, strict=True)],
            "header": header[0] if header else None,
            "value": header[1] if header else None,
        }
    # Go's regexp has no \Z; its $ (without the m flag) already means the end of the text.
    return {"kinds": table, "builtin": ["openai", "anthropic"], "routeHeader": upstreams.ROUTE_HEADER,
            "namePattern": upstreams.NAME.pattern.replace(r"\Z", "$"),
            "regionPattern": upstreams._REGION.pattern.replace(r"\Z", "$")}


def generated() -> dict[str, object]:
    """File name -> content, taken from what the local stack renders."""
    sys.path.insert(0, str(ROOT))
    from authz.upstreams import Kind, Upstreams
    from controlplane.stack.envoy_config import GatewayLayout, Target, Upstream, render

    upstream = Upstream.parse("https://api.openai.com")
    # One upstream of every kind besides openai's and anthropic's, named like its kind.
    others = [{"name": kind.value, "kind": kind.value, "url": "https://upstream.example.com"}
              | ({"region": "us-east-1"} if kind is Kind.BEDROCK else {})
              for kind in Kind if kind not in (Kind.OPENAI, Kind.ANTHROPIC)]
    extra = tuple(Target(u, Upstream.parse(u.url)) for u in Upstreams.parse(json.dumps(others)).all[2:])
    config = render(GatewayLayout(gateway_port=8080, admin_address="unix:/admin.sock",
                                  authz_address="unix:/sockets/authz.sock",
                                  access_log_path=Path("/dev/stdout"), audit_log_path=Path("/outcomes/audit.jsonl"),
                                  control_address="unix:/sockets/envoy-control.sock", secrets_dir=Path("/keys"),
                                  openai=upstream, anthropic=upstream, extra=extra))
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    filters = {f["name"]: f["typed_config"] for f in manager["http_filters"]}
    routes = manager["route_config"]["virtual_hosts"][0]["routes"]
    return {
        "local-reply-mappers.json": manager["local_reply_config"]["mappers"],
        "audit-log-format.json": next(log["typed_config"]["log_format"] for log in manager["access_log"]
                                      if log["typed_config"]["path"] == "/outcomes/audit.jsonl"),
        "json-usage-rules.json": filters["envoy.filters.http.json_to_metadata"]["response_rules"]["rules"],
        "sse-usage-rules.json":
            filters["envoy.filters.http.sse_to_metadata"]["response_rules"]["content_parser"]["typed_config"]["rules"],
        # The Lua filter's script, as a JSON string (YAML takes it as a double-quoted scalar).
        "stream-usage.lua.json": filters["envoy.filters.http.lua"]["default_source_code"]["inline_string"],
        # The routes that never forward (they follow the upstream routes): the same for every set of upstreams.
        "entry-routes.json": [route for route in routes if "direct_response" in route],
        "upstream-kinds.json": _kinds([route for route in routes if "route" in route]),
    }


def main() -> None:
    for name, content in generated().items():
        (FILES / name).write_text(json.dumps(content) + "\n")
        print(f"wrote {FILES / name}")


if __name__ == "__main__":
    main()
