"""report.html: a self-contained page (inline PNG plots, no scripts, no network) for every bundle.

Plots: accuracy or agreement, latency and size for each model variant the build measured
(FP32, INT8, and pruned / searched variants when present), and the per-layer INT8 error when a
diagnosis was run. Viewable offline in any browser.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any

from edgepack.bundle.tables import TRIAL_HEADER, budget_rows, drop_text, summary_rows, trial_rows
from edgepack.tasks import postprocess


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight", metadata={"Software": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _bar(title: str, labels: list[str], values: list[float], unit: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 2.8))
    bars = ax.bar(labels, values, color=["#8899aa", "#2b7bb9", "#55a868", "#c44e52", "#8172b2"][:len(values)])
    ax.bar_label(bars, fmt="%.2f", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(unit)
    ax.tick_params(axis="x", labelsize=8)
    return _png(fig)


def variant_plots(variants: dict[str, dict]) -> list[tuple[str, str]]:
    """(title, base64 PNG) for quality, latency and size across variants {name: {quality, p50, size_mb}}."""
    names = list(variants)
    plots = []
    quality = [v.get("quality") for v in variants.values()]
    if all(q is not None for q in quality):
        label = variants[names[0]].get("quality_label", "top-1")
        plots.append((label, _bar(label, names, quality, variants[names[0]].get("quality_unit", ""))))
    plots.append(("latency p50 (measured on host)", _bar("latency p50, host", names,
                                                         [v["p50"] for v in variants.values()], "ms")))
    plots.append(("file size", _bar("file size", names, [v["size_mb"] for v in variants.values()], "MB")))
    return plots


def layer_plot(layers: list[dict], top: int = 25) -> str:
    """Horizontal bars of the SQNR each layer loses (dB), worst first."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in layers if r["drop_db"] is not None][:top]
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(rows) + 1))
    ax.barh([r["name"][-48:] for r in rows][::-1], [r["drop_db"] for r in rows][::-1], color="#c44e52")
    ax.set_xlabel("SQNR lost in this layer, dB (INT8 vs FP32; higher = more error injected here)")
    ax.set_title(f"per-layer INT8 error, worst {len(rows)}", fontsize=10)
    ax.tick_params(axis="y", labelsize=7)
    return _png(fig)


