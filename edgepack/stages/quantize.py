"""Quantize stage: static INT8 with the calibration set, for every format the target asks for."""

from __future__ import annotations

import importlib
import time

from edgepack.inputs.data import num_samples, take
from edgepack.stages.context import Artifact, BuildContext
from edgepack.util import quiet_root_logger, spread_indices

#: INT8 recipes by name (edgepack.inputs.kinds says which one each input kind and format uses)
RECIPES = {
    "calibrated-search": "edgepack.stages.quantize:quantize_onnx_searched",
    "full-integer": "edgepack.stages.quantize:convert_tflite_full_integer",
    "static-vs-dynamic": "edgepack.stages.quantize_candidates:onnx_candidates",
    "full-integer-or-dynamic-range": "edgepack.stages.quantize_candidates:tflite_candidates",
}


def run(ctx: BuildContext) -> None:
    """Every format the target ships, with the INT8 recipe the input kind asks for (RECIPES)."""
    for fmt in ("onnx", "tflite"):
        if fmt in ctx.target.formats:
            module, name = RECIPES[ctx.inputs.int8_recipes[fmt]].split(":")
            getattr(importlib.import_module(module), name)(ctx)


def calibration_method(ctx: BuildContext) -> str:
    return ctx.config.calibration_method or ctx.target.calibration_method


def quantize_onnx_searched(ctx: BuildContext) -> None:
    """Default recipe first; if it misses the accuracy budget, the accuracy-aware search (search.py)."""
    from edgepack.quantize import search

    ctx.progress("quantizing ONNX to INT8 (calibrating)", 0, 1)
    final = ctx.workdir / "model_int8.onnx"
    quantize = lambda st, p, deadline: _quantize_onnx(ctx, st, p, deadline)  # noqa: E731
    evaluate = lambda p: evaluate_int8(ctx, p)  # noqa: E731
    meets = lambda q: meets_budget(ctx, q)  # noqa: E731
    default = search.trial("default recipe", {}, quantize, evaluate, meets, lambda p: None, final)
    ctx.records["quantization_onnx"] = default.record
    chosen, trials, seconds = default, [default], 0.0
    if not default.met and ctx.config.max_search_time > 0:
        ctx.progress("INT8 misses the quality budget: searching (calibration, float layers)", 0, 1)
        default.p50_ms = _latency_1thread(ctx, final)
        chosen, trials, seconds = search.run(quantize, evaluate, meets, _space(ctx), ctx.workdir,
                                             lambda p: _latency_1thread(ctx, p), ctx.config.max_search_time,
                                             default, _size_budget_bytes(ctx))
        search.adopt(chosen, final)
        ctx.outputs[str(final)] = ctx.outputs.get(str(chosen.path))
        ctx.records["quantization_onnx"] = chosen.record
        _report_search(ctx, chosen, trials, seconds)
    ctx.add(Artifact("onnx", "int8", final))


def _quantize_onnx(ctx: BuildContext, settings: dict, out, deadline: float | None = None) -> dict:
    from edgepack.backends.onnx_quantize import quantize_onnx

    calib = ctx.calib.x
    if settings.get("more_calib"):
        more = _more_calibration(ctx)
        calib = more if more is not None else calib
    if settings.get("max_calib") and num_samples(calib) > settings["max_calib"]:  # evenly spread, fixed
        calib = take(calib, spread_indices(num_samples(calib), settings["max_calib"]))
    from edgepack.errors import StageError

    try:
        with quiet_root_logger():
            return quantize_onnx(ctx.get("onnx", "fp32").path, out, calib,
                                 method=settings.get("method", calibration_method(ctx)),
                                 per_channel=settings.get("per_channel", ctx.config.per_channel),
                                 exclude_nodes=settings.get("exclude_nodes", ()), target_arch=ctx.target.arch,
                                 deadline=deadline,
                                 weight_rounding=settings.get("weight_rounding", ctx.config.weight_rounding),
                                 float_tail=_float_tail(ctx))
    except (AssertionError, FloatingPointError, OverflowError) as exc:  # ORT's "scale issue": inf/NaN ranges
        raise StageError(f"INT8 calibration failed: {type(exc).__name__}: {str(exc)[:200] or 'no message'}",
                         hint="an activation reached an infinite or NaN range on the calibration data: check the "
                              "data's range and the model") from exc


