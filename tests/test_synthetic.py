"""The synthetic world: jzi-synth output in the authors' format, determinism, cross-view street photos."""
import csv
import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from jzi.export.synthetic import World, WorldConfig
from jzi.runtime.geometry import Region
from jzi.runtime.imagery import open_source

FAST = ["--meters-per-pixel", "10", "--train", "6", "--val", "3", "--test", "3", "--quiet"]


def synth(out, *extra):
    """jzi-synth as a user runs it, in its own process: a world's generation peaks 0.2 GB above the test
    process's heap (RESULTS.md, issue 12)."""
    return subprocess.run([sys.executable, "-m", "jzi.export.synthetic", str(out), *FAST, *extra],
                          capture_output=True, text=True)


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "w"
    r = synth(out, "--seed", "5")
    assert r.returncode == 0, r.stderr
    return out


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_cli_writes_the_authors_format(world_dir):
    info = json.loads((world_dir / "world.json").read_text())
    assert info["splits"] == {"train": 6, "val": 3, "test": 3}
    region = Region.from_dict(info["config"]["region"])
    default = Region.default()
    assert (region.center_lat, region.center_lon, region.size_m) == (default.center_lat, default.center_lon, 10000.0)
    layout = (world_dir / "satellite" / "layout.yaml").read_text()
    assert "preset: XYZ" in layout and "min_zoom" in layout and "max_zoom" in layout
    assert (world_dir / "world.tif").is_file()
    for split, n in info["splits"].items():
        rows = read_csv(world_dir / "metadata" / f"{split}.csv")
        assert len(rows) == n
        for row in rows:
            assert row["image_id"].startswith(split)
            latlon = np.array([float(row["latitude"]), float(row["longitude"])])
            assert region.contains(latlon)
            seq = json.loads(row["sequence"])
            assert seq == region.ground_truth_path(latlon).tolist()
            img = cv2.imread(str(world_dir / "streetview" / "images" / f"{row['image_id']}_undistorted.jpg"))
            assert img is not None and img.shape == (128, 256, 3)
    # the imagery is readable by every source and covers the region
    for src in (open_source(world_dir / "satellite"), open_source(world_dir / "world.tif")):
        view = src.render(region.center, region.size_m, 64)
        assert view.std() > 10  # not a blank image


def test_same_seed_same_world_other_seed_other_world(world_dir, tmp_path):
    again, other = tmp_path / "again", tmp_path / "other"
    assert synth(again, "--seed", "5").returncode == 0
    assert synth(other, "--seed", "6").returncode == 0
    assert read_csv(again / "metadata" / "train.csv") == read_csv(world_dir / "metadata" / "train.csv")
    name = "streetview/images/test_000001_undistorted.jpg"
    assert (again / name).read_bytes() == (world_dir / name).read_bytes()
    assert read_csv(other / "metadata" / "train.csv") != read_csv(world_dir / "metadata" / "train.csv")


def test_existing_output_is_refused_without_overwrite(world_dir):
    before = (world_dir / "world.json").read_text()
    r = synth(world_dir)
    assert r.returncode != 0
    assert r.stderr.strip().count("\n") == 0 and "already exists" in r.stderr and "Traceback" not in r.stderr
    assert (world_dir / "world.json").read_text() == before


