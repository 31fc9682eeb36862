"""Tests of localrules.tasks.datasets on tiny files written in each real format; never downloads."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import pickle
import struct
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest

from localrules.tasks import datasets as ds

SYSTEM_FASHION = Path("/usr/share/datasets/fashion-mnist")


# ----------------------------------------------------------------------------------------------------------------
# fixtures and writers of the real formats
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _offline_and_isolated(tmp_path, monkeypatch):
    """Every test: downloads disabled, a private cache, no inherited data dir, and pooch.retrieve booby-trapped."""
    monkeypatch.setenv("LOCALRULES_OFFLINE", "1")
    monkeypatch.setenv("LOCALRULES_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("LOCALRULES_DATA_DIR", raising=False)
    import pooch

    def _no_network(*args, **kwargs):
        raise AssertionError(f"a test tried to download: {args} {kwargs}")

    monkeypatch.setattr(pooch, "retrieve", _no_network)
    ds.clear_cache()
    yield
    ds.clear_cache()


def idx_bytes(arr: np.ndarray) -> bytes:
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    return b"\x00\x00\x08" + bytes([arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def gz(data: bytes, mtime: int = 0) -> bytes:
    return gzip.compress(data, mtime=mtime)


def make_idx_split(rng, n=7, h=28, w=28):
    return rng.integers(0, 256, (n, h, w), dtype=np.uint8), rng.integers(0, 10, (n,), dtype=np.uint8)


def write_idx(folder: Path, split: str, images, labels, compress=True) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    prefix = "train" if split == "train" else "t10k"
    out = []
    for stem, arr in ((f"{prefix}-images-idx3-ubyte", images), (f"{prefix}-labels-idx1-ubyte", labels)):
        data = idx_bytes(arr)
        p = folder / (stem + (".gz" if compress else ""))
        p.write_bytes(gz(data) if compress else data)
        out.append(p)
    return out


def cifar_pickle(data: np.ndarray, **labels) -> bytes:
    d = {b"batch_label": b"synthetic batch", b"data": data, b"filenames": [b"x.png"] * len(data)}
    d.update({k.encode(): list(map(int, v)) for k, v in labels.items()})
    return pickle.dumps(d, protocol=2)


def write_tar_gz(path: Path, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, blob in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path


def cifar_rows(images_nhwc: np.ndarray) -> np.ndarray:
    """Images (N, 32, 32, 3) as CIFAR stores them: (N, 3072) with the R, G, B planes one after another."""
    return np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2).reshape(len(images_nhwc), 3072))


def stl_x_bytes(images_nhwc: np.ndarray) -> bytes:
    """Images (N, 96, 96, 3) as STL-10 stores them: per image (C, W, H) in C order, i.e. column-major."""
    return np.ascontiguousarray(images_nhwc.transpose(0, 3, 2, 1)).tobytes()


def no_partial_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and (p.name.endswith(".part") or p.name.startswith("tmp"))]


# ----------------------------------------------------------------------------------------------------------------
# IDX (MNIST family)
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [True, False], ids=["gz", "raw"])
@pytest.mark.parametrize("name", ["mnist", "kmnist", "fashion_mnist"])
def test_idx_files_gzipped_or_raw_decode_to_exactly_the_arrays_written(tmp_path, rng_np, name, compress):
    """The IDX decoder must return the written pixels and labels bit for bit, as (N, 28, 28, 1) uint8 / int32."""
    spec = ds.DATASETS[name]
    for split in ("train", "test"):
        images, labels = make_idx_split(rng_np)
        write_idx(tmp_path / "data" / spec.dirnames[0], split, images, labels, compress)
        x, y = ds.load(name, split, data_dir=tmp_path / "data")
        assert x.dtype == np.uint8 and x.shape == (7, 28, 28, 1)
        assert y.dtype == np.int32 and y.shape == (7,)
        np.testing.assert_array_equal(x[..., 0], images)
        np.testing.assert_array_equal(y, labels)


@pytest.fixture
def rng_np():
    return np.random.default_rng(0)


def test_files_directly_in_the_data_dir_or_in_a_torchvision_raw_folder_are_found(tmp_path, rng_np):
    """Users keep files flat or in torchvision's layout; both must be picked up without renaming."""
    images, labels = make_idx_split(rng_np)
    write_idx(tmp_path / "flat", "train", images, labels)
    src = ds.locate("mnist", "train", data_dir=tmp_path / "flat")
    assert src.origin == "data_dir" and src.paths[0].parent == tmp_path / "flat"
    write_idx(tmp_path / "tv" / "KMNIST" / "raw", "test", images, labels, compress=False)
    x, y = ds.load("KMNIST", "test", data_dir=tmp_path / "tv")
    np.testing.assert_array_equal(x[..., 0], images)


