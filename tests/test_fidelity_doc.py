"""docs/fidelity.md, the paper-by-paper fidelity table, stays true to the code it cites.

The page has one markdown table per paper (under ``## GenDataAgent``, ``## UtilGen``,
``## U-DPO``) with six columns. Checked here:

* every row has all six cells filled;
* every test it cites as ``tests/path.py::name`` is a test function of that file (found by
  parsing the file, at module level or in a class);
* every config key it cites in backticks as ``section.key = value`` (or a bare ``section.key``
  whose first part is a ``RunConfig`` section) is a field of ``RunConfig``, walked through
  ``model_fields``; every "utilgen's default" cell cites a key or says "not implemented";
* every ``RESULTS § "..."`` it cites is part of a heading of benchmarks/RESULTS.md;
* the GenDataAgent elements issue 29 names have a row.
"""

from __future__ import annotations

import ast
import re
import types
import typing
from functools import cache
from pathlib import Path

import pytest
from pydantic import BaseModel

from utilgen.config import RunConfig

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "fidelity.md"
RESULTS = ROOT / "benchmarks" / "RESULTS.md"

PAPERS = ("GenDataAgent", "UtilGen", "U-DPO")
COLUMNS = [
    "element",
    "what the paper does",
    "the paper's setting",
    "utilgen's default",
    "departure and its measured reason",
    "test that pins it",
]
# Elements issue 29 requires among the GenDataAgent rows (matched case-insensitively as part
# of an element name).
GENDATAAGENT_ELEMENTS = (
    "stage 1 checkpoints",
    "marginal ranking scope",
    "caption perturbation",
    "img2img strengths",
    "vog threshold / drop fraction",
    "synthetic:real ratio",
    "number of iterations",
    "continued fine-tuning of the classifier",
    "accumulation of synthetic data",
    "clip ψ token",
    "lora adaptation",
)

_TEST_REF = re.compile(r"(tests/[\w/]+\.py)::(\w+)")
_CODE = re.compile(r"`([^`]+)`")
_KEY = re.compile(r"^([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)(\s*=\s*.*)?$")
_RESULTS_REF = re.compile(r'RESULTS § "([^"]+)"')


def split_row(line: str) -> list[str]:
    """The cells of a markdown table row; ``\\|`` is a literal pipe inside a cell."""
    body = line.strip()
    if not (body.startswith("|") and body.endswith("|")):
        raise ValueError(f"not a table row: {line!r}")
    cells = re.split(r"(?<!\\)\|", body[1:-1])
    return [c.strip().replace("\\|", "|") for c in cells]


def paper_tables(text: str) -> dict[str, list[list[str]]]:
    """Paper name (its ``## `` heading) -> the rows of the table under it (header excluded)."""
    tables: dict[str, list[list[str]]] = {}
    section: str | None = None
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            section = line[3:].strip()
        elif line.lstrip().startswith("|") and section is not None:
            header = split_row(line)
            assert header == COLUMNS, f"{section}: header {header} is not {COLUMNS}"
            assert set(lines[i + 1].replace("|", "").strip()) <= {"-", ":", " "}, (
                f"{section}: the header row must be followed by a separator row"
            )
            rows = []
            i += 2
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                rows.append(split_row(lines[i]))
                i += 1
            assert section not in tables, f"two tables under ## {section}"
            tables[section] = rows
            continue
        i += 1
    return tables


@cache
def _tables() -> dict[str, list[list[str]]]:
    return paper_tables(DOC.read_text(encoding="utf-8"))


def _all_rows() -> list[tuple[str, list[str]]]:
    return [(paper, row) for paper, rows in _tables().items() for row in rows]


@cache
def defined_test_functions(path: str) -> frozenset[str]:
    """Names of the ``test_*`` functions of a test file, at module level or in a class."""
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith(
            "test_"
        ):
            names.add(node.name)
    return frozenset(names)


