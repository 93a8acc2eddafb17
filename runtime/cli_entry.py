"""Console-script entry points: each imports its CLI module only once it can catch Ctrl-C.

Importing a CLI (numpy, OpenCV, ONNX Runtime, torch) takes a while; a Ctrl-C then would print a
``KeyboardInterrupt`` traceback from the import machinery. Here it is one line and exit status 130,
the same as a Ctrl-C later on. This module imports nothing heavy (and never torch) itself.
"""
from __future__ import annotations

import importlib
import sys


def launch(module: str, prog: str, func: str = "main", argv=None) -> int:
    """Import ``module`` and return its ``func(argv)``; Ctrl-C at any point is one line and 130."""
    try:
        return getattr(importlib.import_module(module), func)(argv)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def _entry(module: str, prog: str, func: str = "main"):
    def run(argv=None) -> None:
        sys.exit(launch(module, prog, func, argv))
    run.__doc__ = f"The ``{prog}`` command."
    return run


jzi_run = _entry("jzi.runtime.run_cli", "jzi-run")
jzi_tiles = _entry("jzi.runtime.tiles_cli", "jzi-tiles")
# the torch side checks its extras first (jzi.export.commands: one line naming the extra to install)
jzi_export = _entry("jzi.export.commands", "jzi-export", "export")
jzi_train = _entry("jzi.export.commands", "jzi-train", "train")
jzi_eval = _entry("jzi.export.commands", "jzi-eval", "evaluate")
jzi_synth = _entry("jzi.export.commands", "jzi-synth", "synth")
jzi_bench = _entry("jzi.export.commands", "jzi-bench", "bench")
