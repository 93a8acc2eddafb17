"""The demo's report: a short table against chance, every answer in a file, the next commands."""
from __future__ import annotations

import csv

import pytest

from jzi.export.demo import chance_levels, next_steps, report, write_answers
from jzi.runtime.geometry import Region, distance_m

REGION = Region.default()


def _rows(paths, true_paths):
    rows = []
    for p, t in zip(paths, true_paths):
        truth, answer = tuple(REGION.path_center(t)), tuple(REGION.path_center(p))
        rows.append({"image": f"q{len(rows)}", "truth": truth, "answer": answer, "path": list(p), "true_path": list(t),
                     "error_m": float(distance_m(answer, truth)), "confidence": 0.5, "step_probs": [0.9] * 4})
    return rows


def test_chance_is_exact_over_every_final_cell():
    truth = REGION.path_center([5, 6, 9, 5])  # a cell centre away from the region's edge
    c = chance_levels(REGION, [truth])
    # within 40 m of a 39.06 m cell's centre: the cell itself and its 4 edge neighbours; 100 m adds 16 more
    assert c["R@40m"] == c["R@50m"] == pytest.approx(5 / 65536)
    assert c["R@100m"] == pytest.approx(21 / 65536)
    assert c["first"] == 1 / 16 and c["strict"] == c["confidence"] == 1 / 65536
    assert 3000 < c["median_error_m"] < 6000  # a random cell of a 10 km square is kilometres away


def test_table_answers_file_and_next_steps(tmp_path):
    true = [[5, 6, 9, 3]] * 4
    pred = [[5, 6, 9, 3], [5, 6, 9, 2], [5, 1, 1, 1], [2, 1, 1, 1]]  # right, one cell off, first step only, wrong
    rows = _rows(pred, true)
    text = report(rows, REGION, chance_levels(REGION, [r["truth"] for r in rows]))
    lines = {line.strip().split("  ")[0]: line for line in text.splitlines() if line.startswith("   ")}
    assert lines["answer within 40 m (R@40m)"].split()[-4:-2] == ["50.0", "%"]  # 2 of 4 within 40 m
    assert lines["first step right (1 of 16 cells)"].split()[-4:] == ["75.0", "%", "6.2", "%"]
    assert lines["all 4 steps right"].split()[-4:-2] == ["25.0", "%"]
    assert "median error" in lines and "median confidence" in lines
    assert "Confidence is the model's probability for its whole path" in text and "nan" not in text
    assert len(text.splitlines()) < 20

    path = write_answers(rows, tmp_path / "answers.csv")
    with open(path, newline="") as f:
        got = list(csv.DictReader(f))
    assert [int(r["steps_right"]) for r in got] == [4, 3, 1, 0]
    assert float(got[1]["error_m"]) == pytest.approx(39.06, abs=0.1)
    assert not list(tmp_path.glob(".*"))

    world = tmp_path / "world"
    (world / "streetview" / "images").mkdir(parents=True)
    (world / "streetview" / "images" / "test_000000_undistorted.jpg").write_bytes(b"")
    tail = next_steps(tmp_path, world, tmp_path / "train", tmp_path / "bundle", tmp_path / "region.jzt",
                      tmp_path / "zoom_path.png", path, 12.0)
    assert str(path) in tail and "zoom_path.png" in tail
    run_lines = [line for line in tail.splitlines() if "jzi-run --engine" in line]
    assert len(run_lines) == 3 and "--beams 4" in run_lines[1] and "--viz path.png --source" in run_lines[2]
    assert all("test_000000_undistorted.jpg" in line for line in run_lines)
    assert len(tail.splitlines()) < 12


def test_demo_reuses_only_the_same_world(tmp_path):
    """An earlier run's world is reused only when its version and settings are this run's."""
    import json
    from dataclasses import asdict

    from jzi.export.demo import _same_world
    from jzi.export.synthetic import WORLD_VERSION, WorldConfig, easy_config

    cfg = WorldConfig(sizes=(6, 2, 2))
    (tmp_path / "world.json").write_text(json.dumps({"version": WORLD_VERSION, "config": asdict(cfg)}))
    assert _same_world(tmp_path, cfg)
    assert not _same_world(tmp_path, easy_config(cfg))
    assert not _same_world(tmp_path, WorldConfig(sizes=(7, 2, 2)))
    (tmp_path / "world.json").write_text(json.dumps({"version": 1, "config": asdict(cfg)}))
    assert not _same_world(tmp_path, cfg)
    (tmp_path / "world.json").write_text("{not json")
    assert not _same_world(tmp_path, cfg)
