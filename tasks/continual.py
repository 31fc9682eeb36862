"""Classic continual-learning curricula (curriculum.md §8) on the lab's curriculum runner.

``task=split_mnist``, ``permuted_mnist``, ``gem_permuted_mnist``, ``gem_rotated_mnist``, ``gem_cifar100`` and
``split_fashion_mnist`` (offline: Debian's Fashion-MNIST). Each context is a :class:`~localrules.curriculum.Stage`
with its own test set (the dataset's test split restricted to the context's classes, or the whole test split under
the context's permutation / rotation), trained for ``iterations × batch_size`` samples (``pacing=samples``: no
graduation gating unless ``task.theta`` ≤ 1 and ``task.pacing=mastery``). The runner reports the R matrix with the
random-init row, ACC/BWT/FWT with the paper's T−1 denominators, forgetting and κ; this module adds GEM's reference
code values (T denominators, ``curriculum.gem_reference`` in the record).

**Scenarios** (van de Ven, Tuytelaars & Tolias 2022), ``task.scenario=task|domain|class``, as named heads:

* ``class``: one head over every class of every context (Split: the dataset's own head, e.g. ``digit`` 10;
  Permuted: ``digitx10``, 100 units, context k's digit d is class 10k + d). Evaluation: arg-max over the whole head.
* ``domain``: one head shared by all contexts over the within-context label (Split: ``within``, 2-way — the first
  or second class of the pair; Permuted/rotated: ``digit``, 10-way).
* ``task``: one head per context, ``ctx0 … ctx{T−1}``; context k labels only its own head and its test reads only it.

Every context labels exactly one head (-1 elsewhere), so the lab's ordinary strict accuracy over labelled heads is
the scenario's accuracy. Chance = 1/(units of that head) (the accuracy of guessing from the read-out).

**Inputs** are single-channel 28×28 (Split, GEM MNIST) or 32×32 (Permuted-MNIST: zero-padded by 2 px, then all
1,024 pixels permuted), CIFAR-100 32×32×3, scaled to [0, 1]. Permutations and rotations are one fixed pixel-index
map per context (-1 = black), applied on the device to the shared uint8 images, so contexts never copy the
dataset; rotations are nearest-neighbour about the image centre, as GEM's ``PIL.Image.rotate(angle)``
(counter-clockwise). Maps, angles and GEM's per-context subsets come from ``task.context_seed``, never from the run
seed: every rule and seed sees the same contexts and the same tests.

Order: ``sequential`` (contexts 1…T) or ``joint`` (the offline upper bound: one IID mixture of all context streams,
uniform over contexts, for the summed budget; one row of R over every context's test).

Files: MNIST and CIFAR-100 need user-supplied files (``task.data_dir`` or ``$LOCALRULES_DATA_DIR``, see
:mod:`localrules.tasks.datasets`); offline without them the run stops with the loader's error.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from localrules import core

SCENARIOS = ("task", "domain", "class")
ORDERS = ("sequential", "joint")
PACINGS = ("samples", "mastery")


class Protocol(NamedTuple):
    """What is fixed about a curriculum (the rest are :class:`Config` fields)."""

    dataset: str  # localrules.tasks.datasets name
    kind: str  # split | permuted | rotated
    n_classes: int
    pad_to: int = 0  # permuted: zero-pad the image to pad_to × pad_to before permuting (0 = no padding)


PROTOCOLS = {
    "split_mnist": Protocol("mnist", "split", 10),
    "split_fashion_mnist": Protocol("fashion_mnist", "split", 10),
    "permuted_mnist": Protocol("mnist", "permuted", 10, pad_to=32),
    "gem_permuted_mnist": Protocol("mnist", "permuted", 10),
    "gem_rotated_mnist": Protocol("mnist", "rotated", 10),
    "gem_cifar100": Protocol("cifar100", "split", 100),
}


@dataclasses.dataclass(frozen=True)
class Config:
    """A classic continual-learning curriculum (curriculum.md §8)."""

    scenario: str = "class"
    """task (one head per context, ctx0..) | domain (one head shared by all contexts) | class (one head over all
    classes)."""
    contexts: int = 5
    """Number of contexts (Split: must divide the number of classes)."""
    iterations: int = 2000
    """Training steps per context (budget = iterations × batch_size samples); 0 = one pass over the context."""
    order: str = "sequential"
    """sequential (contexts in order) | joint (offline upper bound: IID mixture of all contexts, summed budget)."""
    pacing: str = "samples"
    """samples (every context trains its full budget) | mastery (a context ends when all seeds graduate at θ)."""
    theta: float = 2.0
    """Graduation threshold on the context's test accuracy; the default 2.0 can never be reached (no gating)."""
    train_per_context: int = 0
    """Training examples per context, a fixed random subset (0 = all of the context's examples)."""
    test_per_context: int = 0
    """Test examples per context, the first N of its test split (0 = all)."""
    context_seed: int = 0
    """Seed of the permutations, rotation angles and subsets (fixed across rules and run seeds)."""
    max_rotation: float = 180.0
    """Rotated: context k's angle is uniform in [k, k+1) × max_rotation / contexts degrees (GEM)."""
    data_dir: str = ""
    """Directory holding the dataset files ('' = $LOCALRULES_DATA_DIR, then system copies, then download)."""
    exact_budget: bool = True
    """Train exactly the budget (the last chunk of a context is shorter) rather than whole evaluation chunks."""


