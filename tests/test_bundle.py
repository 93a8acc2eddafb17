"""Untrusted bundles: every manifest field checked against one schema, graphs checked against the manifest."""
import json
import shutil
import subprocess
import sys

import pytest
from runtime_fixtures import bundle, geotiff, rt_base, store32  # noqa: F401

from jzi.runtime.backends import open_backend
from jzi.runtime.bundle import BundleError, load_manifest, manifest_tensor_specs, sha256_file
from jzi.runtime.localizer import Localizer


def _edited(tmp_path, bundle, edit, name="edited"):  # noqa: F811
    """A copy of the bundle with ``edit(manifest_dict, bundle_dir)`` applied and the manifest rewritten."""
    dst = tmp_path / name
    shutil.copytree(bundle, dst)
    man = json.loads((dst / "manifest.json").read_text())
    edit(man, dst)
    (dst / "manifest.json").write_text(json.dumps(man))
    return dst


def _set(path, value):
    def edit(man, _):
        *parents, last = path.split(".")
        node = man
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[int(last) if isinstance(node, list) else last] = value
    return edit


@pytest.mark.parametrize("edit, why", [
    # the tracebacks, each now one line naming the field
    (_set("decoder", {}), "decoder.layers is missing"),
    (_set("decoder", "x"), "decoder must be an object, got 'x'"),
    (_set("tensors", {}), "tensors.view_encoder is missing"),
    (_set("decoder.cache_len", 4), "decoder.cache_len is 4, 4 steps need 8"),
    (_set("decoder.layers", 3), "tensors.decoder.inputs names disagree"),
    (_set("n_actions", 8), "n_actions is 8, a 4x4 grid has 16"),
    # more of the same kind
    (_set("decoder.heads", 0), "decoder.heads must be an integer in 1..1024, got 0"),
    (_set("decoder.head_dim", 12), "decoder.heads x decoder.head_dim is 48, width is 96"),
    (_set("width", "96"), "width must be an integer"),
    (_set("image_size", True), "image_size must be an integer"),
    (_set("street_size", [64]), "street_size must hold 2 items"),
    (_set("street_size", [64, 64]), r"street_size is \[64, 64\]"),
    (_set("precision", "fp8"), "precision must be one of"),
    (_set("region.size_m", -1), r"region.size_m must be a finite number in \(0"),
    (_set("region.center_lat", 95.0), "region.center_lat must be a finite number in"),
    (_set("region.steps", 3), "region.grid/steps/view_px disagree"),
    (_set("encoder_id", ""), "encoder_id must be a non-empty string"),
    (_set("files.decoder", {"path": "decoder.onnx"}), "files.decoder.sha256 is missing"),
    (_set("files.decoder.sha256", "abc"), "files.decoder.sha256 must be 64 lowercase hex"),
    (_set("tensors.decoder.inputs.0.dtype", "float64"), r"tensors.decoder.inputs\[0\].dtype must be one of"),
    (_set("tensors.street_encoder.inputs", [{"name": "images", "shape": ["batch", 64, 64, 3], "dtype": "uint8"}]),
     r"tensors.street_encoder.inputs 'images' is uint8 \['batch', 64, 64, 3\], the manifest's sizes imply"),
    (_set("normalization.std", [0.2, 0.2, 0]), r"normalization.std\[2\] must be a finite number"),
    (_set("format_version", 2), "format_version 2, this jzi reads 1"),
])
def test_edited_manifests_are_one_line_naming_the_field(tmp_path, bundle, edit, why):  # noqa: F811
    with pytest.raises(BundleError, match=why) as err:
        load_manifest(_edited(tmp_path, bundle, edit), verify=False)
    assert "\n" not in str(err.value)


def _rehash(man, root):
    for entry in man["files"].values():
        entry["sha256"] = sha256_file(root / entry["path"])


def test_swapped_graphs_with_matching_checksums_are_refused_on_load(tmp_path, bundle, store32):  # noqa: F811
    def swap(man, root):
        shutil.copy(root / "view_encoder.onnx", root / "street_encoder.onnx")
        _rehash(man, root)
    swapped = _edited(tmp_path, bundle, swap)
    man = load_manifest(swapped)  # the checksums agree: only the graphs' real I/O tells
    with pytest.raises(BundleError, match=r"the street_encoder graph's input 'images' is uint8 \[.*64, 64, 3\], the "
                                          r"manifest says uint8 \['batch', 64, 128, 3\]"):
        open_backend(swapped, man, "ort-cpu", graphs=("street_encoder",))
    with pytest.raises(BundleError, match="swapped or edited graph"):
        Localizer(swapped, store32, backend="ort-cpu")

    def decoder_as_view_encoder(man, root):
        shutil.copy(root / "decoder.onnx", root / "view_encoder.onnx")
        _rehash(man, root)
    other = _edited(tmp_path, bundle, decoder_as_view_encoder, "other")
    with pytest.raises(BundleError, match=r"the view_encoder graph's inputs are \['query', 'view'"):
        open_backend(other, load_manifest(other), "ort-cpu", graphs=("view_encoder",))


def test_a_consistently_edited_manifest_is_caught_by_the_graphs(tmp_path, bundle):  # noqa: F811
    """Every size field edited to agree with the others (and the checksums fine): the graphs still disagree."""
    def smaller_views(man, root):
        man["image_size"] = man["region"]["view_px"] = 32
        man["street_size"] = [32, 64]
        man["tensors"] = manifest_tensor_specs(man)
    edited = _edited(tmp_path, bundle, smaller_views)
    man = load_manifest(edited)
    with pytest.raises(BundleError, match=r"view_encoder graph's input 'images' is uint8 \[.*64, 64, 3\]"):
        open_backend(edited, man, "ort-cpu", graphs=("view_encoder",))


def test_both_clis_print_one_line_for_an_edited_manifest(tmp_path, bundle, store32, geotiff, rt_base):  # noqa: F811
    edited = _edited(tmp_path, bundle, _set("decoder", "x"))
    photo = tmp_path / "p.png"
    import cv2
    import numpy as np

    cv2.imwrite(str(photo), np.zeros((20, 40, 3), np.uint8))
    for prog, cmd in (("jzi-run", ["jzi.runtime.run_cli", "--engine", edited, "--tiles", store32, photo]),
                      ("jzi-tiles", ["jzi.runtime.tiles_cli", "build", "--engine", edited, "--source", geotiff,
                                     "-o", tmp_path / "o.jzt"])):
        r = subprocess.run([sys.executable, "-m", *map(str, cmd)], capture_output=True, text=True, timeout=300)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.strip().splitlines() == [
            f"{prog}: error: {edited}/manifest.json: decoder must be an object, got 'x'"]
