"""edgepack.backends.tflite_xnnpack: nearest upsamplings respelled as CONCATENATION + DEPTH_TO_SPACE keep a
.tflite model in one XNNPACK partition and give bit-identical outputs; what is not plain replication stays."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx2tf")
pytest.importorskip("ai_edge_litert")

import toy_models  # noqa: E402

from edgepack.backends import tflite_xnnpack  # noqa: E402


def _ops(data: bytes, delegates: bool = True) -> list[str]:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    resolver = OpResolverType.AUTO if delegates else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    interp = Interpreter(model_content=data, num_threads=1, experimental_op_resolver_type=resolver)
    interp.allocate_tensors()
    return [op["op_name"] for op in interp._get_ops_details()]


def _outputs(data: bytes, x: np.ndarray) -> list[np.ndarray]:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=data, num_threads=1)   # XNNPACK applied, as on a device
    interp.allocate_tensors()
    detail = interp.get_input_details()[0]
    interp.set_tensor(detail["index"], x.astype(detail["dtype"]))
    interp.invoke()
    return [interp.get_tensor(d["index"]).copy() for d in interp.get_output_details()]


@pytest.fixture(scope="module")
def converted():
    """The toy neck (nearest x2 and x4, one bilinear x2) as the converter writes it: FP32 and full-integer."""
    import tensorflow as tf

    inp = tf.keras.Input((8, 8, 8), batch_size=1)
    a = tf.keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
    up2 = tf.keras.layers.Lambda(lambda t: tf.image.resize(t, (16, 16), method="nearest"))(a)
    b = tf.keras.layers.Conv2D(8, 3, padding="same", activation="relu")(up2)
    up4 = tf.keras.layers.Lambda(lambda t: tf.compat.v1.image.resize_nearest_neighbor(t, (32, 32)))(a)
    bil = tf.keras.layers.Lambda(lambda t: tf.image.resize(t, (32, 32), method="bilinear"))(b)
    corners = tf.keras.layers.Lambda(
        lambda t: tf.compat.v1.image.resize_nearest_neighbor(t, (32, 32), align_corners=True))(b)
    out = tf.keras.layers.Conv2D(4, 1)(tf.keras.layers.Add()([up4, bil, corners]))
    model = tf.keras.Model(inp, out)
    rng = np.random.default_rng(0)
    files = {}
    for kind in ("fp32", "int8"):
        conv = tf.lite.TFLiteConverter.from_keras_model(model)
        if kind == "int8":
            conv.optimizations = [tf.lite.Optimize.DEFAULT]
            conv.representative_dataset = lambda: ([rng.normal(size=(1, 8, 8, 8)).astype(np.float32)]
                                                   for _ in range(8))
            conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            conv.inference_input_type = conv.inference_output_type = tf.int8
        files[kind] = conv.convert()
    return files


@pytest.mark.parametrize("kind", ["fp32", "int8"])
def test_whole_factor_nearest_upsampling_is_respelled_with_the_same_outputs(converted, kind):
    data = converted[kind]
    assert _ops(data).count("RESIZE_NEAREST_NEIGHBOR") == 3 and _ops(data).count("DELEGATE") > 1
    out, done = tflite_xnnpack.delegate_friendly(data)
    assert done["nearest_upsampling"] == 2              # x2 and x4; align_corners=True is not replication
    ops = _ops(out)
    assert ops.count("RESIZE_NEAREST_NEIGHBOR") == 1 and ops.count("DEPTH_TO_SPACE") == 2
    assert ops.count("CONCATENATION") == 3              # x4: 16 copies as 4 x (4 copies), XNNPACK takes <= 5
    x = np.random.default_rng(1).integers(-100, 100, (1, 8, 8, 8)) if kind == "int8" else \
        np.random.default_rng(1).normal(size=(1, 8, 8, 8))
    for a, b in zip(_outputs(data, x), _outputs(out, x), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_model_without_nearest_upsampling_is_returned_as_it_is(converted):
    out, done = tflite_xnnpack.delegate_friendly(converted["fp32"])
    again, none = tflite_xnnpack.delegate_friendly(out)
    assert done["nearest_upsampling"] == 2 and not any(none.values()) and again is out


def test_a_respelling_whose_outputs_differ_is_not_kept(converted, monkeypatch):
    monkeypatch.setattr(tflite_xnnpack, "_same_outputs", lambda a, b: False)
    data = converted["int8"]
    assert tflite_xnnpack.delegate_friendly(data) == (data, {"nearest_upsampling": 0, "transpose_conv_bias": 0})


def _converted_toy(toy, tmp_path):
    """The module class ``toy``, built seeded, at 1x3x32x32 through edgepack's own path: ONNX export, simplify,
    full-integer .tflite in ``tmp_path``/w."""
    from edgepack.backends import onnx as onnx_backend
    from edgepack.backends import tflite

    torch.manual_seed(0)
    raw, path = tmp_path / "raw.onnx", tmp_path / "m.onnx"
    onnx_backend.export(toy().eval(), (1, 3, 32, 32), raw, opset=17)
    onnx_backend.simplify(raw, path)
    x = np.random.default_rng(0).standard_normal((16, 3, 32, 32)).astype(np.float32)
    return tflite.convert(path, tmp_path / "w", x)


@pytest.mark.slow
def test_converted_onnx_neck_is_one_xnnpack_partition(tmp_path):
    """Through edgepack's own converter (ONNX -> onnx2tf -> TFLite): the ONNX Resize nodes of a torch model's
    nearest upsamplings end as one XNNPACK partition, and the written model records the respelling."""
    import json

    int8 = _converted_toy(toy_models.NearestUpsampling, tmp_path)
    ops = _ops(int8.read_bytes())
    assert "RESIZE_NEAREST_NEIGHBOR" not in ops and ops.count("DEPTH_TO_SPACE") == 2, ops
    assert json.loads((tmp_path / "w" / "int8_prep.json").read_text())["xnnpack_rewrites"] == {
        "nearest_upsampling": 2, "transpose_conv_bias": 0}


@pytest.mark.slow
def test_transposed_conv_bias_gets_its_1d_shape_and_xnnpack_takes_the_head(tmp_path):
    """A bias added after a one-channel transposed convolution (Paddle's export of DBNet's head) is fused by the
    converter as a (1, 1, 1, 1) tensor, which XNNPACK refuses: the written model has it as (1,) and the whole model
    in one partition (the rewrite itself checks the outputs against the converter's file)."""
    from ai_edge_litert.interpreter import Interpreter

    int8 = _converted_toy(toy_models.TransposedHead, tmp_path)
    interp = Interpreter(model_path=str(int8))
    details = {t["index"]: t for t in interp.get_tensor_details()}
    tconv = [op for op in interp._get_ops_details() if op["op_name"] == "TRANSPOSE_CONV"]
    assert len(tconv) == 2 and all(len(details[op["inputs"][3]]["shape"]) == 1 for op in tconv)
    assert _ops(int8.read_bytes()).count("DELEGATE") == 1


def test_a_transpose_conv_bias_of_rank_four_is_flattened_with_the_same_outputs(tmp_path):
    """The same rewrite on a converter-written file directly (Keras, no onnx2tf): bias reshaped, outputs equal."""
    import tensorflow as tf
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    inp = tf.keras.Input((8, 8, 4), batch_size=1)
    y = tf.keras.layers.Conv2DTranspose(1, 2, strides=2, use_bias=False)(inp)
    y = tf.keras.layers.Lambda(lambda t: t + tf.constant(0.25, shape=(1, 1, 1, 1)))(y)
    conv = tf.lite.TFLiteConverter.from_keras_model(tf.keras.Model(inp, y))
    rng = np.random.default_rng(0)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([rng.normal(size=(1, 8, 8, 4)).astype(np.float32)] for _ in range(8))
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = conv.inference_output_type = tf.int8
    data = conv.convert()
    out, done = tflite_xnnpack.delegate_friendly(data)
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(out))
    graph = model.subgraphs[0]
    ops = [op for op in graph.operators
           if model.operatorCodes[op.opcodeIndex].builtinCode == schema.BuiltinOperator.TRANSPOSE_CONV]
    assert done == {"nearest_upsampling": 0, "transpose_conv_bias": 1}
    assert list(graph.tensors[ops[0].inputs[3]].shape) == [1]
    x = rng.integers(-100, 100, (1, 8, 8, 4))
    for a, b in zip(_outputs(data, x), _outputs(out, x), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_file_sharing_its_folder_gets_its_own_rewrite_count(converted, tmp_path):
    """The float-op variants are written side by side: each keeps its own count (the folder's int8_prep.json is
    the all-INT8 file's), and the manifest reports the shipped file's, not its folder's."""
    from edgepack.backends import tflite
    from edgepack.stages.quantize import _xnnpack_rewrites

    (tmp_path / "int8_prep.json").write_text('{"scales_folded_forward": 5, "xnnpack_rewrites": {"x": 1}}')
    mine: dict = {}
    tflite._write(tmp_path / "v.tflite", converted["int8"], respell=True, rewrites=mine)  # noqa: SLF001
    assert mine == {"nearest_upsampling": 2}
    assert (tmp_path / "int8_prep.json").read_text() == '{"scales_folded_forward": 5, "xnnpack_rewrites": {"x": 1}}'
    assert _xnnpack_rewrites(tmp_path, None) == {"xnnpack_rewrites": {"scales_folded_forward": 5, "x": 1}}
    shipped = {"shipped": 4, "xnnpack_rewrites": mine}
    assert _xnnpack_rewrites(tmp_path, shipped) == {"xnnpack_rewrites": {"nearest_upsampling": 2}}
    assert _xnnpack_rewrites(tmp_path, {"shipped": 0}) == {"xnnpack_rewrites": {"scales_folded_forward": 5, "x": 1}}
