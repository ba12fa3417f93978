"""Diffusion-DPO: the loss against a direct implementation of Wallace et al.'s Eq. 14 on
fixed tensors, its gradient at step 0, and both trainers on tiny real models (a ~10k
parameter built-in UNet2DModel, the tiny Stable Diffusion pipeline of tests/generate).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from utilgen.config import BuiltinDiffusionConfig
from utilgen.config.feedback import DiffusionDPOConfig
from utilgen.feedback.diffusion_dpo import (
    ImagePair,
    diffusion_dpo_loss,
    train_builtin_diffusion_dpo,
    train_diffusers_dpo,
)
from utilgen.feedback.errors import FeedbackError
from utilgen.generate import GenerationRequest
from utilgen.generate.builtin import BuiltinDiffusionGenerator
from utilgen.generate.builtin.model import ClassConditionalUNet, ImageFormat, build_unet
from utilgen.generate.builtin.training import ddpm_scheduler
from utilgen.pool.payload import decode_image

sys.path.insert(0, str(Path(__file__).parents[1] / "generate"))
from tiny_sd import tiny_sd_pipeline

# 1. the loss against the paper's formula ---------------------------------------------------


def _paper_eq14(
    eps_w: torch.Tensor,
    eps_l: torch.Tensor,
    model_w: torch.Tensor,
    model_l: torch.Tensor,
    ref_w: torch.Tensor,
    ref_l: torch.Tensor,
    beta_t_omega: float,
) -> list[float]:
    """Eq. 14 of Wallace et al. written out pair by pair with Python floats: squared L2
    norms (sums over every element) and the constant beta * T * omega(lambda_t)."""

    def sq_norm(a: torch.Tensor, b: torch.Tensor) -> float:
        return sum(
            (x - y) ** 2 for x, y in zip(a.flatten().tolist(), b.flatten().tolist(), strict=True)
        )

    out = []
    for i in range(len(eps_w)):
        term = (
            sq_norm(eps_w[i], model_w[i])
            - sq_norm(eps_w[i], ref_w[i])
            - (sq_norm(eps_l[i], model_l[i]) - sq_norm(eps_l[i], ref_l[i]))
        )
        x = -beta_t_omega * term
        out.append(math.log1p(math.exp(-x)))  # -log sigmoid(x)
    return out


def _fixed(seed: int, n: int = 3, shape: tuple[int, ...] = (2, 3, 3)) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn((n, *shape), generator=g, dtype=torch.float64) for _ in range(6)]


def test_loss_equals_paper_eq14_with_folded_constant() -> None:
    eps_w, eps_l, model_w, model_l, ref_w, ref_l = _fixed(0)
    beta_dpo = 3.0
    elements = 2 * 3 * 3
    expected = _paper_eq14(eps_w, eps_l, model_w, model_l, ref_w, ref_l, 0.5 * beta_dpo / elements)
    out = diffusion_dpo_loss(model_w, model_l, ref_w, ref_l, eps_w, eps_l, beta_dpo=beta_dpo)
    assert out.losses.tolist() == pytest.approx(expected, rel=1e-5)
    assert float(out.loss) == pytest.approx(sum(expected) / 3, rel=1e-5)
    # the rewards and margin are the pieces of the sigmoid's argument
    margins = out.rewards_w - out.rewards_l
    assert torch.allclose(margins, out.inside)
    assert out.metrics()["implicit_acc"] == pytest.approx(float((out.inside > 0).float().mean()))


def test_weights_scale_each_pair_and_reduction_is_mean_over_pairs() -> None:
    eps_w, eps_l, model_w, model_l, ref_w, ref_l = _fixed(1)
    plain = diffusion_dpo_loss(model_w, model_l, ref_w, ref_l, eps_w, eps_l, beta_dpo=2.0)
    weights = torch.tensor([0.25, 1.0, 0.0])
    weighted = diffusion_dpo_loss(
        model_w, model_l, ref_w, ref_l, eps_w, eps_l, beta_dpo=2.0, weights=weights
    )
    assert torch.allclose(weighted.losses, plain.losses * weights)
    assert float(weighted.loss) == pytest.approx(float((plain.losses * weights).sum() / 3))


def test_step_zero_loss_is_log2_and_gradient_has_known_value() -> None:
    # model == reference: inside = 0 for every pair, loss = log 2.
    eps = torch.zeros(1, 1, 2, 2)
    pred_w = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]], requires_grad=True)
    pred_l = torch.tensor([[[[0.0, 0.0], [0.0, 2.0]]]], requires_grad=True)
    out = diffusion_dpo_loss(
        pred_w, pred_l, pred_w.detach(), pred_l.detach(), eps, eps, beta_dpo=2.0
    )
    assert float(out.loss.detach()) == pytest.approx(math.log(2.0))
    assert out.metrics()["implicit_acc"] == 0.0  # exact: model and reference are one tensor
    out.loss.backward()
    # d/d pred_w = w * beta * (pred_w - eps) / (2 * pairs * elements) = 2 * 1 / 8 = 0.25
    assert pred_w.grad is not None and pred_l.grad is not None
    assert pred_w.grad[0, 0, 0, 0].item() == pytest.approx(0.25)
    assert pred_w.grad.abs().sum().item() == pytest.approx(0.25)
    # the dispreferred image is pushed the other way: -2 * 2 / 8 = -0.5
    assert pred_l.grad[0, 0, 1, 1].item() == pytest.approx(-0.5)


def test_loss_rejects_non_positive_beta() -> None:
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(FeedbackError, match="beta_dpo"):
        diffusion_dpo_loss(x, x, x, x, x, x, beta_dpo=0.0)


# 2. the built-in generator -----------------------------------------------------------------

CLASSES = ("a", "b")


pytestmark = pytest.mark.usefixtures("quiet_one_thread")


def tiny_builtin(seed: int = 0) -> BuiltinDiffusionGenerator:
    """An untrained ~10k-parameter built-in generator for 8x8 grey images of 2 classes."""
    cfg = BuiltinDiffusionConfig(block_out_channels=[8, 16], norm_num_groups=4, steps=4)
    torch.manual_seed(seed)
    model = ClassConditionalUNet(build_unet(cfg, 1, 8), len(CLASSES))
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(ddpm_scheduler(cfg).config)
    return BuiltinDiffusionGenerator(
        model,
        scheduler,
        class_names=CLASSES,
        image_format=ImageFormat(height=8, width=8, channels=1, size=8),
        guidance_scale=1.5,
        steps=4,
        batch_size=4,
    )


def grey(level: int, seed: int, size: int = 8) -> Image.Image:
    """A grey image around ``level`` with a little texture."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(level + rng.integers(-30, 30, (size, size)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, mode="L")


