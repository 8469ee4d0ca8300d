"""`remote.bench` through a real OpenSSH server on 127.0.0.1 (started here, own keys and config); nothing mocked.

Needs the Debian package openssh-server (sshd) and openssh-client (ssh, scp, ssh-keygen).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgepack.bundle import read as bundles
from edgepack.bundle import update
from edgepack.device import remote
from edgepack.errors import InputError

SSHD = shutil.which("sshd") or next((p for p in ("/usr/sbin/sshd",) if Path(p).exists()), None)
needs_sshd = pytest.mark.skipif(SSHD is None or shutil.which("ssh") is None or shutil.which("scp") is None,
                                reason="OpenSSH server/client not installed: apt-get install openssh-server "
                                       "openssh-client (scripts/setup-env.sh does this)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """A throw-away sshd on 127.0.0.1:<high port> accepting one key for the current user."""
    d = tmp_path_factory.mktemp("sshd")
    _keygen(d / "host_key")
    _keygen(d / "client_key")
    shutil.copyfile(d / "client_key.pub", d / "authorized_keys")
    port = _free_port()
    config = d / "sshd_config"
    config.write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {d / 'host_key'}", f"PidFile {d / 'sshd.pid'}",
        f"AuthorizedKeysFile {d / 'authorized_keys'}", "PubkeyAuthentication yes", "PasswordAuthentication no",
        "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no", "PermitRootLogin prohibit-password",
        "Subsystem sftp internal-sftp", "LogLevel ERROR", ""]))
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", exist_ok=True)  # privilege separation directory Debian's sshd requires
    log = open(d / "sshd.log", "w")
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_for_port(port, proc, d / "sshd.log")
        user = os.environ.get("USER") or __import__("pwd").getpwuid(os.geteuid()).pw_name
        yield {"url": f"ssh://{user}@127.0.0.1:{port}", "identity": d / "client_key",
               "known_hosts": d / "known_hosts"}
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def _wait_for_port(port: int, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited: {log.read_text()[-500:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError("sshd did not start listening within 15 s")


@pytest.fixture(scope="module")
def bundle(tiny_data, tmp_path_factory):
    """A small x86-64 ONNX bundle of the toy CNN; non-latency budgets relaxed so only latency decides."""
    import edgepack

    out = tmp_path_factory.mktemp("bench") / "tiny"
    result = edgepack.build(model="toy_models:tiny_cnn", target="x86-64", calib=str(tiny_data["calib"]),
                            val=str(tiny_data["val"]), input_shape=(1, 3, 32, 32), out=str(out), latency_runs=5,
                            max_accuracy_drop=100.0, min_agreement=0.0, max_size_mb=100.0, max_latency_ms=1e5)
    assert result.passed, result.manifest["validation"]["budgets"]
    return out


def _copy(bundle: Path, tmp_path: Path) -> Path:
    dst = tmp_path / bundle.name
    shutil.copytree(bundle, dst)
    return dst


@needs_sshd
def test_bench_over_ssh_measures_on_the_device_and_the_verdict_follows(sshd, bundle, tmp_path):
    record = remote.bench(bundle, sshd["url"], runs=20, python=sys.executable, identity=sshd["identity"],
                          known_hosts=sshd["known_hosts"])
    assert record["kind"] == "measured-device"
    assert 0 < record["p50"] <= record["p90"]
    assert record["runs"] == 20 and record["format"] == "onnx" and record["runtime"] == "onnxruntime"
    assert "golden max abs diff" in record["golden"]
    assert sshd["known_hosts"].read_text().strip(), "the host key was stored in the given known_hosts file"

    over = _copy(bundle, tmp_path / "a")
    man = update.record_device_measurement(over, record, max_latency_ms=record["p50"] * 1.5)
    row = next(b for b in man["validation"]["budgets"] if b["name"] == "latency_p50_ms")
    assert (row["kind"], row["value"], row["passed"], man["passed"]) == ("measured-device", record["p50"], True, True)

    under = _copy(bundle, tmp_path / "b")
    (under / "manifest.json.sig").write_text("a signature of the manifest before the record")
    man = update.record_device_measurement(under, record, max_latency_ms=record["p50"] * 0.5)
    assert not (under / "manifest.json.sig").exists()  # it signed the old manifest: a stale one is dropped
    row = next(b for b in man["validation"]["budgets"] if b["name"] == "latency_p50_ms")
    assert (row["kind"], row["passed"], man["passed"]) == ("measured-device", False, False)
    assert man["models"][0]["validation"]["latency_ms"]["device"]["kind"] == "measured-device"
    assert man["validation"]["latency_ms"]["kind"] == "measured-host"  # the host numbers keep their label
    report = (under / "report.md").read_text()
    assert "Latency measured on the device" in report and "measured-device" in report
    # every file still matches the manifest (report.md re-hashed), and the golden output still checks
    assert bundles.verify(under)
    assert json.loads((under / "manifest.json").read_text())["passed"] is False


@needs_sshd
def test_unreachable_device_is_a_clear_error(bundle, tmp_path):
    with pytest.raises(remote.DeviceError, match="failed"):
        remote.bench(bundle, f"ssh://nobody@127.0.0.1:{_free_port()}", runs=3,
                     known_hosts=tmp_path / "known_hosts")


def test_device_address_is_validated():
    assert remote.parse_device("ssh://pi@raspberrypi:2222") == remote.Device("pi", "raspberrypi", 2222)
    assert remote.parse_device("ssh://pi@10.0.0.7").port == 22
    for bad in ("pi@host", "http://host", "ssh://pi@host:notaport", "ssh://pi@host/path"):
        with pytest.raises(InputError):
            remote.parse_device(bad)
    with pytest.raises(InputError, match="adb address") as err:  # a phone: said so, with where to look
        remote.parse_device("adb://emulator-5554")
    assert "docs/android.md" in err.value.hint


def test_timing_line_parsing():
    line = json.dumps({"p50_ms": 1.5, "p90_ms": 2.0, "runs": 10})
    assert remote.parse_timing("noise\n" + line + "\n")["p50_ms"] == 1.5
    with pytest.raises(Exception, match="no timing line"):
        remote.parse_timing("latency over 10 runs: p50 1.00 ms")


def test_benchmark_model_command_line_for_android():
    man = {"models": [{"format": "tflite", "file": "model.tflite"}], "runtime": {"threads": 4}}
    cmds = remote.benchmark_model_commands(man, runs=50)
    assert cmds[1] == ["adb", "push", "model.tflite", "/data/local/tmp/edgepack/model.tflite"]
    assert "--graph=/data/local/tmp/edgepack/model.tflite" in cmds[2] and "--num_threads=4" in cmds[2]
    out = "Inference timings in us: Init: 5003, First inference: 9107, Warmup (avg): 8511, Inference (avg): 8250.5"
    assert remote.parse_benchmark_model(out)["mean"] == pytest.approx(8.2505)
    with pytest.raises(InputError):
        remote.benchmark_model_commands({"models": [{"format": "onnx", "file": "m.onnx"}], "runtime": {"threads": 1}})


@needs_sshd
def test_bench_command_exit_code_follows_the_device_verdict(sshd, bundle, tmp_path):
    from click.testing import CliRunner

    from edgepack.cli import main

    base = ["bench", "--device", sshd["url"], "--runs", "10", "--python", sys.executable,
            "--identity", str(sshd["identity"]), "--known-hosts", str(sshd["known_hosts"])]
    ok = CliRunner().invoke(main, [*base[:1], str(_copy(bundle, tmp_path / "a")), *base[1:],
                                   "--max-latency-ms", "100000"])
    assert ok.exit_code == 0 and "measured-device" in ok.output, ok.output
    slow = CliRunner().invoke(main, [*base[:1], str(_copy(bundle, tmp_path / "b")), *base[1:],
                                     "--max-latency-ms", "0.000001"])
    assert slow.exit_code == 1 and "FAIL" in slow.output, slow.output
