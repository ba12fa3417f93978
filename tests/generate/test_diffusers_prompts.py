"""Class prompts (Real-Fake / GenDataAgent templates), captions files, the prompt map,
deterministic seeds, and BLIP-2 captions from a tiny BLIP-2 built from config."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from tiny_lm import greedy_gaps
from tiny_sd import one_thread, random_images, real_data, tiny_tokenizer
from transformers import (
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2Processor,
    Blip2QFormerConfig,
    Blip2VisionConfig,
    BlipImageProcessor,
    OPTConfig,
)

from utilgen.config import DEFAULT_NEGATIVE_PROMPT, DiffusersConfig
from utilgen.errors import ConfigError, ModelNotFoundError
from utilgen.generate.prompts import (
    CaptionEntry,
    CaptionTable,
    caption_images,
    captions_for,
    class_prompt_requests,
    load_captioner,
    read_captions,
    request_seed,
    write_captions,
)

CLASSES = ("cat", "dog")


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


def _requests(cfg: DiffusersConfig, per_class: int = 2, **kwargs: object) -> list:  # type: ignore[type-arg]
    return class_prompt_requests(
        CLASSES, per_class=per_class, seed=0, round_index=1, cfg=cfg, **kwargs
    )  # type: ignore[arg-type]


def test_without_captions_the_prompt_is_a_photo_of_a_class() -> None:
    requests = _requests(DiffusersConfig())
    assert [r.prompt for r in requests] == ["a photo of a cat"] * 2 + ["a photo of a dog"] * 2
    assert [r.label for r in requests] == [0, 0, 1, 1]
    assert all(r.negative_prompt == DEFAULT_NEGATIVE_PROMPT for r in requests)
    assert DEFAULT_NEGATIVE_PROMPT == "distorted, unrealistic, blurry, out of frame"
    # Guidance and steps are the generator's (7.5 by default, GenDataAgent).
    assert all(r.guidance_scale is None and r.num_inference_steps is None for r in requests)
    assert DiffusersConfig().guidance_scale == 7.5


def test_seeds_are_fixed_by_seed_round_class_and_index() -> None:
    seeds = [r.seed for r in _requests(DiffusersConfig(), per_class=3)]
    assert seeds == [r.seed for r in _requests(DiffusersConfig(), per_class=3)]
    assert len(set(seeds)) == 6
    assert seeds[0] == request_seed(0, 1, "cat", 0)
    assert request_seed(0, 2, "cat", 0) != seeds[0] and request_seed(1, 1, "cat", 0) != seeds[0]
    assert all(0 <= s < 2**31 for s in seeds)


def test_json_captions_fill_the_template_in_turn(tmp_path: Path) -> None:
    path = tmp_path / "captions.json"
    path.write_text(
        json.dumps(
            {"cat": ["sitting on a sofa", {"caption": "asleep", "id": "toy/cat/0"}], "dog": []}
        )
    )
    requests = _requests(DiffusersConfig(captions_file=path), per_class=3)
    assert [r.prompt for r in requests] == [
        "a photo of a cat, which is sitting on a sofa",
        "a photo of a cat, which is asleep",
        "a photo of a cat, which is sitting on a sofa",
        "a photo of a dog",
        "a photo of a dog",
        "a photo of a dog",
    ]
    assert requests[1].metadata == {"caption": "asleep"}
    table = read_captions(path, CLASSES)
    assert table.for_sample("toy/cat/0") == "asleep" and table.for_class("dog") == ()


def test_csv_captions_and_the_json_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "captions.csv"
    path.write_text('class,caption,id\ncat,"on grass, asleep",toy/cat/1\ndog,running,\n')
    table = read_captions(path, CLASSES)
    assert table.for_class("cat") == ("on grass, asleep",)
    assert table.for_sample("toy/cat/1") == "on grass, asleep"
    back = read_captions(write_captions(table, tmp_path / "c.json"), CLASSES)
    assert back == table


def test_prompt_map_names_the_classes_in_prompts() -> None:
    cfg = DiffusersConfig(
        prompt_map={"cat": "tabby cat", "dog": "beagle"},
        prompt_template="a {class} photo, {caption}",
    )
    captions = CaptionTable((CaptionEntry("dog", "on grass"),))
    requests = _requests(cfg, per_class=1, captions=captions)
    assert [r.prompt for r in requests] == ["a photo of a tabby cat", "a beagle photo, on grass"]


def test_bad_captions_files_are_one_line_config_errors(tmp_path: Path) -> None:
    cases = {
        "missing.json": None,
        "broken.json": "{not json",
        "list.json": "[1, 2]",
        "typo.json": json.dumps({"kat": ["x"]}),
        "columns.csv": "label,text\ncat,x\n",
    }
    for name, text in cases.items():
        path = tmp_path / name
        if text is not None:
            path.write_text(text)
        with pytest.raises(ConfigError) as err:
            _requests(DiffusersConfig(captions_file=path))
        message = str(err.value)
        assert "\n" not in message and name in message and "captions_file" in message


def _tiny_blip2(directory: Path) -> Path:
    """A BLIP-2 (ViT, Q-Former, OPT) of a few thousand parameters with the tiny tokenizer."""
    tokenizer = tiny_tokenizer()
    processor = Blip2Processor(
        image_processor=BlipImageProcessor(size={"height": 16, "width": 16}),
        tokenizer=tokenizer,
        num_query_tokens=2,
    )
    vocab = len(tokenizer)
    torch.manual_seed(0)
    config = Blip2Config(
        vision_config=Blip2VisionConfig(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=16,
            patch_size=8,
        ).to_dict(),
        qformer_config=Blip2QFormerConfig(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            encoder_hidden_size=16,
            vocab_size=vocab,
        ).to_dict(),
        text_config=OPTConfig(
            vocab_size=vocab,
            hidden_size=16,
            ffn_dim=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=64,
            word_embed_proj_dim=16,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=False,
        ).to_dict(),
        num_query_tokens=2,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
    )
    model = Blip2ForConditionalGeneration(config)
    # Random init puts all logits near zero, so greedy decoding would hinge on float noise
    # (gaps of 3e-5 between the two best tokens): a larger output layer gives clear winners.
    # And a random model may greedily emit only special tokens, which decode to "": zero
    # their output rows so that some word always scores higher.
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(40.0)
        model.get_output_embeddings().weight[tokenizer.all_special_ids] = 0.0
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def test_blip2_captions_real_images_deterministically(tmp_path: Path) -> None:
    model_dir = _tiny_blip2(tmp_path / "blip2")
    processor, model = load_captioner(str(model_dir), device="cpu")
    images = list(random_images(3))
    with greedy_gaps(model.get_output_embeddings()) as gaps:
        first = caption_images(images, processor, model, batch_size=2, max_new_tokens=4)
        again = caption_images(images, processor, model, batch_size=3, max_new_tokens=4)
    assert len(first) == 3 and all(isinstance(c, str) for c in first)
    # Batches of 2 + 1 and of 3: logits equal up to float noise (~1e-5), far below every gap.
    assert min(gaps) > 1e-3, min(gaps)
    assert first == again
    # Through the config: captions tied to each image, cached for the next call.
    cfg = DiffusersConfig(
        captioner=str(model_dir), caption_max_new_tokens=4, cache_dir=tmp_path / "c"
    )
    data = real_data(CLASSES, per_class=2)
    table = captions_for(cfg, data, device="cpu")
    assert table is not None
    class_of = {i: CLASSES[y] for i, y in zip(data.ids, data.labels, strict=True)}
    assert table.entries and all(class_of[e.sample_id] == e.class_name for e in table.entries)
    assert len(list((tmp_path / "c" / "captions").iterdir())) == 1
    assert captions_for(cfg, data, device="cpu") == table


def test_a_captioner_that_is_not_on_disk_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError) as err:
        load_captioner(str(tmp_path / "absent"), device="cpu")
    assert "\n" not in str(err.value) and "generator.diffusers.captioner" in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="holds no BLIP-2 model"):
        load_captioner(str(tmp_path / "empty"), device="cpu")
