"""The class-conditional denoiser: a diffusers ``UNet2DModel`` plus a class-embedding table.

The UNet is built with ``class_embed_type="identity"``: whatever vector is passed as
``class_labels`` is added to the timestep embedding. The lookup table lives next to it, as
our own ``nn.Embedding`` with ``num_classes + 1`` rows, the last row being the null class of
classifier-free guidance. A row of that table plays the part of a text-to-image model's
prompt embedding: a request's ``prompt_embeds`` replaces the lookup, so UtilGen's
instance-level optimisation can do gradient ascent on it through the public diffusers API.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.models.unets.unet_2d import UNet2DModel
from torch import nn

from utilgen.config import BuiltinDiffusionConfig


@dataclass(frozen=True)
class ImageFormat:
    """The images a built-in generator is trained on and generates.

    Attributes:
        height, width: the output images' size in pixels (the training images').
        channels: 1 (grey) or 3 (RGB).
        size: side of the square images the UNet works on (pixels).
    """

    height: int
    width: int
    channels: int
    size: int

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """(channels, size, size): the shape of one initial-noise tensor."""
        return (self.channels, self.size, self.size)


def working_size(height: int, width: int, levels: int, image_size: int = 0) -> int:
    """The UNet's square side: ``image_size`` if set, else max(height, width) rounded up to a
    multiple of 2^(levels - 1), since each level but the last halves the resolution."""
    if image_size:
        return image_size
    multiple = 2 ** (levels - 1)
    side = max(height, width)
    return -(-side // multiple) * multiple


def build_unet(cfg: BuiltinDiffusionConfig, channels: int, size: int) -> UNet2DModel:
    """A fresh pixel-space ``UNet2DModel`` whose class conditioning is an added vector.

    Down blocks halve the resolution except the last; with ``cfg.attention`` the
    lowest-resolution down and up blocks carry self-attention.
    """
    levels = len(cfg.block_out_channels)
    down = ["DownBlock2D"] * levels
    up = ["UpBlock2D"] * levels
    if cfg.attention:
        down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
    return UNet2DModel(
        sample_size=size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        norm_num_groups=cfg.norm_num_groups,
        attention_head_dim=8,
        add_attention=cfg.attention,
        class_embed_type="identity",
    )


def embedding_dim(unet: UNet2DModel) -> int:
    """Width of the UNet's timestep embedding, which a class embedding is added to."""
    return int(unet.time_embedding.linear_2.out_features)


class ClassConditionalUNet(nn.Module):
    """Noise prediction eps(x_t, t, class embedding).

    Attributes:
        unet: the diffusers ``UNet2DModel`` (``class_embed_type="identity"``).
        class_embeddings: ``num_classes + 1`` rows of width :attr:`embedding_dim`; row
            ``num_classes`` is the null class (unconditional).
    """

    def __init__(self, unet: UNet2DModel, num_classes: int) -> None:
        super().__init__()
        self.unet = unet
        self.num_classes = num_classes
        self.class_embeddings = nn.Embedding(num_classes + 1, embedding_dim(unet))
        # Small rows, like the UNet's own time-embedding scale at initialisation.
        nn.init.normal_(self.class_embeddings.weight, std=0.02)

    @property
    def null_label(self) -> int:
        """Index of the null (unconditional) class."""
        return self.num_classes

    @property
    def embedding_dim(self) -> int:
        return int(self.class_embeddings.embedding_dim)

    def embed(self, labels: torch.Tensor) -> torch.Tensor:
        """Class embeddings of ``labels`` (long, (n,)), shape (n, embedding_dim)."""
        return self.class_embeddings(labels)

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor | int, class_embeds: torch.Tensor
    ) -> torch.Tensor:
        """Predicted noise, same shape as ``sample`` (n, C, H, W); ``class_embeds`` is
        (n, embedding_dim): table rows or any vector in their place."""
        return self.unet(sample, timestep, class_labels=class_embeds).sample
