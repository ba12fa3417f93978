"""``utilgen feedback RUN --round N``: train one round's model-level feedback on its own.

``utilgen run`` trains the feedback between rounds itself, in one process. On a multi-GPU
machine the DPO trainers can instead run data-parallel under ``accelerate launch``::

    accelerate launch --num_processes 4 -m utilgen feedback RUN --round 1
    utilgen run CONFIG --out RUN        # resumes: restores the adapter, generates round 2

Every process loads the run's config and generator, builds the same preference pairs from
round N's scores and trains its shard of each batch; the main process writes the pairs, the
adapter and ``result.json``. The following ``utilgen run`` finds ``result.json`` and restores
the adapter instead of training (``utilgen.feedback.model_level``).
"""

from __future__ import annotations

from pathlib import Path

from utilgen.config import load_config
from utilgen.errors import UtilgenError
from utilgen.feedback.component import active_components
from utilgen.loop.run import prepare
from utilgen.pool import PoolStore, RunLayout


def train_round_feedback(run_dir: str | Path, round_index: int) -> dict[str, object]:
    """Train (or, if already trained, leave) round ``round_index``'s model-level feedback
    (every component that trains the generator, e.g. ``dpo``) of the run in ``run_dir``;
    returns what each recorded, by component name (``dpo``: its ``result.json``).

    Raises:
        UtilgenError: no such run, a config without feedback that trains the generator, a
            round outside 1..rounds-1, or a round that has not been generated and scored yet.
    """
    run_dir = Path(run_dir)
    layout = RunLayout(run_dir)
    config_path = layout.config
    if not config_path.is_file():
        raise UtilgenError(
            f"{run_dir} is not a run directory (no config.yaml); start it with `utilgen run`"
        )
    config = load_config(config_path)
    trainers = [(n, c) for n, c in active_components(config) if c.trains_generator]
    if not trainers:
        raise UtilgenError(
            f"the run in {run_dir} has no feedback that trains the generator, such as dpo "
            f"(feedback.components={config.feedback.components}); nothing to train"
        )
    if not 1 <= round_index < config.loop.rounds:
        raise UtilgenError(
            f"--round {round_index} has no feedback: it runs after rounds 1.."
            f"{config.loop.rounds - 1} of this run; pick one of them"
        )
    if not layout.round(round_index).metrics.is_file():
        raise UtilgenError(
            f"round {round_index} of {run_dir} has not finished; run `utilgen run` on it "
            "until that round is done (stop it after the round, e.g. with loop.rounds)"
        )
    prepared = prepare(config)
    generator = prepared.generator
    if generator is None:
        raise UtilgenError(f"the run in {run_dir} has no generator; nothing to train")
    with PoolStore.open(run_dir) as store:
        for earlier in range(1, round_index + 1):
            for _, component in trainers:
                generator = component.update_generator(generator, store, config, run_dir, earlier)
    return {name: component.saved_result(run_dir, round_index) for name, component in trainers}
