"""Detection: boxes and class scores, judged by COCO mAP (pycocotools) of INT8 (and FP32) against labels.

The quantized graph is the network; decoding and NMS run in float on the host, in `decode` (the same code the
validation uses for FP32 and INT8 alike). Accepted raw outputs, for a start (heads already decoded to boxes):

- one output (N, K, 4 + C): per candidate box x1, y1, x2, y2 in model-input pixels, then C class scores;
- one output (N, 4 + C, K) with K >= 4 (4 + C): ultralytics' YOLOv8 / YOLO11 export, cx, cy, w, h in
  model-input pixels, then C class scores (postprocess.yolo_layout);
- two outputs, boxes (N, K, 4) and scores (N, K, C) (the one whose last axis is 4 holds the boxes);
- with ``box_format`` (--box-format) where the shape cannot tell: "cxcywh" boxes, or "yolov5", one (N, K, 5 + C)
  output, cx, cy, w, h, objectness, class scores (YOLOv5 / YOLOv7 exports; score = objectness x class score),
  which "auto" settles on when --labels names C classes (`settle_format`). `layout_doubts` warns when the FP32
  model's confident boxes come out inverted in the format used.

Scores are probabilities (after sigmoid/softmax). A candidate's class is its best score; candidates scoring
below postprocess.SCORE_THRESHOLD are dropped, then class-wise greedy NMS (IoU postprocess.NMS_IOU, numpy, the
same file the bundle's run.py uses on the device) keeps at most postprocess.MAX_DETECTIONS. mAP@0.5 and
mAP@0.5:0.95 come from pycocotools' COCOeval (points, 0-100). With labels (YOLO txt
or COCO JSON, see edgepack.inputs.labels) both models are scored against them and the drop is in points;
without, INT8 is scored against the FP32 detections scoring at least PSEUDO_LABEL_SCORE as pseudo-labels.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np

from edgepack.errors import InputError
from edgepack.tasks import budgets, postprocess
from edgepack.tasks.base import sqnr_db

PSEUDO_LABEL_SCORE = 0.5
INVERTED_MIN_BOXES = 20     # confident candidates needed before their boxes' orientation says anything
INVERTED_SHARE = 0.1        # inverted xyxy boxes among them that doubt the box format


class Detect:
    """Decoded boxes + class scores (one (N, K, 4 + C) output or (N, K, 4) and (N, K, C) outputs)."""

    name = "detect"
    budget_names = ("max_map_drop",)
    #: the labelled metric pruning is judged by: quality keys <key>_fp32 / <key>_int8 (points), its name;
    #: its drop is what budget_names[0] limits
    headline = ("map50", "mAP@0.5 (%)")
    all_outputs = True      # the stages hand `quality` every output, not only the first
    runner_files = (postprocess.__file__,)   # copied beside the bundle's run.py
    # INT8 ONNX and TFLite: the ops after the last convolution (box decoding, softmax) stay float, outputs
    # float32: an INT8 box tensor has one scale for every anchor (steps of 0.75 px and more at 192 px)
    float_tail = True

    def __init__(self, box_format: str = "auto") -> None:
        from edgepack.util import require

        require(("pycocotools",), extra="tasks", what="the detect task (COCO mAP)")
        if box_format not in postprocess.BOX_FORMATS:
            raise InputError(f"unknown box format {box_format!r}", hint=f"one of {', '.join(postprocess.BOX_FORMATS)}")
        self.box_format = box_format

    @classmethod
    def from_config(cls, config) -> Detect:
        """The task with the build's ``box_format``."""
        return cls(box_format=getattr(config, "box_format", "auto"))

    def settle_format(self, shapes: list[tuple], names: int | None) -> str | None:
        """Turn box_format "auto" into the format the source model's output shapes say, so that the manifest,
        validation and run.py read every copy of the model alike (a TFLite output may come back transposed): one
        (N, K, 5 + C) output with ``names`` == C class names (--labels), whose width does not fit 4 + C, is
        YOLOv5's layout (objectness in column 4; returns a sentence saying so); one (N, 4 + C, K) output with
        K >= 4 (4 + C) is cxcywh; anything else xyxy. A format given is kept."""
        if self.box_format != "auto":
            return None
        one = len(shapes) == 1 and len(shapes[0]) == 3
        width = (shapes[0][1] if postprocess.yolo_layout(shapes[0]) else shapes[0][-1]) if one else None
        if one and names is not None and width == names + 5:
            self.box_format = "yolov5"
            return (f"detect: the output {list(shapes[0])} is {names} class scores wide plus 5 columns, read as "
                    "YOLOv5's layout (cx, cy, w, h, objectness, class scores; score = objectness x class score); "
                    "--box-format names it otherwise")
        self.box_format = postprocess.resolve_format(shapes[0]) if one else "xyxy"
        return None

    def layout_doubts(self, fp32_outs) -> list[str]:
        """A warning when the FP32 model's confident candidates, read in this box format, are often inverted
        boxes (x2 < x1 or y2 < y1): the output's columns are then likely cx, cy, w, h (and maybe objectness), and
        mAP would judge the wrong boxes. Needs INVERTED_MIN_BOXES such candidates."""
        refs = fp32_outs if isinstance(fp32_outs, list) else [fp32_outs]
        try:
            boxes, scores = postprocess.split_outputs(refs, self.box_format)
        except ValueError:
            return []
        sure = scores.max(-1) >= postprocess.DISPLAY_SCORE_THRESHOLD
        picked = boxes[sure]
        if len(picked) < INVERTED_MIN_BOXES:
            return []
        inverted = float(((picked[:, 2] < picked[:, 0]) | (picked[:, 3] < picked[:, 1])).mean())
        if inverted < INVERTED_SHARE:
            return []
        return [f"detect: {inverted:.0%} of the FP32 model's {len(picked)} candidates scoring "
                f"{postprocess.DISPLAY_SCORE_THRESHOLD} or more are inverted boxes (x2 < x1 or y2 < y1) when read as "
                f"{postprocess.resolve_format(refs[0].shape, self.box_format) if len(refs) == 1 else 'xyxy'}: "
                "the output is likely cx, cy, w, h; rebuild with --box-format cxcywh, or yolov5 when a column "
                "after the box is an objectness score (YOLOv5 / YOLOv7)"]

    def num_classes(self, shapes: list[tuple]) -> int | None:
        """Classes of a model whose outputs have ``shapes`` (None when the shapes do not fit the contract)."""
        first = 5 if self.box_format == "yolov5" else 4
        if len(shapes) == 1 and postprocess.yolo_layout(shapes[0]):
            return shapes[0][1] - first
        if len(shapes) == 1 and len(shapes[0]) == 3 and isinstance(shapes[0][-1], int) and shapes[0][-1] > first:
            return shapes[0][-1] - first
        if len(shapes) == 2 and all(len(s) == 3 for s in shapes) and self.box_format != "yolov5":
            boxes = 0 if shapes[0][-1] == 4 else 1
            last = shapes[1 - boxes][-1]
            return last if isinstance(last, int) else None
        return None

    def check_outputs(self, shapes: list[tuple], where: str) -> int:
        classes = self.num_classes(shapes)
        if classes is None:
            raise InputError(f"{where}: outputs {[list(s) for s in shapes]} do not fit the detect task",
                             hint="detect takes one (N, K, 4 + C) output (xyxy boxes, then class scores), one "
                                  "(N, 4 + C, K) output (YOLOv8 / YOLO11: cx, cy, w, h, then class scores), one "
                                  "(N, K, 5 + C) output with --box-format yolov5 (YOLOv5 / YOLOv7) or two "
                                  "outputs boxes (N, K, 4) and scores (N, K, C); else use --task generic")
        return classes

    def decode(self, outs) -> list[dict]:
        """Detections per sample: {"boxes": (M, 4) xyxy, "scores": (M,), "classes": (M,)}, after NMS
        (edgepack.tasks.postprocess: the same code runs on the device)."""
        return postprocess.detections(self.split_outputs(outs))

    def quality(self, ref, got, y) -> dict:
        """mAP@0.5 and mAP@0.5:0.95 (points) of FP32 and INT8 detections; drop in points; SQNR of the raw
        outputs (worst output, dB)."""
        refs, gots, det_ref, det_got, truth, labelled, classes = self._scored(ref, got, y)
        fp32, int8 = coco_map(truth, det_ref, classes), coco_map(truth, det_got, classes)
        out = {"sqnr_db": min(_round(sqnr_db(r, g)) for r, g in zip(refs, gots, strict=True)),
               "agreement": None, "accuracy_fp32": None, "accuracy_int8": None, "accuracy_drop": None,
               "labels": "boxes" if labelled else "fp32 pseudo-labels", "classes": classes,
               "objects": int(sum(len(t["classes"]) for t in truth)),
               "detections_fp32": int(sum(len(d["scores"]) for d in det_ref)),
               "detections_int8": int(sum(len(d["scores"]) for d in det_got)),
               "map50_fp32": fp32["map50"], "map50_int8": int8["map50"],
               "map_fp32": fp32["map"], "map_int8": int8["map"]}
        both = fp32["map50"] is not None and int8["map50"] is not None
        out["map50_drop"] = round(fp32["map50"] - int8["map50"], 2) if both else None
        out["map_drop"] = round(fp32["map"] - int8["map"], 2) if both else None
        return out

    def _scored(self, ref, got, y) -> tuple:
        """(raw FP32 outputs, raw INT8 outputs, FP32 detections, INT8 detections, the boxes they are scored
        against, whether those are labels, class count): labels when ``y`` has one per sample, else FP32's
        confident detections as pseudo-labels."""
        refs, gots = (ref, got) if isinstance(ref, list) else ([ref], [got])
        det_ref, det_got = self.decode(refs), self.decode(gots)
        labelled = isinstance(y, list | tuple) and len(y) == len(det_ref)
        truth = list(y) if labelled else [_confident(d) for d in det_ref]
        return refs, gots, det_ref, det_got, truth, labelled, int(self.split_outputs(refs)[1].shape[-1])

    def resampled(self, ref, got, y, budget: str):
        """idx -> the mAP@0.5 drop (points) on samples idx: pycocotools matches every image once per model, then
        each resample accumulates its images (see map50_resampler and edgepack.tasks.interval)."""
        if budget != "map50_drop_points":
            return None
        _, _, det_ref, det_got, truth, _, classes = self._scored(ref, got, y)
        fp32, int8 = map50_resampler(truth, det_ref, classes), map50_resampler(truth, det_got, classes)
        if fp32 is None or int8 is None:
            return None
        return lambda idx: fp32(idx) - int8(idx)

    def quality_budget(self, quality: dict, limits: dict) -> dict | None:
        """max_map_drop (mAP@0.5, points) when set and there are objects to find; None otherwise."""
        limit = limits.get("max_map_drop")
        if limit is None or quality.get("map50_drop") is None:
            return None
        return budgets.row("map50_drop_points", quality["map50_drop"], limit, "<=")

    def class_count(self, output_shapes: list) -> int:
        """How many classes the model tells apart (its class names must number as many)."""
        return self.check_outputs(output_shapes, "the model")

    def read_targets(self, dataset, labels: str, *, input_shape: tuple, preprocess, output_shapes: list,
                     class_names: list[str] | None = None) -> list:
        """Boxes for every image of ``dataset`` from a YOLO txt folder or a COCO JSON (see inputs.labels); a COCO
        file's categories are matched to ``class_names`` (--labels) by name."""
        from edgepack.inputs import labels as labels_mod

        return labels_mod.read_boxes(dataset, labels, input_shape=input_shape, preprocess=preprocess,
                                     num_classes=self.class_count(output_shapes), class_names=class_names)


    def split_outputs(self, outs) -> tuple[np.ndarray, np.ndarray]:
        """(boxes (N, K, 4) xyxy, scores (N, K, C)) from the raw outputs (see the module docstring)."""
        try:
            return postprocess.split_outputs(outs, self.box_format)
        except ValueError as exc:
            raise InputError(f"detect: {exc}", hint="use --task generic for other outputs") from None


