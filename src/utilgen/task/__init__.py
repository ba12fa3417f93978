"""Downstream classifiers (images, texts), weighted training, checkpoints and metrics.

The loop and the valuators depend on :class:`TaskModel` only; :func:`build_task_model`
builds one from the ``task`` config section, :func:`train` fits it with per-sample weights
and a checkpoint per epoch, :func:`evaluate` scores it.
"""

from utilgen.task.base import Batch, PixelTaskModel, TaskModel
from utilgen.task.checkpoint import (
    checkpoint_name,
    list_checkpoints,
    load_checkpoint,
    read_sidecar,
)
from utilgen.task.efficientnet import EfficientNetModel
from utilgen.task.factory import build_task_model, resolve_model_kind
from utilgen.task.hf_image import HFImageModel
from utilgen.task.hf_text import HFTextModel
from utilgen.task.metrics import (
    compute_metrics,
    evaluate,
    expected_calibration_error,
    macro_f1,
    train_val_gap,
    worst_class_ratio,
)
from utilgen.task.small_cnn import SmallCNNModel
from utilgen.task.text_minilm import MiniLMModel
from utilgen.task.train import TrainResult, train
from utilgen.task.weighted_loss import weighted_cross_entropy

__all__ = [
    "Batch",
    "EfficientNetModel",
    "HFImageModel",
    "HFTextModel",
    "MiniLMModel",
    "PixelTaskModel",
    "SmallCNNModel",
    "TaskModel",
    "TrainResult",
    "build_task_model",
    "checkpoint_name",
    "compute_metrics",
    "evaluate",
    "expected_calibration_error",
    "list_checkpoints",
    "load_checkpoint",
    "macro_f1",
    "read_sidecar",
    "resolve_model_kind",
    "train",
    "train_val_gap",
    "weighted_cross_entropy",
    "worst_class_ratio",
]
