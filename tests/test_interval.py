"""The quality budget's bootstrap interval (edgepack.tasks.interval): each task's resampled value reproduces its
own metric on every sample, and the interval widens with fewer samples and says when it crosses the limit."""

from __future__ import annotations

import numpy as np
import pytest

from edgepack.tasks import budgets
from edgepack.tasks.classify import Classify
from edgepack.tasks.detect import Detect, coco_map, map50_resampler
from edgepack.tasks.generic import Generic
from edgepack.tasks.interval import budget_interval
from edgepack.tasks.segment import Segment


def _logits(n: int, flip: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    ref = rng.normal(size=(n, 5)).astype(np.float32)
    got = ref.copy()
    swap = rng.random(n) < flip   # INT8 swaps the top two classes of these samples
    top2 = np.argsort(ref, 1)[:, -2:]
    for i in np.flatnonzero(swap):
        got[i, top2[i, 1]], got[i, top2[i, 0]] = ref[i, top2[i, 0]], ref[i, top2[i, 1]]
    return ref, got, ref.argmax(1)


def test_classify_resampled_values_are_its_metrics_on_every_sample():
    ref, got, y = _logits(300, 0.05)
    task = Classify()
    q = task.quality(ref, got, y)
    every = np.arange(300)
    assert task.resampled(ref, got, y, "agreement")(every) == pytest.approx(q["agreement"], abs=1e-4)
    assert task.resampled(ref, got, y, "accuracy_drop_points")(every) == pytest.approx(q["accuracy_drop"], abs=0.01)
    assert task.resampled(ref, got, None, "accuracy_drop_points") is None   # no labels, no accuracy


def test_interval_narrows_with_samples_and_flags_a_verdict_it_cannot_settle():
    task = Classify()
    small, large = _logits(100, 0.04), _logits(4000, 0.04)
    widths, found = [], {}
    for name, (ref, got, y) in (("small", small), ("large", large)):
        q = task.quality(ref, got, y)
        row = task.quality_budget(q, {"min_agreement": 0.95})
        found[name] = budget_interval(task, ref, got, y, row, len(ref))
        assert found[name]["low"] <= q["agreement"] <= found[name]["high"]
        widths.append(found[name]["high"] - found[name]["low"])
    assert widths[1] < widths[0] / 3   # sqrt(40) narrower, give or take
    assert found["small"]["crosses_limit"] and not found["large"]["crosses_limit"]
    ref, got, y = small
    again = budget_interval(task, ref, got, y, task.quality_budget(task.quality(ref, got, y),
                                                                   {"min_agreement": 0.95}), 100)
    assert again == found["small"]   # seeded: the same interval every time


def test_segment_resampled_drop_is_its_miou_drop():
    rng = np.random.default_rng(2)
    ref = rng.normal(size=(12, 3, 8, 8)).astype(np.float32)
    got = ref + rng.normal(scale=0.6, size=ref.shape).astype(np.float32)
    truth = list(ref.argmax(1))
    seg = Segment()
    for y in (truth, None):
        q = seg.quality(ref, got, y)
        value = seg.resampled(ref, got, y, "miou_drop_points")(np.arange(12))
        assert value == pytest.approx(q["miou_drop"], abs=0.01) and q["miou_drop"] > 0
    assert seg.resampled(ref, got, truth, "agreement") is None


def test_detect_resampler_reproduces_coco_map_and_counts_repeated_images():
    rng = np.random.default_rng(3)
    truth, found = [], []
    for _ in range(20):
        boxes = rng.uniform(0, 80, (3, 2)).repeat(2, 1) + np.array([0, 0, 15, 15])
        classes = rng.integers(0, 2, 3)
        truth.append({"boxes": boxes.astype(np.float32), "classes": classes})
        jitter = boxes + rng.normal(scale=3, size=boxes.shape)
        found.append({"boxes": jitter, "scores": rng.uniform(0.3, 1, 3), "classes": classes})
    metric = map50_resampler(truth, found, 2)
    assert metric(np.arange(20)) == pytest.approx(coco_map(truth, found, 2)["map50"], abs=0.01)
    idx = np.array([0, 0, 1, 5, 5, 5, 7])
    twice = map50_resampler([truth[i] for i in idx], [found[i] for i in idx], 2)
    assert metric(idx) == pytest.approx(twice(np.arange(len(idx))), abs=1e-9)
    assert map50_resampler([{"boxes": np.zeros((0, 4)), "classes": np.zeros(0)}], found[:1], 2) is None


def test_detect_budget_interval_contains_its_drop():
    det = Detect()
    rng = np.random.default_rng(4)
    n, k = 40, 6
    boxes = np.concatenate([rng.uniform(0, 60, (n, k, 2)).repeat(2, -1) + np.array([0, 0, 20, 20])], 0)
    scores = rng.uniform(0, 1, (n, k, 2)).astype(np.float32)
    ref = [boxes.astype(np.float32), scores]
    got = [boxes + rng.normal(scale=2.5, size=boxes.shape).astype(np.float32), scores]
    q = det.quality(ref, got, None)
    row = det.quality_budget(q, {"max_map_drop": 1.0})
    found = budget_interval(det, ref, got, None, row, n)
    assert found["resamples"] == 200 and found["low"] <= q["map50_drop"] <= found["high"]


def test_no_interval_for_generic_models_or_without_a_budget():
    ref, got, _ = _logits(20, 0.1)
    assert budget_interval(Generic(), ref, got, None, budgets.row("x", 1.0, 2.0, "<="), 20) is None
    assert budget_interval(Classify(), ref, got, None, None, 20) is None


def test_the_device_judges_quality_only_where_its_few_samples_settle_the_budget():
    """When device and host INT8 disagree, the device's figure over its few samples (8 by default) judges the
    quality budget only if its interval does not cross the limit; otherwise the host's figure keeps judging and
    the device's is kept beside it, with a warning saying why."""
    from types import SimpleNamespace

    from edgepack.stages import device

    ref, got, _ = _logits(8, 0.0, seed=5)
    got[0] = ref[0][::-1]   # the device's INT8 flips one sample of eight: 0.875, Wilson 0.53-0.98
    task = Classify()
    rec = {"samples": 8, "agreement_with_host": {"int8": {"top1": 0.875}},
           "quality_on_device": task.quality(ref, got, None)}
    for limit, judged_by_device in ((0.8, False), (0.5, True)):
        warned = []
        ctx = SimpleNamespace(task=task, warn=warned.append,
                              config=SimpleNamespace(min_agreement=None, max_accuracy_drop=None),
                              target=SimpleNamespace(min_agreement=limit, max_accuracy_drop=1.0,
                                                     latency_budget_kind="measured-host"))
        val = {"budgets": [budgets.row("agreement", 0.96, limit, ">=")], "samples": 500}
        # the device stage runs every output: {precision: [output, ...]} (an array here once made the interval
        # None for every real build, so 8 device samples judged a 0.95 agreement budget alone)
        device._judge(ctx, "onnx", val, rec, {}, {"fp32": [ref], "int8": [got]}, None)
        row = val["budgets"][0]
        if judged_by_device:   # 0.53-0.98 is all above 0.5: the device settles it
            assert row["kind"] == "emulated-device, 8 samples" and row["value"] == 0.875
            assert "judges the device's figure" in warned[-1]
        else:
            assert row["value"] == 0.96 and "kind" not in row and row["device"]["value"] == 0.875
            assert row["device"]["interval"]["low"] < 0.8 <= row["device"]["interval"]["high"]
            assert "cannot settle the budget" in warned[-1] and "500 samples" in warned[-1]


def test_agreement_gets_wilsons_interval_which_does_not_collapse_when_all_agree():
    from edgepack.tasks.interval import wilson

    low, high = wilson(1.0, 8)
    assert high == 1.0 and 0.67 < low < 0.68   # 8 of 8 agree: still consistent with 0.68
    ref, _, _ = _logits(8, 0.0)
    row = budgets.row("agreement", 1.0, 0.95, ">=")
    found = budget_interval(Classify(), ref, ref.copy(), None, row, 8)
    assert found["method"] == "wilson" and found["crosses_limit"] and found["high"] == 1.0


def test_accuracy_drop_gets_newcombes_paired_interval_which_does_not_collapse():
    """30 texts on which INT8 changed no prediction printed '0.00 to 0.00' (a bootstrap of all-zero differences);
    30 samples cannot rule out a drop of about 11 points."""
    from edgepack.tasks.interval import newcombe_paired

    def table(a, b, c, d):   # both right, FP32 only, INT8 only, neither
        return (np.array([1] * (a + b) + [0] * (c + d), bool), np.array([1] * a + [0] * b + [1] * c + [0] * d, bool))

    # Fagerland, Lydersen and Laake (2013)'s example (Bentur et al.): Newcombe's square-and-add -0.507 to -0.026
    assert newcombe_paired(*table(1, 1, 7, 12)) == pytest.approx((-0.507, -0.026), abs=6e-4)
    ref, _, _ = _logits(30, 0.0, seed=3)
    y = ref.argmax(1)
    y[:4] = (y[:4] + 1) % 5   # 26 of 30 right in both
    task = Classify()
    q = task.quality(ref, ref.copy(), y)
    row = task.quality_budget(q, {"max_accuracy_drop": 1.0})
    assert row["name"] == "accuracy_drop_points" and row["value"] == 0
    found = budget_interval(task, ref, ref.copy(), y, row, 30)
    assert found["method"] == "newcombe paired score"
    assert -12 < found["low"] < -5 and 5 < found["high"] < 12 and found["crosses_limit"]
    # a real drop: the interval sits around it and narrows with samples
    ref, got, y = _logits(2000, 0.05, seed=4)
    q = task.quality(ref, got, y)
    found = budget_interval(task, ref, got, y, task.quality_budget(q, {"max_accuracy_drop": 1.0}), 2000)
    assert found["low"] < q["accuracy_drop"] < found["high"] and found["high"] - found["low"] < 4