def bright_dark_pairs(n: int, seed: int = 0) -> list[ImagePair]:
    return [
        ImagePair(
            label=i % 2,
            prompt=CLASSES[i % 2],
            chosen=grey(200, seed + 2 * i),
            rejected=grey(50, seed + 2 * i + 1),
            weight=1.0,
            chosen_id=f"w{i}",
            rejected_id=f"l{i}",
        )
        for i in range(n)
    ]


def dpo_cfg(**changes: object) -> DiffusionDPOConfig:
    fields: dict[str, object] = dict(
        beta_dpo=500.0, learning_rate=1e-2, steps=3, batch_size=2, log_every=1
    )
    fields.update(changes)
    return DiffusionDPOConfig(**fields)  # type: ignore[arg-type]


def requests(n: int = 4) -> list[GenerationRequest]:
    return [
        GenerationRequest(label=i % 2, class_name=CLASSES[i % 2], prompt="", seed=100 + i)
        for i in range(n)
    ]


def payloads(generator: BuiltinDiffusionGenerator) -> list[bytes]:
    return [s.payload for s in generator.generate(requests(), progress=False)]


def test_builtin_lora_dpo_trains_merges_renames_and_round_trips(tmp_path: Path) -> None:
    gen = tiny_builtin()
    before = {k: v.clone() for k, v in gen.model.state_dict().items()}
    name, samples_before = gen.name, payloads(gen)
    # Capture the LoRA parameters as peft creates them (initial values cloned).
    lora_params: list[tuple[str, torch.Tensor, torch.Tensor]] = []
    import peft

    original_get = peft.get_peft_model

    def capture(model: torch.nn.Module, config: object, **kwargs: object) -> object:
        out = original_get(model, config, **kwargs)  # type: ignore[arg-type]
        lora_params.extend(
            (n, p, p.detach().clone()) for n, p in out.named_parameters() if "lora_" in n
        )
        return out

    mp = pytest.MonkeyPatch()
    mp.setattr(peft, "get_peft_model", capture)
    try:
        result = train_builtin_diffusion_dpo(
            gen, bright_dark_pairs(4), dpo_cfg(), out_dir=tmp_path / "dpo", seed=0
        )
    finally:
        mp.undo()

    # every LoRA parameter changed from its initial value
    assert lora_params, "no LoRA layers were added"
    unchanged = [n for n, p, start in lora_params if torch.equal(p.detach(), start)]
    assert unchanged == []
    # the reference (the adapter-free weights) was frozen: the class table is untouched and
    # the merged weights differ from the reference only by the LoRA update
    after = gen.model.state_dict()
    assert set(after) == set(before)
    assert torch.equal(after["class_embeddings.weight"], before["class_embeddings.weight"])
    changed = [k for k in before if not torch.equal(after[k], before[k])]
    assert changed and all(
        any(t in k for t in ("conv1", "conv2", "time_emb_proj")) for k in changed
    )

    # provenance: new name, log, result, saved generator reproduces the samples
    assert gen.name != name and gen.name == result.generator_name
    assert payloads(gen) != samples_before
    out = tmp_path / "dpo"
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert records[0]["loss"] == pytest.approx(math.log(2.0), abs=1e-6)  # model == reference
    assert {"implicit_acc", "rewards/margins", "model_err/w", "ref_err/l"} <= set(records[0])
    assert any((out / "tensorboard").iterdir())
    saved = json.loads((out / "result.json").read_text())
    assert saved["generator"] == gen.name and saved["steps"] == 3
    loaded = BuiltinDiffusionGenerator.from_pretrained(out / "generator", batch_size=4)
    assert loaded.name == gen.name
    # exact: the merged weights come back bit for bit, and both generate in batches of 4
    assert payloads(loaded) == payloads(gen)
    assert loaded.training["diffusion_dpo"][0]["method"] == "lora"


