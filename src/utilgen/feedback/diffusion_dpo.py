"""Diffusion-DPO (Wallace et al. 2024): preference fine-tuning of a diffusion denoiser.

For a pair (x_w preferred, x_l dispreferred) both images are noised with the SAME noise eps
and timestep t, and the trained denoiser eps_theta and the frozen reference eps_ref predict
the noise of both. With per-image errors (mean over the C*H*W elements)

    model_err_w = mean (eps - eps_theta(x_w_t, t))^2    ref_err_w = mean (eps - eps_ref(x_w_t, t))^2
    model_err_l = mean (eps - eps_theta(x_l_t, t))^2    ref_err_l = mean (eps - eps_ref(x_l_t, t))^2

the loss of a pair is

    inside    = -0.5 * beta_dpo * ((model_err_w - model_err_l) - (ref_err_w - ref_err_l))
    loss_pair = -log sigmoid(inside)

and the batch loss is ``mean_i(w_i * loss_pair_i)`` with the pair weights w_i of
``feedback.pairs`` (1 when unweighted; not divided by their sum, as in ``dpo_loss``).

Which form this is. The paper's Eq. 14 reads

    -log sigmoid(-beta T omega(lambda_t) (  ||eps_w - eps_theta(x_w_t)||^2
                                          - ||eps_w - eps_ref(x_w_t)||^2
                                          - ||eps_l - eps_theta(x_l_t)||^2
                                          + ||eps_l - eps_ref(x_l_t)||^2))

with squared L2 norms (sums over elements). The authors' code (SalesforceAIResearch/
DiffusionDPO), which this follows, uses one noise for both images, means instead of sums,
and folds T * omega(lambda_t) (constant for the epsilon objective) and the 0.5 into
``beta_dpo``: it is Eq. 14 with ``beta T omega(lambda_t) = 0.5 beta_dpo / (C*H*W)``, so
beta_dpo = 5000 (SD 1.5) keeps the paper's meaning. The diffusers port
(``train_diffusion_dpo.py``) drops the 0.5, so its beta_dpo is half of ours for the same
objective. For v-prediction models the target is the velocity of each image instead of
eps, as in the reference code.

Implicit rewards: ``reward_w = -0.5 beta_dpo (model_err_w - ref_err_w)`` (likewise l), so
``inside = reward_w - reward_l`` is the reward margin; a pair is "accurate" when
``inside > 0`` (ties, e.g. at step 0, count as not accurate).

Trainers. :func:`train_builtin_diffusion_dpo` trains the built-in class-conditional UNet
(LoRA on its convolutions and projections, merged into the weights afterwards, or every
weight), :func:`train_diffusers_dpo` a Stable Diffusion U-Net (LoRA, saved in diffusers'
format). The reference is the model with its LoRA adapter switched off (no second copy), or
a frozen copy for a full fine-tune. A share ``cond_dropout`` of the pair draws (0.2, the
reference script's ``--proportion_empty_prompts``) is conditioned on the unconditional
input, the null class or the empty prompt, for both images and the reference: the samplers
use classifier-free guidance, which extrapolates from that branch. Both run through
``accelerate`` (DDP under ``accelerate launch``; each process takes its share of every
batch), accumulate gradients, clip them, use AdamW at a constant learning rate (weight decay
1e-2, the reference script's) and autocast to fp16/bf16 on CUDA only. Every random draw
(batch order, noise, timesteps, dropped conditionings, LoRA initialisation) comes from
``seed``. Logs: ``out_dir/log.jsonl`` and TensorBoard ``out_dir/tensorboard`` (means over
the step's batches and the processes); ``out_dir/result.json`` is written last, by process
0, which alone writes files.

Several processes: ``accelerate launch --multi_gpu --num_processes N script.py`` on GPUs;
on CPUs ``ACCELERATE_USE_CPU=true torchrun --nproc_per_node N script.py`` (accelerate's
MULTI_CPU over gloo; ``accelerate launch --cpu`` starts one process only). Every process
draws the same global batch of ``N * batch_size`` pairs and trains on its own share.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from utilgen.atomic import write_json_atomic
from utilgen.config.feedback import DiffusionDPOConfig
from utilgen.faults import fault_point
from utilgen.feedback.errors import FeedbackError
from utilgen.progress import progress_bar

log = logging.getLogger(__name__)

RESULT_FILE = "result.json"
LOG_FILE = "log.jsonl"
DPO_ADAPTER = "utilgen-dpo"
# The reference script's AdamW weight decay (adam_weight_decay = 1e-2).
WEIGHT_DECAY = 1e-2


# 1. the loss ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DiffusionDPOLoss:
    """The Diffusion-DPO loss of a batch of pairs and its per-pair parts.

    Attributes:
        loss: scalar, differentiable: mean over pairs of ``weight * -log sigmoid(inside)``.
        losses: per-pair weighted losses (nats), differentiable, shape ``(pairs,)``.
        inside: the sigmoid's argument, ``reward_w - reward_l`` (detached, ``(pairs,)``).
        model_err_w, model_err_l: the trained model's per-image MSE (detached).
        ref_err_w, ref_err_l: the reference's per-image MSE (detached).
        rewards_w, rewards_l: implicit rewards ``-0.5 beta_dpo (model_err - ref_err)``.
        weights: the pair weights used (ones when none were given).
    """

    loss: torch.Tensor
    losses: torch.Tensor
    inside: torch.Tensor
    model_err_w: torch.Tensor
    model_err_l: torch.Tensor
    ref_err_w: torch.Tensor
    ref_err_l: torch.Tensor
    rewards_w: torch.Tensor
    rewards_l: torch.Tensor
    weights: torch.Tensor

    def metrics(self) -> dict[str, float]:
        """Batch means: ``loss``, ``implicit_acc`` (share of pairs with inside > 0),
        ``rewards/chosen|rejected|margins``, ``model_err/w|l``, ``ref_err/w|l``, ``weight``."""
        return {
            "loss": float(self.loss.detach()),
            "implicit_acc": float((self.inside > 0).float().mean()),
            "rewards/chosen": float(self.rewards_w.mean()),
            "rewards/rejected": float(self.rewards_l.mean()),
            "rewards/margins": float(self.inside.mean()),
            "model_err/w": float(self.model_err_w.mean()),
            "model_err/l": float(self.model_err_l.mean()),
            "ref_err/w": float(self.ref_err_w.mean()),
            "ref_err/l": float(self.ref_err_l.mean()),
            "weight": float(self.weights.mean()),
        }


def per_image_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error of each image over all its elements, float32, shape ``(n,)``."""
    errors = F.mse_loss(pred.float(), target.float(), reduction="none")
    return errors.mean(dim=tuple(range(1, errors.dim())))