def _model_of(annotation: object) -> type[BaseModel] | None:
    """The pydantic model an annotation holds (``X``, ``X | None``), else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        models = [m for m in map(_model_of, typing.get_args(annotation)) if m is not None]
        return models[0] if len(models) == 1 else None
    return None


def config_key_exists(key: str) -> bool:
    """Whether ``a.b.c`` names a field of ``RunConfig`` (each part but the last a section)."""
    model: type[BaseModel] | None = RunConfig
    for part in key.split("."):
        if model is None or part not in model.model_fields:
            return False
        model = _model_of(model.model_fields[part].annotation)
    return True


def cited_config_keys(cell: str) -> list[str]:
    """Config keys a cell cites: backticked ``key = value``, or a bare dotted ``section.key``
    whose first part is a RunConfig field (module paths such as ``utilgen.x`` are not keys)."""
    keys = []
    for code in _CODE.findall(cell):
        match = _KEY.match(code.strip())
        if match is None:
            continue
        key, assignment = match.group(1), match.group(2)
        if assignment or ("." in key and key.split(".")[0] in RunConfig.model_fields):
            keys.append(key)
    return keys


def test_the_page_has_one_table_per_paper() -> None:
    assert list(_tables()) == list(PAPERS)
    for paper, rows in _tables().items():
        assert rows, f"## {paper} has an empty table"


@pytest.mark.parametrize("paper", PAPERS)
def test_every_row_has_every_cell_filled(paper: str) -> None:
    for row in _tables()[paper]:
        assert len(row) == len(COLUMNS), f"{paper}: row {row[0]!r} has {len(row)} cells"
        empty = [COLUMNS[i] for i, cell in enumerate(row) if not cell]
        assert not empty, f"{paper}: row {row[0]!r} has empty cells: {empty}"


def test_element_names_are_unique_within_a_paper() -> None:
    for paper, rows in _tables().items():
        names = [row[0].lower() for row in rows]
        assert len(names) == len(set(names)), f"{paper}: an element is listed twice"


def test_cited_tests_exist() -> None:
    problems = []
    for paper, row in _all_rows():
        cell = row[-1]
        refs = _TEST_REF.findall(cell)
        if not refs and not cell.lower().startswith("none"):
            problems.append(f"{paper} / {row[0]}: cite tests/path.py::name or write none")
        for path, name in refs:
            if not (ROOT / path).is_file():
                problems.append(f"{paper} / {row[0]}: {path} does not exist")
            elif name not in defined_test_functions(path):
                problems.append(f"{paper} / {row[0]}: {path} has no test function {name}")
    assert not problems, "\n".join(problems)


def test_cited_config_keys_exist_in_run_config() -> None:
    problems = []
    for paper, row in _all_rows():
        for column, cell in zip(COLUMNS, row, strict=True):
            problems += [
                f"{paper} / {row[0]} ({column}): `{key}` is not a RunConfig field"
                for key in cited_config_keys(cell)
                if not config_key_exists(key)
            ]
        default = row[COLUMNS.index("utilgen's default")]
        if not cited_config_keys(default) and "not implemented" not in default:
            problems.append(
                f"{paper} / {row[0]}: utilgen's default cites no config key (`section.key = "
                "value`) and does not say not implemented"
            )
    assert not problems, "\n".join(problems)


def test_cited_results_sections_exist() -> None:
    headings = [
        line.lstrip("#").strip()
        for line in RESULTS.read_text(encoding="utf-8").splitlines()
        if line.startswith("#")
    ]
    text = DOC.read_text(encoding="utf-8")
    cited = _RESULTS_REF.findall(text)
    assert cited, "the page cites no RESULTS section"
    missing = [c for c in cited if not any(c in h for h in headings)]
    assert not missing, f"RESULTS.md has no heading containing: {missing}"


def test_the_gendataagent_elements_of_issue_29_have_rows() -> None:
    names = [row[0].lower() for row in _tables()["GenDataAgent"]]
    missing = [e for e in GENDATAAGENT_ELEMENTS if not any(e in name for name in names)]
    assert not missing, f"GenDataAgent rows missing: {missing}"


def test_the_checks_can_fail() -> None:
    """The parsers find what they must: a bad key, an escaped pipe, a missing test."""
    assert split_row(r"| a | p(y\|x) | `loop.rounds = 3` |") == ["a", "p(y|x)", "`loop.rounds = 3`"]
    assert config_key_exists("loop.rounds") and config_key_exists("seed")
    assert config_key_exists("feedback.noise_opt.penalty")
    assert config_key_exists("valuation.meta_weight.hidden")
    assert not config_key_exists("loop.round") and not config_key_exists("loop.rounds.x")
    assert cited_config_keys("`loop.rounds = 3`, `utilgen.value.vog`, `loop.budget`") == [
        "loop.rounds",
        "loop.budget",
    ]
    assert cited_config_keys("`valuation.nope = 1`") == ["valuation.nope"]
    assert "test_cited_tests_exist" in defined_test_functions("tests/test_fidelity_doc.py")
    assert "test_no_such_thing" not in defined_test_functions("tests/test_fidelity_doc.py")
