"""``task``: the downstream classifier and how it is trained."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from utilgen.config.names import check_registered
from utilgen.config.section import Section
from utilgen.registry import TASK_MODELS


class TaskConfig(Section):
    """The downstream classifier and how it is trained."""

    model: str = Field(
        "auto",
        description="auto (small-cnn for images, minilm for text), small-cnn, efficientnet-lite0, "
        "hf-image (transformers image classifier), minilm (MiniLM embeddings + head), "
        "hf-text (transformers sequence classifier), or a model registered in "
        "utilgen.registry.TASK_MODELS.",
    )
    model_path: str | None = Field(
        None, description="Hub id or local path for hf-image / hf-text (must be on disk offline)."
    )
    head: Literal["linear", "mlp"] = Field("linear", description="Head on frozen embeddings.")
    freeze_backbone: bool = Field(
        True, description="Train only the head of pretrained backbones (efficientnet, hf-*)."
    )
    image_size: int = Field(
        0, ge=0, description="Resize images to this side in pixels (0: the model's default)."
    )
    epochs: int = Field(30, ge=1, description="Training epochs; a checkpoint is saved after each.")
    batch_size: int = Field(64, ge=1, description="Mini-batch size.")
    lr: float = Field(1e-3, gt=0.0, description="Learning rate (AdamW).")
    weight_decay: float = Field(1e-4, ge=0.0, description="AdamW weight decay.")
    max_length: int = Field(256, ge=8, description="Token limit for text models.")
    trust_remote_code: bool = Field(
        False, description="Allow model code from the model's repository. Off: it runs code."
    )

    @field_validator("model")
    @classmethod
    def _registered(cls, value: str) -> str:
        return check_registered(TASK_MODELS, value, also=("auto",))
