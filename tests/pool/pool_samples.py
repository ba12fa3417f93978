"""Deterministic samples for the pool tests, importable by the tests and by child processes
(``python tests/pool/pool_samples.py RUN ...``, see ``main``)."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import numpy as np

from utilgen.data.labelled import LabelledData
from utilgen.pool import PoolStore, Sample, encode_image, encode_text

CLASS_NAMES = ("cat", "dog", "owl")
BATCH_SIZE = 6
N_BATCHES = 12


def pixels(seed: int, channels: int = 3, size: int = 8) -> np.ndarray:
    """A random uint8 (size, size, channels) image fixed by ``seed``."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(size, size, channels), dtype=np.uint8)


def image_data(n: int = 9, channels: int = 3) -> LabelledData:
    """``n`` random images cycling through CLASS_NAMES, ids ``toy/<class>/<i>``."""
    labels = np.arange(n) % len(CLASS_NAMES)
    return LabelledData(
        modality="image",
        items=tuple(pixels(i, channels) for i in range(n)),
        labels=labels,
        class_names=CLASS_NAMES,
        ids=tuple(f"toy/{CLASS_NAMES[y]}/{i:03d}" for i, y in enumerate(labels)),
        name="toy",
    )


def text_data(n: int = 6) -> LabelledData:
    """``n`` short texts (some non-ASCII) cycling through CLASS_NAMES."""
    labels = np.arange(n) % len(CLASS_NAMES)
    texts = tuple(f"texte n°{i} about a {CLASS_NAMES[y]} — ünïcödé ✓" for i, y in enumerate(labels))
    return LabelledData(
        modality="text",
        items=texts,
        labels=labels,
        class_names=CLASS_NAMES,
        ids=tuple(f"toy/{CLASS_NAMES[y]}/{i:03d}" for i, y in enumerate(labels)),
        name="toy",
    )


def synthetic(batch: int, index: int, modality: str = "image") -> Sample:
    """Sample ``index`` of generated batch ``batch``, id ``syn/<batch>/<index>``."""
    label = index % len(CLASS_NAMES)
    seed = 1000 * batch + index
    payload = encode_image(pixels(seed)) if modality == "image" else encode_text(f"text {seed}")
    return Sample(
        id=f"syn/{batch:03d}/{index:02d}",
        modality="image" if modality == "image" else "text",
        label=label,
        class_name=CLASS_NAMES[label],
        payload=payload,
        source="synthetic",
        round=1 + batch // 4,
        generator="toy-diffusion+lora:abc123",
        prompt=f"a photo of a {CLASS_NAMES[label]}",
        negative_prompt="blurry",
        seed=seed,
        guidance=7.5,
        steps=20,
        strength=0.6 if index % 2 else None,
        parent_id=f"toy/{CLASS_NAMES[label]}/{index:03d}",
        perturbation="rephrase",
    )


def batch(b: int) -> list[Sample]:
    """Generated batch ``b``: BATCH_SIZE samples."""
    return [synthetic(b, i) for i in range(BATCH_SIZE)]


def _kill_on_replace(kind: str, at: int) -> None:
    """Test hook: SIGKILL this process at the ``at``-th atomic rename of ``kind``.

    ``manifest``: the temp file of a manifest commit (``manifest.parquet`` or a segment of
    ``manifest.d``) is fully written and fsynced but not yet renamed (every blob of that
    batch is already on disk). ``blob``: in the middle of writing a
    batch's blobs, before the manifest is touched.
    """
    real_replace = os.replace
    seen = 0

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        nonlocal seen
        target = Path(dst)
        is_manifest = target.name == "manifest.parquet" or target.parent.name == "manifest.d"
        if (kind == "manifest") == is_manifest:
            seen += 1
            if seen == at:
                os.kill(os.getpid(), signal.SIGKILL)
        real_replace(src, dst)

    os.replace = replace  # type: ignore[assignment]


def main(argv: list[str]) -> None:
    """``pool_samples.py RUN [KIND AT]``: append batches 0..N_BATCHES-1 to RUN, printing
    ``open`` once the store is open and ``batch <b>`` after each commit; with KIND (manifest
    or blob) and AT, die by SIGKILL at that rename."""
    run_dir = Path(argv[0])
    with PoolStore.open(run_dir, writable=True) as store:
        print("open", flush=True)
        if len(argv) == 3:
            _kill_on_replace(argv[1], int(argv[2]))
        for b in range(N_BATCHES):
            store.append(batch(b))
            print(f"batch {b}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