def evaluate_int8(ctx: BuildContext, path, fmt: str = "onnx") -> dict:
    """Quality of the INT8 model at ``path`` against the FP32 one of format ``fmt`` on the validation set;
    both outputs are cached in ctx.outputs for the validate stage."""
    from edgepack.device import measure
    from edgepack.util import host_cores

    def run(p, what):  # in a child: the runtime can abort on a candidate, which must not take the build down
        return measure.outputs(fmt, p, ctx.val.x, threads=host_cores(), workdir=ctx.workdir, what=what,
                               all_outputs=getattr(ctx.task, "all_outputs", False))

    ref = ctx.outputs.get(f"{fmt}:fp32")
    if ref is None:
        ref = ctx.outputs[f"{fmt}:fp32"] = run(ctx.get(fmt, "fp32").path, f"running the FP32 {fmt} model")
    got = ctx.outputs.get(str(path))
    if got is None:
        got = ctx.outputs[str(path)] = run(path, f"running the INT8 {fmt} candidate {path.name}")
    return ctx.task.quality(ref, got, ctx.val.truth)


def search_budget(ctx: BuildContext, q: dict) -> dict | None:
    """The budget row INT8 candidates are held to: the task's quality budget, else the min_output_sqnr_db floor
    on the first output, which judges it when no quality budget does (stages/judge). Without the floor a generic
    model (PP-OCRv4's recogniser: 9.2 dB against 10) failed validation without the search ever running."""
    from edgepack.stages import judge
    from edgepack.stages.validate import quality_budget
    from edgepack.tasks import budgets

    budget = quality_budget(ctx, q)
    if budget is None and q.get("output_match") is not None and judge.first_output_integer(ctx):
        budget = budgets.row("output_match", q["output_match"], judge.match_floor(ctx), ">=")
    elif budget is None and q.get("sqnr_db") is not None:
        budget = budgets.row("output_sqnr_db", q["sqnr_db"], judge.sqnr_floor(ctx)[0], ">=")
    return budget


def meets_budget(ctx: BuildContext, q: dict) -> bool:
    budget = search_budget(ctx, q)
    return budget is None or budget["passed"]


def _size_budget_bytes(ctx: BuildContext) -> int | None:
    """max_size_mb (command line, else profile) in bytes, None when unset."""
    from edgepack.stages.validate import MB, _pick

    limit = _pick(ctx, "max_size_mb")
    return None if limit is None else int(limit * MB)


def _latency_1thread(ctx: BuildContext, path) -> float:
    from edgepack.device import measure
    from edgepack.inputs.data import rows

    res = measure.latency({"m": ("onnx", path)}, rows(ctx.val.x, 0, 1), threads=1, runs=20, workdir=ctx.workdir)
    return res["m"]["p50"]


def _space(ctx: BuildContext):
    from edgepack.quantize import search
    from edgepack.quantize.diagnose import costly_activations, layer_errors

    def diagnose(path):
        rows = layer_errors(ctx.get("onnx", "fp32").path, path, ctx.val.x)
        ctx.records["diagnosis"] = {"model": "before float fallback", "layers": rows[:40]}
        return rows

    def costly(path, rows):
        from edgepack.errors import Interrupted

        try:
            ranked = costly_activations(ctx.get("onnx", "fp32").path, path, ctx.val.x, rows)
        except Interrupted:
            raise
        except Exception as exc:  # noqa: BLE001 - a measurement the search can do without: its layer steps remain
            ctx.warn(f"accuracy-aware search: the activations' cost at the outputs could not be measured "
                     f"({type(exc).__name__}: {str(exc)[:200]}); searching float layers only")
            return []
        ctx.records["diagnosis"]["costly_activations"] = [{k: a[k] for k in ("tensor", "output_sqnr_db")}
                                                          for a in ranked]
        return ranked

    return search.SearchSpace(method=calibration_method(ctx), per_channel=ctx.config.per_channel,
                              more_calib=lambda: _more_calibration(ctx), diagnose=diagnose,
                              weight_rounding=ctx.config.weight_rounding, costly_activations=costly)


def _more_calibration(ctx: BuildContext):
    """Twice the calibration samples from the same source, when it has them (cached)."""
    if "more_calib" not in ctx.outputs:
        from edgepack.inputs import data

        source = ctx.config.calib or data.default_calibration()
        held = data.count(source)
        if held is not None and held <= len(ctx.calib):  # nothing more to load (it would be the same set again)
            ctx.outputs["more_calib"] = None
            return None
        more = ctx.inputs.load(source, role="calibration", count=2 * len(ctx.calib), seed=ctx.config.seed,
                               shape=ctx.input_shape)
        ctx.outputs["more_calib"] = more.x if len(more) > len(ctx.calib) else None
    return ctx.outputs["more_calib"]


