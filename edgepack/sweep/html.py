"""sweep.html: one self-contained page (inline SVG, no scripts, no network) from the sweep.json document.

Per target: quality vs INT8 latency, one circle per trial with its area proportional to the INT8 file size;
the Pareto front is joined by a line and drawn green (the others grey), the best bundle that met every budget
is ringed in orange, trials that missed a budget are hollow with a dashed edge. Then the best bundle's
budgets, every trial in a table (linking to its bundle's report.html) and the errors of trials that did not
build.
"""

from __future__ import annotations

import math
from html import escape

W, H, PAD_L, PAD_R, PAD_T, PAD_B = 640, 360, 64, 24, 20, 48
FRONT, OTHER, BEST = "#1B9E77", "#7F8C8D", "#D95F02"
CSS = """body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1100px}
table{border-collapse:collapse;margin:8px 0 20px;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px;
text-align:left;vertical-align:top}th{background:#f3f3f3}.num{text-align:right}.err{color:#C0392B}
code{font-size:12px}.note{color:#555;font-size:13px}svg text{font-size:11px;fill:#333}"""


def render(doc: dict) -> str:
    rows = doc["trials"]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(doc['name'])} - edgepack sweep"
             f"</title><style>{CSS}</style></head><body>",
             f"<h1>Sweep {escape(doc['name'])}</h1>", _counts(doc)]
    for target, summary in doc["targets"].items():
        mine = [r for r in rows if r["target"] == target]
        parts.append(f"<h2>{escape(target)}</h2>")
        parts.append(_plot(mine, set(summary["pareto"]), summary["best"]))
        parts.append(_best(mine, summary["best"]))
    parts.append("<h2>All trials</h2>" + _table(rows))
    errors = [r for r in rows if r["status"] == "error"]
    if errors:
        parts.append("<h2>Errors</h2>" + _errors(errors))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _counts(doc: dict) -> str:
    c, run = doc["counts"], doc.get("run", {})
    return (f"<p>{len(doc['trials'])} trials: {c['passed']} met every budget, {c['budget-missed']} missed a "
            f"budget, {c['error']} failed to build. Sweep file <code>{escape(doc['sweep_file'])}</code>, edgepack "
            f"{escape(doc['edgepack'])}, written {escape(doc['written'])}; this run: {run.get('ran', 0)} trial(s) "
            f"in {run.get('seconds', 0):.0f} s on {escape(str(run.get('cluster', '')))}.</p>"
            "<p class='note'>Latency is the INT8 p50 the target's budget judges. <i>measured-host</i> figures were "
            "timed on the build host, <i>exclusive</i> = while no other trial computed on that machine; "
            "<i>shared</i> = under load from other trials (not comparable).</p>")


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    span = hi - lo or abs(hi) or 1.0
    step = 10 ** math.floor(math.log10(span / n))
    step *= next(m for m in (1, 2, 2.5, 5, 10) if span / (step * m) <= n)
    first = math.ceil(lo / step) * step
    return [round(first + i * step, 10) for i in range(int((hi - first) / step + 1e-9) + 1)]


