"""The imagefolder adapter on tiny generated PNG/JPEG trees, checked with jadekit.testing."""

from pathlib import Path

import numpy as np
import pytest
import torch
from jadekit_imagefolder.adapter import ImageFolder, ImageFolderParams
from PIL import Image

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


def test_an_empty_group_pattern_means_no_groups():
    """How `jadekit eval --param group_pattern=''` unsets the pattern a run's recipe carries, for a cohort without ids."""
    assert ImageFolderParams(path="x", classes=CLASSES, group_pattern="").group_pattern is None


def test_class_folders_differing_in_case_are_named(flat_tree):
    (flat_tree / "pets" / "cat").rename(flat_tree / "pets" / "Cat")
    with pytest.raises(DataError, match="differing only in case: 'Cat' for 'cat'") as err:
        ImageFolder().load(flat_tree, "train", ImageFolderParams(path="pets", classes=CLASSES, test_share=0.25), False)
    assert "rename those folders" in err.value.hint


def test_no_split_folders_without_test_share(flat_tree):
    with pytest.raises(DataError, match="no train/ and test/"):
        ImageFolder().load(flat_tree, "train", ImageFolderParams(path="pets", classes=CLASSES), False)


# --- 16-bit grey images (X-rays), hidden entries ---------------------------------------------


