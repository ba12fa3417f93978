"""Fuzzing (issue 11, item 4): config YAML and ``--set`` overrides.

Random YAML trees (any keys, types and nesting), raw YAML text and bytes, and the shipped
presets mutated the way users break them (typos of real keys, wrong types for real keys,
keys added, removed or nested) go through ``load_config`` / ``resolve_config`` and through
``utilgen run FILE --out DIR``. Every case must end in a valid config or one ConfigError
line (the CLI: exit 2, exactly one ``utilgen: error:`` line, no traceback) and nothing
written to ``--out``. A valid config must also survive what the run does with it first:
written as ``RUN/config.yaml`` and read back, it is the same config; ``utilgen run`` with it
checks its inputs (``prepare``: data, splits, task model) before writing anything.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from fuzz_helpers import SIZES, changes, fuzz, listing, outcome, scratch
from hypothesis import strategies as st
from pydantic import BaseModel

from utilgen.config import (
    RunConfig,
    config_to_yaml,
    load_config,
    preset_names,
    preset_path,
    resolve_config,
)
from utilgen.errors import ConfigError

pytestmark = pytest.mark.usefixtures("quiet_one_thread")

# -- strategies --------------------------------------------------------------------------


def _fields(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """Every setting of ``model`` and its sections: key path -> annotation."""
    found: dict[tuple[str, ...], Any] = {}
    for name, field in model.model_fields.items():
        path = (*prefix, name)
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found.update(_fields(annotation, path))
        else:
            found[path] = annotation
    return found


FIELDS = _fields(RunConfig)
SECTIONS = sorted({path[:-1] for path in FIELDS if len(path) > 1})
KEYS = sorted({part for path in FIELDS for part in path})

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(["", "null", "~", "1e400", "-0", ".inf", "../..", "/", "\n", "true"])
)
keys = st.sampled_from(KEYS) | st.text(max_size=10) | st.integers(-3, 3) | st.booleans()
trees = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(keys, children, max_size=3),
    max_leaves=12,
)


def _value_for(annotation: Any) -> st.SearchStrategy[Any]:
    """Values of the annotation's own type and edge values (reaching the validators behind
    the type check), mixed with values of any type."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        own: st.SearchStrategy[Any] = st.sampled_from(args)
    elif origin in (typing.Union, types.UnionType):
        own = st.one_of([_value_for(a) for a in args])
    elif origin in (list, tuple):
        own = st.lists(_value_for(args[0]) if args else scalars, max_size=3)
    elif origin is dict:
        own = st.dictionaries(st.text(max_size=8), trees, max_size=3)
    elif annotation is bool:
        own = st.booleans()
    elif annotation is int:
        own = st.integers(-2, 10) | st.sampled_from([2**31, 2**63 - 1, 2**63, -(2**63) - 1])
    elif annotation is float:
        own = st.floats(-2, 2) | st.sampled_from([0.0, 1.0, float("nan"), float("inf")])
    else:
        own = st.text(max_size=12)
    return st.one_of(own, own, trees)


def _typo(key: str) -> st.SearchStrategy[str]:
    """``key`` misspelt: a character dropped, doubled, swapped or changed, or case/dashes."""
    edits: list[Callable[[int], str]] = [
        lambda i: key[:i] + key[i + 1 :],
        lambda i: key[:i] + key[i] + key[i:],
        lambda i: key[:i] + key[i + 1 : i + 2] + key[i : i + 1] + key[i + 2 :],
        lambda i: key[:i] + "x" + key[i + 1 :],
    ]
    by_position = st.tuples(st.sampled_from(edits), st.integers(0, max(len(key) - 1, 0))).map(
        lambda e: e[0](e[1]) if key else "x"
    )
    return by_position | st.sampled_from([key.upper(), key.replace("_", "-"), key + "s", " " + key])


