"""Dataset adapters on tiny files written in the real formats, plus the real data when present."""

from __future__ import annotations

import bz2
import errno
import gzip
import os
import re
import shutil
import struct
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from filelock import FileLock

from jadekit.data import files
from jadekit.data.base import DIGITS, DatasetAdapter, NoParams
from jadekit.data.files import require_files
from jadekit.data.mnist import MNIST
from jadekit.data.svhn import SVHN
from jadekit.data.usps import USPS
from jadekit.errors import DataError

P = NoParams()
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MNIST_NAMES = {"train": "train", "test": "t10k"}


# --- writers for the real file formats -------------------------------------------------------


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> Path:
    """Write an unsigned-byte IDX file (big-endian dims after magic 0x0000080<ndim>)."""
    data = struct.pack(f">I{array.ndim}I", 0x0800 | array.ndim, *array.shape)
    data += array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def write_mnist(root: Path, split: str, n: int = 5, compress: bool = False, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    raw = root / "MNIST" / "raw"
    prefix = MNIST_NAMES[split]
    write_idx(raw / f"{prefix}-images-idx3-ubyte", images, compress)
    write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels, compress)
    return images, labels


def usps_text(labels: np.ndarray, grey: np.ndarray) -> bytes:
    """Dense libsvm lines `label 1:v1 ... 256:v256` with v = grey / 255 * 2 - 1, six decimals."""
    lines = []
    for label, row in zip(labels, grey.reshape(len(labels), -1), strict=True):
        pairs = [f"{i + 1}:{v / 255 * 2 - 1:.6f}" for i, v in enumerate(row)]
        lines.append(" ".join([str(label), *pairs]))
    return ("\n".join(lines) + "\n").encode()


def write_usps(root: Path, split: str, text: bytes) -> Path:
    path = root / "USPS" / ("usps.bz2" if split == "train" else "usps.t.bz2")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bz2.compress(text))
    return path


def write_svhn(root: Path, split: str, x: np.ndarray, y: np.ndarray) -> Path:
    path = root / "SVHN" / f"{split}_32x32.mat"
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {"X": x, "y": y})
    return path


def svhn_arrays(n: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
    y = np.array([[10], [1], [9], [10]][:n], dtype=np.uint8)
    return x, y


# --- contract --------------------------------------------------------------------------------


@pytest.mark.parametrize(("adapter", "shape"), [(MNIST(), (1, 28, 28)), (USPS(), (1, 16, 16)), (SVHN(), (3, 32, 32))])
def test_info_declares_digits_and_shape(adapter, shape):
    assert isinstance(adapter, DatasetAdapter)
    assert adapter.Params is NoParams
    info = adapter.info(P)
    assert info.class_names == DIGITS
    assert info.image_shape == shape


# --- MNIST -----------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize("split", ["train", "test"])
def test_mnist_round_trip(tmp_path, split, compress):
    images, labels = write_mnist(tmp_path, split, compress=compress)
    s = MNIST().load(tmp_path, split, P, download=False)
    assert s.images.dtype == torch.uint8 and s.images.shape == (5, 1, 28, 28)
    assert s.labels.dtype == torch.int64
    assert np.array_equal(s.images[:, 0].numpy(), images)
    assert np.array_equal(s.labels.numpy(), labels)
    assert s.class_names == DIGITS
    suffix = ".gz" if compress else ""
    raw = tmp_path / "MNIST" / "raw"
    prefix = MNIST_NAMES[split]
    assert s.files == (
        raw / f"{prefix}-images-idx3-ubyte{suffix}",
        raw / f"{prefix}-labels-idx1-ubyte{suffix}",
    )


def test_mnist_prefers_uncompressed_when_both_exist(tmp_path):
    images, _ = write_mnist(tmp_path, "test", seed=1)
    write_mnist(tmp_path, "test", compress=True, seed=2)
    s = MNIST().load(tmp_path, "test", P, download=False)
    assert np.array_equal(s.images[:, 0].numpy(), images)
    assert all(f.suffix != ".gz" for f in s.files)


def test_mnist_truncated_gz_names_file(tmp_path):
    write_mnist(tmp_path, "train", compress=True)
    path = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(DataError, match=re.escape("train-images-idx3-ubyte.gz")) as err:
        MNIST().load(tmp_path, "train", P, download=False)
    assert "download it again" in str(err.value)


def test_mnist_garbage_gz_names_file(tmp_path):
    write_mnist(tmp_path, "train", compress=True)
    path = tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte.gz"
    path.write_bytes(b"\x1f\x8b" + b"not really gzip" * 10)
    with pytest.raises(DataError, match=re.escape("train-labels-idx1-ubyte.gz")):
        MNIST().load(tmp_path, "train", P, download=False)


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda b: b"\x00\x00\x08\x01" + b[4:], "magic"),  # images file claiming to be 1-d
        (lambda b: b[:-7], "header announces"),
        (lambda b: b[:6], "magic|header"),
    ],
    ids=["magic", "truncated", "tiny"],
)
def test_mnist_bad_idx_names_file(tmp_path, damage, match):
    write_mnist(tmp_path, "test")
    path = tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(DataError, match=match) as err:
        MNIST().load(tmp_path, "test", P, download=False)
    assert str(path) in str(err.value)


