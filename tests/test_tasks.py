"""Detection and segmentation tasks (issue 15): their metrics, label formats with their bad inputs, task choice,
and tiny seeded end-to-end builds (x86-64, ONNX)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgepack import tasks
from edgepack.cli import main
from edgepack.config import Preprocess
from edgepack.errors import ConfigError, InputError
from edgepack.inputs import labels
from edgepack.inputs.data import Dataset
from edgepack.tasks.detect import Detect, coco_map
from edgepack.tasks.segment import Segment, confusion, fit_mask, miou, pixel_accuracy

PLAIN = Preprocess(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
COLOURS = np.array([[230, 20, 20], [20, 230, 20], [20, 20, 230]], np.uint8)


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


# ---- data -------------------------------------------------------------------------------------------------


def _write_png(path: Path, arr: np.ndarray, mode: str | None = None) -> None:
    from PIL import Image

    Image.fromarray(arr, mode).save(path)


def segmentation_set(root: Path, n: int = 12, size: int = 16, seed: int = 0) -> tuple[Path, Path]:
    """Images of 4x4 colour blocks and their PNG index masks (class = the block's colour)."""
    rng = np.random.default_rng(seed)
    images, masks = root / "images", root / "masks"
    images.mkdir(parents=True)
    masks.mkdir()
    for i in range(n):
        cls = np.kron(rng.integers(0, 3, (size // 4, size // 4)), np.ones((4, 4), np.int64))
        img = COLOURS[cls] + rng.integers(0, 20, (size, size, 3)).astype(np.uint8)
        _write_png(images / f"s{i:02d}.png", img)
        _write_png(masks / f"s{i:02d}.png", cls.astype(np.uint8), "L")
    return images, masks


def detection_set(root: Path, n: int = 12, seed: int = 0) -> tuple[Path, Path, Path]:
    """32x32 grey images with one to three coloured 8x8 cells (TinyDetector's grid); YOLO txt and COCO json."""
    rng = np.random.default_rng(seed)
    images, yolo = root / "images", root / "yolo"
    images.mkdir(parents=True)
    yolo.mkdir()
    coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "r"}, {"id": 2, "name": "g"},
                                                             {"id": 3, "name": "b"}]}
    for i in range(n):
        img = np.full((32, 32, 3), 40, np.uint8)
        lines = []
        coco["images"].append({"id": i, "file_name": f"d{i:02d}.png", "width": 32, "height": 32})
        for cell in rng.choice(16, size=int(rng.integers(1, 4)), replace=False):
            r, c, cls = int(cell) // 4, int(cell) % 4, int(rng.integers(0, 3))
            img[r * 8:(r + 1) * 8, c * 8:(c + 1) * 8] = COLOURS[cls]
            lines.append(f"{cls} {(c * 8 + 4) / 32} {(r * 8 + 4) / 32} 0.25 0.25")
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": i, "category_id": cls + 1,
                                        "bbox": [c * 8, r * 8, 8, 8]})
        _write_png(images / f"d{i:02d}.png", img)
        (yolo / f"d{i:02d}.txt").write_text("\n".join(lines) + "\n")
    (root / "coco.json").write_text(json.dumps(coco))
    return images, yolo, root / "coco.json"


def _folder_set(images: Path) -> Dataset:
    files = sorted(str(p) for p in images.iterdir())
    return Dataset(x=np.zeros((len(files), 3, 16, 16), np.float32), y=None, source=str(images), files=files)


# ---- segmentation metrics ------------------------------------------------------------------------------------


@pytest.mark.slow  # importing torchmetrics takes half a minute on a busy 2-core machine
def test_miou_and_pixel_accuracy_match_torchmetrics():
    torchmetrics = pytest.importorskip("torchmetrics")
    import torch

    rng = np.random.default_rng(1)
    truth = rng.integers(0, 4, (5, 12, 12))
    pred = np.where(rng.random(truth.shape) < 0.7, truth, rng.integers(0, 4, truth.shape))
    cm = confusion(truth, pred, 4)
    jac = torchmetrics.classification.MulticlassJaccardIndex(num_classes=4, average="macro")
    acc = torchmetrics.classification.MulticlassAccuracy(num_classes=4, average="micro")
    t, p = torch.from_numpy(truth), torch.from_numpy(pred)
    assert miou(cm) == pytest.approx(100 * float(jac(p, t)), abs=1e-4)
    assert pixel_accuracy(cm) == pytest.approx(100 * float(acc(p, t)), abs=1e-4)


def test_ignore_index_pixels_are_not_counted():
    truth = np.array([[0, 1], [255, 255]])
    assert pixel_accuracy(confusion(truth, np.array([[0, 1], [1, 0]]), 2)) == 100.0


def test_segment_quality_with_masks_and_with_pseudo_labels():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(4, 3, 8, 8)).astype(np.float32)
    got = ref.copy()
    got[0, :, :4] = got[0, ::-1, :4]  # INT8 flips half of one sample's scores
    seg = Segment()
    pseudo = seg.quality(ref, got, None)
    assert pseudo["labels"] == "fp32 pseudo-labels" and pseudo["miou_fp32"] == 100.0
    assert 0 < pseudo["miou_drop"] < 100 and pseudo["agreement"] < 1
    truth = [np.kron(m, np.ones((2, 2), np.int64)) for m in ref.argmax(1)[:, ::2, ::2]]  # 16x16 masks
    labelled = seg.quality(ref, ref, truth)
    assert labelled["labels"] == "masks" and labelled["miou_drop"] == 0.0 and labelled["miou_fp32"] < 100
    row = seg.quality_budget(pseudo, {"max_miou_drop": 0.5})
    assert row["name"] == "miou_drop_points" and row["passed"] is False
    assert seg.quality_budget(pseudo, {"max_miou_drop": None}) is None


@pytest.mark.parametrize("name,shape", [("classify", (4, 10)), ("generic", (4, 4, 5, 5)), ("segment", (4, 3, 8, 8))])
def test_identical_outputs_give_a_finite_sqnr_the_manifest_can_hold(name, shape):
    """A random-weight torchvision googlenet's INT8 logits equal its FP32 ones: SQNR was inf, and writing the
    manifest (JSON, no infinity) crashed the build with exit 70."""
    ref = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    for got in (ref.copy(), ref * 0):
        quality = tasks.get(name).quality(ref, got, None)
        assert np.isfinite(quality["sqnr_db"])
        json.dumps(quality, allow_nan=False)
    assert tasks.get(name).quality(ref, ref.copy(), None)["sqnr_db"] == 999.0
    assert tasks.get(name).quality(ref * 0, ref, None)["sqnr_db"] == -999.0


def test_generic_summary_shows_sqnr_not_top1_rows():
    """A generic model (MTCNN's PNet: box and score maps) was summarised as "top-1 accuracy: - / no labels" and
    "top-1 agreement: -", on the host and on the emulated device; it has no classes: its SQNR is what was measured."""
    from edgepack.bundle.tables import summary_rows

    ref = np.random.default_rng(0).normal(size=(4, 4, 5, 5)).astype(np.float32)
    quality = tasks.get("generic").quality(ref, ref + 0.05, None)
    timing = {"p50": 1.0, "p90": 1.2}
    agree = {"top1": None, "max_abs_diff": 0.0014, "fraction_different": 0.0}
    device = {"qemu_cpu": "cortex-a72", "samples": 8, "agreement_with_host": {"fp32": agree, "int8": agree},
              "quality_on_device": quality, "instructions": {p: {"total": 1e6, "dotprod": 0} for p in ("fp32", "int8")}}
    validation = {**quality, "samples": 4, "on_calibration_data": False, "size_bytes": {"fp32": 4000, "int8": 1000},
                  "peak_memory_mb": {"fp32": 1.0, "int8": 1.0}, "device": device,
                  "latency_ms": {"threads": 2, "fp32": timing, "int8": timing,
                                 "one_thread": {"fp32": timing, "int8": timing}}}
    rows = summary_rows({"models": [{"format": "onnx", "validation": validation}], "target": {"name": "t"}})
    text = "\n".join(" | ".join(r) for r in rows)
    assert "top-1" not in text
    assert f"INT8 vs FP32 SQNR (dB) |  | {quality['sqnr_db']:.1f}" in text and "device vs host max |diff|" in text


def test_probability_map_is_two_classes():
    seg = Segment()
    prob = np.array([[[[0.2, 0.7], [0.5, 0.1]]]], np.float32)
    assert seg.masks(prob).tolist() == [[[0, 1], [1, 0]]] and seg.num_classes((1, 1, 2, 2)) == 2


