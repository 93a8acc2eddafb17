"""Fuzzing the untrusted-input readers with hypothesis: bundle manifest, tile-store index, image headers.

Each target gets mutated versions of valid inputs (JSON fields replaced, deleted or retyped, bytes
flipped, files cut short) and random bytes behind real magic numbers. The property: the reader
returns, or raises its own one-line error type (BundleError, TileStoreError, ImageError); any
other exception is a crash. The default suite runs a few hundred inputs per reader;

    python tests/test_fuzz.py --examples 5000 --work DIR

runs the long campaign recorded in benchmarks/RESULTS.md and prints the count of inputs and crashes.
"""
from __future__ import annotations

import json
import resource
import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))
from runtime_fixtures import make_bundle  # noqa: E402

from jzi.runtime.bundle import MANIFEST, BundleError, load_manifest  # noqa: E402
from jzi.runtime.geometry import Region  # noqa: E402
from jzi.runtime.images import ImageError, decode_image, header_size  # noqa: E402
from jzi.runtime.tiles import INDEX, TileStore, TileStoreError, write_store  # noqa: E402

EXAMPLES = 150  # per reader in the default suite
COUNTS = {"manifest": 0, "tile index": 0, "image header": 0}

# ---- inputs ---------------------------------------------------------------------------------------------
# Text from a fixed alphabet (ASCII, control characters, quotes and escapes, non-ASCII letters, an emoji, a lone
# surrogate): over all of Unicode, hypothesis builds a table of every code point on its first text in a fresh
# checkout, 0.2 GB more peak memory in the test process (CI's largest process passed 1 GB that way).
_ALPHABET = "azAZ09 _-.:/\\\"'{}[],\x00\x1f\n\t\x7f\u00e9\u00df\u4e2d\u2028\U0001f600\ud800"
_leaf = (st.none() | st.booleans() | st.integers(-2 ** 40, 2 ** 40) | st.sampled_from([0, 1, -1, 2 ** 63, 2 ** 31])
         | st.floats(allow_nan=True, allow_infinity=True) | st.text(_ALPHABET, max_size=6))
json_values = st.recursive(_leaf, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(_ALPHABET, max_size=4), c,
                                                                                       max_size=3),
                           max_leaves=5)


def _paths(node, prefix=()):
    """Every (container path, key) in a JSON document, so that a mutation can pick any field."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        yield prefix, k
        yield from _paths(v, prefix + (k,))


@st.composite
def mutated_json(draw, doc: dict) -> bytes:
    doc = json.loads(json.dumps(doc))
    for _ in range(draw(st.integers(1, 3))):
        paths = list(_paths(doc))
        parent_path, key = paths[draw(st.integers(0, len(paths) - 1))]
        parent = doc
        for k in parent_path:
            parent = parent[k]
        action = draw(st.sampled_from(["replace", "delete", "retype"]))
        if action == "delete":
            del parent[key]
        elif action == "retype":  # the same value as another JSON type
            v = parent[key]
            parent[key] = draw(st.sampled_from([str(v), [v], {"v": v}, None, -abs(v) if isinstance(v, (int, float))
                                                and not isinstance(v, bool) else 0]))
        else:
            parent[key] = draw(json_values)
    text = json.dumps(doc).encode()  # NaN/Infinity tokens included, as a hand edit could write them
    if draw(st.integers(0, 9)) == 0:  # sometimes damage the bytes themselves
        cut = draw(st.integers(0, len(text)))
        text = text[:cut] + draw(st.binary(max_size=4)) + text[cut + 1:]
    return text


def _seed_images() -> list[bytes]:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (48, 80, 3), dtype=np.uint8)
    seeds = []
    for ext in (".jpg", ".png", ".webp", ".tiff", ".bmp", ".gif", ".jp2", ".avif", ".ppm", ".pgm", ".pam", ".pfm",
                ".ras", ".hdr"):
        src = img.astype(np.float32) / 255 if ext in (".pfm", ".hdr") else img[..., 0] if ext == ".pgm" else img
        ok, buf = cv2.imencode(ext, src)
        if ok:
            seeds.append(buf.tobytes())
    return seeds


SEEDS = _seed_images()
MAGICS = [s[:12] for s in SEEDS] + [b"II+\x00", b"\xff\x4f\xff\x51", b"P7\n", b"P1\n", b"#?RGBE"]


@st.composite
def mutated_image(draw) -> bytes:
    if draw(st.integers(0, 4)) == 0:  # a real magic number, then anything
        return draw(st.sampled_from(MAGICS)) + draw(st.binary(max_size=200))
    data = bytearray(draw(st.sampled_from(SEEDS)))
    header = min(len(data), 300)  # most mutations where the size lives
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, header - 1) if draw(st.booleans()) else st.integers(0, len(data) - 1))
        data[at] = draw(st.integers(0, 255))
    if draw(st.integers(0, 3)) == 0:
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


# ---- targets --------------------------------------------------------------------------------------------
def check_manifest(bundle_dir: Path, text: bytes) -> None:
    COUNTS["manifest"] += 1
    (bundle_dir / MANIFEST).write_bytes(text)
    try:
        load_manifest(bundle_dir, verify=False)
    except BundleError as e:
        assert "\n" not in str(e)


def check_index(store_dir: Path, text: bytes) -> None:
    COUNTS["tile index"] += 1
    (store_dir / INDEX).write_bytes(text)
    try:
        store = TileStore(store_dir)
        store.read_rows([0, store.total_views - 1])
    except TileStoreError as e:
        assert "\n" not in str(e)


def _peak_kib() -> int:
    """The process's peak resident memory so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // (1024 if sys.platform == "darwin" else 1)


