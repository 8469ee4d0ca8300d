"""A .tflite flatbuffer's ops as a graph: which ops read a tensor, which op computes an ONNX node's activation.

The TFLite trials that keep ops in float (edgepack.backends.tflite_mixed, and `tflite.convert(..., unrounded=...)`)
name them by their output tensors, as TensorFlow's MLIR quantizer's ``denylisted_nodes`` takes them.
"""

from __future__ import annotations

import numpy as np

#: ops that move or pick INT8 values without arithmetic: in INT8 their output keeps their input's scale, so a tensor
#: kept in float stays float through them to the ops that compute with it
PASS_THROUGH = frozenset({"PAD", "PADV2", "RESHAPE", "TRANSPOSE", "SQUEEZE", "EXPAND_DIMS", "STRIDED_SLICE", "SLICE",
                          "GATHER", "MAX_POOL_2D", "CONCATENATION", "SPLIT", "SPLIT_V", "SPACE_TO_DEPTH",
                          "DEPTH_TO_SPACE", "PACK", "UNPACK", "TILE", "BROADCAST_TO"})


def ops(model: bytes) -> list[tuple[str, list[str], list[str]]]:
    """(op type, input tensor names, output tensor names) of every op of a .tflite flatbuffer, in order."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=model)
    names = {t["index"]: t["name"] for t in interp.get_tensor_details()}
    return [(op["op_name"], [names[int(i)] for i in op["inputs"] if int(i) in names],
             [names[int(o)] for o in op["outputs"] if int(o) in names])
            for op in interp._get_ops_details()]  # noqa: SLF001 - LiteRT's only per-op view


def with_readers(graph: list[tuple[str, list[str], list[str]]], names: list[str]) -> list[str]:
    """``names`` (op output tensors to keep in float) and the outputs of the ops that read them, through PASS_THROUGH
    ops to the ones that compute: keeping only the op that writes a tensor in float changes nothing for its
    readers, which quantize it again with the same scale (an outlier channel starves the others either way)."""
    keep, todo = list(names), list(names)
    while todo:
        tensor = todo.pop()
        for kind, inputs, outputs in graph:
            if tensor in inputs and outputs and outputs[0] not in keep:
                keep.append(outputs[0])
                if kind in PASS_THROUGH:
                    todo.append(outputs[0])
    return keep


#: TFLite ops whose second input is the weight tensor an ONNX Conv/Gemm/MatMul becomes
_WEIGHTED = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def ops_for_onnx(calibrated: bytes, model, tensors) -> dict[str, str]:
    """{ONNX activation: output tensor name of the op of the calibrated .tflite ``calibrated`` that writes it} for
    each of ``tensors`` (activations of the ONNX ``model`` the SavedModel was converted from) written by a
    Conv/Gemm/MatMul with constant weights, directly or through a Clip/Relu the converter fuses into it. The op is
    found by its weights: the same numbers in TFLite's layout (onnx2tf names ops after TensorFlow's functions, not
    ONNX's nodes). Activations written by anything else (a residual Add) are left out."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    from edgepack.backends.tflite_xnnpack import _builtin

    tfl = flatbuffer_utils.read_model_from_bytearray(bytearray(calibrated))
    graph = tfl.subgraphs[0]
    names = {getattr(schema.BuiltinOperator, n): n for n in _WEIGHTED}
    by_size: dict[int, list[tuple[np.ndarray, str]]] = {}
    for op in graph.operators:
        if _builtin(tfl, op) not in names or len(op.inputs) < 2 or not op.outputs:
            continue
        w = graph.tensors[op.inputs[1]]
        data = tfl.buffers[w.buffer].data if w.buffer < len(tfl.buffers) else None
        if w.type != schema.TensorType.FLOAT32 or data is None or not len(data):
            continue
        arr = np.frombuffer(bytes(data), np.float32).reshape([int(d) for d in w.shape])
        name = graph.tensors[op.outputs[0]].name
        by_size.setdefault(arr.size, []).append((arr, name.decode() if isinstance(name, bytes) else name))
    found = {}
    for t in tensors:
        for layout in weight_layouts(model, t):
            match = next((n for a, n in by_size.get(layout.size, ()) if a.shape == layout.shape
                          and np.array_equal(a, layout)), None)
            if match:
                found[t] = match
                break
    return found


def weight_layouts(model, tensor: str) -> list[np.ndarray]:
    """The weights of the Conv/Gemm/MatMul that writes ``tensor`` (through a Clip/Relu), in each layout TFLite may
    hold them: CONV_2D (O, kh, kw, I), DEPTHWISE_CONV_2D (1, kh, kw, C), FULLY_CONNECTED (N, K); [] when no such
    node writes it."""
    from onnx import helper, numpy_helper

    producer = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name: i for i in model.graph.initializer}
    node = producer.get(tensor)
    while node is not None and node.op_type in ("Clip", "Relu") and node.input:
        node = producer.get(node.input[0])
    if node is None or len(node.input) < 2 or node.input[1] not in inits:
        return []
    w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Conv" and w.ndim == 4:
        if attrs.get("group", 1) == 1:
            return [np.ascontiguousarray(w.transpose(0, 2, 3, 1))]
        return [np.ascontiguousarray(w.transpose(1, 2, 3, 0))] if w.shape[1] == 1 else []
    if node.op_type == "Gemm" and w.ndim == 2:
        return [np.ascontiguousarray(w if attrs.get("transB", 0) else w.T)]
    if node.op_type == "MatMul" and w.ndim == 2:
        return [np.ascontiguousarray(w.T)]
    return []
