"""Scale-out on Ray (``pip install "utilgen[ray]"``, ``loop.backend=ray``).

:class:`RayExecutor` joins (or starts) a Ray cluster and keeps a pool of actors for the
whole run. A round's generation is cut into shards the actors generate, one generator per
actor, and valuation's per-sample passes (logits, embeddings, VoG gradients) are shared
out the same way. The samples and scores come back to the driver, the only writer of the
pool, equal to what the local backend would make. Ray itself is imported only when an
executor is built, so this package imports without it.
"""

from utilgen.scale.backend import (
    RayGenerator,
    check_backend,
    on_backend,
    release_shared_executors,
    scorer_on_backend,
    shared_executor,
    trainer_on_backend,
    warm_actors,
)
from utilgen.scale.cluster import INSTALL_HINT, ClusterInfo, RayBackendError, probe
from utilgen.scale.executor import RayExecutor
from utilgen.scale.shards import local_batch_starts, plan_shards

__all__ = [
    "INSTALL_HINT",
    "ClusterInfo",
    "RayBackendError",
    "RayExecutor",
    "RayGenerator",
    "check_backend",
    "local_batch_starts",
    "on_backend",
    "plan_shards",
    "probe",
    "release_shared_executors",
    "scorer_on_backend",
    "shared_executor",
    "trainer_on_backend",
    "warm_actors",
]
