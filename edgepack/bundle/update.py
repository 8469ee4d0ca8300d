"""Write a device measurement into an existing bundle: the latency budget then judges it.

`edgepack bench` measures on the device (edgepack.device.remote); this module owns what happens to the bundle:
the record goes into manifest.json, the latency budget row is re-judged (edgepack.tasks.budgets), report.md and
report.html are re-rendered, file digests and the .zip are refreshed.
"""

from __future__ import annotations

import logging
from pathlib import Path

from edgepack.bundle import html as html_report
from edgepack.bundle import report
from edgepack.bundle.manifest_check import rendering
from edgepack.bundle.read import read_manifest
from edgepack.bundle.write import write_zip
from edgepack.errors import InputError
from edgepack.tasks import budgets
from edgepack.util import SIGNATURE, manifest_json, sha256_file, write_bytes_atomic

log = logging.getLogger(__name__)

KIND = "measured-device"


def record_device_measurement(bundle_dir: Path, record: dict, max_latency_ms: float | None = None) -> dict:
    """Put a "measured-device" record into the bundle; the latency budget now judges it. Returns the manifest.

    The model entry with the record's format gets ``validation.latency_ms.device``; its latency budget row
    takes the device p50 as its value (``kind`` "measured-device"; limit: ``max_latency_ms`` or the row's own),
    ``passed`` is recomputed, report.md and report.html are re-rendered, the digests in ``files`` and the .zip are
    refreshed.
    """
    bundle_dir = Path(bundle_dir)
    man = read_manifest(bundle_dir)
    if record.get("kind") != KIND:
        raise InputError(f"record kind is {record.get('kind')!r}, expected '{KIND}'")
    entry = next((m for m in man["models"] if m["format"] == (record.get("format") or m["format"])), None)
    if entry is None:
        raise InputError(f"the bundle has no {record.get('format')} model")
    with rendering(f"{bundle_dir}/manifest.json"):
        _apply(entry["validation"], record, max_latency_ms)
    man["passed"] = all(m["validation"]["passed"] for m in man["models"])
    if entry["format"] == man["models"][0]["format"]:
        man["validation"] = entry["validation"]  # the top-level copy of the primary model's validation
    man["device_measurements"] = [*man.get("device_measurements", []), record]
    text = report.render_markdown(man) + device_section(man)
    (bundle_dir / "report.md").write_text(text, encoding="utf-8")
    layers = man.get("stages", {}).get("diagnosis", {}).get("layers")
    pictures = bundle_dir / html_report.PICTURES_FILE
    (bundle_dir / "report.html").write_text(
        html_report.render(man, layers, pictures.read_bytes() if pictures.is_file() else None), encoding="utf-8")
    for name in ("report.md", "report.html"):  # both show the verdict, which the device measurement may change
        path = bundle_dir / name
        man["files"][name] = {"sha256": sha256_file(path), "size_bytes": path.stat().st_size}
    write_bytes_atomic(bundle_dir / "manifest.json", manifest_json(man).encode())
    if (bundle_dir / SIGNATURE).is_file():  # it signed the manifest before this record: it no longer verifies
        (bundle_dir / SIGNATURE).unlink()
        log.warning("%s removed: the manifest changed; sign the bundle again (edgepack sign)", SIGNATURE)
    _refresh_zip(bundle_dir)
    return man


def _apply(val: dict, record: dict, max_latency_ms: float | None) -> None:
    val["latency_ms"]["device"] = record
    rows = [b for b in val["budgets"] if b["name"] == "latency_p50_ms"]
    if not rows and max_latency_ms is None:
        return
    if not rows:
        rows = [{"name": "latency_p50_ms", "op": "<="}]
        val["budgets"].append(rows[0])
    row = rows[0]
    for stale in ("band", "verdict", "host_value"):  # an estimate's (stages/device.py): the measurement replaces it
        row.pop(stale, None)
    row["limit"] = max_latency_ms if max_latency_ms is not None else row["limit"]
    row.update(budgets.rejudge(row, record["p50"]), kind=KIND, measured_on=record["device"])
    val["passed"] = budgets.all_passed(val["budgets"])


def device_section(man: dict) -> str:
    """Markdown section listing every device measurement, labelled as such."""
    lines = ["", "## Latency measured on the device", "",
             "| device | machine | format | runtime | threads | runs | p50 ms | p90 ms | kind | when |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in man.get("device_measurements", []):
        lines.append(f"| {r['device']} | {r.get('machine')} | {r.get('format')} | {r.get('runtime')} "
                     f"{r.get('runtime_version') or ''} | {r.get('threads')} | {r['runs']} | {r['p50']:.2f} | "
                     f"{r['p90']:.2f} | {r['kind']} | {r['measured_at']} |")
    lines += ["", "The latency budget above is judged on the latest device measurement.", ""]
    return "\n".join(lines)


def _refresh_zip(bundle_dir: Path) -> None:
    """Rewrite ``<bundle>.zip`` beside the folder, if there is one, so both stay the same bundle."""
    zpath = bundle_dir.with_name(bundle_dir.name + ".zip")
    if zpath.exists():
        tmp = zpath.with_name(f".{zpath.name}.tmp")
        write_zip(bundle_dir, tmp, bundle_dir.name)
        tmp.replace(zpath)
