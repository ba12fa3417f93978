"""Importing Ray and joining (or starting) the cluster, with one-line errors for users.

Ray is an optional dependency (``pip install "utilgen[ray]"``), imported only here and only
when ``loop.backend=ray``. ``ray.init`` on an address where nothing listens does not fail:
it retries for minutes. So a ``host:port`` address is probed with a plain TCP connection
first, and an unreachable one is a :class:`RayBackendError` within seconds, before anything
is generated.
"""

from __future__ import annotations

import importlib
import logging
import socket
import time
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from utilgen.config.scale import RayConfig
from utilgen.errors import UtilgenError

log = logging.getLogger(__name__)

INSTALL_HINT = 'pip install "utilgen[ray]"'
PROBE_TIMEOUT_S = 5.0
DEFAULT_GCS_PORT = 6379


class RayBackendError(UtilgenError):
    """Ray is missing, or the configured cluster cannot be reached."""


def import_ray() -> ModuleType:
    """The ``ray`` module; RayBackendError when it is not installed."""
    try:
        ray = importlib.import_module("ray")
    except ImportError as err:
        raise RayBackendError(
            f"loop.backend=ray needs Ray, which is not installed "
            f"({err.name or err}); run {INSTALL_HINT}, or set loop.backend=local"
        ) from None
    return ray


def _start_hint(address: str) -> str:
    return (
        f"start a cluster with `ray start --head --port={_port(address) or DEFAULT_GCS_PORT}` "
        "on the head node (and `ray start --address=<head>:<port>` on the others), fix "
        "ray.address, or set ray.address=null to start a local Ray"
    )


def _host_port(address: str) -> tuple[str, int | None]:
    """(host, port) of ``host:port`` or ``ray://host:port``; port None when absent."""
    bare = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = bare.rpartition(":")
    if not sep:
        return bare, None
    try:
        return host.strip("[]"), int(port)
    except ValueError:
        return bare, None


def _port(address: str) -> int | None:
    return _host_port(address)[1]


def probe(address: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Raise RayBackendError unless something accepts TCP connections at ``address``
    (``host:port`` or ``ray://host:port``; ``auto`` is left to Ray, which fails fast)."""
    if address == "auto":
        return
    host, port = _host_port(address)
    if port is None:
        raise RayBackendError(
            f"ray.address={address!r} has no port; give host:port of the Ray head (GCS port "
            f"{DEFAULT_GCS_PORT} by default), ray://host:10001 for Ray Client, or auto"
        )
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise RayBackendError(
            f"no Ray cluster answers at ray.address={address!r} ({reason}); {_start_hint(address)}"
        ) from None


@dataclass(frozen=True)
class ClusterInfo:
    """The Ray session the executor runs on.

    Attributes:
        address: the cluster's address ("local" for one this process started).
        started_here: True when this process started the cluster (and should stop it).
        startup_seconds: wall seconds ``ray.init`` took (0 when the session already existed).
        resources: the cluster's total resources (``ray.cluster_resources()``).
    """

    address: str
    started_here: bool
    startup_seconds: float
    resources: dict[str, float]


def connect(cfg: RayConfig) -> ClusterInfo:
    """Join the cluster at ``cfg.address``, or start a local one sized for the actor pool
    when it is None; reuses the session when Ray is already initialised in this process.

    Raises:
        RayBackendError: Ray is not installed or the address does not answer.
    """
    ray = import_ray()
    if ray.is_initialized():
        return ClusterInfo("existing", False, 0.0, dict(ray.cluster_resources()))
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "configure_logging": True,
        "logging_level": logging.WARNING,
        "log_to_driver": True,
    }
    if cfg.address is None:
        # "local" makes Ray start its own processes even when RAY_ADDRESS points elsewhere:
        # ray.address=null promises a private local Ray.
        kwargs.update(
            address="local",
            # The actor pool and the training workers never run at once (training stops
            # the pool first), so the larger of the two sets the size.
            num_cpus=max(cfg.actors, cfg.train_workers) * cfg.num_cpus_per_actor,
            num_gpus=None if cfg.num_gpus_per_actor else 0,
        )
    else:
        probe(cfg.address)
        kwargs["address"] = cfg.address
    started = time.perf_counter()
    try:
        ray.init(**kwargs)
    except (ConnectionError, TimeoutError, RuntimeError) as err:
        where = cfg.address or "a local Ray"
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise RayBackendError(
            f"could not join Ray at {where} ({first}); {_start_hint(cfg.address or '')}"
        ) from None
    seconds = time.perf_counter() - started
    resources = dict(ray.cluster_resources())
    log.info("ray: %s in %.1f s, resources %s", cfg.address or "local start", seconds, resources)
    return ClusterInfo(cfg.address or "local", cfg.address is None, seconds, resources)
