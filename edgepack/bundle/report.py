"""Results -> manifest.json, report.md and the summary table people read at a glance."""

from __future__ import annotations

import importlib.metadata as md
import platform
from pathlib import Path

from edgepack.bundle.tables import TRIAL_HEADER, budget_rows, candidate_rows, markdown_table, summary_rows, trial_rows
from edgepack.version import __version__

SCHEMA = "edgepack.bundle/1"
TOOLS = ("torch", "torchvision", "onnx", "onnxruntime", "onnxslim", "numpy", "pillow", "tensorflow",
         "onnx2tf", "ai-edge-litert", "torch-pruning", "tokenizers")
MODEL_FILES = {"onnx": "model.onnx", "tflite": "model.tflite"}
def runner_template() -> Path:
    """The device runner, one for every input kind and task: it picks its input and output code from the
    bundle's manifest (copied into the bundle as run.py)."""
    return Path(__file__).resolve().parent / "templates" / "run.py"


def tool_versions() -> dict[str, str]:
    """Installed versions of the libraries that shape the output (sorted, missing ones omitted)."""
    versions = {"edgepack": __version__, "python": platform.python_version()}
    for name in TOOLS:
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    return dict(sorted(versions.items()))


def _rounding_lines(stages: dict) -> list[str]:
    """A line per INT8 format whose weights were rounded by learning (edgepack.backends.rounding)."""
    lines = []
    for fmt in ("onnx", "tflite"):
        r = (stages.get(f"quantization_{fmt}") or {}).get("weight_rounding") or {}
        if str(r.get("method", "")).startswith("gptq"):
            lines += [f"{fmt.upper() if fmt == 'onnx' else 'TFLite'} INT8 weights: learned rounding (GPTQ) in "
                      f"{r.get('learned_layers')} of {r.get('layers')} Conv/Gemm layers (layer output error "
                      f"{r.get('output_error_vs_nearest')}x round-to-nearest's on {r.get('samples')} calibration "
                      "samples); the others rounded to nearest.", ""]
        elif r.get("trials"):  # the TFLite fallback tried learned rounding and it did not do better
            rows = {t["weight_rounding"]: t["budget"] for t in r["trials"]}
            near, learned = rows.get("nearest") or {}, rows.get("gptq") or {}
            lines += [f"TFLite INT8 weights: rounded to nearest. Learned rounding (GPTQ) was tried when INT8 missed "
                      f"the budget ({near.get('name')} {near.get('value')}) and did not do better "
                      f"({learned.get('value')}); manifest: stages.quantization_{fmt}.weight_rounding.trials.", ""]
    return lines


def _float_layer_lines(stages: dict) -> list[str]:
    """The TFLite trials that kept activations unrounded or the ops INT8 hurts most in float
    (stages.quantization_tflite.unrounded_activations, .float_layers)."""
    return _trial_lines(stages, "unrounded_activations", "unrounded", "activations kept unrounded (costliest first)",
                        "variants kept the activations whose rounding costs most at the outputs unrounded (the ops "
                        "writing and reading them in float)") + \
        _trial_lines(stages, "float_layers", "float_layers", "ops ranked worst kept in float",
                     "variants kept the ops INT8 hurts most in float (with the ops reading their outputs)")


def _trial_lines(stages: dict, key: str, count: str, column: str, what: str) -> list[str]:
    mixed = (stages.get("quantization_tflite") or {}).get(key)
    if not mixed:
        return []
    rows = [(str(t[count]),
             f"{t['budget'].get('name')} {t['budget'].get('value')}" if t.get("budget") else "not validated",
             "no (over the size budget)" if t.get("over_size_budget") else
             "yes" if t["budget"].get("passed") else "no", f"{t['size_bytes'] / 1e6:.3f}",
             "shipped" if t[count] == mixed["shipped"] else "") for t in mixed["trials"]]
    lines = [f"TFLite INT8 missed its budget; {what}:", "",
             markdown_table((column, "quality", "meets", "size MB", ""), rows), ""]
    if mixed.get("tensors"):
        lines += ["Activations kept unrounded in the shipped model: " + ", ".join(f"`{t}`" for t in mixed["tensors"]),
                  ""]
    if mixed.get("float_ops"):
        lines += ["Ops kept in float in the shipped model: " + ", ".join(f"`{n}`" for n in mixed["float_ops"]), ""]
    return lines


