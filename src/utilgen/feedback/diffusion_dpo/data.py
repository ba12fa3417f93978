"""The input of Diffusion-DPO: preference pairs of generated images, and their checks."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from utilgen.feedback.errors import FeedbackError


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
