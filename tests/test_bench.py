"""jzi-bench runs as a user runs it and writes the figures it prints (its ``main`` in this process,
tests/helpers.py; the scale suite's worker is a process of its own by design, so it runs as one)."""
import json
import subprocess
import sys

from helpers import run_main


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