def render_markdown(man: dict) -> str:
    """report.md: verdict, summary, budgets, warnings, how it was built."""
    verdict = "PASSED: every budget met" if man["passed"] else "FAILED: at least one budget missed"
    q = man["stages"].get("quantization_onnx") or man["stages"].get("quantization_tflite") or {}
    parts = [
        f"# edgepack report: {man['name']} for {man['target']['name']}",
        "", f"**{verdict}.** Target: {man['target']['description']}.", "",
        "## Summary (FP32 vs INT8, measured on the host in the same run)", "",
        markdown_table(("metric", "FP32", "INT8", "note"), summary_rows(man)), "",
        *_dither_lines(man),
        "## Budgets", "",
        markdown_table(("budget", "value", "limit", "verdict"), budget_rows(man)) if budget_rows(man)
        else "No budgets set.", "",
    ]
    search = man["stages"].get("quantization_search")
    if search:
        parts += [f"## Accuracy-aware search ({search['seconds']} s, limit {search['max_seconds']} s)", "",
                  markdown_table(TRIAL_HEADER, trial_rows(search)), ""]
    if q.get("why"):
        parts += [f"INT8 recipe: **{q.get('recipe') or q['chosen']}** ({q['why']}).", ""]
    if q.get("candidates"):
        parts += [markdown_table(("INT8 candidate", "accuracy drop", "agreement", "latency vs FP32 (1 thr)",
                                  "size MB"), candidate_rows(q["candidates"])), ""]
    floats = ((man["stages"].get("quantization_onnx") or {}).get("nodes_excluded")
              or (man["stages"].get("quantization_tflite") or {}).get("float_ops"))
    if floats:
        parts += ["Layers kept in float: " + ", ".join(f"`{n}`" for n in floats), ""]
    unrounded = _unrounded(search)
    if unrounded:
        parts += ["Activations kept unrounded (their producers and readers are the float layers above; "
                  "`edgepack diagnose --output-cost` measures each one's cost): "
                  + ", ".join(f"`{t}`" for t in unrounded), ""]
    parts += _rounding_lines(man["stages"]) + _float_layer_lines(man["stages"])
    if man["warnings"]:
        parts += ["## Warnings", ""] + [f"- {w}" for w in man["warnings"]] + [""]
    parts += ["## How it was built", "",
              f"- model: `{man['created_from']['model']}`"
              + (f" (sha256 {man['created_from']['model_sha256']})" if man['created_from'].get('model_sha256') else ""),
              f"- calibration: {man['created_from']['calibration']['samples']} samples from "
              f"`{man['created_from']['calibration']['source']}`",
              f"- validation: {man['created_from']['validation']['samples']} samples from "
              f"`{man['created_from']['validation']['source']}`",
              f"- quantization: `{_short(q)}`",
              "- latencies in the summary are host measurements (p50/p90 over timed runs after warm-up, FP32 "
              "and INT8 interleaved in one process), not device measurements; each budget row says what judged "
              "it (`measured-host`, `estimated-device`, `measured-device`).",
              *_device_stage_line(man["stages"].get("device")),
              "- tools: " + ", ".join(f"{k} {v}" for k, v in man["tools"].items()), ""]
    return "\n".join(parts)


def _dither_lines(man: dict) -> list[str]:
    """How stable FP32's top-1 is on the validation photos (edgepack.stages.validate.dither_floor)."""
    found = (man.get("validation") or {}).get("fp32_under_dither")
    if not found:
        return []
    return [f"FP32 keeps its own top-1 class on {found['agreement']:.1%} of the first {found['samples']} validation "
            f"photos when each pixel moves by up to {found['dither_pixel_steps']} of its 8-bit step (seeded uniform "
            "dither, the rounding another decoder or resizer adds): INT8 agreement is best read against that.", ""]


def _unrounded(search: dict | None) -> list[str]:
    """The activations the accuracy search's chosen trial keeps unrounded, [] when none."""
    chosen = next((t for t in (search or {}).get("trials", []) if t["name"] == (search or {}).get("chosen")), None)
    return list((chosen or {}).get("settings", {}).get("unrounded") or [])


def _device_stage_line(dev: dict | None) -> list[str]:
    """What the device stage (edgepack.stages.device) did, for "How it was built"."""
    if not dev:
        return []
    if "skipped" in dev:
        return [f"- device stage: skipped ({dev['skipped']}); the host measurements judge."]
    return [f"- device stage: FP32 and INT8 run with the bundle's run.py on an emulated {dev['qemu_cpu']} "
            f"(qemu-user, the device's runtime wheels), {dev['samples']} samples; its latency is estimated from "
            "instruction counts, not measured."]


def _short(d: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in d.items() if not isinstance(v, dict | list))[:400]