def _confident(det: dict) -> dict:
    keep = det["scores"] >= PSEUDO_LABEL_SCORE
    return {"boxes": det["boxes"][keep], "classes": det["classes"][keep]}


def coco_map(truth: list[dict], found: list[dict], classes: int) -> dict:
    """{"map50", "map"} (points) of detections ``found`` against boxes ``truth``, by pycocotools' COCOeval;
    None when there is no labelled object; 0 when there are objects and no detection."""
    ev = _evaluated(truth, found, classes)
    if ev is None or isinstance(ev, float):
        return {"map50": ev, "map": ev}
    with contextlib.redirect_stdout(io.StringIO()):
        ev.accumulate()
        ev.summarize()
    return {"map50": round(100 * max(0.0, float(ev.stats[1])), 2), "map": round(100 * max(0.0, float(ev.stats[0])), 2)}


def map50_resampler(truth: list[dict], found: list[dict], classes: int):
    """idx -> mAP@0.5 (points) of the images idx (an image drawn twice counts twice), as coco_map computes it for
    every image, from one COCOeval.evaluate (the per-image matching) and one COCOeval.accumulate per call over the
    resampled images' matches (area "all", 100 detections: what COCOeval.summarize reports as AP50). None when
    nothing is labelled."""
    import copy

    ev = _evaluated(truth, found, classes)
    if ev is None or isinstance(ev, float):
        return None if ev is None else (lambda idx: 0.0)
    images, areas = len(ev._paramsEval.imgIds), len(ev._paramsEval.areaRng)
    per_class = [ev.evalImgs[k * areas * images:k * areas * images + images]   # area "all" comes first
                 for k in range(len(ev._paramsEval.catIds))]

    def metric(idx) -> float:
        e = copy.copy(ev)
        e.params, e._paramsEval = copy.deepcopy(ev.params), copy.deepcopy(ev._paramsEval)
        for p in (e.params, e._paramsEval):
            p.imgIds = list(range(len(idx)))   # positions in the resample
            p.areaRng, p.areaRngLbl, p.maxDets = p.areaRng[:1], p.areaRngLbl[:1], p.maxDets[-1:]
        e.evalImgs = [imgs[i] for imgs in per_class for i in idx]
        with contextlib.redirect_stdout(io.StringIO()):
            e.accumulate()
        prec = e.eval["precision"][0, :, :, 0, 0]   # IoU 0.5, every recall and class, area all, 100 detections
        return 100 * max(0.0, float(np.mean(prec[prec > -1]))) if (prec > -1).any() else 0.0

    return metric


