"""The zoom loop against PyTorch: greedy paths, probabilities, beam search, row reads, pairing checks."""
from dataclasses import replace

import numpy as np
import pytest
from runtime_fixtures import bundle, geotiff, make_photos, rt_base, store16, store32  # noqa: F401

from jzi.runtime.backends import BackendUnavailable, open_backend
from jzi.runtime.bundle import load_manifest
from jzi.runtime.images import street_input
from jzi.runtime.localizer import Localizer, LocalizerError
from jzi.runtime.tiles import TileStore, write_store

N_PHOTOS = 24


@pytest.fixture(scope="module")
def model(rt_base, bundle):  # noqa: F811
    from jzi.export.checkpoint import load_checkpoint

    m, _ = load_checkpoint(rt_base / "tiny.pt")
    return m


@pytest.fixture(scope="module")
def photos(rt_base):  # noqa: F811
    return make_photos(rt_base, N_PHOTOS)


@pytest.fixture(scope="module")
def loc32(bundle, store32):  # noqa: F811
    return Localizer(bundle, store32, backend="ort-cpu", threads=1)


def _torch_greedy(model, photos, geotiff, region):  # noqa: F811
    """PyTorch end to end: its own street embeddings, and its own embeddings of each view on its path,
    rendered from the imagery (not read from the store)."""
    import torch

    from jzi.export.model import greedy_from_embeddings, normalize, split_street
    from jzi.runtime.imagery import open_source

    src = open_source(geotiff)
    x = torch.from_numpy(np.stack([street_input(p, region.view_px) for p in photos]))
    with torch.no_grad():
        g = model.encode_street(split_street(normalize(x)))

        def view_fn(path):
            k = path.shape[1]
            centres = region.path_center(path.numpy()) if k else np.repeat(region.center[None], len(path), 0)
            views = src.render_many(centres, region.level_size_m(k), region.view_px)
            return model.encode_views(normalize(torch.from_numpy(views)))

        paths, logits = greedy_from_embeddings(model.decoder, g, view_fn, region.steps)
    return paths.numpy(), logits.softmax(-1).numpy()


def test_greedy_paths_equal_pytorch_end_to_end(model, photos, geotiff, loc32, bundle, store16):  # noqa: F811
    region = loc32.region
    ref_paths, ref_probs = _torch_greedy(model, photos, geotiff, region)
    results = loc32.localize_batch(photos)
    ours = np.array([r.path for r in results])
    assert (ours == ref_paths).all(axis=1).mean() == 1.0  # fp32 bundle + fp32 store: every path
    for r, path, probs in zip(results, ref_paths, ref_probs):
        chosen = probs[np.arange(region.steps), path]
        np.testing.assert_allclose(r.step_probs, chosen, rtol=1e-4, atol=1e-6)
        assert r.confidence == pytest.approx(float(np.prod(chosen)), rel=1e-4)
        np.testing.assert_allclose([r.latitude, r.longitude], region.path_center(path), atol=1e-12)
    # the fp16 store: nearly every path (random weights have thin margins, so the bar is lower than trained)
    loc16 = Localizer(bundle, store16, backend="ort-cpu", threads=1)
    ours16 = np.array([r.path for r in loc16.localize_batch(photos)])
    assert (ours16 == ref_paths).all(axis=1).mean() >= 0.9


def test_single_and_batch_agree_and_timings_are_reported(loc32, photos):
    batch = loc32.localize_batch(photos[:5])
    for photo, b in zip(photos[:5], batch):
        one = loc32.localize(photo)
        assert one.path == b.path
        assert one.step_probs == pytest.approx(b.step_probs, rel=1e-5)
        t = one.timings
        for key in ("read_ms", "preprocess_ms", "encoder_ms", "tiles_ms", "decoder_ms", "zoom_ms", "total_ms"):
            assert t[key] >= 0
        assert len(t["decoder_steps_ms"]) == 4 and t["total_ms"] >= t["encoder_ms"] + t["zoom_ms"] * 0.99


