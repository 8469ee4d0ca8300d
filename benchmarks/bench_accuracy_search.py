"""Accuracy drop against latency for every configuration the accuracy-aware search tries, one model.

The labelled Fashion-MNIST example (EfficientNet-Lite0 backbone, 96 px) is built for raspberry-pi-4
with an unreachable budget (0.0 points), so the search walks its whole list within the time limit:
calibration methods, more calibration samples, then 1-16 sensitive layers kept in float. Writes the
table into BENCHMARKS.md (section "accuracy-search") and the plot to benchmarks/accuracy_search.png.

    .venv/bin/python benchmarks/bench_accuracy_search.py
"""

from __future__ import annotations

import base64
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import scratch_dir, update_section  # noqa: E402


def _run(work: Path) -> None:
    import os

    import edgepack
    from edgepack.bundle.html import TRIAL_HEADER, trial_rows, trials_plot
    from edgepack.bundle.report import markdown_table
    from examples.fashion_mnist.data import write_npz

    os.chdir(ROOT)
    calib = write_npz("train", 200, work / "calib.npz", seed=0)
    val = write_npz("test", 2000, work / "val.npz", seed=0)
    result = edgepack.build(model="examples.fashion_mnist.model:create_model", target="raspberry-pi-4",
                            input_shape=[1, 3, 96, 96], calib=str(calib), val=str(val), out=str(work / "b"),
                            max_accuracy_drop=0.0, max_search_time=900.0, latency_runs=30)
    search = result.manifest["stages"]["quantization_search"]
    png = ROOT / "benchmarks" / "accuracy_search.png"
    png.write_bytes(base64.b64decode(trials_plot(search["trials"])))
    v = result.manifest["validation"]
    text = "\n".join([
        "Fashion-MNIST example (EfficientNet-Lite0 backbone, 96 px), raspberry-pi-4 profile, 200 calibration "
        "images (train split), 2,000 labelled test images. FP32 accuracy "
        f"{v['accuracy_fp32']:.2f} %. Budget set to 0.0 points so the search tries every configuration "
        f"(limit 900 s, spent {search['seconds']} s). Latency: INT8 p50 at 1 thread on the host.", "",
        markdown_table(TRIAL_HEADER, trial_rows(search)), "",
        "![accuracy drop against latency](accuracy_search.png)", "",
        "Reproduce: `.venv/bin/python benchmarks/bench_accuracy_search.py`."])
    update_section("accuracy-search", "Accuracy-aware INT8: every configuration tried", text)
    print(text)


def main() -> None:
    with scratch_dir("bench-search-") as work:
        _run(work)


if __name__ == "__main__":
    main()
