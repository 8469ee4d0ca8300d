"""Keep a .tflite model in one XNNPACK partition: ops XNNPACK refuses, rewritten into ones it runs, same outputs.

LiteRT's XNNPACK delegate (LiteRT's default CPU path) takes no
RESIZE_NEAREST_NEIGHBOR, in INT8 or in float: measured on LiteRT 2.1 with a Conv -> resize -> Conv model, the
interpreter holds two delegate partitions and runs the resize on LiteRT's own kernel between them. Feature-pyramid
necks (DBNet's, YOLO's, FPNs) upsample with it between convolutions, so each one cuts the delegated graph:
PP-OCRv4's text detector has six, and its INT8 model ran as 9 partitions.

An upsampling by a whole factor k on both axes (``align_corners`` off; with or without ``half_pixel_centers``,
which for a whole factor both read source pixel ``floor(y / k)``) is k x k replication, and so is
``DEPTH_TO_SPACE(CONCATENATION(x, ..., x), k)``: DEPTH_TO_SPACE puts channel ``(i * k + j) * C + c`` of a pixel at
offset (i, j) of its k x k block, and every one of the k*k copies holds x[c]. Both ops are XNNPACK's (up to 5
CONCATENATION inputs; 6 or more cut the graph, so the copies come from nested concatenations of at most 4), and
both keep their input's quantization, as RESIZE_NEAREST_NEIGHBOR does: no value changes. Every rewritten model is
run against the original on LiteRT's own kernels and kept only if every output is bit-identical. The same pass
gives a TRANSPOSE_CONV bias that the converter wrote with rank 4 its 1-D shape (XNNPACK takes only that).

Edits the FlatBuffer through LiteRT's object API (``ai_edge_litert.tools.flatbuffer_utils``).
"""
from __future__ import annotations

import copy
import logging

import numpy as np

log = logging.getLogger(__name__)

MAX_CONCAT = 4     #: inputs per CONCATENATION (XNNPACK in LiteRT 2.1 delegates at most 5)
MAX_FACTOR = 8     #: larger factors keep their resize (k*k copies of the input would be held at once)


def delegate_friendly(data: bytes) -> tuple[bytes, dict]:
    """``data`` (a .tflite flatbuffer) rewritten so that XNNPACK takes more of it, with the same outputs (checked
    on LiteRT's own kernels; ``data`` itself when they differ or nothing applies), and the counts of each rewrite:

    - ``nearest_upsampling``: whole-factor RESIZE_NEAREST_NEIGHBOR as CONCATENATION + DEPTH_TO_SPACE (above);
    - ``transpose_conv_bias``: a TRANSPOSE_CONV bias the converter wrote as (1, 1, 1, C) gets its 1-D shape (C,):
      XNNPACK takes a 1-D bias only (PP-OCRv4's last layer, 24 -> 1 channels, ran outside it). Same bytes."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    done = {"nearest_upsampling": 0, "transpose_conv_bias": 0}
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(data))
    if any(b.offset for b in model.buffers or ()):
        return data, done   # weights outside the FlatBuffer: not rewritten
    codes: dict = {}
    for graph in model.subgraphs:
        ops = []
        for op in graph.operators:
            done["transpose_conv_bias"] += _flatten_bias(model, graph, op, schema)
            factor = _whole_factor(model, graph, op, schema)
            if factor is None:
                ops.append(op)
                continue
            ops += _replication(model, graph, op, factor, schema, codes)
            done["nearest_upsampling"] += 1
        graph.operators = ops
    if not any(done.values()):
        return data, done
    builder = flatbuffer_utils.flatbuffers.Builder(max(1024, len(data)))
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    out = bytes(builder.Output())
    if not _same_outputs(data, out):
        log.warning("TFLite: XNNPACK rewrites %s left out (the rewritten model's outputs differ)", done)
        return data, dict.fromkeys(done, 0)
    log.info("TFLite: rewritten for XNNPACK (same outputs): %s", done)
    return out, done


def _flatten_bias(model, graph, op, schema) -> int:
    """1 when ``op`` is a TRANSPOSE_CONV whose bias had a shape of rank > 1 holding one value per output channel,
    now (C,); 0 otherwise. The bias tensor must be read by this op alone."""
    if _builtin(model, op) != schema.BuiltinOperator.TRANSPOSE_CONV or len(op.inputs) < 4 or op.inputs[3] < 0:
        return 0
    index = int(op.inputs[3])
    bias, out = graph.tensors[index], graph.tensors[op.outputs[0]]
    if bias.shape is None or len(bias.shape) <= 1 or out.shape is None or int(np.prod(bias.shape)) != out.shape[-1]:
        return 0
    if sum(index in (o.inputs if o.inputs is not None else ()) for o in graph.operators) != 1:
        return 0
    bias.shape = np.array([out.shape[-1]], np.int32)
    bias.shapeSignature = None
    return 1


def _builtin(model, op) -> int:
    return _code_builtin(model.operatorCodes[op.opcodeIndex])


def _code_builtin(code) -> int:
    """An operator code's builtin operator (codes above 127 live only in ``builtinCode``)."""
    return max(int(code.builtinCode), int(code.deprecatedBuiltinCode))


