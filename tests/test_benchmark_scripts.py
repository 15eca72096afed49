"""The benchmark scripts import names from each other and from benchmarks/stamp.py: every such import
must name something the imported script defines at its top level (a removed or renamed helper breaks a
benchmark that no other test runs). Checked on the source, without importing torch."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(BENCHMARKS.glob("*.py"))


def _top_level_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


def _local_imports(tree: ast.Module) -> list[tuple[str, str, int]]:
    """(module, name, line) of every ``from <benchmarks script> import name``, at any depth."""
    local = {p.stem for p in SCRIPTS}
    return [
        (node.module, alias.name, node.lineno)
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in local
        for alias in node.names
    ]


def test_the_check_sees_a_missing_name():
    tree = ast.parse("from stamp import machine, no_such_helper\n")
    stamp = _top_level_names(ast.parse((BENCHMARKS / "stamp.py").read_text()))
    missing = [name for module, name, _ in _local_imports(tree) if name not in stamp]
    assert missing == ["no_such_helper"]


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_local_imports_resolve(script):
    tree = ast.parse(script.read_text(), filename=str(script))
    for module, name, line in _local_imports(tree):
        defined = _top_level_names(ast.parse((BENCHMARKS / f"{module}.py").read_text()))
        assert name in defined, f"{script.name}:{line} imports {name!r} from benchmarks/{module}.py, which lacks it"
