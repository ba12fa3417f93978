"""The manifest on disk: a base file plus a log of appended segments.

Rewriting the whole of ``manifest.parquet`` to commit each appended batch costs O(N) per
batch, O(N²/batch) over a run: 0.9 s per 64-row batch at 1M rows (benchmarks/RESULTS.md,
``pool_scaling.py``). So an append commits its rows as a small segment instead, and the
segments are merged and folded into the base geometrically::

    RUN/pool/manifest.parquet                        the base: rows [0, n), generation g
    RUN/pool/manifest.d/<g>-<start>-<stop>.parquet   rows [start, stop), appended after base g

The manifest is the base followed by the *chain* of generation-g segments: starting at row
n, each time the segment that starts there and reaches furthest. Every file is written
atomically, and a file only ever supersedes others, so a process killed at any point leaves
a readable manifest:

* merging two adjacent segments writes the merged one first, then deletes the two; the
  chain already skips them (it takes the widest segment), and the next writer deletes them;
* rewriting the base (every row, e.g. after a utility column is set) bumps the generation,
  which orphans every older segment; the new base is written first, then they are deleted.

A writer merges the last two segments while the older is at most twice the newer (a binary
counter: O(log N) segments, each row rewritten O(log N) times), and folds the segments into
the base once they hold as many rows as it (each row rewritten O(1) times more). The base
alone holds every row after a writer closes or sets a column, so between stages
``manifest.parquet`` is the whole manifest that docs/architecture.md promises; while a writer
appends, read it through :func:`read_manifest` (or ``PoolStore``), which adds the segments.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from utilgen.atomic import write_bytes_atomic
from utilgen.errors import PoolError
from utilgen.pool.layout import RunLayout
from utilgen.pool.schema import conform, table_to_bytes

GENERATION_KEY = b"utilgen.manifest.generation"
_SEGMENT_NAME = re.compile(r"^(\d+)-(\d+)-(\d+)\.parquet$")
# A reader races a writer that deletes merged-away segments; it reads again this often.
_READ_ATTEMPTS = 20


@dataclass(frozen=True)
class Segment:
    """One appended segment file: rows [start, stop) after the base of ``generation``."""

    generation: int
    start: int
    stop: int
    path: Path

    @property
    def rows(self) -> int:
        return self.stop - self.start


def segment_path(run_dir: Path, generation: int, start: int, stop: int) -> Path:
    """``RUN/pool/manifest.d/<generation>-<start>-<stop>.parquet`` (zero-padded: listings
    sort in row order)."""
    return RunLayout(run_dir).segments_dir / f"{generation:08d}-{start:012d}-{stop:012d}.parquet"


def list_segments(run_dir: Path) -> list[Segment]:
    """Every segment file of ``run_dir`` (any generation), by generation then rows."""
    directory = RunLayout(run_dir).segments_dir
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = _SEGMENT_NAME.match(path.name)
        if match:
            generation, start, stop = (int(g) for g in match.groups())
            if stop > start:
                found.append(Segment(generation, start, stop, path))
    return sorted(found, key=lambda s: (s.generation, s.start, -s.stop))


def chain(segments: list[Segment], generation: int, start: int) -> list[Segment]:
    """The segments that continue a base of ``generation`` with ``start`` rows, in order."""
    widest: dict[int, Segment] = {}
    for segment in segments:
        if segment.generation == generation:
            best = widest.get(segment.start)
            if best is None or segment.stop > best.stop:
                widest[segment.start] = segment
    found = []
    while start in widest:
        found.append(widest[start])
        start = widest[start].stop
    return found


def _parse(data: bytes, source: Path, run_dir: Path) -> pa.Table:
    try:
        # Pages written without a CRC (manifests of older runs) are read unchecked.
        return pq.read_table(pa.BufferReader(data), page_checksum_verification=True)
    except (pa.ArrowException, OSError, ValueError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise PoolError(
            f"manifest {source} is unreadable ({reason}); run `utilgen pool verify {run_dir}` "
            "to see the damage, then restore the file or start a new run directory"
        ) from err


def generation_of(table: pa.Table, source: Path) -> int:
    """The generation recorded in base file ``source``'s metadata (0 for manifests that
    predate it); PoolError if it is not a number, rather than a guess that would orphan
    the segments of the real generation."""
    raw = (table.schema.metadata or {}).get(GENERATION_KEY, b"0")
    try:
        return int(raw)
    except ValueError:
        raise PoolError(
            f"manifest {source} records generation {raw!r}, not a number; run `utilgen pool "
            f"verify {source.parent.parent}`, then `utilgen run ... --repair`"
        ) from None


@dataclass
class LoadedManifest:
    """A manifest as read: the whole table, and the files it came from."""

    table: pa.Table
    generation: int
    base_rows: int
    segments: list[Segment] = field(default_factory=list)


def load_manifest(run_dir: Path) -> LoadedManifest:
    """The base and its chain of segments, conformed and joined; PoolError if unreadable.

    Each file is read into memory before it is parsed, so that a writer replacing it
    meanwhile cannot change what is being parsed.
    """
    source = RunLayout(run_dir).manifest
    for _ in range(_READ_ATTEMPTS):
        inode = source.stat().st_ino
        base = _parse(source.read_bytes(), source, run_dir)
        generation = generation_of(base, source)
        links = chain(list_segments(run_dir), generation, base.num_rows)
        try:
            parts = [_parse(s.path.read_bytes(), s.path, run_dir) for s in links]
        except FileNotFoundError:
            continue  # a writer merged these segments away meanwhile: read the new ones
        if source.stat().st_ino != inode:
            # A writer replaced the base after it was read (its rename makes a new inode)
            # and may have deleted its segments: read the new base, not a stale prefix.
            continue
        tables = [conform(base, source)]
        for segment, part in zip(links, parts, strict=True):
            if part.num_rows != segment.rows:
                raise PoolError(
                    f"manifest segment {segment.path} holds {part.num_rows} rows, its name "
                    f"says {segment.rows}; run `utilgen pool verify {run_dir}`, then "
                    f"`utilgen run ... --repair`"
                )
            tables.append(conform(part, segment.path))
        try:
            table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
        except pa.ArrowInvalid as err:
            raise PoolError(
                f"the manifest segments of {source} have other columns than it ({err}); run "
                f"`utilgen pool verify {run_dir}`, then `utilgen run ... --repair`"
            ) from err
        return LoadedManifest(table, generation, base.num_rows, links)
    raise PoolError(
        f"the manifest of {run_dir} kept changing while it was read ({_READ_ATTEMPTS} tries); "
        "read it again once the writer has finished its append"
    )


def read_manifest(run_dir: Path) -> pa.Table:
    """The manifest of ``run_dir`` (base and segments), conformed; PoolError if unreadable."""
    return load_manifest(run_dir).table


def remove_segments(run_dir: Path, up_to: int, keep: Sequence[Segment] = ()) -> None:
    """Delete every segment file of generation ``up_to`` or older that is not in ``keep``
    (the folder too, once empty). A newer segment than the base cannot come from this log
    (the base of a generation is written before its segments), so it is left for a person
    to look at. Only a lock holder may call this."""
    wanted = {s.path for s in keep}
    for segment in list_segments(run_dir):
        if segment.generation <= up_to and segment.path not in wanted:
            segment.path.unlink(missing_ok=True)
    directory = RunLayout(run_dir).segments_dir
    if directory.is_dir() and not any(directory.iterdir()):
        directory.rmdir()


def write_base(run_dir: Path, table: pa.Table, generation: int) -> None:
    """Make ``table`` the whole manifest: the base of ``generation`` (which must be newer
    than every segment's), then the segments deleted."""
    metadata = dict(table.schema.metadata or {})
    metadata[GENERATION_KEY] = str(generation).encode()
    data = table_to_bytes(table.replace_schema_metadata(metadata))
    write_bytes_atomic(RunLayout(run_dir).manifest, data)
    remove_segments(run_dir, up_to=generation)


class ManifestLog:
    """The writer's side: commits appended rows as segments, merges and folds them.

    ``table`` arguments are always the writer's whole in-memory manifest, of which the
    files on disk hold a prefix (the rows committed so far).
    """

    def __init__(self, run_dir: Path, loaded: LoadedManifest) -> None:
        self.run_dir = run_dir
        self.generation = loaded.generation
        self.base_rows = loaded.base_rows
        self.segments = list(loaded.segments)
        # segments merged away, orphaned by a newer base, or beyond a broken chain
        remove_segments(run_dir, up_to=self.generation, keep=self.segments)

    @property
    def committed(self) -> int:
        """Rows on disk: the base and its segments."""
        return self.segments[-1].stop if self.segments else self.base_rows

    def commit_rows(self, table: pa.Table) -> None:
        """Commit the rows of ``table`` beyond :attr:`committed` (one atomic write, plus
        merges that only rewrite what is already committed)."""
        start, stop = self.committed, table.num_rows
        if stop <= start:
            return
        if stop - self.base_rows >= self.base_rows:
            self.rewrite(table)  # the log would hold as much as the base: fold it in
            return
        self.segments.append(self._write_segment(table, start, stop))
        while len(self.segments) >= 2 and self.segments[-2].rows <= 2 * self.segments[-1].rows:
            older, newer = self.segments[-2], self.segments[-1]
            merged = self._write_segment(table, older.start, newer.stop)
            self.segments[-2:] = [merged]
            older.path.unlink(missing_ok=True)
            newer.path.unlink(missing_ok=True)

    def rewrite(self, table: pa.Table) -> None:
        """Write all of ``table`` as a new base (a new generation), then drop the segments."""
        write_base(self.run_dir, table, self.generation + 1)
        self.generation += 1
        self.base_rows = table.num_rows
        self.segments = []

    def _write_segment(self, table: pa.Table, start: int, stop: int) -> Segment:
        path = segment_path(self.run_dir, self.generation, start, stop)
        write_bytes_atomic(path, table_to_bytes(table.slice(start, stop - start)))
        return Segment(self.generation, start, stop, path)


__all__ = [
    "GENERATION_KEY",
    "LoadedManifest",
    "ManifestLog",
    "Segment",
    "chain",
    "generation_of",
    "list_segments",
    "load_manifest",
    "read_manifest",
    "remove_segments",
    "segment_path",
    "write_base",
]
