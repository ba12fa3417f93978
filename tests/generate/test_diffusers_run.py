"""``utilgen run`` end to end with the diffusers generator: a tiny SD pipeline on disk, the
static strategy on digits, LoRA adapted to the k-shot images; every synthetic sample in the
pool names the adapted model and its PNG decodes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny_sd import save_tiny_sd

from utilgen.cli import main
from utilgen.pool.payload import decode_image
from utilgen.pool.store import PoolStore


@pytest.mark.slow
def test_static_run_with_a_lora_adapted_tiny_sd(tmp_path: Path) -> None:
    model = save_tiny_sd(tmp_path / "tiny-sd")
    run = tmp_path / "run"
    sets = [
        "generator.kind=diffusers",
        f"generator.diffusers.model={model}",
        "generator.diffusers.steps=2",
        "generator.diffusers.lora.train=true",
        "generator.diffusers.lora.max_steps=2",
        f"generator.diffusers.cache_dir={tmp_path / 'cache'}",
        "generator.per_class=2",
        "task.epochs=2",
    ]
    args = ["--quiet", "run", "digits-static", "--out", str(run)]
    for item in sets:
        args += ["--set", item]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code in (0, None)
    with PoolStore.open(run) as pool:
        synthetic = [s for s in pool.samples() if s.source == "synthetic"]
    assert len(synthetic) == 20  # 10 digit classes x 2
    assert {s.prompt for s in synthetic if s.class_name == "3"} == {"a photo of a 3"}
    assert all(s.generator.startswith(f"{model}+lora:") for s in synthetic)
    details = json.loads(synthetic[0].details)
    assert details["lora_sha256"] and details["scheduler"] == "DDIMScheduler"
    assert decode_image(synthetic[0].payload).shape == (32, 32, 3)
