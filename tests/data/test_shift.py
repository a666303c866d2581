"""DeviceBatches(shift=...): every training image is its crop moved by up to `shift` pixels, drawn so that
runs are reproducible, resumable mid-epoch and identical under any number of processes."""

from __future__ import annotations

import pytest
import torch

from convscope.data.batches import DeviceBatches, normalize_images
from convscope.errors import ConfigError
from convscope.experiments.setup import centre_crop

N, BS, SHIFT, SIZE = 2048, 256, 1, 20


@pytest.fixture(scope="module")
def images(mnist):
    """Real MNIST, centre 22x22 (the 20x20 crop plus a 1-pixel margin on each side)."""
    x, _, _ = normalize_images(centre_crop(mnist.train_images[:N], SIZE + 2 * SHIFT))
    return x


def batches(x, seed=0, **kw):
    # The "labels" are the item numbers, so each yielded item can be traced to its source image.
    return DeviceBatches(x, torch.arange(len(x)), kw.pop("bs", BS), shuffle=True, drop_last=True, seed=seed,
                         shift=SHIFT, **kw)


def offset_of(item: torch.Tensor, source: torch.Tensor) -> tuple[int, int]:
    """The (row, column) offset at which `item` is a crop of `source`, found by trying all of them."""
    found = [(dy, dx) for dy in range(2 * SHIFT + 1) for dx in range(2 * SHIFT + 1)
             if torch.equal(item, source[..., dy : dy + SIZE, dx : dx + SIZE])]
    assert found, "the item is not a crop of its source image"
    return found[0]


def test_every_item_is_its_source_image_moved_by_at_most_shift_pixels(images):
    counts = torch.zeros(2 * SHIFT + 1, 2 * SHIFT + 1)
    seen = []
    for xb, ids in batches(images):
        assert xb.shape == (BS, 1, SIZE, SIZE)
        for item, i in zip(xb, ids.tolist()):
            dy, dx = offset_of(item, images[i])
            counts[dy, dx] += 1
        seen += ids.tolist()
    assert len(set(seen)) == len(seen) == N // BS * BS  # each image once per epoch, as without shifts
    # All 9 offsets are used, each about 1/9 of the time (2048 draws: 1/9 is 228, +-4 sd is +-60).
    assert counts.sum() == N and counts.min() > 228 - 60 and counts.max() < 228 + 60


def test_the_same_seed_gives_the_same_crops_and_a_new_epoch_new_ones(images):
    a, b = batches(images, seed=5), batches(images, seed=5)
    first_a, first_b = [x for x, _ in a], [x for x, _ in b]
    assert all(torch.equal(p, q) for p, q in zip(first_a, first_b))
    second = [x for x, _ in a]
    assert not all(torch.equal(p, q) for p, q in zip(first_a, second))


def test_resuming_mid_epoch_replays_the_same_shifts(images):
    straight = batches(images, seed=3)
    next(iter(straight))  # epoch 1, so the resumed epoch is not the first
    state = straight.state_dict()
    rest_straight = list(straight)
    resumed = batches(images, seed=99)  # the seed is overwritten by the saved state
    resumed.resume_epoch(state, 0)
    rest_resumed = list(resumed)
    assert len(rest_straight) == len(rest_resumed)
    for (xa, ya), (xb, yb) in zip(rest_straight, rest_resumed):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    # Mid-epoch: a checkpoint taken during that epoch replays it from batch 3 on.
    mid = batches(images)
    mid.resume_epoch(straight.state_dict(), 3)
    rest_mid = list(mid)
    assert len(rest_mid) == len(rest_straight) - 3
    assert all(torch.equal(p[0], q[0]) for p, q in zip(rest_mid, rest_straight[3:]))


def test_two_ranks_see_the_one_process_global_batches(images):
    one = [x for x, _ in batches(images, bs=2 * 128)]
    ranks = [[x for x, _ in batches(images, bs=128, rank=r, world_size=2)] for r in range(2)]
    for g, (r0, r1) in enumerate(zip(*ranks)):
        assert torch.equal(one[g], torch.cat([r0, r1]))


def test_channels_last_images_give_channels_last_crops(mnist):
    # Three channels (the grey image three times) so that the two memory layouts differ.
    x, _, _ = normalize_images(centre_crop(mnist.train_images[:512], SIZE + 2 * SHIFT))
    rgb = x.expand(-1, 3, -1, -1)
    for layout in (torch.contiguous_format, torch.channels_last):
        xs = rgb.contiguous(memory_format=layout)
        xb, ids = next(iter(batches(xs)))
        assert xb.is_contiguous(memory_format=layout)
        for item, i in zip(xb[:16], ids[:16].tolist()):
            offset_of(item, xs[i])


def test_shift_needs_shuffled_training_batches_and_room(images):
    with pytest.raises(ConfigError, match="shift 1 needs shuffled images"):
        DeviceBatches(images, torch.arange(N), BS, shift=1)  # validation order: no shifts there
    with pytest.raises(ConfigError, match="shift 11 needs"):
        DeviceBatches(images, torch.arange(N), BS, shuffle=True, shift=11)
