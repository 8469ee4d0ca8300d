"""Every table people read, in one place: the summary and budget rows of a manifest, the search trials, the INT8
candidates and per-layer error rows, as tuples of strings; rendered as text (terminal), Markdown or HTML by the
caller. report.md, report.html, the CLI and `edgepack bench` all read their rows from here."""

from __future__ import annotations


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
        rows += _quality_rows(f, v)
        rows += [
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
        rows += _unpruned_rows(f, v) + _device_rows(f, v)
    return rows


def _device_rows(f: str, v: dict) -> list[tuple[str, str, str, str]]:
    """The emulated device (stages/device.py): agreement with the host, the task metric on the device's kernels
    (the task's own quality rows), instructions per inference, the device estimate."""
    d = v.get("device")
    if not d:
        return []
    agree, ins = d["agreement_with_host"], d["instructions"]
    where = f"emulated {d['qemu_cpu']}, {d['samples']} samples"
    on_device = {**d["quality_on_device"], "samples": d["samples"], "on_calibration_data": v["on_calibration_data"],
                 "labels": v.get("labels")}
    if agree["fp32"]["top1"] is None and agree["int8"]["top1"] is None:  # no classes: how far the values moved
        rows = [(f"[{f}] device vs host max |diff|", f"{agree['fp32']['max_abs_diff']:.3g}",
                 f"{agree['int8']['max_abs_diff']:.3g}", where)]
    else:
        rows = [(f"[{f}] device vs host top-1", _fmt(agree["fp32"]["top1"], 4), _fmt(agree["int8"]["top1"], 4),
                 f"{where}; INT8 max |diff| {agree['int8']['max_abs_diff']:.3g}")]
    rows += [(metric.replace(f"[{f}]", f"[{f}, {where}]"), fp32, int8, note)
             for metric, fp32, int8, note in _quality_rows(f, on_device)]
    rows.append((f"[{f}] instructions / inference (M)", f"{ins['fp32']['total'] / 1e6:.1f}",
                 f"{ins['int8']['total'] / 1e6:.1f}", f"INT8 = {ins['int8']['total'] / ins['fp32']['total']:.2f}x "
                 f"FP32; dot-product {ins['int8']['dotprod'] / 1e6:.1f} M"))
    est = v["latency_ms"].get("device_emulated") or {}
    if est.get("fp32") and est.get("int8"):
        kinds = {p: "emulated-work" if "emulated" in est[p]["kind"] else "operator-count" for p in ("fp32", "int8")}
        same = kinds["fp32"] == kinds["int8"]  # each precision uses the model with the smaller error
        # two estimators' figures side by side read as a speed-up neither measured (INT8 "slower" at 0.49x the
        # instructions): FP32 is shown only when the same model estimated both
        rows.append((f"[{f}] ESTIMATED device p50 ms", _band(est["fp32"]) if same else "", _band(est["int8"]),
                     f"{est['int8']['kind']}, not measured: {est['int8']['band_source']}"
                     + ("" if same else f"; FP32 left out ({kinds['fp32']} model, not comparable)")))
    return rows


def _quality_rows(f: str, v: dict) -> list[tuple[str, str, str, str]]:
    """The task's quality rows: mIoU for segmentation, mAP for detection, SQNR for generic outputs, top-1 for
    classifiers."""
    where = f"{v['samples']} samples" + (" (calibration data!)" if v["on_calibration_data"] else "")
    against = "vs labels" if v.get("labels") in ("masks", "boxes") else "vs FP32's own predictions (no labels)"
    if v.get("miou_fp32") is not None:
        return [(f"[{f}] mIoU (%)", _fmt(v["miou_fp32"]), _fmt(v["miou_int8"]),
                 f"drop {_fmt(v['miou_drop'])} points, {against}"),
                (f"[{f}] pixel accuracy (%)", _fmt(v["pixel_accuracy_fp32"]), _fmt(v["pixel_accuracy_int8"]),
                 f"SQNR {_fmt(v['sqnr_db'], 1)} dB, {where}")]
    if "map50_fp32" in v:
        return [(f"[{f}] mAP@0.5 (%)", _fmt(v["map50_fp32"]), _fmt(v["map50_int8"]),
                 (f"drop {_fmt(v['map50_drop'])} points, {against}" if v["map50_drop"] is not None
                  else "no objects to find")),
                (f"[{f}] mAP@0.5:0.95 (%)", _fmt(v["map_fp32"]), _fmt(v["map_int8"]),
                 f"{v['objects']} objects; SQNR {_fmt(v['sqnr_db'], 1)} dB, {where}")]
    if v.get("outputs") and v.get("agreement") is None:  # generic outputs: no classes, no top-1 to show
        return [(f"[{f}] INT8 vs FP32 SQNR (dB)", "", _fmt(v["sqnr_db"], 1),
                 f"first output, cosine {_fmt(v['outputs'][0]['cosine'], 4)}; {where}")]
    dither = v.get("fp32_under_dither")  # FP32 against itself on dithered photos (stages.validate.dither_floor)
    return [(f"[{f}] top-1 accuracy (%)", _fmt(v["accuracy_fp32"]), _fmt(v["accuracy_int8"]),
             f"drop {_fmt(v['accuracy_drop'])} points" if v["accuracy_drop"] is not None else "no labels"),
            (f"[{f}] top-1 agreement", _fmt(dither["agreement"], 4) if dither else "", _fmt(v["agreement"], 4),
             f"SQNR {_fmt(v['sqnr_db'], 1)} dB, {where}"
             + ("; FP32: with itself, photos dithered by half a pixel step" if dither else ""))]


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
        (f"[{f}] unpruned FP32: {u.get('metric_name') or 'accuracy (%)'}", _fmt(u["accuracy"]),
         _fmt(v.get(f"{u.get('metric') or 'accuracy'}_int8")),
         f"pruned FP32 agrees {u['pruned_fp32_agreement']:.3f} with unpruned"
         if u.get("pruned_fp32_agreement") is not None else
         f"pruned FP32 vs unpruned: SQNR {_fmt(u.get('pruned_fp32_sqnr_db'), 1)} dB"),
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
            digits = 4 if b["name"] == "agreement" or b["name"].startswith("output_match") else 2
            value = _fmt(b["value"], digits)
            if b.get("band"):
                value += f" [{_fmt(float(b['band'][0]), digits)}-{_fmt(float(b['band'][1]), digits)}]"  # as the value
            if b.get("interval"):   # the quality budget's 95 % interval (edgepack.tasks.interval)
                i = b["interval"]
                value += f" ({i['level']:.0%}: {_fmt(i['low'], digits)} to {_fmt(i['high'], digits)})"
            if b.get("device"):   # the device's figure, too few samples to judge (stages/device.py)
                value += f"; device {_fmt(b['device']['value'], digits)} on {b['device']['interval']['samples']}"
            verdict = b.get("verdict") or ("pass" if b["passed"] else "fail")
            rows.append((f"[{m['format']}] {b['name']}{kind}", value, f"{b['op']} {_fmt(b['limit'])}",
                         verdict.upper()))
    return rows


def markdown_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    def cell(v) -> str:  # a literal '|' ("max |diff|", a tensor name) would split the cell
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(map(cell, header)) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(map(cell, r)) + " |" for r in rows]
    return "\n".join(lines)