# ------------------------------------------------------------------------------------------------ pure helpers


def split_classes(n_classes: int, contexts: int) -> list[tuple[int, ...]]:
    """Consecutive class groups: 10 classes in 5 contexts → (0, 1), (2, 3), …, (8, 9)."""
    if contexts <= 0 or n_classes % contexts:
        raise ValueError(f"task.contexts={contexts}: must divide the {n_classes} classes (e.g. "
                         f"{', '.join(str(d) for d in range(2, n_classes + 1) if n_classes % d == 0)})")
    k = n_classes // contexts
    return [tuple(range(c * k, (c + 1) * k)) for c in range(contexts)]


def context_classes(proto: Protocol, contexts: int) -> list[tuple[int, ...]]:
    """The classes each context contains (every class for permuted / rotated contexts)."""
    if proto.kind == "split":
        return split_classes(proto.n_classes, contexts)
    return [tuple(range(proto.n_classes))] * contexts


def label_tables(proto: Protocol, scenario: str, contexts: int) -> tuple[core.Heads, list[int], np.ndarray]:
    """The scenario's heads, the head each context labels, and ``labels[k, c]``: the label class ``c`` gets in
    context ``k`` (-1 if ``c`` is not in context ``k``)."""
    from localrules.tasks import images

    if scenario not in SCENARIOS:
        raise ValueError(f"task.scenario={scenario!r}: choose one of {', '.join(SCENARIOS)}")
    groups = context_classes(proto, contexts)
    within = len(groups[0])
    base = images.HEADS[proto.dataset][0]
    labels = np.full((contexts, proto.n_classes), -1, np.int32)
    for k, g in enumerate(groups):
        for i, c in enumerate(g):
            if scenario == "class":
                labels[k, c] = c if proto.kind == "split" else k * within + i
            else:
                labels[k, c] = i
    if scenario == "task":
        heads = core.Heads(tuple(f"ctx{k}" for k in range(contexts)), (within,) * contexts)
        return heads, list(range(contexts)), labels
    if scenario == "domain":
        name = "within" if proto.kind == "split" else base
        return core.Heads((name,), (within,)), [0] * contexts, labels
    if proto.kind == "split":
        return core.Heads((base,), (proto.n_classes,)), [0] * contexts, labels
    return core.Heads((f"{base}x{contexts}",), (contexts * within,)), [0] * contexts, labels


