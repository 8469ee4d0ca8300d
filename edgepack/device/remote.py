"""Measure a bundle on the real device over SSH.

`bench()` copies the bundle with the OpenSSH client (scp), checks the golden output there (`run.py --golden`),
times the model on the golden input (`run.py --time-golden N`, one JSON line) and returns a record labelled
kind "measured-device". edgepack.bundle.update.record_device_measurement() writes it into the bundle.
`benchmark_model_commands()` gives the adb + TFLite `benchmark_model` command lines for Android phones.

Nothing is run through a shell on this side; the remote side gets one quoted command line per step.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

from edgepack.bundle.update import KIND
from edgepack.errors import EdgepackError, InputError, StageError

SSH_TIMEOUT_S = 20          # connection set-up, seconds
STEP_TIMEOUT_S = 1800       # one remote step (copy, golden check, timing), seconds


class DeviceError(EdgepackError):
    """The device could not be reached or the runner failed there."""

    exit_code = 4


@dataclass(frozen=True)
class Device:
    """ssh://user@host[:port]"""

    user: str | None
    host: str
    port: int

    @property
    def login(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    def __str__(self) -> str:
        return f"ssh://{self.login}:{self.port}"


@dataclass(frozen=True)
class SshOptions:
    """How to connect: a known_hosts file (new host keys are accepted and stored there) and an identity."""

    known_hosts: Path | None = None
    identity: Path | None = None


def parse_device(url: str) -> Device:
    """Parse ``ssh://user@host[:port]`` (port 22 by default) with the strict grammar of edgepack.device.sshurl:
    nothing in the address can be read by ssh as an option."""
    from edgepack.device import sshurl

    return Device(*sshurl.parse(url))


def ssh_args(dev: Device, opts: SshOptions, *, scp: bool = False) -> list[str]:
    """OpenSSH client options: never prompt, accept a new host key once, then insist on it."""
    args = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=accept-new", "-o", f"ConnectTimeout={SSH_TIMEOUT_S}",
            "-o", "LogLevel=ERROR", ("-P" if scp else "-p"), str(dev.port)]
    if opts.known_hosts:
        args += ["-o", f"UserKnownHostsFile={opts.known_hosts}"]
    if opts.identity:
        args += ["-i", str(opts.identity), "-o", "IdentitiesOnly=yes"]
    return args