def test_builtin_full_dpo_changes_every_weight_against_a_frozen_copy(tmp_path: Path) -> None:
    gen = tiny_builtin()
    before = {k: v.clone() for k, v in gen.model.state_dict().items()}
    train_builtin_diffusion_dpo(
        gen,
        bright_dark_pairs(4),
        dpo_cfg(method="full", steps=2, gradient_accumulation_steps=2),
        out_dir=tmp_path,
        seed=1,
    )
    after = gen.model.state_dict()
    unchanged = [k for k in before if torch.equal(after[k], before[k])]
    assert unchanged == []
    assert all(p.requires_grad for p in gen.model.parameters())


def test_builtin_same_seed_same_weights(tmp_path: Path) -> None:
    names = []
    for run in ("a", "b"):
        gen = tiny_builtin()
        train_builtin_diffusion_dpo(
            gen, bright_dark_pairs(3), dpo_cfg(steps=2), out_dir=tmp_path / run, seed=7
        )
        names.append(gen.name)
    assert names[0] == names[1]


def _error_gap(gen: BuiltinDiffusionGenerator, ref: BuiltinDiffusionGenerator) -> float:
    """How much more the trained model improved on held-out bright images than on dark ones,
    relative to the reference: (err(bright) - err_ref(bright)) - (err(dark) - err_ref(dark)),
    on the same noise and timesteps (negative: bright images became more likely)."""
    from diffusers import DDPMScheduler

    from utilgen.generate.builtin.pixels import to_model_space

    scheduler = DDPMScheduler.from_config(gen.scheduler.config)
    n = 32
    g = torch.Generator().manual_seed(123)
    bright = to_model_space([np.asarray(grey(200, 1000 + i)) for i in range(n)], gen.image_format)
    dark = to_model_space([np.asarray(grey(50, 2000 + i)) for i in range(n)], gen.image_format)
    noise = torch.randn(bright.shape, generator=g)
    t = torch.randint(0, 1000, (n,), generator=g)
    labels = torch.arange(n) % 2
    gaps = []
    with torch.no_grad():
        for images in (bright, dark):
            noisy = scheduler.add_noise(images, noise, t)
            errs = []
            for model in (gen.model, ref.model):
                pred = model(noisy, t, model.embed(labels))
                errs.append(float(((pred - noise) ** 2).mean()))
            gaps.append(errs[0] - errs[1])
    return gaps[0] - gaps[1]


