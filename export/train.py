"""jzi-train: train a Just Zoom In model on a dataset in the authors' format (DESIGN §2 recipe).

    jzi-train DATA --out runs/tiny --preset tiny --minutes 10
    torchrun --nproc_per_node 4 -m jzi.export.train DATA --out runs/official --preset official
    jzi-train DATA --out runs/tiny --eval                      # test-split metrics of runs/tiny/best.pt

Recipe: cross-entropy with label smoothing over all steps, teacher forcing (views along the true
path), AdamW, linear warm-up then cosine to 10 % of the peak, gradient clipping, fp16 autocast on
CUDA, DDP under torchrun. Checkpoints (the authors' layout, see checkpoint.py): ``last.pt`` every
epoch (with optimizer state, for ``--resume``), ``epoch_N.pt`` every ``--save-every`` epochs, and
``best.pt`` by the mean of validation R@40/50/100m (ties broken by median error). ``history.json``
holds the learning curve.

Recipes (``--recipe``): ``authors`` (the default) is the authors' loader, albumentations per sample
in DataLoader workers, end to end. ``memory`` is the same loss end to end on the fast path for small
models (GPUs gain too): every view and every street photo decoded once into memory and augmented in
batches (``fast_data.py``). ``cpu`` is the recipe that learns within minutes on two CPU cores: a street
phase, then the zoom decoder on the frozen encoder (``train_cpu_recipe``).

``--frozen-encoder`` keeps the encoder fixed, encodes every satellite view and every street photo
once (plus ``--street-copies - 1`` augmented copies of each), and trains the decoder from those
cached embeddings: many epochs per minute on a CPU. ``--minutes`` stops on a time budget and
stretches the learning-rate schedule over it.

``--last-step-spread SIGMA`` (the cpu recipe's default 1.0; 0 is the authors' one-hot target) spreads
the last step's target over the cells around the true one (a Gaussian of SIGMA cells on the 4x4 grid):
where the finest cell cannot be told, the decoder learns to answer near the likely cells instead of
an arbitrary one (``spread_targets``). The model and the zoom loop stay the paper's.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from jzi.runtime.geometry import Region

from .checkpoint import CheckpointError, extract_state_dict, load_checkpoint, load_pretrained_encoder, load_state_into, \
    read_torch_file, save_checkpoint
from .config import PRESETS, get_preset
from .data import DataError, ViewBank, ZoomDataset, collate, load_training_photo, read_split, split_halves, \
    stretch_street, street_transforms, half_dropout, worker_init
from .evaluate import ViewEmbeddings, evaluate, format_table, path_metrics, predict, write_json
from .model import JustZoomIn, normalize


def lr_factor(progress: float, warmup: float = 0.05, floor: float = 0.1) -> float:
    """Multiplier of the peak rate at training progress 0..1: linear warm-up, then cosine to ``floor``."""
    progress = min(max(progress, 0.0), 1.0)
    if warmup > 0 and progress < warmup:
        return (progress + 1e-3) / (warmup + 1e-3)
    t = (progress - warmup) / max(1.0 - warmup, 1e-9)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))


def spread_targets(grid: int, sigma: float) -> torch.Tensor:
    """[A, A]: row t is the last step's target when cell t is true, a Gaussian of ``sigma`` cells around it."""
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    cells = torch.stack([rows, cols], -1).reshape(-1, 2).float()
    return torch.softmax(-((cells[:, None] - cells[None]) ** 2).sum(-1) / (2 * sigma**2), 1)


def zoom_loss(logits, actions, label_smoothing: float, last_target: torch.Tensor | None = None):
    """Label-smoothed cross-entropy over every step [B, S, A]; ``last_target`` [A, A] (``spread_targets``) replaces
    the last step's one-hot target."""
    logits = logits.float()
    if last_target is None:
        return F.cross_entropy(logits.flatten(0, 1), actions.flatten(), label_smoothing=label_smoothing)
    target = F.one_hot(actions, logits.shape[-1]).float()
    target[:, -1] = last_target.to(logits.device)[actions[:, -1]]
    return F.cross_entropy(logits.flatten(0, 1), target.flatten(0, 1), label_smoothing=label_smoothing)


def dataset_region(root, image_size: int) -> Region:
    """The region of a synthetic world (``world.json``), else the authors' default region."""
    info = Path(root) / "world.json"
    region = Region.default()
    if info.is_file():
        try:
            region = Region.from_dict(json.loads(info.read_text())["config"]["region"])
        except (KeyError, ValueError, TypeError) as e:
            raise DataError(f"{info}: unreadable world description ({e})") from None
    return Region(region.center_lat, region.center_lon, region.size_m, region.grid, region.steps, image_size)