def _report_search(ctx: BuildContext, chosen, trials, seconds: float) -> None:
    ctx.records["quantization_search"] = {"seconds": round(seconds, 1), "chosen": chosen.name,
                                          "trials": [t.row() for t in trials],
                                          "max_seconds": ctx.config.max_search_time}
    stopped = [t.name for t in trials if t.stopped]
    failed = [t.name for t in trials if t.failed]
    over = [t.name for t in trials if t.over_size]
    if over:
        ctx.warn(f"accuracy-aware search: {len(over)} configuration(s) made the file larger than the size budget "
                 f"({_size_budget_bytes(ctx) / 1e6:g} MB) and were not chosen: {', '.join(over)}")
    if failed:
        ctx.warn(f"accuracy-aware search: {len(failed)} configuration(s) failed and were skipped: "
                 f"{', '.join(failed)} (why: the manifest's stages.quantization_search.trials)")
    if not chosen.met:
        ctx.warn(f"accuracy-aware search tried {len(trials) - len(stopped) - len(failed)} configurations in "
                 f"{seconds:.0f} s "
                 + (f"(stopped '{stopped[0]}' at the {ctx.config.max_search_time:.0f} s limit) " if stopped else "")
                 + f"and none met the quality budget; shipping the best: {chosen.name}")
    else:
        ctx.warn(f"default INT8 missed the quality budget; the search chose '{chosen.name}' after "
                 f"{len(trials)} trials ({seconds:.0f} s)")


def convert_tflite_full_integer(ctx: BuildContext) -> None:
    """ONNX FP32 -> TFLite FP32 (the reference) and full-integer INT8 (what ships), same calibration set."""
    from edgepack import backends, isolate
    from edgepack.backends import tflite_check

    tflite = backends.get("tflite")
    asked = ctx.config.calibration_method
    if asked and asked != "minmax":  # said before the slow conversion, and recorded below
        ctx.warn(f"TFLite full-integer INT8: the TFLite converter calibrates min/max ranges itself; "
                 f"--calibration-method {asked} applies to ONNX INT8 only")

    fp32_onnx = ctx.get("onnx", "fp32").path
    workdir = ctx.workdir / "tflite"  # one workdir: the SavedModel is converted once for both
    ctx.progress("converting to TFLite FP32 and full-integer INT8 (onnx2tf, calibrating)", 0, 1)
    written = workdir / f"{fp32_onnx.stem}_int8.tflite"
    fp32, int8, fidelity = isolate.call(
        convert_tflite_pair, fp32_onnx, workdir, ctx.calib.x, ctx.target.tflite_io_dtype, ctx.config.allow_float_ops,
        ctx.config.weight_rounding, _float_tail(ctx), key="tflite-convert", step="TFLite conversion",
        diagnose=lambda: tflite_check.diagnose(written),
        hint="the TFLite converter or LiteRT aborted on this model; --debug shows its output; "
             "targets that ship ONNX INT8 instead are listed by `edgepack targets`")
    ctx.add(Artifact("tflite", "fp32", fp32))
    clock = TrialClock(ctx.config.max_search_time)
    int8, spelling = _hard_activation_spelling(ctx, fp32_onnx, int8, workdir, clock)
    rounding = _prep_record(int8.parent).get("weight_rounding", {"method": "nearest"})
    int8, rounding = _learned_rounding_trial(ctx, fp32_onnx, int8, workdir, spelling, rounding, clock)
    int8, unrounded = _unrounded_trial(ctx, fp32_onnx, int8, workdir, spelling, rounding, clock)
    tail = _prep_record(int8.parent).get("float_tail")
    all_int8 = int8
    int8, mixed = _float_layers_trial(ctx, int8, clock)
    floats = tflite.float_ops(int8, expected=tail or ())
    if unrounded and unrounded["shipped"] and not (mixed and mixed["shipped"]):  # intended float ops, not failures
        asked = set(_prep_record(int8.parent).get("unrounded", {}).get("float_ops", []))
        unrounded["float_ops"] = [f for f in floats if f in asked]
        floats = [f for f in floats if f not in asked]
    if mixed and mixed["shipped"]:  # quantized from the FP32 SavedModel: none of the INT8 copy's preparation
        spelling = {"xnnpack_spelling": 0, "shipped": "converter"}
        rounding = {"method": "nearest", "bias_correction": False, "trials": rounding.get("trials", [])}
        # the float ops it chose, as float_ops names them (the converter renames an output op's tensor), apart
        # from those the converter could not quantize in the all-INT8 model either
        unquantizable = set(tflite.float_ops(all_int8, expected=tail or ()))
        mixed["float_ops"] = [f for f in floats if f not in unquantizable]
        floats = [f for f in floats if f in unquantizable]
    ctx.add(Artifact("tflite", "int8", int8))
    ctx.records["quantization_tflite"] = {"io_dtype": ctx.target.tflite_io_dtype, "float_ops": floats,
                                          "weights": "int8 per-channel", "activations": "int8 per-tensor",
                                          "calibration": "minmax (the converter's own)",
                                          "calibration_ranges": _prep_record(int8.parent).get("calibration_ranges"),
                                          "converter": "tf.lite.TFLiteConverter (full-integer)",
                                          "hard_activations": spelling, "weight_rounding": rounding,
                                          **_xnnpack_rewrites(int8.parent, mixed),
                                          "fp32_fidelity": fidelity, **({"float_layers": mixed} if mixed else {}),
                                          **({"unrounded_activations": unrounded} if unrounded else {}),
                                          **({"float_tail": tail, "output_dtype": "float32"} if tail else {}),
                                          **({"search_stopped": clock.stopped} if clock.stopped else {})}
    if clock.stopped:
        ctx.warn(f"TFLite: the {clock.seconds:g} s search time (--max-search-time) ran out; not tried: "
                 f"{', '.join(clock.stopped)}")
    if floats:
        ctx.warn(f"TFLite: {len(floats)} op(s) the converter could not quantize (no INT8 version) were kept in float "
                 f"(--allow-float-ops): {', '.join(floats[:8])}")


