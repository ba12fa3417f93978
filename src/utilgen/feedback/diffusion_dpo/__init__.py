"""Diffusion-DPO (Wallace et al. 2024): preference fine-tuning of a diffusion denoiser on
utility-ranked pairs of generated images (UtilGen's model-level feedback).

One loop, one adapter per model family:

* :mod:`.loss`: the loss of a batch of pairs (:func:`diffusion_dpo_loss`, the paper's
  Eq. 14 in the form of the authors' code) and its metrics;
* :mod:`.data`: the input, :class:`ImagePair`, and its checks;
* :mod:`.loop`: :func:`train_diffusion_dpo`, the one training loop (accelerate/DDP,
  gradient accumulation, mixed precision, logs, ``result.json``);
* :mod:`.adapter`: the :class:`DiffusionDPOAdapter` protocol a model family implements
  (what to train, how to predict for a batch of pairs, how to save and release it);
* :mod:`.builtin`: the built-in class-conditional UNet (LoRA merged afterwards, or every
  weight), :func:`train_builtin_diffusion_dpo`;
* :mod:`.stable_diffusion`: a diffusers Stable Diffusion 1.x/2.x pipeline (LoRA, saved in
  diffusers' format), :func:`train_diffusers_dpo`.

Several processes: ``accelerate launch --multi_gpu --num_processes N script.py`` on GPUs;
on CPUs ``ACCELERATE_USE_CPU=true torchrun --nproc_per_node N script.py`` (accelerate's
MULTI_CPU over gloo; ``accelerate launch --cpu`` starts one process only). Every process
draws the same global batch of ``N * batch_size`` pairs and trains on its own share.
"""

from utilgen.feedback.diffusion_dpo.adapter import Denoiser, DiffusionDPOAdapter, Saved
from utilgen.feedback.diffusion_dpo.builtin import BuiltinAdapter, train_builtin_diffusion_dpo
from utilgen.feedback.diffusion_dpo.data import ImagePair, check_pairs
from utilgen.feedback.diffusion_dpo.loop import (
    WEIGHT_DECAY,
    DiffusionDPOResult,
    compute_dtype,
    train_diffusion_dpo,
)
from utilgen.feedback.diffusion_dpo.loss import DiffusionDPOLoss, diffusion_dpo_loss, per_image_mse
from utilgen.feedback.diffusion_dpo.stable_diffusion import (
    DPO_ADAPTER,
    StableDiffusionAdapter,
    train_diffusers_dpo,
)

__all__ = [
    "DPO_ADAPTER",
    "WEIGHT_DECAY",
    "BuiltinAdapter",
    "Denoiser",
    "DiffusionDPOAdapter",
    "DiffusionDPOLoss",
    "DiffusionDPOResult",
    "ImagePair",
    "Saved",
    "StableDiffusionAdapter",
    "check_pairs",
    "compute_dtype",
    "diffusion_dpo_loss",
    "per_image_mse",
    "train_builtin_diffusion_dpo",
    "train_diffusers_dpo",
    "train_diffusion_dpo",
]