def _evaluated(truth: list[dict], found: list[dict], classes: int):
    """pycocotools' COCOeval after evaluate() (per-image matching) of ``found`` against ``truth``; None when there
    is no labelled object, 0.0 when there are objects and no detection."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    objects = [(i, b, c, 0) for i, t in enumerate(truth) for b, c in zip(t["boxes"], t["classes"], strict=True)]
    if not objects:
        return None
    groups = [(i, b, c, 1) for i, t in enumerate(truth)  # COCO crowd regions: detections there are neither hits
              for b, c in zip(t.get("crowd_boxes", ()), t.get("crowd_classes", ()), strict=True)]  # nor misses
    anns = [{"id": k + 1, "image_id": i, "category_id": int(c) + 1, "bbox": _xywh(b), "area": _area(b),
             "iscrowd": crowd} for k, (i, b, c, crowd) in enumerate(objects + groups)]
    dets = [{"image_id": i, "category_id": int(c) + 1, "bbox": _xywh(b), "score": float(s)}
            for i, d in enumerate(found) for b, s, c in zip(d["boxes"], d["scores"], d["classes"], strict=True)]
    if not dets:
        return 0.0
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress; the library never prints
        gt = COCO()
        gt.dataset = {"images": [{"id": i} for i in range(len(truth))], "annotations": anns,
                      "categories": [{"id": k + 1} for k in range(classes)]}
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(dets), "bbox")
        ev.evaluate()
    return ev


def _xywh(b) -> list[float]:
    x1, y1, x2, y2 = (float(v) for v in b)
    return [x1, y1, x2 - x1, y2 - y1]


def _area(b) -> float:
    return float((b[2] - b[0]) * (b[3] - b[1]))


def _round(v: float) -> float:
    return round(v, 2) if np.isfinite(v) else v