def test_the_environment_variable_is_the_data_dir_when_no_argument_is_given(tmp_path, rng_np, monkeypatch):
    """$LOCALRULES_DATA_DIR is the documented way to provide files offline."""
    images, labels = make_idx_split(rng_np)
    write_idx(tmp_path / "env" / "mnist", "test", images, labels)
    monkeypatch.setenv("LOCALRULES_DATA_DIR", str(tmp_path / "env"))
    x, y = ds.load("mnist", "test")
    np.testing.assert_array_equal(y, labels)


def test_a_file_named_gz_but_already_decompressed_is_still_read(tmp_path, rng_np):
    """Browsers often gunzip on download and keep the .gz name; gzip is detected from the content."""
    images, labels = make_idx_split(rng_np)
    folder = tmp_path / "mnist"
    folder.mkdir()
    (folder / "train-images-idx3-ubyte.gz").write_bytes(idx_bytes(images))
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(gz(idx_bytes(labels)))
    x, _ = ds.load("mnist", "train", data_dir=tmp_path)
    np.testing.assert_array_equal(x[..., 0], images)


@pytest.mark.parametrize("compress", [True, False], ids=["gz", "raw"])
def test_truncated_idx_file_raises_a_length_error_naming_the_file(tmp_path, rng_np, compress):
    """A half-downloaded file must fail with one clear message naming it, not a numpy reshape traceback."""
    images, labels = make_idx_split(rng_np)
    img, _ = write_idx(tmp_path / "mnist", "train", images, labels, compress)
    img.write_bytes(img.read_bytes()[: len(img.read_bytes()) // 2])
    with pytest.raises(ds.DatasetError) as exc:
        ds.load("mnist", "train", data_dir=tmp_path)
    msg = str(exc.value)
    assert str(img) in msg and "truncated" in msg and "Delete it" in msg
    assert exc.value.__cause__ is None and (exc.value.__context__ is None or exc.value.__suppress_context__)


def test_wrong_idx_magic_raises_naming_the_file(tmp_path, rng_np):
    """A file that is not IDX (e.g. an HTML error page saved under the right name) must be reported as such."""
    images, labels = make_idx_split(rng_np)
    img, _ = write_idx(tmp_path / "mnist", "test", images, labels, compress=False)
    img.write_bytes(b"<html>403 Forbidden</html>" + b"\0" * 100)
    with pytest.raises(ds.DatasetError, match="bad IDX magic") as exc:
        ds.load("mnist", "test", data_dir=tmp_path)
    assert str(img) in str(exc.value)


def test_idx_with_trailing_bytes_or_mismatched_counts_is_refused(tmp_path, rng_np):
    """Exact byte counts and equal image/label counts catch concatenated or mixed-up files."""
    images, labels = make_idx_split(rng_np)
    img, lbl = write_idx(tmp_path / "a" / "mnist", "train", images, labels, compress=False)
    img.write_bytes(img.read_bytes() + b"\0")
    with pytest.raises(ds.DatasetError, match="wrong length"):
        ds.load("mnist", "train", data_dir=tmp_path / "a")
    write_idx(tmp_path / "b" / "mnist", "train", images, labels[:5])
    with pytest.raises(ds.DatasetError, match="7 images but .* 5 labels"):
        ds.load("mnist", "train", data_dir=tmp_path / "b")


def test_labels_outside_the_class_range_are_refused(tmp_path, rng_np):
    """A label 10 in a 10-class set means a wrong file; it must not reach a one-hot and fail later."""
    images, labels = make_idx_split(rng_np)
    labels[0] = 10
    write_idx(tmp_path / "mnist", "train", images, labels)
    with pytest.raises(ds.DatasetError, match=r"labels must be 0..9"):
        ds.load("mnist", "train", data_dir=tmp_path)


def test_read_idx_decodes_any_idx_file(tmp_path, rng_np):
    """The public read_idx helper returns the array with the header's shape."""
    arr = rng_np.integers(0, 256, (2, 3, 4), dtype=np.uint8)
    (tmp_path / "x.gz").write_bytes(gz(idx_bytes(arr)))
    np.testing.assert_array_equal(ds.read_idx(tmp_path / "x.gz"), arr)


def test_keras_mnist_npz_in_the_data_dir_is_accepted(tmp_path, rng_np):
    """Keras users have mnist.npz rather than the IDX files."""
    xtr, ytr = make_idx_split(rng_np, n=4)
    xte, yte = make_idx_split(rng_np, n=3)
    (tmp_path / "mnist").mkdir()
    np.savez(tmp_path / "mnist" / "mnist.npz", x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    x, y = ds.load("mnist", "test", data_dir=tmp_path)
    np.testing.assert_array_equal(x[..., 0], xte)
    np.testing.assert_array_equal(y, yte)


def test_another_datasets_file_is_refused_by_its_hash(tmp_path, rng_np, monkeypatch):
    """Fashion-MNIST files share MNIST's names; a hash-identified Fashion file must not be loaded as MNIST."""
    images, labels = make_idx_split(rng_np)
    img, _ = write_idx(tmp_path / "mnist", "train", images, labels)
    spec = ds.DATASETS["fashion_mnist"]
    fake = tuple(
        dataclasses.replace(f, payload_sha256=hashlib.sha256(idx_bytes(images)).hexdigest())
        if f.name == "train-images-idx3-ubyte.gz" else f
        for f in spec.files
    )
    monkeypatch.setitem(ds.DATASETS, "fashion_mnist", dataclasses.replace(spec, files=fake))
    with pytest.raises(ds.DatasetError, match="identifies it as Fashion-MNIST's train-images") as exc:
        ds.load("mnist", "train", data_dir=tmp_path)
    assert str(img) in str(exc.value)


# ----------------------------------------------------------------------------------------------------------------
# CIFAR
# ----------------------------------------------------------------------------------------------------------------


def make_cifar10_archive(path: Path, rng, n=4):
    """A cifar-10-python.tar.gz with the real layout; returns {split: (images, labels)}."""
    members, truth = {}, {"train": ([], []), "test": ([], [])}
    for member, split in [(f"data_batch_{i}", "train") for i in range(1, 6)] + [("test_batch", "test")]:
        imgs = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        labs = rng.integers(0, 10, (n,))
        members[f"cifar-10-batches-py/{member}"] = cifar_pickle(cifar_rows(imgs), labels=labs)
        truth[split][0].append(imgs)
        truth[split][1].append(labs)
    members["cifar-10-batches-py/batches.meta"] = pickle.dumps({b"label_names": [b"airplane"]}, protocol=2)
    write_tar_gz(path, members)
    return {s: (np.concatenate(i), np.concatenate(l)) for s, (i, l) in truth.items()}, members


def test_cifar10_python_archive_decodes_to_exactly_the_images_written(tmp_path, rng_np):
    """Pickled batches in cifar-10-python.tar.gz must come back as (N, 32, 32, 3) in the order of the batches."""
    truth, _ = make_cifar10_archive(tmp_path / "data" / "cifar-10-python.tar.gz", rng_np)
    for split, n in (("train", 20), ("test", 4)):
        x, y = ds.load("cifar10", split, data_dir=tmp_path / "data")
        assert x.shape == (n, 32, 32, 3) and y.dtype == np.int32
        np.testing.assert_array_equal(x, truth[split][0])
        np.testing.assert_array_equal(y, truth[split][1])
    assert ds.locate("cifar10", "test", data_dir=tmp_path / "data").kind == "cifar_py_tar"


def test_cifar10_extracted_folder_is_read_like_the_archive(tmp_path, rng_np):
    """Users who already ran `tar xzf` have cifar-10-batches-py/; it must give the same arrays."""
    truth, members = make_cifar10_archive(tmp_path / "a.tar.gz", rng_np)
    for name, blob in members.items():
        (tmp_path / "data" / "cifar10" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "data" / "cifar10" / name).write_bytes(blob)
    x, y = ds.load("cifar-10", "train", data_dir=tmp_path / "data")
    np.testing.assert_array_equal(x, truth["train"][0])
    np.testing.assert_array_equal(y, truth["train"][1])


def test_cifar100_gives_fine_labels_by_default_and_coarse_on_request(tmp_path, rng_np):
    """CIFAR-100 has two label sets; fine (100) is the default, coarse (20) an option."""
    members, truth = {}, {}
    for split in ("train", "test"):
        imgs = rng_np.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
        fine, coarse = rng_np.integers(0, 100, 5), rng_np.integers(0, 20, 5)
        members[f"cifar-100-python/{split}"] = cifar_pickle(cifar_rows(imgs), fine_labels=fine, coarse_labels=coarse)
        truth[split] = imgs, fine, coarse
    write_tar_gz(tmp_path / "cifar100" / "cifar-100-python.tar.gz", members)
    for split in ("train", "test"):
        x, y = ds.load("cifar100", split, data_dir=tmp_path)
        np.testing.assert_array_equal(x, truth[split][0])
        np.testing.assert_array_equal(y, truth[split][1])
        _, yc = ds.load("cifar100", split, data_dir=tmp_path, coarse=True)
        np.testing.assert_array_equal(yc, truth[split][2])
    with pytest.raises(ds.DatasetError, match="only meaningful for CIFAR-100"):
        ds.load("cifar10", "train", data_dir=tmp_path, coarse=True)


def test_cifar_binary_versions_decode_like_the_python_versions(tmp_path, rng_np):
    """The binary CIFAR releases (label byte(s) + 3072 bytes per record) are accepted too."""
    imgs = rng_np.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    labs = rng_np.integers(0, 10, 3).astype(np.uint8)
    rec = np.concatenate([labs[:, None], cifar_rows(imgs)], axis=1).tobytes()
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    (folder / "test_batch.bin").write_bytes(rec)
    x, y = ds.load("cifar10", "test", data_dir=tmp_path)
    np.testing.assert_array_equal(x, imgs)
    np.testing.assert_array_equal(y, labs)
    fine, coarse = rng_np.integers(0, 100, 3).astype(np.uint8), rng_np.integers(0, 20, 3).astype(np.uint8)
    rec100 = np.concatenate([coarse[:, None], fine[:, None], cifar_rows(imgs)], axis=1).tobytes()
    write_tar_gz(tmp_path / "cifar-100-binary.tar.gz", {"cifar-100-binary/test.bin": rec100})
    x, y = ds.load("cifar100", "test", data_dir=tmp_path)
    np.testing.assert_array_equal(x, imgs)
    np.testing.assert_array_equal(y, fine)
    np.testing.assert_array_equal(ds.load("cifar100", "test", data_dir=tmp_path, coarse=True)[1], coarse)
    (folder / "test_batch.bin").write_bytes(rec[:-5])
    ds.clear_cache()
    with pytest.raises(ds.DatasetError, match="test_batch.bin: truncated or wrong length"):
        ds.load("cifar10", "test", data_dir=tmp_path)


def test_truncated_cifar_archive_raises_naming_the_archive(tmp_path, rng_np):
    """A partial cifar-10-python.tar.gz must produce one message naming it and saying to re-download."""
    path = tmp_path / "cifar-10-python.tar.gz"
    make_cifar10_archive(path, rng_np, n=50)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ds.DatasetError, match="truncated or corrupt") as exc:
        ds.load("cifar10", "test", data_dir=tmp_path)
    assert str(path) in str(exc.value) and "download it again" in str(exc.value)


def py2_cifar_pickle(data: np.ndarray, labels) -> bytes:
    """A batch pickled the way the real (Python 2, cPickle) CIFAR files are: numpy.core names, str as bytes."""

    def s(b: bytes) -> bytes:
        return b"S'" + b"".join(b"\\x%02x" % c for c in b) + b"'\n"

    out = b"(dp0\n" + s(b"data") + b"cnumpy.core.multiarray\n_reconstruct\n(cnumpy\nndarray\n(I0\ntS'b'\ntR"
    out += b"(I1\n(I%d\nI3072\ntcnumpy\ndtype\n(S'u1'\nI0\nI1\ntR(I3\nS'|'\nNNNI-1\nI-1\nI0\ntbI00\n" % len(data)
    out += s(data.tobytes()) + b"tbs" + s(b"labels") + b"(l" + b"".join(b"I%d\na" % v for v in labels) + b"s"
    return out + s(b"batch_label") + s(b"testing batch 1 of 1") + b"s."


def test_a_python2_pickled_cifar_batch_like_the_real_files_loads(tmp_path, rng_np):
    """The real batches were written by Python 2 with numpy.core names; numpy 2 must still read them, quietly."""
    imgs = rng_np.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    labs = [4, 0, 9]
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(py2_cifar_pickle(cifar_rows(imgs), labs))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x, y = ds.load("cifar10", "test", data_dir=tmp_path)
    np.testing.assert_array_equal(x, imgs)
    np.testing.assert_array_equal(y, labs)


def test_a_bad_or_hostile_pickle_is_refused_without_running_it(tmp_path):
    """CIFAR batches are pickles: garbage must be reported, and a pickle calling os.system must not run."""
    folder = tmp_path / "cifar10"
    folder.mkdir()
    (folder / "test_batch").write_bytes(b"this is not a pickle")
    with pytest.raises(ds.DatasetError, match="not a valid CIFAR python batch") as exc:
        ds.load("cifar10", "test", data_dir=tmp_path)
    assert str(folder / "test_batch") in str(exc.value)

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    (folder / "test_batch").write_bytes(pickle.dumps(Evil(), protocol=2))
    with pytest.raises(ds.DatasetError, match="refusing to load"):
        ds.load("cifar10", "test", data_dir=tmp_path)
    assert not marker.exists()


# ----------------------------------------------------------------------------------------------------------------
# STL-10
# ----------------------------------------------------------------------------------------------------------------


def make_stl(rng, n):
    return rng.integers(0, 256, (n, 96, 96, 3), dtype=np.uint8), rng.integers(1, 11, n).astype(np.uint8)


def test_stl10_is_transposed_from_column_major_and_labels_become_zero_based(tmp_path, rng_np):
    """STL-10 stores images column-major with labels 1..10; load must give (N, 96, 96, 3) and 0..9."""
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    truth = {}
    for split, n in (("train", 3), ("test", 2)):
        imgs, labs = make_stl(rng_np, n)
        (folder / f"{split}_X.bin").write_bytes(stl_x_bytes(imgs))
        (folder / f"{split}_y.bin").write_bytes(labs.tobytes())
        truth[split] = imgs, labs
    unl, _ = make_stl(rng_np, 2)
    (folder / "unlabeled_X.bin").write_bytes(stl_x_bytes(unl))
    for split in ("train", "test"):
        x, y = ds.load("stl10", split, data_dir=tmp_path)
        assert x.shape == (len(truth[split][0]), 96, 96, 3)
        np.testing.assert_array_equal(x, truth[split][0])
        np.testing.assert_array_equal(y, truth[split][1].astype(np.int32) - 1)
    # Independently: torchvision's recipe, reshape (N, 3, 96, 96), transpose (0, 1, 3, 2) to NCHW, then to NHWC.
    raw = np.fromfile(folder / "train_X.bin", np.uint8).reshape(-1, 3, 96, 96).transpose(0, 1, 3, 2)
    np.testing.assert_array_equal(ds.load("stl10", "train", data_dir=tmp_path)[0], raw.transpose(0, 2, 3, 1))
    xu, yu = ds.load("stl10", "unlabeled", data_dir=tmp_path)
    np.testing.assert_array_equal(xu, unl)
    assert (yu == -1).all() and yu.shape == (2,)


def test_stl10_zero_label_or_short_label_file_is_refused(tmp_path, rng_np):
    """Label 0 means the file is not 1-based STL-10; fewer labels than images means truncation."""
    folder = tmp_path / "stl10"
    folder.mkdir()
    imgs, labs = make_stl(rng_np, 3)
    (folder / "test_X.bin").write_bytes(stl_x_bytes(imgs))
    (folder / "test_y.bin").write_bytes(bytes([0, 1, 2]))
    with pytest.raises(ds.DatasetError, match="1-based"):
        ds.load("stl10", "test", data_dir=tmp_path)
    (folder / "test_y.bin").write_bytes(labs[:2].tobytes())
    with pytest.raises(ds.DatasetError, match="test_y.bin: has 2 labels but .* 3 images"):
        ds.load("stl10", "test", data_dir=tmp_path)
    (folder / "test_X.bin").write_bytes(stl_x_bytes(imgs)[:-1])
    with pytest.raises(ds.DatasetError, match="test_X.bin: truncated or wrong length"):
        ds.load("stl10", "test", data_dir=tmp_path)


def test_stl10_archive_is_extracted_into_the_cache_atomically(tmp_path, rng_np):
    """The STL-10 tar.gz is extracted once into the cache; a truncated archive leaves no partial file behind."""
    imgs, labs = make_stl(rng_np, 4)
    archive = write_tar_gz(
        tmp_path / "data" / "stl10_binary.tar.gz",
        {"stl10_binary/train_X.bin": stl_x_bytes(imgs), "stl10_binary/train_y.bin": labs.tobytes()},
    )
    x, y = ds.load("stl10", "train", data_dir=tmp_path / "data")
    np.testing.assert_array_equal(x, imgs)
    np.testing.assert_array_equal(y, labs - 1)
    src = ds.locate("stl10", "train", data_dir=tmp_path / "data")
    assert all(ds.cache_dir() in p.parents for p in src.paths)
    with pytest.raises(ds.DatasetError, match="lacks stl10_binary/test_X.bin"):
        ds.load("stl10", "test", data_dir=tmp_path / "data")

    big, _ = make_stl(rng_np, 40)
    bad = tmp_path / "bad" / "stl10_binary.tar.gz"
    write_tar_gz(bad, {"stl10_binary/train_X.bin": stl_x_bytes(big), "stl10_binary/train_y.bin": b"\1" * 40})
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    with pytest.raises(ds.DatasetError, match="truncated or corrupt") as exc:
        ds.load("stl10", "train", data_dir=tmp_path / "bad")
    assert str(bad) in str(exc.value)
    assert no_partial_files(tmp_path) == []
    extracted = {p.name for p in (ds.cache_dir() / "stl10" / "extracted").rglob("*.bin")}
    assert extracted == {"train_X.bin", "train_y.bin"}  # only the good archive's members

    # A replaced archive is extracted afresh and the old members are deleted, not left to fill the disk.
    old_dir = src.paths[0].parent
    os.utime(archive, ns=(archive.stat().st_atime_ns, archive.stat().st_mtime_ns + 10**9))
    ds.load("stl10", "train", data_dir=tmp_path / "data")
    assert not old_dir.exists() and ds.locate("stl10", "train", data_dir=tmp_path / "data").paths[0].is_file()


# ----------------------------------------------------------------------------------------------------------------
# lookup order, system copies, cache, downloads, messages
# ----------------------------------------------------------------------------------------------------------------


def _fashion_with_system_dir(monkeypatch, folder: Path, **changes):
    spec = dataclasses.replace(ds.DATASETS["fashion_mnist"], system_dirs=(str(folder),), **changes)
    monkeypatch.setitem(ds.DATASETS, "fashion_mnist", spec)
    return spec


def test_a_system_copy_lookalike_with_the_wrong_payload_hash_is_not_accepted(tmp_path, rng_np, monkeypatch):
    """System copies are trusted only by the decompressed sha256, so a same-named impostor must be ignored."""
    images, labels = make_idx_split(rng_np)
    write_idx(tmp_path / "sys", "train", images, labels)
    _fashion_with_system_dir(monkeypatch, tmp_path / "sys")
    with pytest.raises(ds.DatasetError) as exc:
        ds.load("fashion_mnist", "train")
    msg = str(exc.value)
    assert f"ignored {tmp_path / 'sys' / 'train-images-idx3-ubyte.gz'}" in msg and "does not match" in msg


def test_a_system_copy_is_recognised_by_payload_hash_despite_a_different_gzip_header(tmp_path, rng_np, monkeypatch):
    """Debian re-gzipped Fashion-MNIST; matching the decompressed payload must be enough."""
    images, labels = make_idx_split(rng_np)
    folder = tmp_path / "sys"
    folder.mkdir()
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(gz(idx_bytes(images), mtime=123456))
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gz(idx_bytes(labels), mtime=654321))
    spec = ds.DATASETS["fashion_mnist"]
    payload = {"t10k-images-idx3-ubyte.gz": idx_bytes(images), "t10k-labels-idx1-ubyte.gz": idx_bytes(labels)}
    files = tuple(
        dataclasses.replace(f, payload_sha256=hashlib.sha256(payload[f.name]).hexdigest()) if f.name in payload else f
        for f in spec.files
    )
    _fashion_with_system_dir(monkeypatch, folder, files=files)
    src = ds.locate("fashion_mnist", "test")
    assert src.origin == "system"
    np.testing.assert_array_equal(ds.load("fashion_mnist", "test")[0][..., 0], images)


def test_the_data_dir_wins_over_the_system_copy(tmp_path, rng_np, monkeypatch):
    """An explicit data_dir is step 1 of the lookup order, before system copies and the cache."""
    images, labels = make_idx_split(rng_np)
    write_idx(tmp_path / "d" / "fashion-mnist", "test", images, labels)
    _fashion_with_system_dir(monkeypatch, SYSTEM_FASHION)
    assert ds.locate("fashion_mnist", "test", data_dir=tmp_path / "d").origin == "data_dir"


def test_offline_with_no_files_names_the_dataset_every_place_searched_and_the_env_var(tmp_path, monkeypatch):
    """The missing-data message must say what is missing, where it looked and how to provide it."""
    _fashion_with_system_dir(monkeypatch, tmp_path / "nowhere")
    with pytest.raises(ds.DatasetError) as exc:
        ds.load("fashion_mnist", "train", data_dir=tmp_path / "empty")
    msg = str(exc.value)
    for needle in (
        "'fashion_mnist'", "Fashion-MNIST", str(tmp_path / "empty"), str(tmp_path / "nowhere"),
        str(ds.cache_dir() / "fashion_mnist"), "LOCALRULES_DATA_DIR", "LOCALRULES_OFFLINE",
        "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/train-images-idx3-ubyte.gz",
    ):
        assert needle in msg, needle
    assert exc.value.__cause__ is None
    with pytest.raises(ds.DatasetError, match="LOCALRULES_DATA_DIR is not set") as exc:
        ds.load("cifar100", "test")
    assert "cifar-100-python.tar.gz" in str(exc.value) and "https://www.cs.toronto.edu/" in str(exc.value)


def test_half_a_split_is_reported_as_such(tmp_path, rng_np):
    """Finding the images but not the labels should be said explicitly, not hidden in 'not found'."""
    images, labels = make_idx_split(rng_np)
    img, lbl = write_idx(tmp_path / "mnist", "train", images, labels)
    lbl.unlink()
    with pytest.raises(ds.DatasetError, match="found train-images-idx3-ubyte.gz but not train-labels"):
        ds.load("mnist", "train", data_dir=tmp_path)


def test_a_cached_file_with_the_wrong_hash_is_refused_offline_with_delete_advice(tmp_path, rng_np):
    """The download cache is verified by archive hash; a corrupt cached file must be named with what to do."""
    images, labels = make_idx_split(rng_np)
    img, _ = write_idx(ds.cache_dir() / "mnist", "test", images, labels)
    with pytest.raises(ds.DatasetError, match="hash mismatch") as exc:
        ds.load("mnist", "test")
    assert str(img) in str(exc.value) and "Delete it" in str(exc.value)


def test_download_tries_the_mirrors_in_order_with_the_archive_hash(tmp_path, rng_np, monkeypatch):
    """The first mirror may 403; the next must be tried, with pooch verifying the known archive hash."""
    import pooch

    images, labels = make_idx_split(rng_np)
    blobs = {"t10k-images-idx3-ubyte.gz": gz(idx_bytes(images)), "t10k-labels-idx1-ubyte.gz": gz(idx_bytes(labels))}
    spec = ds.DATASETS["mnist"]
    files = tuple(
        dataclasses.replace(f, sha256=hashlib.sha256(blobs[f.name]).hexdigest()) if f.name in blobs else f
        for f in spec.files
    )
    monkeypatch.setitem(ds.DATASETS, "mnist", dataclasses.replace(spec, files=files))
    calls = []

    def fake_retrieve(url, known_hash, fname, path, progressbar):
        calls.append((url, known_hash))
        if "ossci" in url:
            raise RuntimeError("403 Client Error: Forbidden")
        assert known_hash == "sha256:" + hashlib.sha256(blobs[fname]).hexdigest()
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / fname).write_bytes(blobs[fname])
        return str(Path(path) / fname)

    monkeypatch.setattr(pooch, "retrieve", fake_retrieve)
    x, y = ds.load("mnist", "test", download=True)
    np.testing.assert_array_equal(x[..., 0], images)
    assert [u.split("/")[2] for u, _ in calls] == ["ossci-datasets.s3.amazonaws.com", "storage.googleapis.com"] * 2
    # Now offline, the verified cache copy is used.
    ds.clear_cache()
    assert ds.locate("mnist", "test").origin == "cache"


