"""Every backend in edgepack.backends.BACKENDS honours the contract (edgepack.backends.base), and a missing optional
dependency is a usage error with the pip command, not an internal error."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import numpy as np
import pytest

from edgepack import backends
from edgepack.errors import InputError


@pytest.mark.parametrize("fmt", sorted(backends.BACKENDS))
def test_backend_provides_the_contract(fmt):
    module = backends.get(fmt)
    for name in ("Runner", "io_details", "float_ops"):
        assert callable(getattr(module, name)), f"{fmt} backend lacks {name}"
    for method in ("run", "run_samples"):
        assert callable(getattr(module.Runner, method))


def test_onnx_backend_runs_and_describes(tmp_path):
    import toy_models

    onnx_backend = backends.get("onnx")
    path = tmp_path / "m.onnx"
    onnx_backend.export(toy_models.tiny_cnn().eval(), (1, 3, 32, 32), path, opset=17)
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    out = onnx_backend.Runner(path, threads=1).run_samples(x)
    assert out.shape[0] == 3 and out.ndim == 2
    io = onnx_backend.io_details(path)
    assert io["inputs"][0]["name"] == "input" and io["outputs"]
    assert all(op.split(":")[0] in ("Conv", "Gemm", "MatMul") for op in onnx_backend.float_ops(path))


def test_missing_optional_dependency_is_a_usage_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorflow" else real(name, *a))
    with pytest.raises(InputError) as exc:
        backends.get("tflite")
    assert exc.value.exit_code == 2 and "pip install 'edgepack[tflite]'" in exc.value.hint


def test_cli_says_which_extra_to_install_when_tensorflow_is_missing(tmp_path, tiny_data):
    """A build for a TFLite target in an environment without tensorflow (hidden by a stub finder): exit 2 + hint."""
    stub = tmp_path / "sitecustomize.py"
    stub.write_text("import importlib.abc, sys\n"
                    "class _Hide(importlib.abc.MetaPathFinder):\n"
                    "    def find_spec(self, name, path=None, target=None):\n"
                    "        if name.split('.')[0] == 'tensorflow':\n"
                    "            raise ModuleNotFoundError(name)\n"
                    "sys.meta_path.insert(0, _Hide())\n")
    env_path = f"{tmp_path}:{':'.join(sys.path)}"
    res = subprocess.run([sys.executable, "-m", "edgepack.cli", "build", "toy_models:tiny_cnn", "--target",
                          "android-arm64", "--input-shape", "1,3,32,32", "--calib", str(tiny_data["calib"]),
                          "--out", str(tmp_path / "b")], capture_output=True, text=True, timeout=600,
                         env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"})
    assert res.returncode == 2, res.stderr[-2000:]
    assert "pip install 'edgepack[tflite]'" in res.stderr and "Traceback" not in res.stderr


def test_int8_for_another_isa_is_validated_with_exact_integer_arithmetic(tmp_path, monkeypatch):
    """An INT8 ONNX model for an ARM device, built on x86, keeps 8-bit weights and carries "reference" arithmetic:
    every host runner then leaves the QDQ pairs unfused (what the device computes, never this host's possibly
    saturating u8 x s8 kernels); host latency asks for the native kernels explicitly. For this host's own ISA
    the model runs natively, with 7-bit weights only where this host's kernels saturate."""
    import onnx
    import toy_models

    from edgepack.backends import onnx_quantize

    onnx_backend = backends.get("onnx")
    fp32 = tmp_path / "m.onnx"
    onnx_backend.export(toy_models.tiny_cnn().eval(), (1, 3, 32, 32), fp32, opset=17)
    calib = np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32)
    monkeypatch.setattr(onnx_quantize, "host_arch", lambda: "x86_64")
    monkeypatch.setattr(onnx_backend, "host_arch", lambda: "x86_64")
    for saturates in (True, False):
        monkeypatch.setattr(onnx_quantize, "host_saturates", lambda s=saturates: s)
        assert onnx_quantize.int8_plan("aarch64") == {"reduce_range": False, "arithmetic": "reference",
                                                      "target_arch": "aarch64"}
        assert onnx_quantize.int8_plan("x86_64") == {"reduce_range": saturates, "arithmetic": "native",
                                                     "target_arch": "x86_64"}
    arm, x86 = tmp_path / "arm.onnx", tmp_path / "x86.onnx"
    assert onnx_quantize.quantize_onnx(fp32, arm, calib, target_arch="aarch64")["arithmetic"] == "reference"
    assert onnx_quantize.quantize_onnx(fp32, x86, calib, target_arch="x86_64")["arithmetic"] == "native"
    props = {p.key: p.value for p in onnx.load(str(arm)).metadata_props}
    assert props[onnx_backend.ARITHMETIC_KEY] == "reference"

    assert onnx_backend.Runner(arm).arithmetic == "reference" and onnx_backend.Runner(x86).arithmetic == "native"
    assert onnx_backend.Runner(arm, arithmetic="native").arithmetic == "native"

    def ops(arithmetic):
        seen = tmp_path / f"{arithmetic}_seen.onnx"
        onnx_backend.session(arm, 1, arithmetic, optimized_path=seen)
        return {n.op_type for n in onnx.load(str(seen)).graph.node}

    assert "QLinearConv" in ops("native") and "QLinearConv" not in ops("reference")
    assert "DequantizeLinear" in ops("reference")
    x = calib[:2]
    ref = onnx_backend.Runner(arm, arithmetic="reference").run_samples(x)
    np.testing.assert_allclose(onnx_backend.Runner(arm).run_samples(x), ref)
    monkeypatch.setattr(onnx_backend, "host_arch", lambda: "aarch64")  # on its own device: its own kernels
    assert onnx_backend.Runner(arm).arithmetic == "native"