#: the clock the TFLite trials read (a test moves it)
_now = time.monotonic


class TrialClock:
    """The TFLite trials' share of --max-search-time, counted from the first trial that starts (the ONNX search
    has its own). A trial starts only while time is left; one already running finishes. ``stopped`` names the
    trials not started for want of time. A 300 s budget had been a 5 min ONNX search followed by TFLite trials
    (another spelling, learned rounding, four float-op variants, each converted and validated) with no limit."""

    def __init__(self, seconds: float):
        self.seconds, self.t0, self.stopped = seconds, None, []

    def allows(self, trial: str) -> bool:
        """Whether ``trial`` may start; when not, it is listed in ``stopped``."""
        if self.t0 is None:
            self.t0 = _now()
            return True
        if _now() - self.t0 < self.seconds:
            return True
        self.stopped.append(trial)
        return False


def _hard_activation_spelling(ctx: BuildContext, fp32_onnx, int8, workdir, clock: TrialClock) -> tuple:
    """(the INT8 .tflite to ship, a record). The INT8 model spells hard-swish/hard-sigmoid so that LiteRT's
    XNNPACK delegate runs them in INT8 (tflite_prep.delegate_friendly_activations): faster, with a little more
    rounding than the converter's own HARD_SWISH kernel. When that model misses the accuracy budget and the
    search is on (--max-search-time > 0), the converter's spelling is converted too, and the one that meets the
    budget (else the more accurate one) ships; the record lists both trials."""
    _tflite_outputs(ctx, int8)
    respelled = sum((_prep_record(workdir).get("hard_activations") or {}).values())
    record = {"xnnpack_spelling": respelled, "shipped": "xnnpack" if respelled else "converter"}
    if not respelled or ctx.config.max_search_time <= 0:
        return int8, record
    tried = _tflite_alternative(ctx, fp32_onnx, int8, workdir / "converter_activations",
                                "the converter's own hard-swish kernels", "the converter's hard-swish spelling",
                                "TFLite conversion (converter's spelling)", clock, xnnpack_activations=False,
                                weight_rounding=ctx.config.weight_rounding)
    if tried is None:
        return int8, record
    alt, row1, row2, better = tried
    record["trials"] = [{"spelling": "xnnpack", "budget": row1}, {"spelling": "converter", "budget": row2}]
    if not better:
        return int8, record
    record["shipped"] = "converter"
    ctx.warn(f"TFLite: with hard-swish spelled for XNNPACK, INT8 missed the budget ({row1['name']} {row1['value']});"
             f" shipping the converter's HARD_SWISH ({row2['value']}), which XNNPACK leaves to LiteRT's slower "
             "built-in INT8 kernels")
    return alt, record