def pad_map(hw: tuple[int, int], size: int) -> np.ndarray:
    """Index map of zero-padding an (h, w) image to (size, size), centred: (size²,) source pixel or -1."""
    h, w = hw
    top, left = (size - h) // 2, (size - w) // 2
    if top < 0 or left < 0:
        raise ValueError(f"cannot pad a {h}×{w} image to {size}×{size}")
    out = np.full((size, size), -1, np.int64)
    out[top:top + h, left:left + w] = np.arange(h * w).reshape(h, w)
    return out.reshape(-1)


def permutation_maps(contexts: int, n_pixels: int, seed: int, base: np.ndarray | None = None) -> np.ndarray:
    """(contexts, n_pixels) index maps: context k shows pixel ``perm_k[i]`` of the (padded) image at position i.

    ``base`` (e.g. a :func:`pad_map`) is composed first, so the padding is permuted too (Permuted-MNIST permutes all
    1,024 pixels of the 32×32 canvas)."""
    rng = np.random.default_rng(seed)
    maps = np.stack([rng.permutation(n_pixels) for _ in range(contexts)])
    return maps if base is None else base[maps]


def rotation_angles(contexts: int, max_rotation: float, seed: int) -> np.ndarray:
    """GEM's angles: context k uniform in [k, k+1) × max_rotation / contexts degrees."""
    rng = np.random.default_rng(seed)
    lo = np.arange(contexts) * max_rotation / contexts
    return lo + rng.random(contexts) * max_rotation / contexts


def rotation_map(hw: tuple[int, int], degrees: float) -> np.ndarray:
    """Nearest-neighbour rotation by ``degrees`` counter-clockwise about the image centre, as ``PIL.Image.rotate``:
    output pixel (x, y) (centre x + ½, y + ½) reads input pixel ⌊R⁻¹·(centre − c) + c⌋, or black outside."""
    h, w = hw
    a = math.radians(degrees)
    cos, sin = round(math.cos(a), 15), round(math.sin(a), 15)
    cx, cy = w / 2.0, h / 2.0
    ys, xs = np.mgrid[0:h, 0:w]
    dx, dy = xs + 0.5 - cx, ys + 0.5 - cy
    sx = np.floor(cos * dx - sin * dy + cx).astype(np.int64)
    sy = np.floor(sin * dx + cos * dy + cy).astype(np.int64)
    inside = (sx >= 0) & (sx < w) & (sy >= 0) & (sy < h)
    return np.where(inside, sy * w + sx, -1).reshape(-1)


def apply_map(x, index_map, out_hw: tuple[int, int]):
    """Images (B, H, W, C) → (B, out_h, out_w, C) with pixel i = input pixel ``index_map[i]`` (0 where -1).
    Works on numpy and JAX arrays alike (no map: the images unchanged)."""
    if index_map is None:
        return x
    xp = jnp if isinstance(x, jax.Array) else np
    flat = x.reshape(x.shape[0], -1, x.shape[-1])
    g = xp.take(flat, xp.maximum(index_map, 0), axis=1)
    g = xp.where((index_map >= 0)[None, :, None], g, xp.zeros((), x.dtype))
    return g.reshape((x.shape[0],) + tuple(out_hw) + (x.shape[-1],))


def context_subset(y: np.ndarray, classes, n: int, seed: int, k: int) -> np.ndarray:
    """Indices of the examples of ``classes`` in ``y`` (in dataset order); ``n`` > 0 keeps a fixed random subset
    of n of them (seeded by (seed, k)), in dataset order."""
    idx = np.flatnonzero(np.isin(y, np.asarray(classes)))
    if n:
        if n > idx.size:
            raise ValueError(f"task.train_per_context={n}: context {k + 1} has only {idx.size} examples")
        idx = np.sort(np.random.default_rng([seed, k]).choice(idx, n, replace=False))
    return idx


