"""TFLite backend: FP32 ONNX -> TensorFlow SavedModel (onnx2tf) -> FP32 or full-integer INT8 .tflite.

Why this path: onnx2tf is the only maintained ONNX -> TensorFlow converter in the pinned stack, but its own
`convert()` downloads sample images from the internet and writes several unused .tflite variants (minutes).
We therefore ask onnx2tf only for the in-memory Keras model (``disable_model_save``), with its sample-image
download replaced by the caller's calibration data, save a lean inference-only SavedModel ourselves, and run
``tf.lite.TFLiteConverter`` with a ``representative_dataset`` from the same calibration set as the ONNX path.

Layouts: the ONNX model takes NCHW; onnx2tf turns 4-D image inputs into NHWC. `TFLiteRunner` accepts NCHW
like the ONNX runner and transposes, so validation code can feed both backends the same arrays.

Text models (several integer token inputs, float logits) convert with `convert_text_int8`: "dynamic-range"
(int8 weights, float activations) or "full-integer" (calibrated int8 activations; LiteRT 2.1 can abort the
whole process on such a BERT, so callers run it in a child process first: `edgepack.device.measure.outputs`).
`TFLiteRunner` takes {input name: array} for them and maps names, not positions, to the model's inputs.

Heavy imports (tensorflow, onnx2tf, ai_edge_litert) happen inside functions: importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from edgepack.backends.base import all_samples, tail_indices
from edgepack.errors import InputError, StageError
from edgepack.inputs.data import num_samples
from edgepack.isolate import mark

log = logging.getLogger(__name__)

IO_DTYPES = ("int8", "uint8", "float32")
#: Ops that only convert between float and integer at the model boundary; they are not float compute.
BOUNDARY_OPS = frozenset({"QUANTIZE", "DEQUANTIZE"})
_SAVED_MODEL_DIR = "saved_model"
_STAMP = "edgepack_onnx_sha256.txt"
_SAMPLE_COUNT = 20  # images onnx2tf uses for its shape-estimation dry run (what it would have downloaded)
_NOT_IN_TF_NAMES = re.compile(r"[^A-Za-z0-9_.\\/>-]")  # TensorFlow's scope names take only these characters


def convert(onnx_path: Path, workdir: Path, calib: np.ndarray | None, *, io_dtype: str = "int8",
            progress: Callable[[str], None] | None = None, allow_float: bool = False,
            bias_correction: bool = True, xnnpack_activations: bool = True,
            weight_rounding: str = "nearest", float_tail: bool = False, unrounded: Sequence[str] = ()) -> Path:
    """Convert an FP32 ONNX model (static shapes, NCHW image input) to a .tflite file in `workdir`.

    `calib` None gives an FP32 model (float32 io). `calib` (N,C,H,W float32, preprocessed exactly as at
    inference) gives a full-integer INT8 model whose input/output dtype is `io_dtype` ("int8", "uint8" or
    "float32"; ignored for FP32). Ops left in float (no INT8 kernel, found with `float_ops`: the converter
    keeps them silently) make the build fail with a StageError naming them, unless `allow_float` is True:
    then they are kept in float and logged by name as a warning.
    `bias_correction` (INT8 only): convert a bias-corrected copy of the model (`tflite_prep.bias_correct`:
    each Conv/Gemm bias absorbs the mean output shift of the converter's weight rounding; the summary is
    written to `workdir`/int8_prep.json). `xnnpack_activations` (INT8 only): hard-swish and hard-sigmoid spelled
    so that LiteRT's XNNPACK delegate runs them in INT8 (`tflite_prep.delegate_friendly_activations`; faster,
    a little more rounding than the converter's HARD_SWISH kernel). `weight_rounding` (INT8 only): "nearest" (the
    converter's own) or "gptq": the copy's Conv/Gemm weights are put on the converter's int8 grid beforehand, each
    layer's chosen to reproduce its outputs on `calib` (edgepack.backends.rounding); the converter keeps those
    integers, and bias correction measures against the original weights. The FP32 model is never changed.
    `float_tail` (INT8 only): the ops after the network's last convolution / fully-connected layer on every path
    to an output (a detector's reshapes, concats, box decoding and softmax) stay in float and the outputs are
    float32: in INT8 a decoded box coordinate shares one scale with every anchor's (an SSD at 192 px: steps of
    0.75-0.95 px). See `float_tail_nodes`; the names are recorded in `workdir`/int8_prep.json.
    `unrounded` (INT8 only): activations of the ONNX model (tensor names) never rounded to INT8: the op that writes
    each one and the ops that read it stay in float (`tflite_graph.ops_for_onnx`, `tflite_graph.with_readers`),
    and the copy's bias correction and learned rounding leave those layers alone (`onnx_regions.float_region`). An
    activation that no Conv/Gemm/MatMul writes cannot be found in the .tflite and stays INT8; the ones kept are
    recorded in `workdir`/int8_prep.json ("unrounded").
    Calibration ranges TensorFlow's calibrator records too wide (an op overwriting its input in place: see
    `tflite_calibration`) are narrowed to the values the tensors took before quantizing; the count is recorded
    in `workdir`/int8_prep.json. The SavedModel is cached in `workdir` by ONNX hash, so an FP32 + INT8 pair
    without bias correction runs onnx2tf once (with it, twice: the INT8 one is built from the corrected copy).
    Never touches the network. Returns the path of the written .tflite.
    """
    say = progress or (lambda msg: None)
    onnx_path, workdir = Path(onnx_path), Path(workdir)
    _check_args(onnx_path, calib, io_dtype)
    workdir.mkdir(parents=True, exist_ok=True)
    source = (_prepared(onnx_path, workdir, calib, say, bias_correction, xnnpack_activations, weight_rounding,
                        unrounded) if calib is not None else onnx_path)
    saved_model = _saved_model(source, workdir, calib, say,
                               _SAVED_MODEL_DIR + ("_int8_prep" if source != onnx_path else ""))
    if calib is None:
        say("TFLite: converting FP32")
        mark("TFLite converter: FP32")
        data = _run_converter(saved_model, None, io_dtype, strict=True)
        return _write(workdir / f"{onnx_path.stem}_fp32.tflite", data, onnx_path)
    say(f"TFLite: full-integer INT8 with {num_samples(calib)} calibration samples, io {io_dtype}")
    mark("TFLite converter: calibrate and quantize to INT8")
    from edgepack.backends import tflite_calibration

    repaired: list[dict] = []
    kept: dict[str, list[str]] = {}
    with tflite_calibration.repaired_calibration(repaired.append):
        if unrounded:
            data = _selective_converter(saved_model, calib, io_dtype, float_tail, source, unrounded, kept)
        else:
            data = _int8_bytes(saved_model, calib, io_dtype, float_tail)
    out = _write(workdir / f"{onnx_path.stem}_int8.tflite", data, onnx_path, respell=True)
    tail = float_tail_nodes(out.read_bytes()) if float_tail else []  # named as in the written model
    fields = {"float_tail": tail} if tail else {}

    if repaired and repaired[-1]["repaired"]:
        fields["calibration_ranges"] = repaired[-1]
    if fields:
        _record_prep(workdir, **fields)
    _check_scales(out)
    mark("LiteRT: prepare the INT8 model (list float ops)")
    # the converter keeps ops without an INT8 kernel in float without failing; the float tail is asked for, and
    # so are the unrounded activations' ops (the written file keeps the first part of a fused op's name)
    asked = {*kept.get("ops", []), *(n.split(";")[0] for n in kept.get("ops", []))}
    floats = float_ops(out, expected=tail)  # "OP_TYPE:output name"
    names = [f for f in floats if f.split(":", 1)[1] not in asked]
    if unrounded:
        _record_prep(workdir, unrounded={
            "tensors": list(kept.get("tensors", [])),
            "not_found": [t for t in unrounded if t not in kept.get("tensors", [])],
            "float_ops": [f for f in floats if f not in names]})
    if names and not allow_float:
        out.unlink()
        raise StageError(f"{len(names)} op(s) the TFLite converter could not quantize (no INT8 version) would run in "
                         f"float: {', '.join(names)}",
                         hint="pass --allow-float-ops (allow_float_ops=True in Python) to keep them in float, "
                              "or replace them in the model")
    if names:
        log.info("kept in float (not quantized by the converter): %s", ", ".join(names))  # the quantize stage warns
    return out


def _prepared(onnx_path: Path, workdir: Path, calib: np.ndarray, say, bias_correction: bool = True,
              xnnpack_activations: bool = True, weight_rounding: str = "nearest",
              unrounded: Sequence[str] = ()) -> Path:
    """Write the copy used only for INT8 conversion (see tflite_prep: padded MaxPools pad with their calibrated
    minimum, hard-swish/hard-sigmoid spelled so XNNPACK runs them in INT8, their 1/6 folded into the next
    convolutions where it can be, then bias correction); return its
    path, or `onnx_path` itself when nothing had to change."""
    import json

    from edgepack.backends import tflite_prep

    mark("onnxruntime: calibration statistics for the INT8 copy (MaxPool padding, bias correction)")
    out = workdir / f"{onnx_path.stem}_int8_prep.onnx"
    summary = {"maxpool_padding": tflite_prep.pad_maxpools(onnx_path, out, calib)}
    summary["hard_activations"] = (tflite_prep.delegate_friendly_activations(out, out) if xnnpack_activations
                                   else {})
    summary["scales_folded_forward"] = _fold_forward(out)
    if not summary["maxpool_padding"]["moved"] and not any(summary["hard_activations"].values()) \
            and not summary["scales_folded_forward"] \
            and not bias_correction and weight_rounding == "nearest":
        out.unlink()
        return onnx_path
    import onnx

    from edgepack.backends import rounding

    rounding.check(weight_rounding)
    floats: list[str] = []
    if unrounded:  # the layers that will run in float: their weights are never rounded, nothing to correct
        from edgepack.backends.onnx_regions import float_region

        prepared = onnx.load(str(out))
        floats = sorted({n for t in unrounded for n in float_region(prepared, t)})
    learned = None
    if weight_rounding == "gptq":
        say("TFLite: learning the int8 weight rounding on the calibration data")
        learned, summary["weight_rounding"] = rounding.gptq_weights(onnx.load(str(out)), calib, qmax=127,
                                                                    skip=floats)
    if bias_correction:
        say("TFLite: bias correction for the converter's weight rounding")
        summary.update(tflite_prep.bias_correct(out, out, calib, rounded=learned, skip=floats))
    elif learned:
        model = onnx.load(str(out))
        rounding.apply(model, learned)
        onnx.save(model, str(out))
    (workdir / "int8_prep.json").write_text(json.dumps(summary, indent=1) + "\n")
    return out


def _fold_forward(path: Path) -> int:
    """Fold the scalar Mul/Add nodes the respelled activations left that convolutions can absorb (the 1/6 of
    hard-swish and hard-sigmoid; `onnx_fold.fold_forward`) in the file at ``path``: the same function with fewer
    INT8 ops and roundings. How many nodes went."""
    import onnx

    from edgepack.backends import onnx_fold

    folded, gone = onnx_fold.fold_forward(onnx.load(str(path)))
    if gone:
        onnx.save(folded, str(path))
    return gone


def _check_scales(path: Path) -> None:
    """A StageError naming the ops whose INT8 scale LiteRT would abort on (see tflite_check), before anything
    prepares the model."""
    from edgepack.backends import tflite_check

    faults = tflite_check.scale_faults(path)
    if faults:
        path.unlink()
        raise StageError(f"the TFLite converter wrote an INT8 model LiteRT cannot run: {tflite_check.describe(faults)}",
                         hint="a calibration range includes an extreme value (a padding constant or an inf/NaN in "
                              "the model); check the calibration data; targets that ship ONNX are listed by "
                              "`edgepack targets`")


def _int8_bytes(saved_model: Path, calib: np.ndarray, io_dtype: str, float_tail: bool = False) -> bytes:
    """Full-integer conversion; if the INT8-only op set makes the converter fail, retry allowing float ops.
    ``float_tail``: the tail after the last convolution stays float (`convert(float_tail=True)`)."""
    if float_tail:
        return _float_tail_converter(saved_model, calib, io_dtype)
    try:
        return _run_converter(saved_model, calib, io_dtype, strict=True)
    except StageError as strict_error:
        log.warning("INT8-only conversion failed (%s); retrying with float fallback to name the ops",
                    strict_error)
        return _run_converter(saved_model, calib, io_dtype, strict=False)


#: Ops that do a network's heavy work; what follows the last of them on every path to an output is its "tail".
COMPUTE_OPS = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "BATCH_MATMUL",
                         "CONV_3D"})


def _float_tail_converter(saved_model: Path, calib, io_dtype: str) -> bytes:
    """INT8 conversion with the ops of `float_tail_nodes` kept in float (float32 outputs): the converter
    calibrates, then its MLIR quantizer quantizes everything but those nodes (``denylisted_nodes``, the mechanism
    of TensorFlow's QuantizationDebugger selective quantization). ``fully_quantize=False``: with True the quantizer
    appends a QUANTIZE to every output, and the decoded boxes are rounded to one INT8 scale again; the input is
    still ``io_dtype``."""
    return _selective_converter(saved_model, calib, io_dtype, True)


def _selective_converter(saved_model: Path, calib, io_dtype: str, float_tail: bool, source: Path | None = None,
                         unrounded: Sequence[str] = (), kept: dict | None = None) -> bytes:
    """INT8 conversion that keeps named ops in float through the MLIR quantizer's ``denylisted_nodes``: the float
    tail (``float_tail``), and the ``unrounded`` activations of the ONNX model ``source`` (the SavedModel's own
    source): the calibrated model's ops that write them (found by their weights) and the ops that read them. Fills
    ``kept``: {"tensors": the activations found, "ops": their denylisted op output names}."""
    import onnx
    import tensorflow as tf
    from tensorflow.lite.python import convert as tf_convert

    from edgepack.backends import tflite_graph

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = _representative(calib)
    converter._experimental_calibrate_only = True  # noqa: SLF001 - the documented selective-quantization path
    try:
        calibrated = converter.convert()
        tail = float_tail_nodes(calibrated) if float_tail else []
        writers = tflite_graph.ops_for_onnx(calibrated, onnx.load(str(source)), unrounded) if unrounded else {}
        ops = [n for n in tflite_graph.with_readers(tflite_graph.ops(calibrated), list(writers.values()))
               if n not in tail]
        if kept is not None:
            kept.update(tensors=[t for t in unrounded if t in writers], ops=ops)
        return tf_convert.mlir_quantize(calibrated, fully_quantize=not float_tail,
                                        input_data_type=getattr(tf, io_dtype),
                                        output_data_type=tf.float32 if float_tail else getattr(tf, io_dtype),
                                        denylisted_nodes=tail + ops)
    except Exception as exc:  # the converter raises ConverterError and assorted others
        kind = "activations kept unrounded" if unrounded else "a float tail"
        raise StageError(f"TFLite converter failed (INT8 with {kind}): {_first_line(exc)}") from exc


def float_tail_nodes(model: bytes) -> list[str]:
    """Output tensor names of the ops of a .tflite flatbuffer after which no COMPUTE_OPS op follows on any path:
    the post-processing tail (reshapes, concats, decoding, softmax), in execution order."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=model)
    tensors = {t["index"]: t["name"] for t in interp.get_tensor_details()}
    ops = interp._get_ops_details()  # noqa: SLF001 - the only per-op view LiteRT's Python API gives
    tail = tail_indices([(op["op_name"], [int(i) for i in op["inputs"]], [int(o) for o in op["outputs"]])
                         for op in ops], COMPUTE_OPS)
    return [tensors[int(ops[k]["outputs"][0])] for k in tail
            if len(ops[k]["outputs"]) and ops[k]["op_name"] not in BOUNDARY_OPS]


def _record_prep(workdir: Path, **fields) -> None:
    """Add ``fields`` to ``workdir``/int8_prep.json (what the INT8 conversion did beyond the converter's default)."""
    import json

    prep = workdir / "int8_prep.json"
    record = json.loads(prep.read_text()) if prep.exists() else {}
    prep.write_text(json.dumps({**record, **fields}, indent=1) + "\n")


TEXT_INT8_MODES = ("dynamic-range", "full-integer")


def convert_text_int8(onnx_path: Path, workdir: Path, mode: str, calib: dict[str, np.ndarray] | None = None) -> Path:
    """INT8 .tflite of an FP32 ONNX text model (integer token inputs, float logits) in `workdir`.

    mode "dynamic-range": int8 weights (per channel), activations float; LiteRT quantizes each
    FULLY_CONNECTED input on the fly. "full-integer": int8 activations calibrated on `calib`
    ({input name: (N, L) ints}), INT8 builtin kernels only; the io stays tokens in, float32 logits out.
    Reuses the SavedModel `convert(onnx_path, workdir, None)` wrote. Returns the path written.
    """
    if mode not in TEXT_INT8_MODES:
        raise InputError(f"text INT8 mode must be one of {', '.join(TEXT_INT8_MODES)}, not {mode!r}")
    if mode == "full-integer" and not calib:
        raise InputError("full-integer INT8 needs calibration token arrays")
    saved_model = _saved_model(Path(onnx_path), Path(workdir), None, lambda msg: None)
    from edgepack.backends import tflite_calibration

    with tflite_calibration.repaired_calibration():
        data = _run_converter(saved_model, calib if mode == "full-integer" else None, "float32", strict=True,
                              weights_only=mode == "dynamic-range")
    return _write(Path(workdir) / f"{Path(onnx_path).stem}_int8_{mode}.tflite", data, onnx_path)


def _check_args(onnx_path: Path, calib: np.ndarray | None, io_dtype: str) -> None:
    """Reject bad input early with messages a person can act on."""
    if not onnx_path.is_file():
        raise InputError(f"ONNX model not found: {onnx_path}")
    if io_dtype not in IO_DTYPES:
        raise InputError(f"io_dtype must be one of {', '.join(IO_DTYPES)}, not {io_dtype!r}")
    if isinstance(calib, dict):  # several inputs: (N, ...) arrays by input name
        if not calib or num_samples(calib) == 0:
            raise InputError("calibration data must hold samples for every input")
    elif calib is not None and (calib.ndim != 4 or len(calib) == 0):
        raise InputError(f"calibration data must be a non-empty N,C,H,W array, got shape {calib.shape}")


def _saved_model(onnx_path: Path, workdir: Path, calib: np.ndarray | None, say,
                 name: str = _SAVED_MODEL_DIR) -> Path:
    """Return `workdir`/`name` for this ONNX file, converting with onnx2tf unless cached (hash stamp)."""
    out = workdir / name
    digest = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    stamp = out / _STAMP
    if stamp.is_file() and stamp.read_text().strip() == digest:
        say("onnx2tf: reusing the SavedModel converted earlier")
        return out
    shutil.rmtree(out, ignore_errors=True)
    say("onnx2tf: ONNX -> TensorFlow (NHWC)")
    mark(f"onnx2tf: {onnx_path.name} to TensorFlow")
    model = _onnx2tf_keras(onnx_path, out, calib)
    _save_inference_only(model, out)
    stamp.write_text(digest + "\n")
    return out


def _onnx2tf_keras(onnx_path: Path, scratch: Path, calib: np.ndarray | None):
    """Run onnx2tf in memory only (no files, no .tflite variants, no download) and return its Keras model."""
    _quiet_tensorflow()
    import onnx2tf

    onnx_path = _for_onnx2tf(onnx_path, scratch)
    try:
        with _offline_samples(calib):
            model = onnx2tf.convert(
                input_onnx_file_path=str(onnx_path), output_folder_path=str(scratch),
                disable_model_save=True, not_use_onnxsim=True,  # the ONNX is already onnxslim-simplified
                non_verbose=True, verbosity="error",
            )
    except SystemExit as exc:  # onnx2tf calls sys.exit(1) on some errors
        raise StageError(f"onnx2tf could not convert {onnx_path.name} (exit {exc.code})",
                         hint="run with --debug for onnx2tf's log") from None
    except Exception as exc:
        raise StageError(f"onnx2tf could not convert {onnx_path.name}: {exc}",
                         hint="an operator onnx2tf cannot map: run with --debug for its trace; the ONNX targets "
                              "(raspberry-pi-4, raspberry-pi-5, x86-64) need no conversion") from exc
    if model is None:
        raise StageError(f"onnx2tf returned no model for {onnx_path.name}")
    return model


def _for_onnx2tf(onnx_path: Path, scratch: Path) -> Path:
    """`onnx_path`, or a copy beside `scratch` that onnx2tf converts faithfully: node names TensorFlow accepts (see
    _tf_safe_node_names) and plain Einsum contractions spelled as MatMul (onnx_einsum: onnx2tf searched 14,400
    transpositions per 5-D attention Einsum of MaxViT, for minutes, and kept a wrong one)."""
    import onnx

    from edgepack.backends import onnx_einsum

    model = onnx.load(str(onnx_path))
    renamed = _tf_safe_node_names(model)
    model, spelled = onnx_einsum.lower(model)
    if not renamed and not spelled:
        return onnx_path
    out = scratch.with_name(f"{onnx_path.stem}_for_tf.onnx")
    onnx.save(model, str(out))
    return out


def _tf_safe_node_names(model) -> int:
    """Rename, in place, the nodes of `model` whose names TensorFlow refuses as scope names (characters outside
    [A-Za-z0-9_.\\/>-]): onnx2tf names TensorFlow ops after ONNX nodes, and paddle2onnx names nodes "Softmax@0"
    (PP-OCR's text-direction classifier failed with "not a valid scope name"). Returns how many were renamed."""
    bad = [node for node in model.graph.node if _NOT_IN_TF_NAMES.search(node.name)]
    taken = {node.name for node in model.graph.node}
    for node in bad:
        name = base = _NOT_IN_TF_NAMES.sub("_", node.name)
        for k in range(1, len(taken) + 2):
            if name not in taken:
                break
            name = f"{base}_{k}"
        taken.add(name)
        node.name = name
    return len(bad)


@contextlib.contextmanager
def _offline_samples(calib: np.ndarray | None) -> Iterator[None]:
    """Replace onnx2tf's `download_test_image_data` (an internet fetch) with local NHWC float32 samples.

    onnx2tf uses these images only for a dry run that estimates shapes; it resizes them to the input size.
    The caller's calibration images are the most faithful choice; else seeded uniform noise in [-1, 1].
    """
    import onnx2tf.onnx2tf as o2t
    import onnx2tf.utils.common_functions as common

    if calib is not None and not isinstance(calib, dict) and calib.shape[1] == 3:
        samples = np.ascontiguousarray(np.asarray(calib[:_SAMPLE_COUNT], np.float32).transpose(0, 2, 3, 1))
    else:
        samples = np.random.default_rng(0).uniform(-1, 1, (_SAMPLE_COUNT, 128, 128, 3)).astype(np.float32)
    saved = (o2t.download_test_image_data, common.download_test_image_data)
    o2t.download_test_image_data = common.download_test_image_data = lambda: samples
    try:
        yield
    finally:
        o2t.download_test_image_data, common.download_test_image_data = saved


def _save_inference_only(model, out: Path) -> None:
    """Write `model` as a SavedModel with one serving signature and its variables only.

    Saving the Keras model itself traces every layer for re-loading (about 20 s for EfficientNet-Lite0);
    a bare tf.Module with one tf.function takes about 1 s and is all the TFLite converter needs.
    """
    import tensorflow as tf

    specs = [tf.TensorSpec(t.shape, t.dtype, t.name) for t in model.inputs]
    module = tf.Module()
    module.serve = tf.function(lambda *xs: model(list(xs) if len(xs) > 1 else xs[0]), input_signature=specs)
    signature = module.serve.get_concrete_function()
    owned = {id(v) for v in model.variables}
    if any(id(v) not in owned for v in signature.variables):
        # Some onnx2tf layers create a tf.Variable the Keras model does not own, with a name a SavedModel
        # refuses (shufflenet_v2's depthwise kernels, "/stage3/.../Conv/kernel"): the traced function is
        # frozen instead (every variable a constant), which is what the TFLite converter does anyway.
        from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

        frozen = convert_variables_to_constants_v2(signature)
        module = tf.Module()
        module.serve = tf.function(lambda *xs: frozen(*xs), input_signature=specs)
        signature = module.serve.get_concrete_function()
    else:
        module.variables_ = list(model.variables)
    try:
        tf.saved_model.save(module, str(out), signatures={"serving_default": signature})
    except AssertionError as exc:  # onnx2tf's model captures a TensorFlow resource it does not track
        raise StageError(f"onnx2tf's TensorFlow model cannot be saved for the TFLite converter: {_first_line(exc)}",
                         hint="onnx2tf's model captures a TensorFlow object it does not track; targets that "
                              "ship ONNX INT8 are listed by `edgepack targets`") from exc


def _run_converter(saved_model: Path, calib, io_dtype: str, *, strict: bool, weights_only: bool = False) -> bytes:
    """Run tf.lite.TFLiteConverter on the SavedModel: FP32 when `calib` is None, else full-integer INT8.
    `weights_only` (calib None): dynamic-range INT8, int8 weights and float activations.

    `strict` allows only INT8 builtin kernels (the converter fails on any op without one); otherwise float
    builtins are allowed as a fallback. Weights are quantized per channel (TFLite's default), activations
    per tensor from the representative dataset, biases int32.
    """
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    if weights_only or calib is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if calib is not None and not weights_only:
        converter.representative_dataset = _representative(calib)
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.TFLITE_BUILTINS_INT8 if strict else tf.lite.OpsSet.TFLITE_BUILTINS]
        converter.inference_input_type = getattr(tf, io_dtype)
        converter.inference_output_type = getattr(tf, io_dtype)
    try:
        return converter.convert()
    except Exception as exc:  # the converter raises ConverterError and assorted others
        raise StageError(f"TFLite converter failed: {_first_line(exc)}", hint=converter_hint(exc)) from exc


