"""jzi-export: bundles re-loaded and run through the runtime's API, compared with PyTorch; the
manifest and metadata; precisions; the parity gates; bad input through the CLI as a user runs it."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from jzi.export.config import get_preset
from jzi.runtime.backends import open_backend
from jzi.runtime.bundle import GRAPHS, MANIFEST, BundleError, load_manifest, sha256_file
from jzi.runtime.localizer import Localizer
from jzi.runtime.tiles import write_store
from helpers import run_main
from runtime_fixtures import shared_graph_exports

if TYPE_CHECKING:  # torch is imported inside the tests (conftest.py's TORCH_FILES)
    from jzi.export.model import JustZoomIn

PRECISIONS = ("fp32", "int8", "fp16")
# how far each precision's encoders may move an embedding, relative to its largest component
ENCODER_TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2, "int8": 0.1}


def tiny_model(seed: int = 0) -> JustZoomIn:
    import torch

    from jzi.export.model import JustZoomIn

    torch.manual_seed(seed)
    return JustZoomIn(get_preset("tiny")).eval()


# checkpoint (the seed-0 tiny model) and bundles (one per precision) are session fixtures in conftest.py
@pytest.fixture(scope="module")
def reference(checkpoint) -> JustZoomIn:
    """The PyTorch model as the checkpoint holds it (not prepared for export)."""
    from jzi.export.checkpoint import load_checkpoint

    return load_checkpoint(checkpoint)[0]


def run_cli(*args) -> subprocess.CompletedProcess:
    return run_main("jzi.export.cli", *args)  # in this process: no torch import per call


def assert_one_error_line(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("jzi-export: error:")]
    assert len(errors) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def leftovers(directory: Path) -> list[str]:
    """Hidden staging directories or temp files an export might have left behind."""
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


# ---------------------------------------------------------------------------------------------
# every precision: reload the bundle, run it through the runtime, compare with PyTorch
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("precision", PRECISIONS)
def test_bundle_runs_through_runtime_backend(bundles, reference, precision):
    import torch

    from jzi.export import onnx_export as E

    man = load_manifest(bundles[precision])  # verifies every file's sha256
    assert man["precision"] == precision
    backend = open_backend(bundles[precision], man, "ort-cpu", threads=1)
    s = reference.cfg.image_size
    rng = np.random.default_rng(1)
    views = rng.integers(0, 256, (3, s, s, 3), dtype=np.uint8)
    street = rng.integers(0, 256, (2, s, 2 * s, 3), dtype=np.uint8)
    model = E.prepare_for_export(reference)
    with torch.no_grad():
        want_views = E.ViewEncoderGraph(model)(torch.from_numpy(views)).numpy()
        want_street = E.StreetEncoderGraph(model)(torch.from_numpy(street)).numpy()
    for got, want in ((backend.encode_views(views), want_views), (backend.encode_street(street), want_street)):
        assert got.shape == want.shape and got.dtype == np.float32
        rel = np.abs(got - want).max() / np.abs(want).max()
        assert rel < ENCODER_TOLERANCE[precision], rel


def test_runtime_zoom_loop_matches_pytorch_greedy(bundles, reference, tmp_path):
    """One tile store (random embeddings) serves every precision of the same weights: the encoder_id
    is precision-free, and the runtime's KV-cached loop gives PyTorch's greedy paths exactly."""
    import torch

    from jzi.export.model import greedy_from_embeddings

    cfg = reference.cfg
    region = cfg.zoom
    rng = np.random.default_rng(2)
    table = rng.standard_normal((region.total_views, cfg.width)).astype(np.float32)
    query = rng.standard_normal((16, cfg.width)).astype(np.float32)
    man = load_manifest(bundles["fp32"])
    store = write_store(tmp_path / "random.jzt", region, cfg.width, man["encoder_id"],
                        lambda rows: (table[rows], None), dtype="float32", progress=False)

    def view_fn(path):
        return torch.from_numpy(table[region.level_offset(path.shape[1]) + region.path_index(path.numpy())])

    want, _ = greedy_from_embeddings(reference.decoder, torch.from_numpy(query), view_fn, cfg.steps)
    for precision in PRECISIONS:
        results = Localizer(bundles[precision], store, backend="ort-cpu", threads=1).zoom(query)
        got = np.array([r.path for r in results])
        np.testing.assert_array_equal(got, want.numpy(), err_msg=precision)


def test_manifest_records_the_contract(bundles, checkpoint):
    mans = {p: load_manifest(b) for p, b in bundles.items()}
    cfg = get_preset("tiny")
    for precision, man in mans.items():
        assert man["model"] == cfg.to_dict() and man["region"] == cfg.region
        assert (man["grid"], man["steps"], man["n_actions"], man["width"]) == (4, 4, 16, cfg.width)
        assert man["image_size"] == cfg.image_size and man["street_size"] == [cfg.image_size, 2 * cfg.image_size]
        assert man["decoder"] == {"layers": cfg.dec_layers, "heads": cfg.dec_heads, "head_dim": cfg.head_dim,
                                  "cache_len": cfg.cache_len, "precision": "fp32"}
        assert man["normalization"]["mean"] == [0.485, 0.456, 0.406]
        assert man["source_checkpoint"]["sha256"] == sha256_file(checkpoint)
        assert man["tensorrt"]["engines"] is None  # no --trt: recorded, not an error
        par = man["parity"]
        assert par["passed"] and not par["failures"]
        assert par["decoder_rollouts"]["queries"] == 200 and par["decoder_rollouts"]["path_agreement"] == 1.0
        for graph in GRAPHS:
            entry = man["files"][graph]
            assert entry["sha256"] == sha256_file(bundles[precision] / entry["path"])
    fp32 = mans["fp32"]["parity"]
    assert fp32["view_encoder"]["max_rel"] < 1e-4 and fp32["street_encoder"]["max_rel"] < 1e-4
    assert fp32["decoder_rollouts"]["logits"]["max_abs"] < 1e-4 and fp32["end_to_end"]["path_agreement"] == 1.0
    assert len({m["encoder_id"] for m in mans.values()}) == 1  # a tile store fits every precision
    from jzi.export.cli import _describe

    line = _describe(bundles["fp32"], mans["fp32"])
    assert line.startswith(f"wrote {bundles['fp32']} (fp32)") and "greedy paths 100% of 200" in line


def test_graph_io_and_metadata_match_manifest(bundles):
    import onnx

    dtypes = {"uint8": onnx.TensorProto.UINT8, "float32": onnx.TensorProto.FLOAT, "int64": onnx.TensorProto.INT64}
    for precision, bundle in bundles.items():
        man = load_manifest(bundle)
        for graph in GRAPHS:
            proto = onnx.load(bundle / man["files"][graph]["path"])
            meta = {p.key: p.value for p in proto.metadata_props}
            assert meta["jzi.graph"] == graph and meta["jzi.precision"] == precision
            assert meta["jzi.encoder_id"] == man["encoder_id"]
            assert json.loads(meta["jzi.parity"])["passed"] is True
            for kind, values in (("inputs", proto.graph.input), ("outputs", proto.graph.output)):
                specs = man["tensors"][graph][kind]
                assert [v.name for v in values] == [s["name"] for s in specs]
                for v, spec in zip(values, specs):
                    assert v.type.tensor_type.elem_type == dtypes[spec["dtype"]], (graph, v.name)
                    dims = [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim]
                    assert ["batch" if isinstance(d, str) else d for d in dims] == spec["shape"], (graph, v.name)


def test_repeated_casts_of_older_fp16_converters_are_dropped():
    """ONNX Runtime's fp16 converter before 1.32 casts a shared fp16 tensor once per fp32-kept consumer, under one
    name (an fp16 export failed the checker with onnxruntime-gpu 1.31.1): one Cast is kept, and the graph runs."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from jzi.export import onnx_export as E

    w = numpy_helper.from_array(np.array([1.5, -2.0], np.float16), "w")
    cast = helper.make_node("Cast", ["w"], ["w_cast_to_fp32"], to=TensorProto.FLOAT, name="w_cast_to_fp32_node")
    nodes = [helper.make_node("Add", ["x", "w_cast_to_fp32"], ["y"]),
             helper.make_node("Mul", ["y", "w_cast_to_fp32"], ["z"]),
             cast, onnx.NodeProto.FromString(cast.SerializeToString())]  # as the old converter appends them
    info = helper.make_tensor_value_info("w_cast_to_fp32", TensorProto.FLOAT, [2])
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2])], [w],
                              value_info=[info, onnx.ValueInfoProto.FromString(info.SerializeToString())])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    broken = onnx.ModelProto.FromString(proto.SerializeToString())
    E.sort_nodes(broken.graph)
    with pytest.raises(onnx.checker.ValidationError, match="single static assignment"):
        onnx.checker.check_model(broken)
    E.drop_repeated_casts(proto.graph)
    E.sort_nodes(proto.graph)
    onnx.checker.check_model(proto)
    assert [n.op_type for n in proto.graph.node] == ["Cast", "Add", "Mul"] and len(proto.graph.value_info) == 1
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(session.run(None, {"x": np.array([1.0, 1.0], np.float32)})[0], [3.75, 2.0])


