"""Reading and verifying bundles (folders or .zip files) without trusting them.

Nothing from a bundle is executed: the manifest is JSON, models are run by their runtimes, and
zip extraction refuses entries that would escape the folder (zip-slip) and links.
"""

from __future__ import annotations

import stat
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from edgepack.bundle import manifest_check
from edgepack.bundle.report import SCHEMA
from edgepack.errors import InputError, VerifyError
from edgepack.guards import safety, tempdirs
from edgepack.util import MANIFEST_DIGEST, SIGNATURE, manifest_digest, sha256_file

MAX_ZIP_ENTRIES = 1000
MAX_ZIP_BYTES = 4 << 30
REQUIRED = {"schema": str, "name": str, "target": dict, "model": dict, "models": list, "inputs": list,
            "outputs": list, "preprocess": dict, "validation": dict, "passed": bool, "files": dict,
            "tools": dict, "created_from": dict, "golden": dict}


def check_manifest(man: object, where: str) -> dict:
    """Validate the manifest's shape; raise VerifyError listing every problem."""
    if not isinstance(man, dict):
        raise VerifyError(f"{where}: manifest is not a JSON object")
    problems = [f"missing '{k}'" for k in REQUIRED if k not in man]
    problems += [f"'{k}' should be {t.__name__}" for k, t in REQUIRED.items() if k in man and not isinstance(man[k], t)]
    if man.get("schema") not in (None, SCHEMA) and isinstance(man.get("schema"), str):
        problems.append(f"schema is '{man['schema']}', expected '{SCHEMA}'")
    for name, entry in (man.get("files") or {}).items() if isinstance(man.get("files"), dict) else []:
        if not _safe_name(name) or not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
            problems.append(f"bad files entry '{name}'")
    if not problems:
        problems = manifest_check.problems(man)
    if problems:
        raise VerifyError(f"{where}: invalid manifest: " + "; ".join(problems[:10]),
                          hint="the bundle was edited or is not an edgepack bundle")
    return man


def _safe_name(name: str) -> bool:
    p = PurePosixPath(name)
    return bool(name) and not p.is_absolute() and ".." not in p.parts and "\\" not in name and len(p.parts) == 1


@contextmanager
def opened(path: Path) -> Iterator[Path]:
    """Yield a folder holding the bundle: the folder itself, or a safe extraction of a .zip."""
    if path.is_dir():
        yield path
        return
    if not path.is_file():
        raise InputError(f"bundle not found: {path}", hint="pass a bundle folder or its .zip")
    if not zipfile.is_zipfile(path):
        raise InputError(f"{path} is neither a bundle folder nor a .zip")
    tmp = tempdirs.workdir("bundle-")
    try:
        yield safe_extract(path, tmp)
    finally:
        tempdirs.remove(tmp)


def safe_extract(zip_path: Path, dest: Path) -> Path:
    """Extract a bundle zip (one top folder) into dest; refuse path escapes and links."""
    with zipfile.ZipFile(zip_path) as zf:
        infos = zf.infolist()
        roots = {PurePosixPath(i.filename).parts[0] for i in infos if i.filename}
        for info in infos:
            parts = PurePosixPath(info.filename).parts
            mode = info.external_attr >> 16
            if info.filename.startswith("/") or ".." in parts or "\\" in info.filename or ":" in parts[0]:
                raise VerifyError(f"{zip_path}: entry '{info.filename}' would escape the folder: refused")
            if stat.S_ISLNK(mode):
                raise VerifyError(f"{zip_path}: entry '{info.filename}' is a link: refused")
        if len(roots) != 1:
            raise VerifyError(f"{zip_path}: expected one top folder, found {len(roots)}")
        if len(infos) > MAX_ZIP_ENTRIES or sum(i.file_size for i in infos) > MAX_ZIP_BYTES:
            raise VerifyError(f"{zip_path}: {len(infos)} entries, {sum(i.file_size for i in infos)} bytes unpacked: "
                              "more than a bundle holds; refused")
        zf.extractall(dest)
    return dest / roots.pop()


def read_manifest(path: Path) -> dict:
    with opened(path) as folder:
        return _load_manifest(folder)


def _load_manifest(folder: Path) -> dict:
    mpath = folder / "manifest.json"
    if not mpath.exists() and not mpath.is_symlink():
        raise VerifyError(f"{folder} has no manifest.json", hint="is this an edgepack bundle?")
    man = manifest_check.load_json(safety.bundle_file(folder, "manifest.json", "manifest"))
    return check_manifest(man, str(mpath))