def _torch_beam(model, g, table, region, k):
    """Reference beam search: full teacher-forcing recompute of every prefix, no KV cache."""
    import torch

    beams = [([], 0.0)]
    for step in range(region.steps):
        cands = []
        for path, score in beams:
            rows = [region.level_offset(lvl) + (int(region.path_index(path[:lvl])) if lvl else 0)
                    for lvl in range(step + 1)]
            with torch.no_grad():
                logits = model.decoder(g, table[rows][None], torch.tensor([path + [0]]))[0, step]
            logp = torch.log_softmax(logits.double(), -1).numpy()
            cands += [(path + [a], score + float(logp[a])) for a in range(region.n_actions)]
        cands.sort(key=lambda c: -c[1])
        beams = cands[:k]
    return beams


def test_beam_search_matches_a_reference_and_greedy(model, photos, loc32):
    import torch

    from jzi.export.model import normalize, split_street

    store = loc32.store
    table = torch.from_numpy(np.array(store.embeddings, dtype=np.float32))
    for photo in photos[:4]:
        x = torch.from_numpy(street_input(photo, loc32.image_size)[None])
        with torch.no_grad():
            g = model.encode_street(split_street(normalize(x)))
        ref = _torch_beam(model, g, table, loc32.region, 4)
        got = loc32.localize(photo, beams=4)
        assert [c.path for c in got.candidates] == [p for p, _ in ref]
        np.testing.assert_allclose([c.score for c in got.candidates], [s for _, s in ref], atol=1e-4)
        assert got.path == got.candidates[0].path and len({tuple(c.path) for c in got.candidates}) == 4
        assert got.confidence == pytest.approx(np.exp(ref[0][1]), rel=1e-3)
        greedy = loc32.localize(photo)
        assert got.candidates[0].score >= np.log(greedy.confidence) - 1e-6
        assert loc32.localize(photo, beams=1).path == greedy.path
    batched = loc32.localize_batch(photos[:3], beams=4)
    for photo, b in zip(photos[:3], batched):
        assert [c.path for c in b.candidates] == [c.path for c in loc32.localize(photo, beams=4).candidates]
    with pytest.raises(LocalizerError, match="beams"):
        loc32.localize(photos[0], beams=17)


def test_only_the_rows_on_the_path_are_read(bundle, store32, photos):  # noqa: F811
    loc = Localizer(bundle, store32, backend="ort-cpu", threads=1)
    read = []
    real = loc.store.read_rows
    loc.store.read_rows = lambda rows: read.append(np.asarray(rows).tolist()) or real(rows)
    first = loc.localize(photos[0])
    assert read == [[loc.store.row_of_path(first.path[:lvl])] for lvl in range(4)]


def test_a_damaged_store_never_answers(tmp_path, bundle, store32, photos, monkeypatch):  # noqa: F811
    """Flipped bytes or NaN rows on a query's path: one TileStoreError line naming the store and the row."""
    import json

    from jzi.runtime import tiles as T

    monkeypatch.setattr(T, "BLOCK_BYTES", 4 * 96 * 4)  # blocks of 4 rows, so that damage stays local
    good = Localizer(bundle, store32, backend="ort-cpu", threads=1).localize(photos[0])
    store = tmp_path / "damaged.jzt"
    src = TileStore(store32)
    write_store(store, src.region, src.dim, src.encoder_id, lambda r: (src.embeddings[r], None), dtype="float32",
                batch=4096, progress=False)
    row = TileStore(store).row_of_path(good.path[:3])
    meta = json.loads((store / "tiles.json").read_text())
    emb = np.memmap(store / "embeddings.f32", dtype="<f4", mode="r+", shape=src.embeddings.shape)
    emb[row, 5] += 1.0  # flipped bytes
    emb.flush()
    with pytest.raises(T.TileStoreError, match=rf"damaged.jzt: row {row} of embeddings.f32 .* checksum"):
        Localizer(bundle, store, backend="ort-cpu", threads=1).localize(photos[0])
    emb[row] = np.nan  # NaN with checksums that match: still refused, never "confidence nan"
    emb.flush()
    entry = meta["files"]["embeddings"]
    entry["block_sha256"] = T.block_digests(emb, entry["block_rows"])
    (store / "tiles.json").write_text(json.dumps(meta))
    del emb
    loc = Localizer(bundle, store, backend="ort-cpu", threads=1)
    with pytest.raises(T.TileStoreError, match=f"embedding row {row} holds NaN or Inf"):
        loc.localize(photos[0])