def diffusion_dpo_loss(
    model_pred_w: torch.Tensor,
    model_pred_l: torch.Tensor,
    ref_pred_w: torch.Tensor,
    ref_pred_l: torch.Tensor,
    target_w: torch.Tensor,
    target_l: torch.Tensor,
    *,
    beta_dpo: float,
    weights: torch.Tensor | None = None,
) -> DiffusionDPOLoss:
    """The Diffusion-DPO loss (module docstring) of ``n`` pairs.

    Args:
        model_pred_w, model_pred_l: the trained model's predictions for the noised
            preferred / dispreferred images, ``(n, ...)``; gradients flow through them.
        ref_pred_w, ref_pred_l: the reference's predictions (treated as constants).
        target_w, target_l: the regression targets (the shared noise for epsilon models).
        beta_dpo: the KL-regularisation strength (> 0).
        weights: per-pair weights ``(n,)``; None means 1 for every pair.

    Returns:
        The loss and its parts; the loss is the mean over pairs of ``w_i * loss_pair_i``.
    """
    if beta_dpo <= 0:
        raise FeedbackError(f"beta_dpo must be > 0, got {beta_dpo}; set a positive beta_dpo")
    model_err_w = per_image_mse(model_pred_w, target_w)
    model_err_l = per_image_mse(model_pred_l, target_l)
    with torch.no_grad():
        ref_err_w = per_image_mse(ref_pred_w, target_w)
        ref_err_l = per_image_mse(ref_pred_l, target_l)
    scale = -0.5 * beta_dpo
    inside = scale * ((model_err_w - model_err_l) - (ref_err_w - ref_err_l))
    if weights is None:
        weights = torch.ones_like(inside)
    weights = weights.to(device=inside.device, dtype=inside.dtype)
    losses = -F.logsigmoid(inside) * weights
    rewards_w = (scale * (model_err_w - ref_err_w)).detach()
    rewards_l = (scale * (model_err_l - ref_err_l)).detach()
    return DiffusionDPOLoss(
        loss=losses.mean(),
        losses=losses,
        inside=inside.detach(),
        model_err_w=model_err_w.detach(),
        model_err_l=model_err_l.detach(),
        ref_err_w=ref_err_w,
        ref_err_l=ref_err_l,
        rewards_w=rewards_w,
        rewards_l=rewards_l,
        weights=weights.detach(),
    )


