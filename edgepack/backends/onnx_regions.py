"""Regions of an ONNX graph: the nodes that must run in float for a tensor never to be rounded to INT8.

Used by the accuracy search (edgepack.quantize.diagnose ranks activations by their cost at the outputs) and by the
TFLite conversion (edgepack.backends.tflite keeps the same layers out of the INT8 copy's bias correction).
"""

from __future__ import annotations

#: ops that read a rounded activation without computing on it (a ReLU the quantizer folded into its Q range, a
#: shape change): a tensor kept in float is followed through them to the compute ops that read it
PASS_THROUGH = frozenset({"Clip", "Relu", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze"})


def float_region(fmodel, tensor: str) -> list[str]:
    """Names of the nodes to keep in float so that ``tensor`` is never rounded: its producer (with the Conv/Gemm
    behind a fused Clip/Relu) and every compute node reading it (through pass-through ops), in graph order. The
    quantizer rounds a tensor at the input of any quantized reader, so excluding its producer alone (what
    ``sensitive_nodes`` gives) leaves the activation rounded."""
    producer = {o: n for n in fmodel.graph.node for o in n.output}
    readers: dict[str, list] = {}
    for n in fmodel.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    chosen = set()
    node = producer.get(tensor)
    while node is not None:
        chosen.add(node.name)
        inner = producer.get(node.input[0]) if node.op_type in ("Clip", "Relu") and node.input else None
        node = inner if inner is not None and len(readers.get(node.input[0], ())) == 1 else None
    frontier = [tensor]
    while frontier:
        t = frontier.pop()
        for r in readers.get(t, ()):
            if r.name in chosen:
                continue
            chosen.add(r.name)
            if r.op_type in PASS_THROUGH:
                frontier.extend(r.output)
            elif len(after := readers.get(r.output[0], ())) == 1 and after[0].op_type in ("Clip", "Relu"):
                chosen.add(after[0].name)  # the reader's fused activation runs with it
    return [n.name for n in fmodel.graph.node if n.name and n.name in chosen]
