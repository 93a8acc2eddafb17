"""The dataset loader: validation of bad rows, teacher-forcing samples, augmentations, the view bank."""
import csv
import shutil
from dataclasses import replace

import cv2
import numpy as np
import pytest
from helpers import make_world_apart

from jzi.export.config import get_preset
from jzi.export.synthetic import WorldConfig
from jzi.runtime.imagery import open_source

REGION = get_preset("tiny").zoom


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "w"
    make_world_apart(out, WorldConfig(seed=4, meters_per_pixel=10.0, sizes=(12, 4, 4)))
    return out


@pytest.fixture(scope="module")
def bank_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("bank") / "views.npy"


@pytest.fixture(scope="module")
def bank(world, bank_cache):
    from jzi.export.data import ViewBank

    return ViewBank(world / "satellite", REGION, cache=bank_cache)


def test_parse_sequence():
    from jzi.export.data import parse_sequence

    assert parse_sequence("[4, 13, 1, 7]", 4, 16) == (4, 13, 1, 7)
    for bad in ("[4, 13, 1", "[4, 13, 1]", "[4, 13, 1, 16]", "[4, 13, 1, 'a']", "4 13 1 7", "[4, 13, 1, 7.0]"):
        with pytest.raises(ValueError):
            parse_sequence(bad, 4, 16)


