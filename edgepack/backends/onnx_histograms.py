"""ONNX Runtime's histogram calibrators (entropy, percentile, distribution) in bounded memory and time.

ORT's HistogramCalibrater keeps every activation of every sample it is given before binning them (EfficientNet-
Lite0 at 224 px: ~40 MB a sample, 8 GB for 200 samples). Its HistogramCollector merges histograms across
``collect_data`` calls, so `histograms_in_chunks` feeds it HISTOGRAM_CHUNK samples at a time.

Merging has a cost of its own: when a later chunk reaches past a tensor's histogram, the collector adds bins of the
first chunk's width (entropy) or extends the edges with ``np.arange`` of that width (percentile). A tensor that
was near zero in the first chunk and large later asked for billions of bins: torchvision's efficientnet_v2_s
stopped with "Maximum allowed size exceeded" (an internal error), and a percentile histogram of zeros extended
to 3e5 was killed for memory. So a first pass (`seed_ranges`) finds each tensor's largest magnitude over the whole
calibration set and starts its histogram over that range: no chunk widens it, the bin count stays ORT's
``num_bins``, and the chunked histograms add up to the one ORT would build from all samples at once (entropy's
+-threshold range exactly; percentile's magnitudes from 0 instead of from the first chunk's smallest, which ORT's
merge would otherwise drop from later chunks). The pass costs one more inference per calibration sample.
"""

from __future__ import annotations

import contextlib
import time

import numpy as np

from edgepack.errors import TimeLimitReached

#: Samples whose every activation a histogram calibrator (entropy, percentile, distribution) holds at once
#: (EfficientNet-Lite0 at 224 px: ~40 MB a sample)
HISTOGRAM_CHUNK = 4


class _Chunk:
    """At most ``size`` samples of ``reader``, starting with ``first``; ``exhausted`` once the reader is."""

    def __init__(self, reader, first, size: int):
        self.reader, self.pending, self.left, self.exhausted = reader, first, size, False

    def get_next(self):
        if self.left == 0:
            return None
        item = self.pending if self.pending is not None else self.reader.get_next()
        self.pending = None
        if item is None:
            self.exhausted = True
            return None
        self.left -= 1
        return item


def largest_magnitudes(session, reader, names: set[str]) -> dict[str, np.float32]:
    """max |x| of each of ``names`` (outputs of the calibrator's augmented ``session``) over every sample of
    ``reader``, which is then rewound; tensors that are empty or not finite are left out."""
    wanted = [o.name for o in session.get_outputs() if o.name in names]
    amax: dict[str, np.float32] = {}
    while (item := reader.get_next()) is not None:
        for name, value in zip(wanted, session.run(wanted, item), strict=True):
            a = np.asarray(value)
            if a.size and a.dtype.kind == "f":
                m = np.float32(np.nanmax(np.abs(a)))
                amax[name] = max(amax.get(name, m), m)
    reader.rewind()
    return {k: v for k, v in amax.items() if np.isfinite(v)}


def seed_ranges(calibrater, reader) -> None:
    """Give ``calibrater`` (an ORT HistogramCalibrater before its first sample) a collector whose histograms
    already span each tensor's range over all of ``reader``'s samples (see the module docstring)."""
    from onnxruntime.quantization.calibrate import HistogramCollector

    collector = HistogramCollector(method=calibrater.method, symmetric=calibrater.symmetric,
                                   num_bins=calibrater.num_bins, num_quantized_bins=calibrater.num_quantized_bins,
                                   percentile=calibrater.percentile, scenario=calibrater.scenario)
    magnitudes = collector.method == "percentile" and collector.symmetric  # ORT bins |x| from 0 there
    lowest, highest = np.float32(np.inf), np.float32(-np.inf)  # no sample seen yet: any sample's min/max wins
    empty = np.empty(0, np.float32)
    for name, t in largest_magnitudes(calibrater.infer_session, reader, set(calibrater.tensors_to_calibrate)).items():
        if magnitudes:
            hist, edges = np.histogram(empty, collector.num_bins, range=(np.float32(0), t))
            collector.histogram_dict[name] = (hist, edges.astype(np.float32), lowest, highest)
        else:
            hist, edges = np.histogram(empty, collector.num_bins, range=(-t, t))
            collector.histogram_dict[name] = (hist, edges, lowest, highest, np.array(t, np.float32))
    calibrater.collector = collector


@contextlib.contextmanager
def histograms_in_chunks(size: int | None = None, deadline: float | None = None):
    """Within this context ORT's histogram calibrators take the calibration data HISTOGRAM_CHUNK (or ``size``)
    samples at a time, after the `seed_ranges` pass when the reader can be rewound: memory no longer grows with
    the sample count, nor bins with how a tensor's range grows. (MinMax keeps two scalars a tensor and needs no
    help.) Past ``deadline`` (time.monotonic()) the threshold search, which runs after the last sample, stops with
    TimeLimitReached too (at its next numpy call, see _UniformBinsNumpy): entropy's search is quadratic in the
    histogram's bins and on PP-OCRv4's detector ran 15 minutes into a 300 s accuracy search."""
    from onnxruntime.quantization import calibrate
    from onnxruntime.quantization.calibrate import HistogramCalibrater

    size = size or HISTOGRAM_CHUNK
    original, numpy_module = HistogramCalibrater.collect_data, calibrate.np

    def collect_data(self, data_reader):
        if self.collector is None and hasattr(data_reader, "rewind"):
            seed_ranges(self, data_reader)
        while True:
            first = data_reader.get_next()
            if first is None:
                return
            chunk = _Chunk(data_reader, first, size)
            original(self, chunk)
            if chunk.exhausted:
                return

    HistogramCalibrater.collect_data = collect_data
    calibrate.np = _UniformBinsNumpy(deadline)
    try:
        yield
    finally:
        HistogramCalibrater.collect_data, calibrate.np = original, numpy_module


class _UniformBinsNumpy:
    """numpy, except that np.histogram given an array of evenly spaced edges bins with the uniform fast path.

    After the first chunk ORT's collectors re-bin every tensor with the previous histogram's edges as an array,
    which numpy bins by binary search (percentile calibration of EfficientNet-Lite0 took 215 s instead of ~60 s);
    those edges are evenly spaced (np.histogram's or extended by np.arange of the same width), so the uniform
    path gives the same counts. Past ``deadline`` (time.monotonic()) every numpy call of the calibrator raises
    TimeLimitReached: the only place a long threshold search (a Python loop over the bins) can be stopped."""

    def __init__(self, deadline: float | None = None):
        self.deadline = deadline

    def __getattr__(self, name):
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise TimeLimitReached("histogram calibration stopped at the time limit")
        return getattr(np, name)

    @staticmethod
    def histogram(a, bins=10, range=None, **kwargs):  # noqa: A002 (numpy's own keyword)
        if isinstance(bins, np.ndarray) and bins.ndim == 1 and len(bins) > 2 and range is None and not kwargs:
            widths = np.diff(bins.astype(np.float64))
            if widths[0] > 0 and np.allclose(widths, widths[0], rtol=1e-4, atol=0):
                hist, _ = np.histogram(a, bins=len(bins) - 1, range=(float(bins[0]), float(bins[-1])))
                return hist, bins
        return np.histogram(a, bins=bins, range=range, **kwargs)
