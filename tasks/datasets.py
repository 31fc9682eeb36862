"""Real image datasets (MNIST, Fashion-MNIST, KMNIST, CIFAR-10, CIFAR-100, STL-10), decoded with numpy only.

``load(name, split)`` returns ``(images, labels)``: ``images`` uint8 ``(N, H, W, C)`` (C = 1 for the MNIST
family, 3 for CIFAR and STL-10), ``labels`` int32 ``(N,)``, both read-only and cached in memory per process.
``to_canvas`` / ``pad_to_32_rgb`` turn them into float32 in [0, 1] (the curriculum's 32x32x3 canvas).

Lookup order (the first place that has a complete, valid copy wins):

1. ``data_dir=`` if given, else ``$LOCALRULES_DATA_DIR`` (several dirs may be joined with ``os.pathsep``):
   files as ``<dir>/<dataset>/<file>`` (``<dataset>`` any of ``DATASETS[name].dirnames``, e.g. ``mnist``,
   ``fashion-mnist``, ``FashionMNIST/raw``) or directly in ``<dir>`` (IDX files, archives, extracted folders;
   loose CIFAR/STL batch files only under ``<dir>/<dataset>/``). IDX files may be gzipped or decompressed
   (detected from the content, not the suffix). These files are checked for format only (magic, dimensions,
   byte counts), so re-compressed or hand-made copies work; a file whose sha256 identifies it as a *different*
   dataset's or split's file (MNIST and Fashion-MNIST share file names) is refused.
2. System copies recognised by the sha256 of the **decompressed payload**: Debian's ``dataset-fashion-mnist``
   in ``/usr/share/datasets/fashion-mnist`` (Debian rewrote the gzip headers, so only payload hashes match).
   A lookalike whose payload hash differs is ignored.
3. The download cache ``$LOCALRULES_CACHE_DIR`` or ``pooch.os_cache("localrules")``, ``<cache>/<dataset>/``,
   accepted only when the archive hash matches.
4. Download with pooch from the canonical mirrors in order, verified by archive hash (pooch writes to a temporary
   file and renames it, so no partial file is ever left; STL-10 members are extracted the same way, into
   ``<cache>/stl10/extracted/``). Disabled by ``LOCALRULES_OFFLINE=1`` or ``download=False``.

To provide files offline, put the distributed files (names in ``DATASETS[name].files``; URLs alongside) in
``$LOCALRULES_DATA_DIR/<dataset>/`` and set ``LOCALRULES_OFFLINE=1``:

* MNIST / Fashion-MNIST / KMNIST: ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`` (MNIST also ``mnist.npz``);
* CIFAR-10: ``cifar-10-python.tar.gz`` or its folder ``cifar-10-batches-py/`` (also the binary version);
* CIFAR-100: ``cifar-100-python.tar.gz`` or ``cifar-100-python/`` (also the binary version);
* STL-10: ``stl10_binary.tar.gz`` or ``stl10_binary/`` with ``{train,test}_{X,y}.bin``, ``unlabeled_X.bin``.

Hash provenance: archive md5s as in torchvision, archive sha256s as in TFDS, the MNIST ``.npz`` sha256 as in Keras,
Fashion-MNIST payload sha256s (checked against Debian's copy); all of these are the table of DESIGN.md
section 10. The binary CIFAR archives and ``mnist.npz`` are accepted when present but never downloaded. KMNIST (not in DESIGN.md) uses torchvision's md5s and the sha256s of torchvision's dataset
prototypes. Payload hashes are given only where known (Fashion-MNIST); none is invented.

Formats: IDX (big-endian header ``00 00 08 ndim``, dims, then bytes); CIFAR python pickles (``data_batch_1..5``,
``test_batch``; CIFAR-100 ``train``, ``test``, with ``fine_labels`` by default and ``coarse_labels`` with
``coarse=True``), read with an unpickler that only admits numpy arrays; CIFAR binary records; STL-10 binary, stored
column-major (``(N, C, W, H)`` on disk) with 1-based labels, returned as ``(N, 96, 96, 3)`` with labels 0..9.
STL-10's ``unlabeled`` split returns labels of -1.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import io
import os
import pickle
import re
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path
from typing import Iterable

import numpy as np

__all__ = [
    "DATASETS",
    "DatasetError",
    "DatasetSpec",
    "FileSpec",
    "Source",
    "cache_dir",
    "clear_cache",
    "load",
    "locate",
    "pad_to_32_rgb",
    "read_idx",
    "to_canvas",
]

ENV_DATA_DIR = "LOCALRULES_DATA_DIR"
ENV_OFFLINE = "LOCALRULES_OFFLINE"
ENV_CACHE_DIR = "LOCALRULES_CACHE_DIR"


class DatasetError(Exception):
    """A dataset could not be found, downloaded or decoded; the message says what to do about it."""


# --------------------------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FileSpec:
    """One distributed file: its name, its mirrors (tried in order) and the hashes known for it."""

    name: str
    urls: tuple[str, ...] = ()
    md5: str | None = None  # of the file as distributed (torchvision)
    sha256: str | None = None  # of the file as distributed (TFDS / Keras)
    payload_sha256: str | None = None  # of the decompressed content (recognises re-gzipped copies)
    size: int | None = None  # bytes, where known
    download: bool = True  # False: accepted when present, never fetched

    @property
    def known_hash(self) -> str | None:
        """The hash pooch verifies a download against (sha256 preferred)."""
        if self.sha256:
            return f"sha256:{self.sha256}"
        if self.md5:
            return f"md5:{self.md5}"
        return None


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """How a dataset is distributed and what ``load`` returns for it."""

    name: str
    title: str
    format: str  # "idx" | "cifar10" | "cifar100" | "stl10"
    image_shape: tuple[int, int, int]
    num_classes: int
    splits: dict[str, int]  # split -> number of examples in the canonical files
    files: tuple[FileSpec, ...]
    dirnames: tuple[str, ...]  # sub-folders of a data dir searched for this dataset
    system_dirs: tuple[str, ...] = ()
    inner_md5: dict[str, str] = dataclasses.field(default_factory=dict)  # archive members (torchvision)
    classes: tuple[str, ...] | None = None
    head: str | None = None  # curriculum head this dataset trains (curriculum.md section 2)
    homepage: str = ""

    def file(self, name: str) -> FileSpec:
        for f in self.files:
            if f.name == name:
                return f
        raise KeyError(name)


_IDX_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_ORDER = [s for split in ("train", "test") for s in _IDX_STEMS[split]]


def _idx_files(
    mirrors: Iterable[str],
    md5: Iterable[str | None],
    sha256: Iterable[str | None],
    payload: Iterable[str | None] = (None,) * 4,
) -> tuple[FileSpec, ...]:
    mirrors = tuple(mirrors)
    return tuple(
        FileSpec(f"{stem}.gz", tuple(m + stem + ".gz" for m in mirrors), m5, s, p)
        for stem, m5, s, p in zip(_IDX_ORDER, md5, sha256, payload)
    )


_TORONTO = "https://www.cs.toronto.edu/~kriz/"

DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
        title="MNIST",
        format="idx",
        image_shape=(28, 28, 1),
        num_classes=10,
        splits={"train": 60000, "test": 10000},
        files=_idx_files(
            (
                "https://ossci-datasets.s3.amazonaws.com/mnist/",
                "https://storage.googleapis.com/cvdf-datasets/mnist/",
            ),
            (
                "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                "d53e105ee54ea40749a09fcbcd1e9432",
                "9fb629c4189551a2d022fa330f9573f3",
                "ec29112dd5afa0611ce80d1b7f02629c",
            ),
            (
                "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
                "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
                "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
                "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
            ),
        )
        + (
            FileSpec(
                "mnist.npz",
                ("https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz",),
                sha256="731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1",
                download=False,
            ),
        ),
        dirnames=("mnist", "MNIST", "MNIST/raw"),
        classes=tuple("0123456789"),
        head="digit",
        homepage="http://yann.lecun.com/exdb/mnist/ (403; mirrors used)",
    ),
    "fashion_mnist": DatasetSpec(
        name="fashion_mnist",
        title="Fashion-MNIST",
        format="idx",
        image_shape=(28, 28, 1),
        num_classes=10,
        splits={"train": 60000, "test": 10000},
        files=_idx_files(
            ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
            (
                "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                "25c81989df183df01b3e8a0aad5dffbe",
                "bef4ecab320f06d8554ea6380940ec79",
                "bb300cfdad3c16e7a12a480ee83cd310",
            ),
            (
                "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
                "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
                "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
                "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
            ),
            (
                "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
                "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
                "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
                "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
            ),
        ),
        dirnames=("fashion_mnist", "fashion-mnist", "FashionMNIST", "FashionMNIST/raw"),
        system_dirs=("/usr/share/datasets/fashion-mnist",),
        classes=(
            "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
            "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
        ),
        head="fashion",
        homepage="https://github.com/zalandoresearch/fashion-mnist",
    ),
    "kmnist": DatasetSpec(
        name="kmnist",
        title="Kuzushiji-MNIST",
        format="idx",
        image_shape=(28, 28, 1),
        num_classes=10,
        splits={"train": 60000, "test": 10000},
        files=_idx_files(
            ("http://codh.rois.ac.jp/kmnist/dataset/kmnist/",),
            (
                "bdb82020997e1d708af4cf47b453dcf7",
                "e144d726b3acfaa3e44228e80efcd344",
                "5c965bf0a639b31b8f53240b1b52f4d7",
                "7320c461ea6c1c855c0b718fb2a4b134",
            ),
            (
                "51467d22d8cc72929e2a028a0428f2086b092bb31cfb79c69cc0a90ce135fde4",
                "e38f9ebcd0f3ebcdec7fc8eabdcdaef93bb0df8ea12bee65224341c8183d8e17",
                "edd7a857845ad6bb1d0ba43fe7e794d164fe2dce499a1694695a792adfac43c5",
                "20bb9a0ef54c7db3efc55a92eef5582c109615df22683c380526788f98e42a1c",
            ),
        ),
        dirnames=("kmnist", "KMNIST", "KMNIST/raw"),
        classes=("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
        homepage="https://github.com/rois-codh/kmnist",
    ),
    "cifar10": DatasetSpec(
        name="cifar10",
        title="CIFAR-10",
        format="cifar10",
        image_shape=(32, 32, 3),
        num_classes=10,
        splits={"train": 50000, "test": 10000},
        files=(
            FileSpec(
                "cifar-10-python.tar.gz",
                (_TORONTO + "cifar-10-python.tar.gz",),
                md5="c58f30108f718f92721af3b95e74349a",
                sha256="6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
            ),
            FileSpec(
                "cifar-10-binary.tar.gz",
                (_TORONTO + "cifar-10-binary.tar.gz",),
                sha256="c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
                size=170052171,
                download=False,
            ),
        ),
        dirnames=("cifar10", "cifar-10", "CIFAR10"),
        classes=(
            "airplane", "automobile", "bird", "cat", "deer",
            "dog", "frog", "horse", "ship", "truck",
        ),
        head="object10",
        homepage="https://www.cs.toronto.edu/~kriz/cifar.html",
    ),
    "cifar100": DatasetSpec(
        name="cifar100",
        title="CIFAR-100",
        format="cifar100",
        image_shape=(32, 32, 3),
        num_classes=100,  # 20 with coarse=True
        splits={"train": 50000, "test": 10000},
        files=(
            FileSpec(
                "cifar-100-python.tar.gz",
                (_TORONTO + "cifar-100-python.tar.gz",),
                md5="eb9058c3a382ffc7106e4002c42a8d85",
                sha256="85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7",
            ),
            FileSpec(
                "cifar-100-binary.tar.gz",
                (_TORONTO + "cifar-100-binary.tar.gz",),
                sha256="58a81ae192c23a4be8b1804d68e518ed807d710a4eb253b1f2a199162a40d8ec",
                size=168513733,
                download=False,
            ),
        ),
        dirnames=("cifar100", "cifar-100", "CIFAR100"),
        homepage="https://www.cs.toronto.edu/~kriz/cifar.html",
    ),
    "stl10": DatasetSpec(
        name="stl10",
        title="STL-10",
        format="stl10",
        image_shape=(96, 96, 3),
        num_classes=10,
        splits={"train": 5000, "test": 8000, "unlabeled": 100000},
        files=(
            FileSpec(
                "stl10_binary.tar.gz",
                ("http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz",),
                md5="91f7769df0f17e558f3565bffb0c7dfb",
                sha256="f31fd99273a1acb8609c8db427cebb1de3f71de77758cdc0e22956e1289b9866",
                size=2640397119,
            ),
        ),
        dirnames=("stl10", "stl-10", "STL10"),
        inner_md5={
            "train_X.bin": "918c2871b30a85fa023e0c44e0bee87f",
            "train_y.bin": "5a34089d4802c674881badbb80307741",
            "unlabeled_X.bin": "5242ba1fed5e4be9e1e742405eb56ca4",
            "test_X.bin": "7f263ba9f9e0b06b93213547f721ac82",
            "test_y.bin": "36f9794fa4beb8a2c72628de14fa638e",
        },
        classes=("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"),
        homepage="https://cs.stanford.edu/~acoates/stl10/",
    ),
}

_ALIASES = {
    "mnist": "mnist",
    "fashionmnist": "fashion_mnist",
    "fmnist": "fashion_mnist",
    "kmnist": "kmnist",
    "kuzushijimnist": "kmnist",
    "cifar10": "cifar10",
    "cifar100": "cifar100",
    "stl10": "stl10",
}

# Archive layouts: (kind, archive name, folder inside the archive, split -> member names).
_ARCHIVE_LAYOUTS: dict[str, tuple[tuple[str, str, str, dict[str, tuple[str, ...]]], ...]] = {
    "cifar10": (
        ("cifar_py", "cifar-10-python.tar.gz", "cifar-10-batches-py",
         {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}),
        ("cifar_bin", "cifar-10-binary.tar.gz", "cifar-10-batches-bin",
         {"train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)), "test": ("test_batch.bin",)}),
    ),
    "cifar100": (
        ("cifar_py", "cifar-100-python.tar.gz", "cifar-100-python", {"train": ("train",), "test": ("test",)}),
        ("cifar_bin", "cifar-100-binary.tar.gz", "cifar-100-binary",
         {"train": ("train.bin",), "test": ("test.bin",)}),
    ),
    "stl10": (
        ("stl_bin", "stl10_binary.tar.gz", "stl10_binary",
         {"train": ("train_X.bin", "train_y.bin"), "test": ("test_X.bin", "test_y.bin"),
          "unlabeled": ("unlabeled_X.bin",)}),
    ),
}

_STL_IMAGE_BYTES = 3 * 96 * 96
_STL_SIZES = {  # canonical member sizes; an extracted member of this size is md5-checked
    "train_X.bin": 5000 * _STL_IMAGE_BYTES,
    "train_y.bin": 5000,
    "test_X.bin": 8000 * _STL_IMAGE_BYTES,
    "test_y.bin": 8000,
    "unlabeled_X.bin": 100000 * _STL_IMAGE_BYTES,
}


# --------------------------------------------------------------------------------------------------------------
# Small utilities
# --------------------------------------------------------------------------------------------------------------


def _spec(name: str) -> DatasetSpec:
    key = _ALIASES.get(re.sub(r"[^a-z0-9]", "", str(name).lower()))
    if key is None or key not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; known datasets: {', '.join(sorted(DATASETS))}")
    return DATASETS[key]


def _split(spec: DatasetSpec, split: str) -> str:
    s = {"t10k": "test"}.get(str(split).lower(), str(split).lower())
    if s not in spec.splits:
        raise DatasetError(f"{spec.title} has no split {split!r}; its splits are {', '.join(spec.splits)}")
    return s


def _offline(download: bool | None) -> bool:
    if download is not None:
        return not download
    return os.environ.get(ENV_OFFLINE, "").strip().lower() in {"1", "true", "yes", "on"}


def cache_dir() -> Path:
    """The download cache: ``$LOCALRULES_CACHE_DIR`` or ``pooch.os_cache("localrules")``."""
    env = os.environ.get(ENV_CACHE_DIR)
    if env:
        return Path(env).expanduser()
    import pooch  # deferred: only needed when the cache is consulted

    return Path(pooch.os_cache("localrules"))


def _stat_key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return (str(path), st.st_size, st.st_mtime_ns)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror or exc}") from None


def _maybe_gunzip(raw: bytes, path: Path, advice: str) -> bytes:
    """The payload of ``raw``: gunzipped when it starts with the gzip magic, else as is."""
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as exc:
        raise DatasetError(f"{path}: the gzip stream is truncated or corrupt ({exc}). {advice}") from None


def _hash_file(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


@functools.lru_cache(maxsize=256)
def _hash_file_cached(key: tuple[str, int, int], algo: str) -> str:
    return _hash_file(Path(key[0]), algo)


@functools.lru_cache(maxsize=64)
def _payload_sha256_cached(key: tuple[str, int, int]) -> str | None:
    """sha256 of the decompressed content, or None when the file cannot be decompressed."""
    path = Path(key[0])
    try:
        raw = path.read_bytes()
        payload = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (OSError, EOFError, zlib.error):
        return None
    return hashlib.sha256(payload).hexdigest()


def _archive_hash_ok(path: Path, fs: FileSpec) -> tuple[bool, str]:
    """Whether ``path`` matches ``fs``'s archive hash; with a description of the mismatch."""
    key = _stat_key(path)
    if fs.sha256:
        got = _hash_file_cached(key, "sha256")
        return got == fs.sha256, f"sha256 {got} != expected {fs.sha256}"
    if fs.md5:
        got = _hash_file_cached(key, "md5")
        return got == fs.md5, f"md5 {got} != expected {fs.md5}"
    return True, ""


