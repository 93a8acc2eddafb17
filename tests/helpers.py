"""Running a command's ``main(argv)`` inside the test process.

The torch-side commands cost a fresh interpreter 5-90 s just to import torch and transformers on a
busy 2-core machine; the console scripts call exactly this ``main``, so the exit status and the
stdout/stderr lines a user sees are the same. (tests/test_extras.py runs the installed entry points
in real subprocesses.)
"""
from __future__ import annotations

import contextlib
import importlib
import io
import subprocess
import sys


def run_main(module: str, *args) -> subprocess.CompletedProcess:
    """``python -m module *args`` in this process: a CompletedProcess with returncode, stdout, stderr.

    A command's ``--threads N`` sets torch's process-wide thread count; it is put back afterwards, so
    that one command's setting does not slow (or change) the tests that follow."""
    argv = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    torch = sys.modules.get("torch")
    threads = torch.get_num_threads() if torch else None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = importlib.import_module(module).main(argv)
        except SystemExit as e:  # argparse errors and --help
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        finally:
            if threads is not None:
                torch.set_num_threads(threads)
    if code == 130:  # the command caught a Ctrl-C meant for pytest: pass it on, or pytest would go on
        raise KeyboardInterrupt
    return subprocess.CompletedProcess([module, *argv], code or 0, out.getvalue(), err.getvalue())