def test_mnist_label_count_mismatch(tmp_path):
    write_mnist(tmp_path, "test", n=5)
    write_idx(tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte", np.zeros(4, np.uint8))
    with pytest.raises(DataError, match="4 labels for 5 images"):
        MNIST().load(tmp_path, "test", P, download=False)


# --- USPS ------------------------------------------------------------------------------------


def test_usps_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (6, 16, 16), dtype=np.uint8)
    labels = np.array([1, 10, 3, 10, 5, 7])
    path = write_usps(tmp_path, "train", usps_text(labels, grey))
    s = USPS().load(tmp_path, "train", P, download=False)
    assert s.images.dtype == torch.uint8 and s.images.shape == (6, 1, 16, 16)
    assert s.labels.dtype == torch.int64
    assert np.array_equal(s.images[:, 0].numpy(), grey)
    assert s.labels.tolist() == [0, 9, 2, 9, 4, 6]
    assert s.files == (path,)


def test_usps_sparse_lines(tmp_path):
    # libsvm leaves out zero entries (grey 128 here); order, blank lines and CRLF vary.
    text = b"4 3:1.0 1:-1\r\n\n10 256:1.000000\n  1\n" + usps_text(np.array([2]), np.zeros(256))
    write_usps(tmp_path, "test", text)
    s = USPS().load(tmp_path, "test", P, download=False)
    expected = np.full((4, 256), 128, np.uint8)
    expected[0, 0], expected[0, 2], expected[1, 255], expected[3] = 0, 255, 255, 0
    assert np.array_equal(s.images.reshape(4, 256).numpy(), expected)
    assert s.labels.tolist() == [3, 9, 0, 1]


def test_usps_clips_and_rounds(tmp_path):
    write_usps(tmp_path, "test", b"1 1:-1.5 2:1.2 3:0 4:-0.999 5:0.999\n")
    s = USPS().load(tmp_path, "test", P, download=False)
    assert s.images[0, 0, 0, :6].tolist() == [0, 255, 128, 0, 255, 128]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (b"", "no samples"),
        (b"1 1:0.5 2:abc\n", "abc"),
        (b"1 1:0.5 257:0.1\n", "indices"),
        (b"1 1:0.5 0.5\n", "label followed by"),
        (b"11 1:0.5\n", "1-10"),
    ],
    ids=["empty", "not-a-number", "index-range", "missing-colon", "label-range"],
)
def test_usps_bad_text_names_file(tmp_path, text, match):
    path = write_usps(tmp_path, "train", text)
    with pytest.raises(DataError, match=match) as err:
        USPS().load(tmp_path, "train", P, download=False)
    assert str(path) in str(err.value)


def test_usps_corrupt_bz2_names_file(tmp_path):
    path = write_usps(tmp_path, "train", b"1 1:0.5\n" * 100)
    path.write_bytes(path.read_bytes()[:30])
    with pytest.raises(DataError, match=re.escape("usps.bz2")) as err:
        USPS().load(tmp_path, "train", P, download=False)
    assert "download it again" in str(err.value)


# --- SVHN ------------------------------------------------------------------------------------


