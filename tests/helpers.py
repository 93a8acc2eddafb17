"""Running a command's ``main(argv)`` inside the test process; generating a synthetic world outside it.

The torch-side commands cost a fresh interpreter 5-90 s just to import torch and transformers on a
busy 2-core machine; the console scripts call exactly this ``main``, so the exit status and the
stdout/stderr lines a user sees are the same. (tests/test_extras.py runs the installed entry points
in real subprocesses.)
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import io
import json
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


def make_world_apart(out, cfg) -> None:
    """``make_world(out, cfg)`` in its own process: generating even a 10 m/px world peaks 0.15-0.2 GB above what
    the test process holds (RESULTS.md, issue 12). The same seed writes the same world in any process."""
    code = ("import json, sys\n"
            "from jzi.export.synthetic import WorldConfig, make_world\n"
            "cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(sys.argv[2]).items()}\n"
            "make_world(sys.argv[1], WorldConfig(**cfg), log=lambda *a: None)\n")
    r = subprocess.run([sys.executable, "-c", code, str(out), json.dumps(dataclasses.asdict(cfg))],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
