"""A tiny Stable Diffusion pipeline built from config (diffusers' ``get_dummy_components``).

A few-thousand-parameter UNet2DConditionModel, AutoencoderKL and CLIP text encoder under a
fixed seed, with the committed tokenizer in ``fixtures/tiny-clip-tokenizer``: the real
``StableDiffusionPipeline`` code runs on CPU in milliseconds. Images are 32x32 (latents
16x16, VAE scale factor 2).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from utilgen.data.labelled import LabelledData

TOKENIZER_DIR = Path(__file__).parent / "fixtures" / "tiny-clip-tokenizer"
IMAGE_SIZE = 32


def tiny_tokenizer() -> CLIPTokenizer:
    """The committed tiny CLIP tokenizer (380 tokens)."""
    return CLIPTokenizer.from_pretrained(TOKENIZER_DIR)


def tiny_sd_components(seed: int = 0, *, width: int = 32) -> dict[str, object]:
    """UNet, VAE, text encoder, tokenizer and DDIM scheduler of a tiny SD 1.x pipeline.

    ``width`` is the UNet's widest block (the others are half of it); 32 keeps a denoising
    step near a millisecond on CPU.
    """
    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(width // 2, width),
        layers_per_block=1,
        sample_size=IMAGE_SIZE // 2,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=(2, 4),
        norm_num_groups=4,
    )
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        block_out_channels=(8, 16),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=4,
        sample_size=IMAGE_SIZE,
        # Scales this VAE's latents (std about 0.3) to unit variance, the role SD's 0.18215
        # plays for its own VAE; the noise schedule assumes unit-variance latents.
        scaling_factor=3.5,
    )
    # A near-zero posterior variance: an untrained VAE's log-variance is about 0 (std 1),
    # which would drown img2img's init image in sampling noise. With it, encoding is nearly
    # deterministic and img2img at low strength visibly keeps the init image.
    with torch.no_grad():
        logvar = vae.quant_conv.weight.shape[0] // 2
        vae.quant_conv.weight[logvar:] = 0.0
        vae.quant_conv.bias[logvar:] = -20.0
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            hidden_size=32,
            intermediate_size=37,
            layer_norm_eps=1e-5,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=len(tokenizer),
            max_position_embeddings=tokenizer.model_max_length,
        )
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "scheduler": scheduler,
        "safety_checker": None,
        "feature_extractor": None,
        "image_encoder": None,
    }


def tiny_sd_pipeline(seed: int = 0, **kwargs: int) -> StableDiffusionPipeline:
    """A tiny ``StableDiffusionPipeline`` on CPU, fp32, progress bar off."""
    pipe = StableDiffusionPipeline(
        **tiny_sd_components(seed, **kwargs), requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_sd(directory: Path, seed: int = 0) -> Path:
    """Write a tiny pipeline with ``save_pretrained`` (safetensors) and return its directory."""
    tiny_sd_pipeline(seed).save_pretrained(directory, safe_serialization=True)
    return directory


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread: on a busy two-core machine, two threads make these tiny
    convolutions tens of times slower (measured: 0.2 s vs 5 s per call)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def random_images(n: int, size: int = 24, seed: int = 0) -> tuple[np.ndarray, ...]:
    """``n`` uint8 RGB images with a bright square on noise: something for LoRA to fit."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        image = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
        x, y = rng.integers(0, size // 2, 2)
        image[y : y + size // 2, x : x + size // 2] = 230
        out.append(image)
    return tuple(out)


def real_data(class_names: tuple[str, ...] = ("cat", "dog"), per_class: int = 3) -> LabelledData:
    """A tiny labelled image set, ``per_class`` images per class, ids ``toy/<class>/<i>``."""
    labels = np.repeat(np.arange(len(class_names)), per_class)
    return LabelledData(
        modality="image",
        items=random_images(len(labels)),
        labels=labels,
        class_names=class_names,
        ids=tuple(f"toy/{class_names[y]}/{i}" for i, y in enumerate(labels)),
        name="toy",
    )


def save_tiny_sdxl(directory: Path, seed: int = 0) -> Path:
    """Write a tiny SDXL pipeline (two CLIP text encoders, micro-conditioned U-Net) built
    from config, and return its directory."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextModelWithProjection

    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=IMAGE_SIZE // 2,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        # pooled text embedding (32) + six micro-conditioning numbers x 8
        projection_class_embeddings_input_dim=80,
        cross_attention_dim=64,
        norm_num_groups=8,
    )
    vae = tiny_sd_components(seed)["vae"]
    text = CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=len(tokenizer),
        max_position_embeddings=tokenizer.model_max_length,
        projection_dim=32,
    )
    torch.manual_seed(seed)
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=CLIPTextModel(text),
        text_encoder_2=CLIPTextModelWithProjection(text),
        tokenizer=tokenizer,
        tokenizer_2=tiny_tokenizer(),
        unet=unet,
        scheduler=EulerDiscreteScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1
        ),
    )
    pipe.save_pretrained(directory, safe_serialization=True)
    return directory
