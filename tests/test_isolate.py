"""edgepack.isolate: a native crash in a child becomes a StageError (exit 4) and leaves no temp folder behind."""

from __future__ import annotations

import operator
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from edgepack import isolate
from edgepack.errors import EXIT_STAGE, ConfigError, StageError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def tmpdir_only(tmp_path, monkeypatch):
    """TMPDIR (and tempfile's cached default) pointed at an empty folder we can list afterwards."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def raise_config_error(value: str) -> None:
    raise ConfigError(f"bad value {value!r}", hint="pass a good one")


def test_call_returns_the_result_and_reraises_edgepack_errors(tmpdir_only, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))  # the child imports this module by name
    assert isolate.call(operator.add, 2, 3, step="adding", key="add") == 5
    with pytest.raises(ConfigError) as caught:  # raised in the child, with its message and hint
        isolate.call(raise_config_error, "x", step="checking", key="check")
    assert caught.value.message == "bad value 'x'" and caught.value.hint == "pass a good one"
    with pytest.raises(ZeroDivisionError) as plain:  # other exceptions keep their type and the child's traceback
        isolate.call(operator.truediv, 1, 0, step="dividing", key="div")
    assert any("in the child process" in note for note in plain.value.__notes__)
    assert list(tmpdir_only.iterdir()) == []


def test_abort_in_the_child_is_a_stage_error_naming_the_step(tmpdir_only, monkeypatch):
    monkeypatch.setenv(isolate.TEST_ABORT_ENV, "add")
    with pytest.raises(StageError) as caught:
        isolate.call(operator.add, 2, 3, step="adding numbers", key="add", hint="try subtracting",
                     diagnose=lambda: "op ADD is to blame")
    err = caught.value
    assert err.exit_code == EXIT_STAGE and err.hint == "try subtracting"
    assert err.message.startswith("adding numbers crashed (SIGABRT)") and "op ADD is to blame" in err.message
    assert list(tmpdir_only.iterdir()) == []


def test_measure_child_abort_is_named(tmpdir_only, monkeypatch):
    from edgepack.device import measure

    monkeypatch.setenv(isolate.TEST_ABORT_ENV, "outputs")
    with pytest.raises(StageError, match=r"LiteRT running it crashed \(SIGABRT\)"):
        measure.outputs("tflite", tmpdir_only / "m.tflite", np.zeros((1, 4), np.int64), threads=1,
                        workdir=tmpdir_only.parent, what="LiteRT running it")
    assert list(tmpdir_only.iterdir()) == []


def test_crash_message_finds_the_sub_step_and_the_op_in_native_output():
    stderr = "\n".join([
        "W0000 00:00:1796171079.948190    6952 computation_placer.cc:177] computation placer already registered.",
        "E0000 00:00:1796171079.921748    6952 cuda_dnn.cc:8579] Unable to register cuDNN factory",
        f"{isolate.MARK}onnx2tf: model.onnx to TensorFlow",
        f"{isolate.MARK}LiteRT: prepare the INT8 model",
        "tensorflow/lite/kernels/conv.cc:352 something was not true.",
        "Node number 37 (CONV_2D) failed to prepare.",
    ])
    err = isolate.crash_error("TFLite conversion", -6, stderr, None)
    assert "crashed (SIGABRT) at step 'LiteRT: prepare the INT8 model'" in err.message
    assert "op CONV_2D" in err.message and "Node number 37" in err.message
    assert "cuDNN" not in err.message and "computation placer" not in err.message
    assert err.hint == isolate.DEFAULT_HINT
    assert "SIGSEGV" in isolate.crash_error("x", -11, "", "h").message


def test_cli_build_with_an_aborting_converter_exits_4_and_leaves_no_temp_files(tiny_data, tmp_path):
    """The forced abort of issue 14: a real CLI process, the converter child aborts where calibration starts."""
    pytest.importorskip("onnx2tf")
    folder = tmp_path / "tmp"
    folder.mkdir()
    env = {**os.environ, "TMPDIR": str(folder), isolate.TEST_ABORT_ENV: "TFLite converter: calibrate",
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "edgepack.cli", "build", "toy_models:tiny_cnn", "--target",
                           "android-arm64", "--calib", str(tiny_data["calib"]), "--val", str(tiny_data["val"]),
                           "--input-shape", "1,3,32,32", "--latency-runs", "5", "--out", str(tmp_path / "out")],
                          env=env, capture_output=True, text=True, timeout=600)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert proc.returncode == EXIT_STAGE, proc.stderr
    assert len(errors) == 1 and "TFLite conversion crashed (SIGABRT)" in errors[0]
    assert "TFLite converter: calibrate and quantize to INT8" in errors[0]
    assert any(line.startswith("Hint:") for line in proc.stderr.splitlines())
    assert sorted(p.name for p in folder.iterdir()) == []
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.zip").exists()


def test_ctrl_c_in_the_parent_kills_the_child_and_removes_its_folders(tmp_path):
    """SIGINT to the parent while the child works: the parent exits, the child is gone, TMPDIR is empty."""
    import signal
    import time

    folder = tmp_path / "tmp"
    folder.mkdir()
    script = ("import time, sys\nfrom edgepack import isolate\nprint('started', flush=True)\n"
              "try:\n    isolate.call(time.sleep, 120, step='sleeping', key='sleep')\n"
              "except KeyboardInterrupt:\n    sys.exit(130)\n")
    env = {**os.environ, "TMPDIR": str(folder), "PYTHONPATH": str(ROOT)}
    # a user's foreground command has the default SIGINT disposition; a shell's background job (a CI runner
    # started with &) would pass SIGINT ignored, and Python then installs no KeyboardInterrupt handler
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.stdout.readline().strip() == "started"
    deadline = time.monotonic() + 60
    while not list(folder.glob("edgepack-child-*/tmp")) and time.monotonic() < deadline:
        time.sleep(0.1)  # wait until the child runs
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert children, "the child should be running"
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 130
    time.sleep(0.5)
    assert all(not Path(f"/proc/{pid}").exists() for pid in children)
    assert list(folder.iterdir()) == []