def _urls_of(spec: DatasetSpec, filename: str) -> tuple[str, ...]:
    for f in spec.files:
        if f.name == filename or f.name == filename + ".gz" or f.name.removesuffix(".gz") == filename:
            return f.urls
    return tuple(f.urls[0] for f in spec.files if f.urls and f.download)


def _advice(spec: DatasetSpec, path: Path) -> str:
    urls = _urls_of(spec, path.name)
    where = f" from {urls[0]}" if urls else ""
    try:
        in_cache = cache_dir().resolve() in path.resolve().parents
    except Exception:  # noqa: BLE001 - advice only
        in_cache = False
    if in_cache:
        return f"Delete it (rm '{path}'); the next load with downloads enabled fetches it again{where}."
    return f"Delete it and download it again{where} (or remove it so that another copy is used)."


def _known_identity(digest: str) -> tuple[str, str] | None:
    """(dataset name, file name) of the distributed file whose archive or payload sha256 is ``digest``."""
    for ds in DATASETS.values():
        for f in ds.files:
            if digest in (f.sha256, f.payload_sha256):
                return ds.name, f.name
    return None


def _check_identity(spec: DatasetSpec, expected: str, path: Path, raw: bytes, payload: bytes) -> None:
    """Refuse a file whose hash says it is another dataset's or another split's file (e.g. Fashion-MNIST
    files placed in a shared data dir and picked up for MNIST)."""
    digests = {hashlib.sha256(raw).hexdigest()}
    if payload is not raw:
        digests.add(hashlib.sha256(payload).hexdigest())
    for d in digests:
        who = _known_identity(d)
        if who is None:
            continue
        ds_name, fname = who
        if ds_name == spec.name and fname.removesuffix(".gz") == expected.removesuffix(".gz"):
            return
        raise DatasetError(
            f"{path}: its sha256 identifies it as {DATASETS[ds_name].title}'s {fname}, not "
            f"{spec.title}'s {expected}. Remove it from there and put the right file in its place."
        )


