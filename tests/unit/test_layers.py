"""The package's import structure: no import cycles, and no import from a lower layer to a higher one.

Every ``import`` statement counts, including those inside functions (only ``if TYPE_CHECKING:``
blocks are skipped: they never run). ``LAYERS`` below is the one place the layer order is
written; docs/architecture.md explains it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("benchmark", "baselines")

# Lowest first. A module may import its own layer and the layers before it, never a later one.
# A name matches a module and everything below it (``benchmark.data`` covers benchmark.data.splits).
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("benchmark.errors", "benchmark.util", "benchmark.progress", "benchmark.runlock", "benchmark.help", "benchmark.untrusted")),
    ("config", ("benchmark.config",)),
    ("data", ("benchmark.data",)),
    ("eval", ("benchmark.eval",)),
    ("models", ("benchmark.models", "baselines.bridge", "baselines.compat", "baselines.recbole_model")),
    ("training", ("benchmark.training", "benchmark.distributed", "benchmark.predict")),
    ("results", ("benchmark.results", "benchmark.loggers", "benchmark.audit")),
    ("align", ("benchmark.align",)),
    ("compose", ("benchmark.compose", "benchmark.checks", "benchmark.launch", "benchmark.slurm")),
    ("run", ("benchmark.run",)),
    ("tools", ("benchmark.explain", "benchmark.reproduce", "benchmark.paper", "benchmark.bench", "benchmark.audit.committed", "benchmark.conversation", "baselines.crosscheck", "baselines.recbole_pop", "benchmark.tune")),
    ("cli", ("benchmark.cli", "benchmark.__main__")),
]
# Package markers: their __init__ imports nothing of the package.
ANY_LAYER = ("benchmark", "baselines")


def module_files() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def _runtime_nodes(tree: ast.AST):
    """Every node except those under ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        yield node
        stack.extend(ast.iter_child_nodes(node))


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules ``name`` imports (module level and inside functions)."""
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_pkg else 0)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in modules:  # `import benchmark.data.splits` -> that module
                t = t.rpartition(".")[0] if "." in t else ""
            if t and t != name and not (t in ANY_LAYER and t != targets[0]):
                found.add(t)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def layer_of(name: str) -> int | None:
    best: tuple[int, int] | None = None  # (prefix length, layer): the longest matching prefix wins
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if name == p or name.startswith(p + "."):
                if best is None or len(p) > best[0]:
                    best = (len(p), i)
    return None if best is None else best[1]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    out = []
    for a in sorted(graph):
        la = layer_of(a)
        for b in sorted(graph[a]):
            lb = layer_of(b)
            if la is not None and lb is not None and lb > la:
                out.append(f"{a} ({LAYERS[la][0]}) -> {b} ({LAYERS[lb][0]})")
    return out


def test_every_module_has_a_layer() -> None:
    missing = [m for m in module_files() if m not in ANY_LAYER and layer_of(m) is None]
    assert not missing, f"modules without a layer (add them to LAYERS): {missing}"


def test_no_import_cycles() -> None:
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_no_import_from_a_lower_layer_to_a_higher_one() -> None:
    found = upward_imports(import_graph())
    assert not found, "imports that run up the layers:\n" + "\n".join(found)


def test_package_markers_import_nothing_of_the_package() -> None:
    graph = import_graph()
    assert not graph.get("benchmark") and not graph.get("baselines")


# The checker itself, on a constructed package: it must find a planted cycle and upward import.
def test_checker_finds_planted_cycle_and_upward_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    graph = {"benchmark.data.a": {"benchmark.data.b"}, "benchmark.data.b": {"benchmark.data.a"},
             "benchmark.eval.x": {"benchmark.run"}, "benchmark.run": {"benchmark.eval.x"}}
    assert cycles(graph) == [["benchmark.data.a", "benchmark.data.b"], ["benchmark.eval.x", "benchmark.run"]]
    assert upward_imports(graph) == ["benchmark.eval.x (eval) -> benchmark.run (run)"]
    src = tmp_path / "m.py"
    src.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from benchmark.run import run\n"
        "def f():\n    from benchmark.cli import main\n    from . import splits\n"
    )
    mods = {"benchmark.data.m": src, "benchmark.cli": src, "benchmark.run": src, "benchmark.data.splits": src}
    assert imports_of("benchmark.data.m", src, mods) == {"benchmark.cli", "benchmark.data.splits"}


if __name__ == "__main__":  # the report quoted in design notes: python tests/unit/test_layers.py
    g = import_graph()
    c, u = cycles(g), upward_imports(g)
    print(f"{len(g)} modules, {sum(map(len, g.values()))} imports")
    print(f"cycles: {len(c)}")
    for comp in c:
        print("  " + " <-> ".join(comp))
    print(f"upward imports: {len(u)}")
    for line in u:
        print("  " + line)
