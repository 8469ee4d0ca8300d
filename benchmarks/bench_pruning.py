"""Latency and accuracy against the channel-pruning ratio (0, 20, 40, 60 %) for one model, in one run.

Model: the Fashion-MNIST example (examples/fashion_mnist/model.py:create_model, EfficientNet-Lite0 at
96 px; ``--model digits``: a small CNN trained here on scikit-learn's digits, seconds). Data: 200 TRAIN
images for calibration (the seed-0 draw that examples/fashion_mnist/data.py writes as calib.npz), the next
TRAIN images of the same draw for fine-tuning (disjoint from calibration), 2000 TEST images (seed 0) for
accuracy. For every ratio: Taylor pruning (round_to 8) with least-squares reconstruction on the
calibration images, recovery fine-tuning (labels; with --distill also the unpruned model's logits and
penultimate features; frozen BatchNorm statistics, one pass over the fine-tuning images with warm-up + cosine
learning rate, a time budget as a safety stop), ONNX export + onnxslim,
edgepack's INT8 recipe (QDQ, calibrated on the same 200 images), FP32 and INT8 accuracy in ONNX Runtime, file
sizes, and host latency p50 (ONNX Runtime, every model of every ratio interleaved in one child process,
1 and 2 threads). Writes the table into benchmarks/BENCHMARKS.md and a plot to benchmarks/pruning.png.

    .venv/bin/python benchmarks/bench_pruning.py [--model fashion|digits] [--ratios 0,0.2,0.4,0.6]
        [--minutes 9.5] [--finetune-count 36000] [--distill [--feature-weight 4]]
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import update_section  # noqa: E402
from edgepack.config import FinetuneOptions, PruneOptions  # noqa: E402
from edgepack.device import measure  # noqa: E402
from edgepack.inputs.data import Dataset  # noqa: E402
from edgepack.pruning.channels import prune_model  # noqa: E402
from edgepack.pruning.finetune import finetune  # noqa: E402

PLOT = Path(__file__).resolve().parent / "pruning.png"
CALIB = 200
log = logging.getLogger("bench_pruning")


class DigitsCNN(torch.nn.Module):
    """Small CNN for 1x16x16 digits: conv-BN-ReLU x3 with a residual block and a linear head."""

    def __init__(self, width: int = 32):
        super().__init__()

        def block(cin, cout, stride):
            return torch.nn.Sequential(torch.nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
                                       torch.nn.BatchNorm2d(cout), torch.nn.ReLU())
        self.stem, self.body = block(1, width, 1), block(width, width, 1)
        self.down = block(width, 2 * width, 2)
        self.fc = torch.nn.Linear(2 * width, 10)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.body(x)
        return self.fc(self.down(x).mean((2, 3)))


def digits_task(seed: int = 0) -> tuple:
    """(trained DigitsCNN, train Dataset, test Dataset, name) on scikit-learn's digits at 16x16."""
    from sklearn.datasets import load_digits

    ds = load_digits()
    x = torch.nn.functional.interpolate(torch.tensor(ds.images[:, None] / 8.0 - 1.0, dtype=torch.float32),
                                        size=16, mode="bilinear", align_corners=False)
    y = torch.tensor(ds.target)
    perm = torch.from_numpy(np.random.default_rng(seed).permutation(len(x)))
    tr, te = perm[:1300], perm[1300:]
    torch.manual_seed(seed)
    model = DigitsCNN().train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(20):
        for i in range(0, len(tr), 64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[tr[i:i + 64]]), y[tr[i:i + 64]]).backward()
            opt.step()
    train = Dataset(x=x[tr].numpy(), y=y[tr].numpy(), source="digits train")
    test = Dataset(x=x[te].numpy(), y=y[te].numpy(), source="digits test")
    return model.eval(), train, test, "small CNN on scikit-learn digits (1x16x16)"


def fashion_task(train_count: int, test_count: int) -> tuple:
    """(model, calib, fine-tuning, test Datasets, name, input shape) for the Fashion-MNIST example."""
    from examples.fashion_mnist import data as fm
    from examples.fashion_mnist.model import create_model

    model = create_model().eval()
    xc, yc = fm.load_samples("train", CALIB, seed=0)  # calib.npz's draw
    xtr, ytr = fm.load_samples("train", train_count, seed=0, offset=CALIB, dtype="float16")  # the next images
    xte, yte = fm.load_samples("test", test_count, seed=0)
    return (model, Dataset(x=xc, y=yc, source="fashion train (calibration)"),
            Dataset(x=xtr, y=ytr, source="fashion train (fine-tuning)"),
            Dataset(x=xte, y=yte, source="fashion test"),
            "Fashion-MNIST example (EfficientNet-Lite0, 1x3x96x96)", (1, 3, 96, 96), ("_conv_head",))


