"""Random-shift augmentation: content moves intact, zeros fill in, seeded offsets repeat."""

import torch

from jadekit.engine.augment import random_shift


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