def test_precisions_change_only_the_encoders(bundles):
    import onnx

    def ops(bundle, graph):
        return {n.op_type for n in onnx.load(bundle / f"{graph}.onnx").graph.node}

    def float16_weights(bundle, graph):
        return sum(t.data_type == onnx.TensorProto.FLOAT16 for t in onnx.load(bundle / f"{graph}.onnx").graph.initializer)

    for graph in ("view_encoder", "street_encoder"):
        assert "MatMulInteger" in ops(bundles["int8"], graph) and "MatMulInteger" not in ops(bundles["fp32"], graph)
        assert float16_weights(bundles["fp16"], graph) > 0 and float16_weights(bundles["fp32"], graph) == 0
        # LayerNorm stays fp32 in the fp16 graph: its scale is a float32 initializer
        proto = onnx.load(bundles["fp16"] / f"{graph}.onnx")
        inits = {t.name: t.data_type for t in proto.graph.initializer}
        scales = [n.input[1] for n in proto.graph.node if n.op_type == "LayerNormalization"]
        assert scales and all(inits.get(s, onnx.TensorProto.FLOAT) == onnx.TensorProto.FLOAT for s in scales)
    for precision in PRECISIONS:  # the decoder stays fp32 unless --decoder-precision int8
        assert "MatMulInteger" not in ops(bundles[precision], "decoder")
        assert float16_weights(bundles[precision], "decoder") == 0


