"""Evaluation with the PyTorch model: the autoregressive zoom loop and the paper's metrics.

    jzi-eval CHECKPOINT DATA [--split test] [--json] [--out metrics.json]

For each query the street photo is encoded once, then four greedy KV-cached decoder steps pick
cells; each step's satellite view is the one the model chose (not the true one). Views do not
depend on the query, so each is rendered and encoded once and shared by every query that reaches
it. Metrics (DESIGN §2): R@40/50/100 m (haversine), strict path accuracy, per-step accuracy and the
median error. ``evaluate()`` is the function the demo calls.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from jzi.runtime.geometry import Region, distance_m

from .data import DataError, ViewBank, ZoomDataset, collate, read_split
from .model import JustZoomIn, greedy_from_embeddings, normalize

RECALL_M = (40, 50, 100)


def path_metrics(pred_paths, true_paths, true_latlon, region: Region) -> dict:
    """R@X m, strict and per-step accuracy, and error statistics of predicted paths [N, S]."""
    pred = np.asarray(pred_paths, dtype=np.int64)
    true = np.asarray(true_paths, dtype=np.int64)
    err = distance_m(region.path_center(pred), np.asarray(true_latlon, dtype=np.float64))
    right = pred == true
    prefix = np.cumprod(right, axis=1).astype(bool)  # first k+1 steps all right
    prev = np.concatenate([np.ones((len(pred), 1), bool), prefix[:, :-1]], axis=1)
    # None (null in JSON) where no query got the earlier steps right: the share is undefined, not 0
    cond = [float(right[prev[:, k], k].mean()) if prev[:, k].any() else None for k in range(pred.shape[1])]
    out = {f"R@{x}m": float((err <= x).mean()) for x in RECALL_M}
    out.update({
        "strict": float(prefix[:, -1].mean()),
        "step_accuracy": [float(a) for a in prefix.mean(0)],  # first k+1 steps right
        "conditional_step_accuracy": cond,  # step k right, given steps < k right
        "median_error_m": float(np.median(err)),
        "mean_error_m": float(err.mean()),
        "queries": int(len(pred)),
    })
    return out


class ViewEmbeddings:
    """Satellite view embeddings on demand: each view rendered and encoded once, then reused."""

    def __init__(self, model: JustZoomIn, bank: ViewBank, device, batch_size: int = 256):
        self.model, self.bank, self.device, self.batch_size = model, bank, device, batch_size
        self.table = torch.zeros(bank.region.total_views, model.cfg.width, device=device)
        self.done = torch.zeros(bank.region.total_views, dtype=torch.bool, device=device)

    @torch.no_grad()
    def __call__(self, indices: torch.Tensor) -> torch.Tensor:
        need = torch.unique(indices[~self.done[indices]])
        for chunk in need.split(self.batch_size) if need.numel() else ():
            imgs = torch.from_numpy(self.bank.images(chunk.cpu().numpy())).to(self.device)
            self.table[chunk] = self.model.encode_views(normalize(imgs)).float()
            self.done[chunk] = True
        return self.table[indices]


def path_to_view_index(region: Region, paths: torch.Tensor) -> torch.Tensor:
    """Row of the view reached by partial paths [B, k] (tile-store order)."""
    k = paths.shape[1]
    idx = torch.zeros(paths.shape[0], dtype=torch.long, device=paths.device)
    for lvl in range(k):
        idx = idx * region.n_actions + paths[:, lvl]
    return idx + region.level_offset(k)


@torch.no_grad()
def predict(model: JustZoomIn, street_embeddings: torch.Tensor, views: ViewEmbeddings) -> tuple[np.ndarray, np.ndarray]:
    """Greedy zoom from street embeddings [N, D] -> (paths [N, S], logits [N, S, A])."""
    region = model.cfg.zoom
    paths, logits = greedy_from_embeddings(model.decoder, street_embeddings,
                                           lambda p: views(path_to_view_index(region, p)), region.steps)
    return paths.cpu().numpy(), logits.cpu().numpy()


@torch.no_grad()
def evaluate(model: JustZoomIn, root, split: str = "test", imagery=None, bank: ViewBank | None = None,
             batch_size: int = 64, device="cpu", progress: bool = False, limit: int | None = None,
             on_bad: str = "skip", log=print, views: ViewEmbeddings | None = None) -> dict:
    """Run the zoom loop over a split of a dataset in the authors' format -> metrics dict (+ paths)."""
    model = model.to(device).eval()
    region = model.cfg.zoom
    records = read_split(root, split, region, on_bad=on_bad, log=log)
    if limit:
        records = records[:limit]
    if bank is None:
        bank = ViewBank(imagery if imagery is not None else Path(root) / "satellite", region, progress=progress)
    views = views or ViewEmbeddings(model, bank, device)
    ds = ZoomDataset(root, records, bank, augment=False)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, collate_fn=collate)
    t0 = time.perf_counter()
    it = loader
    if progress:
        from tqdm import tqdm

        it = tqdm(loader, desc=f"eval {split}", unit="batch", leave=False)
    paths, truth, latlon, ids, dropped = [], [], [], [], 0
    for batch in it:
        if batch is None:
            dropped += batch_size
            continue
        dropped += batch["dropped"]
        g = model.encode_street(normalize(batch["ground"].to(device)))
        p, _ = predict(model, g.float(), views)
        paths.append(p)
        truth.append(batch["actions"].numpy())
        latlon.append(batch["latlon"].numpy())
        ids.extend(records[i].image_id for i in batch["index"].tolist())
    if not paths:
        raise DataError(f"{split}: no query could be loaded")
    pred = np.concatenate(paths)
    out = path_metrics(pred, np.concatenate(truth), np.concatenate(latlon), region)
    out.update({"split": split, "seconds": round(time.perf_counter() - t0, 2), "dropped": int(dropped),
                "image_ids": ids, "paths": pred.tolist()})
    return out