def trials_plot(trials: list[dict]) -> str:
    """Accuracy drop (or 1 - agreement) against one-thread latency for each configuration tried."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.4))
    for t in trials:
        drop = next((t[k] for k in ("accuracy_drop", "miou_drop", "map50_drop") if t.get(k) is not None), None)
        err = drop if drop is not None else 100 * (1 - (t["agreement"] or 0))
        if t["latency_p50_ms_1thread"] is None:
            continue
        ax.scatter(t["latency_p50_ms_1thread"], err, color="#2b7bb9" if t["met"] else "#c44e52")
        ax.annotate(t["name"], (t["latency_p50_ms_1thread"], err), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    ax.set_xlabel("INT8 p50 latency, 1 thread, host (ms)")
    ax.set_ylabel("accuracy drop (points) or disagreement (%)")
    ax.set_title("accuracy-aware search: every configuration tried (blue = meets budget)", fontsize=9)
    return _png(fig)


PICTURES_FILE = "samples.png"   # FP32 vs INT8 masks or boxes on a few validation images (detect, segment)
PICTURE_SCORE = postprocess.DISPLAY_SCORE_THRESHOLD   # boxes drawn from this score up, as run.py prints them


def task_pictures(p: dict) -> bytes:
    """PNG: for each of a few validation inputs, FP32 and INT8 side by side, masks overlaid or boxes drawn, as
    decoded by edgepack.tasks.postprocess. ``p``: {task, x (n, C, H, W), fp32, int8 (raw outputs of those n)}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.patches import Rectangle

    x = np.asarray(p["x"], np.float32)
    lo, hi = x.min(axis=(1, 2, 3), keepdims=True), x.max(axis=(1, 2, 3), keepdims=True)
    images = ((x - lo) / np.where(hi > lo, hi - lo, 1)).transpose(0, 2, 3, 1)
    n, (h, w) = len(images), images.shape[1:3]
    fig, axes = plt.subplots(n, 2, figsize=(5.2, 2.6 * n), squeeze=False)
    for j, prec in enumerate(("fp32", "int8")):
        out = p[prec]
        threshold = postprocess.PROB_THRESHOLD if p.get("threshold") is None else p["threshold"]
        decoded = postprocess.masks(out[0] if isinstance(out, list) else out, threshold) if p["task"] == "segment" \
            else postprocess.detections(out, box_format=p.get("box_format", "auto"))
        for i in range(n):
            ax = axes[i][j]
            ax.imshow(images[i][..., 0] if images.shape[-1] == 1 else images[i][..., :3], cmap="gray",
                      extent=(0, w, h, 0))
            if p["task"] == "segment":
                ax.imshow(decoded[i], alpha=0.45, cmap="tab10", vmin=0, vmax=9, interpolation="nearest",
                          extent=(0, w, h, 0))
            else:
                d = decoded[i]
                for b, sc, c in zip(d["boxes"], d["scores"], d["classes"], strict=True):
                    if sc >= PICTURE_SCORE:
                        ax.add_patch(Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False, lw=1.5,
                                               color=plt.cm.tab10(int(c) % 10)))
                        ax.text(b[0], b[1], f"{int(c)} {sc:.2f}", fontsize=6, color="white",
                                bbox={"facecolor": plt.cm.tab10(int(c) % 10), "pad": 0.5, "lw": 0})
            ax.set_xlim(0, w)
            ax.set_ylim(h, 0)
            ax.axis("off")
            if i == 0:
                ax.set_title(prec.upper(), fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def variants_from_manifest(man: dict) -> dict[str, dict]:
    """FP32 / INT8 (and any extra variants recorded by stages) of the primary model, for the plots."""
    v = man["validation"]
    labelled = v["accuracy_fp32"] is not None
    task_metric = next(((k, label) for k, label in (("miou", "mIoU"), ("map50", "mAP@0.5"))
                        if v.get(f"{k}_fp32") is not None), None)
    out = {}
    for prec in ("fp32", "int8"):
        if task_metric:  # segmentation / detection: the task's own metric, in points
            quality, label, unit = v[f"{task_metric[0]}_{prec}"], task_metric[1], "%"
        else:
            quality = (v[f"accuracy_{prec}"] if labelled else (1.0 if prec == "fp32" else v["agreement"]))
            label, unit = ("top-1 accuracy", "%") if labelled else ("agreement", "fraction")
        out[prec.upper()] = {"quality": quality, "quality_label": label, "quality_unit": unit,
                             "p50": v["latency_ms"][prec]["p50"], "size_mb": v["size_bytes"][prec] / 1e6}
    u = v.get("unpruned_fp32")
    if u:
        own = 100.0 if task_metric else 1.0     # scored against its own predictions (no labels): all of it
        first = {"UNPRUNED FP32": {"quality": u["accuracy"] if u.get("accuracy") is not None else own,
                                   "p50": u["latency_ms"]["p50"], "size_mb": u["size_bytes"] / 1e6}}
        out = {**first, **{f"PRUNED {k}": val for k, val in out.items()}}
    for name, extra in (man.get("variants") or {}).items():
        out[name] = extra
    return out


def render(man: dict, layers: list[dict] | None = None, pictures: bytes | None = None) -> str:
    """The whole page as a string (``pictures``: the bundle's PICTURES_FILE PNG, when it has one)."""
    verdict = "PASSED" if man["passed"] else "FAILED"
    figs = "".join(f'<figure><img alt="{html.escape(t)}" src="data:image/png;base64,{b}"><figcaption>'
                   f"{html.escape(t)}</figcaption></figure>" for t, b in variant_plots(variants_from_manifest(man)))
    parts = [f"<h1>edgepack report: {html.escape(man['name'])} for {html.escape(man['target']['name'])}</h1>",
             f'<p class="{verdict.lower()}"><b>{verdict}</b> - {html.escape(man["target"]["description"])}</p>',
             "<h2>Summary (host measurements, one run)</h2>",
             _table(("metric", "FP32", "INT8", "note"), summary_rows(man)),
             "<h2>Budgets</h2>", _table(("budget", "value", "limit", "verdict"), budget_rows(man)),
             f'<h2>Plots</h2><div class="plots">{figs}</div>']
    if pictures:
        what = "masks" if man.get("stages", {}).get("task", {}).get("name") == "segment" else \
            f"boxes scoring {PICTURE_SCORE} or more"
        parts += [f"<h2>FP32 and INT8 on validation images ({what})</h2>",
                  f'<figure><img alt="FP32 and INT8 {what}" src="data:image/png;base64,'
                  f'{base64.b64encode(pictures).decode("ascii")}"></figure>']
    search = man.get("stages", {}).get("quantization_search")
    if search:
        parts += [f"<h2>Accuracy-aware search ({search['seconds']} s of {search['max_seconds']} s allowed)</h2>",
                  f'<figure><img alt="search" src="data:image/png;base64,{trials_plot(search["trials"])}">'
                  "</figure>", _table(TRIAL_HEADER, trial_rows(search))]
    if layers:
        parts += ["<h2>Per-layer INT8 error</h2>",
                  f'<figure><img alt="per-layer error" src="data:image/png;base64,{layer_plot(layers)}"></figure>',
                  _table(("layer (PyTorch module)", "op", "SQNR lost here dB", "SQNR so far dB"),
                         [(r["name"], r.get("op", ""), drop_text(r), f"{r['sqnr_db']:.1f}")
                          for r in layers[:40]])]
    if man.get("warnings"):
        parts += ["<h2>Warnings</h2><ul>" + "".join(f"<li>{html.escape(w)}</li>" for w in man["warnings"]) + "</ul>"]
    style = ("body{font-family:sans-serif;max-width:980px;margin:2em auto;color:#222}table{border-collapse:collapse;"
             "margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:left}"
             ".plots{display:flex;flex-wrap:wrap;gap:12px}.passed{color:#2a7a2a}.failed{color:#b22}")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>edgepack report</title>'
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n")
