"""Stopping rules of the round engine: max rounds, budgets, plateau; composable, any fires.

Every rule reads only what finished rounds wrote to their ``metrics.json`` (samples
generated, generator calls, seconds, validation accuracy), so a resumed run makes the same
decisions as an uninterrupted one — except the wall-clock budget, which by its nature
depends on how fast the machine was.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from utilgen.config import RunConfig
from utilgen.config.loop import BudgetConfig, PlateauConfig
from utilgen.errors import ConfigError
from utilgen.feedback.component import active_components

MAX_ROUNDS = "max_rounds"
PLATEAU = "plateau"


@dataclass(frozen=True)
class Cost:
    """What a round costs (projected) or what finished rounds cost (spent)."""

    synthetic_samples: int = 0
    generator_calls: int = 0
    wall_seconds: float = 0.0

    def __add__(self, other: Cost) -> Cost:
        return Cost(
            self.synthetic_samples + other.synthetic_samples,
            self.generator_calls + other.generator_calls,
            self.wall_seconds + other.wall_seconds,
        )


def optimisation_calls(config: RunConfig, n_requests: int) -> int:
    """Generator passes the feedback components spend on ``n_requests`` requests before a
    round generates (e.g. the steps of instance-level optimisation)."""
    return sum(c.generator_calls(config, n_requests) for _, c in active_components(config))


def round_cost(config: RunConfig, round_index: int, n_samples: int, n_requests: int) -> Cost:
    """Projected cost of round ``round_index`` generating ``n_samples`` from ``n_requests``
    requests (rounds from 2 on pay for their instance-level optimisation too; offline
    rounds call no generator)."""
    if config.loop.mode == "offline":
        return Cost(synthetic_samples=n_samples)
    calls = n_samples + (optimisation_calls(config, n_requests) if round_index >= 2 else 0)
    return Cost(synthetic_samples=n_samples, generator_calls=calls)


def spent(metrics: Sequence[dict[str, Any]]) -> Cost:
    """What the finished stages (stage 1 and rounds, as their metrics.json) cost."""
    total = Cost()
    for m in metrics:
        total = total + Cost(
            int(m.get("n_generated", 0)),
            int(m.get("generator_calls", 0)),
            float(m.get("seconds", m.get("train_seconds", 0.0))),
        )
    return total


def budget_exceeded(budget: BudgetConfig, spent_so_far: Cost, next_round: Cost) -> str | None:
    """The budget the next round would overrun (``budget:<name>``), or None if it fits."""
    if (
        budget.synthetic_samples is not None
        and spent_so_far.synthetic_samples + next_round.synthetic_samples > budget.synthetic_samples
    ):
        return "budget:synthetic_samples"
    if (
        budget.generator_calls is not None
        and spent_so_far.generator_calls + next_round.generator_calls > budget.generator_calls
    ):
        return "budget:generator_calls"
    # Time cannot be projected: a round starts while any is left.
    if budget.wall_seconds is not None and spent_so_far.wall_seconds >= budget.wall_seconds:
        return "budget:wall_seconds"
    return None


def check_first_round_budget(budget: BudgetConfig, first_round: Cost) -> None:
    """Refuse, before anything runs, a budget that cannot pay for round 1.

    Raises:
        ConfigError: round 1 needs more samples or generator calls than the budget allows.
    """
    if budget.synthetic_samples is not None and first_round.synthetic_samples > (
        budget.synthetic_samples
    ):
        raise ConfigError(
            f"loop.budget.synthetic_samples={budget.synthetic_samples} is exhausted before "
            f"round 1, which makes {first_round.synthetic_samples}; raise the budget or lower "
            "generator.per_class"
        )
    if budget.generator_calls is not None and first_round.generator_calls > (
        budget.generator_calls
    ):
        raise ConfigError(
            f"loop.budget.generator_calls={budget.generator_calls} is exhausted before round "
            f"1, which needs {first_round.generator_calls}; raise the budget or lower "
            "generator.per_class"
        )


def plateaued(plateau: PlateauConfig, val_accuracy: Sequence[float]) -> bool:
    """Whether the last ``patience`` rounds failed to raise the best validation accuracy of
    the rounds before them (``val_accuracy[0]`` is stage 1's) by more than ``min_delta``."""
    patience = plateau.patience
    if patience is None or len(val_accuracy) <= patience:
        return False
    before = max(val_accuracy[:-patience])
    return max(val_accuracy[-patience:]) <= before + plateau.min_delta
