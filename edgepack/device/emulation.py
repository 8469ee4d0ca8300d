"""Emulated devices: an arm64 Debian userland under qemu-user with the device's own runtime wheels.

A profile with ``emulate = true`` names its emulation (``qemu_cpu``, ``rootfs_release``, ``device_wheels``).
``prepare(profile)`` builds it once into ``~/.cache/edgepack/devices/<qemu_cpu>-<digest>/`` ($EDGEPACK_CACHE
overrides the root); the digest covers every emulation setting, the device /proc/cpuinfo (CPU model and core
count) and the plugin source, so a changed profile gets a new environment and an old one is never reused by
mistake. The profile's name is not part of it: a copy of a shipped profile (another budget, another format) uses
the shipped profile's prepared device. Downloads are kept apart in
``downloads/`` (the rootfs tarball from mmdebstrap, the aarch64 wheels from pip), so preparing again, or another
profile, works offline once they are there.

What a prepared device holds:

- ``rootfs/``: ``mmdebstrap --variant=extract --architectures=arm64`` of the release with Python and the C/C++
  runtime libraries (no package scripts run, no root tricks); the wheels ``pip install --target``-ed into
  ``rootfs/opt/edgepack/site`` (aarch64 manylinux tags, cp311), put on the guest's PYTHONPATH.
- ``rootfs/proc/cpuinfo``: the device's /proc/cpuinfo. qemu-user shows the host's /proc/cpuinfo, but with
  ``-L rootfs`` it opens ``rootfs/<path>`` for any absolute path that exists there, so this file is what the
  guest's runtimes (pytorch/cpuinfo inside ONNX Runtime and XNNPACK) read to name the core. Side effect: the
  guest's ``os.listdir('/proc')`` lists only ``cpuinfo``; ``/proc/self/...`` still reaches the host's.
  ISA features (dot-product, FP16, SVE...) come from the auxiliary vector, which follows ``-cpu``.
- ``libinsn_count.so``: the counting TCG plugin, built with gcc from insn_count.c (edgepack.device.insn_count).
- ``env.json``: the settings and digest, written last (a folder without it is not a prepared device).

The base (rootfs + wheels) is shared by the profiles that use the same release and wheels: each device folder is
a hard-linked copy of it plus its own cpuinfo, so three ARM profiles cost one copy on disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from edgepack.errors import InputError, StageError
from edgepack.targets import TargetProfile
from edgepack.util import ProgressFn, no_progress

ENV_VERSION = 1
PACKAGES = ("python3", "libstdc++6", "libgcc-s1", "zlib1g")
RELEASE_PYTHON = {"bookworm": "3.11"}
WHEEL_PLATFORMS = ("manylinux2014_aarch64", "manylinux_2_17_aarch64", "manylinux_2_27_aarch64",
                   "manylinux_2_28_aarch64")
SITE = "opt/edgepack/site"
GUEST_PYTHON = "/usr/bin/python3"
PLUGIN_SOURCE = Path(__file__).resolve().parent / "insn_count.c"
SWITCH = "EDGEPACK_EMULATE"   # environment variable: 0 turns the device stage's default off

# /proc/cpuinfo fields per qemu CPU model (Arm TRMs: MIDR implementer/part; features as Linux prints them).
CPUINFO = {
    "cortex-a53": ("0x41", "0xd03", "0x0", "4", "fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid"),
    "cortex-a57": ("0x41", "0xd07", "0x1", "1", "fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid"),
    "cortex-a72": ("0x41", "0xd08", "0x0", "3", "fp asimd evtstrm crc32 cpuid"),
    "cortex-a76": ("0x41", "0xd0b", "0x4", "1", "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp "
                                                "cpuid asimdrdm lrcpc dcpop asimddp ssbs"),
    "neoverse-n1": ("0x41", "0xd0c", "0x3", "1", "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp "
                                                 "cpuid asimdrdm lrcpc dcpop asimddp ssbs"),
    "a64fx": ("0x46", "0x001", "0x1", "0", "fp asimd evtstrm sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm "
                                          "fcma dcpop sve"),
}


class NotPrepared(InputError):
    """The profile's emulated device has not been prepared on this machine."""


@dataclass(frozen=True)
class Emulation:
    """A profile's emulation settings: everything that decides what the emulated device is."""

    name: str
    qemu_cpu: str
    release: str
    wheels: tuple[str, ...]
    cores: int

    def cpuinfo(self) -> str:
        """The device's /proc/cpuinfo text (one block per core; empty for qemu's 'max', which is no device)."""
        if self.qemu_cpu not in CPUINFO:
            return ""
        impl, part, variant, rev, feats = CPUINFO[self.qemu_cpu]
        block = ("processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: " + feats + "\nCPU implementer\t: " + impl
                 + "\nCPU architecture: 8\nCPU variant\t: " + variant + "\nCPU part\t: " + part
                 + "\nCPU revision\t: " + rev + "\n\n")
        return "".join(block.format(i=i) for i in range(self.cores))

    def base_digest(self) -> str:
        """Identifies the shared part: release, Debian packages, wheels."""
        return _digest({"release": self.release, "packages": PACKAGES, "wheels": sorted(self.wheels),
                        "version": ENV_VERSION})

    def digest(self) -> str:
        settings = {k: v for k, v in asdict(self).items() if k != "name"}
        return _digest({**settings, "base": self.base_digest(), "cpuinfo": self.cpuinfo(),
                        "plugin": hashlib.sha256(PLUGIN_SOURCE.read_bytes()).hexdigest()})