def candidate_rows(candidates: dict) -> list[tuple[str, ...]]:
    return [(name, _fmt(c["accuracy_drop"]), _fmt(c["agreement"], 4), f"{c['latency_ratio_1thread']:.2f}x",
             f"{c['size_bytes'] / 1e6:.2f}") for name, c in candidates.items()]


def trial_rows(search: dict) -> list[tuple[str, ...]]:
    def f(v, d=2):
        return "-" if v is None else f"{v:.{d}f}"

    def drop(t):  # the task metric's drop: top-1 accuracy, mIoU or mAP@0.5 (points)
        return next((t[k] for k in ("accuracy_drop", "miou_drop", "map50_drop") if t.get(k) is not None), None)

    return [(t["name"] + (" (chosen)" if t["name"] == search["chosen"] else ""), f(drop(t)),
             f(t["agreement"], 4), f(t["sqnr_db"], 1), f(t["latency_p50_ms_1thread"]),
             f(t["size_bytes"] / 1e6 if t["size_bytes"] else None), f(t["seconds"], 1),
             "stopped at the time limit" if t.get("stopped") else f"failed: {t['failed']}" if t.get("failed")
             else "over the size budget" if t.get("over_size_budget") else "yes" if t["met"] else "no")
            for t in search["trials"]]


TRIAL_HEADER = ("configuration", "drop (points)", "agreement", "SQNR dB", "p50 ms 1 thr", "MB", "search s", "meets")


def drop_text(row: dict) -> str:
    """The "SQNR lost here" cell: dB, or "-" for a layer whose inputs are exact."""
    return "-" if row["drop_db"] is None else f"{row['drop_db']:.1f}"


def text_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*header), fmt.format(*("-" * w for w in widths))] + [fmt.format(*r) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


