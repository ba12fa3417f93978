"""The run's sample pool: Parquet manifest + content-addressed blobs (docs/architecture.md).

``PoolStore`` stores ``Sample``s with their provenance; ``RunLock`` keeps one writer per run
directory; ``verify_pool`` re-hashes every blob; ``export_pool`` writes an ImageFolder,
JSONL or a ``datasets``-loadable Parquet file. ``RunLayout`` names every path of the run
directory, the pool's and the other stages' alike.
"""

from utilgen.pool.convert import (
    class_names_from_manifest,
    labelled_from_manifest,
    samples_from_labelled,
)
from utilgen.pool.export import FORMATS, export_pool, safe_file_stem, safe_folder_name
from utilgen.pool.layout import RoundLayout, RunLayout
from utilgen.pool.lock import RunLock
from utilgen.pool.payload import (
    decode_image,
    decode_item,
    decode_text,
    encode_image,
    encode_item,
    encode_text,
)
from utilgen.pool.sample import Sample, Source, Split, content_hash
from utilgen.pool.schema import COLUMNS, MANIFEST_SCHEMA, utility_column
from utilgen.pool.store import PoolStore, filter_manifest
from utilgen.pool.verify import VerifyReport, verify_pool

__all__ = [
    "COLUMNS",
    "FORMATS",
    "MANIFEST_SCHEMA",
    "PoolStore",
    "RoundLayout",
    "RunLayout",
    "RunLock",
    "Sample",
    "Source",
    "Split",
    "VerifyReport",
    "class_names_from_manifest",
    "content_hash",
    "decode_image",
    "decode_item",
    "decode_text",
    "encode_image",
    "encode_item",
    "encode_text",
    "export_pool",
    "filter_manifest",
    "labelled_from_manifest",
    "safe_file_stem",
    "safe_folder_name",
    "samples_from_labelled",
    "utility_column",
    "verify_pool",
]
