"""Per-operator-class work counts of an ONNX graph, for the device latency cost model (edgepack.estimate).

Counted from the graph after ONNX shape inference, so no build or run of the model is needed. Units: MACs
(multiply-accumulates) and tensor elements, batch as exported (1). QuantizeLinear/DequantizeLinear are
looked through, so an INT8 QDQ graph counts like its FP32 source.

Classes (why they differ on a device):

* ``macs_winograd``: dense (group 1) 3x3 stride-1 convolutions. ARM runtimes such as ncnn run these with
  Winograd transforms (about 2-4x fewer multiplies), so they are relatively cheaper there than on the host.
* ``macs_dense``: other dense convolutions with a kernel larger than 1x1 (stride 2, 5x5, 7x7...): im2col + GEMM.
* ``macs_pointwise``: 1x1 convolutions, Gemm and MatMul: plain GEMM.
* ``macs_depthwise``: depthwise and grouped convolutions: few MACs per byte, bandwidth-bound.
* ``elements``: activation elements read and written by every counted op plus weight elements (bytes moved,
  up to the element size, which the per-precision fit absorbs).
* ``layers``: convolutions, Gemm/MatMul and the memory-bound ops that a runtime does not fuse (pooling, Add,
  Concat, Mul...): a per-layer overhead (kernel launch, threading barrier, packing).
"""

from __future__ import annotations

from pathlib import Path

VERSION = 1
FEATURES = ("macs_winograd", "macs_dense", "macs_pointwise", "macs_depthwise", "elements", "layers")
PASS_THROUGH = {"QuantizeLinear", "DequantizeLinear", "Identity", "Relu", "Clip", "BatchNormalization",
                "LeakyRelu", "HardSigmoid", "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Dropout",
                "Cast", "Constant", "Shape", "Gather", "Transpose"}


def _shapes(model) -> dict[str, list[int]]:
    """name -> static shape (unknown dims as 1) of every tensor shape inference could resolve."""
    out = {}
    for vi in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            out[vi.name] = [d.dim_value if d.dim_value > 0 else 1 for d in t.shape.dim]
    for init in model.graph.initializer:
        out[init.name] = list(init.dims)
    return out


def _numel(shape: list[int] | None) -> int:
    n = 1
    for d in shape or []:
        n *= d
    return n if shape is not None else 0


def _weight_shape(name: str, shapes: dict, producer: dict) -> list[int] | None:
    """Shape of a weight input, looking through DequantizeLinear (QDQ graphs)."""
    node = producer.get(name)
    while node is not None and node.op_type in ("DequantizeLinear", "Identity") and name not in shapes:
        name = node.input[0]
        node = producer.get(name)
    return shapes.get(name)


def _conv(node, shapes: dict, producer: dict, counts: dict) -> None:
    w = _weight_shape(node.input[1], shapes, producer)
    out = shapes.get(node.output[0])
    if not w or not out or len(w) < 3:
        return
    attrs = {a.name: a for a in node.attribute}
    group = attrs["group"].i if "group" in attrs else 1
    strides = list(attrs["strides"].ints) if "strides" in attrs else [1] * (len(w) - 2)
    kernel = _numel(w[2:])
    macs = _numel(out) * _numel(w[1:])
    if group > 1:
        key = "macs_depthwise"
    elif kernel == 1:
        key = "macs_pointwise"
    elif w[2:] == [3, 3] and strides == [1, 1]:
        key = "macs_winograd"
    else:
        key = "macs_dense"
    counts[key] += macs
    counts["elements"] += _numel(shapes.get(node.input[0])) + _numel(out) + _numel(w)


def _matmul(node, shapes: dict, producer: dict, counts: dict) -> None:
    a = shapes.get(node.input[0])
    w = _weight_shape(node.input[1], shapes, producer)
    out = shapes.get(node.output[0])
    if not a or not w or not out:
        return
    attrs = {x.name: x for x in node.attribute}
    trans_a = node.op_type == "Gemm" and "transA" in attrs and attrs["transA"].i
    k = a[-2] if trans_a else a[-1]
    counts["macs_pointwise"] += _numel(out) * k
    counts["elements"] += _numel(a) + _numel(out) + _numel(w)


def count(path: Path) -> dict[str, float]:
    """Feature counts (see FEATURES) of the ONNX model at ``path``."""
    import onnx

    from edgepack.backends.onnx import computed_at_load

    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    shapes = _shapes(model)
    producer = {o: n for n in model.graph.node for o in n.output}
    counts = dict.fromkeys(FEATURES, 0.0)
    weights = {i.name for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type in PASS_THROUGH or computed_at_load(node, weights):
            continue
        counts["layers"] += 1
        if node.op_type == "Conv":
            _conv(node, shapes, producer, counts)
        elif node.op_type in ("Gemm", "MatMul"):
            _matmul(node, shapes, producer, counts)
        else:
            counts["elements"] += (sum(_numel(shapes.get(i)) for i in node.input if i in shapes and i not in weights)
                                   + sum(_numel(shapes.get(o)) for o in node.output))
    return counts