def test_decoder_batch_axis_is_dynamic(bundles, reference):
    import torch

    from jzi.export import onnx_export as E

    session = E.ort_session(bundles["fp32"] / "decoder.onnx", threads=1)
    specs = E.tensor_specs(reference.cfg)["decoder"]
    for batch in (1, 5):
        inputs = E.example_inputs(specs, batch=batch, seed=batch)
        got = session.run(None, {s["name"]: t.numpy() for s, t in zip(specs["inputs"], inputs)})
        with torch.no_grad():
            want = E.DecoderStepGraph(reference)(*inputs)
        assert got[0].shape == (batch, 16)
        np.testing.assert_allclose(got[0], want[0].numpy(), atol=1e-5)


def test_position_embedding_is_a_constant_no_resize(tmp_path):
    """A model whose stored position grid differs from its input size (as the official 518 -> 384):
    the graph holds the resampled table, no Resize, and matches the interpolating PyTorch model."""
    import onnx
    import torch

    from jzi.export import onnx_export as E
    from jzi.export.model import JustZoomIn

    torch.manual_seed(3)
    model = JustZoomIn(get_preset("tiny", pos_grid_size=96)).eval()  # 12x12 grid -> 8x8 at 64 px
    images = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8)
    with torch.no_grad():
        want = E.ViewEncoderGraph(model)(images).numpy()  # runtime bicubic interpolation
    proto = E.export_view_encoder(E.prepare_for_export(model))
    op_types = {n.op_type for n in proto.graph.node}
    assert "Resize" not in op_types and "Upsample" not in op_types
    path = tmp_path / "view.onnx"
    onnx.save(proto, path)
    got = E.ort_session(path, threads=1).run(None, {"images": images.numpy()})[0]
    assert np.abs(got - want).max() / np.abs(want).max() < 1e-4


def test_encoder_id_follows_encoder_weights_only():
    import torch

    from jzi.export import onnx_export as E

    a, b = tiny_model(0), tiny_model(0)
    assert E.encoder_id(a) == E.encoder_id(b)
    with torch.no_grad():
        b.decoder.output_head.weight.add_(1.0)
    assert E.encoder_id(a) == E.encoder_id(b)  # decoder weights do not matter to a tile store
    with torch.no_grad():
        b.encoder.backbone.layernorm.bias.add_(1e-3)
    assert E.encoder_id(a) != E.encoder_id(b)


