"""Text datasets in CSV (or TSV) and JSON Lines files: one sample per row, text and label.

Files must be UTF-8 (a byte-order mark is allowed). Cells are read as written: no value is
turned into NaN behind the user's back (a text "NA" stays a text), and every error names the
line where the offending row starts, as an editor would show it.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from utilgen.data.assemble import assemble, encode_labels, text_from_value
from utilgen.data.labelled import LabelledData
from utilgen.data.validate import require_column, require_file
from utilgen.errors import DataError

TableFormat = Literal["csv", "jsonl"]

_SUFFIX_FORMAT: dict[str, TableFormat] = {
    ".csv": "csv",
    ".tsv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}
_BOM = b"\xef\xbb\xbf"
# Byte-order marks of the encodings a spreadsheet's "Unicode text" export produces.
_OTHER_BOMS = {
    b"\xff\xfe\x00\x00": "utf-32",
    b"\x00\x00\xfe\xff": "utf-32",
    b"\xff\xfe": "utf-16",
    b"\xfe\xff": "utf-16",
}

# Articles can be longer than the csv module's default 128 KiB field limit.
csv.field_size_limit(max(csv.field_size_limit(), min(sys.maxsize, 2**31 - 1)))


def read_utf8(path: Path) -> str:
    """The file's text; non-UTF-8 bytes are reported with their byte offset and line."""
    data = path.read_bytes()
    for bom, encoding in _OTHER_BOMS.items():
        if data.startswith(bom):
            raise DataError(
                f"{path} is {encoding.upper()} (it starts with a {encoding.upper()} byte-order "
                f"mark), not UTF-8; re-encode it, e.g. `iconv -f {encoding} -t utf-8`"
            )
    start = len(_BOM) if data.startswith(_BOM) else 0
    try:
        return data[start:].decode("utf-8")
    except UnicodeDecodeError as err:
        offset = start + err.start
        line = data.count(b"\n", 0, offset) + 1
        raise DataError(
            f"{path} is not UTF-8: byte 0x{data[offset]:02x} at byte offset {offset} "
            f"(line {line}); re-encode the file as UTF-8, e.g. `iconv -f latin1 -t utf-8`"
        ) from None


Rows = list[tuple[int, dict[str, Any]]]
"""(line number where the row starts, column -> value) per data row."""


def read_csv_rows(path: Path) -> tuple[list[str], Rows]:
    """The header and the rows of a CSV file (TSV when the suffix is ``.tsv``)."""
    text = read_utf8(path)
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    rows: Rows = []
    header: list[str] | None = None
    line = 1
    try:
        for record in reader:
            start, line = line, reader.line_num + 1
            if not record or (len(record) == 1 and not record[0].strip() and header is not None):
                continue  # blank line
            if header is None:
                header = [column.strip() for column in record]
                continue
            if len(record) != len(header):
                raise DataError(
                    f"line {start} of {path} has {len(record)} fields but the header has "
                    f"{len(header)}; quote fields that contain '{delimiter}' and close every quote"
                )
            rows.append((start, dict(zip(header, record, strict=True))))
    except csv.Error as err:
        raise DataError(
            f"line {line} of {path} is not valid CSV ({err}); fix its quoting"
        ) from None
    if header is None:
        raise DataError(f"{path} is empty; it needs a header row naming the text and label columns")
    return header, rows


def read_jsonl_rows(path: Path) -> tuple[list[str], Rows]:
    """The keys seen (in first-seen order) and the rows of a JSON Lines file."""
    text = read_utf8(path)
    columns: dict[str, None] = {}
    rows: Rows = []
    # Split on "\n" only: str.splitlines would also split on U+2028, which JSON allows in strings.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(
                f"line {number} of {path} is not valid JSON ({err.msg} at column {err.colno}); "
                "fix or remove the line"
            ) from None
        except (ValueError, RecursionError) as err:
            # What json lets through: an integer of thousands of digits, arrays nested
            # thousands deep.
            reason = (
                "nested too deeply"
                if isinstance(err, RecursionError)
                else f"an integer with more than {sys.get_int_max_str_digits()} digits"
            )
            raise DataError(
                f"line {number} of {path} cannot be read as JSON ({reason}); fix or remove the line"
            ) from None
        if not isinstance(record, dict):
            raise DataError(
                f"line {number} of {path} is a JSON {type(record).__name__}, not an object; "
                'write one object per line, e.g. {"text": "...", "label": "..."}'
            )
        _require_unicode(record, f"line {number} of {path}")
        columns.update(dict.fromkeys(record))
        rows.append((number, record))
    if not rows:
        raise DataError(f"{path} is empty; write one JSON object per line with text and label")
    return list(columns), rows


def _require_unicode(record: dict[str, Any], where: str) -> None:
    """Raise if a key or string value holds a lone surrogate (``"\\ud800"``): JSON can
    escape one, but it is not a character, and no UTF-8 file (the pool's blobs, Parquet)
    can store it."""
    for key, value in record.items():
        for text in (key, value):
            if isinstance(text, str) and not _encodable(text):
                raise DataError(
                    f"{where} has a lone UTF-16 surrogate escape in {key!r}, which is not a "
                    "character; fix the \\uXXXX escape (pairs encode one character) or remove it"
                )


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


_READERS: dict[TableFormat, Callable[[Path], tuple[list[str], Rows]]] = {
    "csv": read_csv_rows,
    "jsonl": read_jsonl_rows,
}


def table_format(path: Path) -> TableFormat:
    """The format implied by a file's suffix."""
    fmt = _SUFFIX_FORMAT.get(path.suffix.lower())
    if fmt is None:
        raise DataError(
            f"cannot tell the format of {path} from its suffix; use .csv, .tsv or .jsonl, "
            "or set data.source to csv or jsonl"
        )
    return fmt


def load_table(
    path: str | Path,
    text_column: str = "text",
    label_column: str = "label",
    fmt: TableFormat | None = None,
    name: str | None = None,
) -> LabelledData:
    """Load texts and labels from a CSV/TSV or JSONL file.

    Args:
        path: the file.
        text_column, label_column: the columns (CSV header names, JSON keys) to read.
        fmt: ``"csv"`` or ``"jsonl"``; taken from the suffix when None.
        name: the dataset's name; defaults to the file's stem.

    Returns:
        Text data with ids ``<name>/<class>/<row index, 5 digits>``.
    """
    fmt = fmt or table_format(Path(path))
    file = require_file(path, fmt)
    columns, rows = _READERS[fmt](file)
    origin = str(file)
    require_column(columns, text_column, "text", origin)
    require_column(columns, label_column, "label", origin)
    for column in {text_column, label_column}:
        if columns.count(column) > 1:
            raise DataError(
                f"{origin} has {columns.count(column)} columns named {column!r}; rename all but "
                "one in the header, so that it is clear which one to read"
            )

    def row_name(i: int) -> str:
        return f"line {rows[i][0]} of {file}"

    texts = [text_from_value(row.get(text_column), row_name(i)) for i, (_, row) in enumerate(rows)]
    labels, class_names = encode_labels([row.get(label_column) for _, row in rows], row_name)
    keys = [f"{i:05d}" for i in range(len(rows))]
    return assemble(name or file.stem, "text", texts, labels, class_names, keys, origin)