class Distributed:
    """torchrun/DDP if WORLD_SIZE > 1, otherwise a single process."""

    def __init__(self, device_arg: str | None):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if self.world > 1:
            import torch.distributed as dist

            backend = "nccl" if torch.cuda.is_available() else "gloo"
            dist.init_process_group(backend)
            self.device = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
        else:
            self.device = torch.device(device_arg or ("cuda" if torch.cuda.is_available() else "cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def wrap(self, model):
        if self.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def mean(self, value: float) -> float:
        if self.world == 1:
            return value
        import torch.distributed as dist

        t = torch.tensor([value], device=self.device, dtype=torch.float64)
        dist.all_reduce(t)
        return float(t.item()) / self.world

    def any(self, flag: bool) -> bool:
        """True on every process if it is true on one (keeps time-based stops in lockstep)."""
        if self.world == 1:
            return flag
        import torch.distributed as dist

        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def barrier(self):
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self):
        if self.world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()


class SharedViewsForward(torch.nn.Module):
    """The teacher-forcing forward with each distinct view of a batch encoded once (one module for DDP).

    With ``aux`` heads it also returns each step's action predicted from the street embedding alone
    ([B, S, A]): a training-only auxiliary loss that gives the encoder a short gradient path (the
    heads are not part of the model or its checkpoint's ``model_state_dict``).
    """

    def __init__(self, model: JustZoomIn, aux: torch.nn.ModuleList | None = None):
        super().__init__()
        self.model = model
        self.aux = aux

    def forward(self, ground, views, inverse, actions):
        """ground [B, 2, 3, H, W], distinct views [U, 3, H, W], inverse [B, S] rows into them, actions [B, S]."""
        g = self.model.encode_street(ground)
        logits = self.model.decoder(g, self.model.encode_views(views)[inverse], actions)
        if self.aux is None:
            return logits
        return logits, torch.stack([head(g) for head in self.aux], 1)


class StreetHeads(torch.nn.Module):
    """The street phase's forward: street halves -> each step's action logits [B, S, A] from the embedding."""

    def __init__(self, model: JustZoomIn, aux: torch.nn.ModuleList):
        super().__init__()
        self.model, self.aux = model, aux

    def forward(self, ground):
        g = self.model.encode_street(ground)
        return torch.stack([head(g) for head in self.aux], 1)


def aux_heads(cfg) -> torch.nn.ModuleList:
    """One linear head per zoom step: the step's action from the street embedding alone."""
    return torch.nn.ModuleList(torch.nn.Linear(cfg.width, cfg.n_actions) for _ in range(cfg.steps))


# ---- frozen-encoder mode: cached embeddings -----------------------------------------------------------------
@torch.no_grad()
def encode_streets(model: JustZoomIn, root, records, copies: int, device, seed: int, batch: int = 128,
                   progress: bool = False) -> torch.Tensor:
    """Street embeddings [N, copies, D]: copy 0 plain, the rest augmented like training photos."""
    size = model.cfg.image_size
    tf, drop = street_transforms(size, seed), half_dropout(seed + 1)
    out = torch.zeros(len(records), copies, model.cfg.width)
    pending, where = [], []

    def flush():
        if pending:
            x = normalize(torch.from_numpy(np.stack(pending)).to(device))
            out[tuple(zip(*where))] = model.encode_street(x).float().cpu()
            pending.clear()
            where.clear()

    it = range(len(records))
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="encode street photos", unit="img", leave=False)
    for i in it:
        img = load_training_photo(root, records[i])
        for c in range(copies):
            if c == 0:
                halves = split_halves(stretch_street(img, size))
            else:
                halves = np.stack([drop(image=h)["image"] for h in split_halves(tf(image=img)["image"])])
            pending.append(halves)
            where.append((i, c))
        if len(pending) >= batch:
            flush()
    flush()
    return out


@torch.no_grad()
def encode_streets_in_memory(model: JustZoomIn, root, records, copies: int, device, seed: int, aug,
                             batch: int = 64, progress: bool = False) -> torch.Tensor:
    """``encode_streets`` for the cpu recipe: photos decoded once, copies augmented in batches (fast_data's
    ``Augment``; None: every copy plain)."""
    from .fast_data import MemoryData, street_batch

    size = model.cfg.image_size
    data = MemoryData(root, records, None, size, photo_scale=1 if copies == 1 else 2, progress=progress,
                      with_views=False)
    gen = torch.Generator().manual_seed(seed)
    out = torch.zeros(len(data), copies, model.cfg.width)
    for c in range(copies):
        for i in range(0, len(data), batch):
            x = street_batch(data.photos[i:i + batch], size, gen, aug if c else None)
            out[i:i + batch, c] = model.encode_street(x.to(device)).float().cpu()
    return out


def batched_augment(a):
    """The in-memory recipes' batched augmentation from the command line (None with --no-augment)."""
    from .fast_data import Augment

    if a.no_augment:
        return None
    return Augment(hue=a.hue_jitter, brightness=a.colour_jitter, contrast=a.colour_jitter, saturation=a.colour_jitter)


