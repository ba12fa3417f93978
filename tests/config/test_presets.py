"""The shipped strategy presets: each validates, each ablation differs from its parent in
exactly the component it switches off, and an unknown preset name lists them all."""

from __future__ import annotations

from collections.abc import Callable
from itertools import takewhile
from pathlib import Path
from typing import Any

import pytest

from utilgen.config import RunConfig, preset_names, preset_path, resolve_config
from utilgen.config.load import parse_override

# Each ablation: (parent preset, the overrides that turn the parent into it). The overrides
# are the whole intended difference; `name`, `description` and `strategy` differ as well.
ABLATIONS: dict[str, tuple[str, list[str]]] = {
    "digits-utilgen-no-meta-weight": (
        "digits-utilgen",
        [
            "valuation.scores=[marginal, margin]",
            "valuation.selection=[{rule: top_k, score: marginal, k: 10}]",
            "feedback.pairs.score=marginal",
            "feedback.instance.utility=log_prob",
        ],
    ),
    "digits-utilgen-no-dpo": ("digits-utilgen", ["feedback.components=[prompt_ascent, noise_opt]"]),
    "digits-utilgen-no-prompt-ascent": ("digits-utilgen", ["feedback.components=[dpo, noise_opt]"]),
    "digits-utilgen-no-noise-opt": ("digits-utilgen", ["feedback.components=[dpo, prompt_ascent]"]),
    "digits-gendataagent-no-hard-samples": ("digits-gendataagent", ["feedback.components=[]"]),
    "digits-gendataagent-no-vog": ("digits-gendataagent", ["valuation.selection=[]"]),
    "digits-gendataagent-no-rounds": ("digits-gendataagent", ["loop.rounds=2"]),
    "bbc-news-udpo-no-similarity": ("bbc-news-udpo", ["valuation.composite_lambda=0.0"]),
    "bbc-news-udpo-no-pair-weighting": ("bbc-news-udpo", ["feedback.pairs.weighted=false"]),
    "bbc-news-udpo-no-dpo": ("bbc-news-udpo", ["feedback.components=[]"]),
    "digits-udpo-no-similarity": ("digits-udpo", ["valuation.composite_lambda=0.0"]),
    "digits-udpo-no-pair-weighting": ("digits-udpo", ["feedback.pairs.weighted=false"]),
    "digits-udpo-no-dpo": ("digits-udpo", ["feedback.components=[]"]),
}
PARENTS = sorted({parent for parent, _ in ABLATIONS.values()})


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a.b.c": leaf}`` for a nested mapping; lists are leaves (a list of selection rules
    or components differs as a whole)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _differing_keys(a: RunConfig, b: RunConfig) -> set[str]:
    flat_a, flat_b = _flat(a.model_dump(mode="json")), _flat(b.model_dump(mode="json"))
    return {k for k in flat_a.keys() | flat_b.keys() if flat_a.get(k) != flat_b.get(k)}


def _header(name: str) -> str:
    """The comment block a preset file opens with."""
    lines = preset_path(name).read_text(encoding="utf-8").splitlines()
    comments = takewhile(lambda line: line.startswith("#"), lines)
    return " ".join(line.lstrip("# ") for line in comments)


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_validates_names_itself_and_says_what_it_is(name: str) -> None:
    config = resolve_config(name)
    assert config.name == name  # run directories and reports are labelled by it
    assert 20 <= len(config.description) <= 100  # `utilgen presets` prints it on one line
    assert len(_header(name)) > 80, f"{name}.yaml needs a header comment saying what it runs"


def test_every_ablation_preset_is_checked_here() -> None:
    ablations = {name for name in preset_names() if "-no-" in name}
    assert ablations == set(ABLATIONS)
    assert set(PARENTS) <= set(preset_names())


@pytest.mark.parametrize("ablation", sorted(ABLATIONS))
def test_ablation_differs_from_its_parent_in_exactly_the_intended_keys(ablation: str) -> None:
    parent_name, overrides = ABLATIONS[ablation]
    parent, config = resolve_config(parent_name), resolve_config(ablation)
    intended = {".".join(parse_override(o)[0]) for o in overrides}
    assert _differing_keys(parent, config) == {"name", "description", "strategy"} | intended
    # ... and with exactly the intended values: the parent plus the overrides is the ablation.
    labels = [f"name={ablation}", f"strategy={config.strategy}"]
    assert resolve_config(parent_name, [*overrides, *labels]).model_copy(
        update={"description": config.description}
    ) == config
    assert config.description.startswith(f"Ablation of {parent_name}: ")
    assert config.strategy == f"{parent.strategy}-{ablation.removeprefix(parent_name + '-')}"


@pytest.mark.parametrize("ablation", sorted(ABLATIONS))
def test_ablation_header_names_its_parent_and_paper(ablation: str) -> None:
    header = _header(ablation)
    assert header.startswith(f"Ablation of {ABLATIONS[ablation][0]} (")
    assert "shared/papers/" in header


@pytest.mark.parametrize("parent", PARENTS)
def test_each_feedback_component_of_a_method_has_an_ablation(parent: str) -> None:
    components = resolve_config(parent).feedback.components
    assert components, f"{parent} is utility-guided: it has feedback"
    assert "shared/papers/" in _header(parent)
    ablated = [
        resolve_config(a).feedback.components for a, (p, _) in ABLATIONS.items() if p == parent
    ]
    for component in components:
        assert [c for c in components if c != component] in ablated, component


def test_run_with_an_unknown_preset_lists_the_presets(
    tmp_path: Path, cli_error: Callable[[list[str]], str]
) -> None:
    out = tmp_path / "run"
    line = cli_error(["run", "digits-utilgn", "--out", str(out)])
    assert "did you mean preset 'digits-utilgen'" in line
    listed = line.split("presets: ", 1)[1].split(", ")
    assert listed == preset_names()
    assert not out.exists()