def _nodes(raw: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The key path of every mapping entry in ``raw``."""
    out: list[tuple[Any, ...]] = []
    if isinstance(raw, dict):
        for key, value in raw.items():
            out.append((*path, key))
            out.extend(_nodes(value, (*path, key)))
    return out


def _parent(raw: dict[Any, Any], path: tuple[Any, ...]) -> dict[Any, Any]:
    """The mapping holding ``path[-1]``, creating missing sections as mappings."""
    node = raw
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    return node


@st.composite
def mutated_presets(draw: st.DrawFn, names: tuple[str, ...] | None = None) -> dict[Any, Any]:
    """A shipped preset with one to three mutations."""
    name = draw(st.sampled_from(names or tuple(preset_names())))
    raw = yaml.safe_load(preset_path(name).read_text(encoding="utf-8"))
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["typo", "set", "set", "extra", "delete", "nest"]))
        present = _nodes(raw)
        if kind == "set":  # a real key, present or not, to a value of its type or any
            path = draw(st.sampled_from(sorted(FIELDS)))
            _parent(raw, path)[path[-1]] = draw(_value_for(FIELDS[path]))
        elif kind == "extra":
            section = draw(st.sampled_from([(), *SECTIONS]))
            _parent(raw, (*section, None))[draw(keys)] = draw(trees)
        elif present:
            path = draw(st.sampled_from(present))
            parent = _parent(raw, path)
            value = parent.pop(path[-1])
            if kind == "typo":
                parent[draw(_typo(str(path[-1])))] = value
            elif kind == "nest":
                parent[path[-1]] = draw(st.sampled_from([[value], {"value": value}]))
    return raw


yaml_text = st.text(
    st.sampled_from(list("abdeklnprstuy:-[]{},&*!#'\"|>%@`?.0123456789 \t\n\\")) | st.characters(),
    max_size=80,
)

# -- the contract --------------------------------------------------------------------------


def _loads_and_round_trips(path: Path) -> None:
    """load_config, and for a valid config: RUN/config.yaml read back is the same config."""
    config = load_config(path)
    again = path.with_suffix(".again.yaml")
    again.write_text(config_to_yaml(config), encoding="utf-8")
    assert load_config(again) == config


def _yaml_case(tmp_path: Path, dump: Callable[[Any], bytes]) -> Callable[[Any], str]:
    def check(case: Any) -> str:
        with scratch(tmp_path) as folder:
            path = folder / "config.yaml"
            path.write_bytes(dump(case))
            return outcome(lambda: _loads_and_round_trips(path), ConfigError)

    return check


def _dump_yaml(obj: Any) -> bytes:
    return yaml.safe_dump(obj, allow_unicode=True).encode("utf-8")


def _as_bytes(case: str | bytes) -> bytes:
    return case if isinstance(case, bytes) else case.encode("utf-8", "surrogatepass")


DEEP = "seed: " + "[" * 5000 + "]" * 5000
LAUGHS = (
    "a: &a [x, x, x, x, x, x, x, x, x]\n"
    + "".join(
        f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n"
        for p, n in zip("abcdefg", "bcdefgh", strict=True)
    )
    + "data: {path: *h}\n"
)
YAML_REGRESSIONS = [
    DEEP,  # RecursionError from PyYAML
    "data: " + "{a: " * 3000 + "1" + "}" * 3000,  # RecursionError from PyYAML
    LAUGHS,  # nested aliases: 9**8 values, minutes to print in the message
    "data: &d {path: *d}",  # an alias inside itself
    "seed: " + "9" * 5000,  # ValueError: int max str digits
    "seed: 0x" + "f" * 5000,  # a hex int has no digit limit: crashed the message and dump
    "seed: 99999999999999999999999999",  # valid before, then torch.manual_seed overflowed
    'data: {"source\\ncsv": 1}',  # a key with a line break: a two-line error
    "seed: 1\x00",
    b"seed: \xff\xfe",
    "\ufeffseed: 1",
    "- 1",
    "!!python/object:os.system {}",
]


@pytest.mark.parametrize("size", SIZES)
def test_random_yaml_trees_load_or_fail_in_one_line(tmp_path: Path, size: int) -> None:
    top = st.dictionaries(keys, trees, max_size=5) | trees
    counts = fuzz("config: random YAML trees", top, _yaml_case(tmp_path, _dump_yaml), 120 * size)
    assert counts["ConfigError"] > 0


@pytest.mark.parametrize("size", SIZES)
def test_yaml_text_and_bytes_load_or_fail_in_one_line(tmp_path: Path, size: int) -> None:
    text = yaml_text | st.binary(max_size=60)
    fuzz(
        "config: YAML text and bytes",
        text,
        _yaml_case(tmp_path, _as_bytes),
        120 * size,
        explicit=YAML_REGRESSIONS,
    )


@pytest.mark.parametrize("size", SIZES)
def test_mutated_presets_load_or_fail_in_one_line(tmp_path: Path, size: int) -> None:
    counts = fuzz(
        "config: mutated presets", mutated_presets(), _yaml_case(tmp_path, _dump_yaml), 200 * size
    )
    assert counts["ok"] > 0 and counts["ConfigError"] > 0


override_text = st.one_of(
    st.tuples(st.sampled_from([".".join(p) for p in FIELDS]), yaml_text).map("=".join),
    st.tuples(st.sampled_from([".".join(p) for p in FIELDS]), st.sampled_from(["", "{", "[1"])).map(
        "=".join
    ),
    yaml_text,
)


@pytest.mark.parametrize("size", SIZES)
def test_overrides_apply_or_fail_in_one_line(size: int) -> None:
    def check(overrides: list[str]) -> str:
        return outcome(lambda: resolve_config("digits-real-only", overrides), ConfigError)

    fuzz(
        "config: --set overrides",
        st.lists(override_text, min_size=1, max_size=3),
        check,
        120 * size,
        explicit=[
            ["seed=" + "9" * 5000],
            ["seed=" + "[" * 5000],
            ["seed=0x" + "f" * 100],
            ["data=&a [*a]"],
            ["=1"],
            ["seed"],
            ["seed.x=1"],
        ],
    )


def test_config_names_that_are_not_files_fail_in_one_line() -> None:
    for name in ["x" * 5000, "a/" * 3000 + "c", "a\x00b", "x" * 300 + ".yaml", ""]:
        assert outcome(lambda n=name: resolve_config(n), ConfigError) == "ConfigError"


# -- through the CLI -----------------------------------------------------------------------


class Prepared(Exception):
    """Raised by the stand-in for ``loop.run.run`` once ``prepare`` has passed."""


@pytest.fixture
def prepare_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """``utilgen run`` checks the inputs of a valid config (data, splits, task model:
    ``prepare``, which writes nothing) and stops there instead of training."""
    import utilgen.loop.run as engine

    def run(config: RunConfig, run_dir: Path, **_: Any) -> None:
        engine.prepare(config, with_generator=False)
        raise Prepared

    monkeypatch.setattr(engine, "run", run)


@pytest.mark.parametrize("size", SIZES)
def test_utilgen_run_with_a_mutated_config_fails_cleanly_or_starts(
    tmp_path: Path,
    size: int,
    prepare_only: None,
    cli_error: Callable[[list[str]], str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def check(raw: Any) -> str:
        data = raw.get("data") if isinstance(raw, dict) else None
        if isinstance(data, dict) and isinstance(data.get("path"), str):
            # A parquet source at "/" or "../.." would read the whole disk: keep the data
            # path inside the case's folder (the working directory below).
            data["path"] = "data/" + data["path"].replace("..", "__").lstrip("/")
        with scratch(tmp_path) as folder:
            monkeypatch.chdir(folder)
            config, out = folder / "config.yaml", folder / "run"
            config.write_bytes(_dump_yaml(raw))
            before = listing(folder)
            try:
                cli_error(["--quiet", "run", str(config), "--out", str(out)])
                result = "exit 2"
            except Prepared:
                result = "valid, inputs checked"
            assert not changes(before, listing(folder)), changes(before, listing(folder))
            return result

    counts = fuzz("config: utilgen run FILE --out DIR", mutated_presets(), check, 30 * size)
    assert counts["exit 2"] > 0


def test_utilgen_run_with_a_huge_seed_fails_before_writing(
    tmp_path: Path, prepare_only: None, cli_error: Callable[[list[str]], str]
) -> None:
    """Found by the CLI fuzz: seed 10**26 was a valid config, then torch.manual_seed raised
    a bare ValueError in ``prepare``."""
    line = cli_error(
        ["run", "digits-real-only", "--set", "seed=" + "9" * 26, "--out", str(tmp_path / "r")]
    )
    assert "'seed'" in line and "64 bits" in line
    assert not (tmp_path / "r").exists()


def test_a_run_name_cannot_lead_outside_the_runs_folder(
    tmp_path: Path,
    prepare_only: None,
    cli_error: Callable[[list[str]], str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Found by the config fuzz: ``name: ../../x`` is a valid config, and ``utilgen run``
    without ``--out`` would write its run to ``runs/../../x``, two levels above ``runs``."""
    monkeypatch.chdir(tmp_path)
    line = cli_error(["run", "digits-real-only", "--set", "name=../../escape"])
    assert "'name'" in line
