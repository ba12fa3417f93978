"""Module names say what a module holds, and no two modules that a reader would confuse
share a name (issue 28).

Pinned here: the commands built on runs (``commands``), the round engine (``loop``) and
the report (``report``) share no module name, as ``loop/compare.py`` and
``report/compare.py`` once did; ``value/scores.py`` (scores read off logits, now
``logit_scores.py``) does not come back beside ``value/scoring.py``; no function is called
``resolve_dtype`` again (two of them once resolved ``auto`` differently, now
``generate.dtypes.lm_dtype`` and ``diffusion_dtype``); and only ``cli`` imports
``commands``, so the round engine never depends on the commands built on it.
"""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import utilgen

SOURCE = Path(utilgen.__file__).parent
DISJOINT = ("commands", "loop", "report")


def _module_names(package: str) -> set[str]:
    """The modules and subpackages directly in ``package``, without ``__init__``."""
    folder = SOURCE / package
    modules = {p.stem for p in folder.glob("*.py") if p.stem != "__init__"}
    packages = {p.name for p in folder.iterdir() if (p / "__init__.py").is_file()}
    return modules | packages


def _trees() -> list[tuple[str, ast.Module]]:
    return [
        (path.relative_to(SOURCE).as_posix(), ast.parse(path.read_text(encoding="utf-8")))
        for path in sorted(SOURCE.rglob("*.py"))
    ]


def test_the_packages_exist() -> None:
    for package in DISJOINT:
        assert _module_names(package), package


def test_commands_loop_and_report_share_no_module_name() -> None:
    shared = {
        f"{a}/{b}: {sorted(_module_names(a) & _module_names(b))}"
        for a, b in itertools.combinations(DISJOINT, 2)
        if _module_names(a) & _module_names(b)
    }
    assert not shared, shared


def test_value_has_no_scores_module_beside_scoring() -> None:
    value = SOURCE / "value"
    assert (value / "scoring.py").is_file()
    assert not (value / "scores.py").exists()


def test_no_function_is_called_resolve_dtype() -> None:
    found = [
        f"{name}:{node.lineno}"
        for name, tree in _trees()
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.name == "resolve_dtype"
    ]
    assert not found, found


def _imports(tree: ast.Module) -> set[str]:
    names = set()
    for node in ast.walk(tree):  # function-local imports too
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _imports_commands(tree: ast.Module) -> bool:
    return any(m == "utilgen.commands" or m.startswith("utilgen.commands.") for m in _imports(tree))


def test_only_cli_imports_commands() -> None:
    found = [
        name
        for name, tree in _trees()
        if not name.startswith("commands/") and name != "cli.py" and _imports_commands(tree)
    ]
    assert not found, found
