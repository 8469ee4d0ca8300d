"""Property tests with hostile inputs (issue 13): whatever a bundle, a manifest or a small ONNX graph holds,
`inspect`, `verify` and the load-and-validate part of `build` end in an edgepack error (or succeed), never
another exception. 2,000 examples each, about a minute for the file.

The build part stops where a build would start to spend minutes: everything before quantization runs (model
loading and its checks, input shape, outputs, data loading against the model, the FP32 finite-output check);
quantization itself is covered by the end-to-end tests.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgepack.cli import main
from edgepack.errors import EdgepackError
from edgepack.util import manifest_digest

EXAMPLES = int(os.environ.get("EDGEPACK_HYPOTHESIS_EXAMPLES", "2000"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))


# ------------------------------------------------------------------ random manifests and bundle files


class _Quiet(dict):
    """A fixture value hypothesis prints as a name, not as 150 kB of bundle bytes."""

    def __repr__(self) -> str:
        return "<the tiny bundle>"


@pytest.fixture(scope="module")
def pristine(tiny_data, tmp_path_factory) -> dict:
    """A real tiny bundle, and its files' bytes to restore before each example."""
    out = tmp_path_factory.mktemp("hostile-bundle") / "tiny"
    result = CliRunner().invoke(main, ["build", "toy_models:tiny_cnn", "--input-shape", "1,3,32,32", "--calib",
                                       str(tiny_data["calib"]), "--out", str(out), "--latency-runs", "3", "--target",
                                       "x86-64", "--quiet", "--max-search-time", "0"])
    assert result.exit_code in (0, 1), result.output
    work = out.parent / "work"
    text = (out / "manifest.json").read_text()
    return _Quiet(dir=work, files={p.name: p.read_bytes() for p in out.iterdir()}, text=text,
                  paths=_paths(json.loads(text)))


BIG = "<a 5,000-digit integer>"  # put into the JSON text as digits (hypothesis cannot repr such an int)
hostile_text = st.sampled_from(["", "../outside/model.onnx", "/etc/passwd", "model.onnx", "golden.npz", "onnx",
                                "tflite", "coreml", "text", "..", ".", "a/b", "x\x00y", "\\evil", "manifest.json",
                                "report.md", "-q", "9" * 40]) | st.text(max_size=12)
scalars = (st.none() | st.booleans() | st.integers(-2, 3) | st.sampled_from([10**30, -(10**30), 2**63, BIG])
           | st.floats(allow_nan=True, allow_infinity=True) | hostile_text)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(hostile_text, inner,
                                                                                           max_size=3), max_leaves=6)


def _paths(value, prefix=(), depth=0) -> list[tuple]:
    """Every key path of a JSON value, to depth 5."""
    found = [prefix] if prefix else []
    if depth >= 5:
        return found
    if isinstance(value, dict):
        for k, v in value.items():
            found += _paths(v, (*prefix, k), depth + 1)
    elif isinstance(value, list):
        for i, v in enumerate(value[:3]):
            found += _paths(v, (*prefix, i), depth + 1)
    return found


def _apply(man, path: tuple, new, delete: bool) -> None:
    target = man
    for key in path[:-1]:
        target = target[key]
    if delete and isinstance(target, dict):
        target.pop(path[-1], None)
    else:
        target[path[-1]] = new


def _manifest_text(man: dict, redigest: bool) -> str:
    if redigest:
        try:
            man["manifest_sha256"] = manifest_digest(man)
        except (ValueError, TypeError, RecursionError):
            pass
    try:
        return json.dumps(man).replace(json.dumps(BIG), "9" * 5000)  # no indent: the C encoder, 10x faster
    except (ValueError, TypeError, RecursionError):
        return "{}"


file_edits = st.sampled_from(["none", "none", "none", "golden-random", "golden-arrays", "model-bytes", "link",
                              "subfolder", "manifest-truncate", "manifest-bytes"])


