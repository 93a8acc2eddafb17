"""The retrieval peer of the scale suite: a random database made block by block is the same database, the
block-wise ground truth is exhaustive search, a FAISS build stopped and resumed is the build done in one go,
and the suite runs end to end on a tiny size."""
import json

import numpy as np
import pytest
from helpers import run_main

import jzi.export.retrieval as retrieval
from jzi.export import bench_scale
from jzi.export.retrieval import FlatIndex, random_block, random_database

faiss = pytest.importorskip("faiss", reason="faiss-cpu comes with jzi[bench], which make install installs")


@pytest.fixture
def small_blocks(monkeypatch):
    monkeypatch.setattr(retrieval, "RANDOM_BLOCK", 1000)  # several blocks, the last one partial


def test_random_database_is_the_same_made_block_by_block(small_blocks):
    db, _ = random_database(2500, 16, seed=3)
    assert db.shape == (2500, 16) and np.allclose(np.linalg.norm(db, axis=1), 1, atol=1e-5)
    for b, (lo, hi) in enumerate([(0, 1000), (1000, 2000), (2000, 2500)]):
        np.testing.assert_array_equal(random_block(2500, 16, b, seed=3), db[lo:hi])
    rows = np.array([2499, 3, 1000, 1999, 42])
    db0, _ = random_database(2500, 16)
    np.testing.assert_array_equal(bench_scale.database_rows(2500, 16, rows), db0[rows])


def test_block_wise_ground_truth_is_exhaustive_search(small_blocks):
    n, d = 2500, 16
    db, _ = random_database(n, d)
    queries = bench_scale.ann_queries(db[[5, 1500, 2400]])
    queries = np.concatenate([queries, np.random.default_rng(1).standard_normal((4, d)).astype(np.float32)])
    index = faiss.IndexFlatIP(d)  # exact: after every block is in, it is the whole database
    truth = np.zeros(len(queries), dtype=np.int64)
    best = np.full(len(queries), -np.inf, dtype=np.float32)
    nxt, times = bench_scale.add_blockwise(index, n, d, queries, (truth, best))
    assert nxt == 3 and index.ntotal == n and set(times) == {"make_s", "add_s", "truth_s"}
    expected = FlatIndex(db).search(queries)[0][:, 0]
    np.testing.assert_array_equal(truth, expected)
    np.testing.assert_array_equal(index.search(queries, 1)[1][:, 0], expected)
    assert list(truth[:3]) == [5, 1500, 2400]


def test_a_build_stopped_and_resumed_is_the_build_in_one_go(small_blocks, tmp_path):
    n, d = 2500, 32
    whole = bench_scale.ann_figures("ivfpq", n, d, 1)
    state = tmp_path / "state"
    sittings = [bench_scale.ann_figures("ivfpq", n, d, 1, str(state), 0.0) for _ in range(3)]
    assert [s.get("in_progress", "").split(" ")[0] for s in sittings[:2]] == ["1/3", "2/3"]
    done = sittings[2]
    assert done["sittings"] == 3 and done["params"] == whole["params"] == {"nlist": 64, "pq_bytes": 32, "nprobe": 16}
    for key in ("recall@1", "index_bytes", "queries"):
        assert done[key] == whole[key]
    assert [s["recall@1"] for s in done["sweep"]] == [s["recall@1"] for s in whole["sweep"]]
    assert whole["recall@1"] > 0.5
    # only the last sitting's files are kept; calling again re-measures the finished index
    assert sorted(p.name for p in state.iterdir()) == [
        "best-000003.npy", "index-000003.faiss", "progress.json", "queries-000003.npy", "truth-000003.npy"]
    again = bench_scale.ann_figures("ivfpq", n, d, 1, str(state), 0.0)
    assert again["sittings"] == 3 and again["recall@1"] == done["recall@1"]
    with pytest.raises(SystemExit, match="holds the ivfpq build of 2500 x 32, not of ivfpq, 2600 x 32"):
        bench_scale.ann_figures("ivfpq", 2600, d, 1, str(state), 0.0)


def test_sizes_that_do_not_fit_are_skipped_with_the_arithmetic(monkeypatch):
    monkeypatch.setattr(bench_scale, "_available_memory_bytes", lambda: 23 * 2**30)  # this machine's
    need, how = bench_scale.ann_memory_bytes("hnsw", 16**6, 768)
    assert need > 50 * 2**30 and how == "16,777,216 x (768 x 4 + 2 x 32 x 4) B"
    row = bench_scale.retrieval_rows(16**6, 768, 1, methods=("flat", "hnsw"))
    assert row["flat"]["skipped"].startswith("needs 48.0 GiB in memory (16,777,216 x 768 fp32)")
    assert row["hnsw"]["skipped"].startswith("needs 52.") and row["hnsw"]["skipped"].endswith("23.0 GiB available")
    need, how = bench_scale.ann_memory_bytes("ivfpq", 16**6, 768)
    assert need < 3 * 2**30 and how.startswith("16,777,216 x (64 + 8) B + 163,840 training rows")


def test_retrieval_suite_on_a_tiny_region(tmp_path):
    out = tmp_path / "r.json"
    res = run_main("jzi.export.bench", "retrieval", "--preset", "tiny", "--ann-steps", "3", "--threads", "1",
                   "--workdir", tmp_path / "w", "--json", out)
    assert res.returncode == 0, res.stderr
    (row,) = json.loads(out.read_text())["retrieval"]
    assert (row["cells"], row["dim"]) == (4096, 96)
    assert row["flat"]["db_bytes"] == 4096 * 96 * 4
    for method in ("hnsw", "ivfpq"):
        fig = row[method]
        assert fig["cells"] == 4096 and fig["queries"] == 200 and fig["build_s"] > 0 and fig["index_bytes"] > 0
        assert 0.5 < fig["recall@1"] <= 1 and fig["search_ms"] > 0 and fig["peak_rss_mb"] > 10
    assert row["ivfpq"]["params"] == {"nlist": 64, "pq_bytes": 32, "nprobe": 16}
    assert [s["nprobe"] for s in row["ivfpq"]["sweep"]] == [16, 64]  # 256 > the 64 lists there are


def test_ann_budget_needs_a_state_folder():
    res = run_main("jzi.export.bench", "retrieval", "--ann-budget", "4")
    assert res.returncode == 2 and "--ann-budget needs --ann-state DIR" in res.stderr
