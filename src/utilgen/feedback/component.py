"""Feedback components: how one way of feeding utility back into generation plugs into the
round engine.

A name in ``feedback.components`` is looked up in
:data:`utilgen.registry.FEEDBACK_COMPONENTS`; the loop asks each switched-on component, in
registration order, what its :class:`FeedbackComponent` protocol says:

* before anything runs: :meth:`~FeedbackComponent.check_config` (when the config is
  validated) and :meth:`~FeedbackComponent.check_plan` (against the data, no model loaded);
* from round 2 on, a round's requests: one component may *make* them
  (``makes_requests``, e.g. ``hard_samples``'s img2img around hard real samples), or
  components may *optimise* the static requests (``optimises_requests``, e.g.
  ``prompt_ascent`` then ``noise_opt``), one after the other with the same utility and
  differentiable sampler; the round engine writes the optimised requests to
  ``rounds/NNN/instance_requests.*`` and reads them back on resume;
* between round r and r+1 (``trains_generator``): :meth:`~FeedbackComponent.update_generator`
  fine-tunes the generator on round r's outputs, or restores what a resumed run saved;
* for budgets and ``--dry-run``: :meth:`~FeedbackComponent.generator_calls` and
  :meth:`~FeedbackComponent.describe`.

The methods have no-op defaults: a component subclasses the protocol and overrides what it
does. The built-in components are in :mod:`utilgen.feedback.components`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

if TYPE_CHECKING:
    from utilgen.config import RunConfig
    from utilgen.data import Splits
    from utilgen.feedback.utility import Utility
    from utilgen.generate import GenerationRequest, Generator
    from utilgen.generate.differentiable import DifferentiableSampler
    from utilgen.pool import PoolStore
    from utilgen.task import TaskModel


@dataclass(frozen=True)
class RoundContext:
    """What a component may read while it shapes a round's requests.

    Attributes:
        out: ``rounds/NNN`` of the round being generated.
        previous: ``rounds/NNN`` of the round before it (its checkpoints are the student's).
        judge: the stage-1 real-data classifier, last checkpoint loaded.
        new_model: a freshly initialised task model (same seed as stage 1).
    """

    config: RunConfig
    splits: Splits
    generator: Generator
    round_index: int
    out: Path
    previous: Path
    judge: TaskModel
    new_model: Callable[[], TaskModel]

    def scorer(self, which: str) -> TaskModel:
        """``"judge"``: the judge; otherwise the student, the classifier trained in the
        previous round (its last checkpoint).

        Raises:
            UtilgenError: the previous round left no checkpoint.
        """
        from utilgen.errors import UtilgenError
        from utilgen.pool import RoundLayout
        from utilgen.task.checkpoint import list_checkpoints, load_checkpoint

        if which == "judge":
            return self.judge
        previous = RoundLayout(self.previous)
        found = list_checkpoints(previous.checkpoints)
        if not found:
            raise UtilgenError(
                f"no checkpoint in {previous.checkpoints}; delete {previous.metrics} and "
                "re-run to retrain that round"
            )
        model = self.new_model()
        load_checkpoint(model, found[-1])
        return model


class FeedbackComponent(Protocol):
    """One feedback component (see the module docstring for when each method runs)."""

    makes_requests: ClassVar[bool] = False
    optimises_requests: ClassVar[bool] = False
    trains_generator: ClassVar[bool] = False

    def check_config(self, config: RunConfig) -> None:
        """Refuse a config this component cannot run with (raise ``ValueError`` with a
        one-line message naming the key and the fix); called while the config validates,
        so it must not import torch or load anything."""
        return None

    def check_plan(self, config: RunConfig, splits: Splits) -> None:
        """Refuse inputs that do not fit the data (raise ``UtilgenError``); no model is
        loaded yet and nothing is written."""
        return None

    def describe(self, config: RunConfig, n_requests: int) -> str:
        """One line for ``utilgen run --dry-run``: what the component does between rounds
        for ``n_requests`` requests a round."""
        return type(self).__name__

    def generator_calls(self, config: RunConfig, n_requests: int) -> int:
        """Generator passes the component spends on a round of ``n_requests`` requests
        before the round generates (counted against ``loop.budget.generator_calls``)."""
        return 0

    def make_requests(self, ctx: RoundContext) -> list[GenerationRequest]:
        """Round ``ctx.round_index``'s requests (``makes_requests`` components), the same
        on resume (write what they depend on under ``ctx.out`` and read it back)."""
        from utilgen.errors import UtilgenError

        raise UtilgenError(f"internal: {type(self).__name__} does not make requests")

    def optimise_requests(
        self,
        ctx: RoundContext,
        requests: list[GenerationRequest],
        utility: Utility,
        sampler: DifferentiableSampler,
    ) -> list[GenerationRequest]:
        """``requests`` optimised to raise ``utility`` through ``sampler``
        (``optimises_requests`` components)."""
        return requests

    def update_generator(
        self,
        generator: Generator,
        store: PoolStore,
        config: RunConfig,
        run_dir: Path,
        round_index: int,
    ) -> Generator:
        """The generator for round ``round_index + 1``, updated from round ``round_index``'s
        outputs (``trains_generator`` components); restores instead of training when
        ``run_dir`` already holds the result."""
        return generator

    def saved_result(self, run_dir: Path, round_index: int) -> dict[str, Any] | None:
        """What :meth:`update_generator` recorded for round ``round_index`` (None: nothing)."""
        return None


def active_components(config: RunConfig) -> list[tuple[str, FeedbackComponent]]:
    """``(name, component)`` of every component ``config`` switches on, in registration
    order."""
    from utilgen.registry import FEEDBACK_COMPONENTS

    return FEEDBACK_COMPONENTS.entries(config.feedback.components)
