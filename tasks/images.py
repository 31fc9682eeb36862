"""Real image datasets as plain tasks: ``task=fashion_mnist``, ``task=mnist``, ``task=kmnist``, ``task=cifar10``,
``task=cifar100``, ``task=stl10``.

Files are found by :mod:`localrules.tasks.datasets` (data dir → system copy → verified download); the images stay
uint8 on the device and are converted inside the jitted step. Epoch ``e`` of a run is the permutation
``permutation(fold_in(data_key, e), N)``; the last partial batch of an epoch is dropped (``steps_per_epoch =
N // batch_size``), so every rule with the same seed sees the same examples in the same order.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from localrules import core


@dataclasses.dataclass(frozen=True)
class Config:
    """A real image dataset (see localrules.tasks.datasets for where the files are looked for)."""

    data_dir: str = ""
    """Directory holding the dataset files ('' = $LOCALRULES_DATA_DIR, then system copies, then download)."""
    normalize: str = "unit"
    """unit: x/255 in [0, 1] | standard: per-channel (x − mean)/std of the training set."""
    canvas: bool = False
    """Pad 28×28 grey images to the curriculum's 32×32×3 canvas (2 px, channels replicated)."""
    train_subset: int = 0
    """Use only the first N training examples (0 = all)."""
    test_subset: int = 0
    """Use only the first N test examples (0 = all)."""


# dataset → (head name, number of classes)
HEADS = {
    "mnist": ("digit", 10),
    "fashion_mnist": ("fashion", 10),
    "kmnist": ("kana", 10),
    "cifar10": ("object10", 10),
    "cifar100": ("object100", 100),
    "stl10": ("stl10", 10),
}


def _pad_canvas(x: np.ndarray) -> np.ndarray:
    if x.shape[1:3] == (28, 28):
        x = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    return x


def make_dataset_task(dataset: str, cfg: Config, batch_size: int) -> core.Task:
    from localrules.tasks import datasets

    if cfg.normalize not in ("unit", "standard"):
        raise ValueError(f"task.normalize={cfg.normalize!r}: choose unit or standard")
    xtr, ytr = datasets.load(dataset, "train", data_dir=cfg.data_dir or None)
    xte, yte = datasets.load(dataset, "test", data_dir=cfg.data_dir or None)
    if cfg.train_subset:
        xtr, ytr = xtr[: cfg.train_subset], ytr[: cfg.train_subset]
    if cfg.test_subset:
        xte, yte = xte[: cfg.test_subset], yte[: cfg.test_subset]
    if cfg.canvas:
        xtr, xte = _pad_canvas(xtr), _pad_canvas(xte)
    n = xtr.shape[0]
    if batch_size > n:
        raise ValueError(f"batch_size={batch_size} exceeds the {n} training examples of {dataset}")
    spe = n // batch_size
    if cfg.normalize == "standard":
        f = xtr.astype(np.float64) / 255.0
        mean = f.mean(axis=(0, 1, 2)).astype(np.float32)
        std = f.std(axis=(0, 1, 2)).astype(np.float32)
    else:
        mean = np.zeros(xtr.shape[-1], np.float32)
        std = np.ones(xtr.shape[-1], np.float32)
    mean, std = jnp.asarray(mean), jnp.asarray(std)

    def prep(x):
        return (x.astype(jnp.float32) / 255.0 - mean.reshape((1,) * (x.ndim - 1) + (-1,))) / std.reshape(
            (1,) * (x.ndim - 1) + (-1,))

    head, k = HEADS[dataset]
    heads = core.single_head(head, k)
    data = (jnp.asarray(xtr), jnp.asarray(ytr, jnp.int32))

    def context(data, key, t0):
        e0 = t0 // spe
        perms = jnp.stack([jax.random.permutation(jax.random.fold_in(key, e0 + i), n) for i in range(2)])
        return e0, perms

    def sample(data, ctx, key, t):
        e0, perms = ctx
        e, pos = t // spe, t % spe
        idx = jax.lax.dynamic_slice(perms[e - e0], (pos * batch_size,), (batch_size,))
        x, y = data
        return core.Batch(prep(x[idx]), y[idx][:, None])

    base_eval = core.classification_eval(heads)

    def evaluate(scores_fn, test):
        return base_eval(lambda x: scores_fn(prep(x)), test)

    test = core.Batch(jnp.asarray(xte), jnp.asarray(yte, jnp.int32)[:, None])
    name = dataset + (f"_sub{cfg.train_subset}" if cfg.train_subset else "")
    return core.Task(name, heads, tuple(xtr.shape[1:]), data, context, sample, test, evaluate, spe, 1.0 / k)


def _spec(dataset: str, title: str) -> core.TaskSpec:
    cls = dataclasses.make_dataclass(f"{dataset.title().replace('_', '')}Config", [], bases=(Config,), frozen=True)
    cls.__doc__ = f"{title} (real data; {HEADS[dataset][0]} head)."
    cls.__module__ = __name__
    globals()[cls.__name__] = cls
    return core.TaskSpec(dataset, cls, lambda cfg, bs: make_dataset_task(dataset, cfg, bs), doc=cls.__doc__)


TASKS = [
    _spec("mnist", "MNIST digits 28×28"),
    _spec("fashion_mnist", "Fashion-MNIST 28×28 (offline via Debian's dataset-fashion-mnist)"),
    _spec("kmnist", "Kuzushiji-MNIST 28×28"),
    _spec("cifar10", "CIFAR-10 32×32×3"),
    _spec("cifar100", "CIFAR-100 32×32×3 (fine labels)"),
    _spec("stl10", "STL-10 96×96×3 (labelled splits)"),
]
TASKS[1] = dataclasses.replace(TASKS[1], aliases=("fmnist",))