def _whole_factor(model, graph, op, schema) -> int | None:
    """k when ``op`` is a RESIZE_NEAREST_NEIGHBOR of a static NHWC tensor by a whole k (2..MAX_FACTOR) on both
    axes without align_corners; None otherwise."""
    if _builtin(model, op) != schema.BuiltinOperator.RESIZE_NEAREST_NEIGHBOR:
        return None
    options = op.builtinOptions
    if options is None or getattr(options, "alignCorners", False):
        return None
    src, dst = graph.tensors[op.inputs[0]], graph.tensors[op.outputs[0]]
    if src.shape is None or dst.shape is None or len(src.shape) != 4 or len(dst.shape) != 4:
        return None
    if any(s is not None and -1 in list(s) for s in (src.shapeSignature, dst.shapeSignature)):
        return None
    (n, h, w, c), (n2, h2, w2, c2) = (int(v) for v in src.shape), (int(v) for v in dst.shape)
    if (n, c) != (n2, c2) or min(h, w) <= 0 or h2 % h or w2 % w:
        return None
    factor = h2 // h
    if factor < 2 or factor > MAX_FACTOR or w2 != w * factor or src.type != dst.type:
        return None
    if not _same_quantization(src.quantization, dst.quantization):
        return None
    return factor


def _same_quantization(a, b) -> bool:
    def params(q):
        if q is None:
            return (), ()
        return (tuple(np.asarray(q.scale if q.scale is not None else [], np.float64).ravel()),
                tuple(np.asarray(q.zeroPoint if q.zeroPoint is not None else [], np.int64).ravel()))
    return params(a) == params(b)


def _opcode(model, schema, builtin: int, version: int, codes: dict) -> int:
    """The index of ``builtin`` at ``version`` in the model's operator codes (added when missing)."""
    key = (builtin, version)
    if key not in codes:
        for k, code in enumerate(model.operatorCodes):
            if _code_builtin(code) == builtin and code.version == version:
                codes[key] = k
                break
        else:
            code = schema.OperatorCodeT()
            code.builtinCode, code.version = builtin, version
            code.deprecatedBuiltinCode = min(builtin, 127)
            model.operatorCodes.append(code)
            codes[key] = len(model.operatorCodes) - 1
    return codes[key]


def _replication(model, graph, op, factor: int, schema, codes: dict) -> list:
    """The operators computing ``op``'s output as DEPTH_TO_SPACE(k*k channel copies of its input, k)."""
    src = graph.tensors[op.inputs[0]]
    quantized = src.type in (schema.TensorType.INT8, schema.TensorType.UINT8, schema.TensorType.INT16)
    version = 2 if src.type == schema.TensorType.INT8 else 1   # what the converter writes for these types
    concat_code = _opcode(model, schema, schema.BuiltinOperator.CONCATENATION, version, codes)
    d2s_code = _opcode(model, schema, schema.BuiltinOperator.DEPTH_TO_SPACE, version, codes)
    ops, made = [], {1: int(op.inputs[0])}
    base = (src.name or b"upsample").split(b";", 1)[0]

    def copies(n: int) -> int:
        if n not in made:
            part = -(-n // MAX_CONCAT)
            inputs = [copies(part)] * (n // part) + ([copies(n % part)] if n % part else [])
            tensor = schema.TensorT()
            tensor.shape = np.array([*src.shape[:3], src.shape[3] * n], np.int32)
            tensor.type, tensor.buffer = src.type, 0
            tensor.name = base + b"/x%d" % n
            tensor.quantization = copy.deepcopy(src.quantization) if quantized else None
            graph.tensors.append(tensor)
            concat = schema.OperatorT()
            concat.opcodeIndex, concat.inputs = concat_code, np.array(inputs, np.int32)
            concat.outputs = np.array([len(graph.tensors) - 1], np.int32)
            concat.builtinOptionsType = schema.BuiltinOptions.ConcatenationOptions
            concat.builtinOptions = schema.ConcatenationOptionsT()
            concat.builtinOptions.axis = 3
            ops.append(concat)
            made[n] = len(graph.tensors) - 1
        return made[n]

    d2s = schema.OperatorT()
    d2s.opcodeIndex = d2s_code
    d2s.inputs = np.array([copies(factor * factor)], np.int32)
    d2s.outputs = np.array(op.outputs, np.int32)
    d2s.builtinOptionsType = schema.BuiltinOptions.DepthToSpaceOptions
    d2s.builtinOptions = schema.DepthToSpaceOptionsT()
    d2s.builtinOptions.blockSize = factor
    return ops + [d2s]


def _same_outputs(a: bytes, b: bytes, seed: int = 0) -> bool:
    """Whether the two models give bit-identical outputs on one seeded random input (LiteRT's own kernels)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    try:
        runs = []
        for data in (a, b):
            interp = Interpreter(model_content=data, num_threads=1,
                                 experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
            interp.allocate_tensors()
            rng = np.random.default_rng(seed)
            for detail in interp.get_input_details():
                dtype, shape = np.dtype(detail["dtype"]), detail["shape"]
                if np.issubdtype(dtype, np.integer):
                    info = np.iinfo(dtype)
                    value = rng.integers(max(info.min, -128), min(info.max, 127) + 1, shape).astype(dtype)
                else:
                    value = rng.standard_normal(shape).astype(dtype)
                interp.set_tensor(detail["index"], value)
            interp.invoke()
            runs.append([interp.get_tensor(d["index"]).copy() for d in interp.get_output_details()])
        return len(runs[0]) == len(runs[1]) and all(np.array_equal(x, y) for x, y in zip(*runs, strict=True))
    except Exception as exc:  # noqa: BLE001 - a model that cannot be checked is not rewritten
        log.debug("respelled model not checked: %s", exc)
        return False