def test_probability_threshold_is_a_setting_used_by_metrics_and_the_runner():
    """DBNet-style maps are binarised at 0.3, not 0.5: the build's prob_threshold reaches the task's masks and
    metrics, and the bundle's runner (which reads it from the manifest) draws the same mask."""
    import importlib.util

    from edgepack import config

    prob = np.array([[[[0.2, 0.4], [0.35, 0.6]]]], np.float32)
    cfg = config.from_mapping({"model": "m", "task": "segment", "prob_threshold": 0.3}, where="t")
    seg = tasks.get("segment", cfg)
    assert seg.threshold == 0.3 and seg.masks(prob).tolist() == [[[0, 1], [1, 1]]]
    assert tasks.get("segment").masks(prob).tolist() == [[[0, 0], [0, 1]]]   # default 0.5
    truth = [np.array([[0, 1], [1, 1]])]
    assert seg.quality(prob, prob, truth)["miou_fp32"] == 100.0
    assert seg.quality(prob, prob, truth)["prob_threshold"] == 0.3
    assert tasks.get("segment").quality(prob, prob, truth)["miou_fp32"] < 100
    with pytest.raises(ConfigError):
        config.from_mapping({"model": "m", "prob_threshold": 1.5}, where="t")
    runner = Path(config.__file__).parent / "bundle" / "templates" / "run.py"
    spec = importlib.util.spec_from_file_location("bundle_run_threshold", runner)
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)

    class Model:
        def outputs(self, feed):
            return [prob]

    sys.path.insert(0, str(Path(config.__file__).parent / "tasks"))  # postprocess.py sits beside run.py
    try:
        res = run.result({"name": "segment", "prob_threshold": 0.3}, "image", Model(), {}, "x.png", None, 5)
        default = run.result({"name": "segment"}, "image", Model(), {}, "x.png", None, 5)
    finally:
        sys.path.remove(str(Path(config.__file__).parent / "tasks"))
    assert [c["pixels"] for c in res["classes"]] == [1, 3]
    assert [c["pixels"] for c in default["classes"]] == [3, 1]


def test_fit_mask_nearest():
    assert fit_mask(np.array([[0, 1], [2, 3]]), (4, 4)).tolist()[0] == [0, 0, 1, 1]


# ---- detection metrics ----------------------------------------------------------------------------------------


def _raw(boxes, scores):
    """One (1, K, 4 + C) raw output from lists."""
    return np.concatenate([np.asarray(boxes, np.float32), np.asarray(scores, np.float32)], -1)[None]


def test_coco_map_perfect_shifted_and_missing():
    truth = [{"boxes": np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32), "classes": np.array([0, 1])}]
    same = [{"boxes": truth[0]["boxes"], "scores": np.array([0.9, 0.8]), "classes": truth[0]["classes"]}]
    assert coco_map(truth, same, 2) == {"map50": 100.0, "map": 100.0}
    moved = [{**same[0], "boxes": same[0]["boxes"] + 2}]  # IoU 0.47: missed at 0.5
    assert coco_map(truth, moved, 2)["map50"] == 0.0
    wrong = [{**same[0], "classes": np.array([1, 0])}]
    assert coco_map(truth, wrong, 2)["map50"] == 0.0
    assert coco_map([{"boxes": np.zeros((0, 4)), "classes": np.zeros(0)}], same, 2)["map50"] is None


def test_detect_decodes_with_nms_and_scores_int8_against_fp32():
    det = Detect()
    boxes = [[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [0, 20, 5, 30]]
    scores = [[0.9, 0.1], [0.8, 0.1], [0.1, 0.7], [0.01, 0.02]]
    found = det.decode(_raw(boxes, scores))[0]
    assert len(found["scores"]) == 2 and found["classes"].tolist() == [0, 1]  # overlap suppressed, low dropped
    ref = _raw(boxes, scores)
    q = det.quality(ref, ref.copy(), None)
    assert q["labels"] == "fp32 pseudo-labels" and q["map50_fp32"] == 100.0 and q["map50_drop"] == 0.0
    bad = ref.copy()
    bad[0, 2, :4] += 6  # INT8 moves the second object's box
    q = det.quality(ref, bad, None)
    assert q["map50_drop"] == 50.0
    assert det.quality_budget(q, {"max_map_drop": 1.0})["passed"] is False


def test_numpy_nms_matches_torchvision():
    import torch
    from torchvision.ops import batched_nms

    from edgepack.tasks import postprocess

    rng = np.random.default_rng(3)
    for _ in range(20):
        xy = rng.uniform(0, 50, (60, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(2, 20, (60, 2))], 1)
        scores, classes = rng.random(60), rng.integers(0, 3, 60)
        ours = postprocess.nms(boxes, scores, classes, 0.5)
        theirs = batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(classes), 0.5)
        assert ours.tolist() == theirs.tolist()


def test_runner_copy_lays_out_tflite_maps_as_the_backend_does():
    from edgepack.backends.tflite import _output_nchw
    from edgepack.tasks.postprocess import to_nchw

    for shape, hw in [((1, 3, 16, 16), (16, 16)), ((1, 16, 16, 3), (16, 16)), ((1, 8, 4, 21), (64, 32)),
                      ((1, 21, 8, 4), (64, 32)), ((1, 8, 8, 8), (8, 8))]:
        assert to_nchw(np.zeros(shape), hw).shape == _output_nchw(np.zeros(shape), hw).shape


def test_detect_two_outputs_either_order():
    det = Detect()
    boxes = np.array([[[0, 0, 10, 10]]], np.float32)
    scores = np.array([[[0.9, 0.1, 0.0]]], np.float32)
    a, b = det.decode([boxes, scores])[0], det.decode([scores, boxes])[0]
    assert a["classes"].tolist() == b["classes"].tolist() == [0]
    assert det.num_classes([(1, 16, 4), (1, 16, 3)]) == 3 and det.num_classes([(1, 16, 7)]) == 3
    with pytest.raises(InputError, match="do not fit the detect task"):
        det.check_outputs([(1, 10)], "m")


# ---- the bundle's run.py on a detector: boxes in the photo's own pixels, score threshold -------------------


def _run_py_module():
    """The bundle runner template as a module (its functions, without running main)."""
    import importlib.util

    from edgepack.bundle.report import runner_template

    spec = importlib.util.spec_from_file_location("bundle_run", runner_template())
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    return run


def test_runner_box_mapping_undoes_the_geometry_validation_maps_labels_with():
    """run.py's image-pixel boxes are the model's boxes through the inverse of labels.geometry, the transform
    validation maps labelled boxes into the model input with (so mAP, in the model-input frame, is unchanged)."""
    run = _run_py_module()
    rng = np.random.default_rng(0)
    for size, shape, pre in [((64, 48), (1, 3, 32, 32), Preprocess(resize=32)),
                             ((480, 640), (1, 3, 320, 320), Preprocess()),
                             ((1920, 1080), (1, 3, 192, 256), Preprocess(resize=200, crop=180)),
                             ((333, 500), (1, 1, 48, 320), Preprocess(channel_order="L"))]:
        geo = labels.geometry(size, shape, pre)
        width, height = shape[-1], shape[-2]
        xy = rng.uniform(0, 0.7, (50, 2)) * [width, height]
        model_boxes = np.concatenate([xy, xy + rng.uniform(1, 0.3 * min(width, height), (50, 2))], 1)
        photo = run.to_image(model_boxes, size, pre.to_dict(), shape)
        np.testing.assert_allclose(labels.transform_boxes(photo, geo), model_boxes, atol=1e-6)
        seen = run.to_image([[0, 0, width, height]], size, pre.to_dict(), shape)[0]
        assert (seen >= 0).all() and seen[2] <= size[0] and seen[3] <= size[1]
    # a box reaching past the model input ends at the photo's edge
    far = run.to_image([[-500, -500, 900, 900]], (480, 640), Preprocess().to_dict(), (1, 3, 320, 320))[0]
    assert far.tolist() == [0, 0, 480, 640]


