"""Console-script entry points: each imports its CLI module only once it can catch Ctrl-C.

Importing a CLI (numpy, OpenCV, ONNX Runtime, torch) takes a while; a Ctrl-C then would print a
``KeyboardInterrupt`` traceback from the import machinery. Here it is one line and exit status 130,
the same as a Ctrl-C later on. This module imports nothing heavy (and never torch) itself.
"""
from __future__ import annotations

import importlib
import sys


def launch(module: str, prog: str) -> int:
    """Import ``module`` and return its ``main()``; Ctrl-C at any point is one line and 130."""
    try:
        return importlib.import_module(module).main()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def _entry(module: str, prog: str):
    def run() -> None:
        sys.exit(launch(module, prog))
    run.__doc__ = f"The ``{prog}`` command."
    return run


jzi_run = _entry("jzi.runtime.run_cli", "jzi-run")
jzi_tiles = _entry("jzi.runtime.tiles_cli", "jzi-tiles")
jzi_export = _entry("jzi.export.cli", "jzi-export")
jzi_train = _entry("jzi.export.train", "jzi-train")
jzi_eval = _entry("jzi.export.evaluate", "jzi-eval")
jzi_synth = _entry("jzi.export.synthetic", "jzi-synth")
jzi_bench = _entry("jzi.export.bench", "jzi-bench")