def verify(path: Path, allowed_signers: Path | None = None, identity: str | None = None) -> list[str]:
    """Check digests of every file, no extra files, then the golden output; with ``allowed_signers``, first that
    manifest.json.sig is a trusted key's signature of the manifest (edgepack.bundle.signing). Report lines."""
    from edgepack.bundle import signing

    with opened(path) as folder:
        signed = [signing.check(folder, allowed_signers, identity)] if allowed_signers is not None else []
        man = _load_manifest(folder)
        lines = signed + _check_files(folder, man)
        lines += _check_golden(folder, man)
    from edgepack.bundle import report

    with manifest_check.rendering(f"{path}/manifest.json"):  # what inspect shows must be there too
        report.summary_rows(man)
        report.budget_rows(man)
    return lines


#: extra files that fail verify: what Python beside run.py would import or load (other extra files are listed)
CODE_SUFFIXES = frozenset({".py", ".pyc", ".pyo", ".pyd", ".so", ".pth", ".dylib", ".dll"})


def _check_files(folder: Path, man: dict) -> list[str]:
    problems, lines = _check_self_digest(man), []
    for name, entry in sorted(man["files"].items()):
        f = folder / name
        if not f.is_file() and not f.is_symlink():
            problems.append(f"{name}: missing")
            continue
        try:
            safety.bundle_file(folder, name, "file")
        except VerifyError as exc:
            problems.append(exc.message)
            continue
        if sha256_file(f) != entry["sha256"]:
            problems.append(f"{name}: sha256 differs from the manifest")
        else:
            lines.append(f"ok  {name}  sha256 {entry['sha256'][:16]}...")
    extra = sorted((p for p in folder.iterdir() if p.name not in man["files"] and p.name != "manifest.json"),
                   key=lambda p: p.name)
    for p in extra:
        if p.name == SIGNATURE and p.is_file() and not p.is_symlink():
            lines.append(f"--  {p.name}  signature of manifest.json (checked with --allowed-signers)")
            continue   # code beside run.py would be imported by it; a photo or a list of inputs is the user's
        if p.is_dir() or p.is_symlink() or p.suffix.lower() in CODE_SUFFIXES:
            problems.append(f"{p.name}: not listed in the manifest")
        else:
            lines.append(f"--  {p.name}  not part of the bundle (not checked)")
    if problems:
        raise VerifyError("bundle does not match its manifest: " + "; ".join(problems),
                          hint="the bundle was modified or damaged; rebuild it or fetch it again")
    return lines


def _check_self_digest(man: dict) -> list[str]:
    recorded = man.get(MANIFEST_DIGEST)
    if recorded is None:
        return ["manifest.json: no self-digest (edited, or written before bundles carried one: rebuild it)"]
    if recorded != manifest_digest(man):
        return ["manifest.json: its content differs from its self-digest (edited after it was written)"]
    return []


def _check_golden(folder: Path, man: dict) -> list[str]:
    from edgepack.bundle import golden_check

    golden = golden_check.load(safety.bundle_file(folder, man["golden"]["file"], "golden file"))
    feed = _golden_input(golden, man)
    lines = []
    for m in man["models"]:
        path = safety.bundle_file(folder, m["file"], "model file")
        diff = golden_check.max_diff(path, m["format"], feed, golden)
        if not diff <= man["golden"]["tolerance"]:
            raise VerifyError(f"{m['file']}: output on the golden input differs by {diff:.4g} "
                              f"(tolerance {man['golden']['tolerance']})")
        lines.append(f"ok  {m['file']} golden output, max abs diff {diff:.3g}")
    return lines


def _golden_input(golden, man: dict):
    """The golden input: the array 'input' (images), or every token array by the tokenizer's input name
    (text models; a .tflite model names its tensors differently, e.g. "serving_default_input_ids:0")."""
    kind = man["preprocess"].get("kind")
    if kind not in ("text", "tensors"):
        if "input" not in golden:
            raise VerifyError("golden file lacks the array 'input'", hint="the bundle was modified or damaged")
        return golden["input"]
    listed = man["preprocess"].get("model_input_names") if kind == "text" else [
        s.get("name") for s in man["preprocess"].get("inputs") or [] if isinstance(s, dict)]
    names = listed or [i["name"] for i in man["inputs"] if isinstance(i, dict) and "name" in i]
    missing = [n for n in names if not isinstance(n, str) or n not in golden]
    if missing or not names:
        raise VerifyError(f"golden file lacks model input(s) {', '.join(missing) or '(none listed)'}",
                          hint="the bundle was modified or damaged; rebuild it")
    return {n: golden[n] for n in names}
