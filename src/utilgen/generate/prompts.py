"""Class prompts for text-to-image models (Real-Fake / GenDataAgent) and where captions come from.

GenDataAgent (shared/papers/002, §2.1, appendix E) prompts Stable Diffusion with
``"a photo of a {class}, which is {caption}"``, where the caption is BLIP-2's raw caption of a
real image of the class; without captions the prompt is ``"a photo of a {class}"``. The same
format conditions LoRA adaptation and generation, so the two stay aligned.

Departure: Real-Fake / GenDataAgent also append ψ_y, a CLIP image-feature token of the class;
it needs a CLIP image encoder that cannot be had offline, so prompts here carry text only.

Captions come from a file or from a BLIP-2 model on disk. The file is one of:

* JSON, an object mapping class name -> list of captions; an entry may also be an object
  ``{"caption": "...", "id": "<real sample id>"}`` that ties the caption to one real image
  (LoRA training then uses that image's own caption)::

      {"cat": ["sitting on a sofa", {"caption": "asleep in the sun", "id": "pets/cat/3"}],
       "dog": ["running on grass"]}

* CSV with a header row naming the columns ``class`` and ``caption`` and, optionally, ``id``.

A class with no captions gets the plain template; a caption for a class the data does not
have is an error (usually a typo).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from utilgen.atomic import write_text_atomic
from utilgen.config.diffusion import DiffusersConfig
from utilgen.data.labelled import LabelledData
from utilgen.errors import ConfigError, ModelNotFoundError, first_line
from utilgen.generate.request import GenerationError, GenerationRequest

logger = logging.getLogger(__name__)

_TOKEN_UNSAFE = re.compile(r"[^a-z0-9]+")


# 1. pure helpers: tokens, seeds, templates ---------------------------------------------


def placeholder_token(class_name: str) -> str:
    """The textual-inversion token of a class: ``<class-name>`` (lower case, words joined by
    hyphens), e.g. ``"Great Pyrenees"`` -> ``"<great-pyrenees>"``."""
    slug = _TOKEN_UNSAFE.sub("-", class_name.lower()).strip("-") or "class"
    return f"<{slug}>"


def request_seed(seed: int, round_index: int, class_name: str, index: int) -> int:
    """A 31-bit seed fixed by (run seed, round, class, index): the same request in a resumed
    run gets the same noise, and no two classes or rounds share a seed stream."""
    key = f"{seed}/{round_index}/{class_name}/{index}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:4], "big") & 0x7FFFFFFF


def fill_template(template: str, class_text: str, caption: str = "") -> str:
    """``template`` with ``{class}`` and ``{caption}`` replaced (no other braces are read)."""
    return template.replace("{class}", class_text).replace("{caption}", caption.strip())


def class_texts(class_names: Sequence[str], cfg: DiffusersConfig) -> dict[str, str]:
    """Class name -> the text that fills ``{class}``: the textual-inversion token for classes
    listed under ``textual_inversion.classes``, else the ``prompt_map`` entry, else the name.

    Raises:
        ConfigError: ``prompt_map`` is set and lacks a class, or names a class the data
            does not have.
    """
    learned = set(cfg.textual_inversion.classes)
    unknown = sorted(learned - set(class_names))
    if unknown:
        raise ConfigError(
            f"generator.diffusers.textual_inversion.classes names {unknown[0]!r}, which is not "
            f"a class of the data; classes: {', '.join(class_names)}"
        )
    if cfg.prompt_map is not None:
        missing = [c for c in class_names if c not in cfg.prompt_map and c not in learned]
        if missing:
            raise ConfigError(
                f"generator.diffusers.prompt_map has no entry for class {missing[0]!r}; add "
                f"'{missing[0]}: <text for prompts>' or remove prompt_map"
            )
        extra = sorted(set(cfg.prompt_map) - set(class_names))
        if extra:
            raise ConfigError(
                f"generator.diffusers.prompt_map names {extra[0]!r}, which is not a class of "
                f"the data; classes: {', '.join(class_names)}"
            )
    out = {}
    for name in class_names:
        if name in learned:
            out[name] = placeholder_token(name)
        elif cfg.prompt_map is not None:
            out[name] = cfg.prompt_map[name]
        else:
            out[name] = name
    return out


# 2. captions -------------------------------------------------------------------------


@dataclass(frozen=True)
class CaptionEntry:
    """One caption of class ``class_name``; ``sample_id`` is the real image it describes
    ("" when the source did not say)."""

    class_name: str
    caption: str
    sample_id: str = ""


@dataclass(frozen=True)
class CaptionTable:
    """Captions of real images, in file / image order."""

    entries: tuple[CaptionEntry, ...] = ()

    def for_class(self, class_name: str) -> tuple[str, ...]:
        """The captions of ``class_name`` (empty when it has none)."""
        return tuple(e.caption for e in self.entries if e.class_name == class_name)

    def for_sample(self, sample_id: str) -> str:
        """The caption tied to real sample ``sample_id``, or "" when none is."""
        for e in self.entries:
            if e.sample_id == sample_id:
                return e.caption
        return ""

    def to_json(self) -> str:
        """The table in the JSON captions-file format (entries with ids as objects)."""
        out: dict[str, list[Any]] = {}
        for e in self.entries:
            item = {"caption": e.caption, "id": e.sample_id} if e.sample_id else e.caption
            out.setdefault(e.class_name, []).append(item)
        return json.dumps(out, indent=1, ensure_ascii=False) + "\n"


def write_captions(table: CaptionTable, path: str | Path) -> Path:
    """Write ``table`` as a JSON captions file, atomically; returns the path."""
    return write_text_atomic(path, table.to_json())


def _bad_file(path: Path, problem: str) -> ConfigError:
    return ConfigError(
        f"generator.diffusers.captions_file {path}: {problem}; write JSON {{class: [caption, "
        "...]}} or CSV with columns class,caption[,id]"
    )


def _rows_from_json(path: Path, text: str) -> list[tuple[str, str, str]]:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as err:
        raise _bad_file(path, f"not valid JSON (line {err.lineno})") from None
    if not isinstance(raw, dict):
        raise _bad_file(path, "the top level must be an object of classes")
    rows = []
    for name, entries in raw.items():
        if not isinstance(entries, list):
            raise _bad_file(path, f"class {name!r} must map to a list of captions")
        for entry in entries:
            if isinstance(entry, str):
                rows.append((str(name), entry, ""))
            elif isinstance(entry, dict) and isinstance(entry.get("caption"), str):
                rows.append((str(name), entry["caption"], str(entry.get("id") or "")))
            else:
                raise _bad_file(path, f"class {name!r} has an entry that is not a caption")
    return rows


def _rows_from_csv(path: Path, text: str) -> list[tuple[str, str, str]]:
    reader = csv.DictReader(io.StringIO(text))
    columns = set(reader.fieldnames or ())
    if not {"class", "caption"} <= columns:
        raise _bad_file(path, f"the header has columns {sorted(columns)}, not class and caption")
    return [
        (row["class"] or "", row["caption"] or "", (row.get("id") or "").strip()) for row in reader
    ]


def read_captions(path: str | Path, class_names: Sequence[str]) -> CaptionTable:
    """The captions in ``path`` (JSON or CSV, see the module docstring) for ``class_names``.

    Raises:
        ConfigError: the file is missing, unreadable, malformed, or names a class that the
            data does not have.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"generator.diffusers.captions_file {path} not found; pass an existing JSON or "
            "CSV captions file"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise _bad_file(path, "not UTF-8 text") from None
    is_json = path.suffix.lower() == ".json" or text.lstrip().startswith("{")
    rows = _rows_from_json(path, text) if is_json else _rows_from_csv(path, text)
    known = set(class_names)
    entries = []
    for name, caption, sample_id in rows:
        if name not in known:
            raise _bad_file(path, f"class {name!r} is not a class of the data")
        if caption.strip():
            entries.append(CaptionEntry(name, caption.strip(), sample_id))
    table = CaptionTable(tuple(entries))
    missing = [c for c in class_names if not table.for_class(c)]
    if missing:
        logger.warning(
            "captions file %s has no captions for %d class(es) (e.g. %r); they get the plain "
            "class prompt",
            path,
            len(missing),
            missing[0],
        )
    return table


