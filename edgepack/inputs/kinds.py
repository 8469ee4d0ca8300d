"""Input kinds: what differs by what a model *takes* (images, token ids; audio or others later).

An input kind owns reading calibration / validation / fine-tuning data for the model, the example inputs for
export and checks, the torch call on a batch of samples, the ONNX export settings, the golden inputs, the files
and preprocessing record the device runner needs, and which INT8 recipe and pruning method suit it. Stages and
backends ask the kind; they never test what kind of model it is. `for_model` picks the kind.

A new input kind is one class here with the same methods (see `ImageInput`), plus its runner input code in
bundle/templates/run.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgepack.errors import InputError
from edgepack.inputs import data
from edgepack.inputs.data import Dataset, Inputs
from edgepack.util import ProgressFn, no_progress

#: Below opset 20 GELU exports as Erf, which the TFLite converter cannot convert; opset 20 has one Gelu op
#: (text models and image models with GELU export at it for TFLite targets).
TFLITE_TEXT_OPSET = 20
TOKENIZER_FILE = "tokenizer.json"


class ImageInput:
    """One NCHW float32 image tensor, preprocessed as `Preprocess` says (recorded for the device runner)."""

    name = "image"
    #: which INT8 recipe each format uses (stages/quantize.RECIPES) and how pruning works (stages/prune)
    int8_recipes = {"onnx": "calibrated-search", "tflite": "full-integer"}
    prune_method = "channels"
    layer_diagnosis = True          # the shipped INT8 ONNX rounds activations: per-layer error is meaningful
    shape_flag = "--input-shape N,C,H,W"
    #: what makes the model's inputs, for hints when its outputs look wrong
    preprocessing_flags = "the preprocessing (--mean, --std, --scale)"
    input_names: list[str] | None = None

    def __init__(self, model: Any, config: Any, target: Any):
        self.model, self.config, self.target = model, config, target

    def check(self, onnx_inputs: list[dict] | None = None) -> None:
        """What this kind cannot build, raised before any slow stage (``onnx_inputs``: an ONNX source's inputs)."""
        if onnx_inputs is not None:
            inputs = onnx_inputs
            if len(inputs) != 1:
                raise InputError(f"{self.model.onnx_path.name} has {len(inputs)} inputs "
                                 f"({', '.join(i['name'] for i in inputs)}); image models take one",
                                 hint="export the model with a single image input")
            from edgepack.inputs.model_checks import check_image_input

            check_image_input(self.model.onnx_path)

    def input_shape(self, fixed: tuple[int, ...] | None = None) -> tuple[int, ...]:
        """--input-shape, else ``fixed`` (an ONNX source's own fixed input shape, or the shape a .pt2 program
        was captured at), else the profile's. One image, (1, C, H, W): a 3-D --input-shape reached the photo
        reader as an internal error (exit 70), and a batch of 2 failed after export on the first calibration
        sample (exit 4), since every stage feeds one sample at a time."""
        shape = tuple(self.config.input_shape or fixed or self.target.input_shape)
        said = ",".join(str(int(d)) for d in shape)
        where = "--input-shape" if self.config.input_shape else f"{self.model.name}'s input shape"
        if len(shape) != 4:
            raise InputError(f"{where} {said} has {len(shape)} dimensions; an image model takes 4, N,C,H,W",
                             hint="e.g. --input-shape 1,3,224,224 (a model of other inputs takes an .npz --calib "
                                  "holding them)")
        if int(shape[0]) != 1:
            raise InputError(f"{where} {said} has a batch of {int(shape[0])}; edgepack builds models that take "
                             "one image (batch 1)",
                             hint=f"pass --input-shape 1,{','.join(str(int(d)) for d in shape[1:])}"
                             + ("" if self.config.input_shape else
                                " after exporting the model with batch 1 (or a dynamic batch)"))
        pre = self.config.preprocess
        crop = pre.crop or int(shape[2])
        if pre.resize is not None and pre.resize < crop:
            # the centre crop would not fit: each photo was stretched to it along its short side, out of shape
            raise InputError(f"--resize {pre.resize} is smaller than the {crop}-pixel centre crop "
                             f"({'--crop' if pre.crop else 'the input height'}): the crop does not fit in the resized "
                             "photo", hint=f"pass --resize {crop} or more (e.g. {round(crop / 0.875)}, the usual "
                                           f"crop / 0.875), or a smaller --crop")
        return shape

    def source_shapes(self) -> dict[str, tuple[int, ...]] | None:
        """Per-input shapes to pin an ONNX source's symbolic dimensions to (None: its one input takes the build's
        input shape)."""
        return None

    def pinned_by_name(self, file: str, dims: list[str]) -> tuple[str, str | None]:
        """(the warning, what was guessed or None) when the ONNX source ``file``'s dynamic dimensions ``dims``
        ("input:axis") were pinned to ``source_shapes`` by input name."""
        sizes = ", ".join(f"{k} {list(v)}" for k, v in (self.source_shapes() or {}).items())
        return (f"{file} has dynamic input dimensions {dims} (input:axis), pinned to the sizes of the calibration "
                f"data ({sizes}): the shipped model runs at these sizes only", None)

    def channel_mismatch(self, shape: tuple[int, ...]) -> tuple[str, str] | None:
        """(message, hint) when the channel order cannot give the model's channel count: a grey (1-channel) model
        needs L, an RGB/BGR one 3 channels. Photos were then read as 3 channels into a 1-channel input (exit 70),
        or a grey picture was copied into 3 channels for validation while the bundle's run.py fed it one (a
        build that passed and a runner that crashed on the device)."""
        if len(shape) != 4 or int(shape[1]) not in (1, 3):
            return None
        order = self.config.preprocess.channel_order
        dims = ",".join(str(int(d)) for d in shape)
        if int(shape[1]) == 1 and order != "L":
            return (f"the model takes 1 channel (input {dims}) but the channel order is {order} (3 channels)",
                    "for a grey model pass --channel-order L with one --mean and --std value each, e.g. "
                    "--channel-order L --mean 0.5 --std 0.5")
        if int(shape[1]) == 3 and order == "L":
            return (f"the model takes 3 channels (input {dims}) but the channel order is L (1 channel, grey)",
                    "pass --channel-order RGB (or BGR) with three --mean and --std values; a grey photo is read "
                    "as RGB with three equal channels")
        return None

    def load(self, path: str | None, *, role: str, count: int | None, seed: int, shape: tuple[int, ...],
             progress: ProgressFn = no_progress) -> Dataset:
        """An image folder or .npz (the shipped natural photos when calibrating without --calib)."""
        source = path or (data.default_calibration() if role == "calibration" else None)
        if source is None:
            raise InputError(f"no {role} data given")
        return data.load(source, input_shape=shape, preprocess=self.config.preprocess, count=count, seed=seed,
                         role=role, progress=progress)

    def example_args(self, shape: tuple[int, ...]) -> tuple:
        """Torch inputs of the right shape for export and checks (zeros)."""
        import torch

        return (torch.zeros(*shape),)

    def torch_args(self, x: Inputs) -> tuple:
        """The torch call's positional arguments for samples ``x``."""
        import torch

        return (torch.from_numpy(x),)

    def export_settings(self) -> dict:
        """Keyword arguments for edgepack.backends.onnx.export. A model with GELU (vision transformers, ConvNeXt)
        exports at opset 20 for TFLite targets, as text models do (below 20 GELU is Erf, which the converter
        refuses)."""
        opset = self.target.opset
        if "tflite" in self.target.formats and uses_gelu(self.model.module):
            opset = max(opset, TFLITE_TEXT_OPSET)
        return {"input_names": ["input"], "opset": opset, "hint": None, "shape_flag": self.shape_flag}

    def golden_inputs(self, x: Inputs) -> dict:
        return {"input": x}

    def bundle_files(self, staging: Path) -> None:
        """Files the device runner reads besides the model (none for images)."""

    def preprocess_record(self) -> dict:
        return self.config.preprocess.to_dict()


def savez_arguments(arrays: dict[str, str]) -> str:
    """numpy.savez's keyword arguments for arrays by name, as Python: ``name=value``, and ``**{"name": value}`` for
    a name that is no identifier (ONNX input names such as "input_1:0" or "onnx::Transpose_0"; ``input_1:0=...``
    is a syntax error)."""
    import keyword

    plain = [f"{n}={v}" for n, v in arrays.items() if n.isidentifier() and not keyword.iskeyword(n)]
    other = [f"{n!r}: {v}" for n, v in arrays.items() if not (n.isidentifier() and not keyword.iskeyword(n))]
    return ", ".join(plain + ([f"**{{{', '.join(other)}}}"] if other else []))


def _sized(specs: list[dict], calib: str | None) -> list[dict]:
    """``specs`` with each symbolic dimension after the batch taken from the calibration .npz's array of that input
    (an audio model exported with a dynamic length runs at the length it is calibrated at); unchanged where the
    file cannot tell (load_tensors then names what does not fit)."""
    loose = [s for s in specs if any(_symbolic(d) for d in s["shape"][1:])]
    if not loose or not calib or not str(calib).lower().endswith(".npz"):
        return specs
    shapes = {name: shape for name, (shape, _) in data.npz_headers(calib).items()}
    if len(specs) == 1 and specs[0]["name"] not in shapes and "x" in shapes:
        shapes[specs[0]["name"]] = shapes["x"]
    out = []
    for s in specs:
        have = shapes.get(s["name"])
        if have is not None and len(have) == len(s["shape"]):
            s = {**s, "shape": [s["shape"][0], *(int(h) if _symbolic(d) else d
                                                  for d, h in zip(s["shape"][1:], have[1:], strict=True))]}
        out.append(s)
    return out


def _symbolic(dim: Any) -> bool:
    """An ONNX dimension without a fixed size (a name such as 'batch', or 0 / -1)."""
    return not (isinstance(dim, int) and dim > 0)


def uses_gelu(module: Any) -> bool:
    """Whether a torch module has a GELU layer (torch's nn.GELU, transformers' GELUActivation and the like)."""
    return module is not None and hasattr(module, "modules") and any(
        "gelu" in type(m).__name__.lower() for m in module.modules())


class TextInput(ImageInput):
    """Token ids: {input name: (N, L) int64} arrays, tokenized with the model's tokenizer.json exactly as the
    device runner does (the `tokenizers` library alone)."""

    name = "text"
    int8_recipes = {"onnx": "static-vs-dynamic", "tflite": "full-integer-or-dynamic-range"}
    prune_method = "transformer"
    layer_diagnosis = False         # dynamic INT8 may ship: no rounded activations to diagnose
    shape_flag = "--max-length L"
    preprocessing_flags = "the tokenizer (its own, or --tokenizer) with --max-length"

    def __init__(self, model: Any, config: Any, target: Any):
        super().__init__(model, config, target)
        self.text = model.text
        self.input_names = model.text.input_names

    def check(self, onnx_inputs: list[dict] | None = None) -> None:
        """What text builds do not support, all reported at once."""
        problems, hints = [], []
        if self.config.prune is not None and self.config.prune.ignore:
            problems.append("--prune-ignore does not apply to text models (every encoder layer is pruned alike)")
            hints.append("drop --prune-ignore")
        if self.config.input_shape:
            problems.append("--input-shape does not apply to text models")
            hints.append("set the sequence length with --max-length")
        if self.config.prune is not None and self.model.kind != "torch":
            problems.append("pruning needs a PyTorch model, got an ONNX file")
            hints.append("pass the PyTorch source (a transformers folder, a factory) or drop --prune")
        if not self.config.calib:
            problems.append("text models need calibration texts")
            hints.append("pass --calib texts.txt (one text per line) or a .jsonl / .csv with a text column")
        if problems:
            raise InputError("; ".join(problems), hint="; ".join(hints))

    def input_shape(self, fixed: tuple[int, ...] | None = None) -> tuple[int, ...]:
        return (1, self.text.max_length)

    def source_shapes(self) -> dict[str, tuple[int, ...]] | None:
        """An ONNX text model's token inputs pinned to (1, max_length) by name (its batch and sequence axes may be
        dynamic)."""
        return {n: (1, self.text.max_length) for n in self.input_names}

    def pinned_by_name(self, file: str, dims: list[str]) -> tuple[str, str | None]:
        """A dynamic sequence axis pinned to the build's sequence length: guessed unless --max-length set it."""
        said = f"{file} has a dynamic sequence axis ({', '.join(dims)}), pinned to {self.text.max_length} tokens"
        if self.config.max_length:
            return said + " (--max-length): the shipped model runs at this length only", None
        return (said + " (the tokenizer's length, else 128): the shipped model runs at this length only; "
                "--max-length sets it", said)

    def load(self, path: str | None, *, role: str, count: int | None, seed: int, shape: tuple[int, ...],
             progress: ProgressFn = no_progress) -> Dataset:
        if path is None:
            raise InputError(f"no {role} texts given")
        return data.load_text(path, text=self.text, count=count, seed=seed, role=role,
                              class_names=self._class_names())

    def _class_names(self) -> list[str] | None:
        """--labels, else the model's own id2label: text labels written as class names map to their index."""
        from edgepack.inputs.labels import read_class_names

        if self.config.labels:
            return read_class_names(self.config.labels)
        return list(self.text.labels) if getattr(self.text, "labels", None) else None

    def example_args(self, shape: tuple[int, ...]) -> tuple:
        from edgepack.inputs.text import example_inputs

        return example_inputs(self.input_names, shape[-1])

    def torch_args(self, x: Inputs) -> tuple:
        import torch

        return tuple(torch.from_numpy(x[n]) for n in self.input_names)

    def export_settings(self) -> dict:
        from edgepack.inputs.text import INPUT_ORDER

        opset = self.target.opset
        if "tflite" in self.target.formats:
            opset = max(opset, TFLITE_TEXT_OPSET)
        names = [n for n in INPUT_ORDER if n in self.input_names]
        return {"input_names": names, "opset": opset, "shape_flag": self.shape_flag,
                "hint": f"check forward({', '.join(names)}) runs on int64 (1, {self.text.max_length}) tensors"}

    def golden_inputs(self, x: Inputs) -> dict:
        return dict(x)

    def bundle_files(self, staging: Path) -> None:
        from edgepack.inputs.text import write_device_tokenizer

        write_device_tokenizer(self.text.tokenizer, staging / TOKENIZER_FILE, self.text.settings)

    def preprocess_record(self) -> dict:
        return {"kind": "text", "tokenizer": TOKENIZER_FILE, **self.text.settings}


class TensorsInput(ImageInput):
    """Tensors by input name, as a model with more than one input takes them (an image and a vector of metadata,
    a stereo pair, an image and a prompt embedding), or one input that is not a photo (a waveform, uint8 pixels):
    {input name: (N, ...)} arrays from an .npz holding one array per input, already preprocessed. Shapes and dtypes
    are the ONNX file's (a symbolic batch dimension is 1) or, for a PyTorch forward(a, b), the .npz's arrays named
    after its arguments. INT8 as for images: calibrated static ONNX, full-integer TFLite."""

    name = "tensors"
    shape_flag = "the model file's input shapes"
    preprocessing_flags = "the preprocessing of the .npz's arrays"

    def __init__(self, model: Any, config: Any, target: Any, specs: list[dict]):
        super().__init__(model, config, target)
        # name, shape, dtype of each input: the ONNX file's (its symbolic sizes but the batch taken from the
        # calibration .npz's arrays), or the .npz's for a PyTorch forward(a, b)
        self.specs = _sized(specs, config.calib)
        self.input_names = [s["name"] for s in self.specs]

    def check(self, onnx_inputs: list[dict] | None = None) -> None:
        """What these builds cannot do, reported at once: photos, no calibration data, a shape flag, pruning an
        ONNX file, float inputs other than float32, and symbolic dimensions after the batch that the .npz does not
        fix."""
        from pathlib import Path

        problems, hints = [], []
        odd = [s for s in self.specs if np.issubdtype(np.dtype(s["dtype"]), np.floating) and s["dtype"] != "float32"]
        if odd:
            problems.append(", ".join(f"input '{s['name']}' is {s['dtype']}" for s in odd)
                            + "; edgepack builds models whose float inputs are float32")
            hints.append("export the model with float32 inputs (cast inside the model if it needs another type)")
        if self.config.prune is not None and self.model.kind != "torch":
            problems.append("pruning needs a PyTorch model, got an ONNX file")
            hints.append("pass the PyTorch source (a factory, .pt2) or drop --prune")
        if self.config.input_shape:
            problems.append(f"--input-shape does not apply to a model that takes {self._described()} (its "
                            "shapes are the model file's)")
            hints.append("drop --input-shape")
        if not self.config.calib:
            problems.append(f"{self.model.name} takes {self._described()}: the shipped calibration "
                            "photos cannot feed it")
            hints.append(self._npz_hint())
        for role, path in (("--calib", self.config.calib), ("--val", self.config.val)):
            if path and Path(path).is_dir():
                problems.append(f"{role} {path} is a folder: a model that takes {self._described()} takes an .npz")
                hints.append(self._npz_hint())
        for s in self.specs:
            loose = [i for i, d in enumerate(s["shape"]) if i > 0 and _symbolic(d)]
            if loose or not s["shape"]:
                problems.append(f"input {s['name']} has symbolic dimensions {loose} ({list(s['shape'])}) and the "
                                "calibration data does not fix them")
                hints.append(f"pass --calib an .npz holding {s['name']} as (N, ...) samples of the size it runs at, "
                             "or export the model with fixed sizes for every dimension but the batch")
        if problems:
            raise InputError("; ".join(problems), hint="; ".join(dict.fromkeys(hints)))

    def _described(self) -> str:
        """"2 inputs (image, meta)", or "one float32 input 'wave' of shape ['n', 1, 16000]"."""
        if len(self.specs) > 1:
            return f"{len(self.specs)} inputs ({', '.join(self.input_names)})"
        s = self.specs[0]
        return f"one {s['dtype']} input '{s['name']}' of shape {list(s['shape'])}"

    def _npz_hint(self) -> str:
        arrays = {s["name"]: f"<{s['dtype']} array (N, {', '.join(map(str, s['shape'][1:]))})>" for s in self.specs}
        return f"save the inputs by name, preprocessed: numpy.savez(path, {savez_arguments(arrays)}[, y=labels])"

    def source_shapes(self) -> dict[str, tuple[int, ...]]:
        """Each input's shape to pin the ONNX file's symbolic dimensions to (the batch is 1)."""
        return self.shapes()

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {s["name"]: (1, *(int(d) for d in s["shape"][1:])) for s in self.specs}

    def input_shape(self, fixed: tuple[int, ...] | None = None) -> tuple[int, ...]:
        """The first input's shape (the profile's image size means nothing here); all of them: `shapes`."""
        return self.shapes()[self.input_names[0]]

    def channel_mismatch(self, shape: tuple[int, ...]) -> tuple[str, str] | None:
        return None   # no photos are read

    def load(self, path: str | None, *, role: str, count: int | None, seed: int, shape: tuple[int, ...],
             progress: ProgressFn = no_progress) -> Dataset:
        if path is None:
            raise InputError(f"no {role} data given", hint=self._npz_hint())
        return data.load_tensors(path, specs=self.specs, count=count, seed=seed, role=role, hint=self._npz_hint())

    def example_args(self, shape: tuple[int, ...]) -> tuple:
        import torch

        return tuple(torch.from_numpy(np.zeros(shape, np.dtype(s["dtype"])))
                     for s, shape in zip(self.specs, self.shapes().values(), strict=True))

    def torch_args(self, x: Inputs) -> tuple:
        import torch

        return tuple(torch.from_numpy(x[n]) for n in self.input_names)

    def export_settings(self) -> dict:
        return {**super().export_settings(), "input_names": list(self.input_names)}

    def golden_inputs(self, x: Inputs) -> dict:
        return dict(x)

    def preprocess_record(self) -> dict:
        shapes = self.shapes()
        return {"kind": "tensors", "inputs": [{"name": s["name"], "shape": list(shapes[s["name"]]), "dtype": s["dtype"]}
                                              for s in self.specs]}


KINDS = {"image": ImageInput, "text": TextInput, "tensors": TensorsInput}


def reads_photos(config: Any) -> bool:
    """Whether a build decodes images: a folder as --calib or --val, or the shipped calibration photos (no
    --calib). With .npz samples only, the recorded preprocessing is used by the bundle's run.py alone."""
    from pathlib import Path

    if config.tokenizer:
        return False
    return config.calib is None or any(p and Path(p).is_dir() for p in (config.calib, config.val))


#: integer input dtypes of the tensors kind (uint8 pixels, int64 ids without a tokenizer); a float16 or float64 NCHW
#: input stays an image model, which refuses it with a hint
INTEGER_DTYPES = ("bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64")


def for_model(model: Any, config: Any, target: Any, onnx_inputs: list[dict] | None = None) -> ImageInput:
    """The input kind of a loaded model: text when it carries a tokenizer, tensors for an ONNX file with several
    inputs or one that is not a float32 (N, C, H, W) image (audio, time series, uint8 or integer ids), else
    image."""
    if model.text is not None:
        return KINDS["text"](model, config, target)
    ins = onnx_inputs or []
    if len(ins) > 1 or (ins and (len(ins[0]["shape"]) != 4 or ins[0]["dtype"] in INTEGER_DTYPES)):
        return KINDS["tensors"](model, config, target, ins)  # several inputs, or one that is not an NCHW image
    names = forward_inputs(model.module) if model.kind == "torch" else []
    if len(names) > 1:  # a PyTorch forward(image, meta): the inputs' shapes and dtypes come from the .npz
        return KINDS["tensors"](model, config, target, data.npz_specs(config.calib, names, model.name))
    if len(names) == 1 and (key := _not_an_image(config, names[0])):
        return KINDS["tensors"](model, config, target, data.npz_specs(config.calib, [key], model.name))
    return KINDS["image"](model, config, target)


def _not_an_image(config: Any, name: str) -> str | None:
    """The array of the calibration .npz that feeds a one-input PyTorch model (named after its forward argument,
    else "x") when it is not (N, C, H, W) float samples: a waveform (N, 1, L), a volume (N, 1, D, H, W), uint8
    pixels (as for an ONNX file's input). Such a model was
    built as an image model: photos' preprocessing in the manifest, a run.py that tried to decode the .npz as a
    photo, and a TFLite build that failed (exit 70) feeding its 3-D input."""
    from pathlib import Path

    if not config.calib or Path(config.calib).suffix.lower() != ".npz" or not Path(config.calib).is_file():
        return None
    if config.input_shape and len(config.input_shape) == 4:  # an N,C,H,W shape asked for: an image model, whose
        return None                                            # .npz checks then name a wrong rank or dtype
    headers = data.npz_headers(config.calib)
    key = name if name in headers else "x" if "x" in headers else None
    if key is None:
        return None
    shape, dtype = headers[key]
    return key if len(shape) != 4 or dtype.name in INTEGER_DTYPES else None


def forward_inputs(module: Any) -> list[str]:
    """The required positional inputs of a torch module's forward (none for a module without a plain forward:
    a torch.export program's module, *args)."""
    import inspect

    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError, AttributeError):
        return []
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p.name for p in params if p.kind in kinds and p.default is inspect.Parameter.empty]
