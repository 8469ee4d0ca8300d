"""Latency and accuracy against the channel-pruning ratio (0, 20, 40, 60 %) for one model, in one run.

Model: the Fashion-MNIST example (examples/fashion_mnist/model.py:create_model, EfficientNet-Lite0 at
96 px) when it loads; otherwise a small CNN trained here on scikit-learn's digits (seconds). For every
ratio: magnitude pruning (round_to 8), accuracy straight after pruning, recovery fine-tuning (labels plus
distillation from the unpruned model, seeded, time-boxed), accuracy after, params, MACs (both counters),
FP32 ONNX size and host latency p50 (ONNX Runtime, 1 thread, all ratios interleaved in one child
process). Writes the table into benchmarks/BENCHMARKS.md and a plot to benchmarks/pruning.png.

    .venv/bin/python benchmarks/bench_pruning.py [--model auto|fashion|digits] [--ratios 0,0.2,0.4,0.6]
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import update_section  # noqa: E402
from edgepack import measure  # noqa: E402
from edgepack.data import Dataset  # noqa: E402
from edgepack.finetune import FinetuneOptions, finetune  # noqa: E402
from edgepack.pruning import PruneOptions, prune_model  # noqa: E402

PLOT = Path(__file__).resolve().parent / "pruning.png"
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
    """(Fashion-MNIST example model, train Dataset, test Dataset, name); raises when unavailable."""
    from examples.fashion_mnist import data as fm
    from examples.fashion_mnist.model import create_model

    model = create_model().eval()
    xtr, ytr = fm.load_samples("train", train_count, seed=0)
    xte, yte = fm.load_samples("test", test_count, seed=0)
    return (model, Dataset(x=xtr, y=ytr, source="fashion train"),
            Dataset(x=xte, y=yte, source="fashion test"),
            "Fashion-MNIST example (EfficientNet-Lite0, 1x3x96x96)")


def load_task(args) -> tuple:
    if args.model in ("auto", "fashion"):
        try:
            return fashion_task(args.train_count, args.test_count)
        except Exception as exc:  # noqa: BLE001 - fall back to digits when the example is not ready
            if args.model == "fashion":
                raise
            log.warning("Fashion-MNIST example unavailable (%s); using the digits CNN", exc)
    return digits_task()


def accuracy(model, data: Dataset, batch: int = 64) -> float:
    """Top-1 accuracy on ``data``, points (0-100)."""
    hits = 0
    with torch.no_grad():
        for i in range(0, len(data), batch):
            pred = model(torch.from_numpy(data.x[i:i + batch])).argmax(1).numpy()
            hits += int((pred == data.y[i:i + batch]).sum())
    return 100.0 * hits / len(data)


def run_ratio(model, task: tuple, ratio: float, args, workdir: Path) -> dict:
    """Prune by ``ratio``, fine-tune, export; one table row (without latency)."""
    _, train, test, _ = task
    x1 = torch.from_numpy(test.x[:1])
    pruned, rep = prune_model(model, x1, PruneOptions(ratio=ratio))
    row = {"ratio": ratio, "params": rep["params_after"], "macs": rep["macs_after"],
           "macs_independent": rep["macs_independent_after"], "acc_pruned": accuracy(pruned, test)}
    if ratio > 0:
        ft = FinetuneOptions(epochs=args.epochs, lr=args.lr, distill=True, max_minutes=args.max_minutes,
                             seed=0)
        row["finetune"] = finetune(pruned, train, ft, teacher=model)
    row["acc"] = accuracy(pruned, test)
    path = workdir / f"pruned_{int(round(ratio * 100))}.onnx"
    torch.onnx.export(pruned, (x1,), str(path), dynamo=False, opset_version=17, input_names=["input"],
                      output_names=["output"])
    row["onnx"], row["size_kb"] = path, path.stat().st_size / 1024
    return row


def table(rows: list[dict], name: str, args) -> str:
    base = rows[0]
    lines = [f"Model: {name}. Magnitude pruning, round_to 8; fine-tuning: up to {args.epochs} epochs "
             f"(max {args.max_minutes} min each), labels + distillation, lr {args.lr}. Latency: FP32 ONNX, "
             "ONNX Runtime, 1 thread, p50 of interleaved runs in one child process.", "",
             "| ratio | params | MACs (TP) | MACs (FlopCounter) | acc. pruned | acc. fine-tuned "
             "| FP32 ONNX KB | latency p50 ms | vs unpruned |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['ratio']:.0%} | {r['params']:,} | {r['macs']:,} | {r['macs_independent']:,} "
                     f"| {r['acc_pruned']:.2f} | {r['acc']:.2f} | {r['size_kb']:.0f} | {r['p50']:.3f} "
                     f"| {r['p50'] / base['p50']:.2f}x |")
    return "\n".join(lines)


def plot(rows: list[dict], name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratios = [100 * r["ratio"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(ratios, [r["acc"] for r in rows], "o-", label="accuracy, fine-tuned (%)")
    ax.plot(ratios, [r["acc_pruned"] for r in rows], "o--", label="accuracy, pruned only (%)")
    ax.set_xlabel("channels pruned (%)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax2 = ax.twinx()
    ax2.plot(ratios, [r["p50"] for r in rows], "s-", color="tab:red", label="latency p50 (ms)")
    ax2.set_ylabel("FP32 ONNX latency p50, ms (1 thread)")
    fig.legend(loc="lower left", fontsize=8)
    ax.set_title(name, fontsize=9)
    fig.tight_layout()
    fig.savefig(PLOT, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=("auto", "fashion", "digits"), default="auto")
    p.add_argument("--ratios", default="0,0.2,0.4,0.6")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--max-minutes", type=float, default=3.0)
    p.add_argument("--train-count", type=int, default=3000)
    p.add_argument("--test-count", type=int, default=1000)
    p.add_argument("--runs", type=int, default=100)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.manual_seed(0)
    task = load_task(args)
    with tempfile.TemporaryDirectory() as tmp:
        ratios = [float(r) for r in args.ratios.split(",")]
        rows = [run_ratio(copy.deepcopy(task[0]), task, r, args, Path(tmp)) for r in ratios]
        lat = measure.latency({str(i): ("onnx", r["onnx"]) for i, r in enumerate(rows)},
                              task[2].x[:1], threads=1, runs=args.runs, workdir=Path(tmp))
    for i, r in enumerate(rows):
        r["p50"] = lat[str(i)]["p50"]
    body = table(rows, task[3], args)
    update_section("pruning", "Channel pruning: accuracy and latency against the ratio", body)
    plot(rows, task[3])
    print(body)
    print(f"plot: {PLOT}")


if __name__ == "__main__":
    main()
