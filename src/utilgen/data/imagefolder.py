"""The ImageFolder layout: ``DIR/<class>/<image file>``, one subfolder per class.

Classes are the subfolder names in sorted order and files are read in sorted order, so the
same folder always yields the same dataset. Hidden entries (``.DS_Store``,
``.ipynb_checkpoints``) are tool artefacts and are skipped; other non-image files are
skipped with a log message.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from utilgen.data.assemble import assemble
from utilgen.data.images import IMAGE_SUFFIXES, decode_image, is_image_file
from utilgen.data.labelled import LabelledData
from utilgen.data.validate import check_class_name, require_dir
from utilgen.errors import DataError

log = logging.getLogger(__name__)

_LAYOUT = "DIR/<class>/<image>"


def _visible(folder: Path) -> list[Path]:
    """The entries of ``folder`` that do not start with a dot, sorted by name."""
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _class_images(class_dir: Path) -> list[Path]:
    """The image files of one class folder, sorted; raises if there are none."""
    entries = _visible(class_dir)
    images = [p for p in entries if p.is_file() and is_image_file(p)]
    if not images:
        nested = [p.name for p in entries if p.is_dir()]
        hint = (
            f"; it holds folders ({', '.join(nested[:3])}), so the classes may be one level "
            f"down: point data.path at {class_dir}"
            if nested
            else ""
        )
        raise DataError(
            f"class folder {class_dir} has no image files "
            f"({', '.join(sorted(IMAGE_SUFFIXES))}){hint}; add images or remove the folder"
        )
    skipped = len(entries) - len(images)
    if skipped:
        log.info("%s: skipped %d entries that are not image files", class_dir, skipped)
    return images


def load_image_folder(path: str | Path, name: str | None = None) -> LabelledData:
    """Load ``DIR/<class>/<image>`` as uint8 (H, W, C) images with ids ``<name>/<class>/<file>``.

    Args:
        path: the folder holding one subfolder per class.
        name: the dataset's name; defaults to the folder's name.
    """
    root = require_dir(path, "imagefolder", _LAYOUT)
    name = name or root.resolve().name or "images"
    origin = f"image folder {root}"
    entries = _visible(root)
    class_dirs = [p for p in entries if p.is_dir()]
    if not class_dirs:
        loose = sum(1 for p in entries if p.is_file() and is_image_file(p))
        found = f" ({loose} images lie directly in it)" if loose else ""
        raise DataError(
            f"{origin} has no class subfolders{found}; arrange the images as {root}/<class>/<image>"
        )
    loose_files = [p.name for p in entries if p.is_file()]
    if loose_files:
        log.warning(
            "%s: files outside class folders are ignored: %s", origin, ", ".join(loose_files[:5])
        )

    items: list[np.ndarray] = []
    labels: list[int] = []
    keys: list[str] = []
    for label, class_dir in enumerate(class_dirs):
        # Checked before decoding anything, so a bad folder name fails fast.
        check_class_name(class_dir.name, origin)
        for file in _class_images(class_dir):
            items.append(decode_image(file, f"image file {file}"))
            labels.append(label)
            keys.append(file.name)
    class_names = [p.name for p in class_dirs]
    return assemble(name, "image", items, np.array(labels), class_names, keys, origin)
