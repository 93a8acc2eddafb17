"""Which optional extra of ``pip install jzi[...]`` a command needs, checked before any work starts.

``pip install jzi`` alone is the runtime (numpy, ONNX Runtime, OpenCV). Commands that need more
call :func:`missing_extras` up front and print :func:`install_hint` as their one error line,
instead of failing later with a traceback. ``find_spec`` only looks a module up, it imports nothing.
"""
from __future__ import annotations

from importlib.util import find_spec

# extra -> the modules it provides that jzi imports (names as imported, not as installed)
EXTRAS = {
    "torch": ("torch", "transformers", "onnx", "onnxscript", "albumentations"),
    "geo": ("rasterio", "pyproj", "tiledwebmaps", "yaml", "requests"),
}


def _absent(module: str) -> bool:
    try:
        return find_spec(module) is None
    except (ImportError, ValueError):  # a broken install counts as absent
        return True


def missing_extras(*extras: str) -> dict[str, list[str]]:
    """{extra: [its absent modules]} for each of ``extras`` that is not fully installed."""
    out = {}
    for extra in extras:
        absent = [m for m in EXTRAS[extra] if _absent(m)]
        if absent:
            out[extra] = absent
    return out


def install_hint(prog: str, missing: dict[str, list[str]]) -> str:
    """One line: what is missing and the pip command that installs it."""
    names = list(missing)
    modules = ", ".join(m for ms in missing.values() for m in ms)
    plural = "s" if len(names) > 1 else ""
    return (f"{prog}: needs the {' and '.join(names)} extra{plural} (missing {modules}): "
            f"pip install 'jzi[{','.join(names)}]'")