def gem_reference(R: np.ndarray, b: np.ndarray) -> dict:
    """ACC/BWT/FWT as GEM's reference code computes them (``metrics.py``): averages over all T entries (the last
    BWT term and the first FWT term are zero), i.e. the paper's T−1 values × (T−1)/T."""
    T = R.shape[0]
    bwt = np.zeros(T)
    bwt[: T - 1] = R[T - 1, : T - 1] - np.diag(R)[: T - 1]
    fwt = np.zeros(T)
    for j in range(1, T):
        fwt[j] = R[j - 1, j] - b[j]
    return {"ACC": float(np.mean(R[T - 1])), "BWT": float(np.mean(bwt)), "FWT": float(np.mean(fwt))}


# ------------------------------------------------------------------------------------------------ stages


def _validate(cfg: Config, proto: Protocol):
    if cfg.scenario not in SCENARIOS:
        raise ValueError(f"task.scenario={cfg.scenario!r}: choose one of {', '.join(SCENARIOS)}")
    if cfg.order not in ORDERS:
        raise ValueError(f"task.order={cfg.order!r}: choose sequential or joint")
    if cfg.pacing not in PACINGS:
        raise ValueError(f"task.pacing={cfg.pacing!r}: choose samples or mastery")
    if cfg.contexts < 1:
        raise ValueError(f"task.contexts={cfg.contexts}: need at least one context")
    if cfg.iterations < 0 or cfg.train_per_context < 0 or cfg.test_per_context < 0:
        raise ValueError("task.iterations, task.train_per_context and task.test_per_context must be ≥ 0")
    if proto.kind == "split":
        split_classes(proto.n_classes, cfg.contexts)


def _load(dataset: str, data_dir: str):
    from localrules.tasks import datasets

    try:
        xtr, ytr = datasets.load(dataset, "train", data_dir=data_dir or None)
        xte, yte = datasets.load(dataset, "test", data_dir=data_dir or None)
    except datasets.DatasetError as e:  # the loader's message names the dataset, where it looked and the fix
        raise ValueError(str(e)) from None
    return xtr, ytr, xte, yte


class Contexts(NamedTuple):
    """The host-side description of a curriculum's contexts (what the tests check)."""

    names: list[str]
    heads: core.Heads
    head_of: list[int]
    labels: np.ndarray  # (T, n_classes)
    train_idx: list[np.ndarray]
    test_idx: list[np.ndarray]
    maps: list[np.ndarray | None]
    out_hw: tuple[int, int]
    angles: np.ndarray | None


def describe(proto: Protocol, cfg: Config, ytr: np.ndarray, yte: np.ndarray, hw: tuple[int, int]) -> Contexts:
    """Contexts of a curriculum from the label arrays: names, heads, label tables, subsets and pixel maps."""
    T = cfg.contexts
    heads, head_of, labels = label_tables(proto, cfg.scenario, T)
    groups = context_classes(proto, T)
    train_idx = [context_subset(ytr, g, cfg.train_per_context, cfg.context_seed, k) for k, g in enumerate(groups)]
    test_idx = [np.flatnonzero(np.isin(yte, np.asarray(g))) for g in groups]
    if cfg.test_per_context:
        test_idx = [i[: cfg.test_per_context] for i in test_idx]
    angles = None
    out_hw = hw
    if proto.kind == "split":
        maps = [None] * T
        names = [(f"{g[0]}/{g[-1]}" if len(g) == 2 else f"{g[0]}-{g[-1]}") for g in groups]
    elif proto.kind == "permuted":
        base = None
        if proto.pad_to:
            base = pad_map(hw, proto.pad_to)
            out_hw = (proto.pad_to, proto.pad_to)
        maps = list(permutation_maps(T, out_hw[0] * out_hw[1], cfg.context_seed, base))
        names = [f"perm{k + 1}" for k in range(T)]
    else:
        angles = rotation_angles(T, cfg.max_rotation, cfg.context_seed)
        maps = [rotation_map(hw, a) for a in angles]
        names = [f"rot{k + 1}" for k in range(T)]
    return Contexts(names, heads, head_of, labels, train_idx, test_idx, maps, out_hw, angles)


