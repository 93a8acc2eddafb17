"""jzi-train and jzi-eval: the schedule, metrics, checkpoints, resume, frozen-encoder mode, bad input."""
import json
import shutil
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
from helpers import make_world_apart, run_main

from jzi.export.config import get_preset
from jzi.export.synthetic import WorldConfig

REGION = get_preset("tiny").zoom
# The runs below train on a 3-step region (1 + 16 + 256 = 273 views): what they assert does not depend on the
# number of steps, and each run renders its region's views (4369 at 4 steps) and encodes those its paths visit.
WORLD_REGION = replace(REGION, steps=3)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "w"
    make_world_apart(out, WorldConfig(seed=7, meters_per_pixel=10.0, sizes=(16, 6, 6),
                                      region=WORLD_REGION.to_dict()))
    return out


@pytest.fixture(scope="module")
def views_cache(world, tmp_path_factory):
    """Rendered views shared by the runs below (a run reuses OUT/views_64px.npy when present)."""
    from jzi.export.data import ViewBank

    path = tmp_path_factory.mktemp("views") / "views_64px.npy"
    ViewBank(world / "satellite", WORLD_REGION, cache=path)
    return path


def cli(module, *args):
    return run_main(module, *args)  # in this process: no torch import per call


def run_train(world, out, views_cache, *args):
    out.mkdir(parents=True, exist_ok=True)
    if not (out / views_cache.name).exists():
        shutil.copy(views_cache, out / views_cache.name)
    r = cli("jzi.export.train", world, "--out", out, "--quiet", *args)  # torch's threads as the session set them
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def test_lr_schedule_warms_up_then_decays_to_a_tenth():
    from jzi.export.train import lr_factor

    assert lr_factor(0.0) < 0.05
    assert lr_factor(0.05) == pytest.approx(1.0)
    assert lr_factor(1.0) == pytest.approx(0.1)
    assert lr_factor(0.5) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * 0.45 / 0.95)))
    after = [lr_factor(p) for p in np.linspace(0.05, 1, 50)]
    assert all(a >= b for a, b in zip(after, after[1:]))


def test_path_metrics_by_hand():
    from jzi.export.evaluate import path_metrics

    truth = np.array([[5, 6, 9, 3], [5, 6, 9, 3], [5, 6, 9, 3], [1, 1, 1, 1]])
    latlon = REGION.path_center(truth)  # queries at the centres of their final cells
    pred = np.array([[5, 6, 9, 3],      # right: 0 m
                     [5, 6, 9, 2],      # last step one cell west: 39.06 m off
                     [5, 6, 9, 1],      # two cells west: 78.1 m
                     [2, 1, 1, 1]])     # wrong district: kilometres
    m = path_metrics(pred, truth, latlon, REGION)
    assert m["R@40m"] == 0.5 and m["R@50m"] == 0.5 and m["R@100m"] == 0.75
    assert m["strict"] == 0.25
    assert m["step_accuracy"] == [0.75, 0.75, 0.75, 0.25]
    assert m["conditional_step_accuracy"] == [0.75, 1.0, 1.0, pytest.approx(1 / 3)]
    assert m["median_error_m"] == pytest.approx((39.0625 + 78.125) / 2, abs=0.1)


def test_undefined_step_shares_are_null_and_a_dash_not_nan():
    from jzi.export.evaluate import format_table, path_metrics

    truth = np.array([[5, 6, 9, 3], [5, 6, 9, 3]])
    pred = np.array([[1, 6, 9, 3], [2, 6, 9, 3]])  # first step always wrong: later shares are undefined
    m = path_metrics(pred, truth, REGION.path_center(truth), REGION)
    assert m["conditional_step_accuracy"] == [0.0, None, None, None]
    table = format_table(m)
    assert "nan" not in table.lower()
    assert "  0.0      -      -      -" in table and "no query had the earlier steps right" in table
    json.loads(json.dumps(m, allow_nan=False))  # strict JSON


