"""The package's modules import each other without cycles, lazy (function-level) imports included."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "medmamba"


def _modules() -> dict[str, tuple[Path, bool]]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return out


def _import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere in its body (``TYPE_CHECKING`` blocks excluded)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in modules.items():
        edges: set[str] = set()
        package = name.split(".") if is_package else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test):
                node.body = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            edges.update(t for t in targets if t in modules and t != name)
        graph[name] = edges
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles_between_modules() -> None:
    graph = _import_graph()
    assert len(graph) > 50
    assert _cycles(graph) == []


def test_the_cycle_detector_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_converter_and_synthesis_dependencies_run_one_way() -> None:
    graph = _import_graph()
    assert "medmamba.networks.convert" in graph["medmamba.networks.nets.mobilemamba"]
    assert not any(m.startswith("medmamba.networks.nets") for m in graph["medmamba.networks.convert"])
    assert "medmamba.data.head_model" in graph["medmamba.data.synthetic"]
    assert "medmamba.data.synthetic" not in graph["medmamba.data.head_model"]


#: the package's layers, lowest first; a subpackage imports only from layers below its own
LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"resources", "networks", "io"}),
    frozenset({"data", "training", "losses"}),
    frozenset({"transforms"}),
    frozenset({"inferers"}),
    frozenset({"metrics"}),
    frozenset({"handlers"}),
    frozenset({"visualize", "bundle"}),
    frozenset({"apps"}),
)


def _subpackage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_subpackages_import_only_downward() -> None:
    layer = {name: i for i, names in enumerate(LAYERS) for name in names}
    graph = _import_graph()
    subpackages = {_subpackage(m) for m in graph} - {""}
    assert subpackages <= set(layer), f"subpackages without a layer: {sorted(subpackages - set(layer))}"
    upward = sorted(
        f"{a} -> {b}"
        for a, targets in graph.items()
        for b in targets
        if _subpackage(a) and _subpackage(b) and _subpackage(a) != _subpackage(b)
        and layer[_subpackage(b)] >= layer[_subpackage(a)]
    )
    assert upward == []


def test_no_module_is_longer_than_600_lines() -> None:
    lengths = {p.relative_to(PACKAGE.parent).as_posix(): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert max(lengths.values()) > 100
    assert {p: n for p, n in lengths.items() if n > 600} == {}
