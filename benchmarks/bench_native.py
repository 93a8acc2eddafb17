"""The C++ runtime against the Python one (issue 10), side by side in one run on the same bundle.

    python benchmarks/bench_native.py --work bench-out [--tiny-bundle B --tiny-store S] [--rounds 3]
        [--native NAME=PATH ...] [--no-official]

Sections (each contender in its own process, the two alternating round by round so that load from
other work hits both alike; medians over rounds):

- overhead: the zoom loop's own work per query, everything but the encoder and decoder graph calls
  (``zoom_ms - decoder_ms`` from each runtime's own timings), over 300 zoom loops from a random
  street embedding, and in full queries of 480x960 JPEGs (``total - encoder - decoder - read - preprocess``);
- start: process start to the first answer line of ``jzi-run`` and ``jzi-run-native`` on one photo;
- memory: peak resident memory of each program, from a small launcher so that the figure is the
  program's own (ru_maxrss after wait4);
- stages: where each runtime's start to first answer goes, stage by stage, each round a fresh process per
  runtime: the process's own start (``python -c pass`` and the imports ``jzi-run`` needs, against
  ``jzi-run-native --help``: the dynamic loader and exit), the manifest with the graphs' sha256, the tile
  store, ONNX Runtime's environment and sessions (the Localizer built without the hash), and the first
  query's own timings (read, preprocess, encoder, decoder). The ONNX Runtime stages are the same library
  doing the same work in both, which bounds the start-up ratio from below.

``--native NAME=PATH`` (repeatable) runs these builds of ``jzi-run-native`` (an older commit, an opt-in
CMake option) in place of ``jzi.native``'s; every program must print the same first answer (``same_answer``).

The official preset comes from ``jzi.export.bench_workdir.Workdir`` (random weights: speed and memory do not
depend on them; the store holds random embeddings). ``jzi.native`` must be built (make native).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

# Runs a program, reports when its first stdout line came and its own peak RSS (wait4's ru_maxrss).
LAUNCHER = r"""
import json, os, subprocess, sys, time
t0 = time.perf_counter()
p = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
first = p.stdout.readline()
t_first = time.perf_counter() - t0
p.stdout.read()
_, status, ru = os.wait4(p.pid, 0)
p.returncode = os.waitstatus_to_exitcode(status)
print(json.dumps({"first_answer_s": t_first, "wall_s": time.perf_counter() - t0, "peak_rss_mb": ru.ru_maxrss / 1024,
                  "rc": p.returncode, "first_line": first.decode(errors="replace").strip()}))
"""


# One runtime's start-up stages, in a fresh process (argv: kind bundle store photo threads); milliseconds.
STAGES = r"""
import json, sys, time
t0 = time.perf_counter()
kind, bundle, store, photo, threads = sys.argv[1:6]
if kind == "python":
    from jzi.runtime.bundle import load_manifest
    from jzi.runtime.localizer import Localizer
    from jzi.runtime.tiles import TileStore
else:
    from jzi.native import Localizer, TileStore, load_manifest
ms = lambda a, b: (b - a) * 1e3
t1 = time.perf_counter(); load_manifest(bundle, verify=True)
t2 = time.perf_counter(); TileStore(store)
t3 = time.perf_counter(); loc = Localizer(bundle, store, backend="ort-cpu", threads=int(threads), verify_bundle=False)
t4 = time.perf_counter(); r = loc.localize(photo)
t5 = time.perf_counter()
rec = {"imports_ms": ms(t0, t1), "manifest_sha256_ms": ms(t1, t2), "tile_store_ms": ms(t2, t3), "env_sessions_ms": ms(t3, t4),
       "first_query_ms": ms(t4, t5)}