def test_compacted_int8_file_is_smaller_and_computes_the_same_numbers(tmp_path, monkeypatch):
    """compact_qdq renames only what the quantizer made up: the file shrinks, every output is bit-identical in
    both arithmetics, ORT fuses the same kernels, and the names people and edgepack diagnose use survive (the
    graph's inputs and outputs, the activations QuantizeLinear reads, compute nodes)."""
    import onnx
    import toy_models

    from edgepack.backends import onnx_quantize

    onnx_backend = backends.get("onnx")
    fp32 = tmp_path / "m.onnx"
    onnx_backend.export(toy_models.tiny_cnn().eval(), (1, 3, 32, 32), fp32, opset=17)
    calib = np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32)
    packed = tmp_path / "packed.onnx"
    info = onnx_quantize.quantize_onnx(fp32, packed, calib, target_arch="aarch64")
    model = onnx.load(str(packed))
    raw = tmp_path / "raw.onnx"  # the same recipe without the pass: the quantizer's own names
    monkeypatch.setattr(onnx_quantize, "compact_qdq", lambda m: 0)
    onnx_quantize.quantize_onnx(fp32, raw, calib, target_arch="aarch64")
    long = onnx.load(str(raw))
    assert info["compacted_bytes"] > 0 and packed.stat().st_size < raw.stat().st_size
    assert any("_quantized" in t.name for t in long.graph.initializer)
    assert not any("_quantized" in t.name for t in model.graph.initializer) and not model.graph.value_info
    # the Conv weights' and int32 biases' all-zero zero points are gone (optional: 0 when absent); the Gemm's stay
    def const_dqs(m):
        inits, reader = {t.name for t in m.graph.initializer}, {t: n.op_type for n in m.graph.node for t in n.input}
        return [(reader[n.output[0]], len(n.input)) for n in m.graph.node
                if n.op_type == "DequantizeLinear" and n.input[0] in inits]

    assert {k for k, _ in const_dqs(long)} == {"Conv", "Gemm"} and all(n == 3 for _, n in const_dqs(long))
    assert sorted(const_dqs(model)) == sorted((k, 2 if k == "Conv" else 3) for k, _ in const_dqs(long))
    read = {t for n in model.graph.node for t in n.input}
    assert all(t.name in read for t in model.graph.initializer)
    # every Conv's bias scale is the Mul of its input and weight scales that ORT folds at load (one vector less)
    convs = [n for n in long.graph.node if n.op_type == "Conv" and len(n.input) == 3]
    products = [n for n in model.graph.node if n.op_type == "Mul"
                and all(i in {t.name for t in model.graph.initializer} for i in n.input)]
    assert convs and len(products) == len(convs)
    onnx.checker.check_model(model)
    x = calib[:3]
    for arithmetic in ("native", "reference"):
        np.testing.assert_array_equal(onnx_backend.Runner(packed, arithmetic=arithmetic).run_samples(x),
                                      onnx_backend.Runner(raw, arithmetic=arithmetic).run_samples(x))
    assert onnx_quantize._census(packed) == onnx_quantize._census(raw)
    assert [i.name for i in model.graph.input] == [i.name for i in long.graph.input]
    assert [o.name for o in model.graph.output] == [o.name for o in long.graph.output]

    def kept(m):
        return ({n.input[0] for n in m.graph.node if n.op_type == "QuantizeLinear"},
                sorted(n.name for n in m.graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear")
                       and n not in products))

    assert kept(model) == kept(long)


