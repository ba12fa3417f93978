"""Stratified splits and k-shot subsets: deterministic, disjoint, stratified, order-free."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from utilgen.config import DataConfig
from utilgen.data import (
    LabelledData,
    Splits,
    check_meta_set,
    k_shot,
    reserve_meta_set,
    split_for_config,
    stratified_split,
)
from utilgen.errors import DataError


def _data(counts: dict[str, int], order_seed: int | None = None) -> LabelledData:
    """Text data with ``counts[name]`` samples per class; optionally rows and classes shuffled."""
    names = list(counts)
    rows = [(f"{name}-{i}", name) for name in names for i in range(counts[name])]
    if order_seed is not None:
        rng = np.random.default_rng(order_seed)
        rows = [rows[i] for i in rng.permutation(len(rows))]
        names = [names[i] for i in rng.permutation(len(names))]
    return LabelledData(
        modality="text",
        items=tuple(text for text, _ in rows),
        labels=np.array([names.index(name) for _, name in rows]),
        class_names=tuple(names),
        ids=tuple(f"toy/{name}/{text}" for text, name in rows),
        name="toy",
    )


COUNTS = {"a": 100, "b": 20, "c": 3}


def _ids(splits: Splits) -> tuple[set[str], set[str], set[str]]:
    return set(splits.train.ids), set(splits.val.ids), set(splits.test.ids)


def _per_class(part: LabelledData) -> dict[str, int]:
    return {name: int(n) for name, n in zip(part.class_names, part.class_counts(), strict=True)}


def test_split_sizes_per_class_follow_the_fractions() -> None:
    splits = stratified_split(_data(COUNTS), 0.15, 0.2, seed=0)
    assert _per_class(splits.test) == {"a": 20, "b": 4, "c": 1}
    assert _per_class(splits.val) == {"a": 15, "b": 3, "c": 1}
    assert _per_class(splits.train) == {"a": 65, "b": 13, "c": 1}
    assert splits.train.class_names == splits.test.class_names == ("a", "b", "c")


def test_split_sizes_round_half_up() -> None:
    # 10 x 0.25 = 2.5: half up gives 3 (Python's round() would give 2)
    splits = stratified_split(_data({"x": 10, "y": 10}), 0.25, 0.25, seed=0)
    assert _per_class(splits.val) == _per_class(splits.test) == {"x": 3, "y": 3}


def test_splits_are_disjoint_and_cover_the_data() -> None:
    data = _data(COUNTS)
    train, val, test = _ids(stratified_split(data, 0.15, 0.2, seed=3))
    assert not (train & val or train & test or val & test)
    assert train | val | test == set(data.ids)


def test_same_seed_same_split_different_seed_different_split() -> None:
    data = _data(COUNTS)
    assert _ids(stratified_split(data, 0.15, 0.2, seed=7)) == _ids(
        stratified_split(data, 0.15, 0.2, seed=7)
    )
    assert _ids(stratified_split(data, 0.15, 0.2, seed=7)) != _ids(
        stratified_split(data, 0.15, 0.2, seed=8)
    )


def test_split_ignores_row_and_class_order_and_other_classes() -> None:
    reference = _ids(stratified_split(_data(COUNTS), 0.15, 0.2, seed=5))
    shuffled = _ids(stratified_split(_data(COUNTS, order_seed=1), 0.15, 0.2, seed=5))
    assert shuffled == reference
    # adding a class leaves the other classes' splits as they were
    more = _ids(stratified_split(_data({**COUNTS, "d": 9}), 0.15, 0.2, seed=5))
    for ref_part, more_part in zip(reference, more, strict=True):
        assert {i for i in more_part if not i.startswith("toy/d/")} == ref_part


def test_split_keeps_items_aligned_with_ids_and_labels() -> None:
    splits = stratified_split(_data(COUNTS, order_seed=2), 0.15, 0.2, seed=0)
    for part in (splits.train, splits.val, splits.test):
        for item, sample_id, label in zip(part.items, part.ids, part.labels, strict=True):
            assert sample_id == f"toy/{part.class_names[label]}/{item}"


def test_class_with_fewer_than_3_samples_is_an_error_naming_it() -> None:
    with pytest.raises(DataError, match=r"class 'rare' \(2\) has fewer than 3 samples"):
        stratified_split(_data({"common": 10, "rare": 2}), 0.15, 0.2, seed=0)


def test_k_shot_takes_k_per_class_deterministically_and_nested() -> None:
    data = _data(COUNTS)
    five = k_shot(data, 5, seed=1)
    assert _per_class(five) == {"a": 5, "b": 5, "c": 3}
    assert five.ids == k_shot(data, 5, seed=1).ids
    assert five.ids != k_shot(data, 5, seed=2).ids
    assert set(five.ids) <= set(k_shot(data, 10, seed=1).ids)
    assert set(five.ids) == set(k_shot(_data(COUNTS, order_seed=4), 5, seed=1).ids)


def test_k_shot_warns_when_a_class_is_smaller_than_k(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        out = k_shot(_data(COUNTS), 4, seed=0)
    assert _per_class(out)["c"] == 3
    assert "'c' has 3 samples, fewer than k=4" in caplog.text


def test_split_for_config_subsamples_train_only() -> None:
    data = _data(COUNTS)
    full = split_for_config(data, DataConfig(source="digits"), seed=0)
    few = split_for_config(data, DataConfig(source="digits", k_shot=1), seed=0)
    assert _per_class(few.train) == {"a": 1, "b": 1, "c": 1}
    assert set(few.train.ids) <= set(full.train.ids)
    assert few.val.ids == full.val.ids and few.test.ids == full.test.ids
    other_fractions = split_for_config(
        data, DataConfig(source="digits", val_fraction=0.3, test_fraction=0.3), seed=0
    )
    assert _per_class(other_fractions.test) == {"a": 30, "b": 6, "c": 1}


def test_k_shot_above_a_class_size_is_refused_unless_all_is_asked_for() -> None:
    data = _data(COUNTS)  # class c keeps 1 of its 3 samples for training
    with pytest.raises(DataError) as err:
        split_for_config(data, DataConfig(source="digits", k_shot=2), seed=0)
    message = str(err.value)
    assert "data.k_shot=2" in message and "class 'c' has only 1 training sample" in message
    assert "data.k_shot=all" in message and "\n" not in message
    full = split_for_config(data, DataConfig(source="digits"), seed=0)
    every = split_for_config(data, DataConfig(source="digits", k_shot="all"), seed=0)
    assert every.train.ids == full.train.ids and every.unused_train is None


def _meta_splits(per_class: int, seed: int = 0) -> tuple[Splits, Splits]:
    """(splits as split_for_config makes them, the same with ``per_class`` moved to meta)."""
    data = _data({"a": 100, "b": 60})
    cfg = DataConfig(source="digits", val_fraction=0.2, test_fraction=0.2, k_shot=5)
    before = split_for_config(data, cfg, seed)
    return before, reserve_meta_set(before, per_class, seed)


def test_meta_set_is_reserved_from_validation_only() -> None:
    """The held-out meta set: ``per_class`` of each class's validation samples, gone from
    val, never in train (what the weighted model is fitted on) or test."""
    before, after = _meta_splits(4)
    assert after.meta is not None
    meta = set(after.meta.ids)
    assert _per_class(after.meta) == {"a": 4, "b": 4}
    assert meta <= set(before.val.ids)
    assert not meta & set(after.val.ids)
    assert set(after.val.ids) | meta == set(before.val.ids)
    assert not meta & set(after.train.ids) and not meta & set(after.test.ids)
    assert after.train == before.train and after.test == before.test
    assert after.unused_train == before.unused_train
    check_meta_set(after)  # disjoint: no error


def test_meta_set_is_seeded_and_nested() -> None:
    _, first = _meta_splits(4)
    _, again = _meta_splits(4)
    _, smaller = _meta_splits(2)
    _, other_seed = _meta_splits(4, seed=1)
    assert first.meta is not None and again.meta is not None and smaller.meta is not None
    assert first.meta.ids == again.meta.ids and first.val.ids == again.val.ids
    assert set(smaller.meta.ids) < set(first.meta.ids)
    assert other_seed.meta is not None and other_seed.meta.ids != first.meta.ids


def test_validation_too_small_for_the_meta_set_names_both_keys() -> None:
    before, _ = _meta_splits(1)
    smallest = min(_per_class(before.val).values())  # b: 60 * 0.2 = 12
    reserve_meta_set(before, smallest - 1, 0)  # leaves one: fine
    with pytest.raises(DataError) as err:
        reserve_meta_set(before, smallest, 0)
    message = str(err.value)
    assert "\n" not in message
    assert f"valuation.meta_weight.meta_per_class={smallest}" in message
    assert f"at most {smallest - 1}" in message and "data.val_fraction" in message


def test_a_meta_set_sharing_an_id_with_train_is_refused() -> None:
    before, after = _meta_splits(2)
    leaky = Splits(train=before.train, val=after.val, test=before.test, meta=before.train)
    with pytest.raises(DataError, match=r"shares 10 sample id.* with the train split"):
        check_meta_set(leaky)