def _run(cmd: list[str], what: str) -> str:
    """Run an OpenSSH client command; a failure becomes DeviceError with the remote's last lines."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=STEP_TIMEOUT_S, check=False)
    except FileNotFoundError:
        raise DeviceError(f"{cmd[0]} not found", hint="install the OpenSSH client (Debian: openssh-client)") from None
    except subprocess.TimeoutExpired:
        raise DeviceError(f"{what}: no answer within {STEP_TIMEOUT_S} s") from None
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])[:400]
        raise DeviceError(f"{what} failed (exit {proc.returncode}): {tail}",
                          hint="check the address, that key login works (ssh -o BatchMode=yes ...), and that the "
                               "device has python3 with numpy and the model's runtime installed")
    return proc.stdout


def _remote(dev: Device, opts: SshOptions, command: str, what: str) -> str:
    return _run(["ssh", *ssh_args(dev, opts), "--", dev.login, command], what)


def bench(bundle_dir: Path, device: str, runs: int = 100, python: str = "python3", identity: Path | None = None,
          known_hosts: Path | None = None) -> dict:
    """Copy the bundle to ``device`` (ssh://user@host[:port]), check its golden output, time ``runs`` runs.

    Returns a record of kind "measured-device": p50/p90/mean in ms, runs, threads, format, runtime and
    version, the device address and machine, and the golden check line. The remote copy is removed.
    """
    bundle_dir = Path(bundle_dir)
    if not (bundle_dir / "manifest.json").is_file() or not (bundle_dir / "run.py").is_file():
        raise InputError(f"{bundle_dir} is not a bundle folder (no manifest.json/run.py)",
                         hint="pass the bundle folder written by edgepack build (unzip a .zip first)")
    if runs < 3:
        raise InputError(f"runs = {runs} is too few for a p50/p90", hint="use at least 3 runs (100 is typical)")
    dev, opts = parse_device(device), SshOptions(known_hosts, identity)
    from edgepack.bundle.read import read_manifest

    read_manifest(bundle_dir)  # an edited or foreign manifest stops here (exit 5), before anything is copied
    remote_dir = _remote(dev, opts, "mktemp -d /tmp/edgepack-bench.XXXXXX", "creating a folder on the device").strip()
    try:
        host = f"[{dev.host}]" if ":" in dev.host else dev.host
        login = f"{dev.user}@{host}" if dev.user else host
        _run(["scp", "-q", "-r", *ssh_args(dev, opts, scp=True), "--", str(bundle_dir.absolute()),
              f"{login}:{remote_dir}/"], "copying the bundle")
        where = shlex.quote(f"{remote_dir}/{bundle_dir.name}")
        py = shlex.quote(python)
        golden = _remote(dev, opts, f"cd {where} && {py} run.py --golden", "golden check on the device").strip()
        out = _remote(dev, opts, f"cd {where} && {py} run.py --time-golden {int(runs)}", "timing on the device")
    finally:
        _remote(dev, opts, f"rm -rf {shlex.quote(remote_dir)}", "cleaning up on the device")
    return _record(parse_timing(out), dev, golden)


def parse_timing(text: str) -> dict:
    """The JSON line printed by ``run.py --time-golden N``."""
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            try:
                data = json.loads(line)
            except json.JSONDecodeError:
                break
            if {"p50_ms", "p90_ms", "runs"} <= set(data):
                return data
    raise StageError(f"the device runner printed no timing line: {text.strip()[-300:]!r}",
                     hint="the bundle's run.py may predate --time-golden; rebuild the bundle with this edgepack")


def _record(t: dict, dev: Device, golden: str) -> dict:
    return {"kind": KIND, "p50": t["p50_ms"], "p90": t["p90_ms"], "mean": t.get("mean_ms"), "runs": t["runs"],
            "threads": t.get("threads"), "format": t.get("format"), "file": t.get("file"),
            "runtime": t.get("runtime"), "runtime_version": t.get("runtime_version"),
            "device": str(dev), "machine": t.get("machine"), "python": t.get("python"), "golden": golden,
            "measured_at": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()}


# ---------------------------------------------------------------- Android: adb + benchmark_model

def benchmark_model_commands(manifest: dict, *, runs: int = 100, threads: int | None = None,
                             device_dir: str = "/data/local/tmp/edgepack") -> list[list[str]]:
    """adb commands that push the bundle's .tflite and time it with TFLite's ``benchmark_model`` (XNNPACK, CPU).

    ``benchmark_model`` is the prebuilt android_aarch64 binary of the TensorFlow Lite benchmark tool, pushed
    once to /data/local/tmp (see docs/android.md). It reports the mean ("Inference (avg)") in microseconds.
    """
    entry = next((m for m in manifest["models"] if m["format"] == "tflite"), None)
    if entry is None:
        raise InputError("the bundle has no .tflite model", hint="build for a LiteRT target, e.g. android-arm64")
    threads = threads or manifest["runtime"]["threads"]
    remote = f"{device_dir}/{entry['file']}"
    return [["adb", "shell", "mkdir", "-p", device_dir],
            ["adb", "push", entry["file"], remote],
            ["adb", "shell", "/data/local/tmp/benchmark_model", f"--graph={remote}", f"--num_threads={threads}",
             "--use_xnnpack=true", f"--num_runs={runs}", "--warmup_runs=5", "--enable_op_profiling=false"]]


def parse_benchmark_model(text: str) -> dict:
    """Mean latency (ms) from benchmark_model's "Inference timings in us: ... Inference (avg): N" line."""
    m = re.search(r"Inference \(avg\):\s*([0-9.eE+]+)", text)
    if not m:
        raise StageError("no 'Inference (avg)' line in the benchmark_model output",
                         hint="pass the complete output of benchmark_model")
    return {"kind": KIND, "mean": round(float(m.group(1)) / 1000.0, 4), "statistic": "mean",
            "tool": "benchmark_model"}
