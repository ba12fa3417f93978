"""Fuzzing (issue 11, item 4): CSV and JSON Lines text datasets (``data.source: csv|jsonl``).

Files are built from random rows and then broken the ways real files are: other encodings
(latin-1, cp1252, UTF-16 with BOM, UTF-8 with BOM), invalid UTF-8 bytes, truncation, empty
fields, missing, renamed or duplicated columns, wrong field counts, blank lines, huge lines,
empty files, one class only, JSON values of any type and lone surrogate escapes. Every case
must load, or fail with one DataError line. A loaded dataset must be one the pool can store:
non-empty UTF-8 texts, safe class names, unique UTF-8 ids.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fuzz_helpers import SIZES, fuzz, outcome, scratch
from hypothesis import strategies as st

from utilgen.data import LabelledData, load_table
from utilgen.data.validate import check_class_name
from utilgen.errors import DataError
from utilgen.pool import samples_from_labelled

CLASSES = ["sport", "tech", "politics", "ünï cödé", "1", "2", "10", "a.b"]

texts = st.text(min_size=1, max_size=20).filter(str.strip)  # quotes, commas, newlines, NUL...
cells = texts | st.sampled_from(["", " ", "NA", "null", "\x00", '"', "\r\n", "—"])
labels = st.sampled_from(CLASSES) | st.text(max_size=8) | st.sampled_from(["", " ", "..", "a/b"])
column_names = st.sampled_from(["text", "label", "Text", "label ", "txt", "", "text"])
# A case is a clean file plus up to two defects: with none in about a third of the cases,
# enough files load for the checks on loaded data to run.
defects = st.lists(
    st.sampled_from(["column", "row", "row", "encoding", "blank lines", "long line"]),
    max_size=2,
)
clean_rows = st.lists(
    st.tuples(texts, st.sampled_from(CLASSES[:3]) | st.sampled_from(CLASSES)).map(list),
    min_size=2,
    max_size=12,
)


@st.composite
def encoded(draw: st.DrawFn, text: str, damaged: bool) -> bytes:
    """``text`` as UTF-8, or if ``damaged``: another encoding, invalid bytes or cut short."""
    if not damaged:
        return text.encode("utf-8")
    encoding = draw(st.sampled_from(["utf-8", "utf-8-sig", "latin-1", "cp1252", "utf-16"]))
    data = text.encode(encoding, errors="replace")
    damage = draw(st.sampled_from(["none", "invalid byte", "truncate"]))
    if damage == "invalid byte" and data:
        at = draw(st.integers(0, len(data)))
        bad = draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80"]))
        data = data[:at] + bad + data[at:]
    elif damage == "truncate" and data:
        data = data[: draw(st.integers(0, len(data) - 1))]
    return data


@st.composite
def csv_files(draw: st.DrawFn) -> tuple[str, bytes]:
    header, rows, broken = ["text", "label"], draw(clean_rows), draw(defects)
    if "column" in broken:
        edit = draw(st.sampled_from(["rename", "drop", "add", "duplicate"]))
        if edit == "rename":
            header[draw(st.integers(0, 1))] = draw(column_names)
        elif edit == "drop":
            header.pop(draw(st.integers(0, 1)))
        elif edit == "add":
            header.insert(draw(st.integers(0, 2)), draw(column_names))
        else:
            header.append(draw(st.sampled_from(header)))
    for _ in range(broken.count("row")):  # a row with a missing, empty or odd field
        width = draw(st.integers(0, len(header) + 1))
        row = draw(st.lists(st.one_of(cells, labels), min_size=width, max_size=width))
        rows.insert(draw(st.integers(0, len(rows))), row)
    if "long line" in broken:
        rows.append(["x" * draw(st.integers(100_000, 300_000)), "tech"])
    suffix = draw(st.sampled_from([".csv", ".tsv"]))
    delimiter = "\t" if suffix == ".tsv" else ","
    sink = io.StringIO()
    if draw(st.booleans()):
        csv.writer(sink, delimiter=delimiter).writerows([header, *rows])
    else:  # hand-written: no quoting, as a script might produce
        sink.write("\n".join(delimiter.join(map(str, r)) for r in [header, *rows]) + "\n")
    if "blank lines" in broken:
        sink.write(draw(st.sampled_from(["\n\n", "\r\n \n", "\t\n"])))
    return suffix, draw(encoded(sink.getvalue(), "encoding" in broken))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=6,
)


@st.composite
def jsonl_files(draw: st.DrawFn) -> tuple[str, bytes]:
    lines = [
        json.dumps({"text": text, "label": label}, ensure_ascii=draw(st.booleans()))
        for text, label in draw(clean_rows)
    ]
    broken = draw(
        st.lists(
            st.sampled_from(["row", "odd", "blank", "broken", "surrogate", "encoding", "long"]),
            max_size=2,
        )
    )
    for kind in broken:
        if kind == "row":  # any value for the text or the label, maybe another key
            record = {"text": draw(cells | json_values), "label": draw(labels | json_values)}
            if draw(st.booleans()):
                record[draw(column_names)] = draw(json_values)
            line = json.dumps(record, ensure_ascii=draw(st.booleans()))
        elif kind == "odd":  # any JSON value, an object with any keys
            line = json.dumps(draw(json_values | st.dictionaries(column_names, json_values)))
        elif kind == "blank":
            line = draw(st.sampled_from(["", " ", "\t", "\r"]))
        elif kind == "broken":
            line = draw(st.text(max_size=20))
        elif kind == "surrogate":  # a lone surrogate, as \u escapes can write one
            escape = draw(st.sampled_from(["\\ud800", "\\udfff", "\\ud83d", "\\ud83d\\ude00"]))
            key = draw(st.sampled_from(["text", "label"]))
            other = "label" if key == "text" else "text"
            line = f'{{"{key}": "a{escape}", "{other}": "tech"}}'
        elif kind == "long":
            line = json.dumps({"text": "y" * draw(st.integers(100_000, 300_000)), "label": "1"})
        else:
            continue
        lines.insert(draw(st.integers(0, len(lines))), line)
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    return ".jsonl", draw(encoded(newline.join(lines), "encoding" in broken))


# -- the contract ---------------------------------------------------------------------------


def _storable(data: LabelledData) -> None:
    """What the pool and the exports rely on, for a dataset that loaded."""
    assert len(data.class_names) >= 2 and len(set(data.class_names)) == len(data.class_names)
    for name in data.class_names:
        check_class_name(name, "the loaded data")
        name.encode("utf-8")
    for text in data.items:
        assert isinstance(text, str) and text.strip()
    samples = samples_from_labelled(data, split="train")  # encodes every text as UTF-8
    assert len({s.id for s in samples}) == len(data)
    for sample in samples:
        sample.id.encode("utf-8")


def _table_case(tmp_path: Path, fmt: str) -> Callable[[tuple[str, bytes]], str]:
    def check(case: tuple[str, bytes]) -> str:
        suffix, content = case
        with scratch(tmp_path) as folder:
            path = folder / f"data{suffix}"
            path.write_bytes(content)

            def load() -> None:
                _storable(load_table(path, fmt=fmt))  # type: ignore[arg-type]

            return outcome(load, DataError)

    return check


HUGE = "x" * 8_000_000  # one 8 MB line: above every default field limit of csv and json
CSV_REGRESSIONS = [
    (".csv", b""),
    (".csv", b"text,label\n"),
    (".csv", b"\n \n"),
    (".csv", "text,label\nhé,a\nb,c\n".encode("utf-16")),  # was: "not UTF-8: byte 0xff"
    (".csv", "text,label\nhé,a\nb,c\n".encode("latin-1")),
    (".csv", b"text,text,label\na,b,c\nd,e,f\n"),  # was: the second column read silently
    (".csv", b"text,label\na,x\x85y\nb,c\n"),
    (".csv", b"text,label\na,same\nb,same\n"),  # one class
    (".csv", f"text,label\n{HUGE},a\nb,c\n".encode()),
    (".csv", f'text,label\n"{HUGE}\n{HUGE}",a\nb,c\n'.encode()),
]
JSONL_REGRESSIONS = [
    (".jsonl", b'{"text": "a", "label": "\\ud800"}\n{"text": "b", "label": "x"}\n'),
    (".jsonl", b'{"text": "\\udfff", "label": "y"}\n{"text": "b", "label": "x"}\n'),
    (".jsonl", b'{"text": "a", "label": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n"),
    (".jsonl", b'{"text": "a", "label": 1' + b"0" * 5000 + b'}\n{"text": "b", "label": 2}\n'),
    (".jsonl", '{"text": "a", "label": "x\u2028y"}\n{"text": "b", "label": "y"}\n'.encode()),
    (".jsonl", '{"text":"a","label":"x"}\n'.encode("utf-16")),
    (".jsonl", json.dumps({"text": HUGE, "label": "a"}).encode() + b'\n{"text":"b","label":"c"}'),
    (".jsonl", b'{"text": "a", "label": NaN}\n{"text": "b", "label": Infinity}\n'),
]


@pytest.mark.parametrize("size", SIZES)
def test_csv_files_load_or_fail_in_one_line(tmp_path: Path, size: int) -> None:
    counts = fuzz(
        "data: CSV/TSV files",
        csv_files(),
        _table_case(tmp_path, "csv"),
        150 * size,
        CSV_REGRESSIONS,
    )
    assert counts["ok"] > 0 and counts["DataError"] > 0


@pytest.mark.parametrize("size", SIZES)
def test_jsonl_files_load_or_fail_in_one_line(tmp_path: Path, size: int) -> None:
    counts = fuzz(
        "data: JSONL files",
        jsonl_files(),
        _table_case(tmp_path, "jsonl"),
        150 * size,
        JSONL_REGRESSIONS,
    )
    assert counts["ok"] > 0 and counts["DataError"] > 0


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("utf16.csv", "text,label\na,b\n".encode("utf-16"), "is UTF-16"),
        ("s.jsonl", b'{"text": "a\\ud800", "label": "x"}\n', "lone UTF-16 surrogate"),
        ("deep.jsonl", b'{"text": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", "nested too deeply"),
        ("int.jsonl", b'{"text": "a", "label": 1' + b"0" * 5000 + b"}", "more than 4300 digits"),
        ("dup.csv", b"text,label,label\na,b,c\n", "2 columns named 'label'"),
    ],
    ids=["utf-16", "lone surrogate", "deep json", "huge int", "duplicate column"],
)
def test_regressions_found_by_the_fuzz(
    tmp_path: Path, name: str, content: bytes, expected: str
) -> None:
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError, match=expected):
        load_table(tmp_path / name)


def test_a_huge_line_loads_in_linear_time(tmp_path: Path) -> None:
    path = tmp_path / "huge.csv"
    path.write_text(f"text,label\n{'word ' * 6_000_000},a\nshort,b\n", encoding="utf-8")
    start = time.perf_counter()
    data = load_table(path)
    assert len(data.items[0]) == 30_000_000 and data.class_names == ("a", "b")
    assert time.perf_counter() - start < 20