def test_parity_gate_catches_a_wrong_graph(bundles, reference):
    """The int8 encoders presented as an fp32 export fail the fp32 gate, naming the graph."""
    from jzi.export import onnx_export as E

    paths = {g: bundles["fp32"] / f"{g}.onnx" for g in GRAPHS}
    paths["view_encoder"] = bundles["int8"] / "view_encoder.onnx"
    model = E.prepare_for_export(reference)
    settings = E.ParitySettings(rollouts=20, end_to_end=2)
    figures = E.check_parity(paths, model, "fp32", settings, threads=1)
    assert not figures["passed"]
    assert any(f.startswith("view_encoder: relative difference") for f in figures["failures"])
    assert E.parity_failures(figures, "int8") == []  # as an int8 export the same figures pass


def test_decisive_decisions_count_confident_steps_on_a_shared_prefix():
    from jzi.export import onnx_export as E

    confident, tie = [9.0] + [0.0] * 15, [1.0, 1.0] + [0.0] * 14  # a 0.99 lead; a near-tie of two cells
    ref_paths = np.array([[0, 0], [0, 0], [0, 0]])
    ref_logits = np.array([[confident, tie], [confident, confident], [confident, confident]])
    got = np.array([[0, 1],   # differs only at a near-tie: not a decisive decision
                    [0, 5],   # differs at a confident step: counted, disagrees
                    [3, 0]])  # differs at step 0; step 1 then saw other views: only step 0 counts
    assert E.decisive_decisions(got, ref_paths, ref_logits) == (4, 0.5)
    assert E.decisive_decisions(ref_paths, ref_paths, ref_logits) == (5, 1.0)
    assert E.decisive_decisions(got[:1], ref_paths[:1], np.array([[tie, tie]])) == (0, None)


def test_quantized_gate_judges_decisive_rollouts_only(bundles):
    from jzi.export import onnx_export as E

    figures = load_manifest(bundles["int8"])["parity"]
    e2e = figures["end_to_end"]
    e2e.update(path_agreement=0.5, decisive_queries=0, decisive_path_agreement=None)
    assert E.parity_failures(figures, "int8") == []  # nothing decisive: near-ties may flip
    e2e.update(decisive_queries=8, decisive_path_agreement=0.5)
    assert E.parity_failures(figures, "int8") == [
        "end_to_end: 50.0% of 8 decisive rollouts take PyTorch's path (< 75%)"]
    e2e.update(decisive_path_agreement=1.0)
    assert E.parity_failures(figures, "int8") == []
    assert E.parity_failures(figures, "fp32")[-1] == "end_to_end: paths differ on 50.0% of queries"
    figures["street_encoder"]["finite"] = False
    assert "street_encoder: NaN or Inf in the ONNX output" in E.parity_failures(figures, "int8")


def test_failed_parity_leaves_nothing(checkpoint, tmp_path, monkeypatch):
    from jzi.export import onnx_export as E

    monkeypatch.setattr(E, "FP32_MAX_REL", 0.0)  # no real export meets a zero tolerance
    out = tmp_path / "bundle"
    with pytest.raises(E.ExportError, match="parity check failed"), shared_graph_exports(checkpoint.parent):
        E.export_bundle(checkpoint, out, parity=E.ParitySettings(rollouts=4, end_to_end=1))
    assert not out.exists() and leftovers(tmp_path) == []


def test_tensorrt_refusals_are_one_line():
    from jzi.export import onnx_export as E
    from jzi.export.tensorrt_build import batch_profile, check_can_build

    with pytest.raises(E.ExportError, match="int8 bundles"):
        check_can_build("int8")
    assert batch_profile("decoder", None) == (1, 1, 64) and batch_profile("view_encoder", 4) == (1, 4, 4)


