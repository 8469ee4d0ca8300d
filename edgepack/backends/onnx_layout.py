"""Layouts of a user's model the build changes: a channels-last (NHWC) image input turned channels-first (NCHW),
and a classifier's (N, C, 1, 1) scores flattened to (N, C).

tf2onnx writes a Keras model's image input as it was, (N, H, W, C), and its graph opens with a Transpose to NCHW.
edgepack's image pipeline (photos, golden input, run.py, the TFLite conversion, which makes its own NHWC) feeds
NCHW: such a file was refused with "input shape 1,224,224,3 has 224 channels" and a hint (--input-shape
1,3,224,224) that then failed as "does not fit". When the build reads photos it puts a Transpose (NCHW -> NHWC) in
front of the graph instead (an .npz of NHWC samples keeps the file's layout, as before); onnxslim folds it into the
model's own, so the shipped model takes NCHW (said in a warning and in the manifest's
stages.onnx_source.input_layout_from). A 1x1-convolution head's class scores, (N, C, 1, 1) (SqueezeNet,
Caffe-converted models), are flattened to (N, C) by a Flatten after the graph, under the output's own name
(stages.scores_flattened_from in the manifest), so every classifier reaches validation, the TFLite converter and
run.py as (N, C)."""

from __future__ import annotations

from typing import Any

#: channel counts of an image input (grey, RGB/BGR)
IMAGE_CHANNELS = (1, 3)


def is_nhwc_image(shape: list[Any] | tuple[Any, ...], dtype: str = "float32") -> bool:
    """Whether an input of ``shape`` (ints, or strings for symbolic dimensions) and numpy ``dtype`` name is a
    channels-last image: 4-D float32, its last dimension 1 or 3 and its second dimension neither."""
    if len(shape) != 4 or dtype != "float32":
        return False
    last, second = shape[3], shape[1]
    return isinstance(last, int) and last in IMAGE_CHANNELS and not (isinstance(second, int)
                                                                      and second in IMAGE_CHANNELS)


def nchw(shape: list[Any] | tuple[Any, ...]) -> list[Any]:
    """(N, H, W, C) -> (N, C, H, W)."""
    return [shape[0], shape[3], shape[1], shape[2]]


def as_built(inputs: list[dict]) -> list[dict]:
    """An ONNX file's inputs (backends.onnx.io_details) as the build sees them: one NHWC image input as NCHW."""
    if len(inputs) == 1 and is_nhwc_image(inputs[0]["shape"], inputs[0]["dtype"]):
        return [{**inputs[0], "shape": nchw(inputs[0]["shape"]), "layout": "NCHW"}]
    return inputs


def fed_nchw(spec: dict, input_shape: tuple[int, ...] | list[int]) -> bool:
    """Whether an NHWC image input (``spec``: an io_details row) is to be made NCHW: the build's ``input_shape`` is
    channels-first (it reads photos; an .npz of NHWC samples keeps the file's own layout)."""
    shape = spec["shape"]
    return (is_nhwc_image(shape, spec["dtype"]) and len(input_shape) == 4
            and int(input_shape[1]) == shape[3] and int(input_shape[3]) != shape[3])


def front_transpose(model: Any, value: Any) -> list[Any]:
    """Make graph input ``value`` (an NHWC image) NCHW, with a Transpose to NHWC in front of every reader (in the
    main graph and in any subgraph). Returns the input's NHWC dimensions as they were (ints or names)."""
    import onnx

    dims = value.type.tensor_type.shape.dim
    before = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims]
    inner = _unused_name(model.graph, f"{value.name}_nhwc")
    for graph in _graphs(model.graph):
        for node in graph.node:
            node.input[:] = [inner if i == value.name else i for i in node.input]
        for out in graph.output:  # the input passed straight through as an output: it stays the NHWC picture
            if out.name == value.name:
                out.name = inner
    reordered = [onnx.TensorShapeProto.Dimension() for _ in range(4)]
    for new, old in zip(reordered, (dims[0], dims[3], dims[1], dims[2]), strict=True):
        new.CopyFrom(old)
    del dims[:]
    dims.extend(reordered)
    model.graph.node.insert(0, onnx.helper.make_node("Transpose", [value.name], [inner], perm=[0, 2, 3, 1],
                                                     name="edgepack_nchw_to_nhwc"))
    return before


def _graphs(graph: Any):
    """``graph`` and every subgraph (If / Loop / Scan bodies) below it: they may read the input by name."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _graphs(sub)


def _unused_name(graph: Any, name: str) -> str:
    taken = {t for g in _graphs(graph) for n in g.node for t in (*n.input, *n.output)}
    taken |= {v.name for v in (*graph.input, *graph.output, *graph.initializer)}
    while name in taken:
        name += "_"
    return name


def flatten_scores(path: Any) -> list[Any] | None:
    """The ONNX file's first output, when it is (N, C, 1, 1), made (N, C) in place by a Flatten under the same
    name; returns its shape before (None: nothing changed)."""
    import onnx

    model = onnx.load(str(path))
    out = model.graph.output[0]
    dims = out.type.tensor_type.shape.dim
    shape = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims]
    if len(shape) != 4 or shape[2:] != [1, 1]:
        return None
    inner = _unused_name(model.graph, f"{out.name}_nc11")
    for node in model.graph.node:
        node.output[:] = [inner if o == out.name else o for o in node.output]
        node.input[:] = [inner if i == out.name else i for i in node.input]  # another reader of the scores
    model.graph.node.append(onnx.helper.make_node("Flatten", [inner], [out.name], axis=1,
                                                  name="edgepack_flatten_scores"))
    del dims[2:]
    onnx.save(model, str(path))
    return shape
