"""The `imagefolder` dataset: PNG/JPEG files in one folder per class, resized on load."""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator

from jadekit.data.base import DatasetInfo, ImageSet, Split
from jadekit.errors import DataError

EXTENSIONS = frozenset({".png", ".jpg", ".jpeg"})


class ImageFolderParams(BaseModel):
    """The recipe's `params` table: where the tree is, its classes, and the size to load at."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(description="The tree's folder: absolute, or relative to the data root.")
    classes: list[str] = Field(min_length=2, description="Class folder names, in label order.")
    size: tuple[PositiveInt, PositiveInt] = Field((32, 32), description="[H, W] every image is resized to.")
    channels: Literal[1, 3] = Field(3, description="1 = convert to grey, 3 = convert to RGB.")
    test_share: float | None = Field(
        None, gt=0.0, lt=1.0,
        description="Unset: the tree has train/ and test/ subfolders. Set: split each class folder, seeded.",
    )
    split_seed: int = Field(0, description="Seed of the split when test_share is set.")
    max_value: PositiveInt | None = Field(
        None,
        description="16/32-bit grey images: the value shown as 255 (e.g. 4095 for 12-bit data, 65535 for full "
        "16-bit); a pixel above it (or below 0) is an error. Unset: each image is scaled by its own maximum.",
    )

    group_pattern: str | None = Field(
        None,
        description="Regular expression searched in each file name; its first capture group (or the whole "
        "match) names the image's group, e.g. a patient: `^(patient\\d+)_`. Groups are never split. Empty: no "
        "groups (e.g. `jadekit eval --param group_pattern=''` for a cohort without patient ids in its file names).",
    )

    @field_validator("group_pattern")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if not v:  # "" unsets an inherited pattern (a --param cannot write None)
            return None
        try:
            re.compile(v)
        except re.error as e:
            raise ValueError(f"group_pattern `{v}` is not a valid regular expression: {e}") from None
        return v

    @field_validator("classes")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v) or any(not c or "/" in c for c in v):
            raise ValueError("classes must be distinct folder names")
        return v


class ImageFolder:
    """Images under `<path>/<class>/` (seeded split) or `<path>/{train,test}/<class>/`.

    Any size, grey or colour; converted to `channels` and resized to `size` with a bilinear
    filter. Files are read in sorted order, so loads are deterministic; hidden files and
    folders (names starting with ".", e.g. `.ipynb_checkpoints`) are ignored.

    16-bit and 32-bit integer grey images (PIL modes "I;16*" and "I", e.g. X-rays), and 16-bit
    colour PNGs (RGB, RGBA, grey + alpha; alpha dropped), are scaled to 0-255, never clipped:
    value * 255 / `max_value`, or, with `max_value` unset, value * 255 / the image's own maximum
    (0 stays 0; an image with negative values maps its minimum to 0 instead). 8-bit images are converted unchanged.

    With `group_pattern`, each image's group (e.g. a patient) is read from its file name and
    returned as `ImageSet.groups`: an int64 id hashed from the group's name, so one name has
    the same id in both splits and in every run. `test_share` then splits whole groups, and in
    the train/test layout a group found in both folders is an error.
    """

    Params: ClassVar[type[BaseModel]] = ImageFolderParams

    def info(self, params: ImageFolderParams) -> DatasetInfo:
        """Classes and shape come from the params (no file is read)."""
        return DatasetInfo(class_names=tuple(params.classes), image_shape=(params.channels, *params.size))

    def load(self, root: Path, split: Split, params: ImageFolderParams, download: bool) -> ImageSet:
        """Read one split.

        Raises:
            DataError: the folders do not match the params, hold no image, or an image is unreadable.
        """
        base = Path(root) / params.path  # an absolute `path` replaces the root
        files, labels = _split_files(base, split, params)
        groups = None
        if params.group_pattern is not None:
            names = _group_names([files], params.group_pattern)
            groups = torch.tensor([group_id(names[f]) for f in files], dtype=torch.int64)
        images = np.stack([_read(f, params) for f in files])
        return ImageSet(
            images=torch.from_numpy(images),
            labels=torch.tensor(labels, dtype=torch.int64),
            class_names=tuple(params.classes),
            files=tuple(files),
            groups=groups,
        )


def group_id(name: str) -> int:
    """A group name's int64 id: stable across splits, runs and machines (a hash, not an index)."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big") >> 1  # non-negative


def _group_name(path: Path, pattern: str) -> str | None:
    """The group named by `pattern` in a file's name: its first capture group, else the whole match (None: no group)."""
    m = re.search(pattern, path.name)
    return (m.group(1) if m.re.groups else m.group(0)) or None if m is not None else None


