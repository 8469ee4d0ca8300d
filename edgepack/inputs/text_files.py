"""Text data files for text models: .txt (one text per line), .jsonl and .csv (a text, optional label and
text_pair), read into texts and int64 labels with every problem reported at once (edgepack.inputs.text tokenizes
them).
"""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from edgepack.errors import InputError

log = logging.getLogger(__name__)

TEXT_SUFFIXES = (".txt", ".jsonl", ".csv")
#: a sentence pair's second text: the .jsonl key or .csv column (transformers' tokenizers call it text_pair)
PAIR_KEY = "text_pair"


def read_texts(path: str | Path, *, require_labels: bool = False, class_names: list[str] | None = None,
               ) -> tuple[list[str | tuple[str, str]], np.ndarray | None]:
    """Texts and int64 labels (or None) from .txt (one per line), .jsonl (text, optional label) or .csv.

    A .csv needs a header with a ``text`` column and optionally ``label``. Labels must be given for every
    row or for none; a label is a class index, or one of ``class_names`` (--labels or the model's id2label),
    which stands for its index. A sentence-pair model's second text is ``text_pair`` (a .jsonl key or a .csv
    column, as transformers' tokenizers name it): such a row's text is the tuple (text, text_pair), tokenized as
    one pair. Blank .txt lines are skipped. Every problem found is reported in one InputError.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"text data not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in TEXT_SUFFIXES:
        raise InputError(
            f"{path.name}: text data must be .txt, .jsonl or .csv, not '{suffix or '(none)'}'",
            hint='one text per line in .txt; {"text": ..., "label": N} per line in .jsonl',
        )
    try:
        raw = path.read_text(encoding="utf-8-sig")  # a byte-order mark (Excel's CSVs) is not part of the header
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{path.name} is not UTF-8 text (byte {exc.start}: 0x{exc.object[exc.start]:02x})",
            hint="re-save it as UTF-8" + _legacy_encoding(path),
        ) from None
    reader = {".txt": _rows_txt, ".jsonl": _rows_jsonl, ".csv": _rows_csv}[suffix]
    texts, labels = _check_rows(path, reader(path, raw), require_labels, class_names)
    log.info("read %d texts%s from %s", len(texts), " with labels" if labels is not None else "", path)
    return texts, labels


def _legacy_encoding(path: Path) -> str:
    """How to convert a file that reads as Windows-1252 / Latin-1 (a spreadsheet's or an old editor's default):
    the usual non-UTF-8 text, whose accents were only 'byte 3'."""
    try:
        path.read_bytes().decode("cp1252")
    except UnicodeDecodeError:
        return ""
    return (f"; it reads as Windows-1252 / Latin-1: iconv -f cp1252 -t utf-8 {path.name} > "
            f"{path.stem}.utf8{path.suffix}, or save it from the editor as UTF-8")


def _rows_txt(path: Path, raw: str) -> list[tuple[int, Any, Any]]:
    return [(i, line.strip(), None) for i, line in enumerate(raw.splitlines(), 1) if line.strip()]


def _rows_jsonl(path: Path, raw: str) -> list[tuple[int, Any, Any]]:
    rows, bad, keys = [], [], set()
    for i, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            bad.append(f"line {i}: not JSON ({exc.msg})")
            continue
        if not isinstance(obj, dict):
            bad.append(f"line {i}: expected an object with 'text', got {type(obj).__name__}")
            continue
        text, pair = obj.get("text"), obj.get(PAIR_KEY)
        rows.append((i, text if pair is None else (text, pair), obj.get("label")))
        keys.update(obj)
    _raise_if(path, bad, 'each line must be {"text": "...", "label": 0}')
    if rows and "text" not in keys and keys - {"label", PAIR_KEY}:  # GLUE's "sentence": every line read as empty
        raise InputError(f"{path.name}: no line has a 'text' key (keys found: {', '.join(sorted(map(str, keys)))})",
                         hint=f'name each text "text" (a sentence pair\'s second "{PAIR_KEY}"; the class "label"), '
                              'e.g. {"text": "...", "label": 0}')
    return rows


def _rows_csv(path: Path, raw: str) -> list[tuple[int, Any, Any]]:
    reader = csv.DictReader(io.StringIO(raw, newline=""), strict=True)
    try:
        fields = [_column(f) for f in (reader.fieldnames or [])]
        rows, overflow = [], []
        for row in reader:
            rows.append(row)
            if row.get(None):  # more fields than the header names: an unquoted comma split the text
                overflow.append(reader.line_num)
    except csv.Error as exc:  # strict: an unterminated quote is an error, not the rest of the file in one row
        raise InputError(f"{path.name}: line {reader.line_num}: not valid CSV ({exc})",
                         hint=_other_delimiter(raw) or "close every opening double quote; a quote inside a field is "
                                                       "written twice (\"\")") from None
    twice = sorted({f for f in fields if fields.count(f) > 1 and f in _COLUMNS})
    if twice:
        raise InputError(f"{path.name}: the header names the column {', '.join(twice)} twice (column names are read "
                         f"case-insensitively: {', '.join(f.strip() for f in reader.fieldnames or [])})",
                         hint="keep one column of each name")
    if "text" not in fields:
        raise InputError(
            f"{path.name}: no 'text' column (header: {', '.join(fields) or 'empty'})",
            hint=_other_delimiter(raw) or "the first row must name the columns: text,label",
        )
    if overflow:
        raise InputError(f"{path.name}: line(s) {', '.join(map(str, overflow[:8]))}"
                         f"{' ...' if len(overflow) > 8 else ''} have more fields than the header's {len(fields)} "
                         f"({', '.join(fields)}): the text was cut at a comma and the rest taken for other columns",
                         hint='put a text that holds commas in double quotes: "Call me at 5, not 6",1')
    has_label, has_pair = "label" in fields, PAIR_KEY in fields
    others = [f for f in fields if f not in ("text", "label", PAIR_KEY)]
    if not has_label and others:
        log.warning("%s: no 'label' column (columns: %s): its texts are read without labels; name the label column "
                    "'label' to score accuracy", path.name, ", ".join(fields))
    named = [{_column(k) if isinstance(k, str) else k: v for k, v in row.items()} for row in rows]
    return [(i, (row.get("text"), row.get(PAIR_KEY)) if has_pair else row.get("text"),
             row.get("label") if has_label else None) for i, row in enumerate(named, 2)]


_COLUMNS = ("text", "label", PAIR_KEY)


def _column(name: str) -> str:
    """A .csv header's column name: text, label and text_pair whatever their case (a spreadsheet's "Text,Label"
    was refused for having no 'text' column), others as written."""
    low = name.strip().lower()
    return low if low in _COLUMNS else name.strip()


def _other_delimiter(raw: str) -> str | None:
    """A hint when the header is separated by ';' or tabs (a spreadsheet's export in many locales), else None."""
    header = raw.split("\n", 1)[0]
    for sep, name in ((";", "semicolons"), ("\t", "tabs")):
        if sep in header and "," not in header:
            return (f"the header is separated by {name}: edgepack reads comma-separated CSV (text,label); export "
                    "the file with commas, or as .jsonl")
    return None


def _check_rows(
    path: Path, rows: list[tuple[int, Any, Any]], require_labels: bool, class_names: list[str] | None = None,
) -> tuple[list[str | tuple[str, str]], np.ndarray | None]:
    """Validate (line, text, label) rows; collect every problem, raise once with a hint for the kinds found."""
    bad = [f"line {i}: {what} missing or not a non-empty string" for i, t, _ in rows if (what := _bad_text(t))]
    hints = ["every row needs a non-empty text: remove or fill the empty ones"] if bad else []
    pairs = sum(isinstance(t, tuple) for _, t, _ in rows)
    if 0 < pairs < len(rows):
        bad.append(f"{len(rows) - pairs} of {len(rows)} rows have no '{PAIR_KEY}' (a sentence pair: give it for all "
                   "or none)")
    labelled = [r for r in rows if r[2] not in (None, "")]
    if labelled and len(labelled) != len(rows):
        bad.append(f"{len(rows) - len(labelled)} of {len(rows)} rows have no label (give all or none)")
    by_name = {name: i for i, name in enumerate(class_names or [])}
    labels = [_to_label(lab) if str(lab).strip() not in by_name else by_name[str(lab).strip()]
              for _, _, lab in labelled]
    wrong = [f"line {r[0]}: label {r[2]!r} is not a non-negative integer"
             + (" nor one of the class names" if by_name else "")
             for r, lab in zip(labelled, labels, strict=True) if lab is None]
    bad += wrong
    if wrong or (labelled and len(labelled) != len(rows)):
        hints.append("labels are class indices 0..K-1" + (", or the class names of --labels" if by_name else
                                                          "; to write class names, pass --labels with them"))
    if not rows:
        bad.append("no texts")
        hints.append('one text per line in .txt, {"text": ..., "label": N} per line in .jsonl, a text column in .csv')
    if require_labels and not labelled:
        bad.append("no labels (validation needs a 'label' for every text)")
        hints.append("give every validation text a label")
    _raise_if(path, bad, "; ".join(hints) or None)
    y = np.asarray(labels, dtype=np.int64) if labelled else None
    return [t for _, t, _ in rows], y


def _bad_text(t: Any) -> str | None:
    """What is wrong with one row's text (a string, or a (text, text_pair) tuple), None when nothing is."""
    def ok(s: Any) -> bool:
        return isinstance(s, str) and bool(s.strip())

    if isinstance(t, tuple):
        return next((f"'{k}'" for k, s in zip(("text", PAIR_KEY), t, strict=True) if not ok(s)), None)
    return None if ok(t) else "'text'"


def _to_label(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        out = int(str(value).strip()) if not isinstance(value, int) else value
    except ValueError:
        return None
    return out if 0 <= out <= 2**31 - 1 else None  # a class index; 10**30 is not one (nor fits int64)


def _raise_if(path: Path, problems: list[str], hint: str | None) -> None:
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise InputError(f"{path.name}: {'; '.join(problems[:5])}{more}", hint=hint)
