"""``data``: where the real labelled data comes from and how it is split."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from utilgen.config.section import Section

DataSource = Literal["digits", "bbc-news", "imagefolder", "hf-disk", "parquet", "csv", "jsonl"]


class DataConfig(Section):
    """Where the real labelled data comes from and how it is split."""

    source: DataSource = Field(
        "digits",
        description="digits | bbc-news (bundled demos), imagefolder (DIR/<class>/<image>), "
        "hf-disk (a `datasets` dataset saved with save_to_disk), parquet, csv, jsonl.",
    )
    path: Path | None = Field(None, description="File or directory; required unless bundled.")
    text_column: str = Field("text", description="Column holding the text (csv/jsonl/parquet/hf).")
    image_column: str = Field("image", description="Column holding the image (parquet/hf).")
    label_column: str = Field("label", description="Column holding the class (name or index).")
    hf_split: str = Field(
        "train", description="Split to read when a hf-disk path is a DatasetDict."
    )
    val_fraction: float = Field(
        0.15, gt=0.0, lt=0.5, description="Share of each class for validation."
    )
    test_fraction: float = Field(0.2, gt=0.0, lt=0.5, description="Share of each class for test.")
    k_shot: int | Literal["all"] | None = Field(
        None,
        description="Real training samples kept per class; all (or null) keeps every one. "
        "A class with fewer training samples than k_shot is an error, not a silent full-data "
        "run.",
    )
    max_per_class: int | None = Field(
        None, ge=1, description="Cap on samples read per class before splitting (None: all)."
    )

    @field_validator("k_shot", mode="before")
    @classmethod
    def _k_shot_is_a_count_or_all(cls, value: Any) -> Any:
        # One message for both spellings, instead of pydantic's one per member of the union.
        if value is None or value == "all":
            return value
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(
                f"data.k_shot must be a whole number of samples per class (1 or more), all, "
                f"or null; got {value!r}"
            )
        return value

    @model_validator(mode="after")
    def _path_needed(self) -> DataConfig:
        if self.source not in ("digits", "bbc-news") and self.path is None:
            raise ValueError(f"data.path is required when data.source is {self.source!r}")
        if self.val_fraction + self.test_fraction >= 0.8:
            raise ValueError("data.val_fraction + data.test_fraction must be below 0.8")
        return self
