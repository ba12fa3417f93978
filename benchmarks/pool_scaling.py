"""Pool store scaling: manifest append, load and verify at growing pool sizes (issue 10).

For each size N (default 10k, 100k, 1M rows), a pool of N synthetic text samples with tiny
payloads (a few bytes each, one blob per sample) is built in a temporary run directory and
three operations are timed through the public API:

- append: the marginal cost of growing the pool. With N rows stored, ``--appends`` further
  appends of ``--batch`` rows each (the loop appends one generator batch at a time) are
  timed; reported as microseconds per appended row;
- compact: folding those appends' manifest segments into ``manifest.parquet``, which a
  writer does when it closes and whenever it sets a column (once or twice per round, so
  not per append): per stored row;
- load: ``PoolStore(run_dir).manifest()`` of all N rows, per row;
- verify: ``utilgen.pool.verify.verify_pool`` (reads and hashes every blob), per row.

The pool of size N is built with one large append (not timed), so that the benchmark does
not itself pay the quadratic cost it is looking for.

Target: the total cost of a run's appends grows linearly with the pool, i.e. the per-row
append time at the largest size is at most 2x the one at the smallest; compact, load and
verify the same. ``growth_<op>`` is per-row time at the largest size / per-row time at the smallest.

    .venv/bin/python benchmarks/pool_scaling.py [--sizes 10000,100000,1000000]

Last line ``pool_append_us_per_row=<x> pool_growth_append=<x> pool_growth_compact=<x>
pool_growth_load=<x> pool_growth_verify=<x>`` (the append time at the largest size); exit 1
when a growth exceeds 2.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from utilgen.pool import PoolStore, Sample
from utilgen.pool.verify import verify_pool
from utilgen.progress import set_quiet

TARGET_GROWTH = 2.0


def _samples(start: int, n: int) -> list[Sample]:
    """``n`` tiny synthetic text samples, ids ``start`` .. ``start + n - 1``."""
    return [
        Sample(
            id=f"synthetic/r001/{i:08d}",
            modality="text",
            label=i % 10,
            class_name=f"class{i % 10}",
            payload=f"sample {i}".encode(),
            source="synthetic",
            round=1,
            generator="benchmark",
            seed=i,
        )
        for i in range(start, start + n)
    ]


def measure(size: int, batch: int, appends: int, root: Path) -> dict[str, float]:
    """Seconds per row of append (at ``size`` stored rows), compact, load and verify."""
    run = root / f"pool-{size}"
    with PoolStore.open(run, writable=True) as store:
        store.append(_samples(0, size))
        started = time.perf_counter()
        for k in range(appends):
            store.append(_samples(size + k * batch, batch))
        append = (time.perf_counter() - started) / (appends * batch)
        rows = size + appends * batch
        started = time.perf_counter()
        store.compact()
        compact = (time.perf_counter() - started) / rows
    started = time.perf_counter()
    frame = PoolStore(run).manifest()
    load = (time.perf_counter() - started) / rows
    assert len(frame) == rows
    started = time.perf_counter()
    report = verify_pool(run)
    verify = (time.perf_counter() - started) / rows
    assert report.ok, report
    shutil.rmtree(run)
    return {"append": append, "compact": compact, "load": load, "verify": verify}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--batch", type=int, default=64, help="rows per timed append")
    parser.add_argument("--appends", type=int, default=20, help="timed appends per size")
    parser.add_argument("--dir", type=Path, default=None, help="where to build (default: tmp)")
    args = parser.parse_args()
    set_quiet(True)
    sizes = [int(s) for s in args.sizes.split(",")]
    root = Path(tempfile.mkdtemp(prefix="utilgen-pool-scaling-", dir=args.dir))
    results: dict[int, dict[str, float]] = {}
    try:
        for size in sizes:
            started = time.perf_counter()
            results[size] = measure(size, args.batch, args.appends, root)
            per = results[size]
            print(
                f"rows={size:>8} append_us_per_row={per['append'] * 1e6:9.1f} "
                f"compact_us_per_row={per['compact'] * 1e6:6.2f} "
                f"load_us_per_row={per['load'] * 1e6:7.2f} "
                f"verify_us_per_row={per['verify'] * 1e6:7.1f} "
                f"(size done in {time.perf_counter() - started:.0f} s)",
                flush=True,
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    small, large = results[min(sizes)], results[max(sizes)]
    growth = {op: large[op] / small[op] for op in ("append", "compact", "load", "verify")}
    print(
        f"pool_append_us_per_row={large['append'] * 1e6:.1f} "
        f"pool_growth_append={growth['append']:.2f} "
        f"pool_growth_compact={growth['compact']:.2f} pool_growth_load={growth['load']:.2f} "
        f"pool_growth_verify={growth['verify']:.2f}"
    )
    return 0 if all(g <= TARGET_GROWTH for g in growth.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