def _xray_tree(root: Path, top: int = 4000) -> np.ndarray:
    """A train/test tree whose images are 16-bit grey PNGs with values 0 to `top` - 1."""
    ramp = (np.arange(40 * 100) * top // (40 * 100)).reshape(40, 100).astype(np.uint16)
    for split in ("train", "test"):
        for c in CLASSES:
            (root / "xray" / split / c).mkdir(parents=True)
            Image.fromarray(ramp).save(root / "xray" / split / c / "a.png")
    return ramp


@pytest.mark.parametrize("channels", [1, 3])
def test_16_bit_grey_is_scaled_not_clipped(tmp_path, channels):
    ramp = _xray_tree(tmp_path)
    with Image.open(tmp_path / "xray" / "train" / "cat" / "a.png") as img:
        assert img.mode.startswith("I;16")  # the file really is 16-bit
    params = ImageFolderParams(path="xray", classes=CLASSES, size=(40, 100), channels=channels)
    x = ImageFolder().load(tmp_path, "train", params, False).images[0].numpy()
    assert x.shape == (channels, 40, 100)
    expected = np.rint(ramp * 255.0 / ramp.max())  # scaled by the image's own maximum
    assert np.abs(x.astype(float) - expected).max() <= 1
    assert (x == 255).mean() < 0.01 and x.min() == 0 and x.max() == 255  # not 90 % white
    fixed = ImageFolder().load(tmp_path, "train", params.model_copy(update={"max_value": 65535}), False)
    assert int(fixed.images.max()) == round(3999 * 255 / 65535)
    assert_dataset(ImageFolder(), root=tmp_path, params=params)


def test_16_bit_values_above_max_value_are_an_error(tmp_path):
    _xray_tree(tmp_path)
    params = ImageFolderParams(path="xray", classes=CLASSES, size=(8, 8), channels=1, max_value=1000)
    with pytest.raises(DataError, match="outside 0 to max_value = 1000") as err:
        ImageFolder().load(tmp_path, "train", params, False)
    assert "a.png" in err.value.message and "3999" in err.value.hint


def _png16(path: Path, values: np.ndarray, color_type: int) -> None:
    """A 16-bit PNG written by hand (Pillow writes none in colour): 2 = RGB (H, W, 3), 4 = grey + alpha (H, W, 2)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    h, w = values.shape[:2]
    rows = b"".join(b"\x00" + values[y].astype(">u2").tobytes() for y in range(h))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


@pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities of TorchVision are deprecated")
def test_16_bit_colour_is_scaled_not_cut_to_its_high_byte(tmp_path):
    """Pillow opens 16-bit RGB as 8-bit RGB holding each value's high byte (12-bit data: 0-15 of 255, nearly black)."""
    from jadekit_imagefolder.adapter import _read

    rgb = np.zeros((4, 6, 3), dtype=np.uint16)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 4095, 2048, 0  # 12-bit values
    _png16(tmp_path / "rgb.png", rgb, 2)
    with Image.open(tmp_path / "rgb.png") as img:
        assert img.mode == "RGB" and np.asarray(img).max() == 15  # what Pillow alone would give
    colour = ImageFolderParams(path="x", classes=CLASSES, size=(4, 6), channels=3)
    x = _read(tmp_path / "rgb.png", colour)
    assert x.shape == (3, 4, 6) and x[0].min() == 255 and np.abs(x[1].astype(int) - 128).max() <= 1 and x[2].max() == 0
    assert _read(tmp_path / "rgb.png", colour.model_copy(update={"max_value": 65535}))[0].max() == round(4095 * 255 / 65535)
    grey = _read(tmp_path / "rgb.png", colour.model_copy(update={"channels": 1}))
    assert grey.shape == (1, 4, 6) and abs(int(grey[0, 0, 0]) - round(0.299 * 255 + 0.587 * 255 * 2048 / 4095)) <= 1
    la = np.stack([np.full((4, 6), 1000), np.full((4, 6), 65535)], axis=-1).astype(np.uint16)  # grey + opaque alpha
    _png16(tmp_path / "la.png", la, 4)
    assert (_read(tmp_path / "la.png", colour.model_copy(update={"channels": 1})) == 255).all()  # its own maximum
    assert (_read(tmp_path / "la.png", colour.model_copy(update={"max_value": 4000})) == round(1000 * 255 / 4000)).all()
    (tmp_path / "cut.png").write_bytes((tmp_path / "rgb.png").read_bytes()[:-30])  # damaged: one clear DataError
    with pytest.raises(DataError, match=f"cannot read {tmp_path / 'cut.png'}"):
        _read(tmp_path / "cut.png", colour)


def test_32_bit_integer_grey_is_scaled():
    from jadekit_imagefolder.adapter import _to_array

    values = np.array([[-100, 0], [50_000, 100_000]], dtype=np.int32)
    params = ImageFolderParams(path="x", classes=CLASSES, size=(2, 2), channels=1)
    out = _to_array(Image.fromarray(values, "I"), params, Path("x.png"))
    assert out.dtype == np.uint8 and out.tolist() == [[0, 0], [128, 255]]  # minimum -100 maps to 0


@pytest.mark.parametrize(("tree", "base", "test_share", "n_train"), [("split_tree", "pets/train", None, 8),
                                                                     ("flat_tree", "pets", 0.25, 8)])
def test_hidden_entries_are_ignored(request, tree, base, test_share, n_train):
    root = request.getfixturevalue(tree)
    (root / base / ".ipynb_checkpoints" / "cat").mkdir(parents=True)
    (root / base / "cat" / "._0.png").write_bytes(b"macOS metadata, not a png")
    (root / base / "cat" / ".ipynb_checkpoints").mkdir()
    params = ImageFolderParams(path="pets", classes=CLASSES, test_share=test_share)
    train = ImageFolder().load(root, "train", params, False)
    assert len(train) == n_train and not any(f.name.startswith(".") for f in train.files)


# --- groups (patients) from file names ---------------------------------------------------------


def _patient_tree(folder: Path, patients: dict[str, dict[str, int]]) -> None:
    """`patients[name][cls]` grey PNGs named `<name>_slice<i>.png` in each class folder."""
    rng = np.random.default_rng(0)
    for c in CLASSES:
        (folder / c).mkdir(parents=True, exist_ok=True)
    for name, per_class in patients.items():
        for c, n in per_class.items():
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (6, 6), dtype=np.uint8), "L").save(folder / c / f"{name}_slice{i}.png")


# 12 patients; some have images in both classes (e.g. a normal and a diseased slice)
PATIENTS = {f"patient{i:03d}": ({"cat": 2 + i % 3} if i % 2 else {"dog": 1 + i % 2}) | ({"dog": 1} if i % 4 == 1 else {})
            for i in range(12)}
PATTERN = r"^(patient\d+)_"


def _names(data) -> list[str]:
    return [f.name.split("_")[0] for f in data.files]