# ---------------------------------------------------------------------------------------------
# the CLI, as a user runs it
# ---------------------------------------------------------------------------------------------
def test_cli_writes_beside_the_checkpoint_and_replaces_only_with_force(checkpoint, bundles, tmp_path):
    import shutil

    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(checkpoint.read_bytes())
    out = tmp_path / "model-fp32-bundle"  # the default name: CHECKPOINT-PRECISION-bundle
    shutil.copytree(bundles["int8"], out)  # an earlier export is in the way
    before = (out / MANIFEST).read_text()
    assert_one_error_line(run_cli(ckpt), "already exists", "--force")
    assert (out / MANIFEST).read_text() == before
    with shared_graph_exports(checkpoint.parent):  # a copy of the session checkpoint: its graphs as exported once this session
        forced = run_cli(ckpt, "--force", "--json", "-q")
    assert forced.returncode == 0 and forced.stderr == "", forced.stderr
    summary = json.loads(forced.stdout)
    assert Path(summary["bundle"]) == out and summary["precision"] == "fp32"
    assert summary["parity"]["decoder_rollouts"]["path_agreement"] == 1.0
    assert load_manifest(out)["precision"] == "fp32"
    assert leftovers(tmp_path) == []


def test_cli_rejects_a_file_that_is_not_a_checkpoint(tmp_path):
    bad = tmp_path / "notes.pt"
    bad.write_bytes(b"these are not the weights you are looking for\n" * 10)
    assert_one_error_line(run_cli(bad, "-o", tmp_path / "b"), "not a checkpoint")
    assert_one_error_line(run_cli(tmp_path / "missing.pt", "-o", tmp_path / "b"), "no such file")
    assert not (tmp_path / "b").exists() and leftovers(tmp_path) == []