def load_task(args) -> tuple:
    if args.model == "fashion":
        return fashion_task(args.finetune_count, args.test_count)
    model, train, test, name = digits_task()
    calib = Dataset(x=train.x[:CALIB], y=train.y[:CALIB], source="digits train (calibration)")
    ft = Dataset(x=train.x[CALIB:], y=train.y[CALIB:], source="digits train (fine-tuning)")
    return model, calib, ft, test, name, (1, *train.x.shape[1:]), ()


def accuracy(model, data: Dataset, batch: int = 64) -> float:
    """Top-1 accuracy of a PyTorch model on ``data``, points (0-100)."""
    hits = 0
    with torch.no_grad():
        for i in range(0, len(data), batch):
            pred = model(torch.from_numpy(data.x[i:i + batch])).argmax(1).numpy()
            hits += int((pred == data.y[i:i + batch]).sum())
    return 100.0 * hits / len(data)


def onnx_accuracy(path: Path, data: Dataset) -> float:
    """Top-1 accuracy (points) of an ONNX model in ONNX Runtime, batch 1 as on the device."""
    from edgepack.backends.onnx import Runner

    out = Runner(path, threads=2).run_samples(data.x)
    return 100.0 * float((out.reshape(len(data), -1).argmax(1) == data.y).mean())


def run_ratio(model, task: tuple, ratio: float, args, workdir: Path) -> dict:
    """Prune by ``ratio``, fine-tune, export FP32 and INT8; one table row (without latency)."""
    from edgepack.backends import onnx as onnx_backend
    from edgepack.backends.onnx_quantize import quantize_onnx

    _, calib, train, test, _, shape, ignore = task
    x1 = torch.from_numpy(calib.x[:1])
    t0 = time.perf_counter()
    if ratio > 0:
        options = PruneOptions(ratio=ratio, importance="taylor", taylor_samples=CALIB, ignore=ignore)
        pruned, rep = prune_model(model, x1, options, calib=calib)
    else:
        pruned, rep = copy.deepcopy(model), prune_model(model, x1, PruneOptions(ratio=0.0))[1]
    row = {"ratio": ratio, "params": rep["params_after"], "macs": rep["macs_after"],
           "macs_independent": rep["macs_independent_after"], "prune_s": time.perf_counter() - t0}
    if ratio > 0:
        row["acc_pruned"] = accuracy(pruned, test)
        ft = FinetuneOptions(epochs=args.epochs, lr=args.lr, distill=args.distill, feature_weight=args.feature_weight,
                             val_fraction=0.05, max_minutes=args.minutes, seed=0)
        row["finetune"] = finetune(pruned, train, ft, teacher=model if args.distill else None)
        log.info("ratio %.2f: fine-tune %s", ratio, row["finetune"])
    tag = f"r{int(round(ratio * 100))}"
    raw, fp32, int8 = workdir / f"{tag}_raw.onnx", workdir / f"{tag}_fp32.onnx", workdir / f"{tag}_int8.onnx"
    onnx_backend.export(pruned.eval(), shape, raw, opset=17)
    onnx_backend.simplify(raw, fp32)
    quantize_onnx(fp32, int8, calib.x)
    row.update(fp32=fp32, int8=int8, size_fp32=fp32.stat().st_size, size_int8=int8.stat().st_size,
               acc_fp32=onnx_accuracy(fp32, test), acc_int8=onnx_accuracy(int8, test))
    log.info("ratio %.2f: %s", ratio, {k: v for k, v in row.items() if k != "finetune"})
    return row


def _ft_cell(f: dict | None) -> str:
    return f"{f['seconds']:.0f} / {f['cpu_seconds']:.0f}, {f['steps']}, {f['stopped']}" if f else "-"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _ignored(task: tuple) -> str:
    return f"{', '.join(f'`{n}`' for n in task[6])} left unpruned, " if task[6] else ""


def _ft_loss(args) -> str:
    if not args.distill:
        return "labels (cross-entropy)"
    return (f"labels + distillation from the unpruned model (logits, and penultimate features with weight "
            f"{args.feature_weight:g})")