# 3. captions from BLIP-2 ---------------------------------------------------------------


def load_captioner(model_dir: str, *, device: Any, dtype: Any = None) -> tuple[Any, Any]:
    """A BLIP-2 processor and model (transformers) from a local directory, in eval mode.

    Raises:
        ModelNotFoundError: ``model_dir`` is not a directory holding a BLIP-2 model.
    """
    from transformers import Blip2ForConditionalGeneration, Blip2Processor

    local = Path(model_dir).expanduser()
    if not local.is_dir():
        raise ModelNotFoundError(
            f"generator.diffusers.captioner {model_dir!r} is not a directory; download a BLIP-2 "
            "model where there is network (`hf download Salesforce/blip2-opt-2.7b --local-dir "
            "DIR`), copy DIR here and set generator.diffusers.captioner=DIR"
        )
    try:
        processor = Blip2Processor.from_pretrained(local, local_files_only=True)
        model = Blip2ForConditionalGeneration.from_pretrained(
            local, local_files_only=True, dtype=dtype
        )
    except (OSError, ValueError) as err:
        raise ModelNotFoundError(
            f"generator.diffusers.captioner {model_dir!r} holds no BLIP-2 model "
            f"({first_line(err)}); pass a directory written by save_pretrained of "
            "Blip2ForConditionalGeneration"
        ) from None
    return processor, model.to(device).eval()


