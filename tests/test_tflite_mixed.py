"""Ranking and closing the set of ops a TFLite variant keeps in float (edgepack.backends.tflite_mixed)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from edgepack.backends import tflite_graph, tflite_mixed  # noqa: E402


def test_channel_nsr_sees_channels_an_outlier_starves():
    """One channel 256x the others: with one INT8 scale per tensor the small channels round to a step or two.
    The error over the scale is still under a step; the per-channel noise-to-signal ratio is near 1."""
    rng = np.random.default_rng(0)
    f = np.abs(rng.normal(size=(4, 8, 8, 16)))
    f[..., 0] *= 256
    scale = float(f.max()) / 255
    q = np.clip(np.round(f / scale) - 128, -128, 127).astype(np.int8)
    starved = tflite_mixed.channel_nsr(list(f), list(q), scale, -128)
    assert float(np.sqrt(np.mean(((q.astype(np.int64) + 128) * scale - f) ** 2)) / scale) < 0.5
    g = np.abs(rng.normal(size=(4, 8, 8, 16)))  # the same without the outlier
    scale_g = float(g.max()) / 255
    qg = np.clip(np.round(g / scale_g) - 128, -128, 127).astype(np.int8)
    healthy = tflite_mixed.channel_nsr(list(g), list(qg), scale_g, -128)
    assert starved > 0.05 and healthy < 1e-3 and starved > 100 * healthy


def test_channel_nsr_does_not_count_dead_channels():
    f = np.zeros((2, 4, 4, 3))
    f[..., 0] = 1.0
    q = np.zeros(f.shape, np.int8)
    q[..., 0] = 100
    assert tflite_mixed.channel_nsr(list(f), list(q), 0.01, 0) == pytest.approx(0.0, abs=1e-9)


def test_with_readers_follows_a_tensor_through_moves_to_the_ops_that_compute():
    graph = [("CONV_2D", ["x", "w1"], ["a"]), ("PAD", ["a", "p"], ["b"]), ("RESHAPE", ["b", "s"], ["c"]),
             ("CONV_2D", ["c", "w2"], ["d"]), ("ADD", ["a", "d"], ["e"]), ("MEAN", ["e"], ["f"])]
    assert tflite_graph.with_readers(graph, ["a"]) == ["a", "b", "e", "c", "d"]
    assert tflite_graph.with_readers(graph, ["e"]) == ["e", "f"]       # MEAN computes: the walk stops there
    assert tflite_graph.with_readers(graph, ["f"]) == ["f"]            # an output: nothing reads it