def test_bad_flags_are_one_line_errors(tmp_path):
    r = subprocess.run([sys.executable, "-m", "jzi.export.synthetic", str(tmp_path / "x"), "--train", "-1"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "must be >= 0" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "x").exists()


@pytest.fixture(scope="module")
def small_world():
    return World(WorldConfig(seed=2, meters_per_pixel=10.0, sizes=(0, 0, 0)))


def test_street_photo_heading_is_a_rotation_of_the_panorama(small_world):
    """With a full 360 degree view, turning the camera rolls the photo: the heading is not in the pixels' layout
    but the content is the same, so a matcher must reason about rotation, not copy pixels."""
    w = small_world
    pos = w.region.child_center(w.region.center, w.region.size_m, 5)
    a = w.street_photo(pos, 0.0, 360.0, np.random.default_rng(1)).astype(np.float64)
    b = w.street_photo(pos, 90.0, 360.0, np.random.default_rng(1)).astype(np.float64)
    quarter = a.shape[1] // 4
    assert np.abs(a - b).mean() > 5  # different pictures...
    assert np.abs(np.roll(a, -quarter, axis=1) - b).mean() < 0.4 * np.abs(a - b).mean()  # ...of the same place


def test_each_zoom_level_carries_information(small_world):
    """Sibling cells differ at every level used for the decision: districts by ground, neighbourhoods by roof
    colour, blocks by building height and pattern."""
    w, r = small_world, small_world.region
    src = w.source
    for level in (1, 2, 3):
        parent = [5, 6, 9][:level - 1]
        centers = r.view_centers(np.array([parent + [a] for a in range(16)]))[:, -1]
        views = np.stack([src.render(c, r.level_size_m(level), 16).astype(np.float64) for c in centers])
        desc = views.reshape(16, -1)
        d = np.sqrt(((desc[:, None] - desc[None]) ** 2).mean(-1))
        assert np.min(d + 1e9 * np.eye(16)) > 3, level  # no two siblings look alike


def test_each_block_shows_its_code_on_its_paving(small_world):
    """Version 2 of the world: a block's open ground and streets take its code (brightness by block column,
    colourfulness by block row), so a photo shows its block underfoot; --buildings-only is version 1."""
    from jzi.export.synthetic import BLOCK_GROUND_SATURATION, BLOCK_GROUND_TONE

    w2 = small_world
    w1 = World(WorldConfig(seed=2, meters_per_pixel=10.0, sizes=(0, 0, 0), block_ground=False))
    r = w2.region
    a, b = w1.image.astype(np.float64), w2.image.astype(np.float64)
    assert np.array_equal(w1.height, w2.height) and np.array_equal(w1.water, w2.water)  # same places
    mpp = w2.span_m / w2.px
    ys = (np.arange(w2.px) + 0.5) * mpp - w2.cfg.margin_m
    blocks = np.floor(ys / r.level_size_m(3)).astype(int)
    checked = 0
    for row in range(16, 20):  # the 16 blocks of one neighbourhood
        for col in range(16, 20):
            inside = (blocks[:, None] == row) & (blocks[None, :] == col)
            paved = inside & (w2.height == 0) & ~w2.water & (np.abs(a - b).sum(-1) > 3) & (a.mean(-1) > 20)
            assert paved.sum() > 20
            tone = np.median(b[paved].mean(-1) / a[paved].mean(-1))
            colourful = np.median(b[paved].std(-1) / np.maximum(a[paved].std(-1), 1)) / tone
            assert abs(tone - BLOCK_GROUND_TONE[col % 4]) < 0.06, (row, col, tone)
            assert abs(colourful - BLOCK_GROUND_SATURATION[row % 4]) < 0.15, (row, col, colourful)
            checked += 1
    assert checked == 16


def test_buildings_only_writes_version_1(tmp_path):
    assert synth(tmp_path / "v1", "--buildings-only", "--train", "0", "--val", "0", "--test", "1").returncode == 0
    info = json.loads((tmp_path / "v1" / "world.json").read_text())
    assert info["version"] == 1 and info["config"]["block_ground"] is False


def test_easy_world_photos_are_clean_panoramas(small_world):
    """--easy: the same city, photographed without occluders or camera changes: turning the camera only
    rolls the panorama (up to the sampling of one column), while the default world's photos differ more."""
    from jzi.export.synthetic import easy_config

    w = World(easy_config(small_world.cfg))
    pos = w.region.child_center(w.region.center, w.region.size_m, 5)
    a = w.street_photo(pos, 0.0, 360.0, np.random.default_rng(1)).astype(np.float64)
    b = w.street_photo(pos, 90.0, 360.0, np.random.default_rng(2)).astype(np.float64)
    rolled = np.abs(np.roll(a, -a.shape[1] // 4, axis=1) - b)
    assert np.median(rolled) < 2 and np.abs(a - b).mean() > 5
    assert np.array_equal(w.image, small_world.image)  # the same imagery


def test_generation_is_torch_free():
    code = "import sys, jzi.export.synthetic; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
