"""U-DPO k-shot prompts: shots from the right class, recorded, deterministic; templates
validated at config time; a class with too few texts is a one-line error."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from utilgen.config import FewShotPromptConfig, config_from_dict
from utilgen.config.text_generation import UDPO_TEMPLATE
from utilgen.data import LabelledData
from utilgen.errors import ConfigError
from utilgen.generate import GenerationError
from utilgen.generate.fewshot import fewshot_prompt, fewshot_requests, truncate_words

CLASSES = ("sport", "tech_news")


def _data(per_class: int = 4) -> LabelledData:
    items, labels, ids = [], [], []
    for c, name in enumerate(CLASSES):
        for i in range(per_class):
            items.append(f"{name} story number {i} with   some\nwords about {name}.")
            labels.append(c)
            ids.append(f"toy/{name}/{i}")
    return LabelledData("text", tuple(items), np.array(labels), CLASSES, tuple(ids), "toy")


def test_requests_split_per_class_into_prompts_of_n_outputs() -> None:
    cfg = FewShotPromptConfig()  # 2 shots, 5 outputs per prompt (U-DPO)
    requests = fewshot_requests(_data(), per_class=7, seed=0, round_index=1, cfg=cfg)
    assert [(r.class_name, r.num_outputs) for r in requests] == [
        ("sport", 5), ("sport", 2), ("tech_news", 5), ("tech_news", 2),
    ]
    assert sum(r.num_outputs for r in requests if r.label == 0) == 7


def test_shots_come_from_the_class_and_are_recorded() -> None:
    data = _data()
    requests = fewshot_requests(
        data, per_class=20, seed=3, round_index=1, cfg=FewShotPromptConfig()
    )
    for r in requests:
        shot_ids = r.metadata["shot_ids"]
        assert len(shot_ids) == 2 == len(set(shot_ids))
        assert all(s.startswith(f"toy/{r.class_name}/") for s in shot_ids)
        for shot in shot_ids:
            text = data.items[data.ids.index(shot)]
            assert " ".join(str(text).split()) in r.prompt
    # Different requests of a class see different pairs; seeds are spread apart.
    assert len({tuple(r.metadata["shot_ids"]) for r in requests if r.label == 0}) > 1
    seeds = sorted(r.seed for r in requests)
    assert all(b - a >= 5 for a, b in itertools.pairwise(seeds))


def test_requests_are_deterministic_per_seed_and_round() -> None:
    cfg = FewShotPromptConfig()
    make = lambda seed, rnd: [  # noqa: E731
        (r.prompt, r.seed) for r in fewshot_requests(
            _data(8), per_class=10, seed=seed, round_index=rnd, cfg=cfg
        )
    ]
    assert make(0, 1) == make(0, 1)
    assert make(0, 1) != make(1, 1)
    assert make(0, 1) != make(0, 2)


def test_default_prompt_is_the_u_dpo_wording() -> None:
    prompt = fewshot_prompt("tech_news", ["first text", "second text"], FewShotPromptConfig())
    assert prompt == UDPO_TEMPLATE.format(
        label="tech news", examples="Example 1: first text\nExample 2: second text"
    )
    assert prompt.startswith("You are an expert academic assistant.")
    assert prompt.endswith("Abstract:")


def test_custom_templates_labels_and_truncation() -> None:
    cfg = FewShotPromptConfig(
        template="Write {shots} more like these about {label}:\n{examples}\nText:",
        example_template="- {text}",
        max_example_words=3,
        label_names={"sport": "sports news"},
    )
    prompt = fewshot_prompt("sport", ["one two three four five", "a b"], cfg)
    assert prompt == "Write 2 more like these about sports news:\n- one two three ...\n- a b\nText:"
    named = FewShotPromptConfig(template="u-dpo-news")
    assert "news articles in the category sport" in fewshot_prompt("sport", ["x", "y"], named)
    assert truncate_words("a  b\nc", 0) == "a b c"


@pytest.mark.parametrize(
    ("template", "needle"),
    [
        ("Write a text about {label}.", "lacks {examples}"),
        ("Examples: {examples}", "lacks {label}"),
        ("{examples} {label} {topic}", "unknown placeholder(s) {topic}"),
        ("{examples} {label", "literal brace"),
    ],
)
def test_template_without_placeholders_is_a_one_line_config_error(
    template: str, needle: str
) -> None:
    with pytest.raises(ConfigError) as err:
        config_from_dict({"generator": {"text_prompt": {"template": template}}})
    message = str(err.value)
    assert "generator.text_prompt.template" in message and needle in message
    assert "\n" not in message


def test_example_template_needs_text() -> None:
    with pytest.raises(ConfigError, match=r"lacks \{text\}"):
        config_from_dict({"generator": {"text_prompt": {"example_template": "Example {index}"}}})


def test_class_with_fewer_texts_than_shots_is_named() -> None:
    data = _data(4)
    keep = [i for i in range(len(data)) if data.labels[i] == 0 or data.ids[i].endswith("/0")]
    with pytest.raises(GenerationError) as err:
        fewshot_requests(
            data.subset(keep), per_class=5, seed=0, round_index=1, cfg=FewShotPromptConfig()
        )
    message = str(err.value)
    assert "'tech_news' has 1 real training text(s)" in message
    assert "generator.text_prompt.shots=2" in message and "\n" not in message


def test_image_data_is_refused() -> None:
    images = LabelledData(
        "image", (np.zeros((2, 2, 1), np.uint8),) * 2, np.array([0, 0]), ("a",), ("x/0", "x/1")
    )
    with pytest.raises(GenerationError, match="need text data"):
        fewshot_requests(images, per_class=1, seed=0, round_index=1, cfg=FewShotPromptConfig())
