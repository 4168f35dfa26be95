"""The layout is the architecture: who imports whom, no import cycles, functions a reader holds.

Read from the source with :mod:`ast` (function-local imports count: they hide a cycle as well as
any), so a change that breaks a rule fails here naming the module, not in review.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("geopile", "model", "pipelines")
# ARCHITECTURE.md: geopile and model never know about each other; pipelines joins them
FORBIDDEN = {"geopile": {"model", "pipelines"}, "model": {"geopile", "pipelines"}}
MAX_FUNCTION_LINES = 100
# the offline world fakes outside data (a NAIP landscape, a STAC item): long recipes, not logic
LONG_ALLOWED = {"geopile/world"}


def _modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            rel = path.relative_to(REPO).with_suffix("")
            modules[".".join(rel.parts).removesuffix(".__init__")] = path
    return modules


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``path`` imports, anywhere in it (top level or in a function)."""

    def owner(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        else:
            continue
        found |= {m for m in map(owner, names) if m}
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) - {name} for name, path in modules.items()}


def test_geopile_and_model_never_import_each_other(graph):
    broken = sorted(f"{module} imports {target}" for module, targets in graph.items()
                    for target in targets
                    if target.split(".")[0] in FORBIDDEN.get(module.split(".")[0], ()))
    assert not broken, broken


def test_no_import_cycles(graph):
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as err:
        pytest.fail(f"import cycle: {' -> '.join(err.args[1])}")


def test_the_cycle_check_sees_a_function_local_import(tmp_path):
    (tmp_path / "a.py").write_text("def f():\n    from b import x\n")
    (tmp_path / "b.py").write_text("import a\n")
    modules = {"a": tmp_path / "a.py", "b": tmp_path / "b.py"}
    graph = {name: _imports(path, modules) - {name} for name, path in modules.items()}
    with pytest.raises(graphlib.CycleError):
        graphlib.TopologicalSorter(graph).prepare()


def test_no_function_is_longer_than_a_screenful_or_two():
    long = []
    for path in _modules().values():
        rel = path.relative_to(REPO).as_posix()
        if any(rel.startswith(f"{allowed}/") for allowed in LONG_ALLOWED):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{rel}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, long


def test_the_readmes_build_table_is_what_the_licences_say():
    """The README's builds block is generated (pipelines/readme_blocks.py): it must be current."""
    from geopile.params import load_params
    from geopile.settings import check_params
    from pipelines.readme_blocks import block, builds_block

    settings = check_params(load_params([REPO / "params.yaml"]))
    readme = (REPO / "README.md").read_text()
    assert block(readme, "builds") == builds_block(settings), (
        "run `python -m pipelines.readme_blocks` and commit README.md")
    assert "<!-- demo:begin -->" in readme