def _representative(calib) -> Callable[[], Iterator[list[np.ndarray] | dict[str, np.ndarray]]]:
    """Representative dataset for the converter: each calibration sample as a batch of 1, NCHW -> NHWC;
    text models' {input name: (N, L)} token arrays as {name: (1, L)} (the SavedModel keeps the ONNX names)."""

    def samples() -> Iterator[list[np.ndarray] | dict[str, np.ndarray]]:
        if isinstance(calib, dict):  # onnx2tf's SavedModel takes N,C,... float inputs channels-last
            for i in range(num_samples(calib)):
                yield {k: channels_last(v[i:i + 1]) for k, v in calib.items()}
            return
        for x in calib:
            sample = np.asarray(x, np.float32)[None]
            yield [sample.transpose(0, 2, 3, 1) if sample.ndim == 4 else sample]

    return samples


def io_details(tflite_path: Path) -> dict:
    """Describe a .tflite file's inputs and outputs for the manifest and the app developer.

    Each entry: name, shape (list of ints), dtype ("int8"/"uint8"/"float32"...), layout ("NHWC" for 4-D
    tensors from onnx2tf, "NC" for 2-D, None otherwise) and quantization {scale, zero_point} (real value =
    scale * (q - zero_point)) or None for float tensors.
    """
    interp = _interpreter(tflite_path, threads=1)
    return {"inputs": [_describe(d) for d in interp.get_input_details()],
            "outputs": [_describe(d) for d in output_details(interp)]}


