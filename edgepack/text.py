"""Text classifiers: load a local HF folder, read text data, tokenize, export to ONNX, quantize to INT8.

Inputs are a dict of int64 arrays (N, L) named as the tokenizer names them (``input_ids``, ``attention_mask``
and ``token_type_ids`` when the model uses them), with one fixed sequence length L. Tokenization uses the
``tokenizers`` library and the model's ``tokenizer.json`` only, exactly what the bundle's runner does on the
device, so calibration, validation and the device see the same ids.

INT8 (see ``quantize_text_onnx``): onnxruntime's static QDQ defaults put uint8 ranges on every op of a BERT
classifier (Softmax/LayerNorm/Gelu/Add paths and attention's activation x activation MatMuls too) and lose
accuracy. What keeps accuracy and speed: quantize only the weight MatMuls/Gemm (per-channel int8 weights,
uint8 activations), calibrate with percentile ranges, keep the classifier head in float, and store the
word-embedding table in int8.

Heavy imports (torch, transformers, onnxruntime) happen inside functions.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError, StageError

log = logging.getLogger(__name__)

#: Order of the ONNX inputs when present. The device runner feeds whatever the model declares.
INPUT_ORDER = ("input_ids", "attention_mask", "token_type_ids")
TEXT_SUFFIXES = (".txt", ".jsonl", ".csv")
_HF_WEIGHTS = ("model.safetensors",)
_OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "USE_TF": "0", "USE_TORCH": "1"}


# --- sources ------------------------------------------------------------------------------------------------


def offline_env() -> None:
    """Keep transformers off the network and from importing TensorFlow (set once, before importing it)."""
    for key, value in _OFFLINE_ENV.items():
        os.environ.setdefault(key, value)


def _wrapper_class() -> type:
    """The HF wrapper module class, defined lazily so that ``import edgepack.text`` does not import torch."""
    import torch

    class _HFTextClassifier(torch.nn.Module):
        """A transformers classifier as forward(input_ids, attention_mask, token_type_ids=None) -> logits."""

        def __init__(self, model: Any, input_names: Sequence[str]):
            super().__init__()
            self.model = model
            self.input_names = tuple(input_names)

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
            if token_type_ids is not None and "token_type_ids" in self.input_names:
                kwargs["token_type_ids"] = token_type_ids
            return self.model(**kwargs).logits

    return _HFTextClassifier


def load_hf_folder(path: str | Path, max_length: int | None = None) -> tuple[Any, Path, dict]:
    """Load a local transformers text classifier folder, offline, safetensors only, no remote code.

    Returns (module, tokenizer.json path, tokenizer settings). The module's
    forward(input_ids, attention_mask, token_type_ids=None) returns (N, num_labels) float32 logits.
    """
    folder = Path(path)
    _check_hf_folder(folder)
    offline_env()
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    if getattr(config, "auto_map", None):
        log.warning(
            "%s declares custom code (auto_map); it is ignored: only built-in architectures load", folder
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = AutoModelForSequenceClassification.from_pretrained(
                str(folder),
                local_files_only=True,
                trust_remote_code=False,
                use_safetensors=True,
                attn_implementation="eager",
            )
    except (ValueError, OSError, KeyError) as exc:
        raise InputError(
            f"cannot load {folder} as a text classifier: {str(exc).splitlines()[0][:240]}",
            hint="the folder needs a built-in architecture's config.json with a "
            "*ForSequenceClassification head and model.safetensors",
        ) from None
    settings = tokenizer_settings(folder / "tokenizer.json", max_length)
    names = _model_input_names(model, settings["model_input_names"])
    settings["model_input_names"] = names
    return _wrapper_class()(model.eval(), names), folder / "tokenizer.json", settings


def _check_hf_folder(folder: Path) -> None:
    """Collect every missing file, then raise once."""
    if not folder.is_dir():
        raise InputError(f"model folder not found: {folder}")
    missing = [n for n in ("config.json", "tokenizer.json") if not (folder / n).is_file()]
    if not any((folder / n).is_file() for n in _HF_WEIGHTS):
        missing.append("model.safetensors")
        if any(folder.glob("*.bin")):
            raise InputError(
                f"{folder} holds pickled weights (*.bin) only: refused",
                hint="re-save with model.save_pretrained(dir, safe_serialization=True)",
            )
    if missing:
        raise InputError(
            f"{folder} is not a complete transformers folder: missing {', '.join(missing)}",
            hint="save with model.save_pretrained(dir) and tokenizer.save_pretrained(dir) "
            "(a fast tokenizer writes tokenizer.json)",
        )


def _model_input_names(model: Any, tokenizer_names: Sequence[str]) -> list[str]:
    """The tokenizer's input names that the model's forward accepts, in INPUT_ORDER."""
    import inspect

    accepted = set(inspect.signature(model.forward).parameters)
    return [n for n in INPUT_ORDER if n in tokenizer_names and n in accepted]


def tokenizer_settings(tokenizer_json: str | Path, max_length: int | None = None) -> dict:
    """What the device must reproduce: {lowercase, max_length, padding, truncation, model_input_names,
    pad_id, pad_token}.

    Read from tokenizer.json (normalizer, truncation, padding) and tokenizer_config.json beside it if present.
    ``max_length`` (tokens) overrides the file's; without either it is 128.
    """
    path = Path(tokenizer_json)
    spec = _read_tokenizer_json(path)
    cfg_path = path.with_name("tokenizer_config.json")
    cfg = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else {}
    trunc, pad = spec.get("truncation") or {}, spec.get("padding") or {}
    length = int(max_length or trunc.get("max_length") or 128)
    names = cfg.get("model_input_names") or list(INPUT_ORDER)
    return {
        "lowercase": _lowercase(spec.get("normalizer")),
        "max_length": length,
        "padding": "max_length",
        "truncation": True,
        "model_input_names": [n for n in INPUT_ORDER if n in names],
        "pad_id": int(pad.get("pad_id", 0)),
        "pad_token": pad.get("pad_token", "[PAD]"),
    }


def _read_tokenizer_json(path: Path) -> dict:
    if not path.is_file():
        raise InputError(
            f"tokenizer.json not found: {path}",
            hint="save a fast tokenizer with tokenizer.save_pretrained(dir)",
        )
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path} is not valid JSON ({exc})") from None


def _lowercase(normalizer: dict | None) -> bool:
    """True when the normalizer (or one in a Sequence) lower-cases."""
    if not normalizer:
        return False
    if normalizer.get("type") == "Lowercase" or normalizer.get("lowercase"):
        return True
    return any(_lowercase(n) for n in normalizer.get("normalizers", []))


# --- data ---------------------------------------------------------------------------------------------------


def read_texts(path: str | Path, *, require_labels: bool = False) -> tuple[list[str], np.ndarray | None]:
    """Texts and int64 labels (or None) from .txt (one per line), .jsonl (text, optional label) or .csv.

    A .csv needs a header with a ``text`` column and optionally ``label``. Labels must be given for every
    row or for none. Blank .txt lines are skipped. Every problem found is reported in one InputError.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"text data not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in TEXT_SUFFIXES:
        raise InputError(
            f"{path.name}: text data must be .txt, .jsonl or .csv, not '{suffix or '(none)'}'",
            hint='one text per line in .txt; {"text": ..., "label": N} per line in .jsonl',
        )
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{path.name} is not UTF-8 text (byte {exc.start})", hint="re-save it as UTF-8"
        ) from None
    reader = {".txt": _rows_txt, ".jsonl": _rows_jsonl, ".csv": _rows_csv}[suffix]
    texts, labels = _check_rows(path, reader(path, raw), require_labels)
    log.info("read %d texts%s from %s", len(texts), " with labels" if labels is not None else "", path)
    return texts, labels