def test_histogram_calibration_holds_a_bounded_number_of_samples(tmp_path, monkeypatch):
    """Entropy/percentile calibration feeds ORT's histogram calibrator HISTOGRAM_CHUNK samples at a time (its
    collector merges histograms across calls), so memory does not grow with the calibration set."""
    import toy_models
    from onnxruntime.quantization.calibrate import HistogramCalibrater

    from edgepack.backends import onnx_histograms, onnx_quantize

    held = []
    original = HistogramCalibrater.collect_data

    def counting(self, reader):
        n = 0

        class Counted:
            def get_next(self_inner):
                nonlocal n
                item = reader.get_next()
                n += item is not None
                return item

        original(self, Counted())
        held.append(n)

    monkeypatch.setattr(HistogramCalibrater, "collect_data", counting)
    monkeypatch.setattr(onnx_histograms, "HISTOGRAM_CHUNK", 4)
    onnx_backend = backends.get("onnx")
    fp32 = tmp_path / "m.onnx"
    onnx_backend.export(toy_models.tiny_cnn().eval(), (1, 3, 32, 32), fp32, opset=17)
    calib = np.random.default_rng(0).standard_normal((10, 3, 32, 32)).astype(np.float32)
    with onnx_histograms.histograms_in_chunks(4):
        pass  # the context restores ORT's method
    assert HistogramCalibrater.collect_data is counting
    onnx_quantize.quantize_onnx(fp32, tmp_path / "q.onnx", calib, method="percentile")
    assert held == [4, 4, 2]
    assert HistogramCalibrater.collect_data is counting
    out = onnx_backend.Runner(tmp_path / "q.onnx").run_samples(calib[:2])
    ref = onnx_backend.Runner(fp32).run_samples(calib[:2])
    assert np.corrcoef(out.ravel(), ref.ravel())[0, 1] > 0.9


@pytest.mark.parametrize("method", ["percentile", "entropy"])
def test_histograms_keep_their_bins_when_later_samples_reach_further(tmp_path, monkeypatch, method):
    """A tensor that is constant in the first chunk (an all-zero image: the conv gives its bias) and 1000x larger
    later: ORT's chunk merge widened its histogram by bins of the first chunk's width (about 2 million here;
    torchvision efficientnet_v2_s: "Maximum allowed size exceeded", exit 70). The seeding pass starts every
    histogram over the tensor's whole range, so ORT's 2048 bins are all it ever has, and the range covers the
    large samples."""
    import toy_models
    from onnxruntime.quantization.calibrate import HistogramCollector

    from edgepack.backends import onnx_quantize

    bins = {}
    original = HistogramCollector.compute_collection_result

    def spy(self):
        bins.update({k: len(v[0]) for k, v in self.histogram_dict.items()})
        return original(self)

    monkeypatch.setattr(HistogramCollector, "compute_collection_result", spy)
    onnx_backend = backends.get("onnx")
    fp32 = tmp_path / "m.onnx"
    onnx_backend.export(toy_models.tiny_cnn().eval(), (1, 3, 32, 32), fp32, opset=17)
    calib = np.random.default_rng(0).standard_normal((10, 3, 32, 32)).astype(np.float32) * 1000
    calib[:4] = 0
    onnx_quantize.quantize_onnx(fp32, tmp_path / "q.onnx", calib, method=method)
    assert bins and len(set(bins.values())) == 1 and max(bins.values()) <= 2048, bins  # ORT's num_bins, unwidened
    out = onnx_backend.Runner(tmp_path / "q.onnx").run_samples(calib[4:6])
    ref = onnx_backend.Runner(fp32).run_samples(calib[4:6])
    assert np.corrcoef(out.ravel(), ref.ravel())[0, 1] > 0.9