@pytest.fixture(scope="module")
def detect_bundle(tmp_path_factory) -> tuple[Path, Path]:
    """A detector bundle's runner files (run.py, postprocess.py, the FP32 TinyDetector as model.onnx, a manifest)
    and a 64 x 48 photo: a red block that lands on the model's cell (1, 1), a dim green one scoring about 0.08."""
    import shutil

    import toy_models

    from edgepack.backends import onnx as onnx_backend
    from edgepack.bundle.report import runner_template
    from edgepack.tasks import postprocess

    folder = tmp_path_factory.mktemp("detect_bundle")
    onnx_backend.export(toy_models.tiny_detector(), (1, 3, 32, 32), folder / "model.onnx", opset=17)
    shutil.copyfile(runner_template(), folder / "run.py")
    shutil.copyfile(postprocess.__file__, folder / "postprocess.py")
    manifest = {"models": [{"format": "onnx", "file": "model.onnx"}], "runtime": {"threads": 1},
                "inputs": [{"name": "input", "shape": [1, 3, 32, 32], "dtype": "float32", "layout": "NCHW"}],
                "preprocess": Preprocess(resize=32, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)).to_dict(),
                "labels": ["r", "g", "b"], "stages": {"task": {"name": "detect"}}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    pixels = np.full((48, 64, 3), 40, np.uint8)
    pixels[12:24, 19:31] = (230, 20, 20)   # x 19.35-31.26, y 12-24 is the model's cell x 8-16, y 8-16
    pixels[24:36, 40:52] = (40, 96, 40)
    photo = tmp_path_factory.mktemp("photo") / "photo.png"
    _write_png(photo, pixels)
    return folder, photo


def _run_py(folder: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "run.py", *map(str, args)], cwd=folder, capture_output=True, text=True,
                          timeout=120, check=False)


