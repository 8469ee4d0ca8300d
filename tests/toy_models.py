"""Tiny seeded models for tests: built in milliseconds, shaped like real edge CNNs.

`tiny_cnn` has what breaks converters and quantizers in real models: BatchNorm, ReLU6,
a depthwise convolution, a residual add, global pooling and a linear classifier.
"""

from __future__ import annotations

import torch
from torch import nn


class TinyCNN(nn.Module):
    def __init__(self, in_ch: int = 3, num_classes: int = 10, width: int = 16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_ch, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(width, width, 3, 1, 1, groups=width, bias=False), nn.BatchNorm2d(width),
                                nn.ReLU6())
        self.pw = nn.Sequential(nn.Conv2d(width, width, 1, bias=False), nn.BatchNorm2d(width))
        self.head = nn.Sequential(nn.Conv2d(width, 2 * width, 1), nn.ReLU6())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.pw(self.dw(x))
        x = self.pool(self.head(x)).flatten(1)
        return self.classifier(x)


def tiny_cnn() -> nn.Module:
    """Seeded random-weight TinyCNN for 1x3x32x32 inputs (a factory for `package.module:factory`)."""
    torch.manual_seed(0)
    model = TinyCNN()
    with torch.no_grad():  # non-trivial BatchNorm statistics, as in a trained model
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def tiny_cnn_float64() -> nn.Module:
    """tiny_cnn after model.double(): float64 weights, which a float32 input does not fit."""
    return tiny_cnn().double()


def tiny_cnn_float64_head() -> nn.Module:
    """tiny_cnn with only its classifier made float64 (a partly converted model)."""
    model = tiny_cnn()
    model.classifier.double()
    return model


def digits_cnn() -> nn.Module:
    """Untrained TinyCNN for 1x1x16x16 digits; tests load trained weights with --weights."""
    torch.manual_seed(0)
    return TinyCNN(in_ch=1, num_classes=10).eval()