# 2. pairs and results -----------------------------------------------------------------------


@dataclass(frozen=True)
class ImagePair:
    """One preference pair of generated images of the same class.

    Attributes:
        label: the class index both images were generated for.
        prompt: the prompt they were generated from (the conditioning of a text-to-image
            model; the built-in model conditions on ``label`` only).
        chosen, rejected: the preferred (higher-utility) and dispreferred images.
        weight: the pair's loss weight (tanh of the utility gap, or 1).
        chosen_id, rejected_id: the pool ids of the two samples.
    """

    label: int
    prompt: str
    chosen: Image.Image
    rejected: Image.Image
    weight: float = 1.0
    chosen_id: str = ""
    rejected_id: str = ""


@dataclass(frozen=True)
class DiffusionDPOResult:
    """What a Diffusion-DPO run did.

    Attributes:
        method: ``lora`` or ``full``.
        steps: optimiser steps taken.
        n_pairs: training pairs.
        generator_name: the generator's provenance name after training.
        path: the saved generator directory (built-in) or LoRA file (diffusers).
        history: the logged records (one per ``log_every`` steps and the last step).
        seconds: wall time of the training loop.
        lora_sha256: the saved LoRA file's SHA-256 (diffusers), else "".
    """

    method: str
    steps: int
    n_pairs: int
    generator_name: str
    path: Path
    history: tuple[dict[str, float], ...] = field(default_factory=tuple)
    seconds: float = 0.0
    lora_sha256: str = ""

    @property
    def final(self) -> dict[str, float]:
        """The last logged record ({} when nothing was logged)."""
        return dict(self.history[-1]) if self.history else {}


def check_pairs(pairs: Sequence[ImagePair], num_classes: int | None) -> None:
    """Raise a one-line :class:`FeedbackError` for input Diffusion-DPO cannot train on."""
    if not pairs:
        raise FeedbackError(
            "Diffusion-DPO got no preference pairs; generate at least two samples of a class "
            "(or lower feedback.pairs.min_gap)"
        )
    for i, pair in enumerate(pairs):
        ids = f"pair {i} ({pair.chosen_id or '?'} vs {pair.rejected_id or '?'})"
        if pair.chosen.size != pair.rejected.size:
            raise FeedbackError(
                f"{ids}: the chosen image is {pair.chosen.size[0]}x{pair.chosen.size[1]} and "
                f"the rejected one {pair.rejected.size[0]}x{pair.rejected.size[1]}; both "
                "images of a pair must have the same size"
            )
        if pair.label < 0 or (num_classes is not None and pair.label >= num_classes):
            known = f"0..{num_classes - 1}" if num_classes is not None else ">= 0"
            raise FeedbackError(
                f"{ids}: label {pair.label} is out of range for this generator ({known}); "
                "pair samples of the generator's own classes"
            )
        if not (math.isfinite(pair.weight) and pair.weight >= 0):
            raise FeedbackError(f"{ids}: weight {pair.weight} must be finite and >= 0")


# 3. the training loop -----------------------------------------------------------------------


@dataclass
class _Denoiser:
    """What the loop needs of a model: a trained forward, a frozen reference forward, the
    parameters to train and the conditioning of a batch.

    ``forward(noisy, timesteps, cond)`` and ``reference(...)`` predict the scheduler's
    target; ``clean(idx)`` gives the model-space preferred and dispreferred images of
    pairs ``idx``, ``cond(idx)`` their conditioning and ``null(n)`` n rows of the
    unconditional one, all on the training device.
    """

    forward: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    reference: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    params: list[nn.Parameter]
    clean: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    cond: Callable[[torch.Tensor], torch.Tensor]
    null: Callable[[int], torch.Tensor]
    no_sync: Callable[[], contextlib.AbstractContextManager[Any]]