def test_detect_runner_prints_boxes_in_the_photos_own_pixels(detect_bundle):
    """A user-journey run found run.py printing boxes in the 32 x 32 model input's pixels for a 64 x 48 photo,
    saying so nowhere."""
    from edgepack.backends import onnx as onnx_backend
    from edgepack.inputs.data import preprocess_image

    folder, photo = detect_bundle
    res = _run_py(folder, photo)
    assert res.returncode == 0, res.stderr
    header, *rows = res.stdout.strip().splitlines()
    assert header == ("1 detection scoring 0.3 or more; boxes x1 y1 x2 y2 in the image's own pixels (64 x 48); "
                      "the model sees x 7-55, y 0-48 of the 64 x 48 image, scaled to 32 x 32")
    assert len(rows) == 1 and " r " in rows[0]
    printed = json.loads(_run_py(folder, photo, "--json").stdout)
    assert printed["box_frame"] == "image" and printed["image_size"] == [64, 48]
    assert printed["model_input_size"] == [32, 32] and printed["score_threshold"] == 0.3
    box = printed["detections"][0]["box"]
    # over the red block of the photo (the model's box is its cell, give or take a pixel: 1.5 photo pixels)
    np.testing.assert_allclose(box, [19.35, 12, 31.26, 24], atol=1.6)
    # --model-frame: the boxes validation decodes and scores, unchanged
    raw = json.loads(_run_py(folder, photo, "--json", "--model-frame", "--score-threshold", "0.05").stdout)
    assert raw["box_frame"] == "model_input"
    pre = Preprocess(resize=32, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    want = Detect().decode(onnx_backend.Runner(folder / "model.onnx").run_outputs(
        preprocess_image(photo, (1, 3, 32, 32), pre)[None]))[0]
    np.testing.assert_allclose([d["box"] for d in raw["detections"]], want["boxes"], atol=0.01)
    # the image-frame box is the model-frame one through the inverse of the labels' geometry
    np.testing.assert_allclose(labels.transform_boxes([box], labels.geometry((64, 48), (1, 3, 32, 32), pre))[0],
                               raw["detections"][0]["box"], atol=0.02)


def test_detect_runner_score_threshold_is_an_option(detect_bundle):
    """run.py printed every box from validation's 0.05 and had no way to change it; it prints from 0.3 now
    (the report pictures' cut) and --score-threshold sets it."""
    from edgepack.tasks import postprocess

    folder, photo = detect_bundle
    assert postprocess.DISPLAY_SCORE_THRESHOLD == 0.3 and postprocess.SCORE_THRESHOLD == 0.05
    scores = {t: [d["score"] for d in json.loads(_run_py(folder, photo, "--json", *a).stdout)["detections"]]
              for t, a in [(0.3, ()), (0.05, ("--score-threshold", "0.05")), (0.01, ("--score-threshold", "0.01"))]}
    assert len(scores[0.3]) == 1 and len(scores[0.05]) == 2 and len(scores[0.01]) > 2   # the dim green block
    for t, found in scores.items():
        assert min(found) >= t and found == sorted(found, reverse=True)
    assert scores[0.05] == [s for s in scores[0.01] if s >= 0.05]
    helped = _run_py(folder, "--help")
    assert "--score-threshold S" in helped.stdout and "default 0.3" in helped.stdout
    assert "--model-frame" in helped.stdout
    bad = _run_py(folder, photo, "--score-threshold", "5")
    assert bad.returncode == 2 and "scores are 0-1" in bad.stderr


# ---- task choice ----------------------------------------------------------------------------------------------


def test_inference_stays_conservative():
    assert tasks.for_outputs([(1, 10)]).name == "classify"
    assert tasks.for_outputs([(1, 3, 16, 16)]).name == "generic"
    assert tasks.for_outputs([(1, 16, 7)]).name == "generic"
    assert tasks.get("segment").name == "segment" and tasks.get("detect").name == "detect"
    with pytest.raises(ConfigError, match="unknown task"):
        tasks.get("pose")


def test_task_and_budgets_are_settings():
    from edgepack import config, targets

    cfg = config.from_mapping({"model": "m", "task": "segment", "max_miou_drop": 1.5, "labels_dir": "masks"},
                              where="t")
    assert cfg.task == "segment" and cfg.max_miou_drop == 1.5 and cfg.labels_dir == "masks"
    with pytest.raises(ConfigError):
        config.from_mapping({"model": "m", "task": "pose"}, where="t")
    with pytest.raises(ConfigError):
        config.from_mapping({"model": "m", "max_map_drop": -1}, where="t")
    assert "max_map_drop" in {f.name for f in __import__("dataclasses").fields(targets.TargetProfile)}


# ---- label formats ------------------------------------------------------------------------------------------


def test_png_masks_follow_the_image_geometry(tmp_path):
    images, masks = segmentation_set(tmp_path)
    ds = _folder_set(images)
    got = labels.read_masks(ds, str(masks), input_shape=(1, 3, 16, 16), preprocess=PLAIN, num_classes=3)
    assert len(got) == len(ds.files) and got[0].shape == (16, 16)
    from edgepack.inputs.data import preprocess_image

    x = preprocess_image(Path(ds.files[0]), (1, 3, 16, 16), PLAIN)
    agree = (x.argmax(0) == got[0]).mean()  # the resized, cropped image and mask still line up
    assert agree > 0.85


def test_bad_masks_name_the_file(tmp_path):
    images, masks = segmentation_set(tmp_path, n=3)
    ds = _folder_set(images)
    read = lambda: labels.read_masks(ds, str(masks), input_shape=(1, 3, 16, 16), preprocess=PLAIN,  # noqa: E731
                                     num_classes=3)
    _write_png(masks / "s01.png", np.zeros((8, 16), np.uint8), "L")
    with pytest.raises(InputError, match=r"s01\.png is 16x8 but its image is 16x16"):
        read()
    _write_png(masks / "s01.png", np.zeros((16, 16, 3), np.uint8))
    with pytest.raises(InputError, match=r"s01\.png is a RGB image, not an index mask"):
        read()
    _write_png(masks / "s01.png", np.full((16, 16), 7, np.uint8), "L")
    with pytest.raises(InputError, match=r"s01\.png has class id\(s\) 7"):
        read()
    (masks / "s01.png").unlink()
    with pytest.raises(InputError, match=r"image s01\.png has no label file"):
        read()
    _write_png(masks / "s01.png", np.full((16, 16), 255, np.uint8), "L")  # all ignored: fine
    assert read()[1].max() == 255
    for f in masks.glob("*.png"):  # binary masks saved as 0/255: the foreground would all be "ignore"
        m = np.zeros((16, 16), np.uint8)
        m[4:12, 4:12] = 255
        _write_png(f, m, "L")
    with pytest.raises(InputError, match=r"every mask in .* holds only 0 and 255") as caught:
        read()
    assert "mask // 255" in caught.value.hint


def test_yolo_and_coco_give_the_same_boxes(tmp_path):
    images, yolo, coco = detection_set(tmp_path)
    ds = _folder_set(images)
    kw = {"input_shape": (1, 3, 32, 32), "preprocess": Preprocess(resize=32), "num_classes": 3}
    a, b = labels.read_boxes(ds, str(yolo), **kw), labels.read_boxes(ds, str(coco), **kw)
    assert len(a) == len(b) == len(ds.files)
    for ta, tb in zip(a, b, strict=True):
        np.testing.assert_allclose(ta["boxes"], tb["boxes"], atol=1e-4)
        assert ta["classes"].tolist() == tb["classes"].tolist()
    assert all(((t["boxes"] % 8) == 0).all() for t in a)  # 32 px images at 32 px: grid cells stay put


def test_coco_categories_are_matched_to_the_labels_by_name(tmp_path):
    """The same boxes with categories numbered alphabetically (1=b, 2=g, 3=r) scored a detector against the wrong
    classes (mAP 29 for 90, PASS). With --labels the names decide; without, ids with gaps are refused."""
    images, yolo, coco = detection_set(tmp_path)
    ds = _folder_set(images)
    kw = {"input_shape": (1, 3, 32, 32), "preprocess": Preprocess(resize=32), "num_classes": 3}
    truth = labels.read_boxes(ds, str(yolo), **kw)
    doc = json.loads(coco.read_text())
    renumber = {1: 3, 2: 2, 3: 1}  # r, g, b -> ids 3, 2, 1 (alphabetical: b=1, g=2, r=3)
    doc["categories"] = [{"id": 1, "name": "b"}, {"id": 2, "name": "g"}, {"id": 3, "name": "r"}]
    for a in doc["annotations"]:
        a["category_id"] = renumber[a["category_id"]]
    coco.write_text(json.dumps(doc))
    by_name = labels.read_boxes(ds, str(coco), class_names=["r", "g", "b"], **kw)
    assert [t["classes"].tolist() for t in by_name] == [t["classes"].tolist() for t in truth]
    by_id = labels.read_boxes(ds, str(coco), **kw)  # no names: id order, which is not the model's here
    assert [t["classes"].tolist() for t in by_id] != [t["classes"].tolist() for t in truth]
    with pytest.raises(InputError, match=r"categor.* 1 'b' not among the --labels names"):
        labels.read_boxes(ds, str(coco), class_names=["r", "g", "blue"], **kw)
    doc["categories"] = [{"id": 1, "name": "b"}, {"id": 3, "name": "r"}]
    doc["annotations"] = [a for a in doc["annotations"] if a["category_id"] != 2]
    coco.write_text(json.dumps(doc))
    with pytest.raises(InputError, match=r"category ids \[1, 3\] have gaps"):
        labels.read_boxes(ds, str(coco), **kw)
    assert labels.coco_category_names(coco) == ["b", "r"]


def test_boxes_are_scaled_cropped_and_clipped():
    geo = labels.geometry((64, 32), (1, 3, 16, 16), Preprocess(resize=16, crop=16))  # 64x32 -> 32x16, crop 8..24
    moved = labels.transform_boxes(np.array([[16, 0, 32, 16], [0, 0, 8, 8], [40, 8, 60, 30]]), geo)
    np.testing.assert_allclose(moved[0], [0, 0, 8, 8])
    assert np.isnan(moved[1]).all()  # cropped away
    np.testing.assert_allclose(moved[2], [12, 4, 16, 15])


def test_bad_yolo_labels_name_the_file_and_line(tmp_path):
    images, yolo, _ = detection_set(tmp_path, n=2)
    ds = _folder_set(images)
    kw = {"input_shape": (1, 3, 32, 32), "preprocess": Preprocess(resize=32), "num_classes": 3}
    cases = {"0 0.95 0.5 0.2 0.2\n": r"d01\.txt, line 1: box .* is outside the image",
             "5 0.5 0.5 0.2 0.2\n": r"d01\.txt, line 1: unknown class id 5",
             "0 0.5 0.5\n": r"d01\.txt, line 1: expected 'class cx cy w h'",
             "0 0.5 0.5 0 0.2\n": r"d01\.txt, line 1: box .* has no area"}
    for text, message in cases.items():
        (yolo / "d01.txt").write_text(text)
        with pytest.raises(InputError, match=message):
            labels.read_boxes(ds, str(yolo), **kw)
    (yolo / "d01.txt").write_text("")  # no objects: fine
    assert len(labels.read_boxes(ds, str(yolo), **kw)[1]["classes"]) == 0
    (yolo / "d01.txt").unlink()
    with pytest.raises(InputError, match=r"image d01\.png has no label file"):
        labels.read_boxes(ds, str(yolo), **kw)


def test_bad_coco_labels_name_the_file(tmp_path):
    images, _, coco = detection_set(tmp_path, n=2)
    ds = _folder_set(images)
    kw = {"input_shape": (1, 3, 32, 32), "preprocess": Preprocess(resize=32), "num_classes": 3}
    good = json.loads(coco.read_text())

    def broken(change) -> None:
        doc = json.loads(json.dumps(good))
        change(doc)
        coco.write_text(json.dumps(doc))

    broken(lambda d: d["annotations"][0].update(bbox=[28, 0, 8, 8]))
    with pytest.raises(InputError, match=r"coco\.json: annotation 1 \(d00\.png\): box .* outside the 32x32 image"):
        labels.read_boxes(ds, str(coco), **kw)
    broken(lambda d: d["annotations"][0].update(bbox=[10, 10, 0, 8]))
    with pytest.raises(InputError, match=r"coco\.json: annotation 1 \(d00\.png\): box .* has no area"):
        labels.read_boxes(ds, str(coco), **kw)
    broken(lambda d: d["annotations"][0].update(category_id=9))
    with pytest.raises(InputError, match=r"coco\.json: annotation 1 \(d00\.png\) has unknown category_id 9"):
        labels.read_boxes(ds, str(coco), **kw)
    broken(lambda d: d["images"].pop())
    with pytest.raises(InputError, match=r"unknown image_id|image d01\.png has no entry"):
        labels.read_boxes(ds, str(coco), **kw)
    broken(lambda d: [im.update(id=str(im["id"])) for im in d["images"]])  # "0" for images, 0 for annotations
    with pytest.raises(InputError, match=r"unknown image_id 0") as info:
        labels.read_boxes(ds, str(coco), **kw)
    assert "image ids are str but this one is int" in info.value.hint
    coco.write_text("{not json")
    with pytest.raises(InputError, match=r"cannot read COCO labels .*coco\.json"):
        labels.read_boxes(ds, str(coco), **kw)


# ---- end to end ---------------------------------------------------------------------------------------------

SEG = ["--target", "x86-64", "--input-shape", "1,3,16,16", "--mean", "0,0,0", "--std", "1,1,1",
       "--latency-runs", "5", "--max-search-time", "0"]


@pytest.mark.slow
def test_segment_build_reports_miou_and_judges_its_budget(tmp_path):
    images, masks = segmentation_set(tmp_path / "data", n=16)
    out = tmp_path / "seg"
    result = invoke("build", "toy_models:tiny_segmenter", "--task", "segment", "--calib", images, "--val", images,
                    "--labels-dir", masks, "--max-miou-drop", "5", "--out", out, "--json", *SEG)
    assert result.exit_code in (0, 1), result.output
    man = json.loads((out / "manifest.json").read_text())
    v = man["validation"]
    assert v["labels"] == "masks" and v["classes"] == 3
    assert v["miou_fp32"] > 70 and v["miou_int8"] > 70 and v["miou_drop"] <= 5
    row = [b for b in v["budgets"] if b["name"] == "miou_drop_points"][0]
    assert row["limit"] == 5 and row["passed"] is True
    assert row["interval"]["low"] <= row["value"] <= row["interval"]["high"] and row["interval"]["samples"] == 16
    assert man["stages"]["task"]["name"] == "segment"
    assert "mIoU" in (out / "report.md").read_text()
    assert f"(95%: {row['interval']['low']:.2f} to" in (out / "report.md").read_text()
    assert (out / "samples.png").read_bytes()[:4] == b"\x89PNG" and "samples.png" in man["files"]
    assert "FP32 and INT8 on validation images (masks)" in (out / "report.html").read_text()


@pytest.mark.parametrize("task", ["segment", "detect"])
def test_class_names_must_number_the_models_classes(tmp_path, task):
    """A segmenter's labels without 'background' shifted every class name by one in run.py and the report, and a
    detector took 4 names for 3 classes, both without a word (classifiers were checked). Now exit 2, before work."""
    if task == "segment":
        images, masks = segmentation_set(tmp_path / "data", n=8)
        args = ["toy_models:tiny_segmenter", "--labels-dir", masks, *SEG]
        names = "square\ncircle\n"   # the model has 3 classes: background, square, circle
    else:
        images, yolo, _ = detection_set(tmp_path / "data", n=8)
        args = ["toy_models:tiny_detector", "--labels-dir", yolo, "--resize", "32", *SEG[:2], "--input-shape",
                "1,3,32,32", *SEG[4:]]
        names = "r\ng\nb\nextra\n"
    (tmp_path / "names.txt").write_text(names)
    result = invoke("build", *args[:1], "--task", task, "--calib", images, "--val", images, "--labels",
                    tmp_path / "names.txt", "--out", tmp_path / "b", *args[1:])
    assert result.exit_code == 2, result.output
    assert "class names but the model tells 3 classes apart" in result.output and not (tmp_path / "b").exists()


@pytest.mark.slow
def test_segment_build_without_labels_scores_against_fp32_and_fails_a_tight_budget(tmp_path):
    images, _ = segmentation_set(tmp_path / "data", n=12)
    out = tmp_path / "seg"
    result = invoke("build", "toy_models:tiny_segmenter", "--task", "segment", "--calib", images, "--val", images,
                    "--max-miou-drop", "0", "--out", out, *SEG)
    man = json.loads((out / "manifest.json").read_text())
    v = man["validation"]
    assert v["labels"] == "fp32 pseudo-labels" and v["miou_fp32"] == 100.0
    row = [b for b in v["budgets"] if b["name"] == "miou_drop_points"][0]
    assert row["passed"] is (v["miou_drop"] <= 0)
    assert result.exit_code == (0 if row["passed"] and man["passed"] else 1)


def test_float_tail_is_what_follows_the_last_convolution_on_every_path():
    """The detector's decoding (after the cls/reg convolutions) is the tail; what feeds a convolution is not."""
    import onnx
    import toy_models

    from edgepack.backends import onnx as onnx_backend
    from edgepack.backends.base import tail_indices
    from edgepack.backends.onnx_quantize import float_tail_nodes

    ops = [("Conv", ["x"], ["a"]), ("Relu", ["a"], ["b"]), ("Conv", ["b"], ["c"]), ("Sigmoid", ["c"], ["s"]),
           ("Add", ["b", "s"], ["y"]), ("Mul", ["x"], ["m"]), ("Conv", ["m"], ["z"])]
    assert tail_indices(ops, frozenset({"Conv"})) == [3, 4]  # Relu feeds a Conv; Mul feeds one too
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "d.onnx"
        onnx_backend.export(toy_models.tiny_detector(), (1, 3, 32, 32), path, opset=17)
        model = onnx.load(str(path))
    kinds = {n.name: n.op_type for n in model.graph.node}
    tail = float_tail_nodes(model)
    assert {"Sigmoid", "Tanh", "Concat"} <= {kinds[n] for n in tail}
    assert not {"Conv", "AveragePool", "Relu"} & {kinds[n] for n in tail}


@pytest.mark.slow
@pytest.mark.parametrize("factory,labels_of", [("toy_models:tiny_detector", "yolo"),
                                               ("toy_models:tiny_detector_two_outputs", "coco"),
                                               ("toy_models:tiny_detector_yolo_layout", "yolo"),
                                               ("toy_models:tiny_detector_yolov5", "yolo")])
def test_detect_build_reports_map(tmp_path, factory, labels_of):
    images, yolo, coco = detection_set(tmp_path / "data", n=16)
    out = tmp_path / "det"
    names = []
    if factory.endswith("yolov5"):   # (1, 16, 8) = 5 + 3 columns: three names settle the layout
        (tmp_path / "names.txt").write_text("r\ng\nb\n")
        names = ["--labels", tmp_path / "names.txt"]
    result = invoke("build", factory, "--task", "detect", "--calib", images, "--val", images,
                    "--labels-dir", yolo if labels_of == "yolo" else coco, "--max-map-drop", "10", "--out", out,
                    "--json", "--resize", "32", *SEG[:2], "--input-shape", "1,3,32,32", *SEG[4:], *names)
    assert result.exit_code in (0, 1), result.output
    man = json.loads((out / "manifest.json").read_text())
    v = man["validation"]
    assert v["labels"] == "boxes" and v["classes"] == 3 and v["objects"] > 16
    # the decoding after the last convolution stays float: no QuantizeLinear after it, float outputs
    import onnx

    q = man["stages"]["quantization_onnx"]
    assert q["float_tail"] and not set(q["float_tail"]) & set(q["nodes_excluded"])
    model = onnx.load(str(out / "model.onnx"))
    tail = {n.name: n for n in model.graph.node if n.name in set(q["float_tail"])}
    assert {"Sigmoid", "Tanh"} <= {n.op_type for n in tail.values()}
    readers = {t: n.op_type for n in model.graph.node for t in n.input}
    assert not any(readers.get(o) == "QuantizeLinear" for n in tail.values() for o in n.output)
    assert v["map50_fp32"] > 80 and v["map50_int8"] > 70
    assert [b for b in v["budgets"] if b["name"] == "map50_drop_points"][0]["limit"] == 10
    assert "FP32 and INT8 on validation images (boxes" in (out / "report.html").read_text()
    box_format = man["stages"]["task"]["box_format"]
    assert box_format == {"toy_models:tiny_detector_yolov5": "yolov5",
                          "toy_models:tiny_detector_yolo_layout": "cxcywh"}.get(factory, "xyxy")
    _runner_decodes_as_validation(out, images, Preprocess(resize=32, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)),
                                  box_format)