def test_bad_rows_are_counted_named_and_skipped_or_refused(world, tmp_path):
    from jzi.export.data import DataError, image_path, read_split

    root = tmp_path / "broken"
    shutil.copytree(world, root)
    rows = list(csv.DictReader(open(world / "metadata" / "train.csv", newline="")))
    image_path(root, rows[0]["image_id"]).unlink()  # missing
    image_path(root, rows[1]["image_id"]).write_bytes(b"\xff\xd8 this is not a jpeg")  # corrupt
    rows[2]["latitude"] = "10.0"  # outside the region
    rows[3]["sequence"] = "[1, 2"  # malformed
    rows[4]["sequence"] = "[1, 2, 3]"  # wrong length
    rows[5]["longitude"] = "east"  # not a number
    with open(root / "metadata" / "train.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    lines = []
    records = read_split(root, "train", REGION, log=lines.append)
    assert len(records) == len(rows) - 6
    assert len(lines) == 1
    line = lines[0]
    for kind, n in (("missing image", 1), ("corrupt image", 1), ("outside region", 1), ("malformed sequence", 2),
                    ("bad coordinates", 1)):
        assert f"{n} {kind}" in line, line
    assert rows[0]["image_id"] in line and rows[1]["image_id"] in line
    with pytest.raises(DataError, match="refused"):
        read_split(root, "train", REGION, on_bad="error")


def test_bad_metadata_files_are_one_clear_error(world, tmp_path):
    from jzi.export.data import DataError, read_split

    with pytest.raises(DataError, match="no such metadata"):
        read_split(world, "nope", REGION)
    (tmp_path / "metadata").mkdir()
    (tmp_path / "metadata" / "x.csv").write_text("image_id,latitude\na,1\n")
    with pytest.raises(DataError, match="missing column"):
        read_split(tmp_path, "x", REGION)


def test_samples_follow_the_true_path(world, bank):
    from jzi.export.data import ZoomDataset, image_path, read_split, split_halves, stretch_street

    records = read_split(world, "train", REGION)
    ds = ZoomDataset(world, records, bank, augment=False)
    src = open_source(world / "satellite")
    s = ds[3]
    rec = records[3]
    assert s["ground"].shape == (2, 64, 64, 3) and s["views"].shape == (4, 64, 64, 3)
    assert s["actions"].tolist() == list(rec.path)
    centers = REGION.view_centers(np.array(rec.path[:3]))
    for level in range(4):
        expected = src.render(centers[level], REGION.level_size_m(level), 64)
        np.testing.assert_array_equal(s["views"][level].numpy(), expected)
    photo = cv2.cvtColor(cv2.imread(str(image_path(world, rec.image_id))), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(s["ground"].numpy(), split_halves(stretch_street(photo, 64)))


def test_augmentation_keeps_level_zero_and_shapes(world, bank):
    from jzi.export.data import ZoomDataset, read_split

    records = read_split(world, "train", REGION)
    plain = ZoomDataset(world, records, bank, augment=False)[0]
    aug = ZoomDataset(world, records, bank, augment=True, seed=1)[0]
    assert aug["ground"].shape == plain["ground"].shape and aug["views"].shape == plain["views"].shape
    assert (aug["views"][0] == plain["views"][0]).all()  # level 0 is never augmented
    assert not (aug["ground"] == plain["ground"]).all()
    again = ZoomDataset(world, records, bank, augment=True, seed=1)[0]
    assert (again["ground"] == aug["ground"]).all()  # deterministic by seed


def test_an_image_corrupted_after_validation_is_dropped_not_fatal(world, bank, tmp_path):
    from jzi.export.data import ZoomDataset, collate, image_path, read_split

    root = tmp_path / "late"
    shutil.copytree(world, root)
    records = read_split(root, "train", REGION)
    image_path(root, records[1].image_id).write_bytes(b"garbage")
    ds = ZoomDataset(root, records, bank)
    batch = collate([ds[i] for i in range(4)])
    assert batch["dropped"] == 1 and batch["ground"].shape[0] == 3


def test_view_bank_cache_and_lazy_rendering_agree(world, bank, bank_cache, tmp_path):
    from jzi.export.data import ViewBank

    assert bank.views.shape == (REGION.total_views, 64, 64, 3)
    # the bank wrote its cache (np.array_equal: numpy.testing's comparison of 54 MB arrays takes 0.25 GB)
    assert np.array_equal(np.load(bank_cache, mmap_mode="r"), bank.views)
    reread = ViewBank(world / "satellite", REGION, cache=bank_cache)  # served from the cache
    lazy = ViewBank(world / "satellite", REGION, prerender_px=0)
    # a cache made from other imagery is noticed and rendered again, not silently reused (shown on the first two
    # levels: rendering the whole region twice more was most of this test's 8 s)
    small = replace(REGION, steps=2)
    ViewBank(world / "satellite", small, cache=tmp_path / "small.npy")
    stale = np.load(tmp_path / "small.npy")
    stale[0] = 255 - stale[0]
    np.save(tmp_path / "stale.npy", stale)
    fixed = ViewBank(world / "satellite", small, cache=tmp_path / "stale.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "stale.npy")[0], bank.images([0])[0])
    assert (fixed.views == bank.views[:small.total_views]).all()  # tile-store order: level by level
    rows = bank.indices(np.array([[0, 1, 2, 3], [15, 14, 13, 12]]))
    assert rows[:, 0].tolist() == [0, 0] and rows[0, 1] == 1 and rows[1, 3] == REGION.level_offset(3) + 15 * 256 + 14 * 16 + 13
    for b in (reread, lazy):
        np.testing.assert_array_equal(b.images(rows), bank.images(rows))


@pytest.mark.parametrize("shape", [(480, 960), (1080, 1920), (300, 500), (100, 150), (64, 128), (37, 53)])
def test_street_resize_is_the_authors_albumentations_resize(shape):
    """One street resize everywhere (DESIGN §2): bit-equal to albumentations Resize with INTER_LINEAR_EXACT,
    up- and downscaling, and the same function in training (stretch_street), the runtime and the reference."""
    from types import SimpleNamespace

    import torch

    from jzi.export.data import stretch_street

    import albumentations as A

    from jzi.export.model import normalize, split_street
    from jzi.export.reference import AuthorsPipeline
    from jzi.runtime.images import street_input

    photo = np.random.default_rng(shape[0]).integers(0, 256, (*shape, 3), dtype=np.uint8)
    photo = cv2.GaussianBlur(photo, (0, 0), 1.5)  # smooth content, as photos have, plus sharp noise below
    photo[::7] = 255 - photo[::7]
    for size in (64, 384):
        theirs = A.Resize(size, 2 * size, interpolation=cv2.INTER_LINEAR_EXACT)(image=photo)["image"]
        ours = street_input(photo, size)
        np.testing.assert_array_equal(ours, theirs)
        np.testing.assert_array_equal(stretch_street(photo, size), theirs)
        reference = SimpleNamespace(model=SimpleNamespace(cfg=SimpleNamespace(image_size=size)))
        expected = split_street(normalize(torch.from_numpy(theirs)[None]))
        assert torch.equal(AuthorsPipeline.street_tensor(reference, photo), expected)
        if shape != (size, 2 * size):  # another interpolation is another image: the test tells them apart
            assert not np.array_equal(cv2.resize(photo, (2 * size, size), interpolation=cv2.INTER_AREA), theirs)