def test_builtin_dpo_learns_the_preference(tmp_path: Path) -> None:
    """Preferred images bright, dispreferred dark (same class): after DPO the denoising error
    on held-out bright images falls relative to dark ones, compared with the reference. With
    the loss's sign flipped the gap would be positive."""
    gen, ref = tiny_builtin(), tiny_builtin()
    train_builtin_diffusion_dpo(
        gen,
        bright_dark_pairs(8),
        dpo_cfg(steps=20, batch_size=4, learning_rate=3e-3, beta_dpo=200.0, log_every=5),
        out_dir=tmp_path,
        seed=0,
    )
    assert _error_gap(gen, ref) < 0
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert records[-1]["implicit_acc"] > 0.5 and records[-1]["loss"] < math.log(2.0)


def _conditionings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, cond_dropout: float
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The class embeddings of every denoiser call while training with ``cond_dropout``,
    and the null class's embedding."""
    gen = tiny_builtin()
    seen: list[torch.Tensor] = []
    original = ClassConditionalUNet.forward

    def spy(
        self: ClassConditionalUNet, sample: torch.Tensor, t: object, embeds: torch.Tensor
    ) -> torch.Tensor:
        seen.append(embeds.detach().clone())
        return original(self, sample, t, embeds)  # type: ignore[arg-type]

    monkeypatch.setattr(ClassConditionalUNet, "forward", spy)
    train_builtin_diffusion_dpo(
        gen,
        bright_dark_pairs(8),
        dpo_cfg(steps=25, batch_size=4, cond_dropout=cond_dropout),
        out_dir=tmp_path,
        seed=0,
    )
    monkeypatch.undo()
    null = gen.model.embed(torch.tensor([gen.model.null_label])).detach()[0]
    return seen, null