def test_a_pruned_detector_is_judged_by_map_against_the_unpruned_one(tmp_path):
    """Pruning a detector ended in an internal error while writing report.md (the unpruned row printed a
    classifier's agreement, None here); --prune-max-drop judged only classifiers' accuracy. Now the row and the
    budget use mAP@0.5 against the labels."""
    images, yolo, _ = detection_set(tmp_path / "data", n=12)
    out = tmp_path / "det"
    result = invoke("build", "toy_models:tiny_detector", "--task", "detect", "--calib", images, "--val", images,
                    "--labels-dir", yolo, "--prune", "0.5", "--prune-max-drop", "50", "--out", out, "--json",
                    "--resize", "32", *SEG[:2], "--input-shape", "1,3,32,32", *SEG[4:])
    assert result.exit_code in (0, 1), result.output
    man = json.loads((out / "manifest.json").read_text())
    v = man["validation"]
    u = v["unpruned_fp32"]
    assert u["metric"] == "map50" and u["accuracy"] > 80 and u["pruned_fp32_sqnr_db"] is not None
    row = next(b for b in v["budgets"] if b["name"] == "map50_drop_vs_unpruned_points")
    assert row["value"] == pytest.approx(u["accuracy"] - v["map50_int8"], abs=0.01) and row["limit"] == 50
    assert "unpruned FP32: mAP@0.5 (%)" in (out / "report.md").read_text()