def _group_names(per_class: list[list[Path]], pattern: str) -> dict[Path, str]:
    """Every file's group; files whose names the pattern finds no group in are one error naming the first few."""
    names = {f: _group_name(f, pattern) for found in per_class for f in found}
    bad = [f for f, name in names.items() if name is None]
    if bad:
        shown = ", ".join(str(f) for f in bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise DataError(f"imagefolder: group_pattern `{pattern}` does not match (or matches with an empty group) "
                        f"the file name of {len(bad)} of {len(names)} files: {shown}",
                        hint="rename the files so that the pattern finds their group (e.g. patient), move them out "
                             "of the tree, or fix `group_pattern` (it is searched in the file name only).")
    return names  # type: ignore[return-value]


def _class_files(folder: Path, classes: list[str]) -> list[list[Path]]:
    """Image files of each class folder, sorted; every class folder must exist and hold one."""
    if not folder.is_dir():
        raise DataError(f"imagefolder: {folder} is not a folder", hint="fix `path` in the params, or the data root.")
    extra = sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name not in classes and not _hidden(p))
    if extra:
        by_case = {c.casefold(): c for c in classes}
        near = [f"'{e}' for '{by_case[e.casefold()]}'" for e in extra if e.casefold() in by_case]
        raise DataError(f"imagefolder: {folder} has folders not in `classes`: {extra}"
                        + (f" (differing only in case: {', '.join(near)})" if near else ""),
                        hint="rename those folders to the class names (names are case-sensitive, and a trained run's "
                             "classes must match in name and order)" if near else
                             "add them to `classes`, or move them out of the tree.")
    out = []
    for c in classes:
        d = folder / c
        found = sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS and not _hidden(p)) \
            if d.is_dir() else []
        if not found:
            raise DataError(f"imagefolder: no PNG/JPEG image in {d}", hint="each class needs a folder with images.")
        out.append(found)
    return out


def _hidden(path: Path) -> bool:
    """A hidden entry (`.ipynb_checkpoints`, macOS `._x.png`), skipped when listing classes and files."""
    return path.name.startswith(".")


def _split_files(base: Path, split: Split, params: ImageFolderParams) -> tuple[list[Path], list[int]]:
    if not base.is_dir():
        raise DataError(f"imagefolder: {base} is not a folder", hint="fix `path` in the params, or the data root.")
    has_split_folders = (base / "train").is_dir() and (base / "test").is_dir()
    if params.test_share is None:
        if not has_split_folders:
            raise DataError(f"imagefolder: {base} has no train/ and test/ subfolders",
                            hint="add them, or set `test_share` to split the class folders.")
        per_class = _class_files(base / split, params.classes)
        if params.group_pattern is not None:
            _check_no_shared_group(base, split, per_class, params)
    elif has_split_folders:
        raise DataError(f"imagefolder: {base} has train/ and test/ subfolders but `test_share` is set",
                        hint="unset `test_share` to use the subfolders.")
    elif params.group_pattern is not None:
        per_class = _grouped_split(_class_files(base, params.classes), split, params)
    else:
        per_class = []
        for c, found in enumerate(_class_files(base, params.classes)):
            # One generator per class, so adding images to one class leaves the others' split unchanged.
            order = np.random.default_rng([params.split_seed, c]).permutation(len(found))
            n_test = min(max(1, round(len(found) * params.test_share)), len(found) - 1) if len(found) > 1 else 0
            picked = order[:n_test] if split == "test" else order[n_test:]
            per_class.append([found[i] for i in sorted(picked)])
    files = [f for found in per_class for f in found]
    labels = [c for c, found in enumerate(per_class) for _ in found]
    if not files:
        raise DataError(f"imagefolder: the {split} split of {base} is empty",
                        hint="add images (with `group_pattern`: more groups), or change `test_share`.")
    return files, labels


def _check_no_shared_group(base: Path, split: Split, per_class: list[list[Path]], params: ImageFolderParams) -> None:
    """train/ and test/ layout: no group may have images in both folders (only names are read)."""
    pattern = params.group_pattern
    assert pattern is not None
    other = "test" if split == "train" else "train"
    mine = set(_group_names(per_class, pattern).values())
    theirs = set(_group_names(_class_files(base / other, params.classes), pattern).values())
    shared = sorted(mine & theirs)
    if shared:
        raise DataError(f"imagefolder: {len(shared)} group(s) have images in both {base / 'train'} and "
                        f"{base / 'test'}, e.g. {shared[:5]}",
                        hint="move each group's (patient's) images into one of the two folders, or fix "
                             "`group_pattern`.")


