"""`edgepack diagnose BUNDLE`: per-layer INT8 error of a bundle's shipped ONNX model, from the bundle alone.

A bundle is untrusted input: nothing it records may name code to import or files outside it. So the model
source recorded in its manifest (``config.model``, which may be a ``package.module:factory``) is never loaded.
The reference is the bundle's own INT8 model with its activation rounding removed (every QuantizeLinear ->
DequantizeLinear pair on an activation becomes a Clip to the range that pair can represent, so the Relu/Clip
activations the quantizer folded into that range still apply; weights stay as shipped): the table shows the
error each layer's *activation* rounding injects. To include weight rounding, diagnose the model source instead.
Samples are read with the preprocessing (or the tokenizer) the bundle records, validated like any input.
"""

from __future__ import annotations

from pathlib import Path

from edgepack.errors import ConfigError, InputError, VerifyError
from edgepack.guards import safety, tempdirs
from edgepack.util import ProgressFn, no_progress, sha256_file

DIAG_SAMPLES = 16


def run(bundle: Path, data_path: str, progress: ProgressFn = no_progress, output_costs: int = 0) -> list[dict]:
    """Per-layer rows (see edgepack.diagnose.layer_errors), worst first, for the bundle folder ``bundle``; the first
    ``output_costs`` rows with ``output_sqnr_db`` too (edgepack.quantize.diagnose.measure)."""
    from edgepack.bundle.read import read_manifest
    from edgepack.quantize.diagnose import measure

    man = read_manifest(bundle)
    entry = next((m for m in man["models"] if m["format"] == "onnx"), None)
    if entry is None:
        raise InputError(f"{bundle} ships no ONNX model: diagnose measures ONNX models",
                         hint="diagnose the model source instead")
    int8 = safety.bundle_file(bundle, entry["file"], "model file")
    listed = man["files"].get(entry["file"])
    if listed is None or sha256_file(int8) != listed.get("sha256"):
        raise VerifyError(f"{entry['file']} differs from the manifest's digest", hint="run edgepack verify BUNDLE")
    with tempdirs.scratch("diagnose-") as work:
        reference = work / "reference.onnx"
        float_activations(int8, reference)
        x = _samples(bundle, man, data_path, int8)
        rows = measure(reference, int8, x, output_costs, progress)
    if not rows:
        raise InputError(f"{int8.name} rounds no activations (dynamic INT8?): there is no per-layer error "
                         "to measure", hint="diagnose the model source instead of the bundle")
    return rows


def float_activations(qdq_path: Path, out: Path) -> None:
    """Write the QDQ model at ``qdq_path`` with every activation Q->DQ pair replaced by a Clip to the pair's
    representable range, (qmin - zero point) x scale to (qmax - zero point) x scale: the quantizer drops a Relu or
    Clip whose range the Q saturation reproduces, so an Identity would remove the activation itself (an
    EfficientNet-Lite0 bundle's "reference" was then 7 dB from FP32, its INT8 model 32 dB). A pair whose scale
    or zero point is not a constant scalar becomes an Identity. A DequantizeLinear carrying a folded constant
    multiply (its scale c times its QuantizeLinear's: a hard-swish's x * 1/6, `onnx_quantize.fold_factors`) gets that
    Mul after its Clip: without it the reference skipped every hard-swish's 1/6 and a PP-OCR classifier's logits
    read -9.8 dB."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    from edgepack.backends.onnx_quantize import fold_factors, representable_range, saturation

    model = onnx.load(str(qdq_path), load_external_data=False)
    graph = model.graph
    folded = fold_factors(model)
    init_of = {i.name: i for i in graph.initializer}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    quant = {n.output[0]: n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in init_of
             and n.output[0] not in outputs
             and all(c.op_type == "DequantizeLinear" for c in consumers.get(n.output[0], []))}
    nodes = []
    for node in graph.node:
        if node.op_type == "QuantizeLinear" and node.output[0] in quant:
            continue
        if node.op_type == "DequantizeLinear" and node.input[0] in quant:
            q = quant[node.input[0]]
            bounds = representable_range(q, init_of)
            name = node.name
            target, c = node.output[0], folded.get(node.output[0])
            clipped = target + "__unfolded" if c is not None else target
            node = (helper.make_node("Identity", [q.input[0]], [clipped]) if bounds is None
                    else saturation(graph, q.input[0], clipped, bounds))
            node.name = name
            if c is not None:
                nodes.append(node)
                graph.initializer.append(numpy_helper.from_array(np.array(c, np.float32), target + "__c"))
                node = helper.make_node("Mul", [clipped, target + "__c"], [target])
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, str(out))


def _samples(bundle: Path, man: dict, data_path: str, model_path: Path):
    """Up to DIAG_SAMPLES samples read as the bundle's manifest says (image preprocessing or its tokenizer)."""
    from edgepack.inputs import data

    pre = man["preprocess"]
    if pre.get("kind") == "text":
        return data.load_text(data_path, text=_text_info(bundle, pre), count=DIAG_SAMPLES, seed=0,
                              role="diagnosis").x
    if pre.get("kind") == "tensors":
        from edgepack.backends import onnx as onnx_backend

        specs = onnx_backend.io_details(model_path)["inputs"]
        return data.load_tensors(data_path, specs=specs, count=DIAG_SAMPLES, seed=0, role="diagnosis",
                                 hint="pass an .npz with each input by name: "
                                      + ", ".join(s["name"] for s in specs)).x
    from edgepack import schema
    from edgepack.backends import onnx as onnx_backend
    from edgepack.config import PREPROCESS_KEYS, Preprocess

    try:
        preprocess = schema.parse(Preprocess, {k: v for k, v in pre.items() if k in PREPROCESS_KEYS},
                                  where=f"{bundle}/manifest.json preprocess")
    except ConfigError as exc:
        raise VerifyError(exc.message, hint="the bundle was edited or is not an edgepack bundle") from None
    shape = onnx_backend.input_shape(model_path)
    if shape is None:
        raise InputError(f"{model_path.name} has a symbolic input shape", hint="diagnose the model source instead")
    return data.load(data_path, input_shape=shape, preprocess=preprocess, count=DIAG_SAMPLES, seed=0,
                     role="diagnosis").x


def _text_info(bundle: Path, pre: dict):
    from edgepack.inputs.sources import TextInfo
    from edgepack.inputs.text import INPUT_ORDER

    tokenizer = safety.bundle_file(bundle, pre.get("tokenizer"), "tokenizer")
    names, length = pre.get("model_input_names"), pre.get("max_length")
    if (not isinstance(names, list) or not names or not set(names) <= set(INPUT_ORDER)
            or not isinstance(length, int) or isinstance(length, bool) or not 1 <= length <= 8192):
        raise VerifyError("the manifest's text preprocessing (model_input_names, max_length) is not valid",
                          hint="the bundle was edited or is not an edgepack bundle")
    return TextInfo(tokenizer, {"model_input_names": names, "max_length": length})
