"""The import graph of policy/ml is acyclic.

Read from the source with ``ast``, not by importing: an import inside a function counts as an
edge too, since it runs as soon as the function does (``Policy.sample`` importing ``sample``,
which imported ``policy``, was such a cycle).
"""

from __future__ import annotations

import ast
from pathlib import Path

import policy.ml

ML_DIR = Path(policy.ml.__file__).parent
PACKAGE = "policy.ml"


def _targets(node: ast.Import | ast.ImportFrom, package: str) -> list[str]:
    """Top-level module names of ``package`` that one import statement names."""
    if isinstance(node, ast.Import):
        prefix = package + "."
        return [a.name[len(prefix) :].split(".")[0] for a in node.names
                if a.name.startswith(prefix)]
    if node.level == 1:  # from .x import y / from . import x
        base = node.module
    elif node.level == 0 and node.module is not None and (
        node.module == package or node.module.startswith(package + ".")
    ):
        base = node.module[len(package) + 1 :] or None
    else:  # another package (or above this one)
        return []
    if base is None:  # the names are modules of the package
        return [a.name for a in node.names]
    return [base.split(".")[0]]


def import_graph(package_dir: Path, package: str = PACKAGE) -> dict[str, set[str]]:
    """module -> the package's modules it imports anywhere in its source."""
    modules = {p.stem for p in package_dir.glob("*.py") if p.stem != "__init__"}
    graph: dict[str, set[str]] = {}
    for name in sorted(modules):
        path = package_dir / f"{name}.py"
        tree = ast.parse(path.read_text(), filename=str(path))
        graph[name] = {
            target
            for node in ast.walk(tree)
            if isinstance(node, ast.Import | ast.ImportFrom)
            for target in _targets(node, package)
            if target in modules and target != name
        }
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as ``[a, b, …, a]``, or None when the graph is acyclic (depth-first search)."""
    done: set[str] = set()
    path: list[str] = []  # the modules on the current search path, in order

    def visit(node: str) -> list[str] | None:
        if node in path:
            return path[path.index(node) :] + [node]
        if node in done:
            return None
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            cycle = visit(nxt)
            if cycle is not None:
                return cycle
        path.pop()
        done.add(node)
        return None

    for start in sorted(graph):
        cycle = visit(start)
        if cycle is not None:
            return cycle
    return None


def test_the_import_graph_of_policy_ml_is_acyclic():
    graph = import_graph(ML_DIR)
    assert {"policy", "sample", "train", "checkpoint", "device"} <= set(graph)
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle in policy/ml: " + " -> ".join(cycle)


def test_device_helpers_live_below_everything_that_uses_them():
    graph = import_graph(ML_DIR)
    assert graph["device"] == set()
    assert "device" in graph["sample"] and "device" in graph["train"]
    assert "policy" not in graph["sample"]  # sampling knows the model, not the Policy wrapper


def test_the_check_finds_a_cycle_closed_by_a_function_level_import(tmp_path):
    # given: a -> b at the top, b -> a inside a function, c -> a (absolute), d outside the cycle
    (tmp_path / "__init__.py").write_text("")
    (tmp_path / "a.py").write_text("from .b import thing\n")
    (tmp_path / "b.py").write_text("import os\n\ndef f():\n    from .a import other\n")
    (tmp_path / "c.py").write_text("from policy.ml import a\nimport policy.ml.d\n")
    (tmp_path / "d.py").write_text("from rendering.layouts import get_layout\n")
    # when
    graph = import_graph(tmp_path)
    # then
    assert graph == {"a": {"b"}, "b": {"a"}, "c": {"a", "d"}, "d": set()}
    assert find_cycle(graph) == ["a", "b", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
