"""Batch augmentation: shifts move content intact with zero fill; rotations and scalings are per image and seeded."""

from types import SimpleNamespace

import torch

from jadekit.config import TrainConfig
from jadekit.engine.augment import random_rotate_scale, random_shift, rotate_scale
from jadekit.engine.evaluate import to_float
from jadekit.trainer import batch_drawer


def test_zero_shift_returns_the_same_tensor():
    x = torch.randint(0, 255, (3, 1, 5, 5), dtype=torch.uint8)
    assert random_shift(x, 0) is x


def test_each_image_is_a_translation_of_itself_with_zero_fill():
    x = torch.randint(1, 255, (16, 2, 6, 7), dtype=torch.uint8)  # no zeros inside the images
    y = random_shift(x, 2, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.dtype == x.dtype
    for i in range(len(x)):
        matches = []
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                padded = torch.nn.functional.pad(x[i], (2, 2, 2, 2))
                window = padded[:, 2 + dy : 2 + dy + 6, 2 + dx : 2 + dx + 7]
                matches.append(torch.equal(window, y[i]))
        assert sum(matches) == 1  # exactly one offset explains the output


def test_offsets_differ_between_images_and_repeat_with_the_seed():
    x = torch.randint(1, 255, (32, 1, 8, 8), dtype=torch.uint8)
    a = random_shift(x, 3, torch.Generator().manual_seed(1))
    b = random_shift(x, 3, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    zero_rows = (a == 0).flatten(1).sum(1)
    assert len(set(zero_rows.tolist())) > 1  # not one shared offset for the whole batch


def test_rotate_scale_off_returns_the_same_tensor():
    x = torch.rand(3, 1, 5, 5)
    assert random_rotate_scale(x, 0.0, 0.0) is x


def test_quarter_and_half_turns_match_exact_pixel_rotations():
    x = torch.rand(2, 2, 6, 6)
    quarter = rotate_scale(x, torch.tensor([90.0, 180.0]), torch.ones(2))
    assert torch.allclose(quarter[0], torch.rot90(x[0], -1, dims=(1, 2)), atol=1e-5)  # clockwise
    assert torch.allclose(quarter[1], torch.rot90(x[1], 2, dims=(1, 2)), atol=1e-5)
    assert torch.allclose(rotate_scale(x, torch.zeros(2), torch.ones(2)), x, atol=1e-6)


def test_non_square_images_turn_rigidly():
    x = torch.zeros(1, 1, 8, 16)
    x[:, :, 2:6, 6:10] = 1.0  # a centred 4x4 square: a quarter turn maps it onto itself
    y = rotate_scale(x, torch.tensor([90.0]), torch.ones(1))
    assert torch.allclose(y, x, atol=1e-5)
    bar = torch.zeros(1, 1, 8, 16)
    bar[:, :, 3:5, 4:12] = 1.0  # a centred, lying 2x8 bar stands up as an 8x2 one, filling the height
    turned = rotate_scale(bar, torch.tensor([90.0]), torch.ones(1))[0, 0]
    assert torch.allclose(turned[:, 7:9], torch.ones(8, 2), atol=1e-5)
    assert abs(turned.sum().item() - 16.0) < 1e-4


def test_random_angles_differ_per_image_and_stay_in_range():
    x = torch.zeros(64, 1, 9, 9)
    x[:, :, 4, 4:] = 1.0  # a ray from the centre to the right edge
    y = random_rotate_scale(x, 30.0, 0.0, torch.Generator().manual_seed(2))
    above, below = y[:, 0, :4].sum((1, 2)), y[:, 0, 5:].sum((1, 2))
    assert (above > 0.5).any() and (below > 0.5).any()  # turned both ways
    assert y[:, 0, :, :3].sum() < 1e-6  # never by more than 90 degrees: nothing reaches the left side


def test_scaling_keeps_the_centre_and_magnifies_or_shrinks_the_digit():
    x = torch.zeros(64, 1, 16, 16)
    x[:, :, 6:10, 6:10] = 1.0  # a centred 4x4 square
    y = random_rotate_scale(x, 0.0, 0.3, torch.Generator().manual_seed(3))
    mass = y.sum((1, 2, 3))
    assert y[:, :, 7:9, 7:9].min() > 0.99  # the centre stays inside the square
    assert mass.min() < 16 * 0.9 < 16 * 1.1 < mass.max()  # some shrink, some grow: one factor per image
    assert mass.min() > 16 * 0.7**2 * 0.8 and mass.max() < 16 * 1.3**2 * 1.2  # within the factor range


def test_rotate_scale_repeats_with_the_seed_and_keeps_shape_and_layout():
    x = torch.rand(8, 3, 10, 10).contiguous(memory_format=torch.channels_last)
    a = random_rotate_scale(x, 15.0, 0.1, torch.Generator().manual_seed(5))
    b = random_rotate_scale(x, 15.0, 0.1, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and a.shape == x.shape and a.dtype == x.dtype
    assert a.is_contiguous(memory_format=torch.channels_last)
    assert not torch.allclose(a, x)


def test_rotate_scale_on_primary_leaves_the_auxiliary_batch_shift_only():
    """`train.augment_rotate_scale_on = "primary"`: the primary batch turns, the auxiliary one is only shifted."""
    images = torch.randint(0, 256, (6, 1, 12, 12), dtype=torch.uint8)
    domain = SimpleNamespace(train_x=images, train_y=torch.arange(6))

    def draw(rotate_scale_on: str):
        train = TrainConfig(steps=1, augment_shift=1, augment_rotate=30.0, augment_scale=0.2,
                            augment_rotate_scale_on=rotate_scale_on)
        sampler = SimpleNamespace(generator=torch.Generator().manual_seed(3), next=lambda: (torch.arange(6),) * 2)
        return batch_drawer(SimpleNamespace(sampler=sampler), domain, domain, train)()

    # Replay the drawer's random draws in its order: primary shift + rotate/scale, then auxiliary shift only.
    g = torch.Generator().manual_seed(3)
    primary = random_rotate_scale(to_float(random_shift(images, 1, g)), 30.0, 0.2, g)
    auxiliary = to_float(random_shift(images, 1, g))
    only_primary, both = draw("primary"), draw("both")
    assert torch.equal(only_primary.x, primary) and torch.equal(only_primary.x_aux, auxiliary)
    assert torch.equal(both.x, primary) and not torch.equal(both.x_aux, auxiliary)
