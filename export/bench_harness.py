"""Side-by-side timing: every contender in its own process, runs alternating, median of per-pair ratios.

Why: two thread pools in one process (PyTorch's OpenMP and ONNX Runtime's, both spinning after
work) slow each other, and on a shared machine the load drifts between runs minutes apart. So
each contender is loaded once in a worker process of its own, the parent asks them in turn for one
measurement (A, B, A, B, ...; never two at once), and the figure reported is the median over rounds
of ``time(contender) / time(baseline)`` from the same round, with its spread.

A contender is a *server*: a function ``make(params: dict) -> run`` named "module:function", where
``run()`` does one measured unit of work and returns a dict with at least ``ms``. Workers start as

    python -m jzi.export.bench_harness module:function '{"json": "params"}'

print one ``ready`` line, then answer each ``run`` line on stdin with one JSON line.
"""
from __future__ import annotations

import importlib
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

# PyTorch's OpenMP workers spin after each parallel region unless told otherwise; in a worker that
# waits for its turn, spinning would steal the other contender's cores.
WORKER_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}
GAP_S = 0.2  # pause between runs so a finished contender's threads are asleep before the next starts


class HarnessError(RuntimeError):
    """A worker that failed to start or to answer, with its last error line."""


class Worker:
    """One contender in its own process."""

    def __init__(self, name: str, server: str, params: dict, threads: int | None = None):
        self.name = name
        env = {**os.environ, **WORKER_ENV}
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        self.proc = subprocess.Popen([sys.executable, "-m", "jzi.export.bench_harness", server, json.dumps(params)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=env)
        self.info = self._answer()

    def _answer(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read().strip().splitlines()
            raise HarnessError(f"contender {self.name!r} died: {err[-1] if err else 'no output'}")
        return json.loads(line)

    def run(self) -> dict:
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        return self._answer()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("stop\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


def ratio_summary(ratios) -> dict:
    r = np.asarray(ratios, dtype=np.float64)
    return {"median": float(np.median(r)), "p25": float(np.percentile(r, 25)), "p75": float(np.percentile(r, 75)),
            "min": float(r.min()), "max": float(r.max()), "pairs": int(r.size)}


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def side_by_side(contenders: dict[str, tuple[str, dict]], rounds: int, baseline: str | None = None,
                 warmup: int = 1, threads: int | None = None, log=None) -> dict:
    """Measure ``contenders`` {name: (server, params)} for ``rounds`` rounds, one process each.

    Returns {"contenders": {name: {"ms": [per round], "p50": .., "runs": [raw dicts], "info": ..}},
    "ratios" / "speedups": {name: ratio_summary of ms[name] / ms[baseline] (resp. its inverse) per round},
    "baseline", "load": {"before", "after"} (1/5/15-minute load averages)}.
    """
    log = log or (lambda msg: None)
    names = list(contenders)
    baseline = baseline or names[0]
    load_before = load_average()
    workers = {}
    try:
        for name in names:  # started one at a time: loading is heavy too
            log(f"side by side: starting {name}")
            server, params = contenders[name]
            workers[name] = Worker(name, server, params, threads)
        for _ in range(warmup):
            for name in names:
                workers[name].run()
                time.sleep(GAP_S)
        runs = {name: [] for name in names}
        for i in range(rounds):
            for name in names:  # A, B, A, B: each round is one pair (or tuple) measured back to back
                runs[name].append(workers[name].run())
                time.sleep(GAP_S)
            log(f"side by side: round {i + 1}/{rounds}: " +
                ", ".join(f"{n} {runs[n][-1]['ms']:.1f} ms" for n in names))
    finally:
        for w in workers.values():
            w.close()
    ms = {name: np.array([r["ms"] for r in runs[name]]) for name in names}
    return {
        "baseline": baseline,
        "rounds": rounds,
        "load": {"before": load_before, "after": load_average()},
        "contenders": {name: {"p50_ms": float(np.median(ms[name])), "p90_ms": float(np.percentile(ms[name], 90)),
                              "ms": ms[name].tolist(), "runs": runs[name], "info": workers[name].info}
                       for name in names},
        "ratios": {name: ratio_summary(ms[name] / ms[baseline]) for name in names if name != baseline},
        "speedups": {name: ratio_summary(ms[baseline] / ms[name]) for name in names if name != baseline},
    }


def peak_rss_mb() -> float:
    """This process's resident high-water mark. VmHWM belongs to the address space exec made, unlike
    getrusage's ru_maxrss, which a child inherits from a large parent."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def serve(server: str, params: dict) -> None:
    module, func = server.split(":")
    run = getattr(importlib.import_module(module), func)(params)
    out = sys.stdout
    sys.stdout = sys.stderr  # anything the contender prints must not corrupt the protocol
    out.write(json.dumps({"ready": True, "pid": os.getpid()}) + "\n")
    out.flush()
    for line in sys.stdin:
        if line.strip() != "run":
            break
        out.write(json.dumps(run()) + "\n")
        out.flush()


if __name__ == "__main__":
    serve(sys.argv[1], json.loads(sys.argv[2]))
