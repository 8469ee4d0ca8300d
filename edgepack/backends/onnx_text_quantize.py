"""Static INT8 (QDQ) for transformer text classifiers, and onnxruntime's dynamic INT8 as the alternative.

onnxruntime's static QDQ defaults put uint8 ranges on every op of a BERT classifier (Softmax/LayerNorm/Gelu/
Add paths and attention's activation x activation MatMuls too) and lose accuracy. What keeps accuracy and
speed: quantize only the weight MatMuls/Gemm (per-channel int8 weights, uint8 activations), calibrate with
percentile ranges, keep the classifier head in float, and store the word-embedding table in int8.
``pick_int8`` chooses between this and dynamic INT8 on measured accuracy and latency.

onnx and onnxruntime are imported inside functions.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgepack.errors import InputError, StageError

log = logging.getLogger(__name__)

CALIBRATION_METHODS = ("minmax", "percentile", "entropy")


def weight_nodes(model: Any) -> dict[str, list[str]]:
    """Names of the nodes that carry weights: {"matmul": MatMul/Gemm with a constant B, "gather": embeddings}.

    Attention's activation x activation MatMuls (scores and context) are not listed: static INT8 ranges for
    them (softmax probabilities, per-sentence scores) are what makes default static quantization collapse.
    """
    init = {i.name for i in model.graph.initializer}
    consts = init | {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    out: dict[str, list[str]] = {"matmul": [], "gather": []}
    for node in model.graph.node:
        if node.op_type in ("MatMul", "Gemm") and len(node.input) > 1 and node.input[1] in consts:
            out["matmul"].append(node.name)
        elif node.op_type == "Gather" and node.input[0] in init:
            out["gather"].append(node.name)
    return out


def head_nodes(model: Any, count: int = 1) -> list[str]:
    """The last ``count`` weight MatMul/Gemm nodes in graph order: the classifier head."""
    return weight_nodes(model)["matmul"][-count:] if count > 0 else []


def quantize_text_onnx(
    fp32_path: str | Path,
    out_path: str | Path,
    calib_inputs: dict[str, np.ndarray],
    *,
    method: str = "percentile",
    percentile: float = 99.999,
    activation: str = "uint8",
    keep_float: Sequence[str] = (),
    keep_head_float: bool = True,
    target_arch: str | None = None,
) -> dict:
    """Static INT8 (QDQ) for a transformer text classifier; returns the settings used (for the manifest).

    Quantized: every MatMul/Gemm with a constant weight (per-channel symmetric int8 weights, ``activation``
    ("uint8" asymmetric or "int8" symmetric) inputs calibrated with ``method`` on ``calib_inputs``
    {name: (N, L) int64}) and the word-embedding Gather (int8 table: half of a small BERT's bytes).
    Kept float: Softmax, LayerNorm, Gelu, residual Adds, attention's activation x activation MatMuls, the
    classifier head when ``keep_head_float``, and any node named in ``keep_float``.
    ``percentile`` (percent of |activation| values kept in range) applies to method "percentile".
    ``target_arch``: the device's ISA; weights and the arithmetic that validates the model follow
    onnx_quantize.int8_plan, as for image models (recorded in the model's metadata).
    """
    import onnx

    if method not in CALIBRATION_METHODS:
        raise InputError(
            f"calibration method must be one of {', '.join(CALIBRATION_METHODS)}, not {method!r}"
        )
    if activation not in ("uint8", "int8"):
        raise InputError(f"activation type must be 'uint8' or 'int8', not {activation!r}")
    from edgepack.backends.onnx import ARITHMETIC_KEY, TARGET_ARCH_KEY
    from edgepack.backends.onnx_quantize import int8_plan

    plan = int8_plan(target_arch)
    model = onnx.load(str(fp32_path))
    nodes, kept = _nodes_to_quantize(model, keep_float, keep_head_float)
    reader = _calibration_reader(calib_inputs, [i.name for i in model.graph.input])
    settings = {
        "format": "QDQ",
        "weights": "int8 per-channel symmetric",
        "activations": f"{activation} {'symmetric' if activation == 'int8' else 'asymmetric'}",
        "calibration": method,
        "percentile": percentile if method == "percentile" else None,
        "calibration_samples": len(reader.items),
        "quantized_nodes": len(nodes),
        "float_weight_nodes": kept,
        **plan,
    }
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # ORT's calibrator prints progress to stdout
            _quantize_static(fp32_path, out_path, reader, nodes, method, percentile, activation,
                             plan["reduce_range"])
        qmodel = onnx.load(str(out_path))
        onnx.helper.set_model_props(qmodel, {**{p.key: p.value for p in qmodel.metadata_props},
                                             ARITHMETIC_KEY: plan["arithmetic"], TARGET_ARCH_KEY: plan["target_arch"]})
        onnx.save(qmodel, str(out_path))
    except InputError:
        raise
    except Exception as exc:
        raise StageError(
            f"static INT8 quantization failed: {type(exc).__name__}: {str(exc)[:300]}",
            hint="try method='minmax' or fewer calibration texts; run with --debug",
        ) from None
    log.info("static INT8: %d nodes quantized, kept float: %s", len(nodes), ", ".join(kept) or "none")
    return settings


def _quantize_static(fp32_path, out_path, reader, nodes, method, percentile, activation,
                     reduce_range: bool = False) -> None:
    """The onnxruntime call behind quantize_text_onnx (arguments already checked); histogram calibration is fed
    a few texts at a time (onnx_histograms.histograms_in_chunks: ORT holds every activation it is given)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from edgepack.backends.onnx_histograms import histograms_in_chunks

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    with histograms_in_chunks():
        quantize_static(
            str(fp32_path),
            str(out_path),
            reader,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["MatMul", "Gemm", "Gather"],
            nodes_to_quantize=nodes,
            per_channel=True,
            reduce_range=reduce_range,
            weight_type=QuantType.QInt8,
            activation_type=QuantType.QInt8 if activation == "int8" else QuantType.QUInt8,
            calibrate_method=methods[method],
            extra_options={
                "ActivationSymmetric": activation == "int8",
                "MatMulConstBOnly": True,
                "CalibPercentile": percentile,
            },
        )


def _nodes_to_quantize(
    model: Any, keep_float: Sequence[str], keep_head_float: bool
) -> tuple[list[str], list[str]]:
    """(nodes to quantize, weight nodes kept float); unknown names in keep_float are an InputError."""
    found = weight_nodes(model)
    every = {n.name for n in model.graph.node}
    unknown = sorted(set(keep_float) - every)
    if unknown:
        raise InputError(
            f"keep_float names nodes not in the model: {', '.join(unknown[:5])}",
            hint='node names are listed by `python -c "import onnx; ..."` or Netron',
        )
    skip = set(keep_float) | set(head_nodes(model) if keep_head_float else [])
    words = [n for n in found["gather"] if "word" in n.lower()] or found["gather"][:1]
    candidates = found["matmul"] + words
    return [n for n in candidates if n not in skip], [n for n in found["matmul"] if n in skip]


class _Reader:
    """onnxruntime CalibrationDataReader over {name: (N, L)} arrays, one sample per call (batch 1)."""

    def __init__(self, items: list[dict[str, np.ndarray]]):
        self.items = items
        self.rewind()

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self.items)


def _calibration_reader(calib_inputs: dict[str, np.ndarray], names: Sequence[str]) -> _Reader:
    """Check the calibration arrays against the model's inputs and wrap them in a reader."""
    missing = [n for n in names if n not in calib_inputs]
    if missing:
        raise InputError(
            f"calibration data lacks model input(s) {', '.join(missing)}",
            hint="tokenize with the model's tokenizer and input names",
        )
    counts = {len(calib_inputs[n]) for n in names}
    if len(counts) != 1 or not counts.pop():
        raise InputError("calibration arrays are empty or have different numbers of rows")
    n = len(calib_inputs[names[0]])
    return _Reader(
        [
            {k: np.ascontiguousarray(calib_inputs[k][i : i + 1], dtype=np.int64) for k in names}
            for i in range(n)
        ]
    )


def quantize_text_dynamic(fp32_path: str | Path, out_path: str | Path) -> dict:
    """onnxruntime's dynamic INT8 (int8 weights, activations quantized per call): the usual BERT baseline.

    Every op type onnxruntime quantizes dynamically except Conv: with int8 weights it becomes a ConvInteger that
    onnxruntime's CPU provider has no kernel for (it takes uint8 x uint8 only), so a text model with a Conv1d (a CNN
    over embeddings, SqueezeBERT) gave a dynamic candidate that could not load and failed the whole build."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.registry import IntegerOpsRegistry

    ops = [op for op in IntegerOpsRegistry if op != "Conv"]
    try:
        quantize_dynamic(str(fp32_path), str(out_path), weight_type=QuantType.QInt8, op_types_to_quantize=ops)
    except Exception as exc:
        raise StageError(
            f"dynamic INT8 quantization failed: {type(exc).__name__}: {str(exc)[:300]}"
        ) from None
    return {
        "format": "dynamic (QOperator)",
        "weights": "int8 per-tensor",
        "activations": "uint8, per inference",
    }


def pick_int8(candidates: dict[str, dict], unit: str = "points") -> tuple[str, str]:
    """Choose among INT8 candidates {name: {"accuracy_drop": loss, "latency_ratio": x FP32}}; (name, why).

    Lowest loss wins unless it is more than 1.25x slower than the fastest candidate; then the faster
    one is taken when its loss is within 0.25 ``unit`` (accuracy points, or dB of SQNR). The reason names both
    numbers so the report can say why.
    """
    if not candidates:
        raise StageError("no INT8 candidate to choose from")
    by_drop = sorted(
        candidates, key=lambda k: (candidates[k]["accuracy_drop"], candidates[k]["latency_ratio"])
    )
    best, fastest = by_drop[0], min(candidates, key=lambda k: candidates[k]["latency_ratio"])
    b, f = candidates[best], candidates[fastest]
    if (
        best != fastest
        and b["latency_ratio"] > 1.25 * f["latency_ratio"]
        and f["accuracy_drop"] - b["accuracy_drop"] <= 0.25
    ):
        best, b = fastest, f
        why = f"fastest, and within 0.25 {unit} of the most accurate"
    else:
        why = "most accurate" + ("" if best == fastest else " at comparable speed")
    return best, (
        f"{best}: {why} (loss {b['accuracy_drop']:.2f} {unit}, {b['latency_ratio']:.2f}x FP32 latency)"
    )