def table(rows: list[dict], name: str, task: tuple, args, seconds: float) -> str:
    base = rows[0]
    lines = [f"Model: {name}. Test accuracy on {len(task[3])} TEST images (ONNX Runtime); calibration "
             f"{CALIB} TRAIN images; fine-tuning {len(task[2])} other TRAIN images (5 % held out for model "
             f"selection). Pruning: Taylor importance, round_to 8, {_ignored(task)}least-squares reconstruction "
             f"on the calibration images. Recovery fine-tuning: {args.epochs} pass(es) over the fine-tuning "
             f"images with {_ft_loss(args)}, Adam lr {args.lr} with warm-up and cosine decay, batch 32, "
             f"BatchNorm statistics frozen, a {args.minutes:g}-min wall-clock safety stop per ratio (the "
             f"'stopped' column says whether it fired). INT8: edgepack's ONNX recipe. Latency: host p50 of "
             f"every model interleaved in one child process. Whole run: {seconds / 60:.1f} min on the shared "
             f"2-core machine (other jobs running).", "",
             "| ratio | params | MACs (TP / FlopCounter) | acc. pruned only | acc. FP32 | acc. INT8 "
             "| FP32 p50 ms 1/2 thr | INT8 p50 ms 1/2 thr | INT8 vs unpruned INT8: latency 1/2 thr | "
             "INT8 KB (vs unpruned) | fine-tune wall / CPU s, steps, stopped |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        f = r.get("finetune")
        lines.append(
            f"| {r['ratio']:.0%} | {r['params']:,} "
            f"| {r['macs'] / 1e6:.1f}M / {r['macs_independent'] / 1e6:.1f}M "
            f"| {_pct(r.get('acc_pruned'))} | {r['acc_fp32']:.2f} "
            f"| {r['acc_int8']:.2f} | {r['p50_fp32_1']:.2f} / {r['p50_fp32_2']:.2f} "
            f"| {r['p50_int8_1']:.2f} / {r['p50_int8_2']:.2f} "
            f"| {r['p50_int8_1'] / base['p50_int8_1']:.2f}x / {r['p50_int8_2'] / base['p50_int8_2']:.2f}x "
            f"| {r['size_int8'] / 1024:.0f} ({r['size_int8'] / base['size_int8']:.2f}x) "
            f"| {_ft_cell(f)} |")
    return "\n".join(lines)


def plot(rows: list[dict], name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratios = [100 * r["ratio"] for r in rows]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax.plot(ratios, [r["acc_fp32"] for r in rows], "o-", label="FP32, fine-tuned")
    ax.plot(ratios, [r["acc_int8"] for r in rows], "s-", label="INT8, fine-tuned")
    pruned_only = [(100 * r["ratio"], r["acc_pruned"]) for r in rows if "acc_pruned" in r]
    if pruned_only:
        ax.plot(*zip(*pruned_only, strict=True), "x--", label="FP32, pruned + reconstructed only")
    ax.axhline(rows[0]["acc_fp32"] - 1.0, color="grey", lw=0.8, ls=":", label="unpruned FP32 - 1 point")
    ax.set_xlabel("channels pruned (%)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.legend(fontsize=8)
    ax2.plot(ratios, [r["p50_fp32_1"] for r in rows], "o-", label="FP32, 1 thread")
    ax2.plot(ratios, [r["p50_int8_1"] for r in rows], "s-", label="INT8, 1 thread")
    ax2.plot(ratios, [r["p50_int8_2"] for r in rows], "s--", label="INT8, 2 threads")
    ax2.set_xlabel("channels pruned (%)")
    ax2.set_ylabel("host latency p50 (ms, ONNX Runtime)")
    ax2.legend(fontsize=8)
    fig.suptitle(name, fontsize=9)
    fig.tight_layout()
    fig.savefig(PLOT, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=("fashion", "digits"), default="fashion")
    p.add_argument("--ratios", default="0,0.2,0.4,0.6")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--minutes", type=float, default=9.5, help="fine-tuning safety stop per ratio (wall clock)")
    p.add_argument("--finetune-count", type=int, default=36000)
    p.add_argument("--distill", action="store_true", help="add distillation from the unpruned model to the labels")
    p.add_argument("--feature-weight", type=float, default=4.0, help="with --distill: penultimate-feature weight")
    p.add_argument("--test-count", type=int, default=2000)
    p.add_argument("--runs", type=int, default=200)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.manual_seed(0)
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    task = load_task(args)
    with tempfile.TemporaryDirectory() as tmp:
        ratios = [float(r) for r in args.ratios.split(",")]
        rows = [run_ratio(task[0], task, r, args, Path(tmp)) for r in ratios]
        models = {f"{kind}{i}": ("onnx", r[kind]) for i, r in enumerate(rows) for kind in ("fp32", "int8")}
        for threads in (1, 2):
            lat = measure.latency(models, task[3].x[:1], threads=threads, runs=args.runs, workdir=Path(tmp))
            for i, r in enumerate(rows):
                for kind in ("fp32", "int8"):
                    r[f"p50_{kind}_{threads}"] = lat[f"{kind}{i}"]["p50"]
    body = table(rows, task[4], task, args, time.perf_counter() - t0)
    update_section("pruning", "Channel pruning: accuracy and latency against the ratio", body)
    plot(rows, task[4])
    print(body)
    print(f"plot: {PLOT}")


if __name__ == "__main__":
    main()