def output_details(interp) -> list[dict]:
    """The interpreter's output details in the source model's output order.

    ``get_output_details`` lists outputs by tensor index, which the converter does not keep in the model's order
    (MTCNN's PNet came out as [scores, boxes] where the ONNX model gives [boxes, scores]: the "first output" a
    classifier is judged on, the golden keys and the manifest then named another tensor). The serving signature
    names them ``output_0``, ``output_1``, ... in the Keras model's order, which is the ONNX graph's; without
    such a signature the index order is kept. (The bundle's run.py orders them the same way.)"""
    details = interp.get_output_details()
    try:
        outputs = interp._get_full_signature_list()["serving_default"]["outputs"]  # noqa: SLF001 - the indexes
    except (AttributeError, KeyError):
        return details
    order = sorted((int(k.rsplit("_", 1)[1]), i) for k, i in outputs.items()
                   if k.startswith("output_") and k.rsplit("_", 1)[1].isdigit())
    by_index = {d["index"]: d for d in details}
    if len(order) != len(details) or {i for _, i in order} != set(by_index):
        return details
    return [by_index[i] for _, i in order]


def _describe(detail: dict) -> dict:
    """One tensor's io description from the interpreter's details dict."""
    scale, zero_point = detail["quantization"]
    shape = [int(s) for s in detail["shape"]]
    return {
        "name": detail["name"], "shape": shape, "dtype": np.dtype(detail["dtype"]).name,
        "layout": {4: "NHWC", 3: "NWC", 2: "NC"}.get(len(shape)),
        "quantization": {"scale": float(scale), "zero_point": int(zero_point)} if scale else None,
    }