def test_cond_dropout_trains_a_share_of_pairs_on_the_null_class(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The reference script's --proportion_empty_prompts: a share of the pairs is conditioned
    on the unconditional input, the same for both images of a pair and for the reference."""
    seen, null = _conditionings(monkeypatch, tmp_path / "a", 0.5)
    assert len(seen) == 2 * 25  # trained forward and reference, one call each per step
    dropped = []
    for trained, reference in zip(seen[::2], seen[1::2], strict=True):
        assert torch.equal(trained, reference)
        chosen, rejected = trained.chunk(2)
        assert torch.equal(chosen, rejected)  # a pair shares its conditioning
        dropped += [bool(torch.equal(row, null)) for row in chosen]
    share = sum(dropped) / len(dropped)
    assert 0.35 < share < 0.65, share  # 100 draws at p = 0.5
    # Without it no pair sees the null class (the pairs' labels are 0 and 1).
    seen, null = _conditionings(monkeypatch, tmp_path / "b", 0.0)
    assert not any(torch.equal(row, null) for call in seen for row in call)


def test_cond_dropout_out_of_range_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="cond_dropout"):
        DiffusionDPOConfig(cond_dropout=1.0)


# 3. bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pairs", "match"),
    [
        ([], "no preference pairs"),
        (
            [ImagePair(label=0, prompt="a", chosen=grey(9, 0), rejected=grey(9, 1, size=6))],
            "same size",
        ),
        ([ImagePair(label=2, prompt="a", chosen=grey(9, 0), rejected=grey(9, 1))], "label 2"),
        (
            [ImagePair(label=0, prompt="a", chosen=grey(9, 0), rejected=grey(9, 1), weight=-1)],
            "weight",
        ),
    ],
)
def test_bad_pairs_raise_and_write_nothing(
    tmp_path: Path, pairs: list[ImagePair], match: str
) -> None:
    gen = tiny_builtin()
    name = gen.name
    with pytest.raises(FeedbackError, match=match) as error:
        train_builtin_diffusion_dpo(gen, pairs, dpo_cfg(), out_dir=tmp_path / "out", seed=0)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "out").exists() and gen.name == name


def test_mixed_precision_on_cpu_is_an_error(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA present: mixed precision is allowed")
    with pytest.raises(FeedbackError, match="mixed_precision=bf16 needs a CUDA GPU"):
        train_builtin_diffusion_dpo(
            tiny_builtin(),
            bright_dark_pairs(2),
            dpo_cfg(mixed_precision="bf16"),
            out_dir=tmp_path / "out",
            seed=0,
        )
    assert not (tmp_path / "out").exists()


def _train_recording_dtypes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, precision: str
) -> tuple[BuiltinDiffusionGenerator, dict[str, torch.Tensor], list[torch.dtype]]:
    """Train the tiny generator with ``mixed_precision=precision``; returns it, its weights
    before, and the dtype of every prediction the loss saw."""
    from utilgen.feedback.diffusion_dpo import loop as diffusion_dpo

    seen: list[torch.dtype] = []
    real_loss = diffusion_dpo.diffusion_dpo_loss

    def recording(pred_w: torch.Tensor, *args: object, **kwargs: object) -> object:
        seen.append(pred_w.dtype)
        return real_loss(pred_w, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(diffusion_dpo, "diffusion_dpo_loss", recording)
    gen = tiny_builtin()
    before = {k: v.detach().cpu().clone() for k, v in gen.model.state_dict().items()}
    train_builtin_diffusion_dpo(
        gen, bright_dark_pairs(4), dpo_cfg(mixed_precision=precision), out_dir=tmp_path, seed=0
    )
    return gen, before, seen


def _check_trained(
    gen: BuiltinDiffusionGenerator, before: dict[str, torch.Tensor], out: Path
) -> None:
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(math.isfinite(r["loss"]) for r in records)
    after = {k: v.detach().cpu() for k, v in gen.model.state_dict().items()}
    # the merged weights stay float32 (autocast only lowers the forward passes) and moved
    assert all(v.dtype == torch.float32 for v in after.values() if v.is_floating_point())
    assert any(not torch.equal(after[k], before[k]) for k in before)


def test_mixed_precision_path_autocasts_the_forward_passes_bf16_on_cpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The mixed-precision code path without a GPU: the CUDA-only guard lifted, bf16
    autocast (which CPUs support) lowers the predictions, the float32 LoRA still trains."""
    from utilgen.feedback.diffusion_dpo import loop as diffusion_dpo

    monkeypatch.setattr(diffusion_dpo, "_check_settings", lambda cfg, device: None)
    gen, before, seen = _train_recording_dtypes(tmp_path, monkeypatch, "bf16")
    assert seen and set(seen) == {torch.bfloat16}
    _check_trained(gen, before, tmp_path)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize(
    ("precision", "dtype"), [("fp16", torch.float16), ("bf16", torch.bfloat16)]
)
def test_mixed_precision_on_a_gpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, precision: str, dtype: torch.dtype
) -> None:
    """On a GPU (fp16 with the gradient scaler, bf16 without): the predictions are in the
    half dtype, the loss stays finite and the float32 weights train."""
    gen, before, seen = _train_recording_dtypes(tmp_path, monkeypatch, precision)
    assert seen and set(seen) == {dtype}
    _check_trained(gen, before, tmp_path)