def _learned_rounding_trial(ctx: BuildContext, fp32_onnx, int8, workdir, spelling: dict, record: dict,
                            clock: TrialClock) -> tuple:
    """(the INT8 .tflite to ship, its weight-rounding record). When the INT8 model misses the accuracy budget, the
    search is on and the build rounded weights to nearest, the model is converted again with learned weight
    rounding (edgepack.backends.rounding; same hard-swish spelling) and ships if it meets the budget, else if it
    comes closer; the record lists both trials."""
    if ctx.config.weight_rounding != "nearest" or ctx.config.max_search_time <= 0:
        return int8, record
    tried = _tflite_alternative(ctx, fp32_onnx, int8, workdir / "learned_rounding", "learned weight rounding",
                                "learned weight rounding", "TFLite conversion (learned weight rounding)", clock,
                                xnnpack_activations=spelling.get("shipped") != "converter", weight_rounding="gptq")
    if tried is None:
        return int8, record
    alt, row1, row2, better = tried
    trials = [{"weight_rounding": "nearest", "budget": row1}, {"weight_rounding": "gptq", "budget": row2}]
    if not better:
        return int8, {**record, "trials": trials}
    ctx.warn(f"TFLite: INT8 missed the budget with weights rounded to nearest ({row1['name']} {row1['value']}); "
             f"shipping learned weight rounding ({row2['value']})")
    return alt, {**_prep_record(alt.parent).get("weight_rounding", {"method": "gptq"}), "trials": trials}


#: how many of the activations whose rounding costs most at the outputs the TFLite trials keep unrounded
TFLITE_UNROUNDED_STEPS = (1, 2, 4, 8)  # the ONNX search's steps (search.FLOAT_ACTIVATION_STEPS)


def _unrounded_trial(ctx: BuildContext, fp32_onnx, int8, workdir, spelling: dict, rounding: dict,
                     clock: TrialClock) -> tuple:
    """(the INT8 .tflite to ship, a record or None). When it misses the accuracy budget and the search is on, the
    model is converted again with the 1, 2, 4, 8 activations whose rounding costs most at the outputs kept unrounded
    (ranked as the ONNX search ranks them, `diagnose.costly_activations`, on an INT8 ONNX of the same calibration;
    the ops writing and reading them run in float, the rest as shipped: same spelling, rounding and bias
    correction). The first variant that meets the budget ships, else the one closest to it if it comes closer than
    ``int8``; a variant over the size budget ends the trials. On EfficientNet-Lite0 the float-op variants below
    (ranked by TensorFlow's debugger, quantized without the copy's bias correction) scored under the all-INT8 file;
    with its costliest activation unrounded it agreed with FP32 on 1.2 points more held-out crops."""
    from edgepack import isolate
    from edgepack.backends import tflite as tflite_backend
    from edgepack.errors import EdgepackError, Interrupted

    if ctx.config.max_search_time <= 0 or not TFLITE_UNROUNDED_STEPS:
        return int8, None
    first = evaluate_int8(ctx, int8, "tflite")
    if meets_budget(ctx, first) or not clock.allows("activations unrounded"):
        return int8, None
    ctx.progress("TFLite INT8 misses the accuracy budget: ranking activations by their cost at the outputs", 0, 1)
    ranked = _costly_for_tflite(ctx, workdir)
    if not ranked:
        return int8, None
    best, best_row, chosen = int8, _quality_budget_row(ctx, first), None
    trials = [{"unrounded": 0, "budget": best_row, "size_bytes": int8.stat().st_size}]
    limit = _size_budget_bytes(ctx)
    for k in TFLITE_UNROUNDED_STEPS:
        if len(ranked) < k or (k != TFLITE_UNROUNDED_STEPS[0] and not clock.allows(f"{k} activation(s) unrounded")):
            break
        ctx.progress(f"TFLite INT8 misses the accuracy budget: converting with {k} activation(s) unrounded", 0, 1)
        try:
            alt = isolate.call(tflite_backend.convert, fp32_onnx, workdir / f"unrounded_{k}", ctx.calib.x,
                               io_dtype=ctx.target.tflite_io_dtype, allow_float=ctx.config.allow_float_ops,
                               float_tail=_float_tail(ctx), xnnpack_activations=spelling.get("shipped") != "converter",
                               weight_rounding="gptq" if str(rounding.get("method")).startswith("gptq")
                               else "nearest",
                               unrounded=[a["tensor"] for a in ranked[:k]], key="tflite-convert",
                               step=f"TFLite conversion ({k} activation(s) unrounded)")
            _tflite_outputs(ctx, alt)
        except Interrupted:
            raise
        except Exception as exc:  # noqa: BLE001 - one variant's failure costs that variant, not the build
            ctx.warn(f"TFLite: keeping {k} activation(s) unrounded could not be tried: "
                     f"{exc if isinstance(exc, EdgepackError) else f'{type(exc).__name__}: {str(exc)[:200]}'}")
            break
        size = alt.stat().st_size
        kept = _prep_record(alt.parent).get("unrounded", {}).get("tensors", [])
        if limit is not None and size > limit:
            trials.append({"unrounded": k, "tensors": kept, "budget": None, "size_bytes": size,
                           "over_size_budget": True})
            break
        row = _quality_budget_row(ctx, evaluate_int8(ctx, alt, "tflite"))
        trials.append({"unrounded": k, "tensors": kept, "budget": row, "size_bytes": size})
        if row["passed"] or _closer(row, best_row):
            best, best_row, chosen = alt, row, trials[-1]
        if row["passed"]:
            break
    record = {"ranked": [{k: a[k] for k in ("tensor", "output_sqnr_db")} for a in ranked],
              "trials": trials, "shipped": chosen["unrounded"] if chosen else 0,
              "tensors": chosen["tensors"] if chosen else []}
    if chosen:
        ctx.warn(f"TFLite: INT8 missed the budget ({trials[0]['budget']['name']} {trials[0]['budget']['value']}); "
                 f"shipping {chosen['unrounded']} activation(s) kept unrounded ({best_row['value']}"
                 f"{'' if best_row['passed'] else ', closer but still short'}): {', '.join(chosen['tensors'][:4])}")
    return best, record