class OutlierNet(nn.Module):
    """conv-ReLU-conv-ReLU-pool-linear for 1x1x16x16 digits. `inject_outlier` makes it hard for INT8."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, 1, 1)
        self.conv2 = nn.Conv2d(width, width, 3, 2, 1)
        self.fc = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(x.mean((2, 3)))


def inject_outlier(model: OutlierNet, scale: float = 256.0) -> OutlierNet:
    """A function-preserving change that real networks show by accident: one channel of conv1's
    output is `scale` times larger than the others (conv1's channel 0 scaled up, conv2's matching
    input weights scaled down; ReLU is positively homogeneous, so FP32 outputs are unchanged).
    With one uint8 range per tensor, that channel takes the whole range and the other channels are
    left with a handful of levels: plain post-training INT8 loses many points of accuracy."""
    with torch.no_grad():
        model.conv1.weight[0] *= scale
        model.conv1.bias[0] *= scale
        model.conv2.weight[:, 0] /= scale
    return model


def outlier_net() -> nn.Module:
    """Factory: untrained OutlierNet; tests load trained (outlier-injected) weights with --weights."""
    torch.manual_seed(0)
    return OutlierNet().eval()


def export_text(module, max_length, path, opset=17, input_names=None):
    """Export a text model the way the build does (edgepack.backends.onnx.export_args with token inputs)."""
    from edgepack.backends.onnx import export_args
    from edgepack.inputs.text import INPUT_ORDER, example_inputs

    names = [n for n in INPUT_ORDER if n in (input_names or INPUT_ORDER)]
    export_args(module.eval(), example_inputs(names, max_length), path, input_names=names, opset=opset)
    return {"inputs": names, "max_length": max_length, "opset": opset}


class TinySegmenter(nn.Module):
    """(1, 3, 16, 16) -> (1, 3, 16, 16) class scores: the colour channels plus a small seeded conv branch, so the
    argmax follows the dominant colour (what the tests' PNG masks label) and INT8 has something to round."""

    def __init__(self, classes: int = 3, width: int = 8):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1)
        self.conv2 = nn.Conv2d(width, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 4 * x + 0.1 * self.conv2(torch.relu(self.conv1(x)))


def tiny_segmenter() -> nn.Module:
    """Seeded TinySegmenter for 1x3x16x16 inputs scaled to 0-1 (mean 0, std 1)."""
    torch.manual_seed(0)
    return TinySegmenter().eval()


class HardSwishSegmenter(TinySegmenter):
    """TinySegmenter whose branch uses MobileNetV3's hard-swish (ONNX HardSwish)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 4 * x + 0.1 * self.conv2(nn.functional.hardswish(self.conv1(x)))


def hardswish_segmenter() -> nn.Module:
    torch.manual_seed(0)
    return HardSwishSegmenter().eval()


class TinyDetector(nn.Module):
    """(1, 3, 32, 32) -> (1, 16, 4 + 3): one candidate per 8x8 cell of a 4x4 grid, its box the cell (plus a
    small seeded offset) in input pixels, class c scored by how much colour c fills the cell. With
    ``two_outputs`` it returns boxes (1, 16, 4) and scores (1, 16, 3) separately."""

    def __init__(self, classes: int = 3, grid: int = 4, size: int = 32, width: int = 8, two_outputs: bool = False):
        super().__init__()
        self.two_outputs = two_outputs
        self.feat = nn.Conv2d(3, width, 3, 1, 1)
        self.pool = nn.AvgPool2d(size // grid)
        self.cls = nn.Conv2d(3 + width, classes, 1)
        self.reg = nn.Conv2d(3 + width, 4, 1)
        cell = size // grid
        ys, xs = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
        anchors = torch.stack([xs * cell, ys * cell, xs * cell + cell, ys * cell + cell], -1).reshape(-1, 4)
        self.register_buffer("anchors", anchors.float())
        with torch.no_grad():
            self.cls.weight.mul_(0.1)
            self.cls.weight[:, :3, 0, 0] = 12 * torch.eye(classes, 3) - 4 * (1 - torch.eye(classes, 3))
            self.cls.bias.fill_(-5.0)
            self.reg.weight.mul_(0.1)

    def forward(self, x: torch.Tensor):
        h = torch.cat([self.pool(x), self.pool(torch.relu(self.feat(x)))], 1)
        scores = torch.sigmoid(self.cls(h)).flatten(2).transpose(1, 2)
        boxes = self.anchors + torch.tanh(self.reg(h)).flatten(2).transpose(1, 2)
        return (boxes, scores) if self.two_outputs else torch.cat([boxes, scores], -1)


def tiny_detector() -> nn.Module:
    """Seeded TinyDetector (one (1, 16, 7) output) for 1x3x32x32 inputs scaled to 0-1 (mean 0, std 1)."""
    torch.manual_seed(0)
    return TinyDetector().eval()


def tiny_detector_two_outputs() -> nn.Module:
    """Seeded TinyDetector returning boxes (1, 16, 4) and scores (1, 16, 3)."""
    torch.manual_seed(0)
    return TinyDetector(two_outputs=True).eval()


class ImageAndVector(nn.Module):
    """Two inputs (an image and a metadata vector) and two outputs (class logits and an auxiliary head): the
    shape of a model that several-input builds (inputs.kinds.TensorsInput) take."""

    def __init__(self):
        super().__init__()
        self.image = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU(),
                                   nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.vector = nn.Sequential(nn.Linear(8, 32), nn.ReLU())
        self.head = nn.Linear(64, 5)
        self.aux = nn.Linear(64, 2)

    def forward(self, image: torch.Tensor, meta: torch.Tensor):
        h = torch.cat([self.image(image), self.vector(meta)], 1)
        return self.head(h), self.aux(h)


class ImageAndUnusedVector(ImageAndVector):
    """forward(image, meta) that never reads meta: the ONNX exporter leaves the input out."""

    def forward(self, image: torch.Tensor, meta: torch.Tensor):
        h = self.image(image)
        return self.head(torch.cat([h, h], 1))


def image_and_unused_vector() -> nn.Module:
    torch.manual_seed(0)
    return ImageAndUnusedVector().eval()


def image_and_vector() -> nn.Module:
    """Seeded ImageAndVector for (N, 3, 32, 32) images and (N, 8) vectors."""
    torch.manual_seed(0)
    return ImageAndVector().eval()


def export_image_and_vector(path) -> None:
    """`image_and_vector` as ONNX with named inputs and a dynamic batch, as users export several-input models."""
    batch = {0: "n"}
    torch.onnx.export(image_and_vector(), (torch.zeros(1, 3, 32, 32), torch.zeros(1, 8)), str(path),
                      input_names=["image", "meta"], output_names=["logits", "aux"], opset_version=17,
                      dynamic_axes={"image": batch, "meta": batch, "logits": batch, "aux": batch}, dynamo=False)


def waveform_classifier() -> nn.Module:
    """A 1-D convolutional classifier of (N, 1, 1600) waveforms (one rank-3 input, as audio models take)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv1d(1, 16, 9, stride=4, padding=4), nn.ReLU(),
                         nn.Conv1d(16, 32, 9, stride=4, padding=4), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(),
                         nn.Linear(32, 4)).eval()