rec.update({f"query_{k}": v for k, v in r.timings.items() if k in ("read_ms", "preprocess_ms", "encoder_ms", "decoder_ms")})
print(json.dumps(rec))
"""


def launch(cmd: list[str]) -> dict:
    out = subprocess.run([sys.executable, "-S", "-c", LAUNCHER, *cmd], capture_output=True, text=True, check=True)
    rec = json.loads(out.stdout)
    if rec["rc"] != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed with {rec['rc']}")
    return rec


def worker(kind: str, bundle: str, store: str, photos: list[str], loops: int, threads: int) -> dict:
    """One contender in this process: per-query overhead in the loop alone and in full queries."""
    if kind == "python":
        from jzi.runtime.localizer import Localizer
    else:
        from jzi.native import Localizer
    loc = Localizer(bundle, store, backend="ort-cpu", threads=threads)
    for p in photos[:2]:  # warm-up
        loc.localize(p)
    full = [loc.localize(p).timings for p in photos]
    query = np.random.default_rng(1).standard_normal((1, _width(bundle)), dtype=np.float32)
    for _ in range(10):
        loc.zoom(query)
    zoom = [loc.zoom(query)[0].timings for _ in range(loops)]
    med = statistics.median
    return {
        "loop_alone_us": med([(t["zoom_ms"] - t["decoder_ms"]) * 1e3 for t in zoom]),
        "loop_alone_decoder_ms": med([t["decoder_ms"] for t in zoom]),
        "full_query_us": med([(t["total_ms"] - t["encoder_ms"] - t["decoder_ms"] - t["read_ms"] - t["preprocess_ms"]) * 1e3
                              for t in full]),
        "full_query_zoom_us": med([(t["zoom_ms"] - t["decoder_ms"]) * 1e3 for t in full]),
        "encoder_ms": med([t["encoder_ms"] for t in full]),
        "read_ms": med([t["read_ms"] for t in full]),
        "preprocess_ms": med([t["preprocess_ms"] for t in full]),
    }


def _width(bundle: str) -> int:
    return int(json.loads((Path(bundle) / "manifest.json").read_text())["width"])


def alternate(rounds: int, contenders: dict) -> dict:
    """{name: [record per round]}, the contenders run one after the other in every round."""
    out = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, run in contenders.items():
            out[name].append(run())
    return out


def medians(records: list[dict]) -> dict:
    return {k: round(statistics.median(r[k] for r in records), 4) for k in records[0] if isinstance(records[0][k], (int, float))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sections", nargs="*", help="overhead, start, memory (these three by default), stages")
    ap.add_argument("--work", type=Path, default=Path("bench-out"))
    ap.add_argument("--tiny-bundle", help="a small bundle (e.g. make demo's) for a start-up figure the encoder does not dominate")
    ap.add_argument("--tiny-store")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--loops", type=int, default=300)
    ap.add_argument("--queries", type=int, default=5)
    ap.add_argument("--native", action="append", default=[], metavar="NAME=PATH",
                    help="a jzi-run-native build to run in the same rounds, in place of jzi.native's (repeatable)")
    ap.add_argument("--no-official", action="store_true", help="start/memory on the tiny bundle only")
    ap.add_argument("--worker", nargs=2, metavar=("KIND", "BUNDLE_STORE"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    a.sections = a.sections or ["overhead", "start", "memory"]
    if set(a.sections) - {"overhead", "start", "memory", "stages"}:
        ap.error(f"unknown sections {a.sections}")
    from jzi.export.bench_workdir import Workdir

    wd = Workdir(a.work, a.threads, log=lambda s: print("   " + s, file=sys.stderr, flush=True))
    photos = [str(p) for p in wd.photos(max(a.queries, 2))]
    if a.worker:
        bundle, store = a.worker[1].split("::")
        print(json.dumps(worker(a.worker[0], bundle, store, photos, a.loops, a.threads)))
        return 0
    import jzi.native

    bundle = wd.bundle(wd.checkpoint("official", 4), "fp32")
    store = wd.random_store(bundle)
    native_cli = str(jzi.native.cli_path())
    python_cli = str(Path(sys.executable).with_name("jzi-run"))
    load = os.getloadavg()
    report = {"machine": f"{os.cpu_count()} CPUs", "load_before": [round(x, 2) for x in load], "threads": a.threads,
              "bundle": "official preset, fp32, random weights", "store": "random fp16 embeddings, 4 369 views"}

    if "overhead" in a.sections:
        def run(kind):
            def go():
                out = subprocess.run([sys.executable, __file__, "--work", str(a.work), "--threads", str(a.threads),
                                      "--loops", str(a.loops), "--queries", str(a.queries),
                                      "--worker", kind, f"{bundle}::{store}"], capture_output=True, text=True, check=True)
                return json.loads(out.stdout.strip().splitlines()[-1])
            return go
        rec = alternate(a.rounds, {"python": run("python"), "native": run("native")})
        report["overhead"] = {k: medians(v) for k, v in rec.items()}

    programs = {"jzi-run": python_cli, **({} if a.native else {"jzi-run-native": native_cli})}
    for spec in a.native:
        name, sep, path = spec.partition("=")
        if not sep or not Path(path).is_file():
            ap.error(f"--native {spec}: expected NAME=PATH to a jzi-run-native build")
        programs[name] = path

    def cli_runs(b, s):
        args = ["--engine", str(b), "--tiles", str(s), "--threads", str(a.threads), photos[0]]
        rec = alternate(a.rounds, {name: (lambda prog=prog: launch([prog, *args])) for name, prog in programs.items()})
        out = {name: {**medians(v), "first_answer_s_rounds": [round(r["first_answer_s"], 4) for r in v]}
               for name, v in rec.items()}
        for name, v in rec.items():  # per round, against jzi-run in the same round
            if name != "jzi-run":
                out[name]["start_ratio_to_jzi_run"] = round(statistics.median(
                    r["first_answer_s"] / p["first_answer_s"] for r, p in zip(v, rec["jzi-run"])), 3)
        answers = {r["first_line"].split("  confidence")[0] for v in rec.values() for r in v}
        out["same_answer"] = len(answers) == 1
        return out

    if ("start" in a.sections or "memory" in a.sections) and not a.no_official:
        report["official_cli"] = cli_runs(bundle, store)
    if "start" in a.sections and a.tiny_bundle:
        report["tiny_cli"] = cli_runs(a.tiny_bundle, a.tiny_store)

    def stage_runs(b, s):
        def worker(kind):
            def go():
                cmd = [sys.executable, "-c", STAGES, kind, str(b), str(s), photos[0], str(a.threads)]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True)
                return json.loads(out.stdout.strip().splitlines()[-1])
            return go
        rec = alternate(a.rounds, {
            "python_start_ms": lambda: {"ms": launch([sys.executable, "-c", "pass"])["wall_s"] * 1e3},
            "native_help_ms": lambda: {"ms": launch([native_cli, "--help"])["wall_s"] * 1e3},
            "python": worker("python"), "native": worker("native")})
        return {name: medians(v) for name, v in rec.items()}

    if "stages" in a.sections:
        if not a.no_official:
            report["official_stages"] = stage_runs(bundle, store)
        if a.tiny_bundle:
            report["tiny_stages"] = stage_runs(a.tiny_bundle, a.tiny_store)
    report["load_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