def caption_images(
    images: Sequence[np.ndarray],
    processor: Any,
    model: Any,
    *,
    batch_size: int = 8,
    max_new_tokens: int = 30,
) -> list[str]:
    """BLIP-2's raw caption of each uint8 (H, W, C) image, greedy decoding (deterministic)."""
    import torch
    from PIL import Image

    captions: list[str] = []
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        pil = [Image.fromarray(np.asarray(im).squeeze()).convert("RGB") for im in chunk]
        inputs = processor(images=pil, return_tensors="pt").to(device)
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        captions += [t.strip() for t in processor.batch_decode(out, skip_special_tokens=True)]
    return captions


def caption_real_images(
    images: Sequence[np.ndarray],
    labels: Sequence[int],
    ids: Sequence[str],
    class_names: Sequence[str],
    cfg: DiffusersConfig,
    *,
    device: Any,
    batch_size: int = 8,
) -> CaptionTable:
    """Caption every real image with the BLIP-2 model of ``cfg.captioner``; each caption is
    tied to its image's id (for LoRA training) and listed under its class (for prompts)."""
    if cfg.captioner is None:
        raise ConfigError("set generator.diffusers.captioner to a BLIP-2 directory to caption")
    processor, model = load_captioner(cfg.captioner, device=device)
    texts = caption_images(
        images, processor, model, batch_size=batch_size, max_new_tokens=cfg.caption_max_new_tokens
    )
    return CaptionTable(
        tuple(
            CaptionEntry(class_names[int(label)], text, sample_id)
            for text, label, sample_id in zip(texts, labels, ids, strict=True)
            if text
        )
    )