def test_train_writes_checkpoints_history_and_test_metrics(world, views_cache, tmp_path):
    import torch

    from jzi.export.checkpoint import load_checkpoint, read_torch_file
    from jzi.export.evaluate import evaluate
    from jzi.export.model import JustZoomIn

    out = tmp_path / "run"
    r = run_train(world, out, views_cache, "--epochs", "2", "--batch-size", "8", "--save-every", "1")
    for name in ("last.pt", "best.pt", "epoch_1.pt", "epoch_2.pt", "history.json", "test_metrics.json"):
        assert (out / name).is_file(), name
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2] and history[1]["step"] == 4  # 16 queries / batch 8
    assert all("R@40m" in h and np.isfinite(h["train_loss"]) for h in history)
    assert "R@100m" in r.stdout and "strict path accuracy" in r.stdout  # the test table
    # the checkpoint is the authors' layout and loads with weights_only; its test metrics are reproducible
    raw = read_torch_file(out / "best.pt")
    assert any(k.startswith("decoder.blocks.0.self_attn.q_proj") for k in raw["model_state_dict"])
    model, info = load_checkpoint(out / "best.pt")
    assert info["format"] == "jzi"
    again = evaluate(model, world, "test", log=lambda *a: None)
    saved = json.loads((out / "test_metrics.json").read_text())
    assert again["paths"] == saved["paths"] and again["R@100m"] == saved["R@100m"]
    # the model trained: last.pt differs from a fresh model of the same seed
    torch.manual_seed(0)
    fresh = JustZoomIn(get_preset("tiny"))
    last, _ = load_checkpoint(out / "last.pt")
    assert not torch.equal(fresh.decoder.output_head.weight, last.decoder.output_head.weight)


def test_frozen_encoder_trains_only_the_decoder_and_resume_is_exact(world, views_cache, tmp_path):
    import torch

    from jzi.export.checkpoint import load_checkpoint, save_checkpoint
    from jzi.export.model import JustZoomIn

    torch.manual_seed(3)
    init = tmp_path / "init.pt"
    save_checkpoint(JustZoomIn(get_preset("tiny")), init)
    common = ["--frozen-encoder", "--init", init, "--batch-size", "4", "--street-copies", "2", "--no-test"]
    run_train(world, tmp_path / "straight", views_cache, *common, "--epochs", "3")
    run_train(world, tmp_path / "resumed", views_cache, *common, "--epochs", "3", "--pause-after", "1")
    r = run_train(world, tmp_path / "resumed", views_cache, *common, "--epochs", "3", "--resume")
    assert "resumed from" in r.stdout
    a, _ = load_checkpoint(tmp_path / "straight" / "last.pt")
    b, _ = load_checkpoint(tmp_path / "resumed" / "last.pt")
    start, _ = load_checkpoint(init)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name  # an interrupted run ends exactly where an uninterrupted one does
    for (name, pa), ps in zip(a.encoder.state_dict().items(), start.encoder.state_dict().values()):
        assert torch.equal(pa, ps), name  # the encoder never moved
    assert not torch.equal(a.decoder.output_head.weight, start.decoder.output_head.weight)
    history = json.loads((tmp_path / "resumed" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]


def test_frozen_encoder_trains_its_first_epoch_even_when_caching_spends_the_budget(world, views_cache, tmp_path):
    """--minutes counts the embedding cache; a budget it spends alone still leaves a trained decoder."""
    import torch

    from jzi.export.checkpoint import save_checkpoint
    from jzi.export.model import JustZoomIn

    torch.manual_seed(3)
    init = tmp_path / "init.pt"
    save_checkpoint(JustZoomIn(get_preset("tiny")), init)
    run_train(world, tmp_path / "run", views_cache, "--frozen-encoder", "--init", init, "--batch-size", "4",
              "--street-copies", "2", "--no-test", "--minutes", "0.0001")
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1]
    assert (tmp_path / "run" / "best.pt").is_file()


def test_eval_cli_and_train_eval_agree(world, views_cache, tmp_path):
    import torch

    from jzi.export.checkpoint import save_checkpoint
    from jzi.export.model import JustZoomIn

    out = tmp_path / "run"
    torch.manual_seed(1)
    out.mkdir()
    save_checkpoint(JustZoomIn(get_preset("tiny", region=WORLD_REGION)), out / "best.pt")  # a model of the world's region
    shutil.copy(views_cache, out / views_cache.name)
    r = cli("jzi.export.evaluate", out / "best.pt", world, "--split", "val", "--json", "--out", tmp_path / "m.json")
    assert r.returncode == 0, r.stderr
    printed = json.loads(r.stdout)
    written = json.loads((tmp_path / "m.json").read_text())
    assert printed["queries"] == 6 and printed["R@100m"] == written["R@100m"] and len(written["paths"]) == 6
    r2 = cli("jzi.export.train", world, "--out", out, "--eval", "--test-split", "val", "--quiet")
    assert r2.returncode == 0, r2.stderr
    assert json.loads((out / "val_metrics.json").read_text())["paths"] == written["paths"]