def _costly_for_tflite(ctx: BuildContext, workdir) -> list[dict]:
    """The activations ranked by their cost at the outputs (diagnose.costly_activations), on the build's INT8
    ONNX when it made one, else on one quantized here with the default recipe, keeping those a Conv/Gemm/MatMul
    writes (the ones the .tflite's ops can be matched to); [] with a warning when that fails."""
    import onnx

    from edgepack.backends.tflite_graph import weight_layouts
    from edgepack.errors import Interrupted
    from edgepack.quantize.diagnose import costly_activations, layer_errors

    fp32 = ctx.get("onnx", "fp32").path
    try:
        made = ctx.artifacts.get("onnx:int8")
        if made is not None:
            int8 = made.path
        else:
            from edgepack.backends.onnx_quantize import quantize_onnx

            int8 = workdir / "ranking_int8.onnx"
            with quiet_root_logger():
                quantize_onnx(fp32, int8, ctx.calib.x, method="minmax", per_channel=True,
                              target_arch=ctx.target.arch, float_tail=_float_tail(ctx))
        ranked = costly_activations(fp32, int8, ctx.val.x, layer_errors(fp32, int8, ctx.val.x))
        model = onnx.load(str(fp32))  # only what a Conv/Gemm/MatMul writes can be found in the .tflite
        return [a for a in ranked if weight_layouts(model, a["tensor"])]
    except Interrupted:
        raise
    except Exception as exc:  # noqa: BLE001 - a ranking the TFLite trials can do without
        ctx.warn(f"TFLite: the activations' cost at the outputs could not be measured ({type(exc).__name__}: "
                 f"{str(exc)[:200]}); no activation kept unrounded")
        return []


#: how many of the ops INT8 hurts most the TFLite trials keep in float (a MaxViT has ~170 LayerNorm ops)
TFLITE_FLOAT_LAYER_STEPS = (1, 4, 16, 64)


