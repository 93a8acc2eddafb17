"""The in-memory training path: batched augmentations and the runtime's pixels when not augmenting."""
import numpy as np

from jzi.runtime.images import street_input


def _photos(n=6, h=32, seed=0):
    import torch

    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(0, 256, (n, h, 2 * h, 3), dtype=np.uint8))


def test_unaugmented_street_batch_is_the_runtime_input():
    import torch

    from jzi.export.fast_data import street_batch
    from jzi.export.model import normalize, split_street

    photos = _photos(3, 16)
    ours = street_batch(photos, 16, None, None)
    assert ours.shape == (3, 2, 3, 16, 16)
    runtime = split_street(normalize(torch.from_numpy(np.stack([street_input(p.numpy(), 16) for p in photos]))))
    torch.testing.assert_close(ours, runtime, atol=1e-5, rtol=0)


def test_augmentation_is_seeded_and_changes_pixels():
    import torch

    from jzi.export.fast_data import Augment, street_batch

    photos = _photos(8, 32)
    aug = Augment(hue=0.05)
    a = street_batch(photos, 16, torch.Generator().manual_seed(1), aug)
    b = street_batch(photos, 16, torch.Generator().manual_seed(1), aug)
    c = street_batch(photos, 16, torch.Generator().manual_seed(2), aug)
    assert a.shape == (8, 2, 3, 16, 16) and torch.isfinite(a).all()
    assert torch.equal(a, b) and not torch.equal(a, c)
    plain = street_batch(photos, 16, None, None)
    assert not torch.allclose(a, plain, atol=0.05)


def test_level_zero_views_are_never_augmented():
    import torch

    from jzi.export.fast_data import Augment, view_batch

    views = _photos(6, 16)[..., :16, :]  # [6, 16, 16, 3]
    levels = torch.tensor([0, 0, 1, 2, 3, 3])
    strong = Augment(view_colour=0.5, view_colour_p=1.0, view_blur_p=1.0, view_dropout_p=1.0)
    out = view_batch(views, levels, torch.Generator().manual_seed(0), strong)
    plain = view_batch(views, levels, None, None)
    assert torch.equal(out[:2], plain[:2])
    assert all(not torch.allclose(out[i], plain[i]) for i in range(2, 6))


def test_colour_jitter_and_dropout_by_hand():
    import torch

    from jzi.export.fast_data import coarse_dropout, colour_jitter

    x = torch.full((4, 3, 8, 8), 0.5)
    same = colour_jitter(x, torch.Generator().manual_seed(0), p=0.0, brightness=0.5, contrast=0.5, saturation=0.5)
    assert torch.equal(same, x)  # p = 0: untouched
    out = coarse_dropout(torch.ones(64, 3, 20, 20), torch.Generator().manual_seed(0), p=1.0)
    dropped = (out == 0).all(1).float().mean((1, 2))  # share of each image zeroed
    assert (dropped > 0).all() and (dropped < 0.5).all()
    assert torch.equal(coarse_dropout(torch.ones(4, 3, 8, 8), torch.Generator().manual_seed(0), p=0.0),
                       torch.ones(4, 3, 8, 8))