# --------------------------------------------------------------------------------------------------------------
# Decoders
# --------------------------------------------------------------------------------------------------------------

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def _parse_idx(payload: bytes, path: Path, advice: str) -> np.ndarray:
    if len(payload) < 4:
        raise DatasetError(f"{path}: not an IDX file (only {len(payload)} bytes). {advice}")
    zero, dtype_code, ndim = payload[0:2], payload[2], payload[3]
    if zero != b"\x00\x00" or dtype_code not in _IDX_DTYPES or not 1 <= ndim <= 4:
        raise DatasetError(
            f"{path}: bad IDX magic number 0x{payload[:4].hex()} (expected 0x000008 followed by the number "
            f"of dimensions, e.g. 0x00000803 for images, 0x00000801 for labels). {advice}"
        )
    header = 4 + 4 * ndim
    if len(payload) < header:
        raise DatasetError(f"{path}: truncated IDX header ({len(payload)} of {header} bytes). {advice}")
    dims = tuple(int(d) for d in np.frombuffer(payload, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[dtype_code])
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(payload) != expected:
        what = "truncated" if len(payload) < expected else "has trailing bytes, wrong length"
        raise DatasetError(
            f"{path}: {what}: the IDX header says shape {dims} ({expected} bytes) but the "
            f"{'decompressed ' if path.suffix == '.gz' else ''}content has {len(payload)} bytes. {advice}"
        )
    return np.frombuffer(payload, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Decode one IDX file (gzipped or raw), validating magic number, dimensions and byte count."""
    path = Path(path)
    advice = "Delete it and download it again."
    return _parse_idx(_maybe_gunzip(_read(path), path, advice), path, advice)


def _decode_idx(spec: DatasetSpec, split: str, img_path: Path, lbl_path: Path) -> tuple[np.ndarray, np.ndarray]:
    out = []
    for path, stem, ndim in ((img_path, _IDX_STEMS[split][0], 3), (lbl_path, _IDX_STEMS[split][1], 1)):
        advice = _advice(spec, path)
        raw = _read(path)
        payload = _maybe_gunzip(raw, path, advice)
        arr = _parse_idx(payload, path, advice)
        if arr.dtype != np.uint8 or arr.ndim != ndim:
            raise DatasetError(
                f"{path}: expected a {ndim}-d uint8 IDX file ({'images' if ndim == 3 else 'labels'}), "
                f"found {arr.ndim}-d {arr.dtype}. {advice}"
            )
        _check_identity(spec, stem, path, raw, payload)
        out.append(arr)
    images, labels = out
    h, w, _ = spec.image_shape
    if images.shape[1:] != (h, w):
        raise DatasetError(
            f"{img_path}: images are {images.shape[1]}x{images.shape[2]}, {spec.title} has {h}x{w}. "
            f"{_advice(spec, img_path)}"
        )
    if images.shape[0] != labels.shape[0]:
        raise DatasetError(
            f"{img_path} has {images.shape[0]} images but {lbl_path} has {labels.shape[0]} labels; "
            f"they must come from the same release. {_advice(spec, lbl_path)}"
        )
    return images[..., None], labels.astype(np.int32)


def _decode_npz(spec: DatasetSpec, split: str, path: Path) -> tuple[np.ndarray, np.ndarray]:
    advice = _advice(spec, path)
    sfx = "train" if split == "train" else "test"
    try:
        with np.load(path, allow_pickle=False) as z:
            images, labels = np.asarray(z[f"x_{sfx}"]), np.asarray(z[f"y_{sfx}"])
    except Exception as exc:  # noqa: BLE001 - zipfile, KeyError, ValueError, ...
        raise DatasetError(f"{path}: not a valid Keras MNIST .npz ({type(exc).__name__}: {exc}). {advice}") from None
    if images.dtype != np.uint8 or images.shape[1:] != spec.image_shape[:2] or labels.shape != images.shape[:1]:
        raise DatasetError(f"{path}: unexpected arrays {images.shape} {images.dtype} / {labels.shape}. {advice}")
    return images[..., None], labels.astype(np.int32)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that admits only what CIFAR batches contain (numpy arrays), so a hostile file cannot run code."""

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):  # noqa: ANN201
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module.startswith("numpy") and name in ("_reconstruct", "scalar"):
            core = getattr(np, "_core", None) or np.core  # numpy 2 moved numpy.core to numpy._core
            return getattr(core.multiarray, name)
        return super().find_class(module, name)


def _field(d: dict, key: str):  # noqa: ANN202 - python-2 pickles have bytes keys
    if key in d:
        return d[key]
    return d.get(key.encode())


def _decode_cifar_py(blob: bytes, where: str, spec: DatasetSpec, coarse: bool, advice: str):  # noqa: ANN202
    try:
        d = _NumpyOnlyUnpickler(io.BytesIO(blob), encoding="bytes").load()
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a bad file
        raise DatasetError(f"{where}: not a valid CIFAR python batch ({type(exc).__name__}: {exc}). {advice}") from None
    if not isinstance(d, dict):
        raise DatasetError(f"{where}: not a CIFAR batch (a pickled {type(d).__name__}, not a dict). {advice}")
    key = "labels" if spec.format == "cifar10" else ("coarse_labels" if coarse else "fine_labels")
    data, labels = _field(d, "data"), _field(d, key)
    if data is None or labels is None:
        raise DatasetError(f"{where}: CIFAR batch lacks the 'data' or '{key}' entry. {advice}")
    data = np.asarray(data)
    labels = np.asarray(labels)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or labels.shape != data.shape[:1]:
        raise DatasetError(
            f"{where}: CIFAR batch has data {data.shape} {data.dtype} and {labels.shape[0]} labels "
            f"(expected (N, 3072) uint8 and N labels). {advice}"
        )
    return data, labels


def _decode_cifar_bin(blob: bytes, where: str, spec: DatasetSpec, coarse: bool, advice: str):  # noqa: ANN202
    nlab = 1 if spec.format == "cifar10" else 2
    rec = nlab + 3072
    if len(blob) == 0 or len(blob) % rec:
        raise DatasetError(
            f"{where}: truncated or wrong length: {len(blob)} bytes is not a whole number of {rec}-byte "
            f"CIFAR records. {advice}"
        )
    arr = np.frombuffer(blob, np.uint8).reshape(-1, rec)
    label_col = 0 if (nlab == 1 or coarse) else 1
    return arr[:, nlab:], arr[:, label_col]


def _tar_members(archive: Path, folder: str, names: tuple[str, ...], advice: str) -> dict[str, bytes]:
    """Read the named members (found under ``folder/`` or at top level) of a tar archive in one pass."""
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            for m in tar:
                parts = m.name.strip("/").split("/")
                if m.isfile() and parts[-1] in names and (len(parts) == 1 or parts[-2] == folder):
                    found[parts[-1]] = tar.extractfile(m).read()  # type: ignore[union-attr]
                    if len(found) == len(names):
                        break
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise DatasetError(f"{archive}: the archive is truncated or corrupt ({exc}). {advice}") from None
    missing = [n for n in names if n not in found]
    if missing:
        raise DatasetError(f"{archive}: archive lacks {', '.join(f'{folder}/{n}' for n in missing)}. {advice}")
    return found


def _decode_cifar(spec: DatasetSpec, split: str, kind: str, paths: tuple[Path, ...], coarse: bool):  # noqa: ANN202
    layout = next(lay for lay in _ARCHIVE_LAYOUTS[spec.format] if lay[0] == kind.removesuffix("_tar"))
    _, _, folder, members = layout
    names = members[split]
    if kind.endswith("_tar"):
        advice = _advice(spec, paths[0])
        blobs = _tar_members(paths[0], folder, names, advice)
        items = [(f"{paths[0]}:{folder}/{n}", blobs[n], advice) for n in names]
    else:
        items = [(str(p), _read(p), _advice(spec, p)) for p in paths]
    decode = _decode_cifar_py if kind.startswith("cifar_py") else _decode_cifar_bin
    datas, labelss = zip(*(decode(blob, where, spec, coarse, adv) for where, blob, adv in items))
    data = np.concatenate(datas)
    labels = np.concatenate(labelss).astype(np.int32)
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, labels


def _decode_stl(spec: DatasetSpec, split: str, paths: tuple[Path, ...]) -> tuple[np.ndarray, np.ndarray]:
    x_path = paths[0]
    advice = _advice(spec, x_path)
    raw = np.fromfile(x_path, dtype=np.uint8)
    if raw.size == 0 or raw.size % _STL_IMAGE_BYTES:
        raise DatasetError(
            f"{x_path}: truncated or wrong length: {raw.size} bytes is not a whole number of 96x96x3 "
            f"images ({_STL_IMAGE_BYTES} bytes each). {advice}"
        )
    # On disk each image is (C, W, H) in C order, i.e. column-major per channel: (N, C, W, H) -> (N, H, W, C).
    images = raw.reshape(-1, 3, 96, 96).transpose(0, 3, 2, 1)
    n = images.shape[0]
    if split == "unlabeled":
        return images, np.full((n,), -1, np.int32)
    y_path = paths[1]
    y = np.fromfile(y_path, dtype=np.uint8)
    if y.size != n:
        raise DatasetError(
            f"{y_path}: has {y.size} labels but {x_path} has {n} images; wrong length (truncated, or files "
            f"from different splits). {_advice(spec, y_path)}"
        )
    if n and (y.min() < 1 or y.max() > spec.num_classes):
        raise DatasetError(
            f"{y_path}: labels must be 1..{spec.num_classes} (STL-10 labels are 1-based), found "
            f"{int(y.min())}..{int(y.max())}. {_advice(spec, y_path)}"
        )
    return images, (y.astype(np.int32) - 1)


# --------------------------------------------------------------------------------------------------------------
# Lookup
# --------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Source:
    """Where ``load`` found a split: ``kind`` of layout, the files it reads, and the lookup step (``origin``)."""

    dataset: str
    split: str
    kind: str  # "idx" | "npz" | "cifar_py" | "cifar_py_tar" | "cifar_bin" | "cifar_bin_tar" | "stl_bin"
    paths: tuple[Path, ...]
    origin: str  # "data_dir" | "system" | "cache" | "download"


def _user_bases(data_dir: str | os.PathLike | None) -> tuple[list[Path], str]:
    if data_dir is not None:
        return [Path(data_dir).expanduser()], "data_dir argument"
    env = os.environ.get(ENV_DATA_DIR, "")
    bases = [Path(p).expanduser() for p in env.split(os.pathsep) if p]
    return bases, f"${ENV_DATA_DIR}"


def _first_existing(folder: Path, names: Iterable[str]) -> Path | None:
    for n in names:
        p = folder / n
        if p.is_file():
            return p
    return None


def _find_in_dir(spec: DatasetSpec, split: str, folder: Path, origin: str, bare_ok: bool,
                 notes: list[str]) -> Source | None:
    """A complete copy of ``split`` in ``folder`` in any accepted layout, or None."""
    if not folder.is_dir():
        return None
    if spec.format == "idx":
        found = [_first_existing(folder, (f"{stem}.gz", stem)) for stem in _IDX_STEMS[split]]
        if all(found):
            return Source(spec.name, split, "idx", tuple(found), origin)  # type: ignore[arg-type]
        if any(found):
            have = next(p for p in found if p)
            miss = [s for s, p in zip(_IDX_STEMS[split], found) if not p]
            notes.append(f"{folder}: found {have.name} but not {', '.join(m + '[.gz]' for m in miss)}")
        if "mnist.npz" in {f.name for f in spec.files} and (folder / "mnist.npz").is_file():
            return Source(spec.name, split, "npz", (folder / "mnist.npz",), origin)
        return None
    for kind, archive, inner, members in _ARCHIVE_LAYOUTS[spec.format]:
        names = members[split]
        homes = [folder / inner] + ([folder] if bare_ok else [])
        for home in homes:
            paths = [home / n for n in names]
            if all(p.is_file() for p in paths):
                return Source(spec.name, split, kind, tuple(paths), origin)
        if (folder / archive).is_file():
            if spec.format == "stl10":
                paths = _extract_members(spec, folder / archive, inner, names)
                return Source(spec.name, split, kind, paths, origin)
            return Source(spec.name, split, kind + "_tar", (folder / archive,), origin)
    return None


def _find_system(spec: DatasetSpec, split: str, folder: Path, notes: list[str]) -> Source | None:
    """A system copy, accepted only if every file's decompressed payload has the known sha256."""
    if spec.format != "idx" or not folder.is_dir():
        return None
    paths = []
    for stem in _IDX_STEMS[split]:
        fs = spec.file(f"{stem}.gz")
        p = _first_existing(folder, (f"{stem}.gz", stem))
        if p is None or fs.payload_sha256 is None:
            return None
        got = _payload_sha256_cached(_stat_key(p))
        if got != fs.payload_sha256:
            notes.append(
                f"ignored {p}: decompressed sha256 {got or '(not decompressible)'} does not match "
                f"{spec.title}'s {fs.payload_sha256}"
            )
            return None
        paths.append(p)
    return Source(spec.name, split, "idx", tuple(paths), "system")


def _needed_files(spec: DatasetSpec, split: str) -> list[FileSpec]:
    if spec.format == "idx":
        return [spec.file(f"{stem}.gz") for stem in _IDX_STEMS[split]]
    return [f for f in spec.files if f.download]


def _find_cached(spec: DatasetSpec, split: str, folder: Path, notes: list[str], corrupt: list[str]) -> Source | None:
    """Files in the download cache, accepted only when their archive hash matches."""
    if not folder.is_dir():
        return None
    if spec.format == "stl10":
        extracted = _find_extracted(spec, split, folder / spec.files[0].name)
        if extracted is not None:
            return Source(spec.name, split, "stl_bin", extracted, "cache")
    paths = []
    for fs in _needed_files(spec, split):
        p = folder / fs.name
        if not p.is_file():
            return None
        ok, why = _archive_hash_ok(p, fs)
        if not ok:
            corrupt.append(f"{p} ({why})")
            return None
        paths.append(p)
    return _source_from_downloads(spec, split, paths, "cache")


def _source_from_downloads(spec: DatasetSpec, split: str, paths: list[Path], origin: str) -> Source:
    if spec.format == "idx":
        return Source(spec.name, split, "idx", tuple(paths), origin)
    kind, _, inner, members = _ARCHIVE_LAYOUTS[spec.format][0]
    if spec.format == "stl10":
        return Source(spec.name, split, kind,
                      _extract_members(spec, paths[0], inner, members[split]), origin)
    return Source(spec.name, split, kind + "_tar", (paths[0],), origin)


def _extraction_dir(archive: Path) -> Path:
    """``<cache>/stl10/extracted/<hash of the archive's path>/<size>-<mtime>/``: a changed archive gets a new one."""
    st = archive.stat()
    tag = hashlib.sha1(str(archive.resolve()).encode()).hexdigest()[:16]
    return cache_dir() / "stl10" / "extracted" / tag / f"{st.st_size}-{st.st_mtime_ns}"


def _find_extracted(spec: DatasetSpec, split: str, archive: Path) -> tuple[Path, ...] | None:
    if not archive.is_file():
        return None
    _, _, _, members = _ARCHIVE_LAYOUTS[spec.format][0]
    out = _extraction_dir(archive)
    paths = tuple(out / n for n in members[split])
    return paths if all(p.is_file() for p in paths) else None


def _extract_members(spec: DatasetSpec, archive: Path, folder: str, names: tuple[str, ...]) -> tuple[Path, ...]:
    """Extract ``names`` from ``archive`` into the cache (temp file + os.replace, never a partial file).

    A member of the canonical size is checked against its known md5 while it is copied.
    """
    out = _extraction_dir(archive)
    targets = {n: out / n for n in names}
    todo = {n for n, p in targets.items() if not p.is_file()}
    if not todo:
        return tuple(targets[n] for n in names)
    advice = _advice(spec, archive)
    for stale in out.parent.glob("*-*"):  # members of an older version of this archive: free the disk
        if stale != out and stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "r:*") as tar:
            for m in tar:
                parts = m.name.strip("/").split("/")
                if not (m.isfile() and parts[-1] in todo and (len(parts) == 1 or parts[-2] == folder)):
                    continue
                name = parts[-1]
                src = tar.extractfile(m)
                md5 = hashlib.md5()
                fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=out)
                try:
                    with os.fdopen(fd, "wb") as dst:
                        for chunk in iter(lambda: src.read(1 << 22), b""):  # type: ignore[union-attr]
                            md5.update(chunk)
                            dst.write(chunk)
                    if m.size == _STL_SIZES.get(name) and spec.inner_md5.get(name) not in (None, md5.hexdigest()):
                        raise DatasetError(
                            f"{archive}: member {m.name} has md5 {md5.hexdigest()}, expected "
                            f"{spec.inner_md5[name]}. {advice}"
                        )
                    os.replace(tmp, targets[name])
                except BaseException:
                    if os.path.exists(tmp):
                        os.unlink(tmp)
                    raise
                todo.discard(name)
                if not todo:
                    break
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise DatasetError(f"{archive}: the archive is truncated or corrupt ({exc}). {advice}") from None
    if todo:
        raise DatasetError(f"{archive}: archive lacks {', '.join(f'{folder}/{n}' for n in sorted(todo))}. {advice}")
    return tuple(targets[n] for n in names)


