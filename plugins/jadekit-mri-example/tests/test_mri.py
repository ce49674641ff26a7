"""mri-slices and mri-cnn64 on small synthetic volumes, checked with jadekit.testing."""

import importlib.util

import numpy as np
import pytest
import torch
from jadekit_mri_example.backbone import MRICNN64
from jadekit_mri_example.dataset import MRIParams, MRISlices, read_volume
from jadekit_mri_example.synthetic import CLASSES, write_cohort

from jadekit.data.splits import stratified_subset, train_val_split
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


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_labelled_and_validation_draws_keep_patients_whole(tmp_path, seed):
    """With the slices' patient groups, train, validation and test share no patient."""
    write_cohort(tmp_path / "cohort", 6, shape=SMALL)
    p = _params(central=1.0)
    train, test = (MRISlices().load(tmp_path, s, p, False) for s in ("train", "test"))
    g = torch.Generator().manual_seed(seed)
    picked = stratified_subset(train.labels, 10, None, g, train.class_names, groups=train.groups)
    tr, va = train_val_split(picked, train.labels, 0.2, g, groups=train.groups)
    patients = [set(train.groups[tr].tolist()), set(train.groups[va].tolist()), set(test.groups.tolist())]
    assert all(patients) and not (patients[0] & patients[1] or patients[0] & patients[2] or patients[1] & patients[2])
    for pid in patients[0] | patients[1]:  # each drawn patient brings all of its slices
        assert int((train.groups[picked] == pid).sum()) == int((train.groups == pid).sum()) == SMALL[2]
    assert torch.bincount(train.labels[picked]).tolist() == [12, 12]  # 2 patients of 6 slices reach 10


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


def test_nifti_hint_without_nibabel(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_nibabel(name, *args, **kwargs):
        if name == "nibabel":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_nibabel)
    (tmp_path / "x.nii.gz").write_bytes(b"")
    with pytest.raises(DataError, match="needs nibabel") as err:
        read_volume(tmp_path / "x.nii.gz")
    assert "pip install 'nibabel>=5'" in err.value.hint and "plugins/jadekit-mri-example[nifti]" in err.value.hint


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