# ---- the training run ------------------------------------------------------------------------------------------
class Run:
    def __init__(self, a, dist: Distributed):
        self.a, self.dist = a, dist
        self.out = Path(a.out)
        self.device = dist.device
        self.log = print if dist.main else (lambda *x, **k: None)
        torch.manual_seed(a.seed)
        np.random.seed(a.seed)
        cfg = get_preset(a.preset)
        region = dataset_region(a.data, cfg.image_size)
        cfg = cfg.with_region(region)
        if a.frozen_encoder:
            cfg = dataclasses.replace(cfg, trainable_encoder_layers=0)
        self.cfg = cfg
        self.model = JustZoomIn(cfg)
        if a.pretrained:  # DINOv2 weights: a local transformers folder or Meta's dinov2_vit*14_pretrain.pth
            load_pretrained_encoder(self.model, a.pretrained)
        if a.init:
            init, _ = load_checkpoint(a.init)
            load_state_into(self.model, init.state_dict(), a.init)
        self.model.set_trainable()
        if getattr(a, "phase", "zoom") == "street":  # the decoder waits for the second phase
            self.model.decoder.requires_grad_(False)
        mask_token = getattr(self.model.encoder.backbone.embeddings, "mask_token", None)
        if mask_token is not None:  # only used for masked-image pretraining; DDP refuses parameters without grads
            mask_token.requires_grad_(False)
        self.model.to(self.device)
        self.train_records = read_split(a.data, a.train_split, cfg.zoom, on_bad=a.on_bad, log=self.log)
        self.val_records = read_split(a.data, a.val_split, cfg.zoom, on_bad=a.on_bad, log=self.log)
        if a.limit:
            self.train_records = self.train_records[:a.limit]
        imagery = a.imagery or Path(a.data) / "satellite"
        cache_dir = Path(getattr(a, "views_cache_dir", None) or self.out)
        self.bank = ViewBank(imagery, cfg.zoom, cache=cache_dir / f"views_{cfg.image_size}px.npy",
                             progress=dist.main and not a.quiet)
        # the cpu recipe's auxiliary heads (training only; see SharedViewsForward)
        self.phase = getattr(a, "phase", "zoom")  # "street": the cpu recipe's first phase (see train_cpu_recipe)
        # a timed street phase leaves the zoom phase the time to cache its embeddings (see budget_s)
        self.cache_photos = cache_photos(len(self.train_records), a.street_copies, len(self.val_records),
                                         cfg.zoom.total_views) if self.phase == "street" and a.minutes else 0
        # the street phase's heads keep one-hot targets: the spread is for the decoder's answer
        spread = a.last_step_spread if self.phase != "street" else 0
        self.last_target = spread_targets(cfg.zoom.grid, spread) if spread else None
        wants_aux = self.phase == "street" or (a.recipe == "memory" and a.aux_weight > 0)
        self.aux = aux_heads(cfg).to(self.device) if wants_aux and not a.frozen_encoder else None
        params = [p for p in (self.model.decoder if a.frozen_encoder else self.model).parameters() if p.requires_grad]
        if self.aux is not None:
            params += list(self.aux.parameters())
        self.optimizer = torch.optim.AdamW(params, lr=a.lr, weight_decay=a.weight_decay)
        self.amp = self.device.type == "cuda" and not a.no_amp
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.state = {"epoch": 0, "step": 0, "elapsed_s": 0.0, "best": None, "history": []}
        if a.resume:
            self._resume()

    # -- checkpoints --
    def _resume(self):
        path = self.out / "last.pt"
        if not path.is_file():
            self.log(f"no {path} to resume from; starting fresh")
            return
        obj = read_torch_file(path)
        load_state_into(self.model, extract_state_dict(obj, path), path)
        self.model.to(self.device)
        if self.aux is not None and "aux_state_dict" in obj:
            self.aux.load_state_dict(obj["aux_state_dict"])
        if "optimizer_state_dict" in obj:
            self.optimizer.load_state_dict(obj["optimizer_state_dict"])
        if "scaler_state_dict" in obj and self.amp:
            self.scaler.load_state_dict(obj["scaler_state_dict"])
        self.state = obj.get("train_state", self.state)
        if "torch_rng_state" in obj:  # dropout draws continue as if never interrupted
            torch.set_rng_state(obj["torch_rng_state"])
        self.log(f"resumed from {path} at epoch {self.state['epoch']} (step {self.state['step']})")

    def save(self, name: str, full: bool = False):
        if not self.dist.main:
            return
        extra = {"epoch": self.state["epoch"], "train_state": self.state,
                 "train_args": {k: v for k, v in vars(self.a).items()}}
        if full:
            extra["optimizer_state_dict"] = self.optimizer.state_dict()
            extra["torch_rng_state"] = torch.get_rng_state()
            if self.aux is not None:
                extra["aux_state_dict"] = {k: v.detach().cpu() for k, v in self.aux.state_dict().items()}
            if self.amp:
                extra["scaler_state_dict"] = self.scaler.state_dict()
        save_checkpoint(self.model, self.out / name, **extra)

    # -- the schedule --
    def budget_s(self) -> float:
        """Seconds this run may take (``--minutes``). The cpu recipe's street phase leaves out the time the
        zoom phase will need to cache its embeddings, estimated from the street phase's own training rate:
        encoding a photo without gradients costs about half a training sample (measured 2.1x faster)."""
        budget = 60 * self.a.minutes
        if self.cache_photos and self.state.get("samples"):
            budget -= self.cache_photos * self.state["train_s"] / self.state["samples"] / 2
        return budget

    def progress(self, total_steps: int, elapsed: float) -> float:
        p = self.state["step"] / max(total_steps, 1)
        if self.a.minutes:  # the schedule spans the budget left after setup
            setup = self.state.get("setup_s", 0.0)
            p = max(p, (elapsed - setup) / max(self.budget_s() - setup, 1e-9))
        return p

    def out_of_time(self, elapsed: float) -> bool:
        # frozen mode always trains its first epoch (seconds on cached embeddings): caching many photos can
        # spend a short budget on its own (30 000 photos: 156 s of the cpu recipe's 3-minute zoom phase)
        if self.a.frozen_encoder and self.state["epoch"] == 0:
            return False
        return bool(self.a.minutes) and self.dist.any(elapsed >= self.budget_s())

    def step(self, loss_fn, total_steps: int, elapsed: float) -> float:
        for g in self.optimizer.param_groups:
            g["lr"] = self.a.lr * lr_factor(self.progress(total_steps, elapsed), self.a.warmup)
        with torch.autocast("cuda", dtype=torch.float16, enabled=self.amp):
            loss = loss_fn()
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.a.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]],
                                           self.a.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.state["step"] += 1
        return float(loss.detach())

    def ce(self, logits, actions):
        return zoom_loss(logits, actions, self.a.label_smoothing, self.last_target)

    # -- the loop --
    def fit(self) -> dict:
        a, model = self.a, self.model
        # the clock (and --minutes) includes setup: in frozen mode, caching the embeddings is training time
        start = time.perf_counter() - self.state["elapsed_s"]
        t_setup = time.perf_counter()
        if a.frozen_encoder:
            batches, per_epoch, validate = self._frozen_setup()
        elif self.phase == "street":
            batches, per_epoch, validate = self._street_setup()
        elif a.recipe in ("memory", "cpu"):
            batches, per_epoch, validate = self._memory_setup()
        else:
            batches, per_epoch, validate = self._full_setup()
        self.state["setup_s"] = self.state.get("setup_s", 0.0) + time.perf_counter() - t_setup
        epochs = a.epochs if a.epochs is not None else (10_000 if a.minutes else 30)
        val_every = a.val_every or (max(1, 200 // per_epoch) if a.frozen_encoder else 1)
        total_steps = epochs * per_epoch
        mode = "frozen encoder, cached embeddings" if a.frozen_encoder else \
            "street phase: encoder + per-step heads" if self.phase == "street" else "end to end"
        self.log(f"training preset {self.cfg.preset} on {len(self.train_records)} queries ({mode}), "
                 f"{per_epoch} steps/epoch, device {self.device}"
                 + (f", budget {a.minutes:g} min" if a.minutes else f", {epochs} epochs"))
        first_epoch = self.state["epoch"]
        while self.state["epoch"] < epochs and not self.out_of_time(time.perf_counter() - start):
            epoch = self.state["epoch"]
            if a.pause_after and epoch - first_epoch >= a.pause_after:
                self.log(f"pausing after epoch {epoch}; continue with --resume")
                break
            model.train()
            losses, seen, t_epoch = [], 0, time.perf_counter()
            bar = None
            if self.dist.main and not a.quiet:
                from tqdm import tqdm

                bar = tqdm(total=per_epoch, desc=f"epoch {epoch + 1}", unit="step", leave=False)
            for n, loss_fn in batches(epoch):
                elapsed = time.perf_counter() - start
                if self.out_of_time(elapsed):
                    break
                t_step = time.perf_counter()
                losses.append(self.step(loss_fn, total_steps, elapsed))
                seen += n
                self.state["samples"] = self.state.get("samples", 0) + n
                self.state["train_s"] = self.state.get("train_s", 0.0) + time.perf_counter() - t_step
                if bar is not None:
                    rate = seen * self.dist.world / max(time.perf_counter() - t_epoch, 1e-9)
                    bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", rate=f"{rate:.0f}/s",
                                    lr=f"{self.optimizer.param_groups[0]['lr']:.2e}")
                    bar.update(1)
            if bar is not None:
                bar.close()
            if not losses:
                break
            self.state["epoch"] = epoch + 1
            self.state["elapsed_s"] = time.perf_counter() - start
            entry = {"epoch": epoch + 1, "step": self.state["step"], "elapsed_s": round(self.state["elapsed_s"], 1),
                     "train_loss": self.dist.mean(float(np.mean(losses))), "lr": self.optimizer.param_groups[0]["lr"],
                     "samples_per_s": round(seen * self.dist.world / max(time.perf_counter() - t_epoch, 1e-9), 1)}
            last = self.state["epoch"] >= epochs or self.out_of_time(time.perf_counter() - start)
            # a resumed run with the same epochs and minutes knows it is done without redoing its setup
            self.state["finished"] = {"epochs": a.epochs, "minutes": a.minutes} if last else None
            if (epoch + 1) % val_every == 0 or last:
                m = validate()
                if "aux_step_accuracy" in m:  # the street phase: no zoom metrics yet
                    entry["aux_step_accuracy"] = [round(x, 4) for x in m["aux_step_accuracy"]]
                    key = [float(np.mean(m["aux_step_accuracy"]))]
                else:
                    entry.update({k: m[k] for k in ("R@40m", "R@50m", "R@100m", "strict", "median_error_m")})
                    # the paper's three recalls together: on a few hundred validation photos R@40m alone is
                    # mostly noise, and picked models 2-5 points worse on the test split (RESULTS, "make demo")
                    key = [(m["R@40m"] + m["R@50m"] + m["R@100m"]) / 3, -m["median_error_m"]]
                best = self.state["best"]
                if best is None or len(best) != len(key) or key > best:  # (a run resumed from an older key)
                    self.state["best"] = key
                    self.save("best.pt")
                    entry["best"] = True
            self.state["history"].append(entry)
            self.log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in entry.items()))
            self.save("last.pt", full=True)
            if a.save_every and (epoch + 1) % a.save_every == 0:
                self.save(f"epoch_{epoch + 1}.pt")
            if self.dist.main:
                write_json(self.state["history"], self.out / "history.json")
        return self.state

    def _full_setup(self):
        """End to end. A batch's queries share most views (one level-0 view, at most 16 level-1 views), so
        each distinct view is augmented and encoded once per batch and its embedding shared."""
        a = self.a
        model = self.dist.wrap(SharedViewsForward(self.model))
        ds = ZoomDataset(a.data, self.train_records, self.bank, augment=not a.no_augment, seed=a.seed,
                         with_views=False)
        sampler = None
        if self.dist.world > 1:
            sampler = torch.utils.data.DistributedSampler(ds, shuffle=True, seed=a.seed)
        gen = torch.Generator().manual_seed(a.seed)
        loader = torch.utils.data.DataLoader(ds, batch_size=a.batch_size, shuffle=sampler is None, sampler=sampler,
                                             num_workers=a.workers, collate_fn=collate, drop_last=len(ds) > a.batch_size,
                                             worker_init_fn=worker_init, generator=gen,
                                             persistent_workers=a.workers > 0, pin_memory=self.device.type == "cuda")

        def loss_fn(ground, rows, act):
            unique, inverse = torch.unique(rows, return_inverse=True)
            views = torch.from_numpy(ds.view_images(unique.numpy())).to(self.device)
            return self.ce(model(normalize(ground), normalize(views), inverse.to(self.device), act), act)

        def batches(epoch):
            if sampler is not None:
                sampler.set_epoch(epoch)
            gen.manual_seed(a.seed + epoch)
            for b in loader:
                if b is None:
                    continue
                ground = b["ground"].to(self.device, non_blocking=True)
                act = b["actions"].to(self.device, non_blocking=True)
                yield len(act), (lambda ground=ground, rows=b["view_rows"], act=act: loss_fn(ground, rows, act))

        def validate():
            return evaluate(self.model, a.data, a.val_split, bank=self.bank, batch_size=a.batch_size,
                            device=self.device, log=lambda *x: None)

        return batches, len(loader), validate

    def _shuffled(self, n: int, per_epoch: int, epoch: int):
        """This process's batches of an epoch: (generator, indices), seeded by epoch (exact resume); the generator
        then drives the batch's augmentation."""
        gen = torch.Generator().manual_seed(self.a.seed * 7919 + epoch)
        order = torch.randperm(n, generator=gen)[self.dist.rank::self.dist.world]
        for s in range(per_epoch):
            idx = order[s * self.a.batch_size:(s + 1) * self.a.batch_size]
            if len(idx) == 0:
                break
            yield gen, idx

    def _street_setup(self):
        """The cpu recipe's first phase: the encoder and per-step heads learn each step's cell from the street
        photo alone (no views, no decoder): half the images per sample, and a short gradient path."""
        from .fast_data import MemoryData, street_batch

        a = self.a
        show = self.dist.main and not a.quiet
        size = self.cfg.image_size
        data = MemoryData(a.data, self.train_records, None, size, progress=show, with_views=False)
        val = MemoryData(a.data, self.val_records, None, size, photo_scale=1, progress=show, with_views=False)
        model = self.dist.wrap(StreetHeads(self.model, self.aux))
        aug = batched_augment(a)
        per_epoch = max(1, len(data) // (a.batch_size * self.dist.world))

        def batches(epoch):
            for gen, idx in self._shuffled(len(data), per_epoch, epoch):
                street, act = street_batch(data.photos[idx], size, gen, aug), data.paths[idx]
                yield len(idx), (lambda street=street, act=act: self.ce(model(street.to(self.device)),
                                                                        act.to(self.device)))

        @torch.no_grad()
        def validate():
            self.model.eval()
            self.aux.eval()
            g = torch.cat([self.model.encode_street(street_batch(val.photos[i:i + 256], size, None, None).to(self.device))
                           for i in range(0, len(val), 256)])
            pred = torch.stack([head(g) for head in self.aux], 1).argmax(-1).cpu()
            self.aux.train()
            return {"aux_step_accuracy": (pred == val.paths).float().mean(0).tolist()}

        return batches, per_epoch, validate

    def _memory_setup(self):
        """The in-memory recipe: views and photos decoded once, batched tensor augmentation, each distinct view
        of a batch encoded once; validation greedy-decodes the val split against a fresh view table."""
        from .fast_data import MemoryData, street_batch, view_batch

        a = self.a
        show = self.dist.main and not a.quiet
        size = self.cfg.image_size
        data = MemoryData(a.data, self.train_records, self.bank, size, progress=show)
        val = MemoryData(a.data, self.val_records, self.bank, size, photo_scale=1, progress=show)  # runtime pixels
        model = self.dist.wrap(SharedViewsForward(self.model, self.aux))
        aug = batched_augment(a)
        per_epoch = max(1, len(data) // (a.batch_size * self.dist.world))

        def batches(epoch):
            for gen, idx in self._shuffled(len(data), per_epoch, epoch):
                street, views, inverse, act = data.batch(idx, gen, aug)

                def loss_fn(street=street, views=views, inverse=inverse, act=act):
                    dev = self.device
                    act = act.to(dev)
                    out = model(street.to(dev), views.to(dev), inverse.to(dev), act)
                    if self.aux is None:
                        return self.ce(out, act)
                    logits, aux = out
                    return self.ce(logits, act) + a.aux_weight * self.ce(aux, act)

                yield len(idx), loss_fn

        val_truth, val_latlon = val.paths.numpy(), val.latlon

        @torch.no_grad()
        def validate():
            self.model.eval()
            table = torch.cat([self.model.encode_views(view_batch(data.views[i:i + 512], data.view_level[i:i + 512],
                                                                  None, None).to(self.device))
                               for i in range(0, len(data.views), 512)])
            g = torch.cat([self.model.encode_street(street_batch(val.photos[i:i + 256], size, None, None).to(self.device))
                           for i in range(0, len(val), 256)])
            pred, _ = predict(self.model, g, lambda rows: table[rows])
            return path_metrics(pred, val_truth, val_latlon, self.cfg.zoom)

        return batches, per_epoch, validate

    def _frozen_setup(self):
        a, model = self.a, self.model
        model.eval()  # the encoder never trains here; dropout in the decoder is switched on per step
        t0 = time.perf_counter()
        paths = torch.tensor([r.path for r in self.train_records], device=self.device)
        view_rows = torch.from_numpy(self.bank.indices(paths.cpu().numpy())).to(self.device)
        # only the views on the training paths are encoded now (teacher forcing visits no others); validation
        # encodes the ones its greedy paths reach, once each (ViewEmbeddings)
        views = ViewEmbeddings(model, self.bank, self.device)
        views(view_rows.flatten())
        view_table = views.table
        show = self.dist.main and not a.quiet
        if a.recipe in ("memory", "cpu"):
            train_g = encode_streets_in_memory(model, a.data, self.train_records, a.street_copies, self.device, a.seed,
                                               batched_augment(a), progress=show).to(self.device)
            val_g = encode_streets_in_memory(model, a.data, self.val_records, 1, self.device, a.seed, None,
                                             progress=show)[:, 0]
        else:
            train_g = encode_streets(model, a.data, self.train_records, a.street_copies, self.device, a.seed,
                                     progress=show).to(self.device)
            val_g = encode_streets(model, a.data, self.val_records, 1, self.device, a.seed, progress=show)[:, 0]
        self.log(f"cached {int(views.done.sum())} view and {train_g.shape[0] * train_g.shape[1] + len(val_g)} street "
                 f"embeddings in {time.perf_counter() - t0:.1f} s")
        decoder = self.dist.wrap(model.decoder)
        n, copies = train_g.shape[:2]
        per_epoch = max(1, n // (a.batch_size * self.dist.world))

        def batches(epoch):
            gen = torch.Generator().manual_seed(a.seed * 7919 + epoch)
            order = torch.randperm(n, generator=gen)[self.dist.rank::self.dist.world]
            copy = torch.randint(0, copies, (n,), generator=gen)
            decoder.train()
            for s in range(per_epoch):
                idx = order[s * a.batch_size:(s + 1) * a.batch_size].to(self.device)
                if len(idx) == 0:
                    break
                g = train_g[idx, copy[idx.cpu()].to(self.device)]
                act = paths[idx]
                yield len(idx), (lambda g=g, act=act, rows=view_rows[idx]: self.ce(decoder(g, view_table[rows], act), act))
            decoder.eval()

        val_truth = np.array([r.path for r in self.val_records])
        val_latlon = np.array([r.latlon for r in self.val_records])

        def validate():
            model.eval()
            pred, _ = predict(model, val_g.to(self.device), views)
            return path_metrics(pred, val_truth, val_latlon, self.cfg.zoom)

        return batches, per_epoch, validate


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="jzi-train", description="Train (or with --eval, test) a Just Zoom In model "
                                "on a dataset in the authors' format.")
    p.add_argument("data", help="dataset root: metadata/<split>.csv, streetview/images/, satellite/layout.yaml")
    p.add_argument("--out", required=True, help="run folder: checkpoints, history.json, cached views")
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny",
                   help="model size: official is the paper's ViT-B/14 (default %(default)s)")
    p.add_argument("--imagery", help="satellite imagery (XYZ folder or GeoTIFF); default DATA/satellite")
    p.add_argument("--epochs", type=int, help="epochs (default 30, or unbounded with --minutes)")
    p.add_argument("--minutes", type=float, help="time budget: stop after this many minutes of training (setup "
                   "included; --frozen-encoder always finishes its first epoch)")
    p.add_argument("--batch-size", type=int, default=64, help="per process (default %(default)s)")
    p.add_argument("--lr", type=float, help="peak learning rate (default 3e-4, the authors'; 1e-3 for --recipe cpu)")
    p.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay (default %(default)s)")
    p.add_argument("--warmup", type=float, default=0.05, help="warm-up share of training (default %(default)s)")
    p.add_argument("--label-smoothing", type=float, default=0.1,
                   help="label smoothing of the cross-entropy (default %(default)s)")
    p.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm; 0 disables")
    p.add_argument("--recipe", choices=("authors", "memory", "cpu"), default="authors",
                   help="authors: their loader (albumentations per sample), end to end; memory: the same loss end to "
                   "end with photos and views decoded once into memory and augmented in batches (fast); cpu: a street "
                   "phase (encoder + per-step heads on photos alone) then the zoom decoder on the frozen encoder, "
                   "the recipe that learns within minutes on 2 CPU cores (default %(default)s)")
    p.add_argument("--street-epochs", type=int,
                   help="--recipe cpu: epochs of the street phase, before the zoom phase's --epochs (default 20, or "
                   "unbounded with --minutes)")
    p.add_argument("--hue-jitter", type=float, default=0.0,
                   help="--recipe memory/cpu: hue jitter strength (the authors' 0.05 erases hue-coded places; default 0)")
    p.add_argument("--colour-jitter", type=float, default=0.2,
                   help="--recipe memory/cpu: brightness, contrast and saturation jitter strength of street photos "
                   "(default %(default)s, the authors')")
    p.add_argument("--last-step-spread", type=float, metavar="SIGMA",
                   help="spread the last step's target over the cells around the true one (a Gaussian of SIGMA "
                   "cells): an uncertain finest step answers near the likely cells (default 1.0 for --recipe cpu, "
                   "else 0: the authors' one-hot target)")
    p.add_argument("--aux-weight", type=float, default=0.0,
                   help="--recipe memory: weight of an auxiliary loss that predicts every step's action from the street "
                   "embedding alone (training-only heads; default %(default)s: the authors' loss only)")
    p.add_argument("--frozen-encoder", action="store_true",
                   help="train the decoder from cached embeddings of a fixed encoder (fast on CPU)")
    p.add_argument("--street-copies", type=int,
                   help="frozen mode: embeddings per street photo, 1 plain + augmented (default 4; 2 for --recipe cpu, "
                   "whose zoom phase is short; 1 with --no-augment)")
    p.add_argument("--pretrained", metavar="PATH", help="DINOv2 encoder weights: a local transformers folder "
                   "(e.g. a copy of facebook/dinov2-base) or Meta's dinov2_vit*14_pretrain.pth")
    p.add_argument("--init", help="start from this checkpoint's weights (e.g. a pretrained encoder)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt after an interruption")
    p.add_argument("--pause-after", type=int, help="stop after N epochs of this session, resumable with --resume "
                   "(for time-sliced jobs); the schedule still spans --epochs")
    p.add_argument("--save-every", type=int, default=5, help="also keep epoch_N.pt every N epochs; 0 = never")
    p.add_argument("--val-every", type=int, help="validate every N epochs (default 1; with --frozen-encoder about "
                   "every 200 steps, its epochs being short)")
    p.add_argument("--train-split", default="train", help="training split: DATA/metadata/NAME.csv (default train)")
    p.add_argument("--val-split", default="val", help="validation split, picks best.pt (default val)")
    p.add_argument("--test-split", default="test", help="split best.pt is tested on after training (default test)")
    p.add_argument("--limit", type=int, help="use only the first N training queries")
    p.add_argument("--on-bad", choices=("skip", "error"), default="skip", help="bad rows: skip them or refuse")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--no-augment", action="store_true", help="no street or satellite augmentations")
    p.add_argument("--no-amp", action="store_true", help="no fp16 autocast on CUDA")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--seed", type=int, default=0, help="random seed: weights, batches, augmentations (default 0)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--eval", action="store_true", help="no training: test OUT/best.pt (or --checkpoint)")
    p.add_argument("--checkpoint", help="with --eval: the checkpoint to test")
    p.add_argument("--no-test", action="store_true", help="do not test best.pt on the test split after training")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    a = p.parse_args(argv)
    if a.lr is None:
        a.lr = 1e-3 if a.recipe == "cpu" else 3e-4
    if a.last_step_spread is None:
        a.last_step_spread = 1.0 if a.recipe == "cpu" else 0.0
    if a.last_step_spread < 0:
        p.error("--last-step-spread must be >= 0")
    if a.street_epochs is None and not a.minutes:
        a.street_epochs = 20
    if a.street_copies is None:  # without augmentation every further copy would be the plain one again
        a.street_copies = 1 if a.no_augment else 2 if a.recipe == "cpu" else 4
    for name in ("batch_size", "street_copies", "val_every", "street_epochs"):
        if getattr(a, name) is not None and getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if a.no_augment and a.street_copies > 1:
        p.error("--street-copies > 1 needs augmentation: with --no-augment every copy is the plain photo")
    if a.epochs is not None and a.epochs < 1:
        p.error("--epochs must be >= 1")
    if a.minutes is not None and a.minutes <= 0:
        p.error("--minutes must be > 0")
    if not 0 <= a.colour_jitter < 1:
        p.error("--colour-jitter must be within [0, 1)")
    if not 0 <= a.warmup < 1 or not 0 <= a.label_smoothing < 1:
        p.error("--warmup and --label-smoothing must be within [0, 1)")
    return a


def test_checkpoint(path, a, log=print) -> dict:
    model, _ = load_checkpoint(path)
    m = evaluate(model, a.data, a.test_split, imagery=a.imagery, batch_size=a.batch_size,
                 device=a.device or ("cuda" if torch.cuda.is_available() else "cpu"), progress=not a.quiet, log=log)
    write_json(m, Path(a.out) / f"{a.test_split}_metrics.json")
    log(format_table(m, f"{path} on {a.test_split}"))
    return m


# --recipe cpu with --minutes: the zoom phase trains its decoder for 20 % of the budget, at most 3 minutes
# (its validation plateaus within a few epochs; RESULTS.md, issue 9); the street phase gets the rest, less
# the zoom phase's caching time, which grows with the photos (6000: ~35 s; 30 000: ~130 s)
ZOOM_SHARE, ZOOM_MAX_MINUTES = 0.2, 3.0


def _finished_street_state(last: Path, street) -> dict | None:
    """The training state in the street phase's ``last.pt`` if that phase has run its epochs or spent its
    minutes, else None."""
    if not last.is_file():
        return None
    state = read_torch_file(last).get("train_state", {})
    if state.get("finished") == {"epochs": street.epochs, "minutes": street.minutes}:
        return state  # e.g. stopped early to leave the zoom phase its caching time (Run.budget_s)
    if street.epochs is not None and state.get("epoch", 0) >= street.epochs:
        return state
    if street.minutes and state.get("elapsed_s", 0.0) >= 60 * street.minutes:
        return state
    return None


def train_cpu_recipe(a, dist: Distributed) -> None:
    """``--recipe cpu``, two phases in one command:

    1. the street phase (``OUT/encoder/``): the encoder and one linear head per zoom step learn each
       step's cell from augmented street photos alone, ``--street-epochs`` epochs (no views, no decoder:
       half the images per sample of end-to-end training, and a short gradient path to the encoder);
    2. the zoom phase (``OUT/``): the authors' teacher-forcing loss trains the decoder on the frozen
       encoder's cached view and street embeddings (``--frozen-encoder``), ``--epochs`` epochs.

    ``--resume`` continues whichever phase was interrupted; a finished street phase is not redone.
    """
    out = Path(a.out)
    budget = a.minutes
    zoom_minutes = min(budget * ZOOM_SHARE, ZOOM_MAX_MINUTES) if budget else None
    street = argparse.Namespace(**{**vars(a), "out": str(out / "encoder"), "phase": "street", "epochs": a.street_epochs,
                                   "minutes": budget - zoom_minutes if budget else None, "views_cache_dir": str(out),
                                   "frozen_encoder": False, "save_every": 0})
    done = out / "encoder" / "last.pt"
    street_state = _finished_street_state(done, street) if a.resume else None
    if street_state is None:
        street_state = Run(street, dist).fit()
    dist.barrier()
    if budget:  # the zoom phase (caching included) gets what the street phase left of the whole budget
        zoom_minutes = max(budget - street_state.get("elapsed_s", 0.0) / 60, 0.1)
    zoom = argparse.Namespace(**{**vars(a), "phase": "zoom", "frozen_encoder": True, "init": str(done),
                                 "minutes": zoom_minutes})
    Run(zoom, dist).fit()


def cache_photos(train: int, copies: int, val: int, views: int) -> float:
    """What the zoom phase's cache costs, in street photos (a view is one image, a photo two halves)."""
    return train * copies + val + views / 2


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    from jzi.runtime.imagery import ImageryError

    try:
        if a.eval:
            test_checkpoint(a.checkpoint or Path(a.out) / "best.pt", a)
            return 0
        dist = Distributed(a.device)
        try:
            if a.recipe == "cpu" and not a.frozen_encoder:
                train_cpu_recipe(a, dist)
            else:
                Run(a, dist).fit()
            dist.barrier()
        finally:
            dist.close()
        if dist.main and not a.no_test and (Path(a.out) / "best.pt").is_file():
            test_checkpoint(Path(a.out) / "best.pt", a)
    except (CheckpointError, DataError, ImageryError, OSError) as e:
        print(f"jzi-train: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("jzi-train: interrupted; continue with --resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
