"""Path containment: an output never replaces or overlaps an input, and a bundle never reaches outside itself.

Two rules, both checked on resolved paths (symlinks followed) *and* on the literal path as it will be
replaced (a symlink named as --out is itself replaced, not its target), so neither spelling slips through:

- ``check_output``: the bundle folder, its .zip and (with --force) what they replace must not be, contain or
  sit inside any input (model file and its folder, weights, calibration, validation, fine-tuning data, config,
  tokenizer, labels, profile), and must not be the current folder or one of its parents.
- ``bundle_file``: a file a manifest names is a plain name inside the bundle folder, a regular file (not a
  link, not a folder, not a device), and resolves inside the bundle.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from edgepack.errors import OutputError, VerifyError

CODE_INPUTS = ("model package",)  # inputs an --out may sit inside (it must still not be or contain them)


def _spellings(path: Path) -> set[Path]:
    """The path with every link resolved, and with only its parent resolved (the entry itself as named)."""
    absolute = Path(os.path.abspath(path))
    found = {absolute.resolve()}
    if absolute.name:
        found.add(absolute.parent.resolve() / absolute.name)
    return found


def _overlap(a: Path, b: Path) -> str | None:
    """How a and b overlap: 'is', 'is inside' (a inside b) or 'contains' (b inside a); None when disjoint."""
    if a == b:
        return "is"
    if b in a.parents:
        return "is inside"
    if a in b.parents:
        return "contains"
    return None


def check_output(out: Path, inputs: Iterable[tuple[str, str | Path | None]]) -> None:
    """Refuse an --out that is empty, the current folder (or a parent of it), or overlaps an input.

    ``inputs`` are (what, path) pairs, e.g. ("calibration data", "photos/"); None paths are skipped.
    """
    if not str(out).strip() or str(out).strip() in (".", "./"):
        raise OutputError(f"--out {str(out)!r} names the current folder",
                          hint="give the bundle its own folder, e.g. --out build/mymodel")
    cwd = Path.cwd().resolve()
    targets = {p for t in (out, out.with_name(out.name + ".zip")) for p in _spellings(t)}
    for target in sorted(targets):
        if target == cwd or target in cwd.parents:
            raise OutputError(f"--out {out} is the current folder or one of its parents: replacing it would delete "
                              "what you are working on", hint="give the bundle its own folder, e.g. --out build/x")
    for what, path in inputs:
        if path is None or not str(path):
            continue
        for target in sorted(targets):
            for source in sorted(_spellings(Path(path))):
                how = _overlap(target, source)
                if how == "is inside" and what in CODE_INPUTS:
                    continue  # a bundle under a package's folder harms nothing; replacing the package would
                if how:
                    raise OutputError(f"--out {out} {how} the {what} {path}: the build would replace or mix with "
                                      "its own input", hint="choose an --out folder apart from every input")


def check_replaceable(out: Path, *, zip_of: str | None = None) -> None:
    """With --force, replace only what edgepack wrote: a bundle folder (or an empty one), a bundle's .zip
    (``zip_of``: the bundle folder's name, which the zip's entries sit under), or a link (the link itself is
    replaced, never what it points to). A user's file or folder that happens to carry the name is refused."""
    if out.is_symlink() or not out.exists():
        return
    if zip_of is not None:
        if out.is_file() and _is_bundle_zip(out, zip_of):
            return
        raise OutputError(f"{out} is not an edgepack bundle's zip (no {zip_of}/manifest.json inside): --force "
                          "replaces bundles only", hint="choose another --out, or move the file yourself")
    if out.is_dir():
        if (out / "manifest.json").is_file() or not any(out.iterdir()):
            return
        raise OutputError(f"--out {out} is a folder that is not an edgepack bundle (no manifest.json): --force "
                          "replaces bundles only", hint="choose another --out, or remove the folder yourself")
    raise OutputError(f"--out {out} is a file, not an edgepack bundle folder: --force replaces bundles only",
                      hint="choose another --out (a bundle is a folder), or move the file yourself")


def _is_bundle_zip(path: Path, root: str) -> bool:
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            return f"{root}/manifest.json" in zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return False


def safe_member_name(name: object) -> bool:
    """A plain file name inside a flat bundle folder: no separators, no '..', not absolute, no NUL."""
    if not isinstance(name, str) or not name or len(name) > 255 or "\x00" in name or "\\" in name:
        return False
    p = PurePosixPath(name)
    return not p.is_absolute() and len(p.parts) == 1 and p.parts[0] not in (".", "..")


def bundle_file(folder: Path, name: object, what: str) -> Path:
    """``folder / name`` once it is known to be a regular file inside the bundle; VerifyError otherwise."""
    if not safe_member_name(name):
        raise VerifyError(f"the manifest's {what} {name!r} is not a plain file name inside the bundle: refused",
                          hint="the bundle was edited or is not an edgepack bundle")
    path = folder / str(name)
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        raise VerifyError(f"{what} {name} is missing from the bundle",
                          hint="the bundle was modified or damaged; rebuild it or fetch it again") from None
    if stat.S_ISLNK(mode):
        raise VerifyError(f"{what} {name} is a symbolic link: refused (a bundle holds its files itself)",
                          hint="the bundle was edited; rebuild it or fetch it again")
    if not stat.S_ISREG(mode):
        raise VerifyError(f"{what} {name} is not a regular file: refused")
    root = folder.resolve()
    if root not in path.resolve().parents:
        raise VerifyError(f"{what} {name} resolves outside the bundle: refused")
    return path


def _factory_location(spec: str) -> str | None:
    """The file or folder a ``package.module:factory`` spec imports from, found without importing anything."""
    import importlib.machinery
    import sys

    top = spec.split(":", 1)[0].split(".", 1)[0]
    try:
        found = importlib.machinery.PathFinder.find_spec(top, [str(Path.cwd()), *sys.path])
    except (ImportError, ValueError, OSError):
        return None
    if found is None:
        return None
    if found.submodule_search_locations:
        return next(iter(found.submodule_search_locations), None)
    return found.origin if found.origin and found.has_location else None


def build_inputs(config, extra: Iterable[tuple[str, str | Path | None]] = (),
                 default_calib: str | None = None) -> list[tuple[str, str | Path | None]]:
    """Every file or folder a build reads, as (what, path) pairs, for ``check_output`` (``default_calib``: the
    folder an image build calibrates on when --calib is not given)."""
    model, package = config.model, None
    if ":" in model and not Path(model).exists():
        model, package = None, None if model.startswith("torchvision:") else _factory_location(model)
    finetune = getattr(getattr(config.prune, "finetune", None), "data", None)
    target = config.target if (config.target.endswith(".toml") or Path(config.target).is_file()) else None
    return [("model", model), ("model package", package), ("weights", config.weights),
            ("calibration data", config.calib or default_calib),
            ("validation data", config.val), ("fine-tuning data", finetune), ("tokenizer", config.tokenizer),
            ("labels file", config.labels), ("target profile", target), *extra]