def test_histogram_rebinning_takes_numpys_uniform_path_only_for_even_edges():
    from edgepack.backends.onnx_histograms import _UniformBinsNumpy

    rng = np.random.default_rng(0)
    a = np.abs(rng.standard_normal(200_000)).astype(np.float32)
    _, even = np.histogram(a, bins=256)
    fast, edges = _UniformBinsNumpy.histogram(a * 0.9, bins=even.astype(np.float32))
    exact, _ = np.histogram(a * 0.9, bins=even.astype(np.float32))
    assert edges.shape == even.shape and fast.sum() == exact.sum()
    assert np.abs(fast - exact).sum() <= 0.001 * exact.sum()  # float rounding at bin edges only
    uneven = np.array([0.0, 0.1, 0.5, 4.0], np.float32)
    np.testing.assert_array_equal(_UniformBinsNumpy.histogram(a, bins=uneven)[0], np.histogram(a, bins=uneven)[0])
    assert _UniformBinsNumpy().float32 is np.float32


def test_histogram_calibration_stops_at_its_deadline(tmp_path):
    """The accuracy search's time limit bounds one trial too: calibration past its deadline raises
    TimeLimitReached before the next sample (or chunk of samples, for the histogram methods)."""
    import time

    import toy_models

    from edgepack.backends import onnx_quantize
    from edgepack.errors import TimeLimitReached

    fp32 = tmp_path / "m.onnx"
    backends.get("onnx").export(toy_models.tiny_cnn().eval(), (1, 3, 32, 32), fp32, opset=17)
    calib = np.random.default_rng(0).standard_normal((10, 3, 32, 32)).astype(np.float32)
    with pytest.raises(TimeLimitReached):
        onnx_quantize.quantize_onnx(fp32, tmp_path / "q.onnx", calib, method="percentile",
                                    deadline=time.monotonic() - 1)
    assert not (tmp_path / "q.onnx").exists()
    with pytest.raises(TimeLimitReached):
        onnx_quantize.quantize_onnx(fp32, tmp_path / "q.onnx", calib, method="minmax", deadline=time.monotonic() - 1)
    onnx_quantize.quantize_onnx(fp32, tmp_path / "p.onnx", calib, method="percentile",
                                deadline=time.monotonic() + 600)
    assert (tmp_path / "p.onnx").is_file()



def test_entropy_threshold_search_stops_at_the_deadline(tmp_path, monkeypatch):
    """The entropy method's threshold search runs after the last calibration sample and took no deadline: on
    PP-OCRv4's detector one trial ran 15 minutes into a 300 s search. It now stops inside the search."""
    from types import SimpleNamespace

    import toy_models
    from onnxruntime.quantization.calibrate import HistogramCollector

    from edgepack.backends import onnx_histograms, onnx_quantize
    from edgepack.errors import TimeLimitReached

    fp32 = tmp_path / "m.onnx"
    backends.get("onnx").export(toy_models.tiny_cnn().eval(), (1, 3, 32, 32), fp32, opset=17)
    calib = np.random.default_rng(0).standard_normal((6, 3, 32, 32)).astype(np.float32)
    clock, real, searched = {"now": 0.0}, HistogramCollector.get_entropy_threshold, []

    def slow(self, histogram, bins):  # the threshold search is where the time goes: past the deadline in it
        searched.append(1)
        clock["now"] = 100.0
        return real(self, histogram, bins)

    monkeypatch.setattr(HistogramCollector, "get_entropy_threshold", slow)
    for module in (onnx_quantize, onnx_histograms):
        monkeypatch.setattr(module, "time", SimpleNamespace(monotonic=lambda: clock["now"]))
    with pytest.raises(TimeLimitReached):
        onnx_quantize.quantize_onnx(fp32, tmp_path / "q.onnx", calib, method="entropy", deadline=50.0)
    assert len(searched) == 1 and HistogramCollector.get_entropy_threshold is slow  # stopped; patch undone

