"""Acceptance (issue 11, safe loading): pointing utilgen at someone else's files or models
never runs code the user did not ask for.

- The source never unpickles (``torch.load`` only with ``weights_only=True``, no
  ``pickle.load``), never starts a shell or a subprocess and never ``eval``s: checked on
  the syntax tree of every module, so a new call site fails here.
- Every ``trust_remote_code`` setting defaults to off, and a model that ships its own code
  is refused with an error that names the setting, before that code is imported.
- A pickle disguised as a checkpoint is refused, and its payload never runs.
"""

from __future__ import annotations

import ast
import json
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import BaseModel

import utilgen
from utilgen.config import RunConfig
from utilgen.errors import ModelNotFoundError, UtilgenError
from utilgen.task.model_sources import load_pretrained

SRC = Path(utilgen.__file__).resolve().parent
FORBIDDEN_CALLS = {
    ("pickle", "load"),
    ("pickle", "loads"),
    ("os", "system"),
    ("os", "popen"),
    ("os", "execv"),
    ("os", "execvp"),
    ("os", "spawnv"),
    ("marshal", "loads"),
}
FORBIDDEN_MODULES = {"subprocess", "pty", "shelve", "dill", "cloudpickle"}


def _attribute_call(node: ast.Call) -> tuple[str, str] | None:
    func = node.func
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
        return func.value.id, func.attr
    return None


def _problems(path: Path, root: Path = SRC.parent) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        where = f"{path.relative_to(root)}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            module = node.module if isinstance(node, ast.ImportFrom) else None
            for name in [*names, *([module] if module else [])]:
                if name.split(".")[0] in FORBIDDEN_MODULES:
                    found.append(f"{where}: imports {name}")
        if not isinstance(node, ast.Call):
            continue
        call = _attribute_call(node)
        if call in FORBIDDEN_CALLS:
            found.append(f"{where}: calls {'.'.join(call)}")
        if call == ("torch", "load"):
            safe = any(
                k.arg == "weights_only"
                and isinstance(k.value, ast.Constant)
                and k.value.value is True
                for k in node.keywords
            )
            if not safe:
                found.append(f"{where}: torch.load without weights_only=True")
        if isinstance(node.func, ast.Name) and node.func.id in ("eval", "exec", "compile"):
            found.append(f"{where}: calls {node.func.id}")
        for keyword in node.keywords:
            if keyword.arg == "shell":
                found.append(f"{where}: passes shell=")
    return found


def test_the_source_never_unpickles_shells_out_or_evals() -> None:
    modules = sorted(SRC.rglob("*.py"))
    assert len(modules) > 50  # the scan sees the whole package
    problems = [p for path in modules for p in _problems(path)]
    assert problems == []


def test_the_scan_catches_what_it_forbids(tmp_path: Path) -> None:
    # the checker itself must fail on each pattern, or the test above proves nothing
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import subprocess\nimport pickle, os, torch\n"
        "pickle.loads(b'')\nos.system('ls')\ntorch.load('x')\n"
        "torch.load('x', weights_only=False)\neval('1')\nf(shell=True)\n"
    )
    found = _problems(bad, root=tmp_path)
    assert len(found) == 7, found


def _fields_named(model: type[BaseModel], name: str, prefix: str = "") -> dict[str, Any]:
    """Default of every field called ``name`` in ``model`` and its nested sections."""
    out: dict[str, Any] = {}
    for field_name, field in model.model_fields.items():
        path = f"{prefix}{field_name}"
        if field_name == name:
            out[path] = field.get_default(call_default_factory=True)
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            out |= _fields_named(annotation, name, f"{path}.")
    return out


def test_every_trust_remote_code_setting_defaults_off() -> None:
    defaults = _fields_named(RunConfig, "trust_remote_code")
    # the task model and the language model load checkpoints from anywhere
    assert {"task.trust_remote_code", "generator.lm.trust_remote_code"} <= set(defaults)
    assert all(value is False for value in defaults.values()), defaults


def _model_with_its_own_code(directory: Path, marker: Path) -> Path:
    """A checkpoint directory whose config asks for code that, if imported, leaves
    ``marker`` behind."""
    directory.mkdir()
    config = {
        "model_type": "evil-bert",
        "auto_map": {
            "AutoConfig": "modeling_evil.EvilConfig",
            "AutoModelForSequenceClassification": "modeling_evil.EvilModel",
        },
    }
    (directory / "config.json").write_text(json.dumps(config))
    (directory / "modeling_evil.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
    )
    return directory


def test_a_model_that_ships_code_is_refused_by_name(tmp_path: Path) -> None:
    from transformers import AutoConfig

    marker = tmp_path / "remote-code-ran"
    model_dir = _model_with_its_own_code(tmp_path / "evil", marker)
    with pytest.raises(ModelNotFoundError, match=r"task\.trust_remote_code=true") as err:
        load_pretrained(AutoConfig.from_pretrained, str(model_dir), trust_remote_code=False)
    assert "\n" not in str(err.value)
    assert not marker.exists()


class _Payload:
    """Unpickling this calls ``Path.write_text``: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.write_text, (self.marker, "ran"))


def test_a_pickle_disguised_as_a_checkpoint_is_refused(tmp_path: Path) -> None:
    from utilgen.config import TaskConfig
    from utilgen.task.checkpoint import load_checkpoint
    from utilgen.task.factory import build_task_model

    marker = tmp_path / "payload-ran"
    fake = tmp_path / "epoch-001.safetensors"
    fake.write_bytes(pickle.dumps({"weight": _Payload(marker)}))
    model = build_task_model(
        TaskConfig(model="small-cnn"),
        modality="image",
        num_classes=3,
        example_items=[torch.zeros(8, 8).numpy()],
        device=torch.device("cpu"),
        seed=0,
    )
    with pytest.raises(UtilgenError, match="not a readable safetensors file") as err:
        load_checkpoint(model, fake)
    assert "\n" not in str(err.value)
    assert not marker.exists()
    # and torch's own loader, as utilgen calls it, refuses the payload too
    torch_file = tmp_path / "weights.pt"
    torch.save({"weight": _Payload(marker)}, torch_file)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(torch_file, map_location="cpu", weights_only=True)
    assert not marker.exists()
