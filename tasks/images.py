"""Real image datasets as plain tasks: ``task=fashion_mnist``, ``task=mnist``, ``task=kmnist``, ``task=cifar10``,
``task=cifar100``, ``task=stl10``.

Files are found by :mod:`localrules.tasks.datasets` (data dir → system copy → verified download); the images stay
uint8 on the device and are converted inside the jitted step. Epoch ``e`` of a run is the permutation
``permutation(fold_in(data_key, e), N)``; the last partial batch of an epoch is dropped (``steps_per_epoch =
N // batch_size``), so every rule with the same seed sees the same examples in the same order.

**Validation split** (run option ``val_fraction=f``, :func:`split_dataset_task`): ``round(f·N)`` training rows,
drawn once by ``numpy.random.default_rng(VAL_SPLIT_SEED).permutation(N)`` (after ``task.train_subset``), are held
out; the task then trains only on the other rows (``N`` above becomes their number, the ``standard``
normalisation statistics come from them only) and the held-out rows are returned as a test-like
:class:`~localrules.core.Batch` that the task's ``evaluate`` scores. The split depends on neither the run's seed
nor the rule, so every run of a comparison selects on the same rows.

**Reconstruction.** When the network's output has the input's shape (``arch=ccl_ae``), ``evaluate`` scores the
reconstruction instead of classes (:func:`reconstruction_eval`: ``mse`` and ``loss`` = test MSE, ``acc`` NaN).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

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


VAL_SPLIT_SEED = 2023
"""Seed of the validation split's draw (the reference CCL yaml's seed); fixed, so every run holds out the same rows."""


def validation_rows(n: int, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, held-out rows) of an ``n``-row training set, both sorted; see the module docstring."""
    if not 0.0 < val_fraction <= 0.5:
        raise ValueError(f"val_fraction={val_fraction}: must be in (0, 0.5] (e.g. val_fraction=0.1), or 0 for no split")
    k = int(round(val_fraction * n))
    if k < 1:
        raise ValueError(f"val_fraction={val_fraction} of {n} training examples holds out none; raise val_fraction")
    perm = np.random.default_rng(VAL_SPLIT_SEED).permutation(n)
    return np.sort(perm[k:]), np.sort(perm[:k])


def normalisation(normalize: str, xtr) -> tuple[jax.Array, jax.Array]:
    """Per-channel (mean, std) the images are standardised with: of the training rows ``xtr`` (uint8, the task's
    ``data[0]``) for ``standard``, (0, 1) for ``unit``."""
    xtr = np.asarray(xtr)
    if normalize == "standard":
        f = xtr.astype(np.float64) / 255.0
        mean = f.mean(axis=(0, 1, 2)).astype(np.float32)
        std = f.std(axis=(0, 1, 2)).astype(np.float32)
    else:
        mean = np.zeros(xtr.shape[-1], np.float32)
        std = np.ones(xtr.shape[-1], np.float32)
    return jnp.asarray(mean), jnp.asarray(std)