def test_mismatched_stores_are_refused(tmp_path, bundle, store32):  # noqa: F811
    man = load_manifest(bundle)
    good = TileStore(store32)
    other = write_store(tmp_path / "other.jzt", good.region, good.dim, "someone-else", lambda r: (np.zeros((len(r), good.dim)), None),
                        batch=4096, progress=False)
    with pytest.raises(LocalizerError, match="rebuild it with jzi-tiles build"):
        Localizer(bundle, other)
    shallow = write_store(tmp_path / "shallow.jzt", replace(good.region, steps=3), good.dim, man["encoder_id"],
                          lambda r: (np.zeros((len(r), good.dim)), None), batch=4096, progress=False)
    with pytest.raises(LocalizerError, match="3 steps"):
        Localizer(bundle, shallow)
    # a store for another place with the same geometry is fine: the decoder is region-agnostic
    moved = write_store(tmp_path / "moved.jzt", replace(good.region, center_lat=40.0, center_lon=-75.0), good.dim,
                        man["encoder_id"], lambda r: (np.asarray(good.embeddings[r], np.float32), None), batch=4096,
                        dtype="float32", progress=False)
    r = Localizer(bundle, moved, backend="ort-cpu").localize(np.zeros((40, 80, 3), np.uint8))
    assert abs(r.latitude - 40.0) < 0.1 and abs(r.longitude + 75.0) < 0.1


@pytest.mark.filterwarnings("ignore:Specified provider")  # this CPU build has no GPU provider: ORT says so
def test_a_gpu_provider_that_falls_back_is_refused_and_auto_goes_on(bundle, monkeypatch, tmp_path):  # noqa: F811
    """onnxruntime-gpu lists TensorRT's provider even where TensorRT's libraries are missing, and then runs on
    CUDA's (seen on an H200, RESULTS.md): ort-trt is refused rather than measured under the wrong name, and
    auto goes on to the next backend. Here every session falls back to the CPU provider."""
    import onnxruntime as ort

    from jzi.runtime.backends import onnxrt

    class FellBack(ort.InferenceSession):
        def get_providers(self):
            return ["CPUExecutionProvider"]

    monkeypatch.setattr(ort, "InferenceSession", FellBack)
    monkeypatch.setattr(onnxrt, "providers_available",
                        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # ORT-TensorRT's engine cache
    man = load_manifest(bundle)
    for backend, provider in (("ort-trt", "TensorrtExecutionProvider"), ("ort-cuda", "CUDAExecutionProvider")):
        with pytest.raises(BackendUnavailable, match=f"^{backend} backend not available: ONNX Runtime could not "
                                                     f"start its {provider} .* fell back to CPUExecutionProvider$"):
            open_backend(bundle, man, backend)
    assert open_backend(bundle, man, "auto").name == "ort-cpu"


def test_gpu_backends_say_why_they_are_unavailable(bundle):  # noqa: F811
    import onnxruntime as ort

    man = load_manifest(bundle)
    with pytest.raises(BackendUnavailable, match="^tensorrt backend not available: .*TensorRT engines"):
        open_backend(bundle, man, "tensorrt")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(BackendUnavailable, match="^ort-cuda backend not available: onnxruntime-gpu"):
            open_backend(bundle, man, "ort-cuda")
    with pytest.raises(BackendUnavailable, match="unknown backend"):
        open_backend(bundle, man, "coreml")
    assert open_backend(bundle, man, "auto").name.startswith(("ort-", "tensorrt"))