def _rows_txt(path: Path, raw: str) -> list[tuple[int, Any, Any]]:
    return [(i, line.strip(), None) for i, line in enumerate(raw.splitlines(), 1) if line.strip()]


def _rows_jsonl(path: Path, raw: str) -> list[tuple[int, Any, Any]]:
    rows, bad = [], []
    for i, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            bad.append(f"line {i}: not JSON ({exc.msg})")
            continue
        if not isinstance(obj, dict):
            bad.append(f"line {i}: expected an object with 'text', got {type(obj).__name__}")
            continue
        rows.append((i, obj.get("text"), obj.get("label")))
    _raise_if(path, bad, 'each line must be {"text": "...", "label": 0}')
    return rows


def _rows_csv(path: Path, raw: str) -> list[tuple[int, Any, Any]]:
    reader = csv.DictReader(io.StringIO(raw, newline=""))
    fields = [f.strip() for f in (reader.fieldnames or [])]
    if "text" not in fields:
        raise InputError(
            f"{path.name}: no 'text' column (header: {', '.join(fields) or 'empty'})",
            hint="the first row must name the columns: text,label",
        )
    reader.fieldnames = fields
    has_label = "label" in fields
    return [(reader.line_num, row.get("text"), row.get("label") if has_label else None) for row in reader]