def _dynamic_opset12_model(path):
    """A tiny ONNX file as PaddleOCR exports them: opset 12, symbolic N/H/W, Conv + Clip + Sigmoid."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w")
    lo, hi = numpy_helper.from_array(np.float32(0), "lo"), numpy_helper.from_array(np.float32(6), "hi")
    w2 = numpy_helper.from_array(rng.normal(size=(1, 4, 1, 1)).astype(np.float32), "w2")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Clip", ["c", "lo", "hi"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["s"]), helper.make_node("Sigmoid", ["s"], ["p"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "h", "w"])],
                              [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["n", 1, "h", "w"])],
                              [w, lo, hi, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)])
    model.ir_version = 7
    onnx.save(model, str(path))


def test_an_onnx_source_gets_a_fixed_shape_and_an_opset_that_takes_per_channel_int8(tmp_path):
    """PP-OCR's detector ships at opset 12 with dynamic NCHW: QDQ per-channel weights need DequantizeLinear's
    axis (opset 13), and onnx2tf / onnxslim want static shapes. The FP32 outputs must not change."""
    import onnx
    import onnxruntime as ort

    from edgepack.backends import onnx as onnx_backend

    src, dst = tmp_path / "dyn.onnx", tmp_path / "fixed.onnx"
    _dynamic_opset12_model(src)
    done = onnx_backend.prepare_source(src, dst, input_shape=(1, 3, 8, 8), opset=17)
    assert done == {"pinned_dims": [0, 2, 3], "opset_from": 12, "opset_to": 17}
    assert onnx_backend.input_shape(dst) == (1, 3, 8, 8)
    assert [o.version for o in onnx.load(str(dst)).opset_import if o.domain == ""] == [17]
    x = np.random.default_rng(1).normal(size=(1, 3, 8, 8)).astype(np.float32)
    ref = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)
    again = onnx_backend.prepare_source(dst, tmp_path / "same.onnx", input_shape=(1, 3, 8, 8), opset=17)
    assert again == {"pinned_dims": [], "opset_from": None, "opset_to": None}   # a ready model is left alone


def test_exported_outputs_are_named_after_what_the_model_returns(tmp_path):
    """One output is "logits"; several were "logits", "28", ... (MTCNN's box regression called logits): they are
    output0, output1, ..., or a dict's keys (torchvision segmentation: out, aux)."""
    import onnx
    import torch

    class Heads(torch.nn.Module):
        def __init__(self, as_dict: bool):
            super().__init__()
            self.conv, self.as_dict = torch.nn.Conv2d(3, 4, 1), as_dict

        def forward(self, x):
            y = self.conv(x)
            return {"out": y, "aux": y.relu()} if self.as_dict else (y, (y.relu(), y.sigmoid()))

    onnx_backend = backends.get("onnx")
    for module, want in ((Heads(True), ["out", "aux"]), (Heads(False), ["output0", "output1", "output2"]),
                         (torch.nn.Conv2d(3, 4, 1), ["logits"])):
        path = tmp_path / "m.onnx"
        onnx_backend.export(module.eval(), (1, 3, 8, 8), path, opset=17)
        assert [o.name for o in onnx.load(str(path)).graph.output] == want


def test_an_exporter_fallback_prints_nothing_without_debug(tmp_path, capfd):
    """A model the legacy exporter gives up on (adaptive pooling to 3 x 3 from 16 x 16) printed its whole TorchScript
    graph from C++ on stdout, then the torch.export exporter's logged tracebacks on stderr, on a build that then
    succeeded."""
    import torch
    from torch import nn

    from edgepack.backends import onnx as onnx_backend

    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Mish(), nn.AdaptiveAvgPool2d((3, 3)), nn.Flatten(),
                          nn.Linear(72, 4)).eval()
    capfd.readouterr()
    onnx_backend.export_args(model, (torch.zeros(1, 3, 16, 16),), tmp_path / "m.onnx", input_names=["input"],
                             opset=17)
    out, err = capfd.readouterr()
    assert (tmp_path / "m.onnx").stat().st_size > 0
    assert "Torch IR graph" not in out + err and "Traceback" not in out + err, (out + err)[:500]


def test_dict_output_names_lose_the_colon_tensorflow_reads_as_a_tensor_index():
    """An output named "score:0" was dropped by onnx2tf (TensorFlow reads it as tensor 0 of op "score")."""
    import torch

    from edgepack.backends.onnx import names_of_outputs

    assert names_of_outputs({"cls": torch.zeros(1), "score:0": torch.zeros(1)}, ["input"]) == ["cls", "score_0"]
    assert names_of_outputs({"a:0": torch.zeros(1), "a_0": torch.zeros(1)}, ["input"]) == ["output0", "output1"]
