"""Graph rewrites that make the exported ViT encoders faster on ONNX Runtime's CPU provider.

The dynamo export of transformers' eager DINOv2 attention is a chain of small ops per layer (three
Reshape/Transpose pairs, MatMul, Mul by the scale, Add of an all-zero mask, Softmax, MatMul, Transpose,
Reshape) that ONNX Runtime does not fuse when it loads the graph, nor does its transformers optimizer
(``model_type="vit"``): DINOv2's LayerScale ``Mul`` after the output projection breaks the pattern it
looks for. Here, measured on the official encoder (benchmarks/RESULTS.md, "Performance (issue 14)"):

- ``fold_layer_scale``: ``Mul(MatMul(x, W) + b, gamma)`` -> ``MatMul(x, W * gamma) + b * gamma``;
- ``fuse_attention``: the chain above -> one ``com.microsoft.MultiHeadAttention`` (fp32);
- ``merge_qkv``: the q, k and v projections of one layer -> one MatMul, one Add and a Split, so the
  activation is quantised once and one larger GEMM runs instead of three.

Each rewrite is exact algebra (fp32 outputs agree to ~1e-6) and only touches a chain it matched in
full; anything else is left as it was (and the export's parity gate compares the result with PyTorch). ``MultiHeadAttention`` is an ONNX Runtime contrib op, so these
run only for the int8 encoders, which are ONNX Runtime CPU graphs anyway (TensorRT refuses int8
bundles); fp32 and fp16 graphs stay plain ONNX.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

CONTRIB_DOMAIN = "com.microsoft"


class _Graph:
    """Producer, consumer and initializer lookups over one graph (rebuilt after each rewrite)."""

    def __init__(self, graph: onnx.GraphProto):
        self.producer = {o: n for n in graph.node for o in n.output}
        self.users: dict[str, list] = {}
        for n in graph.node:
            for x in n.input:
                self.users.setdefault(x, []).append(n)
        self.inits = {i.name: i for i in graph.initializer}
        self.outputs = {o.name for o in graph.output}

    def const(self, name: str) -> np.ndarray | None:
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant" and node.attribute[0].name == "value":
            return numpy_helper.to_array(node.attribute[0].t)
        return None

    def op(self, name: str, op_type: str):
        """The node producing ``name`` if it is an ``op_type`` whose output nothing else reads."""
        node = self.producer.get(name)
        if node is None or node.op_type != op_type or name in self.outputs or len(self.users.get(name, [])) != 1:
            return None
        return node

    def only_user(self, name: str, op_type: str):
        users = self.users.get(name, [])
        if len(users) != 1 or users[0].op_type != op_type or name in self.outputs:
            return None
        return users[0]


def _perm(node) -> list[int] | None:
    for a in node.attribute:
        if a.name == "perm":
            return list(a.ints)
    return None


def _new_init(graph: onnx.GraphProto, value: np.ndarray, name: str) -> str:
    """Add ``value`` as a fresh initializer; rewrites never change one in place (the exporter shares
    identical initializers between nodes). The ones left unread are dropped at the end."""
    graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
    return name


def fold_layer_scale(graph: onnx.GraphProto) -> int:
    """``Mul(Add(MatMul(x, W), b), gamma)`` with constant per-column ``gamma`` -> scaled ``W`` and ``b``."""
    folded = 0
    for mul in [n for n in graph.node if n.op_type == "Mul"]:
        g = _Graph(graph)
        add = g.op(mul.input[0], "Add")
        matmul = add and g.op(add.input[0], "MatMul")
        if matmul is None:
            continue
        gamma, w, b = g.const(mul.input[1]), g.const(matmul.input[1]), g.const(add.input[1])
        if gamma is None or w is None or b is None or w.ndim != 2 or gamma.shape != (w.shape[1],) \
                or b.shape != (w.shape[1],):
            continue
        tag = mul.name or mul.output[0]
        matmul.input[1] = _new_init(graph, (w * gamma).astype(w.dtype), f"{tag}_folded_weight")
        add.input[1] = _new_init(graph, (b * gamma).astype(b.dtype), f"{tag}_folded_bias")
        add.output[0] = mul.output[0]
        graph.node.remove(mul)
        folded += 1
    return folded


def _zero_mask(g: _Graph, name: str) -> bool:
    """True if ``name`` is provably all zeros: a constant, or ``Where(all-true, 0, _)`` (the eager export's
    "no padding" mask, an ``Expand`` of a constant all-true condition)."""
    value = g.const(name)
    if value is not None:
        return not value.any()
    where = g.producer.get(name)
    if where is None or where.op_type != "Where":
        return False
    zero = g.const(where.input[1])
    cond = g.producer.get(where.input[0])
    if cond is not None and cond.op_type == "Expand":
        cond_value = g.const(cond.input[0])
    else:
        cond_value = g.const(where.input[0])
    return zero is not None and not zero.any() and cond_value is not None and bool(cond_value.all())


def _heads(g: _Graph, reshape) -> tuple[int, int] | None:
    """(heads, head_dim) of a [batch, seq, heads, head_dim] Reshape with a constant shape."""
    shape = g.const(reshape.input[1])
    if shape is None or shape.ndim != 1 or shape.size != 4 or min(shape[2:]) <= 0:
        return None
    return int(shape[2]), int(shape[3])


def fuse_attention(proto: onnx.ModelProto) -> int:
    """Each eager attention chain -> ``com.microsoft.MultiHeadAttention(q, k, v)`` on [batch, seq, width]."""
    graph = proto.graph
    fused = 0
    for softmax in [n for n in graph.node if n.op_type == "Softmax"]:
        g = _Graph(graph)
        chain = _match_attention(g, softmax)
        if chain is None:
            continue
        nodes, (q, k, v), out, heads, scale = chain
        position = min(list(graph.node).index(n) for n in nodes)
        for n in nodes:
            graph.node.remove(n)
        graph.node.insert(position, helper.make_node(
            "MultiHeadAttention", [q, k, v], [out], name=f"{softmax.name or 'softmax'}_mha", domain=CONTRIB_DOMAIN,
            num_heads=heads, scale=scale))
        fused += 1
    if fused and not any(o.domain == CONTRIB_DOMAIN for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid(CONTRIB_DOMAIN, 1))
    return fused


def _match_attention(g: _Graph, softmax):
    axis = next((a.i for a in softmax.attribute if a.name == "axis"), -1)
    if axis not in (-1, 3):
        return None
    nodes = [softmax]
    scores = g.op(softmax.input[0], "Add")
    if scores is not None:  # the additive mask: only an all-zero one may be dropped
        if not _zero_mask(g, scores.input[1]):
            return None
        nodes.append(scores)
        scaled = g.op(scores.input[0], "Mul")
    else:
        scaled = g.op(softmax.input[0], "Mul")
    if scaled is None:
        return None
    scale = g.const(scaled.input[1])
    qk = g.op(scaled.input[0], "MatMul")
    if scale is None or scale.size != 1 or qk is None:
        return None
    nodes += [scaled, qk]
    inputs, shapes = [], []
    for name, perm in ((qk.input[0], [0, 2, 1, 3]), (qk.input[1], [0, 2, 3, 1])):
        t = g.op(name, "Transpose")
        r = t and g.op(t.input[0], "Reshape")
        if r is None or _perm(t) != perm:
            return None
        nodes += [t, r]
        inputs.append(r.input[0])
        shapes.append(_heads(g, r))
    pv = g.only_user(softmax.output[0], "MatMul")
    if pv is None or pv.input[0] != softmax.output[0]:
        return None
    t = g.op(pv.input[1], "Transpose")
    r = t and g.op(t.input[0], "Reshape")
    if r is None or _perm(t) != [0, 2, 1, 3]:
        return None
    nodes += [pv, t, r]
    inputs.append(r.input[0])
    shapes.append(_heads(g, r))
    out_t = g.only_user(pv.output[0], "Transpose")
    out_r = out_t and g.only_user(out_t.output[0], "Reshape")
    out_shape = out_r and g.const(out_r.input[1])
    if out_r is None or _perm(out_t) != [0, 2, 1, 3] or out_shape is None or out_shape.size != 3:
        return None
    if None in shapes or len(set(shapes)) != 1:
        return None
    heads, head_dim = shapes[0]
    if int(out_shape[2]) != heads * head_dim:
        return None
    nodes += [out_t, out_r]
    return nodes, inputs, out_r.output[0], heads, float(scale.reshape(-1)[0])


def merge_qkv(graph: onnx.GraphProto) -> int:
    """The three ``Add(MatMul(x, W), b)`` feeding one MultiHeadAttention -> one MatMul + Add + Split."""
    merged = 0
    for mha in [n for n in graph.node if n.op_type == "MultiHeadAttention" and n.domain == CONTRIB_DOMAIN]:
        g = _Graph(graph)
        adds = [g.op(x, "Add") for x in mha.input[:3]]
        matmuls = [a and g.op(a.input[0], "MatMul") for a in adds]
        if None in matmuls or len({m.input[0] for m in matmuls}) != 1:
            continue
        ws = [g.const(m.input[1]) for m in matmuls]
        bs = [g.const(a.input[1]) for a in adds]
        if any(x is None for x in ws + bs) or len({w.shape for w in ws}) != 1 or ws[0].ndim != 2 \
                or any(b.shape != (ws[0].shape[1],) for b in bs):
            continue
        tag = f"{mha.name}_qkv"
        width = ws[0].shape[1]
        _new_init(graph, np.concatenate(ws, axis=1), f"{tag}_weight")
        _new_init(graph, np.concatenate(bs), f"{tag}_bias")
        _new_init(graph, np.array([width] * 3, np.int64), f"{tag}_split")
        position = min(list(graph.node).index(n) for n in matmuls)
        for n in matmuls + adds:
            graph.node.remove(n)
        new = [helper.make_node("MatMul", [matmuls[0].input[0], f"{tag}_weight"], [f"{tag}_matmul"], name=f"{tag}_matmul"),
               helper.make_node("Add", [f"{tag}_matmul", f"{tag}_bias"], [f"{tag}_add"], name=f"{tag}_add"),
               helper.make_node("Split", [f"{tag}_add", f"{tag}_split"], list(mha.input[:3]), name=f"{tag}_split",
                                axis=-1)]
        for i, n in enumerate(new):
            graph.node.insert(position + i, n)
        merged += 1
    return merged


def _drop_dead_nodes(graph: onnx.GraphProto) -> None:
    """Nodes (the mask's Expand/Where) whose outputs nothing reads any more, and unread initializers.
    The graph must be sorted."""
    needed = {o.name for o in graph.output}
    alive = []
    for n in reversed(list(graph.node)):
        if any(o in needed for o in n.output):
            alive.append(n)
            needed.update(n.input)
    del graph.node[:]
    graph.node.extend(reversed(alive))
    unused = [i for i in graph.initializer if i.name not in needed]
    for i in unused:
        graph.initializer.remove(i)


def fuse_encoder_for_cpu(proto: onnx.ModelProto) -> dict:
    """Apply the three rewrites to an fp32 encoder graph in place; returns how many of each were made."""
    from .onnx_export import sort_nodes

    counts = {"layer_scale": fold_layer_scale(proto.graph), "attention": fuse_attention(proto)}
    counts["qkv"] = merge_qkv(proto.graph)  # after fuse_attention: it finds q, k, v through the fused node
    sort_nodes(proto.graph)
    _drop_dead_nodes(proto.graph)
    return counts
