"""No source file over 600 lines and no function over 100 lines (issue 28).

A file or function past these sizes holds more than one concept and is hard to review as
one piece; the limits keep each module about one thing (docs/architecture.md, "one concept
per module"). Every ``.py`` file under ``src/utilgen`` is parsed with ``ast``. A file's
length is its number of lines; a function's (``def`` and ``async def``, methods and nested
functions included) runs from its first decorator, or its ``def`` line when it has none,
to its last line (``end_lineno``), so docstrings, comments and blank lines inside it count.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "utilgen"
MAX_FILE_LINES = 600
MAX_FUNCTION_LINES = 100


def function_lengths(source: str) -> Iterator[tuple[str, int, int]]:
    """``(qualified name, first line, length in lines)`` of every function in ``source``."""

    def walk(node: ast.AST, prefix: str) -> Iterator[tuple[str, int, int]]:
        for child in ast.iter_child_nodes(node):
            name = prefix
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}{child.name}."
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                first = min([child.lineno, *(d.lineno for d in child.decorator_list)])
                end = child.end_lineno if child.end_lineno is not None else child.lineno
                yield name[:-1], first, end - first + 1
            yield from walk(child, name)

    yield from walk(ast.parse(source), "")


def oversized(path: Path) -> Iterator[str]:
    """``file: what`` for the file itself and each function in it that is over its limit."""
    where = path.relative_to(SRC)
    source = path.read_text(encoding="utf-8")
    lines = len(source.splitlines())
    if lines > MAX_FILE_LINES:
        yield f"{where}: {lines} lines (limit {MAX_FILE_LINES})"
    for name, first, length in function_lengths(source):
        if length > MAX_FUNCTION_LINES:
            yield f"{where}:{first}: {name} is {length} lines (limit {MAX_FUNCTION_LINES})"


def test_no_file_or_function_is_over_the_size_limits() -> None:
    paths = sorted(PACKAGE.rglob("*.py"))
    assert paths, f"no sources found under {PACKAGE}"
    found = [problem for path in paths for problem in oversized(path)]
    assert found == [], "over the size limits:\n" + "\n".join(found)


def test_function_length_counts_decorators_and_nested_functions() -> None:
    source = (
        "import functools\n"  # 1
        "@functools.cache\n"  # 2
        "def outer():\n"  # 3
        "    async def inner():\n"  # 4
        "        pass\n"  # 5
        "    return inner\n"  # 6
        "class C:\n"  # 7
        "    def method(self):\n"  # 8
        "        return 1\n"  # 9
    )
    assert sorted(function_lengths(source)) == [
        ("C.method", 8, 2),
        ("outer", 2, 5),
        ("outer.inner", 4, 2),
    ]
