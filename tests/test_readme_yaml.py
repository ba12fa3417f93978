"""Every YAML block in README.md is a config that loads, or says it is a fragment and of what.

A block is a whole config unless the paragraph just above it calls it a fragment; then that
paragraph names the preset it is added to (the first backticked preset name in it), and the
preset with the block merged in (mappings merged key by key, anything else replaced) must
load. So a reader who copies a block gets either a working config or an exact pointer.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from utilgen.config import config_from_dict, preset_names, preset_path
from utilgen.config.load import merge_config

README = Path(__file__).resolve().parents[1] / "README.md"
_BLOCK = re.compile(r"^```yaml\n(.*?)^```", re.MULTILINE | re.DOTALL)


def yaml_blocks() -> list[tuple[str, str]]:
    """(paragraph above the block, block text) for every ```yaml block of the README."""
    text = README.read_text(encoding="utf-8")
    out = []
    for match in _BLOCK.finditer(text):
        before = text[: match.start()].rstrip().split("\n\n")[-1]
        out.append((before, match.group(1)))
    return out


def named_preset(paragraph: str) -> str | None:
    """The first backticked preset name in ``paragraph``."""
    presets = set(preset_names())
    return next((n for n in re.findall(r"`([\w-]+)`", paragraph) if n in presets), None)


BLOCKS = yaml_blocks()


def test_the_readme_has_yaml_blocks() -> None:
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize(
    ("paragraph", "block"), BLOCKS, ids=[f"block-{i}" for i in range(len(BLOCKS))]
)
def test_block_loads_whole_or_merged_into_the_preset_it_names(paragraph: str, block: str) -> None:
    raw = yaml.safe_load(block)
    assert isinstance(raw, dict), block
    if "fragment" not in paragraph.lower():
        config_from_dict(raw, origin="README block")  # raises ConfigError with the key
        return
    preset = named_preset(paragraph)
    assert preset is not None, f"a fragment must name the preset it goes into:\n{paragraph}"
    base = yaml.safe_load(preset_path(preset).read_text(encoding="utf-8"))
    config_from_dict(merge_config(base, raw), origin=f"README block merged into {preset}")


def test_fragments_do_not_load_on_their_own_or_they_would_not_be_fragments() -> None:
    """A block called a fragment that loads whole should say so instead."""
    from utilgen.errors import ConfigError

    for paragraph, block in BLOCKS:
        if "fragment" in paragraph.lower():
            with pytest.raises(ConfigError):
                config_from_dict(yaml.safe_load(block))
