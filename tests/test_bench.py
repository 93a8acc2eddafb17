"""jzi-bench runs as a user runs it and writes the figures it prints (its ``main`` in this process,
tests/helpers.py; the scale suite's worker is a process of its own by design, so it runs as one)."""
import json
import subprocess
import sys

import pytest
from helpers import run_main
from runtime_fixtures import geotiff, rt_base  # noqa: F401


def test_kvcache_suite_writes_json(tmp_path):
    out = tmp_path / "r.json"
    res = run_main("jzi.export.bench", "kvcache", "--preset", "tiny", "--repeats", "2", "--threads", "1",
                   "--workdir", tmp_path / "w", "--json", out)
    assert res.returncode == 0, res.stderr
    data = json.loads(out.read_text())
    rows = data["kvcache"]
    assert [r["steps"] for r in rows] == [4, 8]
    assert all(r["kv_cache_ms"] > 0 and r["recompute_ms"] > 0 for r in rows)
    assert data["machine"]["threads"] == 1 and "== kvcache ==" in res.stdout


def test_flat_worker_reports_memory_and_search_time(tmp_path):
    res = subprocess.run([sys.executable, "-m", "jzi.export.bench", "--worker", "flat", "4096", "64"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    fig = json.loads(res.stdout.strip().splitlines()[-1])
    assert fig["db_bytes"] == 4096 * 64 * 4 and fig["search_ms"] > 0 and fig["peak_rss_mb"] > 10


def test_unknown_suite_is_one_clear_error():
    res = run_main("jzi.export.bench", "nosuch")
    assert res.returncode != 0 and "unknown suite 'nosuch'" in res.stderr


@pytest.mark.slow
def test_throughput_suite_times_builds_against_the_encoder_and_jzi_run_batches(tmp_path, geotiff):  # noqa: F811
    out, wd = tmp_path / "r.json", tmp_path / "w"
    res = run_main("jzi.export.bench", "throughput", "--preset", "tiny", "--precision", "fp32", "--source", geotiff,
                   "--build-views", "64", "--build-batch", "16", "--rounds", "1", "--queries", "3", "--run-batch", "2",
                   "--threads", "1", "--workdir", wd, "--json", out)
    assert res.returncode == 0, res.stderr
    build, run = json.loads(out.read_text())["throughput"]
    # chunks of 16 rows, every 68th of the 274: 0, 68, 136, 204, 272 -> 80 views
    assert (build["views"], build["chunk_rows"], build["shard"]) == (80, 16, "0/68")
    for name in ("view encoder", "jzi-tiles build", "render then encode"):
        assert build[f"{name} views_per_s"] > 0
    assert build["jzi-tiles build / encoder"]["pairs"] == 1 and build["jzi-tiles build / encoder"]["median"] > 0
    # both builders wrote the same bytes into their (unmerged: one shard of 68) builds
    piped, sequential = (wd / f"throughput-random-tiny-s4-fp32{s}.jzt.partial" for s in ("", "-sequential"))
    assert (piped / "embeddings.f16").read_bytes() == (sequential / "embeddings.f16").read_bytes()
    assert sorted(p.name for p in (piped / "done").iterdir()) == [f"{c:08d}" for c in (0, 68, 136, 204, 272)]
    assert run["photos"] == 3 and run["--batch 2 photos_per_s"] > 0 and run["--batch 2 / --batch 1"]["median"] > 0


def test_throughput_suite_asks_for_imagery_for_its_build_half(tmp_path):
    res = subprocess.run([sys.executable, "-m", "jzi.export.bench", "throughput", "--throughput", "build",
                          "--workdir", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "needs --source IMAGERY" in res.stderr and not list(tmp_path.iterdir())


@pytest.mark.slow
def test_decoder_and_query_suites_side_by_side(tmp_path):
    out = tmp_path / "r.json"
    res = run_main("jzi.export.bench", "decoder", "query", "--preset", "tiny", "--repeats", "2", "--queries", "2",
                   "--threads", "1", "--workdir", tmp_path / "w", "--json", out)
    assert res.returncode == 0, res.stderr
    data = json.loads(out.read_text())
    (dec,) = data["decoder"]
    assert dec["rounds"] == 2 and dec["int8 / fp32 zoom time"]["pairs"] == 2
    for name in ("fp32 decoder", "int8 decoder"):
        assert dec[f"{name} zoom_ms p50"] > 0 and len(dec[f"{name} step_ms median"]) == 4
        assert 0 <= dec[f"{name} loop_own_ms median"] < dec[f"{name} zoom_ms p50"]
    (query,) = data["query"]
    assert query["queries"] == 2 and set(query["load"]) == {"before", "after"}
    for name in ("jzi fp32", "jzi int8", "jzi int8 + int8 decoder"):
        assert query[f"{name} p50_ms"] >= query[f"{name} encoder_ms median"] > 0
    for name in ("jzi int8", "jzi int8 + int8 decoder"):
        assert query[f"{name} / jzi fp32"]["pairs"] == 2 and query[f"{name} / jzi fp32"]["median"] > 0