def _check_settings(cfg: DiffusionDPOConfig, device: torch.device) -> None:
    if cfg.mixed_precision != "no" and device.type != "cuda":
        raise FeedbackError(
            f"feedback.diffusion_dpo.mixed_precision={cfg.mixed_precision} needs a CUDA GPU, "
            f"but training runs on {device.type}; set mixed_precision=no"
        )


def _accelerator() -> Any:
    """An ``accelerate.Accelerator`` for device placement and DDP; mixed precision and
    accumulation are done here (autocast, no_sync) so that its process-wide state is never
    re-initialised with other settings by another trainer in the same process."""
    from accelerate import Accelerator

    return Accelerator()


def compute_dtype(
    cfg: DiffusionDPOConfig, weights_dtype: torch.dtype = torch.float32
) -> torch.dtype | None:
    """The autocast dtype of the forward passes: ``cfg.mixed_precision``, else the model's
    own half-precision dtype (a float16 pipeline trains its float32 LoRA under autocast, as
    ``generate.lora`` does), else None (plain float32)."""
    if cfg.mixed_precision == "fp16":
        return torch.float16
    if cfg.mixed_precision == "bf16":
        return torch.bfloat16
    return None if weights_dtype == torch.float32 else weights_dtype


def _autocast(
    dtype: torch.dtype | None, device: torch.device
) -> contextlib.AbstractContextManager[Any]:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _targets(
    scheduler: Any, clean: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(clean, noise, timesteps)
    raise FeedbackError(
        f"Diffusion-DPO supports epsilon and v_prediction models, not prediction_type="
        f"{prediction_type!r}"
    )


def _pair_batches(n: int, size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless batches of pair indices: shuffled epochs, wrapping into the next epoch."""
    queue = torch.empty(0, dtype=torch.long)
    while True:
        while len(queue) < size:
            queue = torch.cat([queue, torch.randperm(n, generator=generator)])
        yield queue[:size]
        queue = queue[size:]


class _Logger:
    """``log.jsonl`` (one JSON object per record, flushed) and TensorBoard scalars."""

    def __init__(self, out_dir: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.history: list[dict[str, float]] = []
        self._file: Any = None
        self._writer: Any = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            # A fresh training run owns these: drop the events of an interrupted attempt
            # (a run killed before result.json trains again on resume), as log.jsonl's "w".
            shutil.rmtree(out_dir / "tensorboard", ignore_errors=True)
            self._file = (out_dir / LOG_FILE).open("w", encoding="utf-8")
            self._writer = SummaryWriter(log_dir=str(out_dir / "tensorboard"))

    def record(self, step: int, metrics: dict[str, float]) -> None:
        entry = {"step": float(step), **metrics}
        self.history.append(entry)
        if not self.enabled:
            return
        self._file.write(json.dumps(entry) + "\n")
        self._file.flush()
        for key, value in metrics.items():
            self._writer.add_scalar(f"diffusion_dpo/{key}", value, step)

    def close(self) -> None:
        if self.enabled:
            self._file.close()
            self._writer.close()


def _mean_metrics(records: list[dict[str, float]], accelerator: Any) -> dict[str, float]:
    """Means over an optimiser step's batches and, under DDP, over the processes (a
    collective: every process calls it at the same steps)."""
    keys = list(records[0])
    means = torch.tensor([np.mean([r[k] for r in records]) for k in keys], dtype=torch.float32)
    if accelerator.num_processes > 1:
        means = accelerator.reduce(means.to(accelerator.device), reduction="mean").cpu()
    return dict(zip(keys, (float(v) for v in means), strict=True))


def _run_dpo(
    denoiser: _Denoiser,
    scheduler: Any,
    weights: torch.Tensor,
    cfg: DiffusionDPOConfig,
    *,
    accelerator: Any,
    out_dir: Path,
    seed: int,
    description: str,
    dtype: torch.dtype | None,
) -> tuple[list[dict[str, float]], float]:
    """The Diffusion-DPO optimisation: ``cfg.steps`` AdamW steps, each over
    ``cfg.gradient_accumulation_steps`` batches of ``cfg.batch_size`` pairs (shared among
    the processes), forward passes autocast to ``dtype`` when set. Returns the logged
    records and the loop's wall time (s)."""
    device = accelerator.device
    rank, world = accelerator.process_index, accelerator.num_processes
    generator = torch.Generator().manual_seed(seed)
    # Every process draws the same global batch and keeps its share: one stream of
    # batches whatever the number of processes.
    batches = _pair_batches(len(weights), cfg.batch_size * world, generator)
    t_max = int(scheduler.config.num_train_timesteps)
    optimiser = torch.optim.AdamW(denoiser.params, lr=cfg.learning_rate, weight_decay=WEIGHT_DECAY)
    # fp16 activations can underflow the LoRA gradients: scale the loss (bf16 needs none).
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16 and device.type == "cuda")
    accumulate = cfg.gradient_accumulation_steps
    logger = _Logger(out_dir, enabled=accelerator.is_main_process)
    started = time.perf_counter()
    try:
        with progress_bar(description, cfg.steps) as advance:
            for step in range(1, cfg.steps + 1):
                micro: list[dict[str, float]] = []
                for k in range(accumulate):
                    global_idx = next(batches)
                    idx = global_idx[rank * cfg.batch_size : (rank + 1) * cfg.batch_size]
                    clean_w, clean_l = denoiser.clean(idx)
                    n = len(idx)
                    # One noise and one timestep per pair, shared by its two images.
                    noise = torch.randn(clean_w.shape, generator=generator).to(device)
                    timesteps = torch.randint(0, t_max, (n,), generator=generator).to(device)
                    clean = torch.cat([clean_w, clean_l])
                    noise2, t2 = noise.repeat(2, *[1] * (noise.dim() - 1)), timesteps.repeat(2)
                    noisy = scheduler.add_noise(clean, noise2, t2)
                    target_w, target_l = _targets(scheduler, clean, noise2, t2).chunk(2)
                    cond = denoiser.cond(idx)
                    if cfg.cond_dropout > 0:
                        # Drawn for the global batch, like the pairs, so that the stream
                        # is the same whatever the number of processes; no draw at 0.
                        drop = torch.rand(len(global_idx), generator=generator)
                        local = drop[rank * cfg.batch_size : (rank + 1) * cfg.batch_size]
                        mask = (local < cfg.cond_dropout).to(device)
                        mask = mask.view(-1, *[1] * (cond.dim() - 1))
                        cond = torch.where(mask, denoiser.null(n), cond)
                    cond = cond.repeat(2, *[1] * (cond.dim() - 1))
                    sync = k == accumulate - 1
                    with contextlib.nullcontext() if sync else denoiser.no_sync():
                        with _autocast(dtype, device):
                            pred_w, pred_l = denoiser.forward(noisy, t2, cond).chunk(2)
                            with torch.no_grad():
                                ref_w, ref_l = denoiser.reference(noisy, t2, cond).chunk(2)
                        out = diffusion_dpo_loss(
                            pred_w,
                            pred_l,
                            ref_w,
                            ref_l,
                            target_w,
                            target_l,
                            beta_dpo=cfg.beta_dpo,
                            weights=weights[idx].to(device),
                        )
                        accelerator.backward(scaler.scale(out.loss / accumulate))
                    micro.append(out.metrics())
                scaler.unscale_(optimiser)
                grad_norm = torch.nn.utils.clip_grad_norm_(denoiser.params, cfg.max_grad_norm)
                scaler.step(optimiser)
                scaler.update()
                optimiser.zero_grad(set_to_none=True)
                if step % cfg.log_every == 0 or step == cfg.steps:
                    metrics = _mean_metrics(micro, accelerator)
                    metrics["grad_norm"] = float(grad_norm)
                    metrics["lr"] = cfg.learning_rate
                    logger.record(step, metrics)
                    log.debug("diffusion-dpo step %d: %s", step, metrics)
                advance(1)
    finally:
        logger.close()
    seconds = time.perf_counter() - started
    if logger.history:
        last = logger.history[-1]
        log.info(
            "%s: %d steps, loss %.4f, implicit accuracy %.2f, margin %.4f, %.1f s",
            description,
            cfg.steps,
            last["loss"],
            last["implicit_acc"],
            last["rewards/margins"],
            seconds,
        )
    return logger.history, seconds


