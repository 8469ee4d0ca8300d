"""Trial rows, the Pareto front per target and the best bundle per target -> sweep.json (and sweep.html).

A row is what people compare: the varied settings, the task metric (INT8 top-1 accuracy with labels, else
top-1 agreement with FP32; a generic model's worst output SQNR), the INT8 file size, the INT8 p50 latency with
its kind (the latency the target's budget judges: measured on the host, or a device estimate) and how it was
timed, the verdict and the bundle.
Pareto front: per target, the trials no other trial beats on both quality (higher) and latency (lower).
Best: per target, among the trials that met every budget, the highest quality (then lower latency, then
smaller size).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from edgepack.sweep.plan import Trial
from edgepack.sweep.store import BUNDLE, TRIALS
from edgepack.util import write_bytes_atomic
from edgepack.version import __version__

SCHEMA = "edgepack.sweep/1"


def row(trial: Trial, record: dict[str, Any], manifest: dict[str, Any] | None) -> dict[str, Any]:
    """The trial.json / sweep.json row of one finished trial (``manifest``: its bundle's, None on error)."""
    out = {"key": trial.key, "name": trial.name, "model": trial.model, "target": trial.target,
           "settings": trial.varied, "status": record["status"], "error": record.get("error"),
           "seconds": record.get("seconds"), "node": record.get("node"), "host": record.get("host"),
           "timing": record.get("timing"), "timing_wait_s": record.get("timing_wait_s")}
    if manifest is None:
        return out
    v = manifest["validation"]
    latency = _latency(manifest)
    prune = manifest.get("stages", {}).get("prune", {})
    # the task's own INT8 metric (top-1 accuracy, mIoU, mAP@0.5; points) when it has labels or pseudo-labels,
    # else top-1 agreement; a generic model has neither: its worst output's SQNR (dB) ranks it (every row of
    # a generic sweep was left off the Pareto front and "best" with a null quality)
    metric = next((k for k in ("accuracy_int8", "miou_int8", "map50_int8", "agreement", "sqnr_db")
                   if v.get(k) is not None), "agreement")
    out.update({
        "bundle": f"{TRIALS}/{trial.key}/{BUNDLE}",
        "passed": manifest["passed"],
        "metric": metric,
        "quality": v.get(metric),
        "accuracy_fp32": v.get("accuracy_fp32"), "accuracy_int8": v.get("accuracy_int8"),
        "accuracy_drop": v.get("accuracy_drop"), "agreement": v.get("agreement"), "sqnr_db": v.get("sqnr_db"),
        "size_bytes": manifest["model"]["size_bytes"], "model_sha256": manifest["model"]["sha256"],
        "latency_ms": latency["p50"], "latency_kind": latency["kind"], "latency_threads": latency["threads"],
        "latency_ms_fp32": v["latency_ms"]["fp32"]["p50"],
        "macs": prune.get("macs_after"), "macs_unpruned": prune.get("macs_before"),
        "budgets": [{k: b[k] for k in ("name", "value", "limit", "passed")} for b in v.get("budgets", [])],
        "warnings": len(manifest.get("warnings", [])),
    })
    return out


def _latency(manifest: dict) -> dict:
    """The INT8 p50 the latency budget judges (device estimate when the profile says so), with its kind."""
    v = manifest["validation"]
    for b in v.get("budgets", []):
        if b["name"] == "latency_p50_ms" and str(b.get("kind", "")).startswith("estimated-device"):
            return {"p50": b["value"], "kind": b["kind"], "threads": manifest["runtime"]["threads"]}
    return {"p50": v["latency_ms"]["int8"]["p50"], "kind": "measured-host", "threads": v["latency_ms"]["threads"]}


def built(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r.get("quality") is not None and r.get("latency_ms") is not None]


def pareto(rows: list[dict]) -> list[dict]:
    """Rows no other row beats on both quality (>=, higher is better) and latency (<=), one strictly;
    sorted by latency."""
    pts = built(rows)
    front = [r for r in pts if not any(
        o["quality"] >= r["quality"] and o["latency_ms"] <= r["latency_ms"]
        and (o["quality"] > r["quality"] or o["latency_ms"] < r["latency_ms"]) for o in pts)]
    return sorted(front, key=lambda r: (r["latency_ms"], -r["quality"], r["key"]))


def best(rows: list[dict]) -> dict | None:
    """The trial that met every budget with the highest quality (then lower latency, smaller size)."""
    ok = [r for r in built(rows) if r.get("passed")]
    return min(ok, key=lambda r: (-r["quality"], r["latency_ms"], r["size_bytes"], r["key"])) if ok else None


def summarize(rows: list[dict], targets: list[str]) -> dict[str, dict]:
    """Per target (in sweep order): Pareto keys and the best key."""
    out = {}
    for target in targets:
        mine = [r for r in rows if r["target"] == target]
        b = best(mine)
        out[target] = {"pareto": [r["key"] for r in pareto(mine)], "best": b["key"] if b else None,
                       "trials": len(mine), "errors": sum(r["status"] == "error" for r in mine),
                       "unranked": sum(r["status"] != "error" and r.get("quality") is None for r in mine)}
    return out


def document(name: str, source: str, rows: list[dict], targets: list[str], run: dict) -> dict:
    """The whole sweep.json."""
    counts = {s: sum(r["status"] == s for r in rows) for s in ("passed", "budget-missed", "error")}
    return {"schema": SCHEMA, "name": name, "sweep_file": source, "edgepack": __version__,
            "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "run": run, "counts": counts,
            "targets": summarize(rows, targets), "trials": rows}


def write(out: Path, doc: dict) -> None:
    """sweep.json and sweep.html, each written beside its name and renamed into place."""
    from edgepack.sweep.html import render

    write_bytes_atomic(out / "sweep.json", (json.dumps(doc, indent=2) + "\n").encode("utf-8"))
    write_bytes_atomic(out / "sweep.html", render(doc).encode("utf-8"))
