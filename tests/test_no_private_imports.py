"""No module imports another package's private (``_``) names (docs/architecture.md,
"Import direction").

Every module under ``src/utilgen`` is parsed with ``ast``. A private name is a name, or a
module on the dotted path to it, that starts with one underscore (dunders such as
``__version__`` are public). Using one is fine inside its own top-level subpackage
(``utilgen.generate.lora`` may use ``utilgen.generate.builtin._x``) and a violation across
subpackages (``utilgen.feedback`` using ``utilgen.generate.lora._require_sd``). A
top-level module such as ``utilgen/atomic.py`` counts as its own subpackage. Three forms
are checked:

* ``from utilgen.generate.lora import _name`` (and relative forms that resolve there);
* ``import utilgen.generate._private`` / ``from utilgen.generate import _private``;
* attribute use through a module bound by an import: ``lora._name`` after
  ``from utilgen.generate import lora``, or ``utilgen.generate.lora._name``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "utilgen"


def _is_private(part: str) -> bool:
    return part.startswith("_") and not (part.startswith("__") and part.endswith("__"))


def _module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _owner(module: str) -> str:
    """The top-level subpackage (or top-level module) ``utilgen.<owner>`` a module is in."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _is_module(dotted: str, src: Path) -> bool:
    path = src.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module an ``ImportFrom`` reads from."""
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _private_in(dotted: str, importer: str) -> str | None:
    """The first private part of ``dotted`` (a utilgen path) when it lies outside the
    importer's subpackage, else None."""
    parts = dotted.split(".")
    if parts[0] != "utilgen" or _owner(dotted) == _owner(importer):
        return None
    return next((p for p in parts[1:] if _is_private(p)), None)


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value)
        return f"{inner}.{node.attr}" if inner else None
    return None


def violations(path: Path, src: Path = SRC) -> Iterator[str]:
    """``file:line: what`` for every cross-subpackage private use in one source file
    (``src``: the folder that holds the ``utilgen`` package)."""
    module = _module_name(path, src)
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    where = path.relative_to(src)
    # local name -> the utilgen module it is bound to (for attribute access)
    modules: dict[str, str] = {"utilgen": "utilgen"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                hit = _private_in(alias.name, module)
                if hit:
                    yield f"{where}:{node.lineno}: import {alias.name} ({hit})"
                if alias.name.startswith("utilgen") and alias.asname:
                    modules[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(node, module, is_package)
            for alias in node.names:
                full = f"{source}.{alias.name}"
                hit = _private_in(full, module)
                if hit:
                    yield f"{where}:{node.lineno}: from {source} import {alias.name} ({hit})"
                if source.startswith("utilgen") and _is_module(full, src):
                    modules[alias.asname or alias.name] = full
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        dotted = _dotted(node)
        if dotted is None:
            continue
        head, _, rest = dotted.partition(".")
        if head not in modules or not rest:
            continue
        full = f"{modules[head]}.{rest}"
        hit = _private_in(full, module)
        if hit and not _is_private(head):
            yield f"{where}:{node.lineno}: {dotted} ({hit})"


def all_violations() -> list[str]:
    found = {v for path in sorted(PACKAGE.rglob("*.py")) for v in violations(path)}
    return sorted(found)


def test_no_module_imports_another_packages_private_names() -> None:
    found = all_violations()
    assert found == [], "private names used across subpackages:\n" + "\n".join(found)


def _scan(tmp_path: Path, source: str, name: str = "feedback/user.py") -> list[str]:
    """Violations of one synthetic module placed at ``utilgen/<name>`` under a fake src."""
    fake = tmp_path / "src"
    for package in ("utilgen", "utilgen/generate", "utilgen/feedback"):
        (fake / package).mkdir(parents=True, exist_ok=True)
        (fake / package / "__init__.py").write_text("")
    (fake / "utilgen/generate/lora.py").write_text("def _helper(): ...\n")
    target = fake / "utilgen" / name
    target.write_text(source)
    return list(violations(target, fake))


@pytest.mark.parametrize(
    "source",
    [
        "from utilgen.generate.lora import _helper\n",
        "from ..generate.lora import _helper\n",
        "from utilgen.generate import lora\nlora._helper()\n",
        "import utilgen.generate.lora as lora\nlora._helper()\n",
        "import utilgen.generate.lora\nutilgen.generate.lora._helper()\n",
        "from utilgen.generate import _private\n",
    ],
)
def test_the_scan_finds_cross_package_private_use(tmp_path: Path, source: str) -> None:
    assert len(_scan(tmp_path, source)) == 1


@pytest.mark.parametrize(
    ("source", "name"),
    [
        ("from utilgen.generate.lora import _helper\n", "generate/user.py"),
        ("from .lora import _helper\n", "generate/user.py"),
        ("from utilgen.generate.lora import helper\nfrom utilgen import __version__\n", "x.py"),
        ("from utilgen.generate import lora\nx = lora.__name__\n", "feedback/user.py"),
    ],
)
def test_the_scan_allows_same_package_and_public_use(
    tmp_path: Path, source: str, name: str
) -> None:
    assert _scan(tmp_path, source, name) == []