#: ops that compare their inputs and write integers: no arithmetic to quantize, exact on float inputs
COMPARE_OPS = frozenset({"ARG_MAX", "ARG_MIN"})


def float_ops(tflite_path: Path, expected: Sequence[str] = ()) -> list[str]:
    """Ops that compute in float in a (nominally INT8) .tflite file, as "OP_TYPE:output_tensor_name".

    An op counts when any of its input or output tensors is floating point; QUANTIZE/DEQUANTIZE are the
    boundary conversions of a float32-io model and are not counted, nor are the ops whose output tensor is named
    in ``expected`` (a float tail, see `convert`), nor an op that only compares floats into integers (COMPARE_OPS:
    a model returning its logits and their argmax reads the float logits edgepack keeps; it was refused as "could
    not quantize"). An FP32 model lists every op.
    """
    expected = set(expected)
    interp = _interpreter(tflite_path, threads=1, delegates=False)  # a delegate hides the ops it takes
    tensors = {t["index"]: t for t in interp.get_tensor_details()}

    def floating(i: int) -> bool:
        return i in tensors and np.issubdtype(tensors[i]["dtype"], np.floating)

    found = []
    for op in interp._get_ops_details():  # noqa: SLF001 - the only per-op view LiteRT's Python API gives
        if op["op_name"] in BOUNDARY_OPS:
            continue
        indexes = [i for i in list(op["inputs"]) + list(op["outputs"]) if i >= 0]
        if op["op_name"] in COMPARE_OPS and not any(map(floating, op["outputs"])):
            continue
        if any(map(floating, indexes)):
            out_name = tensors[op["outputs"][0]]["name"] if len(op["outputs"]) else "?"
            if out_name not in expected:
                found.append(f"{op['op_name']}:{out_name}")
    return found


