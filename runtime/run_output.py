"""Where ``jzi-run`` writes its answers: each answer and each failure as it comes, nothing lost.

One small class per output, all with the same three calls::

    out.answer(label, result, error_m, truth)   a photo was localized
    out.failure(label, reason)                  a photo could not be (one line saying why)
    out.close(summary, interrupted)             the run ended (finished, or stopped by Ctrl-C)

- ``TextOutput``: one line per answer on stdout, one per failure on stderr.
- ``JsonLinesOutput`` (``--json``): one JSON object per line on stdout, flushed as each photo is
  answered (``{"image", "latitude", ...}``) or fails (``{"image", "error"}``); the last line is
  ``{"summary", "failed", "backend", "interrupted"}``. An interrupted run keeps every line it printed.
  Failures also go to stderr as one line each, like the text output.
- ``GeoJsonOutput`` (``--geojson OUT``): a FeatureCollection streamed into a temporary file beside
  OUT, closed properly and renamed into place when the run ends, also after Ctrl-C; failures are
  listed in its ``failed`` member.

All JSON is strict (``allow_nan=False``): no ``NaN``/``Infinity`` tokens, ever.

``previous_answers(path)`` reads either kind of file back for ``--resume``: the labels of the photos
already answered there (failures are tried again), and for GeoJSON the features themselves.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path


RECALL_M = (40, 50, 100)  # the recall radii reported with truth (DESIGN: R@40/50/100 m)


def strict_json(obj, **kw) -> str:
    return json.dumps(obj, allow_nan=False, **kw)


def answer_record(label: str, result, error_m: float | None) -> dict:
    return {"image": label, **result.to_dict(), **({"error_m": error_m} if error_m is not None else {})}


def feature(label: str, r, error_m: float | None, truth) -> dict:
    props = {"image": label, "path": r.path, "confidence": r.confidence, "step_probs": r.step_probs}
    if truth is not None:
        props.update(truth_latitude=truth[0], truth_longitude=truth[1], error_m=error_m)
    if r.candidates:
        props["candidates"] = [{"latitude": c.latitude, "longitude": c.longitude, "path": c.path,
                                "probability": c.probability} for c in r.candidates]
    return {"type": "Feature", "geometry": {"type": "Point", "coordinates": [r.longitude, r.latitude]},
            "properties": props}


class TextOutput:
    def __init__(self, prog: str):
        self.prog = prog

    def answer(self, label, r, err, truth) -> None:
        line = f"{label}  {r.latitude:.6f}, {r.longitude:.6f}"
        line += f"  error {err:.1f} m" if err is not None else ""
        line += f"  confidence {r.confidence:.3g}"
        if r.candidates:
            line += "  top-{}: {}".format(len(r.candidates), "; ".join(
                f"{c.latitude:.6f}, {c.longitude:.6f} ({c.probability:.3f})" for c in r.candidates))
        print(line, flush=True)

    def failure(self, label, reason) -> None:
        print(f"{self.prog}: {reason}", file=sys.stderr, flush=True)

    def close(self, summary, interrupted) -> None:
        if summary:
            print("{} photos with truth: ".format(summary["n"]) + "  ".join(
                f"R@{m}m {100 * summary[f'R@{m}m']:.1f}%" for m in RECALL_M)
                + f"  median error {summary['median_error_m']:.1f} m", flush=True)


class JsonLinesOutput:
    def __init__(self, prog: str, backend: str):
        self.prog, self.backend = prog, backend
        self.failed: list[dict] = []

    def answer(self, label, r, err, truth) -> None:
        print(strict_json(answer_record(label, r, err)), flush=True)

    def failure(self, label, reason) -> None:
        self.failed.append({"image": label, "error": reason})
        print(strict_json(self.failed[-1]), flush=True)
        print(f"{self.prog}: {reason}", file=sys.stderr, flush=True)  # for the person watching, too

    def close(self, summary, interrupted) -> None:
        print(strict_json({"summary": summary, "failed": self.failed, "backend": self.backend,
                           "interrupted": interrupted}), flush=True)


class GeoJsonOutput:
    """A FeatureCollection written feature by feature into ``.OUT.tmp``, renamed to OUT by ``close``."""

    def __init__(self, path, carried: list[dict] = (), report=None):
        self.path = Path(path)
        self.report = report  # where to say what was written (stderr when stdout carries JSON)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp")
        self.file = open(self.tmp, "w", encoding="utf-8")
        self.file.write('{"type": "FeatureCollection", "features": [')
        self.count = 0
        self.failed: list[dict] = []
        for f in carried:  # answers of the run being resumed
            self._write(f)

    def _write(self, feat: dict) -> None:
        self.file.write(("\n" if self.count == 0 else ",\n") + strict_json(feat))
        self.file.flush()
        self.count += 1

    def answer(self, label, r, err, truth) -> None:
        self._write(feature(label, r, err, truth))

    def failure(self, label, reason) -> None:
        self.failed.append({"image": label, "error": reason})

    def close(self, summary, interrupted) -> None:
        self.file.write(f"\n], \"failed\": {strict_json(self.failed)}, \"interrupted\": {strict_json(interrupted)}}}\n")
        self.file.close()
        os.replace(self.tmp, self.path)
        if self.report is not None and not interrupted:  # an interrupt has its own line
            print(f"wrote {self.count} answers to {self.path}", file=self.report, flush=True)

    def discard(self) -> None:
        """Forget the output (the run failed before answering anything)."""
        self.file.close()
        self.tmp.unlink(missing_ok=True)


def previous_answers(path) -> tuple[set[str], list[dict]]:
    """(labels answered, GeoJSON features to carry over) from a previous ``--json`` or ``--geojson`` output.

    In JSON Lines an unreadable *last* line is skipped (a run killed mid-line); anything else unreadable
    is a ValueError naming the file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read the previous output ({getattr(e, 'strerror', None) or e})") from None
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and doc.get("type") == "FeatureCollection" or '"FeatureCollection"' in text[:200]:
        try:
            feats = [f for f in doc["features"] if isinstance(f["properties"]["image"], str)]
        except (KeyError, TypeError):
            raise ValueError(f"{path}: not a complete jzi-run GeoJSON output") from None
        return {f["properties"]["image"] for f in feats}, feats
    done = set()
    lines = text.splitlines()
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            if n == len(lines):
                break
            raise ValueError(f"{path}:{n}: not a jzi-run --json line") from None
        if not isinstance(rec, dict):
            raise ValueError(f"{path}:{n}: not a jzi-run --json line")
        if isinstance(rec.get("image"), str) and "latitude" in rec:
            done.add(rec["image"])
    return done, []
