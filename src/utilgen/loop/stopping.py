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


def _counted_budgets(budget: BudgetConfig, cost: Cost) -> tuple[tuple[str, int | None, int], ...]:
    """``(name, limit, amount)`` of the budgets a cost is counted against before it is paid
    (samples and generator calls; time cannot be projected)."""
    return (
        ("synthetic_samples", budget.synthetic_samples, cost.synthetic_samples),
        ("generator_calls", budget.generator_calls, cost.generator_calls),
    )


def budget_exceeded(budget: BudgetConfig, spent_so_far: Cost, next_round: Cost) -> str | None:
    """The budget the next round would overrun (``budget:<name>``), or None if it fits."""
    for name, limit, amount in _counted_budgets(budget, spent_so_far + next_round):
        if limit is not None and amount > limit:
            return f"budget:{name}"
    # Time cannot be projected: a round starts while any is left.
    if budget.wall_seconds is not None and spent_so_far.wall_seconds >= budget.wall_seconds:
        return "budget:wall_seconds"
    return None


def check_first_round_budget(budget: BudgetConfig, first_round: Cost) -> None:
    """Refuse, before anything runs, a budget that cannot pay for round 1.

    Raises:
        ConfigError: round 1 needs more samples or generator calls than the budget allows.
    """
    verbs = {"synthetic_samples": "makes", "generator_calls": "needs"}
    for name, limit, amount in _counted_budgets(budget, first_round):
        if limit is not None and amount > limit:
            raise ConfigError(
                f"loop.budget.{name}={limit} is exhausted before round 1, which {verbs[name]} "
                f"{amount}; raise the budget or lower generator.per_class"
            )


def plateaued(plateau: PlateauConfig, val_accuracy: Sequence[float]) -> bool:
    """Whether the last ``patience`` rounds failed to raise the best validation accuracy of
    the rounds before them (``val_accuracy[0]`` is stage 1's) by more than ``min_delta``."""
    patience = plateau.patience
    if patience is None or len(val_accuracy) <= patience:
        return False
    before = max(val_accuracy[:-patience])
    return max(val_accuracy[-patience:]) <= before + plateau.min_delta