def diffusers_cache_dir(cfg: DiffusersConfig) -> Path:
    """Where adapters, class tokens and captions are cached: ``cfg.cache_dir``, else
    ``$UTILGEN_CACHE_DIR/diffusers``, else ``~/.cache/utilgen/diffusers``."""
    if cfg.cache_dir is not None:
        return Path(cfg.cache_dir).expanduser()
    root = os.environ.get("UTILGEN_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "utilgen") / "diffusers"


def data_digest(data: LabelledData) -> str:
    """SHA-256 (16 hex) of a dataset's ids, labels and image bytes: a cache key part that
    changes whenever the real images do."""
    h = hashlib.sha256()
    for sample_id, label, item in zip(data.ids, data.labels, data.items, strict=True):
        h.update(f"{sample_id}\0{int(label)}\0".encode())
        h.update(np.ascontiguousarray(item).tobytes() if isinstance(item, np.ndarray) else b"")
    return h.hexdigest()[:16]


def captions_for(
    cfg: DiffusersConfig, real: LabelledData | None, *, device: Any = None
) -> CaptionTable | None:
    """The captions the config asks for: read from ``cfg.captions_file``, or BLIP-2 captions
    of ``real`` made with ``cfg.captioner`` (cached by model and images; ``device`` None
    picks CUDA when present), or None when the config names no caption source.

    Raises:
        GenerationError: a captioner is set but no real images are given to caption.
    """
    if cfg.captions_file is not None:
        if real is None:
            raise GenerationError("reading generator.diffusers.captions_file needs the classes")
        return read_captions(cfg.captions_file, real.class_names)
    if cfg.captioner is None:
        return None
    if real is None:
        raise GenerationError(
            "generator.diffusers.captioner captions real images; pass the task's real "
            "training data (real=...) to caption"
        )
    if device is None:
        from utilgen.determinism import resolve_device

        device = resolve_device("auto")
    key = hashlib.sha256(
        f"{Path(cfg.captioner).expanduser().resolve()}|{cfg.caption_max_new_tokens}|"
        f"{data_digest(real)}".encode()
    ).hexdigest()[:16]
    cached = diffusers_cache_dir(cfg) / "captions" / f"{key}.json"
    if cached.is_file():
        return read_captions(cached, real.class_names)
    table = caption_real_images(
        [np.asarray(item) for item in real.items],
        real.labels.tolist(),
        real.ids,
        real.class_names,
        cfg,
        device=device,
    )
    write_captions(table, cached)
    return table


# 4. the static strategy's requests ----------------------------------------------------


def class_prompt(class_text: str, caption: str, cfg: DiffusersConfig) -> str:
    """The prompt of one class: the caption template when there is a caption, else the
    plain one."""
    if caption.strip():
        return fill_template(cfg.prompt_template, class_text, caption)
    return fill_template(cfg.plain_template, class_text)


def class_prompt_requests(
    class_names: Sequence[str],
    *,
    per_class: int,
    seed: int,
    round_index: int,
    cfg: DiffusersConfig,
    captions: CaptionTable | None = None,
    real: LabelledData | None = None,
) -> list[GenerationRequest]:
    """``per_class`` one-image requests per class, class by class (Real-Fake's static
    class prompts).

    Request ``j`` of a class uses the class's caption ``j mod n``, so captions are used
    evenly. Captions come from ``captions`` if given, else from ``cfg.captions_file``, else
    from ``cfg.captioner`` run on ``real`` (the task's real training images). Seeds come
    from :func:`request_seed`; guidance and steps are left to the generator's config.

    Raises:
        ConfigError: a class is missing from ``cfg.prompt_map``, or the captions file is
            missing or malformed.
        GenerationError: ``cfg.captioner`` is set but ``real`` is not given.
    """
    texts = class_texts(class_names, cfg)
    if captions is None and cfg.captions_file is not None:
        captions = read_captions(cfg.captions_file, class_names)
    elif captions is None and cfg.captioner is not None:
        captions = captions_for(cfg, real)
    requests = []
    for label, name in enumerate(class_names):
        class_captions = captions.for_class(name) if captions is not None else ()
        for j in range(per_class):
            caption = class_captions[j % len(class_captions)] if class_captions else ""
            requests.append(
                GenerationRequest(
                    label=label,
                    class_name=name,
                    seed=request_seed(seed, round_index, name, j),
                    prompt=class_prompt(texts[name], caption, cfg),
                    negative_prompt=cfg.negative_prompt,
                    metadata={"caption": caption} if caption else {},
                )
            )
    return requests