def _plot(rows: list[dict], front: set[str], best: str | None) -> str:
    pts = [r for r in rows if r.get("quality") is not None and r.get("latency_ms") is not None]
    if not pts:
        built = sum(r.get("status") != "error" for r in rows)
        return ("<p>No trial of this target built.</p>" if not built else
                f"<p>{built} trial(s) built, none with a quality metric and a latency to plot.</p>")
    xs, ys = [r["latency_ms"] for r in pts], [r["quality"] for r in pts]
    x0, x1 = 0.0, max(xs) * 1.1
    y_pad = (max(ys) - min(ys)) * 0.15 or max(abs(max(ys)) * 0.01, 0.01)
    y0, y1 = min(ys) - y_pad, max(ys) + y_pad
    sx = lambda x: PAD_L + (x - x0) / (x1 - x0) * (W - PAD_L - PAD_R)  # noqa: E731
    sy = lambda y: H - PAD_B - (y - y0) / (y1 - y0) * (H - PAD_T - PAD_B)  # noqa: E731
    big = max(r["size_bytes"] for r in pts)
    radius = lambda r: 4 + 10 * math.sqrt(r["size_bytes"] / big)  # noqa: E731  area ~ size
    svg = [f"<svg width='{W}' height='{H}' viewBox='0 0 {W} {H}' role='img'>",
           f"<rect x='{PAD_L}' y='{PAD_T}' width='{W - PAD_L - PAD_R}' height='{H - PAD_T - PAD_B}' fill='none' "
           "stroke='#999'/>"]
    for t in _ticks(x0, x1):
        svg.append(f"<text x='{sx(t):.1f}' y='{H - PAD_B + 16}' text-anchor='middle'>{t:g}</text>")
    for t in _ticks(y0, y1):
        svg.append(f"<text x='{PAD_L - 6}' y='{sy(t) + 4:.1f}' text-anchor='end'>{t:g}</text>")
    kind = pts[0]["latency_kind"]
    metric = "INT8 top-1 accuracy, %" if pts[0]["metric"] == "accuracy_int8" else "INT8 top-1 agreement"
    svg.append(f"<text x='{(W + PAD_L) / 2}' y='{H - 8}' text-anchor='middle'>INT8 p50 latency, ms ({kind})</text>")
    svg.append(f"<text transform='rotate(-90)' x='{-(H - PAD_B + PAD_T) / 2}' y='14' "
               f"text-anchor='middle'>{metric}</text>")
    line = sorted((r for r in pts if r["key"] in front), key=lambda r: r["latency_ms"])
    if len(line) > 1:
        svg.append("<polyline fill='none' stroke='" + FRONT + "' stroke-width='2' points='"
                   + " ".join(f"{sx(r['latency_ms']):.1f},{sy(r['quality']):.1f}" for r in line) + "'/>")
    for r in sorted(pts, key=lambda r: r["key"] in front):
        color = FRONT if r["key"] in front else OTHER
        fill, dash = (color, "") if r.get("passed") else ("white", " stroke-dasharray='4,2'")
        svg.append(f"<circle cx='{sx(r['latency_ms']):.1f}' cy='{sy(r['quality']):.1f}' r='{radius(r):.1f}' "
                   f"fill='{fill}' fill-opacity='0.85' stroke='{color}' stroke-width='3'{dash}>"
                   f"<title>{escape(r['name'])}: {r['quality']:g}, {r['latency_ms']:.3f} ms, "
                   f"{r['size_bytes'] / 1e6:.2f} MB</title></circle>")
        if r["key"] == best:
            svg.append(f"<circle cx='{sx(r['latency_ms']):.1f}' cy='{sy(r['quality']):.1f}' "
                       f"r='{radius(r) + 5:.1f}' fill='none' stroke='{BEST}' stroke-width='3'/>")
    svg.append("</svg>")
    legend = (f"<p class='note'><span style='color:{FRONT}'>&#9679;</span> Pareto front (quality vs latency) "
              f"&nbsp; <span style='color:{OTHER}'>&#9679;</span> dominated &nbsp; hollow, dashed: missed a "
              f"budget &nbsp; <span style='color:{BEST}'>&#9711;</span> best bundle that met every budget "
              "&nbsp; circle area: INT8 file size</p>")
    return "".join(svg) + legend


def _best(rows: list[dict], best: str | None) -> str:
    if best is None:
        return "<p><b>No trial met every budget for this target.</b></p>"
    r = next(r for r in rows if r["key"] == best)
    budgets = "".join(f"<tr><td>{escape(b['name'])}</td><td class='num'>{b['value']}</td>"
                      f"<td class='num'>{b['limit']}</td><td>{'met' if b['passed'] else 'MISSED'}</td></tr>"
                      for b in r.get("budgets", []))
    return (f"<p><b>Best bundle that met every budget:</b> {escape(r['name'])} &mdash; "
            f"<a href='{escape(r['bundle'])}/report.html'><code>{escape(r['bundle'])}</code></a></p>"
            f"<table><tr><th>budget</th><th>value</th><th>limit</th><th>verdict</th></tr>{budgets}</table>")


def _table(rows: list[dict]) -> str:
    head = ("<tr><th>trial</th><th>target</th><th>status</th><th>quality</th><th>INT8 p50 ms</th><th>timing</th>"
            "<th>INT8 MB</th><th>MACs</th><th>build s</th><th>bundle</th></tr>")
    body = []
    for r in sorted(rows, key=lambda r: (r["target"], -(r.get("quality") or -1e9), r["key"])):
        short = "acc" if r.get("metric") == "accuracy_int8" else "agr"
        q = "-" if r.get("quality") is None else f"{r['quality']:g} ({short})"
        lat = "-" if r.get("latency_ms") is None else f"{r['latency_ms']:.3f}"
        size = "-" if r.get("size_bytes") is None else f"{r['size_bytes'] / 1e6:.2f}"
        macs = "-" if not r.get("macs") else f"{r['macs'] / 1e6:.1f} M"
        link = f"<a href='{escape(r['bundle'])}/report.html'>report</a>" if r.get("bundle") else "-"
        timing = r.get("timing") if r.get("latency_ms") is not None else None
        status = f"<span class='err'>{r['status']}</span>" if r["status"] != "passed" else r["status"]
        body.append(f"<tr><td>{escape(r['name'])}</td><td>{escape(r['target'])}</td><td>{status}</td>"
                    f"<td class='num'>{q}</td><td class='num'>{lat}</td><td>{escape(str(timing or '-'))}"
                    f"</td><td class='num'>{size}</td><td class='num'>{macs}</td>"
                    f"<td class='num'>{r.get('seconds') or '-'}</td><td>{link}</td></tr>")
    return f"<table>{head}{''.join(body)}</table>"


def _errors(rows: list[dict]) -> str:
    body = "".join(f"<tr><td>{escape(r['name'])}</td><td>{escape((r.get('error') or {}).get('type', ''))}</td>"
                   f"<td>{escape((r.get('error') or {}).get('message', ''))}</td>"
                   f"<td>{escape((r.get('error') or {}).get('hint') or '')}</td></tr>" for r in rows)
    return f"<table><tr><th>trial</th><th>error</th><th>message</th><th>hint</th></tr>{body}</table>"