def _runner_decodes_as_validation(bundle: Path, images: Path, pre: Preprocess, box_format: str = "auto") -> None:
    """The bundle's run.py (with its copy of postprocess.py) prints the detections validation decodes, in the
    model input's pixels from validation's score threshold."""
    from edgepack.backends import onnx as onnx_backend
    from edgepack.inputs.data import preprocess_image

    image = sorted(images.iterdir())[3]
    res = subprocess.run([sys.executable, "run.py", str(image), "--json", "--model-frame", "--score-threshold",
                          "0.05"], cwd=bundle, capture_output=True, text=True, timeout=120,
                         env={"PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr
    printed = json.loads(res.stdout.strip().splitlines()[-1])["detections"]
    x = preprocess_image(image, (1, 3, 32, 32), pre)[None]
    want = Detect(box_format).decode(onnx_backend.Runner(bundle / "model.onnx").run_outputs(x))[0]
    assert len(printed) == len(want["scores"]) > 0
    np.testing.assert_allclose([d["box"] for d in printed], want["boxes"], atol=0.01)
    assert [d["class"] for d in printed] == want["classes"].tolist()
    verified = CliRunner().invoke(main, ["verify", str(bundle)])
    assert verified.exit_code == 0, verified.output  # running it left nothing behind (no __pycache__)


def test_labels_dir_is_refused_for_a_classifier(tiny_data, tmp_path):
    result = CliRunner().invoke(main, ["build", "toy_models:tiny_cnn", "--target", "x86-64", "--calib",
                                       str(tiny_data["calib"]), "--labels-dir", str(tmp_path), "--out",
                                       str(tmp_path / "b"), "--input-shape", "1,3,32,32"])
    assert result.exit_code == 2 and "--labels-dir is for the detect and segment tasks" in result.output


def test_box_format_is_refused_for_another_task(tiny_data, tmp_path):
    result = CliRunner().invoke(main, ["build", "toy_models:tiny_cnn", "--target", "x86-64", "--calib",
                                       str(tiny_data["calib"]), "--box-format", "yolov5", "--out",
                                       str(tmp_path / "b"), "--input-shape", "1,3,32,32"])
    assert result.exit_code == 2 and "--box-format is for the detect task" in result.output


def test_segment_refuses_a_model_without_a_map(tiny_data, tmp_path):
    result = CliRunner().invoke(main, ["build", "toy_models:tiny_cnn", "--task", "segment", "--target", "x86-64",
                                       "--calib", str(tiny_data["calib"]), "--out", str(tmp_path / "b"),
                                       "--input-shape", "1,3,32,32"])
    assert result.exit_code == 2 and "is not a segmentation map" in result.output


def test_tflite_4d_outputs_come_back_nchw_whichever_layout_onnx2tf_left():
    from edgepack.backends.tflite import _output_nchw

    nchw = np.zeros((1, 3, 16, 16))
    assert _output_nchw(nchw, (16, 16)).shape == (1, 3, 16, 16)        # left NCHW by onnx2tf: kept
    assert _output_nchw(np.zeros((1, 16, 16, 3)), (16, 16)).shape == (1, 3, 16, 16)   # NHWC: transposed
    assert _output_nchw(np.zeros((1, 8, 4, 21)), (64, 32)).shape == (1, 21, 8, 4)     # half-size NHWC map
    assert _output_nchw(np.zeros((1, 21, 8, 4)), (64, 32)).shape == (1, 21, 8, 4)
    assert _output_nchw(np.zeros((1, 10)), (16, 16)).shape == (1, 10)


@pytest.mark.slow
def test_segment_build_for_tflite_scores_the_map_in_the_right_layout(tmp_path):
    pytest.importorskip("onnx2tf")
    images, masks = segmentation_set(tmp_path / "data", n=12)
    out = tmp_path / "seg"
    invoke("build", "toy_models:tiny_segmenter", "--task", "segment", "--calib", images, "--val", images,
           "--labels-dir", masks, "--max-miou-drop", "5", "--out", out, "--target", "android-arm64",
           "--calibration-method", "percentile", *SEG[2:])
    man = json.loads((out / "manifest.json").read_text())
    v = man["validation"]
    assert v["miou_fp32"] > 70 and v["miou_drop"] <= 5  # a transposed map scores near 0
    # the converter calibrates min/max itself: a method it cannot honour is said, not silently dropped
    assert any("--calibration-method percentile applies to ONNX INT8 only" in w for w in man["warnings"])


@pytest.mark.slow
def test_tflite_int8_missing_its_budget_tries_the_converters_hard_swish(tmp_path, monkeypatch):
    """The INT8 .tflite spells hard-swish for XNNPACK; when that model misses the accuracy budget (forced here),
    the converter's own HARD_SWISH is converted too and ships when it meets the budget, said in a warning."""
    pytest.importorskip("onnx2tf")
    from ai_edge_litert.interpreter import Interpreter

    from edgepack.stages import quantize

    real, calls = quantize.meets_budget, []

    def first_misses(ctx, q):
        calls.append(q)
        return False if len(calls) == 1 else real(ctx, q)

    monkeypatch.setattr(quantize, "meets_budget", first_misses)
    images, masks = segmentation_set(tmp_path / "data", n=12)
    out = tmp_path / "seg"
    invoke("build", "toy_models:hardswish_segmenter", "--task", "segment", "--calib", images, "--val", images,
           "--labels-dir", masks, "--max-miou-drop", "5", "--out", out, "--target", "android-arm64",
           *SEG[2:-2], "--max-search-time", "60", "--no-emulate")
    man = json.loads((out / "manifest.json").read_text())
    spelling = man["stages"]["quantization_tflite"]["hard_activations"]
    assert spelling["xnnpack_spelling"] == 1 and spelling["shipped"] == "converter"
    assert [t["spelling"] for t in spelling["trials"]] == ["xnnpack", "converter"]
    assert any("shipping the converter's HARD_SWISH" in w for w in man["warnings"])
    interp = Interpreter(model_path=str(out / "model.tflite"))
    assert "HARD_SWISH" in {op["op_name"] for op in interp._get_ops_details()}


@pytest.mark.slow
def test_detect_build_for_tflite_finds_boxes_and_scores_whatever_their_order(tmp_path):
    pytest.importorskip("onnx2tf")
    images, _, coco = detection_set(tmp_path / "data", n=12)
    out = tmp_path / "det"
    invoke("build", "toy_models:tiny_detector_two_outputs", "--task", "detect", "--calib", images, "--val", images,
           "--labels-dir", coco, "--max-map-drop", "10", "--out", out, "--target", "android-arm64", "--resize", "32",
           "--input-shape", "1,3,32,32", *SEG[4:])
    man = json.loads((out / "manifest.json").read_text())
    v = man["validation"]
    assert v["map50_fp32"] > 80 and v["map50_drop"] <= 10
    # the decoding after the last convolution stays float (outputs float32), the network is INT8
    from ai_edge_litert.interpreter import Interpreter

    from edgepack.backends import tflite

    q = man["stages"]["quantization_tflite"]
    assert q["float_tail"] and q["output_dtype"] == "float32" and q["float_ops"] == []
    interp = Interpreter(model_path=str(out / "model.tflite"))
    assert {d["dtype"] for d in interp.get_output_details()} == {np.float32}
    assert interp.get_input_details()[0]["dtype"] == np.int8
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    convs = [op for op in interp._get_ops_details() if op["op_name"] in tflite.COMPUTE_OPS]
    assert convs and all(tensors[op["outputs"][0]]["dtype"] == np.int8 for op in convs)
    kinds = {f.split(":")[0] for f in tflite.float_ops(out / "model.tflite")}
    assert {"LOGISTIC", "TANH"} <= kinds and not kinds & tflite.COMPUTE_OPS


def test_outputs_that_ignore_the_input_are_said_and_a_working_model_is_not():
    """A model whose FP32 outputs barely move with the input (untrained, weights not loaded, preprocessing that
    flattens everything) makes INT8 agreement meaningless: the build says so. Real variation is left alone."""
    from edgepack.stages.validate import input_independence

    rng = np.random.default_rng(0)
    bias = rng.normal(size=(1, 10))
    flat = bias + 1e-6 * rng.normal(size=(32, 10))
    said = input_independence(flat, "classify")
    assert len(said) == 1 and "barely depends on the input" in said[0] and "32 validation samples" in said[0]
    varied = rng.normal(size=(32, 10))
    assert input_independence(varied, "classify") == []
    one_class = varied + np.eye(10)[3] * 100  # it moves, but always says class 3
    assert "predicts class 3 for every one" in input_independence(one_class, "classify", np.arange(32) % 4)[0]
    assert input_independence(one_class, "classify", np.full(32, 3)) == []  # the labels agree: a one-class set
    two = [rng.normal(size=(32, 4, 8)), bias.repeat(32, 0)]  # a detector whose second head is constant
    assert [m.split(" barely")[0] for m in input_independence(two, "detect")] == ["FP32 output 1"]
    assert input_independence(flat[:4], "classify") == []  # too few samples to tell
    tiny = input_independence(varied * 1e-10, "classify")  # random-init mobilenet_v3_small's logits
    assert len(tiny) == 1 and "is at most 3.9e-10 in magnitude" in tiny[0] and "--weights" in tiny[0]
    assert input_independence(varied * 1e-5, "classify") == []


def test_pooled_features_read_as_class_scores_are_said():
    """A backbone with its head removed (ReLU, then average pooling) gives (N, C) features that are never
    negative; inferred from the shape alone they were built as C class scores. Logits, probabilities and narrow
    outputs are left alone."""
    from edgepack.stages.validate import pooled_features

    rng = np.random.default_rng(0)
    features = np.maximum(rng.normal(size=(32, 64)), 0) * 3
    said = pooled_features(features, "classify")
    assert len(said) == 1 and "64 values per sample" in said[0] and "--task generic" in said[0]
    assert pooled_features([features, rng.normal(size=(32, 4))], "classify") == said   # the first output judged
    assert pooled_features(rng.normal(size=(32, 64)), "classify") == []                 # logits: both signs
    probs = np.exp(rng.normal(size=(32, 64)))
    assert pooled_features(probs / probs.sum(1, keepdims=True), "classify") == []      # probabilities
    assert pooled_features(np.maximum(rng.normal(size=(32, 10)), 0) * 3, "classify") == []  # 10 classes: narrow
    assert pooled_features(features, "generic") == []


def test_chance_level_or_low_accuracy_under_default_preprocessing_is_said():
    """A digits CNN trained on (x - 0.5) / 0.5, built without --mean/--std, scored 20.5 % FP32 (92.5 % with them)
    and passed: INT8 agreed with a model that was not seeing its inputs as trained."""
    from types import SimpleNamespace

    from edgepack.config import Preprocess
    from edgepack.stages.validate import preprocessing_doubts

    def ctx(pre, calib=None):  # no --calib: the shipped photos
        y = np.arange(200) % 10
        config = SimpleNamespace(preprocess=pre, tokenizer=None, calib=calib, val=calib)
        return SimpleNamespace(inputs=SimpleNamespace(name="image"), task=SimpleNamespace(name="classify"),
                               config=config, val=SimpleNamespace(y=y), num_outputs=10)

    own = Preprocess(mean=(0.5,) * 3, std=(0.5,) * 3)
    default = Preprocess()
    assert "at chance level" in preprocessing_doubts(ctx(own), {"accuracy_fp32": 11.0})[0]
    assert preprocessing_doubts(ctx(own), {"accuracy_fp32": 20.5}) == []  # well above chance on 200: the user's
    low = preprocessing_doubts(ctx(default), {"accuracy_fp32": 20.5})
    assert len(low) == 1 and "ImageNet's mean" in low[0] and "is low" in low[0]
    assert preprocessing_doubts(ctx(default), {"accuracy_fp32": 92.5}) == []
    npz = preprocessing_doubts(ctx(default, calib="calib.npz"), {"accuracy_fp32": 92.5})
    assert len(npz) == 1 and "cannot check against .npz" in npz[0]
    assert preprocessing_doubts(ctx(own, calib="calib.npz"), {"accuracy_fp32": 92.5}) == []


def test_an_outputs_constant_offset_does_not_inflate_its_judged_sqnr():
    """A depth head in millimetres (1000 + 5 x) scored 106 dB raw while the part that varies was at 36-38 dB: the
    generic task (and the per-output judge) measure the variation around the mean."""
    from edgepack.tasks.base import sqnr_db
    from edgepack.tasks.generic import Generic

    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 1, 8, 8))
    noise = 0.01 * rng.normal(size=x.shape)
    ref, got = 1000 + 5 * x, 1000 + 5 * (x + noise)
    assert sqnr_db(ref, got) > 80  # raw: the offset's power counts as signal
    assert 35 < sqnr_db(ref, got, centered=True) < 45
    assert abs(sqnr_db(ref, got, centered=True) - sqnr_db(x - x.mean(), x + noise - x.mean())) < 0.05
    assert Generic().quality(ref, got, None)["sqnr_db"] < 45