def prepare(x: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
    """uint8 images → the network's input: (x/255 − mean)/std per channel."""
    shape = (1,) * (x.ndim - 1) + (-1,)
    return (x.astype(jnp.float32) / 255.0 - mean.reshape(shape)) / std.reshape(shape)


def make_dataset_task(dataset: str, cfg: Config, batch_size: int) -> core.Task:
    """The task on the whole training set."""
    return _make(dataset, cfg, batch_size, 0.0)[0]


def split_dataset_task(dataset: str, cfg: Config, batch_size: int, val_fraction: float) -> tuple[core.Task, core.Batch]:
    """The task trained on all but a held-out ``val_fraction`` of the training set, and that held-out split (a
    Batch like ``Task.test``: raw images, labels (n, 1)); see the module docstring."""
    return _make(dataset, cfg, batch_size, val_fraction)


def _make(dataset: str, cfg: Config, batch_size: int, val_fraction: float):
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
    val = None
    if val_fraction:
        keep, held = validation_rows(xtr.shape[0], val_fraction)
        val = core.Batch(jnp.asarray(xtr[held]), jnp.asarray(ytr[held], jnp.int32)[:, None])
        xtr, ytr = xtr[keep], ytr[keep]
    n = xtr.shape[0]
    if batch_size > n:
        raise ValueError(f"batch_size={batch_size} exceeds the {n} training examples of {dataset}"
                         + (f" left after holding out val_fraction={val_fraction}" if val_fraction else ""))
    spe = n // batch_size
    mean, std = normalisation(cfg.normalize, xtr)

    def prep(x):
        return prepare(x, mean, std)

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
    recon_eval = reconstruction_eval(prep)

    def evaluate(scores_fn, test):
        out = jax.eval_shape(lambda x: scores_fn(prep(x)), test.x[:2])
        if out.shape[1:] == test.x.shape[1:]:  # an image-to-image network (arch=ccl_ae): score its reconstruction
            return recon_eval(scores_fn, test)
        return base_eval(lambda x: scores_fn(prep(x)), test)

    test = core.Batch(jnp.asarray(xte), jnp.asarray(yte, jnp.int32)[:, None])
    name = dataset + (f"_sub{cfg.train_subset}" if cfg.train_subset else "")
    task = core.Task(name, heads, tuple(xtr.shape[1:]), data, context, sample, test, evaluate, spe, 1.0 / k)
    return task, val


def reconstruction_eval(prep, eval_batch: int = 1000):
    """``evaluate`` of an image-to-image network: ``mse`` = mean over test images and values of (output −
    prep(x))², the input as the network sees it; ``loss`` = ``mse`` (what ``selection=best_val`` minimises);
    ``acc`` = NaN (no classes are scored). The images go through the network in slices of ``eval_batch`` and one
    slice of the remainder, never padded (BatchNorm uses the slice's batch statistics)."""

    def sse(scores_fn, x):
        x = prep(x)
        return jnp.sum((scores_fn(x) - x) ** 2)

    def evaluate(scores_fn, test):
        n = test.x.shape[0]
        full = n // eval_batch
        total = jnp.zeros((), jnp.float32)
        if full:
            xs = test.x[: full * eval_batch].reshape((full, eval_batch) + test.x.shape[1:])
            total = total + jnp.sum(jax.lax.map(lambda x: sse(scores_fn, x), xs))
        if n % eval_batch:
            total = total + sse(scores_fn, test.x[full * eval_batch:])
        mse = total / (n * math.prod(test.x.shape[1:]))
        return {"acc": jnp.full((), jnp.nan, jnp.float32), "loss": mse, "mse": mse}

    return evaluate


@dataclasses.dataclass(frozen=True)
class DatasetTaskSpec(core.TaskSpec):
    """A task spec that can also hold out a validation split (``val_fraction=`` of the run)."""

    validation: Callable | None = None
    """``validation(cfg, batch_size, val_fraction) -> (Task, held-out Batch)``."""


def _spec(dataset: str, title: str) -> core.TaskSpec:
    cls = dataclasses.make_dataclass(f"{dataset.title().replace('_', '')}Config", [], bases=(Config,), frozen=True)
    cls.__doc__ = f"{title} (real data; {HEADS[dataset][0]} head)."
    cls.__module__ = __name__
    globals()[cls.__name__] = cls
    return DatasetTaskSpec(dataset, cls, lambda cfg, bs: make_dataset_task(dataset, cfg, bs), doc=cls.__doc__,
                           validation=lambda cfg, bs, f: split_dataset_task(dataset, cfg, bs, f))


TASKS = [
    _spec("mnist", "MNIST digits 28×28"),
    _spec("fashion_mnist", "Fashion-MNIST 28×28 (offline via Debian's dataset-fashion-mnist)"),
    _spec("kmnist", "Kuzushiji-MNIST 28×28"),
    _spec("cifar10", "CIFAR-10 32×32×3"),
    _spec("cifar100", "CIFAR-100 32×32×3 (fine labels)"),
    _spec("stl10", "STL-10 96×96×3 (labelled splits)"),
]
TASKS[1] = dataclasses.replace(TASKS[1], aliases=("fmnist",))