def _grouped_split(per_class: list[list[Path]], split: Split, params: ImageFolderParams) -> list[list[Path]]:
    """`test_share` of whole groups, seeded: each group goes to one side with all its images.

    Groups are stratified by their most common class (ties: the first in `classes`): of each
    class's groups, sorted by name and shuffled by one generator per class, `test_share`
    (rounded, at least one and never all when there are two or more) go to test.
    """
    pattern = params.group_pattern
    assert pattern is not None
    group_of = _group_names(per_class, pattern)
    counts: dict[str, Counter[int]] = {}
    for c, found in enumerate(per_class):
        for f in found:
            counts.setdefault(group_of[f], Counter())[c] += 1
    by_class: list[list[str]] = [[] for _ in per_class]
    for name in sorted(counts):
        n = counts[name]
        by_class[min(n, key=lambda c: (-n[c], c))].append(name)  # its most common class
    test_groups = set()
    for c, names in enumerate(by_class):
        order = np.random.default_rng([params.split_seed, c]).permutation(len(names))
        n_test = min(max(1, round(len(names) * params.test_share)), len(names) - 1) if len(names) > 1 else 0
        test_groups.update(names[i] for i in order[:n_test])
    return [[f for f in found if (group_of[f] in test_groups) == (split == "test")] for found in per_class]


HIGH_BIT_GREY = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})


def _read(path: Path, params: ImageFolderParams) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            arr = _to_array(img, params, path)
    except (OSError, UnidentifiedImageError) as e:
        raise DataError(f"imagefolder: cannot read {path}: {e}", hint="delete or replace the file.") from None
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1).copy()


def _to_array(img, params: ImageFolderParams, path: Path) -> np.ndarray:
    """An open PIL image as uint8 (H, W) or (H, W, 3), in `channels` and resized to `size`."""
    from PIL import Image

    h, w = params.size
    if _is_16_bit_colour(img):  # Pillow would keep only each value's high byte: decode with torchvision
        return _resized(_16_bit_colour(path, params), params)
    if img.mode not in HIGH_BIT_GREY:
        img = img.convert("L" if params.channels == 1 else "RGB")
        img = img.resize((w, h), Image.Resampling.BILINEAR)
        return np.asarray(img, dtype=np.uint8)
    return _resized(_scale_high_bit(np.asarray(img).astype(np.float64), params.max_value, path)[None], params)


def _is_16_bit_colour(img) -> bool:
    """A 16-bit PNG other than plain grey (RGB, RGBA, grey + alpha), which Pillow opens as 8-bit."""
    tile = getattr(img, "tile", None) or []
    raw = tile[0][3] if tile and len(tile[0]) > 3 else None
    raw = raw[0] if isinstance(raw, tuple) and raw else raw
    return img.format == "PNG" and img.mode not in HIGH_BIT_GREY and isinstance(raw, str) and ";16" in raw


def _16_bit_colour(path: Path, params: ImageFolderParams) -> np.ndarray:
    """A 16-bit colour (or grey + alpha) PNG as float32 0-255 (C, H, W), C = 1 or 3, alpha dropped, scaled as 16-bit
    grey is (`max_value`, else the image's own maximum)."""
    from torchvision.io import ImageReadMode, decode_image

    try:
        decoded = decode_image(str(path), mode=ImageReadMode.UNCHANGED)
    except RuntimeError as e:  # torchvision's decoders raise RuntimeError for a damaged file
        raise DataError(f"imagefolder: cannot read {path}: {str(e).splitlines()[0]}", hint="delete or replace the file.") from None
    values = decoded.to(torch.int32).numpy().astype(np.float64)
    if values.shape[0] in (2, 4):
        values = values[:-1]
    scaled = _scale_high_bit(values, params.max_value, path)
    if params.channels == 1 and scaled.shape[0] == 3:  # ITU-R 601-2 luma, as Pillow's convert("L")
        scaled = (0.299 * scaled[0] + 0.587 * scaled[1] + 0.114 * scaled[2])[None].astype(np.float32)
    return scaled


def _resized(planes: np.ndarray, params: ImageFolderParams) -> np.ndarray:
    """Float 0-255 planes (C, H, W), C = 1 or 3, resized bilinearly to `size` as uint8 (H, W) or (H, W, 3)."""
    from PIL import Image

    h, w = params.size
    out = [np.asarray(Image.fromarray(plane, "F").resize((w, h), Image.Resampling.BILINEAR)) for plane in planes]
    arr = np.clip(np.rint(np.stack(out, axis=-1)), 0, 255).astype(np.uint8)  # bilinear stays within 0-255
    if params.channels == 1:
        return arr[..., 0]
    return arr if arr.shape[-1] == 3 else np.repeat(arr, 3, axis=2)


def _scale_high_bit(values: np.ndarray, max_value: int | None, path: Path) -> np.ndarray:
    """16/32-bit grey values scaled to float32 0-255 (see `ImageFolder`); out-of-range values are an error."""
    lo, hi = float(values.min()), float(values.max())
    if max_value is not None:
        if lo < 0 or hi > max_value:
            raise DataError(f"imagefolder: {path} holds values {lo:g} to {hi:g}, outside 0 to max_value = {max_value}",
                            hint=f"raise `max_value` to at least {hi:g} (65535 for full 16-bit), or unset it to "
                                 "scale each image by its own maximum.")
        lo, hi = 0.0, float(max_value)
    else:
        lo = min(lo, 0.0)
    return ((values - lo) * (255.0 / max(hi - lo, 1e-12))).astype(np.float32)