def test_a_segmenter_bundle_writes_its_mask_in_the_photos_pixels(tmp_path):
    """run.py printed only class areas: no way to get the mask, and no word of the part of the photo the centre
    crop cut. --mask-out writes class ids at the photo's size, 255 where the model saw nothing."""
    import subprocess
    import sys

    images, masks = segmentation_set(tmp_path / "data", n=8)
    out = tmp_path / "seg"
    result = invoke("build", "toy_models:tiny_segmenter", "--task", "segment", "--calib", images, "--val", images,
                    "--labels-dir", masks, "--resize", "16", "--crop", "16", "--out", out, *SEG)
    assert result.exit_code in (0, 1), result.output
    wide = tmp_path / "wide.png"  # 40 x 16: the centre crop keeps x 12-28
    block = COLOURS[np.kron(np.array([[0, 1, 2, 0, 1, 2, 0, 1, 2, 0]]), np.ones((1, 4), np.int64)).repeat(16, 0)]
    _write_png(wide, block.astype(np.uint8))
    proc = subprocess.run([sys.executable, "run.py", str(wide), "--mask-out", str(tmp_path / "m.png")], cwd=out,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "the model sees x 12-28, y 0-16 of the 40 x 16 image" in proc.stdout
    from PIL import Image

    with Image.open(tmp_path / "m.png") as im:
        assert im.size == (40, 16) and im.mode == "L"
        mask = np.asarray(im)
    assert (mask[:, :12] == 255).all() and (mask[:, 28:] == 255).all()
    assert set(np.unique(mask[:, 12:28])) <= {0, 1, 2}
    assert "--mask-out mask.png" in (out / "README.md").read_text()


def test_yolo_layout_decodes_as_the_same_boxes_in_xyxy():
    """Ultralytics' YOLOv8 / YOLO11 output (N, 4 + C, K), cx cy w h, gives the detections of the same boxes
    written (N, K, 4 + C) xyxy; a short (N, K, 4 + C) output with K < 4 (4 + C) is still read as boxes-last."""
    from edgepack.tasks import postprocess

    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 200, (2, 120, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 60, (2, 120, 2))], -1)
    scores = rng.uniform(0, 1, (2, 120, 3))
    xyxy = np.concatenate([boxes, scores], -1).astype(np.float32)
    centre, size = (boxes[..., :2] + boxes[..., 2:]) / 2, boxes[..., 2:] - boxes[..., :2]
    yolo = np.concatenate([centre, size, scores], -1).transpose(0, 2, 1).astype(np.float32)   # (2, 7, 120)
    assert postprocess.yolo_layout(yolo.shape) and not postprocess.yolo_layout(xyxy.shape)
    want, got = postprocess.detections(xyxy), postprocess.detections(yolo)
    for w, g in zip(want, got, strict=True):
        np.testing.assert_allclose(g["boxes"], w["boxes"], atol=1e-3)
        assert g["classes"].tolist() == w["classes"].tolist() and len(g["scores"]) > 5
    assert Detect().num_classes([(1, 7, 120)]) == 3 and Detect().num_classes([(1, 50, 84)]) == 80
    assert not postprocess.yolo_layout((1, 84, "anchors"))


def test_yolov5_layout_multiplies_objectness_and_reads_centre_boxes():
    """YOLOv5 / YOLOv7 exports give (N, K, 5 + C): cx cy w h, objectness, class scores. Read by shape alone it
    was taken as xyxy boxes with objectness as class 0: wrong boxes, wrong classes, no error. --box-format yolov5
    reads it; auto settles on it when --labels names 5 classes fewer than the output is wide."""
    from edgepack.tasks import postprocess

    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 200, (2, 30, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 60, (2, 30, 2))], -1)
    scores = rng.uniform(0, 1, (2, 30, 3))
    obj = rng.uniform(0.2, 1, (2, 30, 1))
    centre, size = (boxes[..., :2] + boxes[..., 2:]) / 2, boxes[..., 2:] - boxes[..., :2]
    v5 = np.concatenate([centre, size, obj, scores], -1).astype(np.float32)
    want = postprocess.detections(np.concatenate([boxes, obj * scores], -1).astype(np.float32))
    got = postprocess.detections(v5, box_format="yolov5")
    for w, g in zip(want, got, strict=True):
        np.testing.assert_allclose(g["boxes"], w["boxes"], atol=1e-3)
        np.testing.assert_allclose(g["scores"], w["scores"], atol=1e-5)
        assert g["classes"].tolist() == w["classes"].tolist() and len(g["scores"]) > 5
    wrong = postprocess.detections(v5)[0]    # what auto reads without names: not the same detections
    assert wrong["classes"].tolist() != want[0]["classes"].tolist()
    # the same with boxes as cx cy w h and no objectness
    cx = postprocess.detections(np.concatenate([centre, size, scores], -1).astype(np.float32), box_format="cxcywh")
    np.testing.assert_allclose(cx[0]["boxes"], postprocess.detections(
        np.concatenate([boxes, scores], -1).astype(np.float32))[0]["boxes"], atol=1e-3)

    d = Detect()
    assert d.num_classes([(1, 30, 8)]) == 4 and d.settle_format([(1, 30, 8)], 4) is None   # 4 + 4 fits: xyxy
    assert d.box_format == "xyxy"
    d = Detect()
    assert "YOLOv5" in d.settle_format([(1, 30, 8)], 3) and d.box_format == "yolov5"
    assert d.num_classes([(1, 30, 8)]) == 3 and d.num_classes([(1, 30, 4), (1, 30, 3)]) is None
    assert Detect("xyxy").settle_format([(1, 30, 8)], 3) is None       # a format given is kept
    settled = Detect()
    settled.settle_format([(1, 7, 120)], None)     # a YOLOv8 layout is recorded as cxcywh: a transposed TFLite
    assert settled.box_format == "cxcywh"          # copy (N, K, 4 + C) is then read as centres too
    transposed = np.concatenate([centre, size, scores], -1).astype(np.float32)     # (2, 30, 7)
    plain = np.concatenate([boxes, scores], -1).astype(np.float32)
    np.testing.assert_allclose(settled.decode([transposed])[0]["boxes"],
                               postprocess.detections(plain)[0]["boxes"], atol=1e-3)
    # confident candidates read the wrong way are inverted boxes: the build says so; read right, nothing is said
    assert "--box-format cxcywh, or yolov5" in Detect().layout_doubts(v5 * [1, 1, 0.1, 0.1, 1, 1, 1, 1])[0]
    assert Detect("yolov5").layout_doubts(v5) == []
    assert Detect().layout_doubts(np.concatenate([boxes, obj * scores], -1).astype(np.float32)) == []
    with pytest.raises(ValueError, match="one \\(N, K, 5 \\+ C\\) output"):
        postprocess.split_outputs([np.zeros((1, 30, 4)), np.zeros((1, 30, 3))], "yolov5")


