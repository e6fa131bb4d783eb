"""Copy the generated parts of the local Envoy configuration into the Helm chart.

controlplane/stack/envoy_config.py builds five parts of it in Python (the local-reply mappers, the token
usage rules of the JSON and SSE filters, the audit log's format and the Lua filter's script); the chart ships them as
files/*.json, which its Envoy ConfigMap includes. Run this after changing them
(tests/unit/test_helm_chart.py says when):

    .venv/bin/python k8s/sync_envoy_files.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILES = ROOT / "k8s" / "keyward" / "files"


def generated() -> dict[str, object]:
    """File name -> content, taken from what the local stack renders."""
    sys.path.insert(0, str(ROOT))
    from controlplane.stack.envoy_config import GatewayLayout, Upstream, render

    upstream = Upstream.parse("https://api.openai.com")
    config = render(GatewayLayout(gateway_port=8080, admin_address="unix:/admin.sock",
                                  authz_address="unix:/sockets/authz.sock",
                                  access_log_path=Path("/dev/stdout"), audit_log_path=Path("/outcomes/audit.jsonl"),
                                  control_address="unix:/sockets/envoy-control.sock", secrets_dir=Path("/keys"),
                                  openai=upstream, anthropic=upstream))
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    filters = {f["name"]: f["typed_config"] for f in manager["http_filters"]}
    return {
        "local-reply-mappers.json": manager["local_reply_config"]["mappers"],
        "audit-log-format.json": next(log["typed_config"]["log_format"] for log in manager["access_log"]
                                      if log["typed_config"]["path"] == "/outcomes/audit.jsonl"),
        "json-usage-rules.json": filters["envoy.filters.http.json_to_metadata"]["response_rules"]["rules"],
        "sse-usage-rules.json":
            filters["envoy.filters.http.sse_to_metadata"]["response_rules"]["content_parser"]["typed_config"]["rules"],
        # The Lua filter's script, as a JSON string (YAML takes it as a double-quoted scalar).
        "stream-usage.lua.json": filters["envoy.filters.http.lua"]["default_source_code"]["inline_string"],
    }


def main() -> None:
    for name, content in generated().items():
        (FILES / name).write_text(json.dumps(content) + "\n")
        print(f"wrote {FILES / name}")


if __name__ == "__main__":
    main()