# 4. Stable Diffusion through diffusers ----------------------------------------------------


def sd_pairs(n: int) -> list[ImagePair]:
    def rgb(level: int, seed: int) -> Image.Image:
        return grey(level, seed, size=32).convert("RGB")

    return [
        ImagePair(
            label=i % 2,
            prompt=f"a photo of a {CLASSES[i % 2]}",
            chosen=rgb(200, 2 * i),
            rejected=rgb(50, 2 * i + 1),
            weight=0.5 + 0.25 * i,
        )
        for i in range(n)
    ]


def test_diffusers_dpo_trains_lora_saves_and_loads(tmp_path: Path) -> None:
    from utilgen.generate.diffusers_backend import DiffusersGenerator

    gen = DiffusersGenerator(tiny_sd_pipeline(), model="tiny-sd", steps=2, batch_size=2)
    unet = gen.pipeline.unet
    base = {k: v.clone() for k, v in unet.state_dict().items()}
    request = GenerationRequest(label=0, class_name="a", prompt="a photo of a a", seed=3)
    plain = [s.payload for s in gen.generate([request], progress=False)]
    initial: dict[str, torch.Tensor] = {}
    import utilgen.generate.lora as lora_module

    original_add = lora_module.add_lora

    def capture(unet_: torch.nn.Module, *args: object, **kwargs: object) -> object:
        params = original_add(unet_, *args, **kwargs)  # type: ignore[arg-type]
        for n, p in unet_.named_parameters():
            if "lora_" in n:
                initial[n] = p.detach().clone()
        return params

    mp = pytest.MonkeyPatch()
    mp.setattr(lora_module, "add_lora", capture)
    trained: dict[str, torch.Tensor] = {}
    original_save = lora_module.save_lora

    def spy_save(pipeline: object, directory: object, adapter_name: str = "") -> Path:
        for n, p in unet.named_parameters():
            if "lora_" in n:
                trained[n] = p.detach().clone()
        return original_save(pipeline, directory, adapter_name=adapter_name)  # type: ignore[arg-type]

    mp.setattr(lora_module, "save_lora", spy_save)
    try:
        result = train_diffusers_dpo(
            gen, sd_pairs(3), dpo_cfg(steps=3, lora_rank=2), out_dir=tmp_path, seed=0
        )
    finally:
        mp.undo()

    assert initial and set(trained) == set(initial)
    assert [n for n in initial if torch.equal(trained[n], initial[n])] == []
    # the reference (the U-Net without the adapter) did not change
    after = {k: v for k, v in unet.state_dict().items() if "lora_" not in k}
    base_keys = {k.replace(".base_layer", "") for k in after}
    assert base_keys == set(base)
    for k, v in after.items():
        assert torch.equal(v, base[k.replace(".base_layer", "")]), k
    # saved in the format load_lora reads; the generator carries it and names its hash
    assert result.path == tmp_path / "lora" / "pytorch_lora_weights.safetensors"
    assert result.path.is_file() and gen.lora_sha256 == result.lora_sha256
    assert gen.name == f"tiny-sd+lora:{result.lora_sha256[:16]}"
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["lora_file"] == "lora/pytorch_lora_weights.safetensors"
    (trained_image,) = (
        decode_image(s.payload).astype(int) for s in gen.generate([request], progress=False)
    )
    (plain_image,) = (decode_image(p).astype(int) for p in plain)
    assert np.abs(trained_image - plain_image).mean() > 1.0  # measured: 4 levels, at most 34
    fresh = DiffusersGenerator(tiny_sd_pipeline(), model="tiny-sd", steps=2, batch_size=2)
    fresh.load_lora(tmp_path / saved["lora_file"])
    # The adapter loaded from its file sits in other layers than the one trained in memory,
    # which may round a pixel to the neighbouring grey level.
    (loaded,) = (
        decode_image(s.payload).astype(int) for s in fresh.generate([request], progress=False)
    )
    assert np.abs(loaded - trained_image).max() <= 1


