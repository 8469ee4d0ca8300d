"""Tests for edgepack.backends.tflite on a tiny seeded CNN (1x3x32x32): FP32 parity, INT8 io, offline."""

from __future__ import annotations

import socket

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx2tf")
pytest.importorskip("ai_edge_litert")

from edgepack.backends import tflite as bk  # noqa: E402
from edgepack.errors import InputError, StageError  # noqa: E402


class TinyNet(torch.nn.Module):
    """conv/bn/relu6 -> depthwise/bn/relu6 -> 1x1 conv + residual add -> avgpool -> linear (10 classes)."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, 2, 1, bias=False), torch.nn.BatchNorm2d(8),
                                        torch.nn.ReLU6())
        self.dw = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, 1, 1, groups=8, bias=False),
                                      torch.nn.BatchNorm2d(8), torch.nn.ReLU6())
        self.pw = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 1, bias=False), torch.nn.BatchNorm2d(8))
        self.head = torch.nn.Linear(8, 10)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.pw(self.dw(x))
        return self.head(torch.nn.functional.adaptive_avg_pool2d(x, 1).flatten(1))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(onnx path, workdir, calib NCHW, eval inputs, torch logits) for the seeded tiny CNN."""
    import onnx
    import onnxslim

    torch.manual_seed(0)
    net = TinyNet()
    for m in net.modules():  # non-trivial BN statistics, so folding them is actually exercised
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    net.eval()
    root = tmp_path_factory.mktemp("tflite")
    onnx_path = root / "tiny.onnx"
    torch.onnx.export(net, torch.zeros(1, 3, 32, 32), str(onnx_path), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"])
    onnx.save(onnxslim.slim(onnx.load(str(onnx_path))), str(onnx_path))
    rng = np.random.default_rng(0)
    calib = rng.uniform(-1, 1, (32, 3, 32, 32)).astype(np.float32)
    xs = rng.uniform(-1, 1, (8, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        ref = net(torch.from_numpy(xs)).numpy()
    return onnx_path, root / "work", calib, xs, ref


@pytest.fixture(scope="module")
def fp32_model(tiny):
    onnx_path, work, *_ = tiny
    return bk.convert(onnx_path, work, None)


@pytest.fixture(scope="module")
def int8_model(tiny):
    onnx_path, work, calib, *_ = tiny
    return bk.convert(onnx_path, work, calib, io_dtype="int8")


def test_fp32_reproduces_pytorch(tiny, fp32_model):
    *_, xs, ref = tiny
    runner = bk.TFLiteRunner(fp32_model, threads=1)
    out = np.concatenate([runner.run(x[None]) for x in xs])
    assert out.shape == ref.shape
    assert np.abs(out - ref).max() < 1e-4


def test_fp32_io_details_are_float_nhwc(fp32_model):
    info = bk.io_details(fp32_model)
    (inp,), (out,) = info["inputs"], info["outputs"]
    assert inp["shape"] == [1, 32, 32, 3] and inp["layout"] == "NHWC" and inp["dtype"] == "float32"
    assert inp["quantization"] is None and out["quantization"] is None
    assert out["shape"] == [1, 10] and out["layout"] == "NC"


def test_int8_io_quantization_and_no_float_ops(int8_model, fp32_model):
    info = bk.io_details(int8_model)
    (inp,), (out,) = info["inputs"], info["outputs"]
    assert inp["dtype"] == "int8" and out["dtype"] == "int8"
    # calibration data spans [-1, 1]: the input scale must cover that range in 256 steps
    assert inp["quantization"]["scale"] == pytest.approx(2 / 255, rel=0.05)
    assert -128 <= inp["quantization"]["zero_point"] <= 127
    assert out["quantization"]["scale"] > 0
    assert bk.float_ops(int8_model) == []
    assert len(bk.float_ops(fp32_model)) > 0  # an FP32 model lists every op


def test_int8_tracks_fp32(tiny, int8_model):
    *_, xs, ref = tiny
    runner = bk.TFLiteRunner(int8_model, threads=1)
    out = np.concatenate([runner.run(x[None]) for x in xs])
    sqnr_db = 10 * np.log10((ref**2).sum() / ((ref - out) ** 2).sum())
    assert sqnr_db > 15


def test_the_timed_call_runs_the_model_on_the_input_converted_once(tiny, int8_model):
    """Latency times what an app runs: the int8 input converted once, then set, invoke, read; the model computes
    the same output as validation's run, and a later input does not change what the call feeds."""
    *_, xs, _ = tiny
    runner = bk.TFLiteRunner(int8_model, threads=1)
    want = runner.run(xs[0][None])
    call = runner.timed(xs[0][None])
    runner.run(xs[1][None])
    call()
    detail = runner._outs[0]
    scale, zero = detail["quantization"]
    got = (runner._interp.get_tensor(detail["index"]).astype(np.float32) - zero) * scale
    np.testing.assert_array_equal(got.reshape(want.shape), want)
    assert not np.array_equal(runner.run(xs[1][None]), want)


@pytest.mark.parametrize("io_dtype", ["uint8", "float32"])
def test_io_dtype_variants(tiny, io_dtype):
    onnx_path, work, calib, xs, ref = tiny
    path = bk.convert(onnx_path, work / io_dtype, calib[:8], io_dtype=io_dtype)
    (inp,) = bk.io_details(path)["inputs"]
    assert inp["dtype"] == io_dtype
    assert (inp["quantization"] is None) == (io_dtype == "float32")
    assert bk.float_ops(path) == []  # QUANTIZE/DEQUANTIZE at a float32 boundary are not float compute
    out = bk.TFLiteRunner(path).run(xs[:1])
    assert out.dtype == np.float32 and out.shape == ref[:1].shape


def test_convert_never_opens_a_socket(tiny, tmp_path, monkeypatch):
    """onnx2tf's sample-image download must be replaced: any connection attempt fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[1:]}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    onnx_path, _, calib, *_ = tiny
    assert bk.convert(onnx_path, tmp_path, calib[:4]).is_file()


def test_bad_io_dtype_is_an_input_error(tiny, tmp_path):
    onnx_path, _, calib, *_ = tiny
    with pytest.raises(InputError, match="io_dtype"):
        bk.convert(onnx_path, tmp_path, calib, io_dtype="int16")


def test_op_without_int8_kernel_is_named(tmp_path):
    """SIN has no INT8 kernel: the converter keeps it in float silently; convert() must say so by name."""
    import onnx
    import onnxslim

    class SinNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.fc = torch.nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(torch.sin(self.conv(x)).mean((2, 3)))

    torch.manual_seed(0)
    onnx_path = tmp_path / "sin.onnx"
    torch.onnx.export(SinNet().eval(), torch.zeros(1, 3, 16, 16), str(onnx_path), dynamo=False,
                      opset_version=17, input_names=["input"])
    onnx.save(onnxslim.slim(onnx.load(str(onnx_path))), str(onnx_path))
    calib = np.random.default_rng(0).uniform(-1, 1, (8, 3, 16, 16)).astype(np.float32)
    with pytest.raises(StageError, match="SIN") as raised:
        bk.convert(onnx_path, tmp_path / "work", calib)
    assert "--allow-float-ops" in raised.value.hint  # the CLI's flag, not the Python keyword alone
    assert not (tmp_path / "work" / "sin_int8.tflite").exists()
    kept = bk.convert(onnx_path, tmp_path / "work", calib, allow_float=True)
    assert [name.split(":")[0] for name in bk.float_ops(kept)] == ["SIN"]


def test_variable_the_keras_model_does_not_own_is_frozen_into_the_saved_model(tmp_path):
    """onnx2tf sometimes captures a tf.Variable its Keras model does not track, named like an ONNX tensor
    ("/stage3/.../Conv/kernel", seen on shufflenet_v2); a SavedModel refuses both. The traced function is frozen
    instead, and the TFLite converter reads it back with the same numbers."""
    import tensorflow as tf
    import tf_keras

    kernel = tf.Variable(np.random.default_rng(0).standard_normal((3, 3, 2, 4)).astype(np.float32),
                         name="/stage3/branch1/Conv/kernel")
    inp = tf_keras.Input((8, 8, 2), batch_size=1, name="input")
    model = tf_keras.Model(inp, tf.nn.conv2d(inp, kernel, 1, "SAME"))
    assert not model.variables  # the situation: the only weight is captured, not owned
    bk._save_inference_only(model, tmp_path / "sm")
    x = np.random.default_rng(1).standard_normal((1, 8, 8, 2)).astype(np.float32)
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=bk._run_converter(tmp_path / "sm", None, "float32", strict=True))
    interp.allocate_tensors()
    interp.set_tensor(interp.get_input_details()[0]["index"], x)
    interp.invoke()
    got = interp.get_tensor(interp.get_output_details()[0]["index"])
    np.testing.assert_allclose(got, model(x).numpy(), rtol=1e-5, atol=1e-5)


class TwoHeads(torch.nn.Module):
    """Boxes then scores, as MTCNN's PNet returns them; the converter lists the softmax head's tensor first."""

    def __init__(self):
        super().__init__()
        self.trunk = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.box = torch.nn.Conv2d(8, 4, 1)
        self.cls = torch.nn.Conv2d(8, 2, 1)

    def forward(self, x):
        x = torch.relu(self.trunk(x))
        return self.box(x), torch.softmax(self.cls(x), dim=1)


def test_outputs_keep_the_source_models_order(tmp_path):
    """get_output_details gave [scores, boxes]: the backend's runner, the manifest's io and the bundle's run.py
    follow the serving signature (output_0, output_1) instead, the ONNX model's order."""
    import importlib.util
    import sys
    from pathlib import Path

    import onnx
    import onnxslim

    from edgepack.tasks import postprocess

    torch.manual_seed(0)
    net = TwoHeads().eval()
    onnx_path = tmp_path / "two.onnx"
    torch.onnx.export(net, torch.zeros(1, 3, 16, 16), str(onnx_path), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"])
    onnx.save(onnxslim.slim(onnx.load(str(onnx_path))), str(onnx_path))
    path = bk.convert(onnx_path, tmp_path / "work", None)
    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        want = [t.numpy() for t in net(torch.from_numpy(x))]
    assert [o["shape"][-1] for o in bk.io_details(path)["outputs"]] == [4, 2]
    graph = onnx.load(str(onnx_path)).graph  # io tensors carry the source's names, not PartitionedCall:N
    io = bk.io_details(path)
    assert [o["name"] for o in io["outputs"]] == [o.name for o in graph.output]
    assert [i["name"] for i in io["inputs"]] == ["input"]
    for got, ref in zip(bk.TFLiteRunner(path).run_outputs(x), want, strict=True):
        np.testing.assert_allclose(got, ref, atol=1e-4)
    spec = importlib.util.spec_from_file_location("bundle_run_order", Path(bk.__file__).parents[1] / "bundle" /
                                                  "templates" / "run.py")
    runner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner)
    sys.path.insert(0, str(Path(postprocess.__file__).parent))  # run.py imports postprocess from beside it
    try:
        outs = runner.TFLiteModel(path, 1).outputs({"input": x})
    finally:
        sys.path.remove(str(Path(postprocess.__file__).parent))
    assert [o.shape for o in outs] == [r.shape for r in want]



def test_node_names_tensorflow_refuses_are_rewritten(tmp_path):
    """paddle2onnx names nodes "Softmax@0"; onnx2tf names TensorFlow ops after them and TensorFlow refused the
    scope name, failing PP-OCR's text-direction classifier (exit 4). The converted copy renames them."""
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.normal(size=(4, 3, 1, 1)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["c"], name="Conv@0"),
         helper.make_node("Softmax", ["c"], ["p"], name="Softmax@0", axis=1),
         helper.make_node("Relu", ["p"], ["logits"], name="Softmax_0")],  # what "Softmax@0" would become
        "g", [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, [1, 4, 8, 8])], [weight])
    odd = tmp_path / "odd_names.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(odd))
    x = rng.uniform(-1, 1, (1, 3, 8, 8)).astype(np.float32)
    want = ort.InferenceSession(str(odd)).run(None, {"input": x})[0]
    path = bk.convert(odd, tmp_path / "work", None)
    np.testing.assert_allclose(bk.TFLiteRunner(path).run(x), want, atol=1e-5)
    assert [n.name for n in onnx.load(str(odd)).graph.node][1] == "Softmax@0"  # the user's file is untouched


