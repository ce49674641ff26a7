"""The imagefolder adapter on tiny generated PNG/JPEG trees, checked with jadekit.testing."""

from pathlib import Path

import pytest
from jadekit_imagefolder.adapter import ImageFolder, ImageFolderParams

from jadekit.errors import DataError
from jadekit.testing import assert_dataset

CLASSES = ["cat", "dog"]


@pytest.fixture
def split_tree(tmp_path, write_tree):
    write_tree(tmp_path / "pets" / "train", 4, 0)
    write_tree(tmp_path / "pets" / "test", 2, 1)
    return tmp_path


@pytest.fixture
def flat_tree(tmp_path, write_tree):
    write_tree(tmp_path / "pets", 6, 2)
    return tmp_path


@pytest.mark.parametrize("channels", [1, 3])
def test_split_folders_conform(split_tree, channels):
    params = {"path": "pets", "classes": CLASSES, "size": [12, 10], "channels": channels}
    assert_dataset(ImageFolder(), root=split_tree, params=params)
    data = ImageFolder().load(split_tree, "train", ImageFolderParams(**params), False)
    assert data.images.shape == (8, channels, 12, 10)
    assert data.labels.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]


def test_seeded_split_conforms_and_is_disjoint(flat_tree):
    params = ImageFolderParams(path="pets", classes=CLASSES, size=(8, 8), test_share=0.34, split_seed=3)
    assert_dataset(ImageFolder(), root=flat_tree, params=params)
    train = ImageFolder().load(flat_tree, "train", params, False)
    test = ImageFolder().load(flat_tree, "test", params, False)
    assert (len(train), len(test)) == (8, 4)
    assert not set(train.files) & set(test.files)
    other = ImageFolder().load(flat_tree, "test", params.model_copy(update={"split_seed": 4}), False)
    assert set(other.files) != set(test.files) or len(test) == 12


def test_absolute_path(split_tree):
    params = ImageFolderParams(path=str(split_tree / "pets"), classes=CLASSES)
    assert len(ImageFolder().load(Path("/nowhere"), "test", params, False)) == 4


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"classes": ["cat"]}, None),
        ({"classes": CLASSES + ["bird"]}, "no PNG/JPEG image"),
        ({"classes": ["cat"] + ["x"]}, "not in `classes`"),
        ({"classes": CLASSES, "test_share": 0.5}, "test_share` is set"),
        ({"classes": CLASSES, "path": "missing"}, "is not a folder"),
    ],
)
def test_errors(split_tree, params, match):
    if match is None:
        with pytest.raises(ValueError):
            ImageFolderParams(path="pets", **params)
        return
    with pytest.raises(DataError, match=match):
        ImageFolder().load(split_tree, "train", ImageFolderParams(**{"path": "pets", **params}), False)


def test_corrupt_image(split_tree):
    (split_tree / "pets" / "train" / "cat" / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot read"):
        ImageFolder().load(split_tree, "train", ImageFolderParams(path="pets", classes=CLASSES), False)


def test_no_split_folders_without_test_share(flat_tree):
    with pytest.raises(DataError, match="no train/ and test/"):
        ImageFolder().load(flat_tree, "train", ImageFolderParams(path="pets", classes=CLASSES), False)
