"""Fixtures shared by the instance-level optimisers' tests (prompt ascent, noise
optimisation): one tiny trained built-in generator and one trained small-cnn judge per
test module, built on one torch thread."""

from __future__ import annotations

import pytest
import torch
from instance_setup import judge, tiny_generator

from utilgen.generate.builtin import BuiltinDiffusionGenerator
from utilgen.task import TaskModel


@pytest.fixture(scope="module")
def generator() -> BuiltinDiffusionGenerator:
    torch.set_num_threads(1)
    return tiny_generator()


@pytest.fixture(scope="module")
def model() -> TaskModel:
    torch.set_num_threads(1)
    return judge()