def export_waveform_classifier(path) -> None:
    """waveform_classifier as ONNX."""
    model = waveform_classifier()
    batch = {0: "n"}
    torch.onnx.export(model, (torch.zeros(1, 1, 1600),), str(path), input_names=["wave"], output_names=["logits"],
                      dynamic_axes={"wave": batch, "logits": batch}, opset_version=17, dynamo=False)


class Uint8Pixels(nn.Module):
    """Takes uint8 pixels (N, 3, 32, 32) and scales them itself, as many exported mobile models do."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(16, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.float() / 255.0)


def export_uint8_pixels(path) -> None:
    torch.manual_seed(0)
    torch.onnx.export(Uint8Pixels().eval(), (torch.zeros(1, 3, 32, 32, dtype=torch.uint8),), str(path),
                      input_names=["pixels"], output_names=["logits"], opset_version=17, dynamo=False)


class YoloLayoutDetector(TinyDetector):
    """TinyDetector's candidates in the layout of ultralytics' YOLOv8 / YOLO11 exports: one (1, 4 + 3, K) output,
    boxes as cx, cy, w, h; each candidate repeated four times (K = 64 >= 4 (4 + 3), as real heads have thousands)."""

    def __init__(self):
        super().__init__(two_outputs=True)

    def forward(self, x: torch.Tensor):
        boxes, scores = super().forward(x)
        boxes, scores = boxes.repeat_interleave(4, 1), scores.repeat_interleave(4, 1)
        centre, size = (boxes[..., :2] + boxes[..., 2:]) / 2, boxes[..., 2:] - boxes[..., :2]
        return torch.cat([centre, size, scores], -1).transpose(1, 2)


class Yolov5LayoutDetector(TinyDetector):
    """TinyDetector's candidates in YOLOv5's layout: one (1, K, 5 + 3) output, cx, cy, w, h, objectness, then class
    scores, a candidate's score being objectness x class score (objectness is the best score here, and the class
    scores are TinyDetector's divided by objectness + 0.5: each box keeps its class, and its score rises with
    TinyDetector's)."""

    def __init__(self):
        super().__init__(two_outputs=True)

    def forward(self, x: torch.Tensor):
        boxes, scores = super().forward(x)
        centre, size = (boxes[..., :2] + boxes[..., 2:]) / 2, boxes[..., 2:] - boxes[..., :2]
        objectness = scores.amax(-1, keepdim=True)
        return torch.cat([centre, size, objectness, scores / (objectness + 0.5)], -1)


def tiny_detector_yolov5() -> nn.Module:
    """Seeded Yolov5LayoutDetector: (1, 16, 8) for 1x3x32x32 inputs."""
    torch.manual_seed(0)
    return Yolov5LayoutDetector().eval()


def tiny_detector_yolo_layout() -> nn.Module:
    """Seeded YoloLayoutDetector: (1, 7, 64) for 1x3x32x32 inputs."""
    torch.manual_seed(0)
    return YoloLayoutDetector().eval()


class HardActivations(torch.nn.Module):
    """nn.Hardswish (ONNX HardSwish), nn.Hardsigmoid in a squeeze-excite gate (HardSigmoid) and the spelled-out
    x * clip(x + 3, 0, 6) / 6 some exporters write (PaddlePaddle's hardswish)."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Conv2d(8, 8, 3, padding=1)
        self.fc = torch.nn.Conv2d(8, 8, 1)

    def forward(self, x):
        y = torch.nn.functional.hardswish(self.c1(x))
        y = y * torch.nn.functional.hardsigmoid(self.fc(y.mean((2, 3), keepdim=True)))
        z = self.c2(y)
        return z * torch.clamp(z + 3, 0, 6) / 6


class NearestUpsampling(torch.nn.Module):
    """A feature-pyramid neck in miniature: nearest upsamplings by 2 and by 4 between convolutions (ONNX Resize,
    asymmetric / floor as torch exports them), and one bilinear upsampling that must stay a Resize."""

    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 8, 3, stride=4, padding=1)
        self.c2, self.c3 = torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x):
        F = torch.nn.functional  # noqa: N806
        a = torch.relu(self.c1(x))
        y = torch.relu(self.c2(F.interpolate(a, scale_factor=2, mode="nearest")))
        z = F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=False)
        return self.c3(F.interpolate(a, scale_factor=4, mode="nearest") + z)


class TransposedHead(torch.nn.Module):
    """DBNet's head in miniature: conv, then two stride-2 transposed convolutions, the last to one channel with its
    bias added as a (1, 1, 1, 1) constant (as Paddle exports it: the converter fuses it with that shape)."""

    def __init__(self):
        super().__init__()
        self.c = torch.nn.Conv2d(3, 8, 3, stride=4, padding=1)
        self.t1 = torch.nn.ConvTranspose2d(8, 8, 2, stride=2)
        self.t2 = torch.nn.ConvTranspose2d(8, 1, 2, stride=2, bias=False)
        self.b = torch.nn.Parameter(torch.full((1, 1, 1, 1), 0.3))

    def forward(self, x):
        return torch.sigmoid(self.t2(torch.relu(self.t1(torch.relu(self.c(x))))) + self.b)


class FunctionalGelu(nn.Module):
    """A CNN whose activation is the functional F.gelu (no nn.GELU module to find): below opset 20 the exporter
    spells it with Erf, which the TFLite converter refuses."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        return self.head(torch.nn.functional.gelu(self.conv(x)).mean((2, 3)))


