"""Check, without a GPU, that every TensorRT Python name jzi uses exists in published TensorRT bindings.

    python benchmarks/check_tensorrt_names.py WHEEL_OR_DIR [WHEEL_OR_DIR ...]
    python benchmarks/check_tensorrt_names.py --download 10.13.* 11.4.*   # fetch tensorrt-cu12-bindings wheels

The binding wheels (``tensorrt-cu12-bindings``, ``tensorrt_bindings/tensorrt.so`` inside) hold the
pybind11 module but not the TensorRT libraries, so they cannot be imported here; pybind11 keeps every
class, method, property and enum value name as a string in the module binary, and that table is
what this reads. The names come from jzi's TensorRT code itself (an AST walk over the files in
``TRT_FILES``): every attribute it reads that is not jzi's own, not numpy's, CUDA's or Python's.
Exit status 1 and one line per missing name (and version) when a name is missing.
"""
from __future__ import annotations

import argparse
import ast
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TRT_FILES = ("runtime/backends/tensorrt.py", "export/tensorrt_build.py")
# roots of attribute chains that are not TensorRT objects
FOREIGN_ROOTS = {"np", "os", "sys", "time", "json", "ctypes", "tempfile", "subprocess", "shutil", "platform", "Path",
                 "datetime", "timezone", "B", "importlib", "itertools"}
CUDA_PARTS = {"rt", "cudart", "cuda"}  # cuda-python's runtime module, however the code reaches it
# files whose definitions (base classes) are jzi's own attributes, not TensorRT's
OWN_FILES = ("runtime/backends/__init__.py",)
BINDING_PACKAGE = "tensorrt-cu12-bindings"


def _root(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def _python_names() -> set[str]:
    """Attribute names of the Python and numpy types jzi's TensorRT code also handles."""
    names = set()
    import ctypes
    import io
    from datetime import datetime

    for obj in (str, bytes, list, dict, tuple, int, float, set, Path("."), np.zeros(1), np.dtype("f4"),
                type(ctypes.c_char * 1), ctypes.c_int(0), datetime, io.BufferedWriter, _python_names):
        names |= set(dir(obj))
    return names


def _own_names(tree: ast.AST) -> set[str]:
    """Names jzi defines itself: functions, classes and attributes it assigns."""
    own = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            own.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            own.add(node.attr)
    return own


def used_names(files=TRT_FILES) -> dict[str, set[str]]:
    """{attribute name: files using it} for every name that should come from TensorRT."""
    python = _python_names()
    shared = set().union(*(_own_names(ast.parse((ROOT / rel).read_text())) for rel in OWN_FILES))
    used: dict[str, set[str]] = {}
    for rel in files:
        path = ROOT / rel
        if not path.is_file():
            continue
        tree = ast.parse(path.read_text())
        own = _own_names(tree) | shared
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute) or node.attr in own or node.attr in python:
                continue
            base = _root(node.value).split(".")
            if base[0] in FOREIGN_ROOTS or CUDA_PARTS & set(base) or node.attr.startswith("cuda"):
                continue
            used.setdefault(node.attr, set()).add(rel)
    return used


def binding_strings(source: Path) -> tuple[str, set[str]]:
    """(version, the NUL-terminated strings and identifiers of the binding module) from a wheel or a folder."""
    if source.is_file():
        with zipfile.ZipFile(source) as z:
            blobs = [z.read(n) for n in z.namelist() if n.endswith((".so", "__init__.py", ".pyd"))]
        version = source.name.split("-")[1]
    else:
        blobs = [p.read_bytes() for p in source.rglob("*") if p.suffix in (".so", ".pyd") or p.name == "__init__.py"]
        version = source.name
    strings = set()
    for blob in blobs:
        strings |= {s.decode("latin-1") for s in re.split(rb"[\x00\s.:'\"(),]", blob) if s}
    return version, strings


def present(name: str, strings: set[str]) -> bool:
    """``name`` is a string of the module, or the tail of one: linkers store a string that ends another
    string inside it (an enum value ``INPUT`` may live at the end of ``SHAPE_INPUT``)."""
    return name in strings or any(s.endswith(name) for s in strings)


def download(specs: list[str], folder: Path) -> list[Path]:
    wheels = []
    for spec in specs:
        dest = folder / spec.replace("*", "x")
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "-d", str(dest), f"{BINDING_PACKAGE}=={spec}"], check=True)
        wheels += sorted(dest.glob("*.whl"))
    return wheels


def check(sources: list[Path], files=TRT_FILES) -> dict:
    used = used_names(files)
    report = {"names": sorted(used), "versions": {}}
    for src in sources:
        version, strings = binding_strings(src)
        report["versions"][version] = sorted(n for n in used if not present(n, strings))
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("sources", nargs="*", type=Path, help="binding wheels or unpacked folders")
    p.add_argument("--download", nargs="+", metavar="VERSION", help=f"{BINDING_PACKAGE} versions to fetch with pip")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        sources = list(a.sources) + (download(a.download, Path(tmp)) if a.download else [])
        if not sources:
            p.error("give binding wheels or --download VERSION ...")
        report = check(sources)
    print(f"{len(report['names'])} TensorRT names used: {', '.join(report['names'])}")
    bad = False
    for version, missing in report["versions"].items():
        print(f"TensorRT {version}: " + (f"MISSING {', '.join(missing)}" if missing else "all present"))
        bad |= bool(missing)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
