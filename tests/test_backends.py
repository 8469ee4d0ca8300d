"""Every backend in edgepack.backends.BACKENDS honours the contract (edgepack.backends.base), and a missing optional
dependency is a usage error with the pip command, not an internal error."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import numpy as np
import pytest

from edgepack import backends
from edgepack.errors import InputError


@pytest.mark.parametrize("fmt", sorted(backends.BACKENDS))
def test_backend_provides_the_contract(fmt):
    module = backends.get(fmt)
    for name in ("Runner", "io_details", "float_ops"):
        assert callable(getattr(module, name)), f"{fmt} backend lacks {name}"
    for method in ("run", "run_samples"):
        assert callable(getattr(module.Runner, method))


def test_onnx_backend_runs_and_describes(tmp_path):
    import toy_models

    onnx_backend = backends.get("onnx")
    path = tmp_path / "m.onnx"
    onnx_backend.export(toy_models.tiny_cnn().eval(), (1, 3, 32, 32), path, opset=17)
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    out = onnx_backend.Runner(path, threads=1).run_samples(x)
    assert out.shape[0] == 3 and out.ndim == 2
    io = onnx_backend.io_details(path)
    assert io["inputs"][0]["name"] == "input" and io["outputs"]
    assert all(op.split(":")[0] in ("Conv", "Gemm", "MatMul") for op in onnx_backend.float_ops(path))


def test_missing_optional_dependency_is_a_usage_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorflow" else real(name, *a))
    with pytest.raises(InputError) as exc:
        backends.get("tflite")
    assert exc.value.exit_code == 2 and "pip install 'edgepack[tflite]'" in exc.value.hint


def test_cli_says_which_extra_to_install_when_tensorflow_is_missing(tmp_path, tiny_data):
    """A build for a TFLite target in an environment without tensorflow (hidden by a stub finder): exit 2 + hint."""
    stub = tmp_path / "sitecustomize.py"
    stub.write_text("import importlib.abc, sys\n"
                    "class _Hide(importlib.abc.MetaPathFinder):\n"
                    "    def find_spec(self, name, path=None, target=None):\n"
                    "        if name.split('.')[0] == 'tensorflow':\n"
                    "            raise ModuleNotFoundError(name)\n"
                    "sys.meta_path.insert(0, _Hide())\n")
    env_path = f"{tmp_path}:{':'.join(sys.path)}"
    res = subprocess.run([sys.executable, "-m", "edgepack.cli", "build", "toy_models:tiny_cnn", "--target",
                          "android-arm64", "--input-shape", "1,3,32,32", "--calib", str(tiny_data["calib"]),
                          "--out", str(tmp_path / "b")], capture_output=True, text=True, timeout=600,
                         env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"})
    assert res.returncode == 2, res.stderr[-2000:]
    assert "pip install 'edgepack[tflite]'" in res.stderr and "Traceback" not in res.stderr