def _download(spec: DatasetSpec, split: str, folder: Path) -> Source:
    import pooch  # deferred: downloading is the last resort

    paths = []
    for fs in _needed_files(spec, split):
        errors = []
        for url in fs.urls:
            try:
                p = pooch.retrieve(url, known_hash=fs.known_hash, fname=fs.name, path=folder, progressbar=False)
                paths.append(Path(p))
                break
            except Exception as exc:  # noqa: BLE001 - HTTP errors, hash mismatch, no network, ...
                errors.append(f"{url}: {type(exc).__name__}: {exc}".splitlines()[0][:300])
        else:
            raise DatasetError(
                f"could not download {spec.title}'s {fs.name} (every mirror failed):\n  "
                + "\n  ".join(errors)
                + f"\n{_how_to_provide(spec, split, downloads_disabled=False)}"
            )
    return _source_from_downloads(spec, split, paths, "download")


def _how_to_provide(spec: DatasetSpec, split: str, downloads_disabled: bool = True) -> str:
    if spec.format == "idx":
        files = _needed_files(spec, split)
        what = "these files (gzipped or decompressed)"
    else:
        files = [f for f in spec.files if f.download]
        inner = _ARCHIVE_LAYOUTS[spec.format][0][2]
        what = f"this archive (or its extracted folder {inner}/)"
    lines = [f"To provide {spec.title} offline, put {what} in ${ENV_DATA_DIR}/{spec.dirnames[0]}/ "
             f"(or point task.data_dir=... on the command line, data_dir=... in Python, at a folder holding them):"]
    lines += [f"  {f.name}  <- {' or '.join(f.urls)}" for f in files]
    if downloads_disabled:
        lines.append(f"or allow downloads (unset {ENV_OFFLINE}) to fetch them, hash-verified, into the cache.")
    else:
        lines.append(f"(set {ENV_OFFLINE}=1 to stop localrules trying to download them).")
    return "\n".join(lines)