def format_table(m: dict, title: str = "") -> str:
    """A small text table of the metrics."""
    lines = [title] if title else []
    lines.append(f"{'queries':<28}{m['queries']}")
    for x in RECALL_M:
        lines.append(f"{f'R@{x}m':<28}{100 * m[f'R@{x}m']:6.2f} %")
    lines.append(f"{'strict path accuracy':<28}{100 * m['strict']:6.2f} %")
    steps = "  ".join(f"{100 * a:5.1f}" for a in m["step_accuracy"])
    cond = "  ".join("    -" if a is None else f"{100 * a:5.1f}" for a in m["conditional_step_accuracy"])
    lines.append(f"{'steps right so far (%)':<28}{steps}")
    lines.append(f"{'step right | prefix right (%)':<28}{cond}")
    lines.append(f"{'median error':<28}{m['median_error_m']:.1f} m")
    if None in m["conditional_step_accuracy"]:
        lines.append("(-: no query had the earlier steps right)")
    return "\n".join(lines)


def write_json(obj, path) -> None:
    """Write JSON atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="jzi-eval", description="Evaluate a checkpoint on a dataset split with the "
                                "autoregressive zoom loop (PyTorch).")
    p.add_argument("checkpoint", help="checkpoint file (the authors' .pth or a jzi checkpoint)")
    p.add_argument("data", help="dataset root in the authors' format (metadata/, streetview/, satellite/)")
    p.add_argument("--split", default="test", help="split name under metadata/ or a CSV path (default test)")
    p.add_argument("--imagery", help="satellite imagery (XYZ folder or GeoTIFF); default DATA/satellite")
    p.add_argument("--preset", help="model preset, for authors' checkpoints without a stored config")
    p.add_argument("--batch-size", type=int, default=64, help="queries per forward pass (default %(default)s)")
    p.add_argument("--limit", type=int, help="evaluate the first N queries only")
    p.add_argument("--on-bad", choices=("skip", "error"), default="skip", help="bad rows: skip them or refuse")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--out", help="also write the metrics (with predicted paths) to this JSON file")
    a = p.parse_args(argv)
    if a.batch_size < 1:
        p.error("--batch-size must be >= 1")
    from .checkpoint import CheckpointError, load_checkpoint
    from jzi.runtime.imagery import ImageryError

    log = (lambda *x: print(*x, file=sys.stderr)) if a.json else print
    try:
        model, _ = load_checkpoint(a.checkpoint, a.preset)
        m = evaluate(model, a.data, a.split, imagery=a.imagery, batch_size=a.batch_size, device=a.device,
                     progress=not a.json, limit=a.limit, on_bad=a.on_bad, log=log)
    except (CheckpointError, DataError, ImageryError, OSError) as e:
        print(f"jzi-eval: {e}", file=sys.stderr)
        return 1
    if a.out:
        write_json(m, a.out)
    summary = {k: v for k, v in m.items() if k not in ("paths", "image_ids")}
    print(json.dumps(summary, indent=2) if a.json else format_table(m, f"{a.checkpoint} on {a.split}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