def _edit_files(folder: Path, edit: str, data: st.DataObject) -> None:
    if edit == "golden-random":
        (folder / "golden.npz").write_bytes(data.draw(st.binary(max_size=64)))
    elif edit == "golden-arrays":
        shape = data.draw(st.lists(st.integers(0, 4), max_size=4))
        dtype = data.draw(st.sampled_from(["float32", "int64", "uint8", "float16", "U3", "bool", "complex64"]))
        keys = data.draw(st.lists(st.sampled_from(["input", "onnx", "onnx.1", "tflite", "x"]), max_size=3))
        np.savez(folder / "golden.npz", **{k: np.zeros(shape, dtype) for k in keys})
    elif edit == "model-bytes":
        raw = bytearray((folder / "model.onnx").read_bytes())
        raw[data.draw(st.integers(0, len(raw) - 1))] ^= 0xFF
        (folder / "model.onnx").write_bytes(bytes(raw))
    elif edit == "link":
        name = data.draw(st.sampled_from(["model.onnx", "golden.npz", "manifest.json"]))
        (folder / name).unlink()
        (folder / name).symlink_to("/etc/hostname" if Path("/etc/hostname").exists() else "/dev/null")
    elif edit == "subfolder":
        (folder / "sub").mkdir()
    elif edit == "manifest-truncate":
        text = (folder / "manifest.json").read_bytes()
        (folder / "manifest.json").write_bytes(text[:data.draw(st.integers(0, len(text)))])
    elif edit == "manifest-bytes":
        (folder / "manifest.json").write_bytes(data.draw(st.binary(max_size=200)))


def _reset(pristine: dict) -> Path:
    """The bundle as built: rewrite only what an example may have changed (a fresh copy each time is slow)."""
    folder = pristine["dir"]
    if not folder.is_dir():
        folder.mkdir()
        pristine["dirty"] = set(pristine["files"])
    for extra in (folder / "sub", folder.with_suffix(".zip")):
        shutil.rmtree(extra, ignore_errors=True) if extra.is_dir() else extra.unlink(missing_ok=True)
    for name in pristine.get("dirty", ()):
        (folder / name).unlink(missing_ok=True)
        (folder / name).write_bytes(pristine["files"][name])
    pristine["dirty"] = {"manifest.json", "golden.npz", "model.onnx"}
    return folder


def _no_crash(args: list[str]) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code in (0, 1, 2, 3, 5), (args, result.output, repr(result.exception))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "internal error" not in result.output and "Traceback" not in result.output, result.output


@SETTINGS
@given(data=st.data())
def test_inspect_and_verify_never_crash_on_a_hostile_bundle(pristine, data):
    folder = _reset(pristine)
    man = json.loads(pristine["text"])
    paths = pristine["paths"]
    for _ in range(data.draw(st.integers(0, 3))):
        path = data.draw(st.sampled_from(paths))
        try:
            _apply(man, path, data.draw(values), data.draw(st.booleans()))
        except (KeyError, IndexError, TypeError):
            continue  # the path no longer exists after an earlier edit
    (folder / "manifest.json").write_text(_manifest_text(man, data.draw(st.booleans())))
    _edit_files(folder, data.draw(file_edits), data)
    target = str(folder)
    if data.draw(st.integers(0, 9)) == 0:  # now and then the .zip form, with a hostile extra entry
        target = str(folder.with_suffix(".zip"))
        with zipfile.ZipFile(target, "w") as zf:
            for f in sorted(folder.iterdir()):
                if f.is_file() and not f.is_symlink():
                    zf.write(f, f"tiny/{f.name}")
            zf.writestr(data.draw(st.sampled_from(["tiny/extra", "../evil", "/abs", "other/x", "tiny/a/b"])), "x")
    _no_crash(["inspect", target])
    _no_crash(["verify", target])


# ------------------------------------------------------------------ random small ONNX graphs, loaded and checked


UNARY = ["Relu", "Sigmoid", "Tanh", "Neg", "Abs", "Exp", "Log", "Sqrt", "Identity", "Softmax", "Flatten",
         "GlobalAveragePool", "Floor", "Reciprocal", "Erf"]
BINARY_CONST = ["Add", "Mul", "Div", "Sub", "Pow", "MatMul"]