def locate(name: str, split: str, data_dir: str | os.PathLike | None = None, *,
           download: bool | None = None) -> Source:
    """Find (and if allowed, download) the files of ``name``/``split``; see the module docstring for the order."""
    spec = _spec(name)
    split = _split(spec, split)
    looked: list[str] = []
    notes: list[str] = []

    bases, how = _user_bases(data_dir)
    if not bases:
        looked.append(f"(no data dir: ${ENV_DATA_DIR} is not set and data_dir= was not given)")
    for base in bases:
        subdirs = [base / d for d in spec.dirnames]
        exists = "" if base.is_dir() else " (does not exist)"
        looked.append(f"{base}/{{{','.join(spec.dirnames)}}}/ and {base}/ (from {how}){exists}")
        for folder in subdirs:
            src = _find_in_dir(spec, split, folder, "data_dir", True, notes)
            if src:
                return src
        src = _find_in_dir(spec, split, base, "data_dir", spec.format == "idx", notes)
        if src:
            return src

    for sys_dir in spec.system_dirs:
        folder = Path(sys_dir)
        looked.append(f"{folder} (system copy, recognised by decompressed sha256)"
                      + ("" if folder.is_dir() else " (does not exist)"))
        src = _find_system(spec, split, folder, notes)
        if src:
            return src

    folder = cache_dir() / spec.name
    looked.append(f"{folder} (download cache)" + ("" if folder.is_dir() else " (does not exist)"))
    corrupt: list[str] = []
    src = _find_cached(spec, split, folder, notes, corrupt)
    if src:
        return src

    offline = _offline(download)
    if corrupt and offline:
        raise DatasetError(
            f"{spec.title}: cached file {'; '.join(corrupt)}: hash mismatch, the file is corrupt or truncated. "
            f"Delete it and load again with downloads enabled (unset {ENV_OFFLINE}), or provide the files in "
            f"${ENV_DATA_DIR}/{spec.dirnames[0]}/."
        )
    if not offline:
        return _download(spec, split, folder)

    why = "download=False was passed" if download is False else f"downloads are disabled ({ENV_OFFLINE}=1)"
    msg = [f"dataset {spec.name!r} ({spec.title}), split {split!r}, was not found and {why}.", "Looked in:"]
    msg += [f"  - {p}" for p in looked]
    msg += [f"  note: {n}" for n in notes]
    msg.append(_how_to_provide(spec, split))
    raise DatasetError("\n".join(msg))


