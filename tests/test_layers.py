"""The layers of the package point down (issue #19, item 5; docs/ARCHITECTURE.md, "Layers").

The import graph is read from the source with ``ast`` (every ``import`` statement, also the ones
inside functions, so a lazy import cannot hide an upward edge) and checked against ``LAYERS``:
a subpackage may import its own layer and the layers below it, never one above, and no two
modules import each other through any chain. Run this file alone to see the graph's faults.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# Bottom to top. A module of layer i may import modules of layers 0..i only.
LAYERS: list[set[str]] = [
    {"(root)", "errors", "limits", "atomic", "config", "checkpoint", "devices", "precision", "imagefile"},
    {"diffusion", "data"},
    {"models", "components"},
    {"encoders"},
    {"pipelines", "interop"},   # interop: diffusers-format models as pipelines (load_pipeline opens them)
    {"eval"},
    {"train"},
    {"serve"},
    {"cli"},
]



def _modules() -> dict[str, Path]:
    mods = {}
    for path in (SRC / "unclip").rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def _targets(module: str, node: ast.AST, is_package: bool, mods: dict[str, Path]) -> list[str]:
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = module.split(".") if is_package else module.split(".")[:-1]
        if node.level:
            base = base[: len(base) - node.level + 1]
            prefix = ".".join(base + ([node.module] if node.module else []))
        else:
            prefix = node.module or ""
        names = [f"{prefix}.{alias.name}" if f"{prefix}.{alias.name}" in mods else prefix for alias in node.names]
    found = []
    for name in names:
        while name not in mods and "." in name:
            name = name.rsplit(".", 1)[0]
        if name in mods and name != module:
            found.append(name)
    return found


def import_graph() -> dict[str, set[str]]:
    """unclip module → the unclip modules it imports anywhere in its source."""
    mods = _modules()
    graph: dict[str, set[str]] = defaultdict(set)
    for module, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                graph[module].update(_targets(module, node, path.name == "__init__.py", mods))
    return graph


def _layer_of(module: str) -> int:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "(root)"
    for index, layer in enumerate(LAYERS):
        if top in layer:
            return index
    raise AssertionError(f"{module}: its subpackage {top!r} is in no layer; add it to LAYERS")


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan 1972)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_module_is_in_a_layer_and_imports_only_downwards():
    graph = import_graph()
    upward = sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets if _layer_of(b) > _layer_of(a))
    assert not upward, "imports that point up a layer (see LAYERS):\n" + "\n".join(upward)


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_the_checker_sees_a_planted_upward_import_and_a_cycle():
    graph = import_graph()
    graph["unclip.models.unet"] = set(graph["unclip.models.unet"]) | {"unclip.train.engine"}
    graph["unclip.train.engine"] = set(graph["unclip.train.engine"]) | {"unclip.models.unet"}
    assert _layer_of("unclip.train.engine") > _layer_of("unclip.models.unet")
    assert any("unclip.models.unet" in c and "unclip.train.engine" in c for c in cycles(graph))