def test_when_every_mirror_fails_one_error_lists_them_and_how_to_provide_the_file(monkeypatch):
    """A network failure must end in one DatasetError, not in a requests traceback."""
    import pooch

    def failing(url, **kwargs):
        raise ValueError(f"SHA256 hash of downloaded file does not match the known hash ({url})")

    monkeypatch.setattr(pooch, "retrieve", failing)
    with pytest.raises(ds.DatasetError, match="every mirror failed") as exc:
        ds.load("kmnist", "train", download=True)
    msg = str(exc.value)
    assert "codh.rois.ac.jp" in msg and "LOCALRULES_DATA_DIR" in msg and exc.value.__cause__ is None


def test_unknown_dataset_or_split_is_a_dataset_error_listing_the_choices():
    """Typos get a message with the valid names."""
    with pytest.raises(ds.DatasetError, match="known datasets: cifar10, cifar100, fashion_mnist"):
        ds.load("imagenet", "train")
    with pytest.raises(ds.DatasetError, match="splits are train, test"):
        ds.load("mnist", "validation")


def test_repeated_loads_are_served_from_memory_and_are_read_only(tmp_path, rng_np):
    """Decoded arrays are cached per process; they are shared, so they must not be writable."""
    images, labels = make_idx_split(rng_np)
    write_idx(tmp_path / "mnist", "train", images, labels)
    a = ds.load("mnist", "train", data_dir=tmp_path)
    b = ds.load("mnist", "train", data_dir=tmp_path)
    assert a[0] is b[0] and a[1] is b[1]
    with pytest.raises(ValueError):
        a[0][0, 0, 0, 0] = 1