# --------------------------------------------------------------------------------------------------------------
# Public loading API
# --------------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _decode_cached(name: str, split: str, kind: str, files: tuple[tuple[str, int, int], ...],
                   coarse: bool) -> tuple[np.ndarray, np.ndarray]:
    spec = DATASETS[name]
    paths = tuple(Path(f[0]) for f in files)
    if kind == "idx":
        images, labels = _decode_idx(spec, split, *paths)
    elif kind == "npz":
        images, labels = _decode_npz(spec, split, paths[0])
    elif kind.startswith("cifar"):
        images, labels = _decode_cifar(spec, split, kind, paths, coarse)
    elif kind == "stl_bin":
        images, labels = _decode_stl(spec, split, paths)
    else:  # pragma: no cover - internal invariant
        raise AssertionError(kind)
    n_classes = 20 if coarse else spec.num_classes
    if split != "unlabeled" and labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise DatasetError(
            f"{', '.join(map(str, paths))}: labels must be 0..{n_classes - 1}, found "
            f"{int(labels.min())}..{int(labels.max())}. {_advice(spec, paths[-1])}"
        )
    images = np.ascontiguousarray(images, dtype=np.uint8)
    labels = np.ascontiguousarray(labels, dtype=np.int32)
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def load(name: str, split: str, data_dir: str | os.PathLike | None = None, *, coarse: bool = False,
         download: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 (N, H, W, C), labels int32 (N,))`` of ``name``'s ``split``; read-only, cached per process.

    ``name``: mnist, fashion_mnist, kmnist, cifar10, cifar100, stl10 (case, ``-`` and ``_`` are ignored).
    ``split``: train | test (STL-10 also unlabeled, whose labels are -1). ``coarse``: CIFAR-100's 20
    superclass labels instead of the 100 fine ones. ``download``: None follows ``$LOCALRULES_OFFLINE``.
    Raises :class:`DatasetError` with what was searched and how to provide the files.
    """
    spec = _spec(name)
    if coarse and spec.format != "cifar100":
        raise DatasetError(f"coarse=True is only meaningful for CIFAR-100, not {spec.title}")
    src = locate(spec.name, split, data_dir, download=download)
    try:
        files = tuple(_stat_key(p) for p in src.paths)
    except OSError as exc:
        raise DatasetError(f"cannot read {exc.filename}: {exc.strerror}") from None
    return _decode_cached(spec.name, src.split, src.kind, files, bool(coarse))


def clear_cache() -> None:
    """Forget decoded arrays and file hashes held in memory."""
    _decode_cached.cache_clear()
    _hash_file_cached.cache_clear()
    _payload_sha256_cached.cache_clear()


def to_canvas(images, *, rgb32: bool = False) -> np.ndarray:  # noqa: ANN001 - any array-like
    """float32 in [0, 1]: uint8 is divided by 255, floats are taken as already in [0, 1].

    Native shape by default; ``rgb32=True`` gives the curriculum canvas via :func:`pad_to_32_rgb`.
    """
    if rgb32:
        return pad_to_32_rgb(images)
    x = np.asarray(images)
    if x.dtype == np.uint8:
        return x.astype(np.float32) / np.float32(255.0)
    if np.issubdtype(x.dtype, np.floating):
        return x.astype(np.float32)
    raise ValueError(f"to_canvas expects uint8 or float images, got {x.dtype}")


def pad_to_32_rgb(images) -> np.ndarray:  # noqa: ANN001 - any array-like
    """The curriculum's 32x32x3 float32 canvas (curriculum.md section 2).

    ``(N, 28, 28[, 1])`` is zero-padded by 2 px on each side and replicated to 3 channels; ``(N, 32, 32, 1)`` is
    replicated; ``(N, 32, 32, 3)`` (CIFAR) is only converted. Anything else is a ValueError.
    """
    x = to_canvas(images)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3) or x.shape[1:3] not in ((28, 28), (32, 32)):
        raise ValueError(
            f"pad_to_32_rgb expects (N, 28, 28[, 1]) or (N, 32, 32, 1|3) images, got shape {tuple(x.shape)}"
        )
    if x.shape[1] == 28:
        x = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    return np.ascontiguousarray(x, dtype=np.float32)