def test_coco_crowd_regions_are_neither_objects_nor_misses(tmp_path):
    """An ``iscrowd`` annotation was read as one more object: a detector that found every object lost mAP for
    each crowd box it did not 'find'. As in COCO's own evaluation, it is a region whose detections are ignored."""
    import json

    images, yolo, coco = detection_set(tmp_path)
    ds = _folder_set(images)
    kw = {"input_shape": (1, 3, 32, 32), "preprocess": Preprocess(resize=32), "num_classes": 3}
    plain = labels.read_boxes(ds, str(coco), **kw)
    doc = json.loads(coco.read_text())
    first = doc["images"][0]
    doc["annotations"].append({"id": 999, "image_id": first["id"], "category_id": doc["categories"][0]["id"],
                               "bbox": [0, 0, 8, 8], "area": 64, "iscrowd": 1})
    crowded = tmp_path / "crowd.json"
    crowded.write_text(json.dumps(doc))
    read = labels.read_boxes(ds, str(crowded), **kw)
    k = [f.name for f in map(Path, ds.files)].index(first["file_name"])
    for a, b in zip(plain, read, strict=True):   # the objects are the same; the crowd box is apart
        np.testing.assert_array_equal(a["boxes"], b["boxes"])
    assert read[k]["crowd_boxes"].shape == (1, 4) and "crowd_boxes" not in read[k - 1]
    perfect = [{"boxes": t["boxes"], "scores": np.full(len(t["classes"]), 0.9), "classes": t["classes"]}
               for t in read]
    assert coco_map(read, perfect, 3)["map50"] == 100.0
    # a detection on the crowd region is neither a hit nor a false positive; scored as an object it was a miss
    on_crowd = [dict(d) for d in perfect]
    on_crowd[k] = {"boxes": np.vstack([perfect[k]["boxes"], read[k]["crowd_boxes"]]),
                   "scores": np.append(perfect[k]["scores"], 0.95), "classes": np.append(perfect[k]["classes"],
                                                                                      read[k]["crowd_classes"])}
    assert coco_map(read, on_crowd, 3)["map50"] == 100.0
    as_objects = [{"boxes": np.vstack([t["boxes"], t.get("crowd_boxes", np.zeros((0, 4)))]),
                   "classes": np.append(t["classes"], t.get("crowd_classes", []))} for t in read]
    assert coco_map(as_objects, perfect, 3)["map50"] < 100.0


def test_classify_refuses_a_first_output_that_is_not_class_scores():
    """--task classify on an (N, 3, 64, 64) output passed with no quality budget and no word; run.py then printed
    flattened pixel indices as the top-5 classes."""
    from edgepack.errors import InputError
    from edgepack.tasks.classify import Classify

    assert Classify().check_outputs([(1, 10)], "m") == 10
    assert Classify().check_outputs([("batch", "classes")], "m") == "classes"   # symbolic: the model says later
    for shapes in ([(1, 3, 64, 64)], [(1, 1)], []):
        with pytest.raises(InputError, match="is not \\(N, classes\\) scores") as info:
            Classify().check_outputs(shapes, "m")
        assert "--task segment" in info.value.hint


def test_an_all_zero_output_is_said_not_passed_at_999_db():
    """torchvision's ViT starts its head at zeros: without trained weights every logit is exactly 0, INT8 equals it,
    SQNR read 999 dB and the build passed without a word (a tiny output was said, an exactly zero one was not)."""
    from edgepack.stages.validate import input_independence

    said = input_independence(np.zeros((16, 10)), "generic")
    assert len(said) == 1 and "exactly zero on every one of the 16 validation samples" in said[0], said


def _fake_ctx(task: str, **config):
    from types import SimpleNamespace

    from edgepack.config import Preprocess

    warned: list[str] = []
    cfg = {"preprocess": Preprocess(), "tokenizer": None, "calib": "c.npz", "val": "v.npz", "max_accuracy_drop": None,
           **config}
    return SimpleNamespace(task=SimpleNamespace(name=task), inputs=SimpleNamespace(name="image"),
                           config=SimpleNamespace(**cfg), target=SimpleNamespace(max_accuracy_drop=1.0),
                           warnings=warned, warn=warned.append, val=SimpleNamespace(y=None), num_outputs=None)


@pytest.mark.parametrize("drop, said", [(19.7, True), (0.4, False)])
def test_a_segmentation_drop_no_budget_judges_is_said(drop, said):
    """fcn_resnet50 --task segment showed "mIoU drop 19.70 points" in its summary and passed every budget: the
    profiles set no max_miou_drop, and only each output's SQNR was judged."""
    from edgepack.stages.validate import _task_drop_unjudged

    ctx = _fake_ctx("segment")
    _task_drop_unjudged(ctx, {"miou_drop": drop}, [])
    assert bool([w for w in ctx.warnings if w.startswith("mIoU drop") and "--max-miou-drop" in w]) is said
    judged = _fake_ctx("segment")
    _task_drop_unjudged(judged, {"miou_drop": drop}, [{"name": "miou_drop_points"}])  # a budget judges it
    assert judged.warnings == []


@pytest.mark.parametrize("task", ["classify", "generic", "segment"])
def test_imagenet_defaults_recorded_for_npz_samples_are_said_for_every_task(task):
    """An image model built from .npz without --mean/--std records ImageNet's for run.py; only a classifier was
    told, so a text recogniser's run.py silently read photos with the wrong normalisation."""
    from edgepack.stages.validate import preprocessing_doubts

    said = preprocessing_doubts(_fake_ctx(task), {})
    assert any("run.py will read photos with ImageNet's mean and std" in s for s in said), said


def test_a_markdown_cell_with_a_bar_stays_one_cell():
    """report.md's "device vs host max |diff|" row split into extra columns."""
    from edgepack.bundle.tables import markdown_table

    table = markdown_table(("metric", "value"), [("max |diff|", "1")])
    assert table.splitlines()[2] == "| max \\|diff\\| | 1 |"


def test_a_torchvision_two_stage_detector_is_refused_with_what_works_instead():
    """torchvision:fasterrcnn_... told the user to wrap it in a factory, which was then refused too."""
    result = invoke("build", "torchvision:fasterrcnn_mobilenet_v3_large_320_fpn", "--target", "x86-64")
    assert result.exit_code == 2 and "two-stage detector" in result.output and "retinanet" in result.output, \
        result.output


def test_a_model_inferred_generic_is_told_which_task_may_fit():
    """A classifier returning (logits, embedding) was built as generic with no word: its top-1 was never judged.
    A 4-D map of several channels may be a segmenter's; a single feature vector gets no hint."""
    from edgepack.api import _task_hints

    assert "pass --task classify" in _task_hints([(1, 1000), (1, 1280)])[0]
    assert "--task segment" in _task_hints([(1, 21, 128, 128)])[0]
    assert _task_hints([(1, 1280)]) == [] and _task_hints([(1, 1, 64, 64)]) == []
