"""Results -> manifest.json, report.md and the summary table people read at a glance."""

from __future__ import annotations

import importlib.metadata as md
import platform

from edgepack import __version__
from edgepack.context import BuildContext

SCHEMA = "edgepack.bundle/1"
TOOLS = ("torch", "torchvision", "onnx", "onnxruntime", "onnxslim", "numpy", "pillow", "tensorflow",
         "onnx2tf", "ai-edge-litert", "torch-pruning")
MODEL_FILES = {"onnx": "model.onnx", "tflite": "model.tflite"}
TOKENIZER_FILE = "tokenizer.json"


def tool_versions() -> dict[str, str]:
    """Installed versions of the libraries that shape the output (sorted, missing ones omitted)."""
    versions = {"edgepack": __version__, "python": platform.python_version()}
    for name in TOOLS:
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    return dict(sorted(versions.items()))


def manifest(ctx: BuildContext, files: dict[str, dict], io: dict[str, dict], golden: dict) -> dict:
    """The bundle's manifest (schema edgepack.bundle/1). ``files`` maps name -> {sha256, size_bytes}."""
    models = [_model_entry(ctx, fmt, files, io) for fmt in ctx.target.formats]
    primary = models[0]
    return {
        "schema": SCHEMA,
        "name": ctx.config.name or ctx.model.name,
        "target": {"name": ctx.target.name, "description": ctx.target.description, "cpu": ctx.target.cpu,
                   "formats": list(ctx.target.formats)},
        "runtime": {"name": ctx.target.runtime, "threads": ctx.target.threads},
        "model": {k: primary[k] for k in ("file", "format", "sha256", "size_bytes")},
        "models": models,
        "inputs": primary["inputs"],
        "outputs": primary["outputs"],
        "preprocess": _preprocess(ctx),
        "labels": ctx.labels,
        "validation": primary["validation"],
        "passed": all(m["validation"]["passed"] for m in models),
        "warnings": ctx.warnings,
        "golden": golden,
        "files": dict(sorted(files.items())),
        "tools": tool_versions(),
        "created_from": _created_from(ctx),
        "config": ctx.config.to_dict(),
        "stages": {k: v for k, v in sorted(ctx.records.items()) if k != "validation"},
    }


def _preprocess(ctx: BuildContext) -> dict:
    """Images: the resize/crop/normalise settings. Text: {kind: text, tokenizer file, its settings}."""
    if ctx.model.text is None:
        return ctx.config.preprocess.to_dict()
    return {"kind": "text", "tokenizer": TOKENIZER_FILE, **ctx.model.text.settings}


def _model_entry(ctx: BuildContext, fmt: str, files: dict, io: dict) -> dict:
    name = MODEL_FILES[fmt]
    return {"file": name, "format": fmt, "precision": "int8", "sha256": files[name]["sha256"],
            "size_bytes": files[name]["size_bytes"], **io[fmt], "validation": ctx.records["validation"][fmt]}


def _created_from(ctx: BuildContext) -> dict:
    src = ctx.model
    return {"model": src.spec, "model_sha256": src.sha256, "weights": ctx.config.weights,
            "weights_sha256": src.weights_sha256,
            "calibration": {"source": ctx.calib.source, "samples": len(ctx.calib), "sha256": ctx.calib.digest,
                            "skipped": len(ctx.calib.skipped)},
            "validation": {"source": ctx.val.source, "samples": len(ctx.val), "sha256": ctx.val.digest,
                           "is_calibration_data": ctx.val_is_calibration},
            "input_shape": list(ctx.input_shape), "seed": ctx.config.seed}