def functional_gelu() -> nn.Module:
    torch.manual_seed(0)
    return FunctionalGelu().eval()


class ImageAndY(nn.Module):
    """forward(x, y): a second input that happens to be named y (what an .npz's labels are called)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, 2, 1)
        self.fc = nn.Linear(12, 3)

    def forward(self, x, y):
        return self.fc(torch.cat([torch.relu(self.conv(x)).mean((2, 3)), y], 1))


def image_and_y() -> nn.Module:
    torch.manual_seed(0)
    return ImageAndY().eval()


class Uint8Input(nn.Module):
    """One uint8 pixel input, scaled inside the model."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, 2, 1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x.float() / 255)).mean((2, 3)))


def uint8_input() -> nn.Module:
    torch.manual_seed(0)
    return Uint8Input().eval()


def adaptive_pool_3x3() -> nn.Module:
    """Adaptive pooling of 16 x 16 to 3 x 3 (not a whole divisor): the legacy exporter gives up, the torch.export one
    takes it and writes opset 18 when asked for 17."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d((3, 3)), nn.Flatten(),
                         nn.Linear(72, 4)).eval()


class SameTwice(nn.Module):
    """Returns the same tensor twice."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        y = self.fc(torch.relu(self.conv(x)).mean((2, 3)))
        return y, y


def same_twice() -> nn.Module:
    torch.manual_seed(0)
    return SameTwice().eval()


class PixelTie(nn.Module):
    """Two class scores; ``ripple`` > 0 makes the first sin(ripple * the top-left pixel), so a half-pixel change of
    the input decides the top-1 (a photo the model sees as a near-tie); 0 keeps class 1 always ahead."""

    def __init__(self, ripple: float):
        super().__init__()
        self.conv, self.ripple = nn.Conv2d(3, 4, 3), ripple

    def forward(self, x):
        m = 1e-3 * self.conv(x).mean((1, 2, 3))
        if self.ripple:
            return torch.stack([torch.sin(self.ripple * x[:, 0, 0, 0]) + m, torch.zeros_like(m)], 1)
        return torch.stack([m, m + 1.0], 1)


def pixel_tie() -> nn.Module:
    torch.manual_seed(0)
    return PixelTie(400.0).eval()


def pixel_safe() -> nn.Module:
    torch.manual_seed(0)
    return PixelTie(0.0).eval()


class PositionClasses(nn.Module):
    """A 1-D signal (N, 3, T) -> per-position class ids (N, 1, T) int64 (an in-graph argmax), then the scores they
    are taken from (N, 4, T)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(3, 4, 1)

    def forward(self, x):
        y = self.conv(x)
        return y.argmax(1, keepdim=True), y


def position_classes() -> nn.Module:
    torch.manual_seed(0)
    return PositionClasses().eval()


class BoxesAndMap(nn.Module):
    """SSD-style (N, anchors, 4) rows read off a feature map (the file keeps their order), and the 4-D map itself
    (the file holds it channels-last)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return y.flatten(2).transpose(1, 2), y


def boxes_and_map() -> nn.Module:
    torch.manual_seed(0)
    return BoxesAndMap().eval()


class LogitsAndArgmax(nn.Module):
    """A classifier returning its logits and their argmax (class ids) as a second output."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 8, 3, stride=2), nn.Linear(8, 5)

    def forward(self, x):
        y = self.fc(self.conv(x).relu().mean((2, 3)))
        return y, y.argmax(1)


def logits_and_argmax() -> nn.Module:
    torch.manual_seed(0)
    return LogitsAndArgmax().eval()


def hardswish_cnn() -> nn.Module:
    """Conv -> hard-swish twice, pooled, a linear head: MobileNetV3's activation, whose x * 1/6 edgepack folds
    into a DequantizeLinear scale when it quantizes."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.Hardswish(), nn.Conv2d(8, 16, 3, 2, 1), nn.Hardswish(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5)).eval()
