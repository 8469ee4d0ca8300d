"""Image classifiers saved by transformers (`model.save_pretrained(dir)` and the image processor's
`save_pretrained(dir)`): ViT, DeiT, BEiT, ConvNeXt, MobileViT, EfficientNet, ResNet, Swin ... with a
*ForImageClassification head, loaded offline from model.safetensors with no remote code.

The folder also says how images become inputs (preprocessor_config.json): that is read into edgepack's
`Preprocess` fields (resize, crop, scale, mean, std) so the build calibrates, validates and writes run.py with the
model's own preprocessing; what the user set on the command line or in the config wins (api._model_preprocessing).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from edgepack.errors import InputError
from edgepack.util import require


def load_folder(folder: Path) -> tuple[Any, tuple[int, ...], list[str] | None, dict | None]:
    """(module whose forward(pixel_values) returns (N, num_labels) logits, input shape (1, C, H, W), class names
    from id2label (None for the LABEL_i placeholders), preprocessing fields from preprocessor_config.json)."""
    from edgepack.inputs.text import offline_env

    if not (folder / "model.safetensors").is_file():
        pickled = any(folder.glob("*.bin"))
        raise InputError(f"{folder} has no model.safetensors" + (" (pickled *.bin weights only: refused)" if pickled
                                                                  else ""),
                         hint="re-save with model.save_pretrained(dir, safe_serialization=True)")
    require(("transformers", "safetensors"), extra="text", what="a transformers image model")
    offline_env()
    import torch
    from transformers import AutoConfig, AutoModelForImageClassification

    config = AutoConfig.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = AutoModelForImageClassification.from_pretrained(
                str(folder), local_files_only=True, trust_remote_code=False, use_safetensors=True)
    except (ValueError, OSError, KeyError) as exc:
        raise InputError(f"cannot load {folder} as an image classifier: {str(exc).splitlines()[0][:240]}",
                         hint="the folder needs a built-in architecture's config.json with a "
                              "*ForImageClassification head and model.safetensors") from None

    class _HFImageClassifier(torch.nn.Module):
        """A transformers image classifier as forward(pixel_values) -> logits."""

        def __init__(self, inner: Any):
            super().__init__()
            self.model = inner

        def forward(self, pixel_values):
            return self.model(pixel_values=pixel_values).logits

    size = getattr(config, "image_size", 224)
    height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[-1]))
    shape = (1, int(getattr(config, "num_channels", 3)), int(height), int(width))
    id2label = getattr(config, "id2label", None) or {}
    names = [str(id2label[i]) for i in sorted(id2label)]
    labels = None if all(n == f"LABEL_{i}" for i, n in enumerate(names)) else names
    return _HFImageClassifier(model).eval(), shape, labels, preprocessing(folder, height)


#: the key of a note on how edgepack's preprocessing differs from the declared one (said as a warning, not a field)
NOTE = "_note"


def _squeezed(name: str, cfg: dict) -> dict:
    """{NOTE: a warning} when the processor resizes to an exact height x width without a centre crop (ViT's):
    edgepack keeps the aspect ratio and crops, so the two differ on photos of another aspect ratio; else {}."""
    size = cfg.get("size")
    if not isinstance(size, dict) or "height" not in size or cfg.get("do_center_crop"):
        return {}
    return {NOTE: f"{name} resizes every photo to {size['height']} x {size.get('width', size['height'])} (aspect "
                  "ratio not kept); edgepack resizes the short side and centre-crops, so a photo of another aspect "
                  "ratio loses its edges instead of being squeezed. Crop your photos to the model's aspect ratio "
                  "for the two to agree"}


def preprocessing(folder: Path, height: int) -> dict | None:
    """Preprocess fields from ``folder``/preprocessor_config.json: resize (the short side), crop (the centre
    crop's height), scale (the rescale factor), mean and std; None without the file. A processor that resizes to
    an exact height x width is read as resize and crop of that height (edgepack keeps the aspect ratio)."""
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        return None
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{path} is not valid JSON ({exc})", hint="re-save the image processor") from None
    out: dict = {}
    size = cfg.get("size")
    if isinstance(size, dict) and "shortest_edge" in size and cfg.get("crop_pct"):  # ConvNeXt: resize / crop_pct
        out["crop"] = int(size["shortest_edge"])
        out["resize"] = int(round(size["shortest_edge"] / float(cfg["crop_pct"])))
    elif isinstance(size, dict) and "shortest_edge" in size:
        out["resize"] = int(size["shortest_edge"])
    elif isinstance(size, dict) and "height" in size:
        out["resize"] = out["crop"] = int(size["height"])
    elif isinstance(size, int):
        out["resize"] = int(size)
    crop = cfg.get("crop_size")
    if cfg.get("do_center_crop") and isinstance(crop, dict) and "height" in crop:
        out["crop"] = int(crop["height"])
    elif cfg.get("do_center_crop") and isinstance(crop, int):
        out["crop"] = int(crop)
    if "crop" not in out and "resize" in out and out["resize"] < height:
        out["resize"] = height
    out.update(_squeezed(path.name, cfg))
    out["scale"] = float(cfg.get("rescale_factor", 1 / 255)) if cfg.get("do_rescale", True) else 1.0
    if cfg.get("do_normalize", True) and cfg.get("image_mean") is not None and cfg.get("image_std") is not None:
        out["mean"] = tuple(float(v) for v in cfg["image_mean"])
        out["std"] = tuple(float(v) for v in cfg["image_std"])
    elif not cfg.get("do_normalize", True):
        channels = 3
        out["mean"], out["std"] = (0.0,) * channels, (1.0,) * channels
    return out