def test_diffusers_dpo_cond_dropout_uses_the_empty_prompt(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from diffusers import UNet2DConditionModel

    from utilgen.generate.diffusers_backend import DiffusersGenerator

    gen = DiffusersGenerator(tiny_sd_pipeline(), model="tiny-sd", steps=2, batch_size=2)
    pipeline = gen.pipeline
    with torch.no_grad():
        empty = pipeline.encode_prompt([""], pipeline.device, 1, False)[0][0].float()
    seen: list[torch.Tensor] = []
    original = UNet2DConditionModel.forward

    def spy(
        self: UNet2DConditionModel,
        sample: torch.Tensor,
        t: object,
        states: torch.Tensor,
        **kw: object,
    ) -> object:
        seen.append(states.detach().float().clone())
        return original(self, sample, t, states, **kw)

    monkeypatch.setattr(UNet2DConditionModel, "forward", spy)
    train_diffusers_dpo(
        gen,
        sd_pairs(4),
        dpo_cfg(steps=8, batch_size=2, lora_rank=2, cond_dropout=0.5),
        out_dir=tmp_path,
        seed=0,
    )
    monkeypatch.undo()
    rows = [row for call in seen for row in call]
    is_empty = [bool(torch.equal(row, empty)) for row in rows]
    assert any(is_empty) and not all(is_empty)


def test_diffusers_dpo_bad_settings(tmp_path: Path) -> None:
    from utilgen.generate.diffusers_backend import DiffusersGenerator

    gen = DiffusersGenerator(tiny_sd_pipeline(), model="tiny-sd", steps=2)
    with pytest.raises(FeedbackError, match="method=lora"):
        train_diffusers_dpo(
            gen, sd_pairs(1), dpo_cfg(method="full"), out_dir=tmp_path / "o", seed=0
        )
    with pytest.raises(FeedbackError, match="no preference pairs"):
        train_diffusers_dpo(gen, [], dpo_cfg(), out_dir=tmp_path / "o", seed=0)
    assert not (tmp_path / "o").exists() and gen.name == "tiny-sd"


# 5. two processes (DDP on CPU) ------------------------------------------------------------

WORKER = """
import os, sys
from pathlib import Path
sys.path[:0] = [{feedback!r}, {generate!r}]
import torch
import test_diffusion_dpo as T
from utilgen.progress import set_quiet
set_quiet(True)
out, rank = Path(sys.argv[1]), os.environ["RANK"]
for method in ("lora", "full"):
    gen = T.tiny_builtin()
    cfg = T.dpo_cfg(steps=2, method=method, gradient_accumulation_steps=2)
    T.train_builtin_diffusion_dpo(gen, T.bright_dark_pairs(8), cfg, out_dir=out / method, seed=0)
    (out / f"{{method}}-{{rank}}.txt").write_text(gen.name)
"""


@pytest.mark.slow
def test_two_process_ddp_run_keeps_processes_in_step(tmp_path: Path) -> None:
    """``torchrun`` with 2 CPU processes (accelerate's MULTI_CPU, gloo): both processes end
    with the same weights (same name), and process 0 alone writes the outputs."""
    import os
    import subprocess

    here = Path(__file__).parent
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(feedback=str(here), generate=str(here.parent / "generate")))
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [
            str(torchrun),
            "--nproc_per_node",
            "2",
            "--master_port",
            "29561",
            str(script),
            str(tmp_path),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    start = tiny_builtin().name
    for method in ("lora", "full"):
        names = {(tmp_path / f"{method}-{r}.txt").read_text() for r in (0, 1)}
        assert len(names) == 1 and start not in names, (method, names)
        saved = json.loads((tmp_path / method / "result.json").read_text())
        assert saved["generator"] in names
        records = (tmp_path / method / "log.jsonl").read_text().splitlines()
        assert len(records) == 2