class TFLiteRunner:
    """Run a .tflite model in LiteRT like the ONNX runner: NCHW float32 in, float32 out.

    Handles the layout (NCHW -> NHWC for 4-D inputs, NHWC -> NCHW for 4-D outputs) and the io quantization
    (input q = round(x / scale) + zero_point, clipped to the dtype; output x = scale * (q - zero_point)).
    A model with several inputs (text) takes {input name: array}; each is matched to the model input whose
    name contains it ("serving_default_input_ids:0" for "input_ids") and cast to that input's dtype.
    `threads` is the LiteRT thread count; XNNPACK is LiteRT's default delegate.
    """

    def __init__(self, path: Path, threads: int = 1, arithmetic: str | None = None):
        # ``arithmetic`` is accepted for the contract: LiteRT's XNNPACK INT8 kernels give the same outputs on x86
        # and ARM (bit-identical on an emulated Cortex-A72), so there is one arithmetic
        self.path = Path(path)
        self.threads = threads
        self._interp = _interpreter(self.path, threads)
        self._ins = self._interp.get_input_details()
        self._in = self._ins[0]
        self._outs = output_details(self._interp)

    def run(self, x: np.ndarray | dict[str, np.ndarray]) -> np.ndarray:
        """Run one batch-1 input (NCHW float32 array, or token arrays by name); return the first output."""
        return self.run_outputs(x)[0]

    def run_samples(self, x: np.ndarray | dict[str, np.ndarray], progress=None,
                    all_outputs: bool = False) -> np.ndarray | list[np.ndarray]:
        """First output for every sample of x (N, ...), batch 1 as on the device; with ``all_outputs``, every
        output so stacked, in a list."""
        if all_outputs:
            return all_samples(self, x, progress)
        from edgepack.inputs.data import rows

        outs = []
        n = num_samples(x)
        for i in range(n):
            if progress and i % 16 == 0:
                progress(i, n)
            outs.append(self.run(rows(x, i, i + 1))[0])
        return np.stack(outs)

    def run_outputs(self, x: np.ndarray | dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run one input; return every output, dequantized to float32, 4-D ones back in NCHW."""
        for index, value in self._feeds(x):
            self._interp.set_tensor(index, value)
        self._interp.invoke()
        outs = [_dequantize(self._interp.get_tensor(d["index"]), d) for d in self._outs]
        in_hw = tuple(self._in["shape"][1:3]) if len(self._in["shape"]) == 4 else None
        return [_output_nchw(o, in_hw) for o in outs]

    def _feeds(self, x: np.ndarray | dict[str, np.ndarray]) -> list[tuple[int, np.ndarray]]:
        """(tensor index, value) for each model input: channels-last, quantized to the input's dtype."""
        if isinstance(x, dict):
            return [(d["index"], _feed_value(x[match_input(d["name"], x)], d)) for d in self._ins]
        x = np.asarray(x, np.float32)
        if x.ndim == 4:
            x = x.transpose(0, 2, 3, 1)
        return [(self._in["index"], _quantize(x, self._in))]

    def timed(self, x: np.ndarray | dict[str, np.ndarray]) -> Callable[[], None]:
        """A call that runs the model on ``x`` as an app does: the input already in the model's layout and dtype
        (converted once, here), then set, invoke, read the raw outputs. Latency times this, not the float32 /
        NCHW conversions `run` adds for validation (0.3-1.3 ms per run on a 160-320 px image here, as much as a
        quarter of a small INT8 model's time)."""
        feeds, interp, outs = self._feeds(x), self._interp, [d["index"] for d in self._outs]

        def call() -> None:
            for index, value in feeds:
                interp.set_tensor(index, value)
            interp.invoke()
            for index in outs:
                interp.get_tensor(index)

        return call


def match_input(tensor_name: str, feed: dict) -> str:
    """The key of `feed` a TFLite input tensor name means: the longest key the name contains (TFLite names
    signature inputs like "serving_default_input_ids:0"); an InputError when none does."""
    for name in sorted(feed, key=len, reverse=True):
        if name in tensor_name:
            return name
    raise InputError(f"model input {tensor_name!r} matches none of the given inputs ({', '.join(sorted(feed))})",
                     hint="text inputs are fed by name: input_ids, attention_mask, token_type_ids")


def channels_last(a: np.ndarray) -> np.ndarray:
    """An N,C,... array as onnx2tf's model takes it: N,...,C (NCHW -> NHWC, NCW -> NWC); 2-D arrays (token ids, a
    feature vector) as they are."""
    return np.ascontiguousarray(np.moveaxis(a, 1, -1)) if a.ndim >= 3 else a


def _feed_value(value: np.ndarray, detail: dict) -> np.ndarray:
    """One named input for a LiteRT input tensor: channels-last (see channels_last); float arrays quantized with
    its scale and zero point (an INT8-io model), integer arrays (token ids) cast to its dtype."""
    value = channels_last(np.asarray(value))
    if not np.issubdtype(value.dtype, np.floating):
        return np.ascontiguousarray(value, detail["dtype"])
    return _quantize(value.astype(np.float32, copy=False), detail)


def _quantize(x: np.ndarray, detail: dict) -> np.ndarray:
    """Float32 -> the input tensor's dtype with its scale and zero point (no-op for float inputs)."""
    dtype = np.dtype(detail["dtype"])
    scale, zero_point = detail["quantization"]
    if not np.issubdtype(dtype, np.integer) or not scale:
        return np.ascontiguousarray(x, dtype)
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale) + zero_point, info.min, info.max).astype(dtype)


