"""Scale-out on Ray (``pip install "utilgen[ray]"``, ``loop.backend=ray``).

:class:`RayExecutor` joins (or starts) a Ray cluster and runs a round's generation as Ray
Data ``map_batches`` over a pool of actors, one generator per actor; the samples stream back
to the driver, the only writer of the pool, equal to what the local backend would make.
Ray itself is imported only when an executor is built, so this package imports without it.
"""

from utilgen.scale.backend import RayGenerator, check_backend, on_backend, scorer_on_backend
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
    "scorer_on_backend",
]