def _fmt(v, digits: int = 2) -> str:
    if v is None:
        return "-"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def summary_rows(man: dict) -> list[tuple[str, str, str, str]]:
    """(metric, FP32, INT8, note) rows for every model in the bundle."""
    rows = []
    for m in man["models"]:
        v, f = m["validation"], m["format"]
        lat, one = v["latency_ms"], v["latency_ms"]["one_thread"]
        rows += [
            (f"[{f}] top-1 accuracy (%)", _fmt(v["accuracy_fp32"]), _fmt(v["accuracy_int8"]),
             f"drop {_fmt(v['accuracy_drop'])} points" if v["accuracy_drop"] is not None else "no labels"),
            (f"[{f}] top-1 agreement", "", _fmt(v["agreement"], 4), f"SQNR {_fmt(v['sqnr_db'], 1)} dB, "
             f"{v['samples']} samples" + (" (calibration data!)" if v["on_calibration_data"] else "")),
            (f"[{f}] latency p50/p90 ms, {lat['threads']} thr", f"{lat['fp32']['p50']:.2f}/{lat['fp32']['p90']:.2f}",
             f"{lat['int8']['p50']:.2f}/{lat['int8']['p90']:.2f}",
             f"measured on host; INT8 = {lat['int8']['p50'] / lat['fp32']['p50']:.2f}x FP32"),
            (f"[{f}] latency p50 ms, 1 thr", f"{one['fp32']['p50']:.2f}", f"{one['int8']['p50']:.2f}",
             f"measured on host; INT8 = {one['int8']['p50'] / one['fp32']['p50']:.2f}x FP32"),
            (f"[{f}] file size MB", f"{v['size_bytes']['fp32'] / 1e6:.2f}", f"{v['size_bytes']['int8'] / 1e6:.2f}",
             f"INT8 = {v['size_bytes']['int8'] / v['size_bytes']['fp32']:.2f}x FP32"),
            (f"[{f}] peak memory MB", _fmt(v["peak_memory_mb"]["fp32"], 1), _fmt(v["peak_memory_mb"]["int8"], 1),
             "runner process RSS growth"),
        ]
        recipe = man.get("stages", {}).get(f"quantization_{f}", {}).get("recipe")
        if recipe:
            rows.append((f"[{f}] INT8 recipe", "", man["stages"][f"quantization_{f}"]["chosen"], recipe))
        est = lat.get("device_estimate") or {}
        if est.get("fp32") and est.get("int8"):
            rows.append((f"[{f}] ESTIMATED device p50 ms", _band(est["fp32"]), _band(est["int8"]),
                         f"estimated for {man['target']['name']} (operator cost model), not measured: "
                         f"{est['int8']['band_source']}"))
        if lat.get("device"):
            d = lat["device"]
            rows.append((f"[{f}] MEASURED device p50/p90 ms", "", f"{d['p50']:.2f}/{d['p90']:.2f}",
                         f"measured on the device over SSH ({d.get('runs', '?')} runs)"))
        rows += _unpruned_rows(f, v)
    return rows


def _band(e: dict) -> str:
    return f"{e['p50']:.1f} [{e['band'][0]:.1f}-{e['band'][1]:.1f}]"


def _unpruned_rows(f: str, v: dict) -> list[tuple[str, str, str, str]]:
    """Unpruned FP32 vs pruned FP32 (the FP32 column here is the unpruned model)."""
    u = v.get("unpruned_fp32")
    if not u:
        return []
    lat = u["latency_ms_one_thread"]["p50"]
    return [
        (f"[{f}] unpruned FP32: params / MACs", f"{u['params']:,} / {u['macs']:,}",
         f"{u['pruned_params']:,} / {u['pruned_macs']:,}", "INT8 column = pruned model"),
        (f"[{f}] unpruned FP32: accuracy (%)", _fmt(u["accuracy"]), _fmt(v["accuracy_int8"]),
         f"pruned FP32 agrees {u['pruned_fp32_agreement']:.3f} with unpruned"),
        (f"[{f}] unpruned FP32: p50 ms, 1 thr", f"{lat:.2f}", f"{v['latency_ms']['one_thread']['int8']['p50']:.2f}",
         f"pruned INT8 = {v['latency_ms']['one_thread']['int8']['p50'] / lat:.2f}x unpruned FP32"),
        (f"[{f}] unpruned FP32: size MB", f"{u['size_bytes'] / 1e6:.2f}", f"{v['size_bytes']['int8'] / 1e6:.2f}",
         f"pruned INT8 = {v['size_bytes']['int8'] / u['size_bytes']:.2f}x unpruned FP32"),
    ]


