"""The int8 encoders' graph rewrites (export/onnx_fusions.py): same outputs, the chains they claim to fuse
fused, and nothing fused where the rewrite would change the answer."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from jzi.export.config import get_preset
from jzi.export.onnx_fusions import fuse_encoder_for_cpu

GRAPHS = ("view_encoder", "street_encoder")


def run(proto: onnx.ModelProto, images: np.ndarray) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: images})[0]


def images_for(proto: onnx.ModelProto, seed: int = 0) -> np.ndarray:
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim][1:]
    return np.random.default_rng(seed).integers(0, 256, [2, *dims], dtype=np.uint8)


def randomised(proto: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """The same graph with every float weight tensor random: the seed-0 model's LayerScale is all ones and its
    biases zeros, which would let a wrong fold or merge pass unseen. Scalars (the mask's 0, the scale) stay."""
    rng = np.random.default_rng(seed)
    out = onnx.ModelProto.FromString(proto.SerializeToString())
    for init in out.graph.initializer:
        value = numpy_helper.to_array(init)
        if value.dtype == np.float32 and value.ndim >= 1:
            new = (1 + 0.5 * rng.standard_normal(value.shape)) if value.ndim == 1 else 0.05 * rng.standard_normal(value.shape)
            init.CopyFrom(numpy_helper.from_array(new.astype(np.float32), init.name))
    return out


@pytest.mark.parametrize("graph", GRAPHS)
def test_fused_encoder_gives_the_same_embeddings(bundles, graph):
    layers = get_preset("tiny").enc_layers
    proto = randomised(onnx.load(bundles["fp32"] / f"{graph}.onnx"))
    images = images_for(proto)
    ref = run(proto, images)
    fused = onnx.ModelProto.FromString(proto.SerializeToString())
    counts = fuse_encoder_for_cpu(fused)
    onnx.checker.check_model(fused)
    assert sum(n.op_type == "Softmax" for n in proto.graph.node) == layers
    # every layer: attention fused, q/k/v merged, both LayerScales folded
    assert counts == {"layer_scale": 2 * layers, "attention": layers, "qkv": layers}
    ops = [n.op_type for n in fused.graph.node]
    assert ops.count("MultiHeadAttention") == layers and "Softmax" not in ops and "Where" not in ops
    got = run(fused, images)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * np.abs(ref).max())
    # no weight left behind: every initializer is read (the folded and merged originals were dropped)
    read = {x for n in fused.graph.node for x in n.input}
    assert {i.name for i in fused.graph.initializer} <= read


def test_a_mask_that_is_not_zero_is_not_fused(bundles):
    """The eager export adds Where(all-true, 0, -inf): dropping it is exact only while that 0 is 0."""
    proto = onnx.load(bundles["fp32"] / "view_encoder.onnx")
    where = next(n for n in proto.graph.node if n.op_type == "Where")
    init = next(i for i in proto.graph.initializer if i.name == where.input[1])
    assert not numpy_helper.to_array(init).any()
    init.CopyFrom(numpy_helper.from_array(np.array(0.5, np.float32), init.name))
    images = images_for(proto, seed=1)
    ref = run(proto, images)
    fused = onnx.ModelProto.FromString(proto.SerializeToString())
    counts = fuse_encoder_for_cpu(fused)
    assert counts["attention"] == 0 and counts["qkv"] == 0
    assert any(n.op_type == "Softmax" for n in fused.graph.node)
    np.testing.assert_allclose(run(fused, images), ref, rtol=0, atol=1e-5 * np.abs(ref).max())


def test_int8_bundle_encoders_are_fused(bundles):
    for graph in GRAPHS:
        fp32_ops = [n.op_type for n in onnx.load(bundles["fp32"] / f"{graph}.onnx").graph.node]
        int8 = onnx.load(bundles["int8"] / f"{graph}.onnx")
        ops = [n.op_type for n in int8.graph.node]
        assert ops.count("MultiHeadAttention") == fp32_ops.count("Softmax") == get_preset("tiny").enc_layers
        assert "Softmax" not in ops
        assert any(o.domain == "com.microsoft" for o in int8.opset_import)
        # the merged q/k/v projection is one quantised MatMul per layer: 4 per layer (qkv, out, fc1, fc2)
        assert ops.count("MatMulInteger") == 4 * fp32_ops.count("Softmax")


def test_to_int8_leaves_the_callers_graph_alone(bundles, tmp_path):
    """benchmarks/bench_export.py quantises a graph and then measures it as fp32 and converts it to fp16."""
    from jzi.export.onnx_export import to_int8

    proto = onnx.load(bundles["fp32"] / "view_encoder.onnx")
    before = proto.SerializeToString()
    int8 = to_int8(proto, tmp_path)
    assert proto.SerializeToString() == before
    assert any(n.op_type == "MultiHeadAttention" for n in int8.graph.node)
    assert not any(n.op_type == "MultiHeadAttention" for n in proto.graph.node)