def _dequantize(q: np.ndarray, detail: dict) -> np.ndarray:
    """An output tensor's values as float32 (scale * (q - zero_point) for integer tensors)."""
    scale, zero_point = detail["quantization"]
    if np.issubdtype(q.dtype, np.integer) and scale:
        return (scale * (q.astype(np.float32) - zero_point)).astype(np.float32)
    return q.astype(np.float32, copy=True)


def _interpreter(path: Path, threads: int, delegates: bool = True):
    """A LiteRT interpreter for `path`, tensors allocated (XNNPACK applied unless `delegates` is False)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    resolver = OpResolverType.AUTO if delegates else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    with _without_delegate_banner():
        interp = Interpreter(model_path=str(path), num_threads=threads, experimental_op_resolver_type=resolver)
        interp.allocate_tensors()
    return interp


_BANNER = b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n"


@contextlib.contextmanager
def _without_delegate_banner():
    """LiteRT's C++ side prints ``INFO: Created TensorFlow Lite XNNPACK delegate for CPU.`` on the process's
    stderr when it applies XNNPACK (in builds, verify and bench alike); every other line it writes meanwhile is
    passed on. (File descriptor 2 goes to a temporary file for the call: the line is written by C++, not Python.)"""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            rest = caught.read().replace(_BANNER, b"")
            if rest:
                os.write(2, rest)


def _write(path: Path, data: bytes, onnx_path: Path | None = None, respell: bool = False,
           rewrites: dict | None = None) -> Path:
    """Write the converter's bytes, compacted (`tflite_compact`: the same model, repeated vectors stored once, io
    tensors named as in `onnx_path`), atomically-enough (temp file then rename) and return the path. ``respell``:
    first rewritten so that XNNPACK takes more of the model (`tflite_xnnpack`; same outputs, checked); the count of
    each rewrite goes into ``rewrites`` when given (files sharing a folder), else into the folder's int8_prep.json."""
    from edgepack.backends import tflite_compact

    names: dict[str, list[str]] = {}
    if onnx_path is not None:
        from edgepack.backends.onnx import io_details

        io = io_details(onnx_path)
        names = {"input_names": [i["name"] for i in io["inputs"]], "output_names": [o["name"] for o in io["outputs"]]}
    if respell:
        from edgepack.backends import tflite_xnnpack

        data, done = tflite_xnnpack.delegate_friendly(data)
        if rewrites is not None:
            rewrites.update({k: v for k, v in done.items() if v})
        elif any(done.values()):
            _record_prep(path.parent, xnnpack_rewrites=done)
    data = tflite_compact.compact(data, **names)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return path