def _write_result(out_dir: Path, result: DiffusionDPOResult, extra: dict[str, Any]) -> None:
    fault_point("feedback.trained")
    write_json_atomic(
        out_dir / RESULT_FILE,
        {
            "method": result.method,
            "steps": result.steps,
            "n_pairs": result.n_pairs,
            "generator": result.generator_name,
            "seconds": round(result.seconds, 3),
            "final": result.final,
            **extra,
        },
    )


def _seeded_init(seed: int) -> contextlib.AbstractContextManager[Any]:
    """peft draws initial LoRA weights from torch's global generator: seed it for the
    block and restore it afterwards."""

    @contextlib.contextmanager
    def fork() -> Iterator[None]:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield

    return fork()


# 4. the built-in generator ------------------------------------------------------------------


def train_builtin_diffusion_dpo(
    generator: Any,
    pairs: Sequence[ImagePair],
    cfg: DiffusionDPOConfig,
    *,
    out_dir: Path,
    seed: int,
) -> DiffusionDPOResult:
    """Diffusion-DPO of a ``BuiltinDiffusionGenerator``'s denoiser on ``pairs``, in place.

    With ``cfg.method == "lora"`` peft LoRA adapters (rank = alpha = ``cfg.lora_rank``) on
    the UNet's convolutions and projections are trained against the adapter-disabled UNet
    and merged afterwards; the class-embedding table stays frozen (it is shared with the
    reference). With ``full`` every weight, the table included, is trained against a frozen
    copy. Images are conditioned on their label's class embedding.

    Afterwards the generator's weights, and so its ``name`` (weights fingerprint), have
    changed; the whole generator is saved to ``out_dir/generator`` and ``result.json`` is
    written last.

    Raises:
        FeedbackError: no pairs, a pair of differently sized images, a label out of range,
            or mixed precision without CUDA; nothing is written then.
    """
    from diffusers import DDPMScheduler
    from diffusers.models.unets.unet_2d import UNet2DModel

    from utilgen.generate.builtin.generator import weights_fingerprint
    from utilgen.generate.builtin.pixels import to_model_space
    from utilgen.generate.builtin.training import LORA_TARGETS

    # 1. check inputs (before anything is written)
    check_pairs(pairs, len(generator.class_names))
    accelerator = _accelerator()
    _check_settings(cfg, accelerator.device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    home = generator.device
    model = generator.model
    fmt = generator.image_format

    # 2. data: model-space images and labels, kept on the CPU; batches move to the device
    chosen = to_model_space([np.asarray(p.chosen) for p in pairs], fmt)
    rejected = to_model_space([np.asarray(p.rejected) for p in pairs], fmt)
    labels = torch.tensor([p.label for p in pairs], dtype=torch.long)
    weights = torch.tensor([p.weight for p in pairs], dtype=torch.float32)
    scheduler = DDPMScheduler.from_config(generator.scheduler.config)

    # 3. the trained model and its reference
    model.requires_grad_(False)
    peft_unet: Any = None
    frozen: nn.Module | None = None
    if cfg.method == "lora":
        from peft import LoraConfig, get_peft_model

        present = {name.rsplit(".", 1)[-1] for name, _ in model.unet.named_modules()}
        targets = [t for t in LORA_TARGETS if t.rsplit(".", 1)[-1] in present]
        lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_rank, target_modules=targets)
        # get_peft_model injects the LoRA layers into model.unet's own modules, so calling
        # model runs them; peft_unet is the handle that switches them off and merges them.
        with _seeded_init(seed):
            peft_unet = get_peft_model(model.unet, lora)
        params = [p for p in model.parameters() if p.requires_grad]
    else:
        frozen = copy.deepcopy(model).eval().requires_grad_(False)
        model.requires_grad_(True)
        params = list(model.parameters())
    model.train()
    prepared = accelerator.prepare(model)
    device = accelerator.device
    if frozen is not None:
        frozen.to(device)

    def reference(noisy: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
        if frozen is not None:
            return frozen(noisy, t, embeds)
        with peft_unet.disable_adapter():
            return model(noisy, t, embeds)

    def cond(idx: torch.Tensor) -> torch.Tensor:
        # The table is frozen under LoRA and trained under full: look up through the model.
        return model.embed(labels[idx].to(device))

    denoiser = _Denoiser(
        forward=lambda x, t, c: prepared(x, t, c),
        reference=reference,
        params=params,
        clean=lambda idx: (chosen[idx].to(device), rejected[idx].to(device)),
        cond=cond,
        null=lambda n: model.embed(torch.full((n,), model.null_label, device=device)),
        no_sync=lambda: accelerator.no_sync(prepared),
    )

    # 4. train
    try:
        history, seconds = _run_dpo(
            denoiser,
            scheduler,
            weights,
            cfg,
            accelerator=accelerator,
            out_dir=out_dir,
            seed=seed,
            description="Diffusion-DPO (built-in)",
            dtype=compute_dtype(cfg),
        )
    finally:
        # 5. merge the adapter: the UNet is a plain UNet2DModel again, on the generator's
        # device, in eval mode, whatever happened
        if peft_unet is not None:
            merged = peft_unet.merge_and_unload()
            assert isinstance(merged, UNet2DModel)
            model.unet = merged
        model.requires_grad_(True)
        model.to(home).eval()
        accelerator.free_memory()

    # 6. the new provenance name and the saved generator
    generator.name = f"builtin-diffusion:{weights_fingerprint(model)}"
    record = {
        "method": cfg.method,
        "steps": cfg.steps,
        "n_pairs": len(pairs),
        "beta_dpo": cfg.beta_dpo,
        "seed": seed,
    }
    generator.training = {
        **generator.training,
        "diffusion_dpo": [*generator.training.get("diffusion_dpo", []), record],
    }
    result = DiffusionDPOResult(
        method=cfg.method,
        steps=cfg.steps,
        n_pairs=len(pairs),
        generator_name=generator.name,
        path=out_dir / "generator",
        history=tuple(history),
        seconds=seconds,
    )
    if accelerator.is_main_process:
        generator.save_pretrained(result.path)
        _write_result(out_dir, result, {"kind": "builtin-diffusion", "generator_dir": "generator"})
    accelerator.wait_for_everyone()
    return result


# 5. diffusers (Stable Diffusion) ------------------------------------------------------------


def train_diffusers_dpo(
    generator: Any,
    pairs: Sequence[ImagePair],
    cfg: DiffusionDPOConfig,
    *,
    out_dir: Path,
    seed: int,
) -> DiffusionDPOResult:
    """Diffusion-DPO of a ``DiffusersGenerator``'s U-Net (Stable Diffusion 1.x/2.x) on
    ``pairs``, as a peft LoRA adapter (rank = alpha = ``cfg.lora_rank``, Gaussian init, on
    the attention projections ``to_q/to_k/to_v/to_out.0``, as the reference script).

    Images are VAE-encoded once (posterior mean, times the VAE's scaling factor) and each
    pair is conditioned on its prompt's text-encoder embedding. The reference is the U-Net
    with the adapter switched off. The adapter is saved in diffusers' LoRA format to
    ``out_dir/lora/pytorch_lora_weights.safetensors`` and loaded into the generator, whose
    ``name`` then carries the file's hash; ``result.json`` (with ``lora_file``) comes last.

    Raises:
        FeedbackError: no pairs, differently sized images in a pair, a negative label,
            ``method=full`` (a full SD U-Net is not saved as a loadable adapter), a LoRA
            already loaded in the generator, or mixed precision without CUDA; nothing is
            written then.
    """
    from diffusers import DDPMScheduler

    from utilgen.config.diffusion import DiffusersLoraConfig
    from utilgen.generate.lora import add_lora, image_tensor, require_sd, save_lora

    # 1. check inputs (before anything is written)
    check_pairs(pairs, None)
    if cfg.method != "lora":
        raise FeedbackError(
            "Diffusion-DPO of a diffusers pipeline trains a LoRA adapter; set "
            "feedback.diffusion_dpo.method=lora (full fine-tuning is for the built-in generator)"
        )
    if generator.lora_sha256 is not None:
        raise FeedbackError(
            "the diffusers generator already has a LoRA adapter loaded, and Diffusion-DPO "
            "trains its own against the plain U-Net; unset generator.diffusers.lora.path/train "
            "or fold that adapter into the model first"
        )
    pipeline = generator.pipeline
    require_sd(pipeline)
    accelerator = _accelerator()
    _check_settings(cfg, accelerator.device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    unet, vae = pipeline.unet, pipeline.vae
    home, dtype = unet.device, unet.dtype

    # 2. frozen parts: latents and prompt embeddings are computed once, on the CPU side
    vae.requires_grad_(False)
    pipeline.text_encoder.requires_grad_(False)
    size = generator.image_size
    with torch.no_grad():
        latents = []
        for images in (
            [np.asarray(p.chosen.convert("RGB")) for p in pairs],
            [np.asarray(p.rejected.convert("RGB")) for p in pairs],
        ):
            pixels = image_tensor(images, size).to(device=vae.device, dtype=vae.dtype)
            encoded = [
                vae.encode(pixels[i : i + cfg.batch_size]).latent_dist.mean
                for i in range(0, len(pixels), cfg.batch_size)
            ]
            latents.append((torch.cat(encoded) * vae.config.scaling_factor).float().cpu())
        prompts = sorted({p.prompt for p in pairs})
        embeds, _ = pipeline.encode_prompt(prompts, vae.device, 1, False)
        # The empty prompt's embedding: the unconditional input of classifier-free guidance.
        empty, _ = pipeline.encode_prompt([""], vae.device, 1, False)
    chosen, rejected = latents
    prompt_index = torch.tensor([prompts.index(p.prompt) for p in pairs])
    embeds = embeds.float().cpu()
    empty = empty.float().cpu()
    weights = torch.tensor([p.weight for p in pairs], dtype=torch.float32)
    scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)

    # 3. the adapter (the reference is the U-Net with it switched off)
    settings = DiffusersLoraConfig(rank=cfg.lora_rank, alpha=cfg.lora_rank)
    params = add_lora(unet, settings, seed=seed, adapter_name=DPO_ADAPTER)
    unet.train()
    prepared = accelerator.prepare(unet)
    device = accelerator.device

    def forward(noisy: torch.Tensor, t: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        return prepared(noisy.to(dtype), t, states.to(dtype), return_dict=False)[0]

    def reference(noisy: torch.Tensor, t: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        unet.disable_adapters()
        try:
            return unet(noisy.to(dtype), t, states.to(dtype), return_dict=False)[0]
        finally:
            unet.enable_adapters()

    denoiser = _Denoiser(
        forward=forward,
        reference=reference,
        params=params,
        clean=lambda idx: (chosen[idx].to(device), rejected[idx].to(device)),
        cond=lambda idx: embeds[prompt_index[idx]].to(device),
        null=lambda n: empty.expand(n, *empty.shape[1:]).to(device),
        no_sync=lambda: accelerator.no_sync(prepared),
    )

    # 4. train
    try:
        history, seconds = _run_dpo(
            denoiser,
            scheduler,
            weights,
            cfg,
            accelerator=accelerator,
            out_dir=out_dir,
            seed=seed,
            description="Diffusion-DPO (diffusers)",
            dtype=compute_dtype(cfg, dtype),
        )
        # 5. save the adapter and load the saved file, so that generation uses exactly the
        # file whose hash the samples record
        lora_dir = out_dir / "lora"
        if accelerator.is_main_process:
            save_lora(pipeline, lora_dir, adapter_name=DPO_ADAPTER)
        accelerator.wait_for_everyone()
    finally:
        unet.eval()
        unet.to(home)
        unet.delete_adapters(DPO_ADAPTER)
        unet.requires_grad_(False)
        accelerator.free_memory()
    sha = generator.load_lora(lora_dir)
    result = DiffusionDPOResult(
        method="lora",
        steps=cfg.steps,
        n_pairs=len(pairs),
        generator_name=generator.name,
        path=lora_dir / "pytorch_lora_weights.safetensors",
        history=tuple(history),
        seconds=seconds,
        lora_sha256=sha,
    )
    if accelerator.is_main_process:
        _write_result(
            out_dir,
            result,
            {
                "kind": "diffusers",
                "lora_file": "lora/pytorch_lora_weights.safetensors",
                "lora_sha256": sha,
            },
        )
    accelerator.wait_for_everyone()
    return result