def check_image(data: bytes) -> None:
    COUNTS["image header"] += 1
    peak = _peak_kib()
    try:
        size = header_size(data)
        img = decode_image(data, max_pixels=4_000_000)
    except ImageError as e:
        assert "\n" not in str(e)
        return
    finally:
        # a few hundred bytes must not cost more than the pixel cap allows (float RGB and its copies: < 100 MB);
        # a peak under an earlier one goes unseen, but a PNG chunk declaring 2 GB (OpenCV allocates it) does not
        assert _peak_kib() - peak < 256 * 1024, f"decoding {len(data)} bytes raised the peak by {_peak_kib() - peak} KiB"
    assert size is not None and size[0] * size[1] <= 4_000_000  # only what the header allowed was decoded
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3


def _bundle_copy(base: Path, out: Path) -> tuple[Path, dict]:
    src = make_bundle(base)
    if not out.exists():
        shutil.copytree(src, out)
    return out, json.loads((src / MANIFEST).read_text())


def _small_store(out: Path) -> tuple[Path, dict]:
    region = replace(Region.default(), steps=2, view_px=16)
    if not out.exists():
        write_store(out, region, 4, "enc", lambda r: (np.ones((len(r), 4)), None), progress=False)
    return out, json.loads((out / INDEX).read_text())


# ---- the default suite: a short run of each -------------------------------------------------------------
_SETTINGS = dict(deadline=None, database=None, suppress_health_check=list(HealthCheck))
_DEFAULT_SUITE = dict(_SETTINGS, derandomize=True)  # the same inputs every run; the campaign draws new ones


@pytest.fixture(scope="module")
def fuzz_dirs(tmp_path_factory, rt_base):
    work = tmp_path_factory.mktemp("fuzz")
    return _bundle_copy(rt_base, work / "bundle"), _small_store(work / "s.jzt")


def test_fuzz_manifest_reader(fuzz_dirs):
    (bundle_dir, doc), _ = fuzz_dirs

    @settings(max_examples=EXAMPLES, **_DEFAULT_SUITE)
    @given(mutated_json(doc))
    def run(text):
        check_manifest(bundle_dir, text)
    run()


def test_fuzz_tile_index_reader(fuzz_dirs):
    _, (store_dir, doc) = fuzz_dirs

    @settings(max_examples=EXAMPLES, **_DEFAULT_SUITE)
    @given(mutated_json(doc))
    def run(text):
        check_index(store_dir, text)
    run()


@settings(max_examples=EXAMPLES * 2, **_DEFAULT_SUITE)
@given(mutated_image())
def test_fuzz_image_header_readers(data):
    check_image(data)


def campaign(examples: int, work: Path) -> dict:
    """The long run: ``examples`` inputs per reader; a crash is recorded with its input and the run goes on."""
    import traceback

    work.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="campaign-", dir=work))  # an earlier campaign leaves mutated files behind
    (bundle_dir, man), (store_dir, idx) = _bundle_copy(work, work / "fuzz_bundle"), _small_store(work / "fuzz.jzt")
    crashes: dict[str, list] = {k: [] for k in COUNTS}
    targets = {"manifest": (mutated_json(man), lambda x: check_manifest(bundle_dir, x)),
               "tile index": (mutated_json(idx), lambda x: check_index(store_dir, x)),
               "image header": (mutated_image(), check_image)}
    for name, (strategy, target) in targets.items():
        @settings(max_examples=examples, **_SETTINGS)
        @given(strategy)
        def run(x):
            try:
                target(x)
            except Exception:  # keep going: count every crash, keep the first few inputs
                crashes[name].append((x[:300], traceback.format_exc(limit=3)[-600:]))
        run()
    return {name: {"inputs": COUNTS[name], "crashes": len(crashes[name]), "examples": crashes[name][:3]}
            for name in COUNTS}


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--examples", type=int, default=5000)
    ap.add_argument("--work", type=Path, required=True)
    a = ap.parse_args()
    report = campaign(a.examples, a.work)
    for name, r in report.items():
        print(f"{name}: {r['inputs']} inputs, {r['crashes']} crashes")
        for data, tb in r["examples"]:
            print("  input:", data[:120], "\n ", tb.replace("\n", "\n  "))