def _float_layers_trial(ctx: BuildContext, int8, clock: TrialClock) -> tuple:
    """(the INT8 .tflite to ship, a record or None). When it misses the accuracy budget and the search is on,
    variants keep the 1, 4, 16, 64 ops INT8 hurts most in float (at most half of them: tflite_mixed; one
    calibration, TensorFlow's QuantizationDebugger ranks the ops); the first that meets the budget ships (the fewest
    float ops). A variant past the size budget (``max_size_mb``) ends the trials: the larger ones only grow, and an
    EfficientNet-Lite0 with every op in float had shipped as "INT8" at 1.00x the FP32 file. When none ships,
    ``int8`` ships and a warning gives the closest variant's figure. The record lists every trial."""
    from edgepack import isolate
    from edgepack.backends import tflite_mixed
    from edgepack.errors import EdgepackError
    from edgepack.stages.validate import MB, _pick

    if ctx.config.max_search_time <= 0:
        return int8, None
    first = evaluate_int8(ctx, int8, "tflite")
    if meets_budget(ctx, first) or not clock.allows("ops in float"):
        return int8, None
    ctx.progress("TFLite INT8 misses the accuracy budget: trying the ops it hurts most in float", 0, 1)
    try:
        made = isolate.call(tflite_mixed.variants, ctx.get("tflite", "fp32").path.parent / "saved_model",
                            ctx.workdir / "tflite_float_layers", ctx.calib.x,
                            ctx.target.tflite_io_dtype, TFLITE_FLOAT_LAYER_STEPS, _float_tail(ctx),
                            key="tflite-convert", step="TFLite conversion (layers in float)")
    except EdgepackError as exc:
        ctx.warn(f"TFLite: keeping layers in float could not be tried: {exc}")
        return int8, None
    best, best_row, chosen = int8, _quality_budget_row(ctx, first), None
    trials = [{"float_layers": 0, "budget": best_row, "size_bytes": int8.stat().st_size}]
    closest, limit = None, _pick(ctx, "max_size_mb")
    for variant in made:
        size = variant["path"].stat().st_size
        if limit is not None and size / MB > limit:   # float weights grow the file: past the size budget it
            trials.append({"float_layers": variant["float_layers"], "budget": None, "size_bytes": size,
                           "over_size_budget": True})  # fails anyway (not validated), later variants only grow
            break
        if variant is not made[0] and not clock.allows(f"{variant['float_layers']} op(s) in float"):
            break
        row = _quality_budget_row(ctx, evaluate_int8(ctx, variant["path"], "tflite"))
        trials.append({"float_layers": variant["float_layers"], "budget": row, "size_bytes": size})
        if row["passed"]:
            best, best_row, chosen = variant["path"], row, variant
            break
        if _closer(row, (closest or trials[0])["budget"]):
            closest = trials[-1]
    record = {"trials": trials, "shipped": chosen["float_layers"] if chosen else 0,
              "layers": chosen["layers"] if chosen else [],
              **({"xnnpack_rewrites": chosen["xnnpack_rewrites"]} if chosen else {})}
    if not chosen and trials[-1].get("over_size_budget"):
        ctx.warn(f"TFLite: INT8 misses the budget ({best_row['name']} {best_row['value']}); keeping the "
                 f"{trials[-1]['float_layers']} op(s) INT8 hurts most in float makes the file "
                 f"{trials[-1]['size_bytes'] / MB:.2f} MB, over the {limit} MB size budget, so all-INT8 ships")
    elif not chosen and closest:  # a bigger, slower model that still fails is not shipped in place of the INT8 one
        ctx.warn(f"TFLite: INT8 misses the budget ({best_row['name']} {best_row['value']}); with the "
                 f"{closest['float_layers']} op(s) INT8 hurts most in float it reaches {closest['budget']['value']}, "
                 "still short, so all-INT8 ships (trials in the report)")
    if chosen:
        ctx.warn(f"TFLite: INT8 missed the budget ({trials[0]['budget']['name']} {trials[0]['budget']['value']}); "
                 f"shipping {chosen['float_layers']} op(s) INT8 hurt most kept in float ({best_row['value']}): "
                 f"{', '.join(chosen['layers'][:4])}{' ...' if len(chosen['layers']) > 4 else ''}")
    return best, record