def test_svhn_round_trip_and_label_10_is_0(tmp_path):
    x, y = svhn_arrays()
    path = write_svhn(tmp_path, "train", x, y)
    s = SVHN().load(tmp_path, "train", P, download=False)
    assert s.images.dtype == torch.uint8 and s.images.shape == (4, 3, 32, 32)
    assert s.images.is_contiguous()
    assert s.labels.dtype == torch.int64 and s.labels.tolist() == [0, 1, 9, 0]
    n, c, h, w = 2, 1, 5, 30
    assert s.images[n, c, h, w] == x[h, w, c, n]
    assert np.array_equal(s.images.numpy(), x.transpose(3, 2, 0, 1))
    assert s.files == (path,)


@pytest.mark.parametrize(
    ("contents", "match"),
    [
        (None, "test_32x32.mat"),  # not a .mat file at all
        ({"X": np.zeros((32, 32, 3, 2), np.uint8)}, "variable"),
        ({"X": np.zeros((28, 28, 1, 2), np.uint8), "y": np.ones((2, 1))}, "not uint8"),
        ({"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.ones((3, 1))}, "3 labels"),
        ({"X": np.zeros((32, 32, 3, 1), np.uint8), "y": np.array([[11]])}, "1-10"),
    ],
    ids=["garbage", "missing-y", "shape", "count", "label-range"],
)
def test_svhn_bad_mat_names_file(tmp_path, contents, match):
    path = tmp_path / "SVHN" / "test_32x32.mat"
    path.parent.mkdir()
    if contents is None:
        path.write_bytes(b"MATLAB 5.0 MAT-file" + b"\x00" * 50)
    else:
        scipy.io.savemat(path, contents)
    with pytest.raises(DataError, match=match) as err:
        SVHN().load(tmp_path, "test", P, download=False)
    assert str(path) in str(err.value)


def test_svhn_truncated_mat_names_file(tmp_path):
    x, y = svhn_arrays()
    path = write_svhn(tmp_path, "test", x, y)
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(DataError, match=re.escape("test_32x32.mat")):
        SVHN().load(tmp_path, "test", P, download=False)


# --- missing files and downloads -------------------------------------------------------------

def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.fixture(autouse=True)
def _download_locks_in_a_test_folder(tmp_path_factory, monkeypatch):
    """Download lock files go to the temp folder: keep this module's out of the machine's."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path_factory.mktemp("locks")))


EXPECTED = {
    "MNIST": ["MNIST/raw/train-images-idx3-ubyte", "MNIST/raw/train-labels-idx1-ubyte"],
    "USPS": ["USPS/usps.bz2"],
    "SVHN": ["SVHN/train_32x32.mat"],
}
ADAPTERS = {"MNIST": MNIST(), "USPS": USPS(), "SVHN": SVHN()}


@pytest.mark.parametrize("name", list(ADAPTERS))
def test_missing_files_without_download(tmp_path, name):
    with pytest.raises(DataError, match=f"{name} train split") as err:
        ADAPTERS[name].load(tmp_path, "train", P, download=False)
    message = str(err.value)
    for rel in EXPECTED[name]:
        assert str(tmp_path / rel) in message
    assert "JADEKIT_DATA" in message and "root = " in message and "download = true" in message
    assert "failed:" not in message


@pytest.mark.parametrize("name", list(ADAPTERS))
def test_download_offline_is_one_clear_error(tmp_path, monkeypatch, name):
    datasets = pytest.importorskip("torchvision.datasets")
    calls = []

    def offline(root, *args, **kwargs):
        calls.append((Path(root), kwargs))
        raise RuntimeError("Error downloading x: <urlopen error [Errno -3] name resolution>")

    monkeypatch.setattr(datasets, name, offline)
    with pytest.raises(DataError, match=r"downloading \w+ failed: .*urlopen error") as err:
        ADAPTERS[name].load(tmp_path, "train", P, download=True)
    assert "JADEKIT_DATA" in str(err.value)
    assert str(tmp_path / EXPECTED[name][0]) in str(err.value)
    # torchvision's own layout, in a staging folder beside the data: MNIST/raw under it; USPS and SVHN in their folder
    (into, kwargs), = calls
    staging = into if name == "MNIST" else into.parent
    assert staging.parent == tmp_path and staging.name.startswith(".jadekit-download-") and into.name != "raw"
    assert into == staging or into == staging / name
    assert kwargs == {**({"split": "train"} if name == "SVHN" else {"train": True}), "download": True}
    assert list(tmp_path.iterdir()) == []  # the staging folder is gone


@pytest.mark.parametrize("name", list(ADAPTERS))
def test_missing_files_fix_names_the_layout_and_download_only_when_off(tmp_path, monkeypatch, name):
    with pytest.raises(DataError) as off:
        ADAPTERS[name].load(tmp_path, "train", P, download=False)
    assert f"data root that holds {' and '.join(EXPECTED[name])} (" in off.value.hint
    assert "as above" not in off.value.hint
    datasets = pytest.importorskip("torchvision.datasets")

    def offline(*args, **kwargs):
        raise RuntimeError("offline")

    monkeypatch.setattr(datasets, name, offline)
    with pytest.raises(DataError, match=r"downloading \w+ failed: offline") as on:
        ADAPTERS[name].load(tmp_path, "train", P, download=True)
    hint = on.value.hint
    assert "download = true" not in hint and "internet" in hint and EXPECTED[name][0] in hint


@pytest.mark.parametrize("name", list(ADAPTERS))
def test_failed_download_leaves_no_new_empty_folders(tmp_path, monkeypatch, name):
    datasets = pytest.importorskip("torchvision.datasets")

    def offline(root, *args, **kwargs):  # as torchvision does: create the folders, then fail to fetch
        (Path(root) / ("MNIST/raw" if name == "MNIST" else "")).mkdir(parents=True, exist_ok=True)
        raise RuntimeError("<urlopen error [Errno -2] Name or service not known>")

    monkeypatch.setattr(datasets, name, offline)
    root = tmp_path / "nowhere" / "data"
    with pytest.raises(DataError, match=r"downloading \w+ failed"):
        ADAPTERS[name].load(root, "train", P, download=True)
    assert list(tmp_path.iterdir()) == []
    kept = tmp_path / name  # folders that existed before are kept, even when empty
    kept.mkdir()
    with pytest.raises(DataError, match=r"downloading \w+ failed"):
        ADAPTERS[name].load(tmp_path, "train", P, download=True)
    assert [p.relative_to(tmp_path) for p in tmp_path.rglob("*")] == [Path(name)]


def test_failed_download_leaves_nothing_behind(tmp_path, monkeypatch):
    datasets = pytest.importorskip("torchvision.datasets")

    def partial(root, *args, **kwargs):
        Path(root).mkdir(parents=True)
        (Path(root) / "usps.bz2.part").write_bytes(b"x")
        raise RuntimeError("connection reset")

    monkeypatch.setattr(datasets, "USPS", partial)
    (tmp_path / "data").mkdir()
    with pytest.raises(DataError, match="connection reset"):
        USPS().load(tmp_path / "data", "train", P, download=True)
    assert list((tmp_path / "data").iterdir()) == []


@pytest.mark.parametrize("interrupt", [RuntimeError("connection reset"), KeyboardInterrupt()])
def test_a_download_cut_short_leaves_no_partial_data_file(tmp_path, monkeypatch, interrupt):
    """A data file the failed (or Ctrl-C'd) download wrote never reaches the data root, so the next run says the file
    is missing and downloads it again, instead of reading half a file; a file that was there before is never touched."""
    datasets = pytest.importorskip("torchvision.datasets")

    def cut_short(root, *args, **kwargs):
        Path(root).mkdir(parents=True, exist_ok=True)
        (Path(root) / "usps.bz2").write_bytes(b"BZh91AY&SY")  # the first bytes of a bz2 stream
        raise interrupt

    monkeypatch.setattr(datasets, "USPS", cut_short)
    with pytest.raises(DataError if isinstance(interrupt, Exception) else KeyboardInterrupt):
        USPS().load(tmp_path, "train", P, download=True)
    assert not (tmp_path / "USPS" / "usps.bz2").exists() and not (tmp_path / "USPS").exists()
    with pytest.raises(DataError, match="data files not found"):
        USPS().load(tmp_path, "train", P, download=False)
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "train-images-idx3-ubyte").write_bytes(b"kept")  # there before: MNIST downloads the missing labels

    def labels_cut_short(root, *args, **kwargs):
        (Path(root) / "MNIST" / "raw").mkdir(parents=True)
        (Path(root) / "MNIST" / "raw" / "train-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b")
        raise interrupt

    monkeypatch.setattr(datasets, "MNIST", labels_cut_short)
    with pytest.raises(DataError if isinstance(interrupt, Exception) else KeyboardInterrupt):
        MNIST().load(tmp_path, "train", P, download=True)
    assert [f.name for f in raw.iterdir()] == ["train-images-idx3-ubyte"]
    assert (raw / "train-images-idx3-ubyte").read_bytes() == b"kept"


def test_a_failed_download_keeps_a_dangling_link_to_the_data(tmp_path, monkeypatch):
    """A data file linked in from a shared store that is not mounted now is the user's setup, not the download's."""
    datasets = pytest.importorskip("torchvision.datasets")

    def offline(root, *args, **kwargs):
        raise RuntimeError("offline")

    monkeypatch.setattr(datasets, "USPS", offline)
    (tmp_path / "USPS").mkdir()
    link = tmp_path / "USPS" / "usps.bz2"
    link.symlink_to(tmp_path / "share" / "usps.bz2")
    with pytest.raises(DataError, match=r"downloading \w+ failed: offline") as err:
        USPS().load(tmp_path, "train", P, download=True)
    assert link.is_symlink()
    assert f"usps.bz2 is a link to {tmp_path / 'share' / 'usps.bz2'}, which is missing or not a file" in str(err.value)


def test_download_then_read_with_own_reader(tmp_path, monkeypatch):
    datasets = pytest.importorskip("torchvision.datasets")
    written = {}

    def fake_mnist(root, train, download):
        assert download and not train
        written["images"], written["labels"] = write_mnist(Path(root), "test", compress=True)

    monkeypatch.setattr(datasets, "MNIST", fake_mnist)
    s = MNIST().load(tmp_path, "test", P, download=True)
    assert np.array_equal(s.images[:, 0].numpy(), written["images"])


def test_existing_files_are_not_downloaded(tmp_path, monkeypatch):
    datasets = pytest.importorskip("torchvision.datasets")
    monkeypatch.setattr(datasets, "USPS", lambda *a, **k: pytest.fail("download attempted"))
    write_usps(tmp_path, "test", b"2 1:0.5\n")
    assert USPS().load(tmp_path, "test", P, download=True).labels.tolist() == [1]


def fetch_usps(into: Path) -> None:
    """A download that succeeds: USPS's train file, laid out as under the data root."""
    (into / "USPS").mkdir()
    (into / "USPS" / "usps.bz2").write_bytes(b"data")


def test_parallel_runs_download_once_and_never_see_a_partial_file(tmp_path, capsys):
    """A user's runs started together on one machine (the protocol script, `--jobs`) share one download: while it
    runs the data root holds no partial file, the runs that wait say so, and they read what it moved into place."""
    wanted = [(tmp_path / "USPS" / "usps.bz2",)]
    fetching, release, calls = threading.Event(), threading.Event(), []

    def slow_fetch(into: Path) -> None:
        calls.append(into)
        (into / "USPS").mkdir()
        (into / "USPS" / "usps.bz2").write_bytes(b"half")
        fetching.set()
        assert release.wait(10)
        (into / "USPS" / "usps.bz2").write_bytes(b"whole file")

    results = {}

    def run(name: str) -> None:
        results[name] = require_files("USPS", "train", wanted, True, slow_fetch, tmp_path)

    first = threading.Thread(target=run, args=("first",))
    first.start()
    assert fetching.wait(10)
    second = threading.Thread(target=run, args=("second",))
    second.start()
    waited = ""
    for _ in range(200):  # the second run reaches the lock and says it waits
        waited += capsys.readouterr().err
        if "waiting for another jadekit process" in waited:
            break
        time.sleep(0.05)
    assert f"waiting for another jadekit process that is downloading into {tmp_path}" in waited
    with pytest.raises(DataError, match="data files not found"):  # mid-download: missing, not half a file
        require_files("USPS", "train", wanted, False, slow_fetch, tmp_path)
    release.set()
    first.join(10)
    second.join(10)
    assert len(calls) == 1
    assert results == {"first": [wanted[0][0]], "second": [wanted[0][0]]}
    assert wanted[0][0].read_bytes() == b"whole file"
    assert [p.name for p in tmp_path.iterdir()] == ["USPS"]


@pytest.mark.parametrize("users_form", ["train-images-idx3-ubyte", "train-images-idx3-ubyte.gz"])
def test_a_download_adds_missing_files_and_keeps_the_ones_there(tmp_path, users_form):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / users_form).write_bytes(b"the user's")
    (raw / "t10k-labels-idx1-ubyte.gz").write_bytes(b"the user's")  # the other split, as the user keeps it
    wanted = [(raw / n, raw / f"{n}.gz") for n in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")]

    def fetch(into: Path) -> None:  # torchvision fetches every file of both splits, .gz and extracted
        (into / "MNIST" / "raw").mkdir(parents=True)
        for n in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
            (into / "MNIST" / "raw" / n).write_bytes(b"downloaded")
            (into / "MNIST" / "raw" / f"{n}.gz").write_bytes(b"downloaded")

    found = require_files("MNIST", "train", wanted, True, fetch, tmp_path)
    assert found == [raw / users_form, raw / "train-labels-idx1-ubyte"]  # the user's file is still the one read
    assert (raw / users_form).read_bytes() == b"the user's"
    assert not (raw / "train-images-idx3-ubyte").exists() or users_form == "train-images-idx3-ubyte"
    assert (raw / "train-labels-idx1-ubyte").read_bytes() == b"downloaded"
    assert (raw / "t10k-images-idx3-ubyte").exists()  # the other split came with it: no second download
    assert not (raw / "t10k-labels-idx1-ubyte").exists()  # ... but its .gz stays the form that split reads
    assert sorted(p.name for p in tmp_path.iterdir()) == ["MNIST"]


def test_a_read_only_data_root_is_one_clear_error(tmp_path, monkeypatch):
    def no_staging(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path))

    monkeypatch.setattr(tempfile, "mkdtemp", no_staging)
    with pytest.raises(DataError, match=f"USPS train split: cannot download into the data root {tmp_path}: .*Permission") as err:
        USPS().load(tmp_path, "train", P, download=True)
    assert f"make {tmp_path} writable" in err.value.hint and "internet" not in err.value.hint


def test_a_lock_that_cannot_be_taken_is_one_clear_error(tmp_path, monkeypatch):
    """E.g. another user's leftover lock file in a shared /tmp."""

    class ForeignLock:
        def __init__(self, path):
            self.path = path

        def acquire(self, timeout=None):
            raise PermissionError(13, "lock file belongs to uid 1001", str(self.path))

    monkeypatch.setattr(files, "FileLock", ForeignLock)
    with pytest.raises(DataError, match="USPS train split: cannot take the download lock .*belongs to uid 1001") as err:
        USPS().load(tmp_path, "train", P, download=True)
    assert "delete" in err.value.hint and "TMPDIR" in err.value.hint
    assert list(tmp_path.iterdir()) == []


def test_a_folder_on_another_disk_gets_its_files_copied_then_renamed(tmp_path, monkeypatch):
    """A dataset folder linked to another disk: a rename from the staging folder cannot cross it."""
    real_replace, real_copy, renames, copies = os.replace, shutil.copyfile, [], []

    def cross_device(src, dst):
        if files._STAGING in str(src):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        renames.append((Path(src), Path(dst)))
        real_replace(src, dst)

    def copy(src, dst):
        copies.append(Path(dst))
        return real_copy(src, dst)

    monkeypatch.setattr(files.os, "replace", cross_device)
    monkeypatch.setattr(files.shutil, "copyfile", copy)

    target = tmp_path / "USPS" / "usps.bz2"
    found = require_files("USPS", "train", [(target,)], True, fetch_usps, tmp_path)
    # never copied straight into place (a reader could see half a file): copied beside it, then renamed over it
    assert copies and target not in copies and all(c.parent == target.parent and c.name.startswith(".usps.bz2.") for c in copies)
    assert renames[-1] == (copies[-1], target)
    assert found[0].read_bytes() == b"data"
    assert [p.name for p in tmp_path.rglob("*")] == ["USPS", "usps.bz2"]  # no staging folder, no temp file
    assert found[0].stat().st_mode & 0o777 == 0o666 & ~_umask()  # as the downloaded file: readable by the others


def test_a_killed_download_leaves_a_staging_folder_that_the_next_one_removes(tmp_path):
    """A download killed outright (SIGKILL) cannot clean up; its staging folder's owner lock died with it."""
    folders = {name: tmp_path / f"{files._STAGING}{name}" for name in ("killed", "running", "just-made")}
    for folder in folders.values():
        (folder / "USPS").mkdir(parents=True)
        (folder / "USPS" / "usps.bz2").write_bytes(b"part")
    hour_ago = time.time() - 3600
    for name in ("killed", "running"):
        os.utime(folders[name], (hour_ago, hour_ago))

    with FileLock(folders["running"] / files._OWNER):  # a download still running, in another process
        require_files("USPS", "train", [(tmp_path / "USPS" / "usps.bz2",)], True, fetch_usps, tmp_path)
    assert not folders["killed"].exists() and folders["running"].exists() and folders["just-made"].exists()
    assert (tmp_path / "USPS" / "usps.bz2").read_bytes() == b"data"


def test_a_file_that_cannot_be_put_in_place_is_one_clear_error(tmp_path, monkeypatch):
    def read_only(src, dst):
        raise PermissionError(13, "Permission denied", str(dst))

    monkeypatch.setattr(files.os, "replace", read_only)

    target = tmp_path / "USPS" / "usps.bz2"
    with pytest.raises(DataError, match=f"USPS train split: downloaded, but cannot write {target}: .*Permission") as err:
        require_files("USPS", "train", [(target,)], True, fetch_usps, tmp_path)
    assert f"make {target.parent} writable" in err.value.hint and "internet" not in err.value.hint
    assert [p.name for p in tmp_path.iterdir()] == ["USPS"]  # no staging folder left


def test_a_link_at_the_target_is_never_replaced_by_a_download(tmp_path):
    (tmp_path / "USPS").mkdir()
    link = tmp_path / "USPS" / "usps.bz2"
    link.symlink_to(Path("..") / "share" / "usps.bz2")  # a shared store that is not mounted now

    with pytest.raises(DataError, match="download finished but the files are still missing") as err:
        require_files("USPS", "train", [(link,)], True, fetch_usps, tmp_path)
    assert link.is_symlink() and not link.exists()
    assert f"usps.bz2 is a link to {tmp_path / 'USPS' / '..' / 'share' / 'usps.bz2'}, which is missing or not a file" in str(err.value)


# --- the real data ---------------------------------------------------------------------------


def test_real_shared_data():
    if not (SHARED_DATA / "MNIST").is_dir() or not (SHARED_DATA / "USPS").is_dir():
        pytest.skip(f"real data not found under {SHARED_DATA}")
    mnist = MNIST().load(SHARED_DATA, "test", P, download=False)
    assert mnist.images.shape == (10_000, 1, 28, 28)
    usps = USPS().load(SHARED_DATA, "train", P, download=False)
    assert usps.images.shape == (7_291, 1, 16, 16)
    counts = torch.bincount(usps.labels, minlength=10).tolist()
    assert counts == [1194, 1005, 731, 658, 652, 556, 664, 645, 542, 644]


def test_prepared_domain_keeps_patients_whole_across_train_and_validation():
    from jadekit.config import DataConfig
    from jadekit.data.base import ImageSet
    from jadekit.data.prepare import prepare_domain

    labels = torch.arange(40) // 20  # 2 classes, 4 patients each, 5 images per patient
    groups = torch.arange(40) // 5
    train = ImageSet(torch.zeros(40, 1, 4, 4, dtype=torch.uint8), labels, ("a", "b"), (), groups)
    test = ImageSet(torch.zeros(4, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 1, 0, 1]), ("a", "b"))
    for seed in range(5):
        d = prepare_domain(train, test, DataConfig(dataset="x", labels_per_class=10, val_share=0.5), seed, "p")
        tr, va = (set(groups[torch.tensor(d.indices[s])].tolist()) for s in ("train", "val"))
        assert tr and va and not tr & va  # patients on one side only: selection never sees a training patient


def test_a_validation_share_that_sets_no_patient_aside_is_an_error():
    from jadekit.config import DataConfig
    from jadekit.data.base import ImageSet
    from jadekit.data.prepare import prepare_domain

    labels, groups = torch.arange(40) // 20, torch.arange(40) // 10  # 2 patients of 10 images per class
    train = ImageSet(torch.zeros(40, 1, 4, 4, dtype=torch.uint8), labels, ("a", "b"), (), groups)
    test = ImageSet(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 1]), ("a", "b"))
    with pytest.raises(DataError, match="sets nothing aside") as e:  # 5 per class = one patient each: none for validation
        prepare_domain(train, test, DataConfig(dataset="x", labels_per_class=5, val_share=0.2), 0, "primary")
    assert "val_share = 0" in e.value.hint
