"""Signed bundles: who built it, not only whether it is intact.

A manifest's ``manifest_sha256`` and the per-file sha256 catch damage and careless edits, but anyone who edits a
manifest can recompute them. Authenticity needs a key. We use OpenSSH's signatures (``ssh-keygen -Y sign`` /
``-Y verify``, OpenSSH >= 8.0): every developer and CI runner already has the tool and an ed25519 key, the
format is documented (PROTOCOL.sshsig), and a list of trusted keys is one text file (``allowed_signers``, as git
uses for signed commits). The signature covers ``manifest.json``, which pins every other file by sha256, so a
verified signature plus `edgepack verify`'s digest checks cover the whole bundle.

The signature lives beside the manifest as ``manifest.json.sig``; `sign` also rewrites the bundle's .zip so the
two stay the same bundle.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from edgepack.errors import InputError, OutputError, VerifyError
from edgepack.util import SIGNATURE

NAMESPACE = "edgepack-bundle"  # ssh-keygen's -n: a signature made for another purpose (git, files) does not pass


def _ssh_keygen() -> str:
    tool = shutil.which("ssh-keygen")
    if tool is None:
        raise InputError("ssh-keygen is not installed: bundles are signed and checked with OpenSSH's signatures",
                         hint="install OpenSSH's client (Debian: apt-get install openssh-client)")
    return tool


def _run(args: list[str], stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(args, input=stdin, capture_output=True, timeout=120, check=False)


def _folder(bundle: Path) -> Path:
    folder = Path(bundle)
    if not (folder / "manifest.json").is_file():
        raise InputError(f"{bundle} is not a bundle folder (no manifest.json)",
                         hint="sign the folder edgepack build wrote (--out), not its .zip")
    return folder


def sign(bundle: Path, key: Path, verify=None) -> Path:
    """Sign ``bundle``/manifest.json with the private ``key``; write manifest.json.sig and refresh BUNDLE.zip.
    ``verify`` (edgepack.bundle.read.verify; `edgepack.api.sign` passes it) checks the bundle first, so a
    damaged or edited bundle is never signed."""
    from edgepack.bundle.write import write_zip

    folder = _folder(bundle)
    tool = _ssh_keygen()
    key = Path(key).expanduser()
    if not key.is_file():
        raise InputError(f"signing key not found: {key}", hint="pass the private key, e.g. ~/.ssh/id_ed25519")
    if verify is not None:
        (folder / SIGNATURE).unlink(missing_ok=True)  # a stale signature goes before the check, not after
        verify(folder)
    with tempfile.TemporaryDirectory(prefix="edgepack-sign-") as tmp:
        copy = Path(tmp) / "manifest.json"
        shutil.copyfile(folder / "manifest.json", copy)
        res = _run([tool, "-Y", "sign", "-q", "-f", str(key), "-n", NAMESPACE, str(copy)])
        sig = Path(tmp) / "manifest.json.sig"
        if res.returncode != 0 or not sig.is_file():
            raise InputError(f"ssh-keygen could not sign with {key}: {_said(res)}",
                             hint="use an unencrypted key or an ssh-agent that holds it (ssh-add), and a key "
                                  "type OpenSSH signs with (ed25519, ecdsa, rsa)")
        try:
            _replace_file(sig, folder / SIGNATURE)
            zip_path = folder.with_name(folder.name + ".zip")
            if zip_path.is_file():
                partial = zip_path.with_name(f".{zip_path.name}.partial-{os.getpid()}")
                try:
                    write_zip(folder, partial, folder.name)
                    os.replace(partial, zip_path)
                finally:
                    partial.unlink(missing_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot write the signature into {folder}: {exc.strerror or exc}",
                              hint="check the folder is writable and the disk has space") from None
    return folder / SIGNATURE


def check(folder: Path, allowed_signers: Path, identity: str | None = None) -> str:
    """Verify manifest.json.sig against ``allowed_signers`` (OpenSSH's format). Returns the report line naming
    the signer; raises VerifyError (exit 5) for a missing, wrong or untrusted signature."""
    tool = _ssh_keygen()
    allowed = Path(allowed_signers).expanduser()
    if not allowed.is_file():
        raise InputError(f"allowed signers file not found: {allowed}",
                         hint="one line per trusted key: '<identity> <key type> <public key>', as for git")
    sig = folder / SIGNATURE
    if not sig.is_file():
        raise VerifyError(f"{folder} is not signed (no {SIGNATURE})",
                          hint="the builder signs it with: edgepack sign BUNDLE --key KEY")
    manifest = (folder / "manifest.json").read_bytes()
    if identity is None:
        found = _run([tool, "-Y", "find-principals", "-f", str(allowed), "-s", str(sig)])
        names = found.stdout.decode(errors="replace").split()
        if found.returncode != 0 or not names:
            raise VerifyError(f"{SIGNATURE} was not made by any key in {allowed}",
                              hint="the bundle was signed by someone you have not listed, or not by its builder")
        identity = names[0]
    res = _run([tool, "-Y", "verify", "-f", str(allowed), "-I", identity, "-n", NAMESPACE, "-s", str(sig)],
               stdin=manifest)
    if res.returncode != 0:
        raise VerifyError(f"{SIGNATURE} does not verify for {identity!r}: {_said(res)}",
                          hint="manifest.json changed after it was signed, or the signature is not this "
                               "signer's: do not deploy it")
    return f"ok  {SIGNATURE}  signed by {identity} (key in {allowed.name})"


def _said(res: subprocess.CompletedProcess) -> str:
    text = (res.stderr or res.stdout or b"").decode(errors="replace").strip().splitlines()
    return text[-1] if text else f"exit {res.returncode}"


def _replace_file(src: Path, dst: Path) -> None:
    partial = dst.with_name(f".{dst.name}.partial-{os.getpid()}")
    try:
        shutil.copyfile(src, partial)
        os.replace(partial, dst)
    finally:
        partial.unlink(missing_ok=True)
