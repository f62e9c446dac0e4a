"""The import graph of the three packages: no cycles, and data flows one way.

Every import counts, including those inside functions and under ``TYPE_CHECKING``: an import
hidden in a function to dodge a loop is still a loop in the design.

The training room ``medseg_agents.training`` sits above everything it trains: it may import
the rest of ``medseg_agents`` and ``medseg_env``, and nothing outside it imports it (neither
the policies nor ``medseg_bench``; ``medseg-bench export-sft`` runs ``medseg-train`` in a
subprocess).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"medseg_env": "medseg_env", "medseg_agents": "agents", "medseg_bench": "benchmarks"}
LAYERS = ["medseg_env", "medseg_agents", "medseg_bench"]  # lower first
TRAINING = "medseg_agents.training"  # imports the rest; imported by nothing outside itself


def project_modules() -> dict[str, Path]:
    """Module name -> file, for every module of the three packages."""
    modules = {}
    for package, folder in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([package, *parts])] = path
    return modules


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules that module ``name`` imports, anywhere in its file."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            # `from pkg import sub` imports the module pkg.sub when there is one
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names
            ]
        else:
            continue
        for target in targets:
            # `import a.b.c` names the deepest project module it reaches
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    known = set(modules)
    return {name: imports_of(name, path, known) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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


def test_the_graph_sees_the_project():
    graph = import_graph()
    assert len(graph) > 40
    # a relative import inside a function is found (the kind of import that hid a cycle)
    assert "medseg_env.segmenters.types" in graph["medseg_env.segmenters.cache"]
    assert "medseg_agents.simulation" in graph["medseg_agents.clickers"]
    # the training room is part of the graph, and imports below itself
    assert "medseg_env.journal" in graph["medseg_agents.training.sft.journal"]
    assert "medseg_agents.ppo" in graph["medseg_agents.training.ppo"]


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


@pytest.mark.parametrize("lower", LAYERS[:-1])
def test_lower_layers_never_import_higher(lower):
    higher = LAYERS[LAYERS.index(lower) + 1 :]
    bad = sorted(
        f"{module} -> {target}"
        for module, targets in import_graph().items()
        if module.split(".")[0] == lower
        for target in targets
        if target.split(".")[0] in higher
    )
    assert bad == []


def _inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def imports_of_training(graph: dict[str, set[str]]) -> list[str]:
    """Every ``module -> target`` edge into ``medseg_agents.training`` from outside it."""
    return sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        if not _inside(module, TRAINING)
        for target in targets
        if _inside(target, TRAINING)
    )


def test_nothing_outside_the_training_room_imports_it():
    assert imports_of_training(import_graph()) == []


def test_the_training_rule_finds_a_planted_import():
    graph = {name: set(targets) for name, targets in import_graph().items()}
    graph["medseg_bench.cli"].add("medseg_agents.training.sft.cli")
    graph["medseg_agents.oracle"].add(TRAINING)
    graph["medseg_agents.training.ppo"].add("medseg_agents.training.sft")  # inside: allowed
    assert imports_of_training(graph) == [
        "medseg_agents.oracle -> medseg_agents.training",
        "medseg_bench.cli -> medseg_agents.training.sft.cli",
    ]