def _digest(data: dict) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def settings(profile: TargetProfile, *, qemu_cpu: str | None = None) -> Emulation:
    """The emulation a profile asks for (``qemu_cpu`` overrides the profile's, e.g. 'max' for a comparison)."""
    cpu = qemu_cpu or profile.qemu_cpu
    if not cpu:
        raise InputError(f"target '{profile.name}' names no emulated CPU (qemu_cpu)",
                         hint="emulation is for ARM profiles: set qemu_cpu (e.g. \"cortex-a72\") in the profile")
    return Emulation(profile.name, cpu, profile.rootfs_release, tuple(profile.device_wheels), profile.cores)


def cache_root() -> Path:
    """$EDGEPACK_CACHE or ~/.cache/edgepack (the root edgepack.device.references uses)."""
    from edgepack.device.references import cache_dir

    return cache_dir()


def default_on() -> bool:
    """Whether builds that leave ``emulate`` unset run the device stage: yes, unless $EDGEPACK_EMULATE is 0 (the
    CI and test-suite knob: ARM builds then judge on the host without emulating anything)."""
    return os.environ.get(SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


def stage_runs(emulate: bool | None, profile_emulate: bool) -> bool:
    """Whether a build's device stage runs: as --emulate / --no-emulate (``emulate``) say, else the profile's
    ``emulate`` unless $EDGEPACK_EMULATE=0."""
    if emulate is not None:
        return emulate
    return profile_emulate and default_on()


def device_dir(em: Emulation) -> Path:
    return cache_root() / "devices" / f"{em.qemu_cpu}-{em.digest()}"


@dataclass(frozen=True)
class Device:
    """A prepared emulated device on this machine."""

    emulation: Emulation
    root: Path

    @property
    def rootfs(self) -> Path:
        return self.root / "rootfs"

    @property
    def plugin(self) -> Path:
        return self.root / "libinsn_count.so"

    def command(self, argv: list[str], *, counts: Path | None = None) -> list[str]:
        """qemu-aarch64 running ``argv`` (guest paths; argv[0] a guest program) on this device's CPU model.

        With ``counts``, the counting plugin writes its JSON there (marks at each write to fd 1)."""
        cmd = ["qemu-aarch64", "-cpu", self.emulation.qemu_cpu, "-L", str(self.rootfs)]
        if counts is not None:
            if "," in str(counts) or "," in str(self.plugin):
                raise InputError(f"paths given to the qemu plugin cannot contain commas: {counts}")
            cmd += ["-plugin", f"{self.plugin},out={counts},fd=1"]
        return cmd + [str(self.rootfs) + argv[0] if argv[0].startswith("/") else argv[0], *argv[1:]]

    def environ(self) -> dict[str, str]:
        """The guest's environment: only what it needs, one thread for every library (exact counts)."""
        return {"PATH": "/usr/bin:/bin", "PYTHONPATH": "/" + SITE, "PYTHONDONTWRITEBYTECODE": "1",
                "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "LANG": "C.UTF-8", "HOME": "/tmp"}


def find(profile: TargetProfile, *, qemu_cpu: str | None = None) -> Device:
    """The prepared device for ``profile``, or NotPrepared saying how to prepare it."""
    em = settings(profile, qemu_cpu=qemu_cpu)
    root = device_dir(em)
    cmd = f"edgepack device prepare {profile.name}" + (f" --qemu-cpu {qemu_cpu}" if qemu_cpu else "")
    hint = (f"prepare it once with `{cmd}` (needs qemu-user, mmdebstrap and gcc, and the network the first time; "
            "scripts/setup-env.sh does both), or pass --no-emulate")
    if not (root / "env.json").is_file():
        raise NotPrepared(f"the emulated {profile.name} ({em.qemu_cpu}) is not prepared on this machine ({root})",
                          hint=hint)
    if shutil.which("qemu-aarch64") is None:
        raise NotPrepared(f"the emulated {profile.name} is prepared but qemu-aarch64 is not installed", hint=hint)
    return Device(em, root)


# ---------------------------------------------------------------- prepare

def prepare(profile: TargetProfile, *, qemu_cpu: str | None = None, force: bool = False,
            progress: ProgressFn = no_progress) -> Device:
    """Build the profile's emulated device into the cache (no-op when it is there, unless ``force``)."""
    em = settings(profile, qemu_cpu=qemu_cpu)
    root = device_dir(em)
    if (root / "env.json").is_file() and not force:
        return Device(em, root)
    _check_tools()
    base = _base(em, progress)
    partial = root.with_name(root.name + f".partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        progress(f"preparing the emulated {em.name} ({em.qemu_cpu})", 0, 1)
        shutil.copytree(base, partial / "rootfs", symlinks=True, copy_function=os.link)
        if em.cpuinfo():
            (partial / "rootfs" / "proc").mkdir(exist_ok=True)
            (partial / "rootfs" / "proc" / "cpuinfo").write_text(em.cpuinfo())
        _build_plugin(partial / "libinsn_count.so")
        device = Device(em, partial)
        info = _smoke_test(device)
        (partial / "env.json").write_text(json.dumps({"settings": asdict(em), "digest": em.digest(),
                                                      "guest": info}, indent=1, sort_keys=True) + "\n")
        if root.exists():
            shutil.rmtree(root)
        os.replace(partial, root)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return Device(em, root)


def _check_tools() -> None:
    missing = [t for t in ("qemu-aarch64", "mmdebstrap", "gcc") if shutil.which(t) is None]
    if missing:
        raise InputError(f"missing tools for the emulated device: {', '.join(missing)}",
                         hint="apt-get install qemu-user mmdebstrap gcc (scripts/setup-env.sh does it)")


def _run(cmd: list[str], what: str, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, **kw)
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])[:400]
        raise StageError(f"{what} failed (exit {proc.returncode}): {tail}",
                         hint="the first prepare needs the network (Debian mirror and PyPI); later ones use "
                              f"the downloads kept in {cache_root() / 'downloads'}")
    return proc


def _base(em: Emulation, progress: ProgressFn) -> Path:
    """The shared rootfs + wheels for ``em``'s release and wheels (built once, kept)."""
    base = cache_root() / "devices" / f"base-{em.release}-{em.base_digest()}"
    if (base / ".complete").is_file():
        return base
    partial = base.with_name(base.name + f".partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        tar = _rootfs_tar(em.release, progress)
        partial.mkdir(parents=True)
        _run(["tar", "-xf", str(tar), "-C", str(partial)], "unpacking the arm64 rootfs")
        _install_wheels(em, partial / SITE, progress)
        (partial / ".complete").write_text("")
        if base.exists():
            shutil.rmtree(base)
        os.replace(partial, base)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return base


def _rootfs_tar(release: str, progress: ProgressFn) -> Path:
    """The arm64 userland as a tarball in downloads/ (mmdebstrap, ~85 MB, once per release and package set)."""
    tar = cache_root() / "downloads" / f"rootfs-{release}-arm64-{_digest({'p': PACKAGES})}.tar"
    if tar.is_file():
        return tar
    progress(f"downloading an arm64 Debian {release} userland (mmdebstrap)", 0, 1)
    tar.parent.mkdir(parents=True, exist_ok=True)
    tmp = tar.with_name(tar.name + f".partial-{os.getpid()}.tar")
    try:
        _run(["mmdebstrap", "--quiet", "--variant=extract", "--architectures=arm64",
              "--include=" + ",".join(PACKAGES), release, str(tmp)], "mmdebstrap")
        os.replace(tmp, tar)
    finally:
        tmp.unlink(missing_ok=True)
    return tar


def _pip_platform_args(release: str) -> list[str]:
    py = RELEASE_PYTHON[release]
    args = ["--only-binary=:all:", "--python-version", py, "--implementation", "cp", "--abi",
            "cp" + py.replace(".", "")]
    for plat in WHEEL_PLATFORMS:
        args += ["--platform", plat]
    return args


def _install_wheels(em: Emulation, site: Path, progress: ProgressFn) -> None:
    """pip install --target of the device wheels (no dependencies: run.py needs only these), from downloads/
    when they are there, else downloaded into it first."""
    wheels = cache_root() / "downloads" / f"wheels-aarch64-cp{RELEASE_PYTHON[em.release].replace('.', '')}"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    plat = _pip_platform_args(em.release)
    install = [*pip, "install", "--no-deps", "--no-index", "--find-links", str(wheels), "--target", str(site),
               *plat, *em.wheels]
    if wheels.is_dir() and subprocess.run(install, capture_output=True, check=False).returncode == 0:
        return
    progress(f"downloading the device's aarch64 wheels ({', '.join(em.wheels)})", 0, 1)
    wheels.mkdir(parents=True, exist_ok=True)
    _run([*pip, "download", "--no-deps", "-d", str(wheels), *plat, *em.wheels], "pip download of the device wheels")
    shutil.rmtree(site, ignore_errors=True)
    _run(install, "pip install --target of the device wheels")


def _build_plugin(out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    _run(["gcc", "-O2", "-Wall", "-shared", "-fPIC", "-o", str(out), str(PLUGIN_SOURCE)],
         "building the instruction-counting plugin")


def _smoke_test(device: Device) -> dict:
    """Import the runtimes inside the emulated device; return what the guest reports."""
    code = ("import json, platform, numpy, onnxruntime\n"
            "from ai_edge_litert.interpreter import Interpreter\n"
            "print(json.dumps({'machine': platform.machine(), 'python': platform.python_version(),"
            " 'numpy': numpy.__version__, 'onnxruntime': onnxruntime.__version__}))")
    proc = _run(device.command([GUEST_PYTHON, "-c", code]), "starting Python in the emulated device",
                env=device.environ())
    return json.loads(proc.stdout.strip().splitlines()[-1])