def test_the_table_has_every_dataset_with_mirrors_and_archive_hashes():
    """DATASETS is the single description of what is fetched from where and how it is verified."""
    assert set(ds.DATASETS) == {"mnist", "fashion_mnist", "kmnist", "cifar10", "cifar100", "stl10"}
    for spec in ds.DATASETS.values():
        for f in spec.files:
            assert f.urls and (f.md5 or f.sha256), f.name
            assert f.sha256 is None or len(f.sha256) == 64
            assert f.md5 is None or len(f.md5) == 32
    assert ds.DATASETS["mnist"].files[0].urls[0].startswith("https://ossci-datasets.s3.amazonaws.com/")
    assert all("yann.lecun.com" not in u for s in ds.DATASETS.values() for f in s.files for u in f.urls)
    payloads = [f.payload_sha256 for s in ds.DATASETS.values() for f in s.files if f.payload_sha256]
    assert len(payloads) == 4  # Fashion-MNIST's, the only ones DESIGN.md gives


# ----------------------------------------------------------------------------------------------------------------
# canvas helpers
# ----------------------------------------------------------------------------------------------------------------


def test_to_canvas_keeps_the_shape_and_scales_to_unit_range():
    """uint8 0..255 maps to float32 0..1 without changing the shape."""
    x = np.array([[[[0], [255]], [[51], [102]]]], np.uint8)
    c = ds.to_canvas(x)
    assert c.dtype == np.float32 and c.shape == x.shape
    np.testing.assert_allclose(c.ravel(), [0, 1, 0.2, 0.4], rtol=1e-6)


