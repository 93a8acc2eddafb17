"""Console entry points of the torch side: each checks its extras before importing its module.

On a runtime-only install (no torch, no rasterio) a command says in one line which extra to
install and exits 1, instead of a ``ModuleNotFoundError`` traceback or, for ``jzi-synth``, a
failure after a minute of work. ``--help`` always works: without the extras it prints the
command's own summary (its module docstring, read without importing the module) and that line.
"""
from __future__ import annotations

import ast
import importlib
import sys
from importlib.util import find_spec
from pathlib import Path

from jzi.runtime.extras import install_hint, missing_extras


def _summary(module: str) -> str:
    origin = find_spec(module).origin
    return ast.get_docstring(ast.parse(Path(origin).read_text(encoding="utf-8"))) or ""


def launch(prog: str, module: str, extras: tuple[str, ...], argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    missing = missing_extras(*extras)
    if not missing:
        return importlib.import_module(module).main(argv)
    line = install_hint(prog, missing)
    if "-h" in argv or "--help" in argv:
        print(f"{_summary(module).replace('``', '')}\n\n{line}")
        return 0
    print(line, file=sys.stderr)
    return 1


def train(argv=None) -> int:
    return launch("jzi-train", "jzi.export.train", ("torch", "geo"), argv)


def evaluate(argv=None) -> int:
    return launch("jzi-eval", "jzi.export.evaluate", ("torch", "geo"), argv)


def export(argv=None) -> int:
    return launch("jzi-export", "jzi.export.cli", ("torch",), argv)


def synth(argv=None) -> int:
    return launch("jzi-synth", "jzi.export.synthetic", ("geo",), argv)


def bench(argv=None) -> int:
    return launch("jzi-bench", "jzi.export.bench", ("torch", "geo"), argv)