@st.composite
def onnx_graphs(draw):
    """A small graph: a chain of ops on one input, with hostile stamps, types, shapes and outputs now and then."""
    from onnx import TensorProto, helper, numpy_helper

    rank = draw(st.sampled_from([4, 4, 4, 2, 3, 1, 0, 5]))
    shape = [draw(st.sampled_from([1, 1, 2, 3, 8, 0, -1, "n"])) for _ in range(rank)]
    if rank == 4 and draw(st.booleans()):
        shape = [1, draw(st.sampled_from([1, 3])), draw(st.sampled_from([4, 8])), draw(st.sampled_from([4, 8]))]
    elem = draw(st.sampled_from([TensorProto.FLOAT] * 6 + [TensorProto.INT64, TensorProto.FLOAT16,
                                                           TensorProto.DOUBLE, TensorProto.UINT8]))
    nodes, inits, current = [], [], "x"
    for i in range(draw(st.integers(0, 5))):
        op, out = draw(st.sampled_from(UNARY + BINARY_CONST + ["Conv", "Reshape", "Transpose"])), f"t{i}"
        if op in BINARY_CONST:
            const = np.asarray(draw(st.sampled_from([0.0, 1.0, -1.0, 0.5, 1e30, float("nan")])), np.float32)
            if op == "MatMul":
                const = np.ones((draw(st.sampled_from([1, 3, 8])), 4), np.float32)
            inits.append(numpy_helper.from_array(const, f"c{i}"))
            nodes.append(helper.make_node(op, [current, f"c{i}"], [out]))
        elif op == "Conv":
            kernel = np.ones((2, draw(st.sampled_from([1, 3])), 3, 3), np.float32)
            inits.append(numpy_helper.from_array(kernel, f"w{i}"))
            nodes.append(helper.make_node("Conv", [current, f"w{i}"], [out], pads=[1, 1, 1, 1]))
        elif op == "Reshape":
            inits.append(numpy_helper.from_array(np.asarray(draw(st.sampled_from([[1, -1], [-1], [0, 0]])), np.int64),
                                                 f"s{i}"))
            nodes.append(helper.make_node("Reshape", [current, f"s{i}"], [out]))
        elif op == "Transpose":
            nodes.append(helper.make_node("Transpose", [current], [out]))
        else:
            nodes.append(helper.make_node(op, [current], [out]))
        current = out
    if draw(st.integers(0, 9)) == 0:
        nodes.append(helper.make_node("Foo", [current], ["custom"], domain="my.ops"))
        current = "custom"
    out_names = draw(st.sampled_from([[current], [current], [current], [], [current, "x"], ["missing"]]))
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in out_names]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", elem, shape)], outputs, inits)
    opsets = [helper.make_opsetid("", draw(st.sampled_from([17, 17, 17, 13, 21, 7, 24, 99])))]
    if any(n.domain == "my.ops" for n in nodes):
        opsets.append(helper.make_opsetid("my.ops", 1))
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = draw(st.sampled_from([8, 8, 8, 10, 3, 12, 99]))
    return model


@pytest.fixture(scope="module")
def graphs(tmp_path_factory) -> dict:
    """A folder, and one config and target for every example (the model and data files change in place)."""
    from edgepack import config, targets

    d = tmp_path_factory.mktemp("graphs")
    cfg = config.from_mapping({"model": str(d / "m.onnx"), "calib": str(d / "calib.npz"), "target": "x86-64"},
                              where="test")
    return _Quiet(dir=d, config=cfg, target=targets.load("x86-64"))


def _load_and_check(graphs: dict) -> None:
    """What a build does before it quantizes: load and check the model, read the data against it, and run the
    FP32 model on it once."""
    from edgepack import api
    from edgepack.stages.export import check_finite_outputs

    ctx = api._prepare(graphs["config"], graphs["target"], graphs["dir"], lambda *a: None)
    check_finite_outputs(Path(graphs["config"].model), ctx.calib.x)


@SETTINGS
@given(model=onnx_graphs(), data_shape=st.sampled_from([(8, 3, 8, 8), (8, 1, 4, 4), (8, 3, 4, 8), (8, 3)]),
       fill=st.sampled_from([0.0, 1.0, -3.0, 1e7]))
def test_loading_a_random_onnx_graph_ends_in_an_edgepack_error_or_works(graphs, model, data_shape, fill):
    import onnx

    onnx.save(model, graphs["dir"] / "m.onnx")
    np.savez(graphs["dir"] / "calib.npz", x=np.full(data_shape, fill, np.float32))
    try:
        _load_and_check(graphs)
    except EdgepackError as exc:
        assert exc.message