def _check_rows(
    path: Path, rows: list[tuple[int, Any, Any]], require_labels: bool
) -> tuple[list[str], np.ndarray | None]:
    """Validate (line, text, label) rows; collect every problem, raise once."""
    bad = [
        f"line {i}: 'text' missing or not a non-empty string"
        for i, t, _ in rows
        if not isinstance(t, str) or not t.strip()
    ]
    labelled = [r for r in rows if r[2] not in (None, "")]
    if labelled and len(labelled) != len(rows):
        bad.append(f"{len(rows) - len(labelled)} of {len(rows)} rows have no label (give all or none)")
    labels = [_to_label(lab) for _, _, lab in labelled]
    bad += [
        f"line {r[0]}: label {r[2]!r} is not a non-negative integer"
        for r, lab in zip(labelled, labels, strict=True)
        if lab is None
    ]
    if not rows:
        bad.append("no texts")
    if require_labels and not labelled:
        bad.append("no labels (validation needs a 'label' for every text)")
    _raise_if(path, bad, "labels are class indices 0..K-1")
    y = np.asarray(labels, dtype=np.int64) if labelled else None
    return [t for _, t, _ in rows], y


def _to_label(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        out = int(str(value).strip()) if not isinstance(value, int) else value
    except ValueError:
        return None
    return out if out >= 0 else None


def _raise_if(path: Path, problems: list[str], hint: str) -> None:
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise InputError(f"{path.name}: {'; '.join(problems[:5])}{more}", hint=hint)


def tokenize(
    texts: Sequence[str],
    tokenizer_json: str | Path,
    max_length: int,
    input_names: Sequence[str] = INPUT_ORDER,
) -> dict[str, np.ndarray]:
    """Token arrays {name: (N, max_length) int64} with truncation and right padding to ``max_length`` tokens.

    Uses only the ``tokenizers`` library, as the device runner does; ``input_names`` picks the outputs.
    """
    from tokenizers import Tokenizer

    settings = tokenizer_settings(tokenizer_json, max_length)
    tok = Tokenizer.from_file(str(tokenizer_json))
    tok.enable_truncation(max_length)
    tok.enable_padding(length=max_length, pad_id=settings["pad_id"], pad_token=settings["pad_token"])
    enc = tok.encode_batch(list(texts))
    arrays = {
        "input_ids": [e.ids for e in enc],
        "attention_mask": [e.attention_mask for e in enc],
        "token_type_ids": [e.type_ids for e in enc],
    }
    return {n: np.asarray(arrays[n], dtype=np.int64).reshape(len(enc), max_length) for n in input_names}


# --- export -------------------------------------------------------------------------------------------------


def export_text_onnx(
    module: Any, max_length: int, path: str | Path, opset: int = 17, input_names: Sequence[str] = INPUT_ORDER
) -> dict:
    """torch module -> ONNX with fixed (1, max_length) int64 inputs named ``input_names``, output ``logits``.

    int64 is what PyTorch embeddings take and what ONNX Runtime runs without casts; the TFLite path casts
    to int32 itself. Returns {"inputs": [...], "max_length": L, "opset": opset}.
    """
    import torch

    names = [n for n in INPUT_ORDER if n in input_names]
    example = tuple(
        torch.ones((1, max_length), dtype=torch.int64)
        if n != "token_type_ids"
        else torch.zeros((1, max_length), dtype=torch.int64)
        for n in names
    )
    try:
        with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module.eval(),
                example,
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=names,
                output_names=["logits"],
                do_constant_folding=True,
            )
    except Exception as exc:
        raise StageError(
            f"ONNX export of the text model failed: {type(exc).__name__}: {str(exc)[:300]}",
            hint="check forward(input_ids, attention_mask[, token_type_ids]) runs on int64 "
            f"(1, {max_length}) tensors",
        ) from None
    return {"inputs": names, "max_length": max_length, "opset": opset}