def test_bad_input_is_one_line_and_nonzero(world, tmp_path):
    r = cli("jzi.export.train", tmp_path / "missing", "--out", tmp_path / "o", "--quiet")
    assert r.returncode == 1 and "no such metadata" in r.stderr and "Traceback" not in r.stderr
    r = cli("jzi.export.train", world, "--out", tmp_path / "o", "--epochs", "0")
    assert r.returncode == 2 and "--epochs must be >= 1" in r.stderr
    (tmp_path / "bad.pt").write_bytes(b"nope")
    r = cli("jzi.export.evaluate", tmp_path / "bad.pt", world)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "not a checkpoint" in r.stderr
    r = cli("jzi.export.train", world, "--out", tmp_path / "o2", "--eval", "--quiet")
    assert r.returncode == 1 and "best.pt: no such file" in r.stderr


@pytest.mark.gpu
def test_fp16_autocast_training_on_cuda(world, views_cache, tmp_path):
    import torch

    from jzi.export.checkpoint import read_torch_file

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (fp16 autocast path)")
    out = tmp_path / "cuda"
    run_train(world, out, views_cache, "--epochs", "1", "--batch-size", "8", "--device", "cuda")
    raw = read_torch_file(out / "last.pt")
    assert "scaler_state_dict" in raw  # the fp16 gradient scaler ran and was saved for resuming
    assert json.loads((out / "history.json").read_text())[0]["train_loss"] > 0


@pytest.mark.slow
def test_ddp_with_torchrun_on_two_cpu_processes(world, views_cache, tmp_path):
    out = tmp_path / "ddp"
    out.mkdir()
    shutil.copy(views_cache, out / views_cache.name)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                        "-m", "jzi.export.train", str(world), "--out", str(out), "--epochs", "1", "--batch-size", "4",
                        "--quiet", "--threads", "1", "--device", "cpu"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    history = json.loads((out / "history.json").read_text())
    assert history[0]["step"] == 2  # 16 queries split over 2 processes, batch 4 each


def test_pretrained_dinov2_weights_start_the_encoder(world, views_cache, tmp_path):
    """--pretrained takes a local transformers DINOv2 folder; a frozen encoder keeps those weights exactly."""
    import torch
    from transformers import Dinov2Model

    from jzi.export.checkpoint import load_checkpoint
    from jzi.export.model import JustZoomIn

    torch.manual_seed(7)
    donor = Dinov2Model(JustZoomIn(get_preset("tiny")).encoder.backbone.config)
    donor.save_pretrained(tmp_path / "dinov2")
    out = tmp_path / "run"
    run_train(world, out, views_cache, "--epochs", "1", "--batch-size", "8", "--frozen-encoder",
              "--pretrained", tmp_path / "dinov2", "--no-test")
    model, _ = load_checkpoint(out / "last.pt")
    theirs = donor.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in model.encoder.backbone.state_dict().items())
    r = cli("jzi.export.train", world, "--out", tmp_path / "o3", "--pretrained", tmp_path / "nowhere", "--quiet")
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "nowhere" in r.stderr


