"""The side-by-side harness: one process per contender, strict alternation, per-pair ratios."""
from pathlib import Path

import pytest

from jzi.export.bench_harness import HarnessError, ratio_summary, side_by_side

TESTS = str(Path(__file__).parent)


def test_contenders_alternate_in_their_own_processes(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", TESTS)
    log = tmp_path / "turns.log"
    res = side_by_side({"a": ("bench_servers:fixed", {"name": "a", "ms": 10, "log": str(log)}),
                        "b": ("bench_servers:fixed", {"name": "b", "ms": 25, "log": str(log)})},
                       rounds=3, warmup=1)
    turns = [line.split() for line in log.read_text().splitlines()]
    assert [name for name, _ in turns] == ["a", "b"] * 4  # 1 warm-up round + 3 measured, A/B/A/B
    pids = {name: {pid for n, pid in turns if n == name} for name in ("a", "b")}
    assert len(pids["a"]) == len(pids["b"]) == 1 and pids["a"] != pids["b"]
    assert res["baseline"] == "a" and res["contenders"]["b"]["ms"] == [25.0] * 3
    assert res["ratios"]["b"]["median"] == pytest.approx(2.5) and res["ratios"]["b"]["pairs"] == 3
    assert res["speedups"]["b"]["median"] == pytest.approx(0.4)
    assert len(res["load"]["before"]) == 3


def test_a_contender_that_cannot_start_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", TESTS)
    with pytest.raises(HarnessError, match="'bad' died: RuntimeError: this contender cannot load"):
        side_by_side({"bad": ("bench_servers:broken", {})}, rounds=1)


def test_ratio_summary_is_the_median_of_pairs_with_spread():
    s = ratio_summary([1.0, 2.0, 10.0, 3.0])
    assert s["median"] == 2.5 and s["min"] == 1.0 and s["max"] == 10.0 and s["pairs"] == 4
    assert s["p25"] <= s["median"] <= s["p75"]