def test_an_onnx2tf_failure_comes_with_a_hint(tiny, tmp_path, monkeypatch):
    """onnx2tf's own exceptions reached the user as "Error: onnx2tf could not convert ..." with no Hint line."""
    import onnx2tf

    def fails(**kwargs):
        raise ValueError("no mapping for op Foo")

    monkeypatch.setattr(onnx2tf, "convert", fails)
    with pytest.raises(StageError) as err:
        bk.convert(tiny[0], tmp_path / "work", None)
    assert "no mapping for op Foo" in err.value.message and "--debug" in err.value.hint


def test_litert_delegate_banner_stays_off_the_users_terminal(fp32_model):
    """LiteRT prints "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." from C++ when it applies XNNPACK
    (once per process, so each case runs in its own): edgepack's runner keeps it off stderr."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]

    def stderr_of(code: str) -> str:
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              cwd=root).stderr

    raw = stderr_of("from ai_edge_litert.interpreter import Interpreter\n"
                    f"i = Interpreter(model_path={str(fp32_model)!r}); i.allocate_tensors()")
    assert "XNNPACK delegate" in raw   # LiteRT does print it
    ours = stderr_of(f"from edgepack.backends import tflite\ntflite.TFLiteRunner({str(fp32_model)!r})")
    assert "XNNPACK delegate" not in ours


def test_written_tflite_stores_repeated_vectors_once(tiny, int8_model):
    """The converter gives every per-channel tensor its own all-zero int64 zero-point vector; the written file
    keeps one copy per distinct vector (tflite_compact), runs bit-identically, keeps the io names and the 16-byte
    alignment of constant data."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    from edgepack.backends import tflite_compact

    shipped = int8_model.read_bytes()
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(shipped))
    builder = flatbuffers.Builder(1024)  # the plain object-API writer: one vector per table, as the converter
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    plain = bytes(builder.Output())
    per_channel = [t.quantization.zeroPoint for t in model.subgraphs[0].tensors
                   if t.quantization is not None and t.quantization.zeroPoint is not None
                   and len(t.quantization.zeroPoint) > 1]
    repeated = sum(8 * len(z) for z in per_channel) - sum(8 * n for n in {len(z) for z in per_channel})
    assert repeated > 0
    again = tflite_compact.compact(plain)
    assert len(again) <= len(plain) - repeated
    *_, xs, _ = tiny
    paths = []
    for name, data in (("plain", plain), ("again", again)):
        paths.append(int8_model.parent / f"{name}.tflite")
        paths[-1].write_bytes(data)
    outs = [np.concatenate([bk.TFLiteRunner(p, threads=1).run(x[None]) for x in xs]) for p in (int8_model, *paths)]
    assert np.array_equal(outs[0], outs[1]) and np.array_equal(outs[0], outs[2])
    assert bk.io_details(paths[1]) == bk.io_details(int8_model)
    raw = np.frombuffer(again, np.uint8)
    root = schema.Model.GetRootAs(again, 0)
    for i in range(root.BuffersLength()):
        data = root.Buffers(i).DataAsNumpy()
        if isinstance(data, np.ndarray) and data.size >= 16:
            start = np.byte_bounds(data)[0] - np.byte_bounds(raw)[0] if data.base is not None else None
            assert start is None or start % 16 == 0


def test_an_erf_the_converter_refuses_gets_a_hint():
    """A user's .onnx below opset 20 spells GELU with Erf: the converter's refusal came with no hint at all."""
    said = Exception("Could not translate MLIR to FlatBuffer.\n<unknown>:0: error: loc(...): 'tf.Erf' op is neither "
                     "a custom op nor a flex op")
    assert "opset 20" in bk.converter_hint(said) and bk.converter_hint(Exception("something else")) is None