def _quiet_tensorflow() -> None:
    """Keep TensorFlow's C++ INFO/WARNING logs off the user's terminal unless they chose a level."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def converter_hint(exc: BaseException) -> str | None:
    """What to do about a converter failure a person can fix: an Erf op (GELU as an ONNX file below opset 20
    spells it; edgepack's own exports use 20 for TFLite targets, a user's .onnx may not) has no TFLite kernel."""
    if "'tf.Erf' op is neither" in str(exc):
        return ("the model computes GELU with Erf, which TFLite cannot run: export it at ONNX opset 20 or later "
                "(GELU is then one Gelu op), e.g. torch.onnx.export(..., opset_version=20), or build from the "
                "PyTorch model (a transformers folder, a factory), which edgepack exports so")
    return None


def _first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception message (the converter's are pages long)."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


Runner = TFLiteRunner  # the name every backend exposes (see edgepack.backends)


def _output_nchw(out: np.ndarray, in_hw: tuple | None) -> np.ndarray:
    """A 4-D output in NCHW, as the ONNX model gives it. onnx2tf turns most 4-D outputs into NHWC but leaves
    some (e.g. a segmentation map computed from the input) in NCHW: the output is kept as it is when only its
    last two axes have the (NHWC) input's aspect ratio, and transposed from NHWC otherwise. (The bundle's
    runner does the same: edgepack.tasks.postprocess.to_nchw.)"""
    if out.ndim != 4:
        return out
    a, b, c = out.shape[1:]

    def spatial(h: int, w: int) -> bool:
        return in_hw is not None and h * int(in_hw[1]) == w * int(in_hw[0])

    return out if spatial(b, c) and not spatial(a, b) else out.transpose(0, 3, 1, 2)