class _RunsCode:
    """Pickles as a call to os.system: what a malicious 'checkpoint' would carry."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_cli_refuses_pickled_code(tmp_path):
    import torch

    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pt"
    torch.save({"model_state_dict": tiny_model().state_dict(), "payload": _RunsCode(marker)}, evil)
    assert_one_error_line(run_cli(evil, "-o", tmp_path / "b"), "refused", "pickled code")
    assert not marker.exists(), "the pickled code ran"
    assert not (tmp_path / "b").exists() and leftovers(tmp_path) == []


def test_cli_names_the_mismatch_for_a_wrong_preset(checkpoint, tmp_path):
    line = assert_one_error_line(run_cli(checkpoint, "--preset", "small", "-o", tmp_path / "b"))
    assert "preset 'small'" in line and ("key" in line or "shape" in line)
    assert not (tmp_path / "b").exists() and leftovers(tmp_path) == []


def test_cli_unwritable_output(checkpoint, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    assert_one_error_line(run_cli(checkpoint, "-o", blocker / "bundle"), "cannot write the bundle")
    assert blocker.read_text() == "not a directory"
    assert leftovers(tmp_path) == []


def test_cli_refuses_to_replace_something_that_is_not_a_bundle(checkpoint, tmp_path):
    precious = tmp_path / "photos"
    precious.mkdir()
    (precious / "holiday.jpg").write_bytes(b"jpeg")
    assert_one_error_line(run_cli(checkpoint, "-o", precious, "--force"), "not a jzi bundle")
    assert (precious / "holiday.jpg").exists()


def test_cli_bad_flags(checkpoint, tmp_path):
    assert_one_error_line(run_cli(checkpoint, "--opset", "16", "-o", tmp_path / "b"), "opset")
    usage = run_cli(checkpoint, "--precision", "int4")
    assert usage.returncode == 2 and "invalid choice" in usage.stderr and "Traceback" not in usage.stderr
    assert_one_error_line(run_cli("--trt-only", tmp_path / "nothing-here"), "nothing-here: does not exist")


def test_cli_trt_without_tensorrt_is_one_line_and_writes_nothing(checkpoint, tmp_path):
    try:
        import tensorrt  # noqa: F401

        from jzi.export.tensorrt_build import cuda_device

        if cuda_device() is not None:
            pytest.skip("TensorRT and a GPU are present: tests/test_tensorrt.py covers --trt")
    except ImportError:
        pass
    assert_one_error_line(run_cli(checkpoint, "--trt", "-o", tmp_path / "b"), "no engines built")
    assert not (tmp_path / "b").exists() and leftovers(tmp_path) == []


def test_trt_only_on_a_tampered_bundle_is_refused(bundles, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(bundles["fp32"], copy)
    with open(copy / "decoder.onnx", "ab") as f:
        f.write(b"\0")
    assert_one_error_line(run_cli("--trt-only", copy), "does not match its sha256")
    with pytest.raises(BundleError):
        load_manifest(copy)


# ---------------------------------------------------------------------------------------------
# the official preset (slow): export time and memory targets
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_official_preset_exports_in_time_and_memory(tmp_path):
    import resource
    import time

    import torch

    from jzi.export.checkpoint import save_checkpoint
    from jzi.export.model import JustZoomIn

    torch.manual_seed(0)
    ckpt = tmp_path / "official.pt"
    save_checkpoint(JustZoomIn(get_preset("official")).eval(), ckpt)
    start = time.perf_counter()
    proc = run_cli(ckpt, "-o", tmp_path / "b", "-q")
    seconds = time.perf_counter() - start
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2
    assert proc.returncode == 0, proc.stderr
    man = load_manifest(tmp_path / "b")
    assert man["parity"]["passed"] and man["parity"]["decoder_rollouts"]["path_agreement"] == 1.0
    assert seconds < 180, seconds
    assert peak_gb < 4.0, peak_gb


# ---------------------------------------------------------------------------------------------
# the int8 decoder (jzi-export --decoder-precision int8)
def test_int8_decoder_bundle_runs_close_to_fp32(bundles, checkpoint, tmp_path):  # noqa: F811
    import onnx

    from jzi.export import onnx_export as E

    fp32 = bundles["fp32"]
    with shared_graph_exports(checkpoint.parent):  # the session's graphs of this checkpoint; the int8 conversion and gates are new
        out, man = E.export_bundle(checkpoint, tmp_path / "int8dec", decoder_precision="int8", threads=1)
    assert man["decoder"]["precision"] == "int8" and man["precision"] == "fp32"
    assert "MatMulNBits" in man["precision_notes"]
    ops = {n.op_type for n in onnx.load(out / "decoder.onnx").graph.node}
    assert "MatMulNBits" in ops
    assert (out / "decoder.onnx").stat().st_size < 0.5 * (fp32 / "decoder.onnx").stat().st_size
    gates = man["parity"]["gates"]
    assert gates["decoder_decisive_path_agreement"] == E.DECODER_INT8_MIN_AGREEMENT
    assert "decoder_path_agreement" not in gates  # the exact gate is the fp32 decoder's
    # same step inputs through both decoders: logits within the int8 gate's bound
    cfg = get_preset("tiny")
    specs = E.tensor_specs(cfg)["decoder"]
    feeds = {s["name"]: t.numpy() for s, t in zip(specs["inputs"], E.example_inputs(specs, batch=8, seed=3))}
    got = E.ort_session(out / "decoder.onnx", threads=1).run(["logits"], feeds)[0]
    want = E.ort_session(fp32 / "decoder.onnx", threads=1).run(["logits"], feeds)[0]
    assert 0 < np.abs(got - want).max() < E.DECODER_INT8_MAX_ABS


def _figures(decisive_agreement: float, logits_abs: float) -> dict:
    ok = {"max_abs": 1e-6, "max_rel": 1e-7, "finite": True}
    moved = {"max_abs": logits_abs, "max_rel": logits_abs / 4, "finite": True}
    return {"view_encoder": ok, "street_encoder": ok, "decoder_step": {"logits": moved, "present": moved},
            "decoder_rollouts": {"logits": moved, "path_agreement": 0.9, "decisive_queries": 40,
                                 "decisive_path_agreement": decisive_agreement},
            "end_to_end": {"logits": moved, "path_agreement": 1.0, "decisive_queries": 0,
                           "decisive_path_agreement": None}}


def test_int8_decoder_gates():
    from jzi.export import onnx_export as E

    assert E.parity_failures(_figures(1.0, 0.05), "fp32", "int8") == []
    # the same figures fail an fp32 decoder, which must be exact
    assert E.parity_failures(_figures(1.0, 0.05), "fp32", "fp32")
    flips = E.parity_failures(_figures(0.975, 0.05), "fp32", "int8")
    assert len(flips) == 1 and "decisive rollouts take PyTorch's path with the int8 decoder" in flips[0]
    scrambled = E.parity_failures(_figures(1.0, 1.5), "fp32", "int8")
    assert any("int8 decoder moves logits by 1.50" in f for f in scrambled)


def test_int8_decoder_and_tensorrt_are_refused_together(checkpoint, tmp_path):
    from jzi.export import onnx_export as E

    with pytest.raises(E.ExportError, match="CPU provider only"):
        E.export_bundle(checkpoint, tmp_path / "x", decoder_precision="int8", trt=True)
    assert not (tmp_path / "x").exists()
