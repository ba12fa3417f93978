"""List scheduling of the demo's jobs: upward ranks, prerequisites, order, errors."""

from __future__ import annotations

import threading
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any

import pytest

from utilgen.commands.schedule import Job, results_in_order, run_jobs, upward_ranks


def _noop(x: Any = None) -> Any:
    return x


def test_upward_rank_is_cost_plus_costliest_chain_after() -> None:
    jobs = [
        Job("gen", _noop, cost=3),
        Job("a", _noop, cost=2, after=("gen",)),
        Job("b", _noop, cost=5, after=("gen",)),
        Job("c", _noop, cost=4, after=("a",)),
        Job("lone", _noop, cost=1),
    ]
    # gen -> a -> c is 3 + 2 + 4 = 9; gen -> b is 8
    assert upward_ranks(jobs) == {"gen": 9, "a": 6, "b": 5, "c": 4, "lone": 1}


@pytest.mark.parametrize(
    ("jobs", "message"),
    [
        ([Job("a", _noop), Job("a", _noop)], "unique"),
        ([Job("a", _noop, after=("nope",))], "unknown job 'nope'"),
        ([Job("a", _noop, after=("b",)), Job("b", _noop, after=("a",))], "cycle"),
    ],
)
def test_bad_graphs_are_refused(jobs: list[Job], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        upward_ranks(jobs)


class _Recording(Executor):
    """Runs each job at submission and records the order: what the scheduler starts when."""

    def __init__(self) -> None:
        self.started: list[Any] = []

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.started.append(args[0])
        future: Future[Any] = Future()
        future.set_result(fn(*args, **kwargs))
        return future


def _demo_like() -> list[Job]:
    # one seed of the demo: the generator blocks the digits runs, BBC needs nothing
    return [
        Job("real", _noop, ("real",), cost=10),
        Job("static", _noop, ("static",), cost=25, after=("gen",)),
        Job("bbc-udpo", _noop, ("bbc-udpo",), cost=225),
        Job("utilgen", _noop, ("utilgen",), cost=200, after=("gen",)),
        Job("gen", _noop, ("gen",), cost=150),
    ]


def test_critical_chain_starts_first_and_ties_keep_the_given_order() -> None:
    executor = _Recording()
    results = run_jobs(_demo_like(), executor, workers=2)
    # gen (150 + 200) before BBC (225) before utilgen, which had to wait for gen
    assert executor.started == ["gen", "bbc-udpo", "utilgen", "static", "real"]
    assert results == {k: k for k in ("real", "static", "bbc-udpo", "utilgen", "gen")}
    tie = [Job("x", _noop, ("x",)), Job("y", _noop, ("y",)), Job("z", _noop, ("z",))]
    executor = _Recording()
    run_jobs(tie, executor, workers=1)
    assert executor.started == ["x", "y", "z"]


def test_in_process_runs_in_the_same_order() -> None:
    order: list[str] = []
    jobs = [
        Job(j.key, order.append, (j.key,), j.cost, j.after) for j in _demo_like()
    ]
    run_jobs(jobs, None, workers=1)
    assert order == ["gen", "bbc-udpo", "utilgen", "static", "real"]


def test_no_job_starts_before_its_prerequisites_finish() -> None:
    lock = threading.Lock()
    events: list[tuple[str, str]] = []
    gate = threading.Event()

    def work(key: str) -> str:
        with lock:
            events.append(("start", key))
        if key == "gen":
            gate.wait(5)  # hold the generator while the other worker is free
        with lock:
            events.append(("end", key))
        return key.upper()

    jobs = [Job(k, work, (k,), j.cost, j.after) for j in _demo_like() for k in (j.key,)]
    with ThreadPoolExecutor(2) as pool:
        timer = threading.Timer(0.2, gate.set)
        timer.start()
        results = run_jobs(jobs, pool, workers=2)
        timer.join()
    assert results_in_order(jobs, results) == ["REAL", "STATIC", "BBC-UDPO", "UTILGEN", "GEN"]
    gen_end = events.index(("end", "gen"))
    for waiting in ("static", "utilgen"):
        assert events.index(("start", waiting)) > gen_end
    # the free worker did not idle: BBC ran while the generator was held
    assert events.index(("end", "bbc-udpo")) < gen_end


def test_a_failing_job_raises() -> None:
    def boom() -> None:
        raise RuntimeError("run failed")

    jobs = [Job("a", boom, cost=2), Job("b", _noop, after=("a",))]
    with ThreadPoolExecutor(2) as pool, pytest.raises(RuntimeError, match="run failed"):
        run_jobs(jobs, pool, workers=2)
    with pytest.raises(RuntimeError, match="run failed"):
        run_jobs(jobs, None, workers=1)