def test_groups_from_file_names_are_stable_ids(tmp_path):
    from jadekit_imagefolder.adapter import group_id

    _patient_tree(tmp_path / "scans" / "train", {k: v for k, v in PATIENTS.items() if k < "patient008"})
    _patient_tree(tmp_path / "scans" / "test", {k: v for k, v in PATIENTS.items() if k >= "patient008"})
    params = ImageFolderParams(path="scans", classes=CLASSES, size=(6, 6), channels=1, group_pattern=PATTERN)
    assert_dataset(ImageFolder(), root=tmp_path, params=params)
    for split in ("train", "test"):
        data = ImageFolder().load(tmp_path, split, params, False)
        assert data.groups is not None and data.groups.dtype == torch.int64 and len(data.groups) == len(data)
        assert data.groups.tolist() == [group_id(n) for n in _names(data)]  # same name, same id, in any split
        assert all(0 <= g < 2**63 for g in data.groups.tolist())
    assert len(set(ImageFolder().load(tmp_path, "train", params, False).groups.tolist())) == 8
    # no capture group: the whole match names the group
    whole = ImageFolder().load(tmp_path, "train", params.model_copy(update={"group_pattern": r"patient\d+"}), False)
    assert whole.groups.tolist() == [group_id(n) for n in _names(whole)]
    # without group_pattern, no groups
    assert ImageFolder().load(tmp_path, "train", params.model_copy(update={"group_pattern": None}), False).groups is None


def test_test_share_keeps_groups_whole(tmp_path):
    _patient_tree(tmp_path / "scans", PATIENTS)
    params = ImageFolderParams(path="scans", classes=CLASSES, size=(6, 6), channels=1, test_share=0.25,
                               group_pattern=PATTERN)
    assert_dataset(ImageFolder(), root=tmp_path, params=params)
    train = ImageFolder().load(tmp_path, "train", params, False)
    test = ImageFolder().load(tmp_path, "test", params, False)
    assert not set(train.groups.tolist()) & set(test.groups.tolist())
    assert not set(_names(train)) & set(_names(test))
    assert len(train) + len(test) == sum(sum(v.values()) for v in PATIENTS.values())  # every image, once
    assert set(test.labels.tolist()) == {0, 1} and set(train.labels.tolist()) == {0, 1}  # stratified by class
    assert len(set(_names(test))) == 4  # round(6 * 0.25) = 2 of each class's 6 groups (by majority class)
    seeds = {frozenset(_names(ImageFolder().load(tmp_path, "test", params.model_copy(update={"split_seed": s}),
                                                 False))) for s in range(4)}
    assert len(seeds) > 1  # the seed changes which patients are held out


def test_patient_in_both_train_and_test_folders_is_an_error(tmp_path):
    _patient_tree(tmp_path / "scans" / "train", {"patient001": {"cat": 1}, "patient002": {"dog": 1}})
    _patient_tree(tmp_path / "scans" / "test", {"patient002": {"cat": 1}, "patient003": {"dog": 1}})
    params = ImageFolderParams(path="scans", classes=CLASSES, size=(6, 6), group_pattern=PATTERN)
    for split in ("train", "test"):
        with pytest.raises(DataError, match=r"both .*'patient002'"):
            ImageFolder().load(tmp_path, split, params, False)


@pytest.mark.parametrize("test_share", [None, 0.5])
def test_file_not_matching_group_pattern_is_an_error(tmp_path, test_share):
    folder = tmp_path / "scans" / ("train" if test_share is None else "")
    _patient_tree(folder, {"patient001": {"cat": 2}, "patient002": {"dog": 2}})
    if test_share is None:
        _patient_tree(tmp_path / "scans" / "test", {"patient003": {"cat": 1, "dog": 1}})
    for name in ("scan7.png", "scan8.png", "cat/scan9.png"):  # every unmatched file at once, not one per run
        Image.fromarray(np.zeros((4, 4), dtype=np.uint8), "L").save(folder / ("dog" if "/" not in name else "") / name)
    params = ImageFolderParams(path="scans", classes=CLASSES, test_share=test_share, group_pattern=PATTERN)
    with pytest.raises(DataError, match="does not match") as err:
        ImageFolder().load(tmp_path, "train", params, False)
    assert "the file name of 3 of 7 files" in err.value.message and PATTERN in err.value.message
    assert all(n in err.value.message for n in ("scan7.png", "scan8.png", "scan9.png"))
    assert "rename" in err.value.hint and "group_pattern" in err.value.hint


@pytest.mark.parametrize("pattern", [r"^(patient\d+_", "[", r"(?P<x>a)(?P<x>b)"])
def test_bad_group_pattern_is_a_validation_error(pattern):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="not a valid regular expression"):
        ImageFolderParams(path="scans", classes=CLASSES, group_pattern=pattern)