def budget_rows(man: dict) -> list[tuple[str, str, str, str]]:
    rows = []
    for m in man["models"]:
        for b in m["validation"]["budgets"]:
            kind = f" ({b['kind']})" if b.get("kind") else ""
            rows.append((f"[{m['format']}] {b['name']}{kind}", _fmt(b["value"], 4 if b["name"] == "agreement" else 2),
                         f"{b['op']} {_fmt(b['limit'])}", "PASS" if b["passed"] else "FAIL"))
    return rows


def markdown_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def render_markdown(man: dict) -> str:
    """report.md: verdict, summary, budgets, warnings, how it was built."""
    verdict = "PASSED: every budget met" if man["passed"] else "FAILED: at least one budget missed"
    q = man["stages"].get("quantization_onnx") or man["stages"].get("quantization_tflite") or {}
    parts = [
        f"# edgepack report: {man['name']} for {man['target']['name']}",
        "", f"**{verdict}.** Target: {man['target']['description']}.", "",
        "## Summary (FP32 vs INT8, measured on the host in the same run)", "",
        markdown_table(("metric", "FP32", "INT8", "note"), summary_rows(man)), "",
        "## Budgets", "",
        markdown_table(("budget", "value", "limit", "verdict"), budget_rows(man)) if budget_rows(man)
        else "No budgets set.", "",
    ]
    search = man["stages"].get("quantization_search")
    if search:
        from edgepack.bundle.html import TRIAL_HEADER, trial_rows

        parts += [f"## Accuracy-aware search ({search['seconds']} s, limit {search['max_seconds']} s)", "",
                  markdown_table(TRIAL_HEADER, trial_rows(search)), ""]
    if q.get("why"):
        parts += [f"INT8 recipe: **{q.get('recipe') or q['chosen']}** ({q['why']}).", ""]
    if q.get("candidates"):
        parts += [markdown_table(("INT8 candidate", "accuracy drop", "agreement", "latency vs FP32 (1 thr)",
                                  "size MB"), _candidate_rows(q["candidates"])), ""]
    floats = ((man["stages"].get("quantization_onnx") or {}).get("nodes_excluded")
              or (man["stages"].get("quantization_tflite") or {}).get("float_ops"))
    if floats:
        parts += ["Layers kept in float: " + ", ".join(f"`{n}`" for n in floats), ""]
    if man["warnings"]:
        parts += ["## Warnings", ""] + [f"- {w}" for w in man["warnings"]] + [""]
    parts += ["## How it was built", "",
              f"- model: `{man['created_from']['model']}` (sha256 {man['created_from']['model_sha256']})",
              f"- calibration: {man['created_from']['calibration']['samples']} samples from "
              f"`{man['created_from']['calibration']['source']}`",
              f"- validation: {man['created_from']['validation']['samples']} samples from "
              f"`{man['created_from']['validation']['source']}`",
              f"- quantization: `{_short(q)}`",
              "- latencies are host measurements (p50/p90 over timed runs after warm-up, FP32 and INT8 "
              "interleaved in one process); they are not device measurements.",
              "- tools: " + ", ".join(f"{k} {v}" for k, v in man["tools"].items()), ""]
    return "\n".join(parts)


def _candidate_rows(candidates: dict) -> list[tuple[str, ...]]:
    return [(name, _fmt(c["accuracy_drop"]), _fmt(c["agreement"], 4), f"{c['latency_ratio_1thread']:.2f}x",
             f"{c['size_bytes'] / 1e6:.2f}") for name, c in candidates.items()]


def _short(d: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in d.items() if not isinstance(v, dict | list))[:400]