def _tflite_alternative(ctx: BuildContext, fp32_onnx, int8, folder, trying: str, what: str, step: str,
                        clock: TrialClock, **convert_options) -> tuple | None:
    """When the INT8 .tflite ``int8`` misses the accuracy budget: convert the model again into ``folder`` with
    ``convert_options`` (in a child) and hold both to the budget. Returns (the other .tflite, ``int8``'s budget row,
    its budget row, whether it should ship: it meets the budget, or neither does and it comes closer); None when
    ``int8`` meets the budget or the other one cannot be converted (said in a warning: the first model stands)."""
    from edgepack import isolate
    from edgepack.backends import tflite as tflite_backend
    from edgepack.errors import EdgepackError

    first = evaluate_int8(ctx, int8, "tflite")
    if meets_budget(ctx, first) or not clock.allows(what):
        return None
    ctx.progress(f"TFLite INT8 misses the accuracy budget: trying {trying}", 0, 1)
    try:
        alt = isolate.call(tflite_backend.convert, fp32_onnx, folder, ctx.calib.x,
                           io_dtype=ctx.target.tflite_io_dtype, allow_float=ctx.config.allow_float_ops,
                           float_tail=_float_tail(ctx), key="tflite-convert", step=step, **convert_options)
        _tflite_outputs(ctx, alt)
    except EdgepackError as exc:
        ctx.warn(f"TFLite: {what} could not be tried: {exc}")
        return None
    row1, row2 = _quality_budget_row(ctx, first), _quality_budget_row(ctx, evaluate_int8(ctx, alt, "tflite"))
    return alt, row1, row2, row2["passed"] or (not row1["passed"] and _closer(row2, row1))


def _xnnpack_rewrites(workdir, mixed: dict | None) -> dict:
    """{"xnnpack_rewrites": {...}}: the exact rewrites for XNNPACK the shipped INT8 file had (scales folded into
    convolutions in the INT8 copy, tflite_xnnpack's in the written file), {} when none. A float-op variant
    (``mixed`` shipped) is quantized from the FP32 SavedModel: only its written file's rewrites (in ``mixed``)."""
    if mixed and mixed.get("shipped"):
        done = dict(mixed.get("xnnpack_rewrites") or {})
    else:
        prep = _prep_record(workdir)
        done = {"scales_folded_forward": prep.get("scales_folded_forward", 0), **(prep.get("xnnpack_rewrites") or {})}
    done = {k: v for k, v in done.items() if v}
    return {"xnnpack_rewrites": done} if done else {}


def _prep_record(workdir) -> dict:
    """What tflite_prep did to the INT8 conversion copy (int8_prep.json), {} when nothing."""
    import json

    prep = workdir / "int8_prep.json"
    return json.loads(prep.read_text()) if prep.exists() else {}


def _tflite_outputs(ctx: BuildContext, path) -> None:
    """The INT8 .tflite's outputs on the validation set, cached for evaluate_int8 and the validate stage."""
    from edgepack.device import measure
    from edgepack.util import host_cores

    ctx.progress(f"running TFLite INT8 on {len(ctx.val)} validation samples", 0, 1)
    ctx.outputs[str(path)] = measure.outputs("tflite", path, ctx.val.x, threads=host_cores(), workdir=ctx.workdir,
                                             what="LiteRT running the INT8 .tflite on the validation set",
                                             all_outputs=getattr(ctx.task, "all_outputs", False))


def _quality_budget_row(ctx: BuildContext, q: dict) -> dict:
    """The budget row for quality ``q`` (search_budget; a passing placeholder when no budget is set)."""
    return search_budget(ctx, q) or {"name": "none", "value": None, "passed": True}


def _closer(a: dict, b: dict) -> bool:
    """Row ``a`` nearer its limit's good side than row ``b`` (same budget)."""
    if a.get("value") is None or b.get("value") is None:
        return False
    return a["value"] < b["value"] if a.get("op", "<=") == "<=" else a["value"] > b["value"]


def _float_tail(ctx: BuildContext) -> bool:
    """Whether the task keeps its post-processing tail in float in INT8 models (detection's box decoding)."""
    return bool(getattr(ctx.task, "float_tail", False))


def convert_tflite_pair(fp32_onnx, workdir, calib, io_dtype: str, allow_float: bool,
                        weight_rounding: str = "nearest", float_tail: bool = False) -> tuple:
    """(FP32 .tflite, full-integer INT8 .tflite, the FP32 one's fidelity to ONNX): one TensorFlow import for
    both, run in a child by convert_tflite_full_integer. A FP32 .tflite that is not the ONNX model's function
    stops here, before the INT8 conversion (tflite_fidelity)."""
    from edgepack.backends import tflite, tflite_fidelity
    from edgepack.isolate import mark

    fp32 = tflite.convert(fp32_onnx, workdir, None)
    mark("FP32 .tflite against ONNX Runtime")
    fidelity = tflite_fidelity.check(fp32_onnx, fp32, calib, scratch=workdir / "fidelity")
    int8 = tflite.convert(fp32_onnx, workdir, calib, io_dtype=io_dtype, allow_float=allow_float,
                          weight_rounding=weight_rounding, float_tail=float_tail)
    return fp32, int8, fidelity
