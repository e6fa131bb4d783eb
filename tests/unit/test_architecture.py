"""The structure docs/ARCHITECTURE.md describes, checked from the source: imports run downward only.

Imports are read from the syntax tree of every module (lazy imports inside functions included), so
a circle or an upward import fails here before it becomes a tangle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("authz", "controlplane")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if "alembic" not in path.parts:
                found[_module_name(path)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The project modules ``name`` imports (``from pkg import mod`` counts as importing pkg.mod)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parents = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parents + ([base] if base else []))
            # "from pkg import mod" imports the module pkg.mod; "from mod import name" imports mod.
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for following in GRAPH[node]:
            if following not in index:
                visit(following)
                low[node] = min(low[node], low[following])
            elif following in on_stack:
                low[node] = min(low[node], index[following])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in GRAPH:
        if node not in index:
            visit(node)
    return components


def test_the_graph_is_read() -> None:
    # A reader that found nothing would pass every rule below.
    assert "controlplane.services.lifecycle" in GRAPH["controlplane.services.users"]
    assert "authz.pipeline" in GRAPH["authz.servicer"]


def test_no_import_circles() -> None:
    assert _cycles() == []


def test_authz_never_imports_the_control_plane() -> None:
    offenders = {name: sorted(t for t in targets if t.startswith("controlplane"))
                 for name, targets in GRAPH.items() if name.startswith("authz")}
    assert {name: targets for name, targets in offenders.items() if targets} == {}


#: Layers of the control plane, top first; a module may import its own layer or any below it.
LAYERS = [
    ("entry points", ("controlplane.main", "controlplane.background", "controlplane.cli", "controlplane.stack")),
    ("surfaces", ("controlplane.api", "controlplane.scim.routes", "controlplane.web")),
    ("services", ("controlplane.services", "controlplane.scim", "controlplane.oidc", "controlplane.audit",
                  "controlplane.migrate")),
    ("core", ("controlplane.models", "controlplane.schemas", "controlplane.errors", "controlplane.core",
              "controlplane.audit.chain", "controlplane.audit.signing", "controlplane.audit.events")),
]


def _layer(name: str) -> int | None:
    """The layer of a control-plane module: the longest matching prefix decides."""
    best: tuple[int, int] | None = None
    for depth, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and (best is None or len(prefix) > best[1]):
                best = (depth, len(prefix))
    return best[0] if best else None


@pytest.mark.parametrize("name", sorted(n for n in GRAPH if n.startswith("controlplane.") and _layer(n) is not None))
def test_control_plane_imports_run_downward(name: str) -> None:
    mine = _layer(name)
    assert mine is not None
    upward = sorted(target for target in GRAPH[name]
                    if target.startswith("controlplane.") and (layer := _layer(target)) is not None and layer < mine)
    assert upward == [], f"{name} ({LAYERS[mine][0]}) imports from a layer above it"
