"""Smaller .tflite files with the same numbers: repeated vectors stored once, fused-op tensor names cut short.

The TFLite converter writes a per-channel quantized tensor's parameters as two vectors of its own: float32 scales
and int64 zero points, one per channel. The zero points of symmetric int8 weights and int32 biases are all zero,
so a model of many thin layers carries kilobytes of identical zero vectors (the SSDLite shapes detector: 207 KB
of its 1.39 MB, 15 %: its depthwise 3x3 layers store 9 weight bytes per channel against 16 bytes of zero points).
A FlatBuffer table refers to a vector by offset, so every table can point at one copy (what the FlatBuffers
builders do for strings with ``CreateSharedString``); LiteRT reads the file exactly as before. The converter's
names for fused ops (``model/conv_3/Conv2D;model/add_7/Add;...``) keep their first part, unless that is taken;
graph inputs and outputs keep theirs (runners look them up).

Read and written with LiteRT's own object API (``ai_edge_litert.tools.flatbuffer_utils``, generated from the
schema); nothing here knows the binary layout.
"""
from __future__ import annotations

import hashlib
import logging

import flatbuffers
import numpy as np

log = logging.getLogger(__name__)

_FILE_IDENTIFIER = b"TFL3"
_MAX_FLATBUFFER = 2**31 - 2**20  # larger models keep their weights outside the FlatBuffer (buffer offsets)
_BUFFER_ALIGN = 16  # the converter's alignment of constant data


def compact(data: bytes, input_names: list[str] | None = None, output_names: list[str] | None = None) -> bytes:
    """``data`` (a .tflite flatbuffer) rewritten smaller with every tensor, op and value unchanged; ``data`` itself
    when it cannot be (a model beyond the FlatBuffer size limit, or one this LiteRT's schema cannot read).

    ``input_names`` / ``output_names`` (the source ONNX graph's, in its order) rename the graph's io tensors, which
    the converter calls ``serving_default_input:0`` and ``PartitionedCall:N`` (what an Android app's
    ``getOutputTensor(i).name()`` and Netron show): the serving signature's ``output_k`` takes the k-th output
    name; an input takes its signature key's name when the ONNX graph has an input of that name. The signature
    keys themselves are kept (runners order outputs by them)."""
    if len(data) >= _MAX_FLATBUFFER:
        return data
    from ai_edge_litert.tools import flatbuffer_utils

    try:
        model = flatbuffer_utils.read_model_from_bytearray(bytearray(data))
        if any(b.offset for b in model.buffers or ()):
            return data
        _name_io(model, input_names or [], output_names or [])
        _shorten_names(model)
        builder = _SharingBuilder(max(1024, len(data) // 2))
        builder.Finish(model.Pack(builder), file_identifier=_FILE_IDENTIFIER)
        out = bytes(builder.Output())
    except Exception as exc:  # noqa: BLE001 - a file that cannot be compacted ships as the converter wrote it
        log.warning("TFLite file left as the converter wrote it (compaction failed: %s)", exc)
        return data
    return out if len(out) < len(data) else data


def _name_io(model, input_names: list[str], output_names: list[str]) -> None:
    """Give the main subgraph's io tensors the source model's names, through the serving signature."""
    if not model.signatureDefs or not model.subgraphs:
        return
    sig = next((d for d in model.signatureDefs if d.signatureKey == b"serving_default"), model.signatureDefs[0])
    graph = model.subgraphs[sig.subgraphIndex or 0]
    rename: dict[int, bytes] = {}
    for item in sig.inputs or ():
        if item.name.decode() in input_names:
            rename[int(item.tensorIndex)] = item.name
    outs = {item.name.decode(): int(item.tensorIndex) for item in sig.outputs or ()}
    if sorted(outs) == sorted(f"output_{k}" for k in range(len(output_names))):
        rename.update({outs[f"output_{k}"]: name.encode() for k, name in enumerate(output_names) if name})
    io = {int(i) for i in graph.inputs} | {int(o) for o in graph.outputs}
    if not set(rename) <= io or len(set(rename.values())) != len(rename):
        return
    taken = {t.name for k, t in enumerate(graph.tensors) if k not in rename}
    if taken & set(rename.values()):  # an inner tensor already has the name: keep the converter's names
        return
    for k, name in rename.items():
        graph.tensors[k].name = name


def _shorten_names(model) -> None:
    """The first ';'-separated part of each fused-op tensor name, where no other tensor of its subgraph has it;
    graph inputs and outputs keep their names."""
    for graph in model.subgraphs:
        keep = {int(i) for i in graph.inputs} | {int(o) for o in graph.outputs}
        taken = {graph.tensors[i].name for i in keep}
        for k, tensor in enumerate(graph.tensors):
            if k in keep or not tensor.name or b";" not in tensor.name:
                taken.add(tensor.name)
                continue
            short = tensor.name.split(b";", 1)[0]
            tensor.name = tensor.name if not short or short in taken else short
            taken.add(tensor.name)


class _SharingBuilder(flatbuffers.Builder):
    """A FlatBuffers builder whose numeric vectors are written once per distinct content; later tables refer to
    the first copy. Byte vectors (constant data) are 16-byte aligned, as the converter aligns them."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self._written: dict[tuple, tuple[int, np.ndarray]] = {}
        self._align = 1

    def CreateNumpyVector(self, x: np.ndarray) -> int:  # noqa: N802 - the FlatBuffers API's name
        key = (x.dtype.str, x.shape, hashlib.sha1(np.ascontiguousarray(x).view(np.uint8)).digest())
        hit = self._written.get(key)
        if hit is not None and np.array_equal(hit[1], x):
            return hit[0]
        self._align = _BUFFER_ALIGN if x.dtype == np.uint8 and x.size >= _BUFFER_ALIGN else 1
        try:
            offset = super().CreateNumpyVector(x)
        finally:
            self._align = 1
        self._written[key] = (offset, x)
        return offset

    def StartVector(self, elemSize: int, numElems: int, alignment: int) -> int:  # noqa: N802, N803 - API names
        return super().StartVector(elemSize, numElems, max(alignment, self._align))
