"""The baselines jzi is benchmarked against must be right, or the ratios mean nothing."""
from dataclasses import replace

import numpy as np

from jzi.export.config import get_preset
from jzi.export.retrieval import FlatIndex, random_database
from jzi.runtime.geometry import Region


def test_flat_index_finds_the_exhaustive_top_k():
    db, _ = random_database(5000, 32, seed=1)
    rng = np.random.default_rng(2)
    q = db[[17, 4242, 999]] + 0.05 * rng.standard_normal((3, 32)).astype(np.float32)
    idx, scores = FlatIndex(db, chunk=700).search(q, k=5)  # chunks smaller than the database
    full = FlatIndex.normalised(q) @ db.T
    np.testing.assert_array_equal(idx, np.argsort(-full, axis=1)[:, :5])
    np.testing.assert_allclose(scores, np.sort(full, axis=1)[:, ::-1][:, :5], rtol=1e-5)
    assert list(idx[:, 0]) == [17, 4242, 999]


def test_flat_index_cell_centres_follow_the_tile_layout():
    region = Region.default()
    idx = np.array([0, 65535, 12345])
    paths = region.index_path(4, idx)
    np.testing.assert_allclose(FlatIndex(np.zeros((1, 2)), region).latlon(idx), region.path_center(paths))


def test_kv_cache_loop_equals_full_recompute_at_4_and_8_steps():
    import torch

    from jzi.export.model import Decoder
    from jzi.export.reference import decoder_loop

    torch.manual_seed(0)
    for steps in (4, 8):
        cfg = get_preset("tiny")
        cfg = cfg.with_region(replace(cfg.zoom, steps=steps))
        dec = Decoder(cfg).eval()
        g = torch.randn(32, cfg.width)
        table = [torch.randn(min(16**lvl, 512), cfg.width) for lvl in range(steps)]
        cached = decoder_loop(dec, g, table, steps, cached=True)
        full = decoder_loop(dec, g, table, steps, cached=False)
        assert torch.equal(cached, full) and len(set(cached.tolist())) > 1