# --- INT8 ---------------------------------------------------------------------------------------------------

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
) -> dict:
    """Static INT8 (QDQ) for a transformer text classifier; returns the settings used (for the manifest).

    Quantized: every MatMul/Gemm with a constant weight (per-channel symmetric int8 weights, ``activation``
    ("uint8" asymmetric or "int8" symmetric) inputs calibrated with ``method`` on ``calib_inputs``
    {name: (N, L) int64}) and the word-embedding Gather (int8 table: half of a small BERT's bytes).
    Kept float: Softmax, LayerNorm, Gelu, residual Adds, attention's activation x activation MatMuls, the
    classifier head when ``keep_head_float``, and any node named in ``keep_float``.
    ``percentile`` (percent of |activation| values kept in range) applies to method "percentile".
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if method not in CALIBRATION_METHODS:
        raise InputError(
            f"calibration method must be one of {', '.join(CALIBRATION_METHODS)}, not {method!r}"
        )
    if activation not in ("uint8", "int8"):
        raise InputError(f"activation type must be 'uint8' or 'int8', not {activation!r}")
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
    }
    try:
        quantize_static(
            str(fp32_path),
            str(out_path),
            reader,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["MatMul", "Gemm", "Gather"],
            nodes_to_quantize=nodes,
            per_channel=True,
            weight_type=QuantType.QInt8,
            activation_type=QuantType.QInt8 if activation == "int8" else QuantType.QUInt8,
            calibrate_method={
                "minmax": CalibrationMethod.MinMax,
                "entropy": CalibrationMethod.Entropy,
                "percentile": CalibrationMethod.Percentile,
            }[method],
            extra_options={
                "ActivationSymmetric": activation == "int8",
                "MatMulConstBOnly": True,
                "CalibPercentile": percentile,
            },
        )
    except Exception as exc:
        raise StageError(
            f"static INT8 quantization failed: {type(exc).__name__}: {str(exc)[:300]}",
            hint="try method='minmax' or fewer calibration texts; run with --debug",
        ) from None
    log.info("static INT8: %d nodes quantized, kept float: %s", len(nodes), ", ".join(kept) or "none")
    return settings


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
    """onnxruntime's dynamic INT8 (int8 weights, activations quantized per call): the usual BERT baseline."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    try:
        quantize_dynamic(str(fp32_path), str(out_path), weight_type=QuantType.QInt8)
    except Exception as exc:
        raise StageError(
            f"dynamic INT8 quantization failed: {type(exc).__name__}: {str(exc)[:300]}"
        ) from None
    return {
        "format": "dynamic (QOperator)",
        "weights": "int8 per-tensor",
        "activations": "uint8, per inference",
    }


def pick_int8(candidates: dict[str, dict]) -> tuple[str, str]:
    """Choose among INT8 candidates {name: {"accuracy_drop": points, "latency_ratio": x FP32}}; (name, why).

    Lowest accuracy drop wins unless it is more than 1.25x slower than the fastest candidate; then the faster
    one is taken when its drop is within 0.25 points. The reason names both numbers so the report can say why.
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
        why = "fastest, and its accuracy is within 0.25 points of the most accurate"
    else:
        why = "lowest accuracy drop" + ("" if best == fastest else " at comparable speed")
    return best, (
        f"{best}: {why} (drop {b['accuracy_drop']:.2f} points, {b['latency_ratio']:.2f}x FP32 latency)"
    )
