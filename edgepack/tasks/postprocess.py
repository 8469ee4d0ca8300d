"""Float post-processing of detection and segmentation outputs, numpy only: the same file runs in validation
(edgepack.tasks.detect / .segment import it) and on the device (the bundle stage copies it beside run.py as
postprocess.py). It must therefore import nothing but numpy.

Detection outputs: one (N, K, 4 + C) array (xyxy boxes in model-input pixels, then C class scores), one
(N, 4 + C, K) array with K >= 4 (4 + C) (ultralytics' YOLOv8 / YOLO11 export: cx, cy, w, h, then C class scores;
`yolo_layout`), or two arrays, boxes (N, K, 4) and scores (N, K, C), in either order; ``box_format`` (BOX_FORMATS)
names the layout where the shape cannot tell (YOLOv5's (N, K, 5 + C): cx, cy, w, h, objectness, C class scores,
score = objectness x class score). A candidate's class is its
best score; those scoring below ``score_threshold`` are dropped, then class-wise greedy NMS (the algorithm of
torchvision.ops.batched_nms, which tests/test_tasks.py checks it against) keeps at most ``max_detections``.

Segmentation outputs: (N, C, H, W) class scores (mask = argmax) or an (N, 1, H, W) probability map
(mask = p >= ``threshold``).
"""

import numpy as np

SCORE_THRESHOLD = 0.05           # validation: mAP counts every box from here up, as COCO evaluation does
DISPLAY_SCORE_THRESHOLD = 0.3    # the bundle's run.py prints (and report pictures draw) boxes from here up
NMS_IOU = 0.5
MAX_DETECTIONS = 100
PROB_THRESHOLD = 0.5


#: how one detection output's candidates are laid out (``box_format``): "xyxy" x1, y1, x2, y2 then class
#: scores; "cxcywh" cx, cy, w, h then class scores (YOLOv8 / YOLO11); "yolov5" cx, cy, w, h, objectness, then class
#: scores (YOLOv5 / YOLOv7 exports; a candidate's score is objectness x class score); "auto" see `resolve_format`
BOX_FORMATS = ("auto", "xyxy", "cxcywh", "yolov5")


def yolo_layout(shape):
    """Whether one detection output of ``shape`` is (N, W, K) with K >= 4 W: candidates along the last axis, the
    layout of ultralytics' YOLOv8 / YOLO11 ONNX and TFLite exports ((1, 84, 8400) at 640 px). Shapes with
    W <= K < 4 W are read as (N, K, W)."""
    return (len(shape) == 3 and all(isinstance(d, (int, np.integer)) for d in shape[1:])
            and shape[1] > 4 and shape[2] >= 4 * shape[1])


def resolve_format(shape, box_format="auto"):
    """The box format one output of ``shape`` is read with: ``box_format`` itself unless "auto", which reads
    (N, W, K) with K >= 4 W (`yolo_layout`) as cxcywh, anything else as xyxy."""
    if box_format != "auto":
        return box_format
    return "cxcywh" if yolo_layout(shape) else "xyxy"


def _xyxy(boxes):
    centre, size = boxes[..., :2], boxes[..., 2:4]
    return np.concatenate([centre - size / 2, centre + size / 2], -1)


def split_outputs(outs, box_format="auto"):
    """(boxes (N, K, 4) xyxy, scores (N, K, C)) from the raw outputs; ValueError when they do not fit."""
    outs = [np.asarray(o, np.float32) for o in (outs if isinstance(outs, (list, tuple)) else [outs])]
    if box_format not in BOX_FORMATS:
        raise ValueError(f"box format {box_format!r} is not one of {', '.join(BOX_FORMATS)}")
    if len(outs) == 1 and outs[0].ndim == 3:
        out, fmt = outs[0], resolve_format(outs[0].shape, box_format)
        if yolo_layout(out.shape):
            out = out.transpose(0, 2, 1)
        first = 5 if fmt == "yolov5" else 4
        if out.shape[-1] > first:
            boxes = out[..., :4] if fmt == "xyxy" else _xyxy(out[..., :4])
            return boxes, out[..., 5:] * out[..., 4:5] if fmt == "yolov5" else out[..., 4:]
    if len(outs) == 2 and all(o.ndim == 3 for o in outs) and box_format != "yolov5":
        boxes = 0 if outs[0].shape[-1] == 4 else 1
        return (_xyxy(outs[boxes]) if box_format == "cxcywh" else outs[boxes]), outs[1 - boxes]
    raise ValueError(f"outputs shaped {[list(o.shape) for o in outs]} are not "
                     + ("one (N, K, 5 + C) output" if box_format == "yolov5" else
                        "(N, K, 4 + C) or boxes (N, K, 4) + scores (N, K, C)"))


def iou(box, boxes):
    """IoU of one xyxy box with each of ``boxes`` (M, 4)."""
    x1, y1 = np.maximum(box[0], boxes[:, 0]), np.maximum(box[1], boxes[:, 1])
    x2, y2 = np.minimum(box[2], boxes[:, 2]), np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def nms(boxes, scores, classes, iou_threshold=NMS_IOU):
    """Indices kept by class-wise greedy NMS, best score first (ties: lower index first)."""
    order = np.lexsort((np.arange(len(scores)), -scores))
    keep = []
    suppressed = np.zeros(len(scores), bool)
    for pos, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(int(i))
        rest = order[pos + 1:]
        same = rest[(classes[rest] == classes[i]) & ~suppressed[rest]]
        if len(same):
            suppressed[same[iou(boxes[i], boxes[same]) > iou_threshold]] = True
    return np.asarray(keep, np.int64)


def detections(outs, score_threshold=SCORE_THRESHOLD, iou_threshold=NMS_IOU, max_detections=MAX_DETECTIONS,
               box_format="auto"):
    """Per sample: {"boxes": (M, 4) xyxy, "scores": (M,), "classes": (M,)}, best first, after NMS."""
    boxes, scores = split_outputs(outs, box_format)
    found = []
    for b, s in ((boxes[i], scores[i]) for i in range(len(boxes))):  # no zip(strict=): devices run old Pythons
        cls, best = s.argmax(-1), s.max(-1)
        cand = np.flatnonzero(best >= score_threshold)
        kept = cand[nms(b[cand].astype(np.float64), best[cand], cls[cand], iou_threshold)][:max_detections]
        found.append({"boxes": b[kept].astype(np.float32), "scores": best[kept].astype(np.float32),
                      "classes": cls[kept].astype(np.int64)})
    return found


def masks(out, threshold=PROB_THRESHOLD):
    """(N, H, W) int64 class masks from (N, C, H, W) scores or an (N, 1, H, W) probability map."""
    out = np.asarray(out)
    if out.ndim == 3:  # (N, H, W): a map without a channel axis
        out = out[:, None]
    if out.shape[1] == 1:
        return (out[:, 0] >= threshold).astype(np.int64)
    return out.argmax(1).astype(np.int64)


def to_nchw(out, in_hw):
    """A 4-D TFLite output in NCHW: onnx2tf turns most 4-D outputs into NHWC but leaves some in NCHW; the
    output is kept when only its last two axes have the (NHWC) input's aspect ratio, transposed otherwise."""
    if out.ndim != 4:
        return out
    a, b, c = out.shape[1:]

    def spatial(h, w):
        return in_hw is not None and h * int(in_hw[1]) == w * int(in_hw[0])

    return out if spatial(b, c) and not spatial(a, b) else out.transpose(0, 3, 1, 2)
