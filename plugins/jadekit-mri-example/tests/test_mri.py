"""mri-slices and mri-cnn64 on small synthetic volumes, checked with jadekit.testing."""

import importlib.util

import numpy as np
import pytest
import torch
from jadekit_mri_example.backbone import MRICNN64
from jadekit_mri_example.dataset import MRIParams, MRISlices
from jadekit_mri_example.synthetic import CLASSES, write_cohort

from jadekit.errors import DataError
from jadekit.testing import assert_backbone, assert_dataset, check_dataset

SMALL = (16, 16, 6)


def _params(**kw):
    return MRIParams(**{"path": "cohort", "classes": list(CLASSES), "size": 32, **kw})


@pytest.mark.parametrize("fmt", ["npz", "npy"])
def test_dataset_conforms(tmp_path, fmt):
    write_cohort(tmp_path / "cohort", 4, shape=SMALL, fmt=fmt)
    assert_dataset(MRISlices(), root=tmp_path, params=_params())


def test_patient_level_split(tmp_path):
    write_cohort(tmp_path / "cohort", 5, shape=SMALL)
    p = _params(central=1.0, test_share=0.4)
    train, test = (MRISlices().load(tmp_path, s, p, False) for s in ("train", "test"))
    assert not set(train.groups.tolist()) & set(test.groups.tolist())
    assert len(set(test.groups.tolist())) == 4  # 2 of 5 patients per class
    assert len(test) == 4 * SMALL[2] and train.images.shape[1:] == (1, 32, 32)
    for g in set(train.groups.tolist()):  # a patient's slices share its label
        assert len(set(train.labels[train.groups == g].tolist())) == 1
    other = MRISlices().load(tmp_path, "test", p.model_copy(update={"split_seed": 1}), False)
    assert set(other.groups.tolist()) != set(test.groups.tolist())


def test_conformance_catches_a_leaky_split(tmp_path, monkeypatch):
    write_cohort(tmp_path / "cohort", 3, shape=SMALL)
    import jadekit_mri_example.dataset as ds

    monkeypatch.setattr(ds, "_split", lambda patients, params, split: list(range(len(patients))))
    problems = check_dataset(MRISlices(), root=tmp_path, params=_params())
    assert any("both train and test" in p for p in problems)


@pytest.mark.skipif(importlib.util.find_spec("nibabel") is None, reason="nibabel (the nifti extra) not installed")
def test_nifti(tmp_path):
    write_cohort(tmp_path / "cohort", 3, shape=SMALL, fmt="nii.gz")
    assert_dataset(MRISlices(), root=tmp_path, params=_params(), determinism=False)


def test_errors(tmp_path):
    with pytest.raises(DataError, match="is not a folder"):
        MRISlices().load(tmp_path, "train", _params(), False)
    write_cohort(tmp_path / "cohort", 1, shape=SMALL)
    with pytest.raises(DataError, match="at least 2 patients"):
        MRISlices().load(tmp_path, "train", _params(), False)
    (tmp_path / "cohort" / "healthy" / "patient-0000.npz").unlink()
    for name in ("a.npy", "b.npy"):  # every healthy patient is 2-D: both splits read one
        np.save(tmp_path / "cohort" / "healthy" / name, np.zeros((4, 4)))
    np.save(tmp_path / "cohort" / "lesion" / "extra.npy", np.zeros((4, 4, 4)))
    with pytest.raises(DataError, match="expected a 3-D volume"):
        MRISlices().load(tmp_path, "train", _params(), False)


def test_backbone_conforms():
    assert_backbone(MRICNN64(), {"width": 4}, shapes=[(1, 64, 64), (2, 32, 16), (1, 28, 28)])
    enc = MRICNN64().encoder((1, 64, 64), 10, MRICNN64.Params())
    assert enc(torch.rand(2, 1, 64, 64)).shape == (2, 10)


def test_backbone_refuses_odd_sizes():
    with pytest.raises(DataError, match="divisible by 8"):
        MRICNN64().encoder((1, 30, 30), 4, MRICNN64.Params())