@pytest.mark.slow
def test_memory_recipe_trains_end_to_end_and_resume_is_exact(world, views_cache, tmp_path):
    """--recipe memory: photos and views decoded once, batched augmentation; both halves of the model move, and an
    interrupted run ends exactly where an uninterrupted one does (auxiliary heads included)."""
    import torch

    from jzi.export.checkpoint import load_checkpoint, read_torch_file, save_checkpoint
    from jzi.export.model import JustZoomIn

    torch.manual_seed(5)
    init = tmp_path / "init.pt"
    save_checkpoint(JustZoomIn(get_preset("tiny")), init)
    common = ["--recipe", "memory", "--aux-weight", "1", "--init", init, "--batch-size", "4", "--no-test",
              "--val-every", "3"]
    run_train(world, tmp_path / "straight", views_cache, *common, "--epochs", "3")
    run_train(world, tmp_path / "resumed", views_cache, *common, "--epochs", "3", "--pause-after", "2")
    run_train(world, tmp_path / "resumed", views_cache, *common, "--epochs", "3", "--resume")
    a, _ = load_checkpoint(tmp_path / "straight" / "last.pt")
    b, _ = load_checkpoint(tmp_path / "resumed" / "last.pt")
    start, _ = load_checkpoint(init)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.encoder.backbone.embeddings.patch_embeddings.projection.weight,
                           start.encoder.backbone.embeddings.patch_embeddings.projection.weight)
    history = json.loads((tmp_path / "straight" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3] and "R@100m" in history[-1]
    # the auxiliary heads are training state: in last.pt for resume, never in the model's weights
    raw = read_torch_file(tmp_path / "straight" / "last.pt")
    assert "aux_state_dict" in raw and not any("aux" in k for k in raw["model_state_dict"])
    assert "aux_state_dict" not in read_torch_file(tmp_path / "straight" / "best.pt")


def test_cpu_recipe_street_phase_then_zoom_phase(world, views_cache, tmp_path):
    """--recipe cpu: the street phase moves only the encoder (and its training-only heads), the zoom phase only the
    decoder on the frozen encoder; a rerun with --resume does not redo the finished street phase."""
    import torch

    from jzi.export.checkpoint import load_checkpoint, save_checkpoint
    from jzi.export.model import JustZoomIn

    torch.manual_seed(6)
    init = tmp_path / "init.pt"
    save_checkpoint(JustZoomIn(get_preset("tiny")), init)
    out = tmp_path / "run"
    args = ["--recipe", "cpu", "--init", init, "--batch-size", "4", "--street-epochs", "2", "--epochs", "2",
            "--street-copies", "2", "--no-test"]
    run_train(world, out, views_cache, *args)
    start, _ = load_checkpoint(init)
    street, _ = load_checkpoint(out / "encoder" / "last.pt")
    final, _ = load_checkpoint(out / "last.pt")
    patch = "encoder.backbone.embeddings.patch_embeddings.projection.weight"
    sd0, sd1, sd2 = start.state_dict(), street.state_dict(), final.state_dict()
    assert not torch.equal(sd0[patch], sd1[patch]) and torch.equal(sd1[patch], sd2[patch])
    assert torch.equal(sd0["decoder.output_head.weight"], sd1["decoder.output_head.weight"])
    assert not torch.equal(sd1["decoder.output_head.weight"], sd2["decoder.output_head.weight"])
    street_history = json.loads((out / "encoder" / "history.json").read_text())
    assert len(street_history[-1]["aux_step_accuracy"]) == WORLD_REGION.steps
    assert [h["epoch"] for h in json.loads((out / "history.json").read_text())] == [1, 2]
    mtime = (out / "encoder" / "last.pt").stat().st_mtime_ns
    run_train(world, out, views_cache, *args, "--resume")
    assert (out / "encoder" / "last.pt").stat().st_mtime_ns == mtime


def test_cpu_recipe_budget_splits_minutes_and_does_not_cap_street_epochs(tmp_path):
    """With --minutes, the street phase runs until its share of the budget is spent (not a fixed 20 epochs),
    the zoom phase gets 20 % of the budget up to 3 minutes; a finished phase is known by epochs, minutes or
    its own word."""
    from argparse import Namespace

    import torch

    from jzi.export.train import _finished_street_state, parse_args

    assert parse_args(["w", "--out", "o", "--recipe", "cpu", "--minutes", "60"]).street_epochs is None
    assert parse_args(["w", "--out", "o", "--recipe", "cpu"]).street_epochs == 20
    last = tmp_path / "last.pt"
    assert not _finished_street_state(last, Namespace(epochs=None, minutes=57.0))
    torch.save({"epoch": 40, "train_state": {"epoch": 40, "elapsed_s": 1200.0}}, last)
    assert not _finished_street_state(last, Namespace(epochs=None, minutes=57.0))  # 20 of 57 minutes
    assert _finished_street_state(last, Namespace(epochs=None, minutes=20.0))
    assert _finished_street_state(last, Namespace(epochs=40, minutes=None))
    assert not _finished_street_state(last, Namespace(epochs=41, minutes=None))
    # a phase that stopped early to leave the zoom phase its caching time says so itself, for the budget it had
    done = {"epochs": None, "minutes": 57.0}
    torch.save({"epoch": 40, "train_state": {"epoch": 40, "elapsed_s": 1200.0, "finished": done}}, last)
    assert _finished_street_state(last, Namespace(epochs=None, minutes=57.0))
    assert not _finished_street_state(last, Namespace(epochs=None, minutes=90.0))  # resumed with a larger budget
    assert not _finished_street_state(last, Namespace(epochs=41, minutes=None))


def test_street_phase_reserves_the_zoom_phases_caching_time_from_its_own_rate():
    """30 000 photos x 2 copies cost the zoom phase ~2 minutes of caching (RESULTS, issue 9): the street
    phase's budget leaves that time out, estimated as half a training sample's time per photo encoded."""
    from argparse import Namespace
    from types import SimpleNamespace

    from jzi.export.train import Run, cache_photos

    photos = cache_photos(30000, 2, 300, 4369)
    assert photos == 30000 * 2 + 300 + 4369 / 2
    street = SimpleNamespace(a=Namespace(minutes=10.0), cache_photos=photos, state={"samples": 1000, "train_s": 4.0})
    assert Run.budget_s(street) == pytest.approx(600 - photos * 0.004 / 2)  # 125 s reserved
    street.state = {}  # no step timed yet: nothing to estimate from
    assert Run.budget_s(street) == 600
    zoom = SimpleNamespace(a=Namespace(minutes=3.0), cache_photos=0, state={"samples": 1000, "train_s": 4.0})
    assert Run.budget_s(zoom) == 180


def test_colour_jitter_and_hue_jitter_reach_the_batched_augmentation():
    from jzi.export.train import batched_augment, parse_args

    default = batched_augment(parse_args(["w", "--out", "o", "--recipe", "cpu"]))
    assert (default.brightness, default.contrast, default.saturation, default.hue) == (0.2, 0.2, 0.2, 0.0)
    off = batched_augment(parse_args(["w", "--out", "o", "--recipe", "cpu", "--colour-jitter", "0", "--hue-jitter",
                                      "0.05"]))
    assert (off.brightness, off.contrast, off.saturation, off.hue) == (0.0, 0.0, 0.0, 0.05)
    assert batched_augment(parse_args(["w", "--out", "o", "--no-augment"])) is None
    with pytest.raises(SystemExit):
        parse_args(["w", "--out", "o", "--colour-jitter", "1.5"])


def test_without_augmentation_the_zoom_phase_caches_one_plain_copy_per_photo():
    from jzi.export.train import parse_args

    assert parse_args(["w", "--out", "o", "--recipe", "cpu"]).street_copies == 2
    assert parse_args(["w", "--out", "o", "--recipe", "cpu", "--no-augment"]).street_copies == 1
    with pytest.raises(SystemExit):  # every further copy would be the plain photo again
        parse_args(["w", "--out", "o", "--no-augment", "--street-copies", "2"])


def test_spread_targets_centre_on_the_true_cell_and_fall_off_with_distance():
    import torch

    from jzi.export.train import spread_targets

    t = spread_targets(4, 1.0)
    assert t.shape == (16, 16) and torch.allclose(t.sum(1), torch.ones(16))
    assert torch.equal(t.argmax(1), torch.arange(16))
    assert t[0, 0] > t[5, 5]  # a corner cell has fewer neighbours to share its target with
    assert t[5, 6] > t[5, 7] > t[5, 3]  # one cell east > two cells east > two east and one north
    assert torch.allclose(spread_targets(4, 0.05), torch.eye(16), atol=1e-6)


def test_zoom_loss_spreads_only_the_last_step_and_leans_an_uninformed_answer_to_the_centre():
    import torch
    import torch.nn.functional as F

    from jzi.export.train import spread_targets, zoom_loss

    torch.manual_seed(0)
    logits, actions = torch.randn(5, 4, 16), torch.randint(0, 16, (5, 4))
    plain = F.cross_entropy(logits.flatten(0, 1), actions.flatten(), label_smoothing=0.1)
    assert torch.allclose(zoom_loss(logits, actions, 0.1), plain)
    spread = spread_targets(4, 1.0)
    target = F.one_hot(actions, 16).float()
    target[:, -1] = spread[actions[:, -1]]
    target = 0.9 * target + 0.1 / 16
    expected = -(target * logits.log_softmax(-1)).sum(-1).mean()
    assert torch.allclose(zoom_loss(logits, actions, 0.1, spread), expected)
    # a last step that sees nothing useful: the best answer for a true cell drawn uniformly is what the
    # loss's optimum puts first; one-hot targets leave every cell equal, spread targets favour the 4 inner cells
    free = torch.zeros(16, requires_grad=True)
    opt = torch.optim.SGD([free], lr=1.0)
    every_cell = torch.arange(16)
    for _ in range(300):
        loss = zoom_loss(free.expand(16, 1, 16), every_cell[:, None], 0.0, spread)
        opt.zero_grad()
        loss.backward()
        opt.step()
    p = free.detach().softmax(0)
    inner, corners = [5, 6, 9, 10], [0, 3, 12, 15]
    assert p[inner].min() > p[[1, 2, 4, 7, 8, 11, 13, 14]].max() > p[corners].max()


def test_the_cpu_recipe_spreads_the_last_step_by_default_and_the_authors_recipe_does_not():
    from jzi.export.train import parse_args

    assert parse_args(["w", "--out", "o", "--recipe", "cpu"]).last_step_spread == 1.0
    assert parse_args(["w", "--out", "o"]).last_step_spread == 0.0
    assert parse_args(["w", "--out", "o", "--recipe", "cpu", "--last-step-spread", "0"]).last_step_spread == 0.0
    with pytest.raises(SystemExit):
        parse_args(["w", "--out", "o", "--last-step-spread", "-1"])