def _stage_task(name, heads, head, lut, index_map, out_hw, xtr, ytr, idx, test, batch_size, chunk_steps) -> core.Task:
    """One context as a Task: epochs over its examples ``idx`` of the shared device arrays (xtr, ytr), the
    context's pixel map and label table applied inside the jitted step."""
    n = int(idx.size)
    if batch_size > n:
        raise ValueError(f"batch_size={batch_size} exceeds the {n} training examples of context {name}")
    spe = n // batch_size
    n_epochs = 2 + chunk_steps // spe  # epochs a chunk of chunk_steps steps can touch
    H = len(heads.names)
    lut = jnp.asarray(lut, jnp.int32)
    imap = None if index_map is None else jnp.asarray(index_map, jnp.int32)
    in_shape = tuple(out_hw) + (xtr.shape[-1],)

    def prep(x):
        return apply_map(x, imap, out_hw).astype(jnp.float32) / 255.0

    def context(data, key, t0):
        e0 = t0 // spe
        perms = jax.vmap(lambda e: jax.random.permutation(jax.random.fold_in(key, e), n))(e0 + jnp.arange(n_epochs))
        return e0, perms

    def sample(data, ctx, key, t):
        x_all, y_all, ix = data
        e0, perms = ctx
        pos = jax.lax.dynamic_slice(perms[t // spe - e0], ((t % spe) * batch_size,), (batch_size,))
        sel = ix[pos]
        y = jnp.full((batch_size, H), -1, jnp.int32).at[:, head].set(lut[y_all[sel]])
        return core.Batch(prep(x_all[sel]), y)

    base_eval = core.classification_eval(heads)

    def evaluate(scores_fn, test_batch):
        return base_eval(lambda x: scores_fn(prep(x)), test_batch)

    data = (xtr, ytr, jnp.asarray(idx, jnp.int32))
    return core.Task(name, heads, in_shape, data, context, sample, test, evaluate, spe, 1.0 / heads.sizes[head])


def plan_for(proto: Protocol):
    def plan(cfg: Config, batch_size: int):
        """Stages (one per context, or one joint stage), their tests, no extra tests."""
        from localrules.curriculum import Stage, chunking, mixture

        _validate(cfg, proto)
        xtr, ytr, xte, yte = _load(proto.dataset, cfg.data_dir)
        c = describe(proto, cfg, ytr, yte, tuple(xtr.shape[1:3]))
        x_dev, y_dev = jnp.asarray(xtr), jnp.asarray(ytr, jnp.int32)
        x_test_dev = jnp.asarray(xte)
        T = cfg.contexts
        tasks, budgets = [], []
        for k in range(T):
            n = int(c.train_idx[k].size)
            steps = cfg.iterations or n // max(batch_size, 1)
            budget = steps * batch_size
            total = budget if cfg.order == "sequential" else budget * T
            big = min(chunking(total, batch_size)[1], max(1, total // batch_size))
            ti = c.test_idx[k]
            tx = x_test_dev if ti.size == len(yte) else jnp.asarray(xte[ti])
            ty = np.full((ti.size, len(c.heads.names)), -1, np.int32)
            ty[:, c.head_of[k]] = c.labels[k][yte[ti]]
            test = core.Batch(tx, jnp.asarray(ty))
            tasks.append(_stage_task(c.names[k], c.heads, c.head_of[k], c.labels[k], c.maps[k], c.out_hw, x_dev,
                                     y_dev, c.train_idx[k], test, batch_size, big))
            budgets.append(budget)
        stages = [Stage(c.names[k], tasks[k], cfg.theta, budgets[k], tasks[k].chance) for k in range(T)]
        if cfg.order == "joint":
            joint = mixture(tasks, lambda _t: jnp.full((T,), 1.0 / T), batch_size, "joint")
            return [Stage("joint", joint, 2.0, sum(budgets), 0.0, tasks[0])], stages, {}
        return stages, stages, {}

    return plan


# ------------------------------------------------------------------------------------------------ as tasks


def _runner_for(proto: Protocol, plan):
    def runner(run_cfg, run_dir: str, run_id: str, log=print) -> dict:
        from localrules import curriculum

        record = curriculum.execute(run_cfg, run_dir, run_id, plan, log)
        cfg = run_cfg.task
        summ = record["curriculum"]
        record["task_instance"] = f"{record['task']}/{cfg.scenario}/{cfg.order}"
        R = np.asarray(summ["R_per_seed"], float)  # (rows, T, S)
        b = np.asarray(summ["init_per_seed"], float)  # (T, S)
        if cfg.order == "sequential" and R.shape[0] == R.shape[1] and R.shape[0] > 1:
            per = [gem_reference(R[:, :, s], b[:, s]) for s in range(R.shape[2])]
            ref = {}
            for k in per[0]:
                v = np.asarray([p[k] for p in per])
                ref[k], ref[k + "_sd"] = float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0
            summ["gem_reference"] = ref
            log(f"GEM reference code (T denominators): ACC {ref['ACC']:.3f} ± {ref['ACC_sd']:.3f}   "
                f"BWT {ref['BWT']:.3f} ± {ref['BWT_sd']:.3f}   FWT {ref['FWT']:.3f} ± {ref['FWT_sd']:.3f}")
        summ["scenario"] = cfg.scenario
        return record

    return runner


_DEFAULTS = {
    "split_mnist": dict(scenario="class", contexts=5, iterations=2000),
    "split_fashion_mnist": dict(scenario="class", contexts=5, iterations=2000),
    "permuted_mnist": dict(scenario="domain", contexts=10, iterations=5000),
    "gem_permuted_mnist": dict(scenario="domain", contexts=20, iterations=0, train_per_context=1000),
    "gem_rotated_mnist": dict(scenario="domain", contexts=20, iterations=0, train_per_context=1000),
    "gem_cifar100": dict(scenario="task", contexts=20, iterations=0),
}
_DOCS = {
    "split_mnist": "Split-MNIST: 5 contexts 0/1 … 8/9, 2000 iterations each (needs MNIST files)",
    "split_fashion_mnist": "Split-Fashion-MNIST: 5 contexts of 2 classes, 2000 iterations each (offline, Debian)",
    "permuted_mnist": "Permuted-MNIST: 10 contexts, 32×32 zero-padded, 1024 pixels permuted, 5000 iterations",
    "gem_permuted_mnist": "GEM single pass: 20 MNIST permutations × 1000 samples, one epoch (needs MNIST files)",
    "gem_rotated_mnist": "GEM single pass: 20 MNIST rotations in 0–180° × 1000 samples, one epoch",
    "gem_cifar100": "GEM single pass: CIFAR-100 in 20 contexts of 5 classes (2500 samples), one epoch",
}


def _spec(name: str) -> core.TaskSpec:
    proto = PROTOCOLS[name]
    fields = [(k, type(getattr(Config(), k)), dataclasses.field(default=v)) for k, v in _DEFAULTS[name].items()]
    cls = dataclasses.make_dataclass("".join(p.title() for p in name.split("_")) + "Config", fields,
                                     bases=(Config,), frozen=True)
    cls.__doc__ = _DOCS[name] + "."
    cls.__module__ = __name__
    globals()[cls.__name__] = cls
    plan = plan_for(proto)

    def make(cfg, batch_size):
        stages, _, _ = plan(cfg, batch_size)
        return stages[0].task

    return core.TaskSpec(name, cls, make, doc=_DOCS[name], runner=_runner_for(proto, plan))


TASKS = [_spec(n) for n in PROTOCOLS]
