"""Spell two-operand ONNX Einsum nodes as Transpose + MatMul (+ Reshape) before onnx2tf converts a model.

onnx2tf converts an Einsum by trying every pair of input transpositions on a dummy Keras model and keeping the one
closest to ONNX Runtime on its sample data (onnx2tf/ops/Einsum.py): for the 5-D attention einsums of MaxViT
("B G H I D, B G H J D -> B G H I J") that is 5! x 5! = 14,400 Keras models per node, eight minutes for a
300 kB model, and the pair it kept was wrong (the FP32 .tflite of a small MaxViT differed from ONNX by more
than its output's range). A batched matrix product written as MatMul is converted by onnx2tf's MatMul, which is
exact and instant. Only plain contractions are rewritten: two operands, an explicit output, no ellipsis, no
letter twice in one operand, every letter of an operand either kept in the output or summed against the other
operand. Anything else stays an Einsum. Static shapes are needed (edgepack's exports have them).
"""

from __future__ import annotations

import logging
import math

import numpy as np

log = logging.getLogger(__name__)


def plan(equation: str) -> dict | None:
    """The matrix-product form of ``equation``: batch, left, right and contracted letters with the operands'
    and the output's letters; None when it is not a plain two-operand contraction."""
    eq = equation.replace(" ", "")
    if "->" not in eq or "." in eq:
        return None
    lhs, out = eq.split("->")
    ops = lhs.split(",")
    if len(ops) != 2:
        return None
    a, b = ops
    if any(len(set(s)) != len(s) for s in (a, b, out)) or not set(out) <= set(a) | set(b):
        return None
    batch = [c for c in out if c in a and c in b]
    left = [c for c in out if c in a and c not in b]
    right = [c for c in out if c in b and c not in a]
    contracted = [c for c in a if c in b and c not in out]
    if set(a) != set(batch + left + contracted) or set(b) != set(batch + right + contracted):
        return None  # a letter summed within one operand only
    return {"a": a, "b": b, "out": out, "batch": batch, "left": left, "right": right, "contracted": contracted}


def lower(model) -> tuple[object, int]:
    """(``model`` with every plain Einsum as Transpose/Reshape/MatMul, how many were rewritten). ``model``, an
    onnx.ModelProto, is not changed; it is returned itself when nothing is rewritten."""
    import onnx

    if not any(n.op_type == "Einsum" for n in model.graph.node):
        return model, 0
    try:
        shapes = _static_shapes(onnx.shape_inference.infer_shapes(model))
    except Exception:  # noqa: BLE001 - shape inference refused the model: convert it as it is
        return model, 0
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes, done = [], 0
    for node in out.graph.node:
        spelled = _spell(node, shapes) if node.op_type == "Einsum" else None
        if spelled is None:
            nodes.append(node)
        else:
            nodes.extend(spelled[0])
            out.graph.initializer.extend(spelled[1])
            done += 1
    if not done:
        return model, 0
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    log.info("Einsum: %d node(s) spelled as MatMul for onnx2tf", done)
    return out, done


def _static_shapes(model) -> dict[str, list[int]]:
    """Every value's shape where all its dimensions are known numbers."""
    found = {}
    for v in [*model.graph.value_info, *model.graph.input, *model.graph.output]:
        dims = v.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            found[v.name] = [d.dim_value for d in dims]
    for init in model.graph.initializer:
        found[init.name] = list(init.dims)
    return found


def _spell(node, shapes: dict):
    """(nodes, initializers) computing ``node``'s Einsum as a MatMul, or None."""
    from onnx import helper, numpy_helper

    equation = next((a.s.decode() for a in node.attribute if a.name == "equation"), "")
    p = plan(equation)
    if p is None or len(node.input) != 2 or any(i not in shapes for i in node.input):
        return None
    sa, sb = shapes[node.input[0]], shapes[node.input[1]]
    if len(sa) != len(p["a"]) or len(sb) != len(p["b"]):
        return None
    size = dict(zip(p["a"], sa, strict=True)) | dict(zip(p["b"], sb, strict=True))
    if any(size[c] != s for c, s in zip(p["a"], sa, strict=True)):  # broadcast batch dimensions: leave them to onnx2tf
        return None
    batch = [size[c] for c in p["batch"]]
    n_left = math.prod(size[c] for c in p["left"])
    n_right = math.prod(size[c] for c in p["right"])
    n_con = math.prod(size[c] for c in p["contracted"])
    base = (node.name or node.output[0]).replace("/", "_").strip("_")
    nodes, inits = [], []

    def name(tag: str) -> str:
        return f"{base}_{tag}"

    def transpose(x: str, letters: str, order: list[str], tag: str) -> str:
        perm = [letters.index(c) for c in order]
        if perm == list(range(len(perm))):
            return x
        nodes.append(helper.make_node("Transpose", [x], [name(tag)], name=name(tag), perm=perm))
        return name(tag)

    def reshape(x: str, have: list[int], want: list[int], tag: str) -> str:
        if have == want:
            return x
        inits.append(numpy_helper.from_array(np.asarray(want, np.int64), name(tag + "_shape")))
        nodes.append(helper.make_node("Reshape", [x, name(tag + "_shape")], [name(tag)], name=name(tag)))
        return name(tag)

    a_order = p["batch"] + p["left"] + p["contracted"]
    b_order = p["batch"] + p["contracted"] + p["right"]
    a = reshape(transpose(node.input[0], p["a"], a_order, "a_t"), [size[c] for c in a_order],
                batch + [n_left, n_con], "a_r")
    b = reshape(transpose(node.input[1], p["b"], b_order, "b_t"), [size[c] for c in b_order],
                batch + [n_con, n_right], "b_r")
    mm_order = p["batch"] + p["left"] + p["right"]
    final = mm_order == list(p["out"])
    product_shape = [size[c] for c in mm_order]
    unflat = product_shape != batch + [n_left, n_right]
    mm = node.output[0] if final and not unflat else name("mm")
    nodes.append(helper.make_node("MatMul", [a, b], [mm], name=name("mm")))
    if unflat:
        shape_out = node.output[0] if final else name("mm_r")
        inits.append(numpy_helper.from_array(np.asarray(product_shape, np.int64), name("mm_r_shape")))
        nodes.append(helper.make_node("Reshape", [mm, name("mm_r_shape")], [shape_out], name=name("mm_r")))
        mm = shape_out
    if not final:
        perm = [mm_order.index(c) for c in p["out"]]
        nodes.append(helper.make_node("Transpose", [mm], [node.output[0]], name=name("out_t"), perm=perm))
    return nodes, inits