def test_pad_to_32_rgb_pads_two_pixels_and_replicates_channels():
    """Curriculum canvas: 28x28x1 becomes 32x32x3 with a 2-px black border and identical channels."""
    x = np.full((2, 28, 28, 1), 255, np.uint8)
    c = ds.pad_to_32_rgb(x)
    assert c.shape == (2, 32, 32, 3) and c.dtype == np.float32
    assert (c[:, 2:30, 2:30] == 1).all() and c[:, :2].sum() == 0 and c[:, :, 30:].sum() == 0
    assert (c[..., 0] == c[..., 2]).all()
    np.testing.assert_array_equal(ds.to_canvas(x, rgb32=True), c)
    cifar = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(ds.pad_to_32_rgb(cifar), cifar / np.float32(255))
    with pytest.raises(ValueError, match="pad_to_32_rgb expects"):
        ds.pad_to_32_rgb(np.zeros((1, 96, 96, 3), np.uint8))


# ----------------------------------------------------------------------------------------------------------------
# the real Debian copy
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.skipif(
    not SYSTEM_FASHION.is_dir(),
    reason=f"{SYSTEM_FASHION} is absent (install Debian's dataset-fashion-mnist to run this test)",
)
def test_the_real_debian_fashion_mnist_loads_with_the_right_shapes_and_balanced_classes():
    """The one real dataset available offline: recognised by payload hash, 60000/10000 images, 6000 per class."""
    xtr, ytr = ds.load("fashion_mnist", "train")
    xte, yte = ds.load("fashion_mnist", "test")
    assert ds.locate("fashion_mnist", "train").origin == "system"
    assert xtr.shape == (60000, 28, 28, 1) and xte.shape == (10000, 28, 28, 1)
    assert xtr.dtype == np.uint8 and ytr.dtype == np.int32
    assert ytr.min() == 0 and ytr.max() == 9 and yte.min() == 0 and yte.max() == 9
    assert (np.bincount(ytr, minlength=10) == 6000).all()
    assert (np.bincount(yte, minlength=10) == 1000).all()
    assert 50 < xtr.mean() < 100  # mostly dark background, as in Fashion-MNIST (mean ~72.9)
