"""``ray``: where and how the Ray backend runs generation (``loop.backend=ray``).

With ``loop.backend=ray`` a round's requests are cut into shards that a pool of Ray actors
generates, each actor holding one copy of the round's generator; the finished samples
stream back to the driver, which alone writes the pool. Valuation's per-sample passes run on
the same actors. The actors live as long as the run. These settings say which cluster, how
many actors and what each one reserves. They are read only when ``loop.backend=ray``.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from utilgen.config.section import Section


class RayConfig(Section):
    """The Ray cluster and the actor pool that generates and values (``loop.backend=ray``)."""

    address: str | None = Field(
        None,
        description="Cluster to connect to: host:port of a head started with `ray start "
        "--head` (its GCS port, 6379 by default), ray://host:10001 for Ray Client, or auto "
        "(the cluster this machine belongs to). null starts a local Ray for the run, sized "
        "to actors x num_cpus_per_actor CPUs, and stops it when the process ends.",
    )
    actors: int = Field(
        2, ge=1, description="Actors in the pool; each holds its own copy of the generator."
    )
    num_cpus_per_actor: int = Field(
        1,
        ge=1,
        description="CPUs Ray reserves per actor; the actor's torch runs on this many threads.",
    )
    num_gpus_per_actor: float = Field(
        0.0,
        ge=0.0,
        description="GPUs Ray reserves per actor: 0 runs the actors on CPUs, 1 gives each "
        "actor a GPU of its own (the generator is moved onto it), a fraction shares one.",
    )
    batch_size: int | None = Field(
        None,
        ge=1,
        description="Samples per actor call: outputs to generate (null: the generator's "
        "batch size), or samples to value, rounded up to whole batches of the task model "
        "(null: one batch). Shards always start where the local code starts a batch, so "
        "samples and scores equal the local backend's whatever this is.",
    )
    train_workers: int = Field(
        0,
        ge=0,
        description="Ray Train workers that train the task model data-parallel (DDP through "
        "TorchTrainer); 0 trains it in the driver, as the local backend does. task.batch_size "
        "is the global batch, shared out among the workers.",
    )
    train_gpus: bool = Field(
        False,
        description="Give each Ray Train worker a GPU (NCCL); false trains on CPUs (gloo) "
        "with num_cpus_per_actor CPUs each.",
    )
    max_restarts: int = Field(
        3,
        ge=-1,
        description="Times Ray restarts an actor that died (process crash, node lost); "
        "-1 without limit, 0 never.",
    )
    max_task_retries: int = Field(
        3,
        ge=-1,
        description="Times a batch whose actor died is retried on the restarted actor; "
        "-1 without limit. A retried batch replaces the lost one: no sample is lost or "
        "written twice.",
    )

    @field_validator("address")
    @classmethod
    def _address_named(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError(
                "ray.address is empty: give host:port of a Ray head, ray://host:10001, auto, "
                "or null to start a local Ray"
            )
        return value.strip() if value is not None else None
