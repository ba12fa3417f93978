"""Bad input for the Ray backend: Ray not installed, or ``ray.address`` where no cluster
answers. Either is one line naming the fix, exit 2, before any sample is generated."""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cli_helpers import TINY_BUILTIN, sets

from utilgen.config import load_config
from utilgen.scale import INSTALL_HINT, RayBackendError, check_backend, probe

RUN_SETS = ["task.epochs=1", "data.k_shot=5", "data.max_per_class=20", "generator.per_class=2"]


def _closed_port() -> int:
    """A local TCP port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture()
def no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``import ray`` fail as it does where Ray is not installed."""
    monkeypatch.setitem(sys.modules, "ray", None)


@pytest.mark.usefixtures("no_ray")
def test_ray_not_installed_says_how_to_install() -> None:
    with pytest.raises(RayBackendError) as err:
        check_backend(load_config(None, ["loop.backend=ray"]))
    message = str(err.value)
    assert INSTALL_HINT in message and 'pip install "utilgen[ray]"' in message
    assert "loop.backend=local" in message and "\n" not in message
    check_backend(load_config(None))  # the local backend never imports Ray


def test_unreachable_address_names_it_and_how_to_start_a_cluster() -> None:
    address = f"127.0.0.1:{_closed_port()}"
    started = time.perf_counter()
    with pytest.raises(RayBackendError) as err:
        check_backend(load_config(None, ["loop.backend=ray", f"ray.address={address}"]))
    assert time.perf_counter() - started < 10  # not Ray's minutes of retries
    message = str(err.value)
    assert address in message and "ray start --head" in message and "\n" not in message
    with pytest.raises(RayBackendError, match="ray://"):
        probe(f"ray://127.0.0.1:{_closed_port()}")
    with pytest.raises(RayBackendError, match="has no port"):
        probe("headnode")


@pytest.mark.usefixtures("quiet_one_thread")
@pytest.mark.parametrize("problem", ["not-installed", "unreachable"])
def test_run_fails_in_one_line_with_exit_2(
    problem: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    cli_error: Callable[[list[str]], str],
) -> None:
    monkeypatch.setenv("UTILGEN_CACHE_DIR", str(tmp_path / "cache"))
    backend = ["loop.backend=ray"]
    if problem == "not-installed":
        monkeypatch.setitem(sys.modules, "ray", None)
    else:
        backend.append(f"ray.address=127.0.0.1:{_closed_port()}")
    run = tmp_path / "run"
    line = cli_error(
        ["run", "digits-static", "--out", str(run), *sets([*RUN_SETS, *TINY_BUILTIN, *backend])]
    )
    expected = INSTALL_HINT if problem == "not-installed" else "ray start --head"
    assert expected in line
    # checked when the run is prepared: nothing is written
    assert not run.exists()
