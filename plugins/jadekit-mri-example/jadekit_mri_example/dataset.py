"""The `mri-slices` dataset: 2-D slices of 3-D volumes, one volume per patient, split by patient."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator
from torch.nn import functional as F

from jadekit.data.base import DatasetInfo, ImageSet, Split
from jadekit.errors import DataError

SUFFIXES = (".npy", ".npz", ".nii", ".nii.gz")


class MRIParams(BaseModel):
    """The recipe's `params` table for `mri-slices`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(description="Folder of the cohort: absolute, or relative to the data root.")
    classes: list[str] = Field(min_length=2, description="Class folder names (patient-level labels), in label order.")
    size: PositiveInt = Field(64, description="Slices are resized to size x size.")
    axis: int = Field(2, ge=0, le=2, description="Volume axis the slices are taken along.")
    central: float = Field(0.5, gt=0.0, le=1.0, description="Share of slices kept, centred on the middle slice.")
    test_share: float = Field(0.25, gt=0.0, lt=1.0, description="Share of each class's patients held out for test.")
    split_seed: int = Field(0, description="Seed of the patient-level split.")

    @field_validator("classes")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("classes must be distinct")
        return v


class MRISlices:
    """Volumes at `<path>/<class>/<patient>.{npy,npz,nii,nii.gz}` (npz: array `volume`).

    Every kept slice of a patient's volume becomes one image labelled with the patient's
    class; `groups` holds the patient's index among all patients of the cohort, and the
    train/test split is drawn over patients, so no patient is in both. Intensities are
    clipped to the 1st-99th percentiles of each volume's kept (central) slices and scaled to 0-255.
    """

    Params: ClassVar[type[BaseModel]] = MRIParams

    def info(self, params: MRIParams) -> DatasetInfo:
        """Classes and shape from the params (no file is read)."""
        return DatasetInfo(class_names=tuple(params.classes), image_shape=(1, params.size, params.size))

    def load(self, root: Path, split: Split, params: MRIParams, download: bool) -> ImageSet:
        """Read the slices of the split's patients.

        Raises:
            DataError: folders or volumes are missing or unreadable, or a class has under 2 patients.
        """
        patients = _patients(Path(root) / params.path, params.classes)
        chosen = _split(patients, params, split)
        images, labels, groups = [], [], []
        for index in chosen:
            path, label = patients[index]
            slices = _slices(read_volume(path), params)
            images.append(slices)
            labels += [label] * len(slices)
            groups += [index] * len(slices)
        return ImageSet(
            images=torch.cat(images),
            labels=torch.tensor(labels, dtype=torch.int64),
            class_names=tuple(params.classes),
            files=tuple(patients[i][0] for i in chosen),
            groups=torch.tensor(groups, dtype=torch.int64),
        )


def _patients(base: Path, classes: list[str]) -> list[tuple[Path, int]]:
    """Every (volume file, label) of the cohort, sorted by class then file name."""
    if not base.is_dir():
        raise DataError(f"mri-slices: {base} is not a folder", hint="fix `path` in the params, or the data root.")
    out = []
    for label, c in enumerate(classes):
        folder = base / c
        files = sorted(p for p in folder.iterdir() if p.name.endswith(SUFFIXES)) if folder.is_dir() else []
        if len(files) < 2:
            raise DataError(f"mri-slices: {folder} holds {len(files)} volume(s); each class needs at least 2 patients",
                            hint=f"put one file per patient there ({', '.join(SUFFIXES)}).")
        out += [(f, label) for f in files]
    return out


def _split(patients: list[tuple[Path, int]], params: MRIParams, split: Split) -> list[int]:
    """Indices of the split's patients: a seeded share of each class goes to test."""
    chosen = []
    labels = np.array([label for _, label in patients])
    for c in range(len(params.classes)):
        members = np.flatnonzero(labels == c)
        order = np.random.default_rng([params.split_seed, c]).permutation(members)
        n_test = min(max(1, round(len(members) * params.test_share)), len(members) - 1)
        chosen += sorted((order[:n_test] if split == "test" else order[n_test:]).tolist())
    return chosen


def read_volume(path: Path) -> np.ndarray:
    """A 3-D float array from .npy, .npz (array `volume`), or NIfTI (needs nibabel)."""
    try:
        if path.name.endswith((".nii", ".nii.gz")):
            try:
                import nibabel
            except ImportError:
                raise DataError(f"mri-slices: reading {path} needs nibabel",
                                hint="pip install 'nibabel>=5' (the plugin's `nifti` extra; from a jadekit checkout: "
                                     "pip install -e 'plugins/jadekit-mri-example[nifti]')") from None
            volume = np.asarray(nibabel.load(path).get_fdata(), dtype=np.float32)
        elif path.suffix == ".npz":
            with np.load(path) as f:
                volume = f["volume"]
        else:
            volume = np.load(path)
    except DataError:
        raise
    except (OSError, KeyError, ValueError, EOFError) as e:
        raise DataError(f"mri-slices: cannot read {path}: {e}", hint="replace the file (npz files need an array `volume`).") from None
    if not isinstance(volume, np.ndarray) or volume.ndim != 3:
        raise DataError(f"mri-slices: {path} holds {getattr(volume, 'shape', type(volume).__name__)}; expected a 3-D volume")
    return volume.astype(np.float32, copy=False)


def _slices(volume: np.ndarray, params: MRIParams) -> torch.Tensor:
    """The central slices along `axis`, windowed to uint8 and resized: (n, 1, size, size)."""
    v = np.moveaxis(volume, params.axis, 0)
    keep = max(1, round(len(v) * params.central))
    start = (len(v) - keep) // 2
    v = v[start : start + keep]
    lo, hi = np.percentile(v, [1, 99])
    scaled = np.clip((v - lo) / max(hi - lo, 1e-6), 0, 1) * 255
    x = torch.from_numpy(scaled.astype(np.float32))[:, None]
    x = F.interpolate(x, size=(params.size, params.size), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8)
