"""Meta-training of ``rules/meta_learned.py``'s θ: ``python -m localrules.meta train|eval|plugin key=value ...``.

The inner loop is the lab's own engine (:func:`localrules.train.make_program`: ``chunk`` = a ``lax.scan`` of the
rule's step under ``optax.sgd(1.0)``) with θ traced, so the meta-trainer needs nothing rule-specific.

**Tasks** (spec §2.7; :class:`Dist`). A task is a k-way Fashion-MNIST class subset (random label permutation),
projected by R ∈ ℝ^{784×d}, R_ij ~ N(0, 1/784), after per-pixel standardisation (x − μ_pix)/(σ_pix + 0.1) with
training-split statistics; a fresh MLP d-width-k (W ~ N(0, 1/fan_in), b = 0, fresh feedback); T online steps at
batch 16 with labels uniform over the k classes; query = 100 images from a held-out part of the *training* split
(the last ``query_per_class`` images of every class). Never the test split: that is the plug-in evaluation's.
Classes ``held_out`` never appear in meta-training; meta-test tasks (:func:`meta_test`) always contain them, use
projections/initialisations under a disjoint key root, and may use other horizons. Shapes (k, d, width, T) are
bucketed: one compiled meta-step per bucket, buckets visited in turn (T log-spaced up to the deployment horizon).
``dist.stages=[S1,S2]`` adds the curriculum's early stages as buckets (:func:`make_stage_task_fn`: the stage
generator rendered inside the inner scan under the meta key, centred 6,144-d input, the 21 curriculum head units);
such a θ is in-distribution for those stages and its meta.json says so. Compiling a stage bucket's meta-step takes
about a minute on the 2-core CPU (the renderer is traced into the forward, recomputed and reverse scans).

**Meta-loss** = mean query cross-entropy after the inner run, capped at 10 (non-finite → 10), + ``l1``·‖θ‖₁.

**Meta-trainers.** ``method=grad``: ``jax.value_and_grad`` through the inner scan (``jax.checkpoint`` on segments of
``segment`` steps, so reverse-mode memory is T/segment carries), per task, a non-finite gradient counts as 0 (the
derivative of the cap), then global-norm clip ``clip``, Adam ``lr``. ``method=es``: antithetic pairs θ ± σε, all members on the same tasks, vmapped in one jit,
ĝ = Σ (L₊ − L₋) ε / (2σN), optional rank shaping; for rules whose inner step is not differentiable.

**Outputs** (``out``): ``theta/`` the final θ and ``candidates/step_<n>/`` (θ₀ = step 0 among them), each an orbax
checkpoint + ``meta.json`` (:func:`localrules.rules.meta_learned.save_theta`); TensorBoard meta-curves
(``meta/loss``, ``meta/query_acc``, ``meta/grad_norm``, ``meta/lr_hidden``…); ``summary.json``. Meta-training FLOPs
are reported separately from the per-run FLOPs of using the rule: XLA counts a scanned body once, so they are the
compiled inner-step FLOPs (forward; forward + VJP for the reverse pass, plus the recomputed forward of
``jax.checkpoint``) × T × tasks (× 2N members for ES) + query evaluation, per bucket.

``eval``: meta-test on fresh held-out tasks — θ vs θ₀ (the θ's own start: DFA/FA + delta rule at its ``lr0``) vs
the hand rule at its best lr vs random frozen features + delta-rule head vs BP-SGD (best lr of a grid, and at θ₀'s
lr), same nets, batches and horizons, read from the θ's meta.json (feedback, fan-in scaling, task distribution);
``seeds`` task sets of ``tasks`` tasks, ``thetas=[...]`` one θ per seed (meta-training seeds). ``plugin``: the θ as
an ordinary rule on full 10-way Fashion-MNIST (784-width-10) against the same baselines, ``seeds`` network seeds,
the 10,000 test images (baselines' lr chosen on the validation split).

**Recorded runs** (commands, runtimes and numbers in the presets' descriptions): ``sweeps/meta_cpu10min.toml``
(the shipped θ ``fmnist_mg``, meta-gradients, 10 CPU-minutes, plug-in and meta-test comparison),
``sweeps/meta_es_fmnist.toml`` (the ES path on Fashion-MNIST tasks), ``sweeps/meta_shervani_tabar_fmnist.toml``
(the published comparator protocol, 3 meta-training seeds).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from localrules import core, tb
from localrules.architectures import MLPConfig, build_mlp
from localrules.cost import compiled_cost
from localrules.rules import meta_learned as ml
from localrules.train import TrainState, make_program

CAP = 10.0


# ------------------------------------------------------------------------------------------ estimators


def cap_loss(loss, cap: float = CAP):
    """L ← min(L, cap), non-finite → cap (double-where so the dead branch cannot send NaN backwards)."""
    ok = jnp.isfinite(loss)
    safe = jnp.where(ok, loss, 0.0)
    return jnp.where(ok, jnp.minimum(safe, cap), cap)


def mask_and_clip(g, clip: float | None = 1.0):
    """Non-finite entries → 0, then g ← g·min(1, clip/‖g‖). Returns (g, norm before clipping)."""
    g = jax.tree.map(lambda a: jnp.where(jnp.isfinite(a), a, 0.0), g)
    norm = optax.tree.norm(g)
    if clip is not None:
        g = jax.tree.map(lambda a: a * jnp.minimum(1.0, clip / jnp.maximum(norm, 1e-12)), g)
    return g, norm


def meta_gradient(loss_fn: Callable, theta, *args, clip: float | None = 1.0):
    """``method=grad``: (loss, aux), masked and clipped ∇θ, and the raw norm. ``loss_fn(θ, *args) -> (L, aux)``."""
    (loss, aux), g = jax.value_and_grad(loss_fn, has_aux=True)(theta, *args)
    g, norm = mask_and_clip(g, clip)
    return loss, aux, g, norm


def task_meta_gradient(task_fn: Callable, theta, keys, *args, clip: float | None = 1.0, reg: Callable | None = None):
    """``method=grad`` over a batch of tasks: per-task ∇θ of ``task_fn(θ, key, *args) -> (L_capped, aux)``; a task
    whose loss or gradient is non-finite contributes a zero gradient (the derivative of its cap), so one diverged
    task cannot turn the whole batch's gradient into NaN (0·∞ in the backward pass of its scan); then the mean,
    ``reg(θ)``'s gradient, non-finite → 0 and the global-norm clip. Returns (mean loss, mean aux, g, raw norm)."""

    def one(k):
        (L, aux), g = jax.value_and_grad(task_fn, has_aux=True)(theta, k, *args)
        ok = core.tree_all_finite(g) & jnp.isfinite(L)
        return jnp.where(jnp.isfinite(L), L, CAP), aux, jax.tree.map(lambda a: jnp.where(ok, a, 0.0), g)

    L, aux, g = jax.vmap(one)(keys)
    g = jax.tree.map(lambda a: jnp.mean(a, 0), g)
    L = jnp.mean(L)
    if reg is not None:
        r, gr = jax.value_and_grad(reg)(theta)
        L, g = L + r, jax.tree.map(jnp.add, g, gr)
    g, norm = mask_and_clip(g, clip)
    return L, jnp.mean(aux), g, norm


def es_gradient(loss_fn: Callable, theta, key, *args, sigma: float = 0.05, pairs: int = 16, rank: bool = False,
                clip: float | None = None):
    """``method=es``: antithetic ES estimate of ∇θ E[L]; every member evaluates the same ``args`` (common random
    numbers), all members in one vmap. Returns (mean loss at the members, aux of the first member, ĝ, ‖ĝ‖)."""
    leaves, tdef = jax.tree.flatten(theta)
    keys = jax.random.split(key, len(leaves))
    eps = [jax.random.normal(k, (pairs,) + jnp.shape(l), jnp.float32) for k, l in zip(keys, leaves)]
    eps = jax.tree.unflatten(tdef, eps)
    members = jax.tree.map(lambda t, e: jnp.concatenate([t[None] + sigma * e, t[None] - sigma * e]), theta, eps)
    losses, aux = jax.vmap(lambda th: loss_fn(th, *args))(members)
    losses = jnp.where(jnp.isfinite(losses), losses, CAP)
    if rank:  # centred ranks in [−0.5, 0.5]
        r = jnp.argsort(jnp.argsort(losses)).astype(jnp.float32)
        f = r / (2 * pairs - 1) - 0.5
    else:
        f = losses
    diff = f[:pairs] - f[pairs:]
    g = jax.tree.map(lambda e: jnp.tensordot(diff, e, axes=1) / (2 * sigma * pairs), eps)
    g, norm = mask_and_clip(g, clip)
    return jnp.mean(losses), jax.tree.map(lambda a: a[0], aux), g, norm


# ------------------------------------------------------------------------------------------ tasks


@dataclasses.dataclass(frozen=True)
class Dist:
    """The task distribution (spec §2.7) and the inner network; all tuples are buckets, visited in turn."""

    ways: tuple[int, ...] = (5,)
    """Classes per task k (buckets); meta-training draws them from the classes not held out."""
    dims: tuple[int, ...] = (64,)
    """Projection dimensions d (buckets)."""
    widths: tuple[int, ...] = (64,)
    """Hidden widths of the inner MLP (buckets)."""
    horizons: tuple[int, ...] = (100, 300, 1000)
    """Inner horizons T in steps (buckets, log-spaced up to the deployment horizon)."""
    depth: int = 1
    """Hidden layers of the inner MLP."""
    batch: int = 16
    """Inner batch size."""
    query: int = 100
    """Query images per task (from the held-out part of the training split)."""
    held_out: tuple[int, ...] = (8, 9)
    """Fashion-MNIST classes never used in meta-training (meta-test tasks contain them)."""
    query_per_class: int = 1000
    """Last images of each class in the training split reserved for queries (never trained on inside a task)."""
    pool: int = 256
    """Training images per class drawn (with replacement) and projected per task; batches sample from them."""
    hidden: tuple[int, ...] = ()
    """Explicit hidden widths of the inner MLP (overrides widths × depth), e.g. the comparator's [170,130,100,70]."""
    project: bool = True
    """Random projection 784 → d; false: the standardised 784 pixels themselves (dims is ignored)."""
    activation: str = "relu"
    """Hidden activation of the inner MLP."""
    bias: bool = True
    """Biases in the inner MLP."""
    online: bool = False
    """false: batches drawn with replacement from the pool; true: every pool image exactly once, in a random order
    (the comparator's online protocol; then T must equal ways·pool/batch)."""
    stages: tuple[str, ...] = ()
    """Curriculum stages whose streams are added as buckets (spec §2.7, optional), e.g. [S1,S2]: the stage's own
    generator under the meta-training key (never the stage's test key), its canvas centred (x − 0.5) and flattened
    (``stage_frames`` frames: 6,144-d at 2), all 21 curriculum head units with the stage's labels (−1 elsewhere), the
    inner net d-width-21, T steps at ``batch``, query = ``query`` fresh generator images. A θ meta-trained with
    stages is in-distribution for them: its meta.json records them (the curriculum's headline θ uses none)."""
    stage_frames: int = 2
    """Frames per stage sample (the curriculum's learner sees 2; static stages repeat the frame)."""


@dataclasses.dataclass(frozen=True)
class MetaConfig:
    """``python -m localrules.meta train ...``: meta-train θ of rule=meta_learned."""

    family: str = "coef"
    """coef (16 shared coefficients) | mlp (coefficients + a tiny MLP per role)."""
    mlp_hidden: int = 8
    """H of the MLP family."""
    lr0: float = 0.05
    """Step e^λ of θ₀ for both roles (the comparator starts at 1e-3)."""
    feedback: str = "dfa"
    """Hidden-layer modulator of the rule: dfa | fa."""
    fan_in_scale: bool = True
    """Scale weight updates by 64 / fan_in (θ transfers across widths); false = the raw outer products, as in
    Shervani-Tabar & Rosenbaum's update."""
    method: str = "grad"
    """grad (meta-gradients through the inner scan) | es (antithetic evolution strategies)."""
    budget_s: float = 600.0
    """Wall-clock budget of the meta-training loop (compilation included)."""
    max_steps: int = 0
    """Stop after this many meta-steps (0 = budget only)."""
    tasks: int = 8
    """Tasks per meta-step (shared by all ES members)."""
    lr: float = 1e-2
    """Adam learning rate of θ (spec: 1e-2 for grad, 3e-2 for es)."""
    clip: float = 1.0
    """Global-norm clip of the meta-gradient."""
    sigma: float = 0.05
    """ES perturbation scale in coefficient/log space."""
    pairs: int = 16
    """ES antithetic pairs."""
    rank: bool = False
    """ES rank (fitness) shaping."""
    l1: float = 0.0
    """L1 penalty on the coefficients c (identifiability)."""
    segment: int = 50
    """Inner steps per jax.checkpoint segment (reverse-mode memory ∝ T / segment)."""
    candidates: int = 6
    """θ checkpoints saved at evenly spaced times (θ₀ is always one more)."""
    seed: int = 0
    """Meta-training seed (task keys come from fold_in(PRNGKey(seed), 1))."""
    out: str = "runs/meta/default"
    """Output directory."""
    dist: Dist = Dist()
    """Task distribution."""
    validate_steps: int = 0
    """If > 0: select the final θ among the candidates by a plug-in run (full 10-way Fashion-MNIST, 784-width-10,
    this many steps, 3 seeds); 0 = the last θ."""
    validate_width: int = 256
    """Hidden width of the plug-in selection run."""
    validate_tasks: int = 0
    """If > 0 (instead of validate_steps): select the final θ among the candidates by the mean query CE on this many
    fresh tasks of the meta-training distribution (training classes, the largest horizon, key
    fold_in(PRNGKey(seed), 2): disjoint from meta-training and from the meta-test keys) — for protocols whose
    deployment is the task itself (the comparator's)."""
    learn: tuple[str, ...] = ()
    """Coefficients c trained (names from rules/meta_learned.TERMS, both roles); the others stay at θ₀. () = all.
    The learning rates (loglr) and the MLP part are always trained."""


class Data:
    """Fashion-MNIST arranged by class: uint8 (10, n, 784) training images (first ``n − q`` per class for training
    inside tasks, last ``q`` for queries), per-pixel statistics of the training split."""

    def __init__(self, query_per_class: int = 1000, data_dir: str | None = None):
        from localrules.tasks import datasets

        x, y = datasets.load("fashion_mnist", "train", data_dir=data_dir)
        x = x.reshape(x.shape[0], -1)
        n = min(int(np.sum(y == c)) for c in range(10))
        if not 0 < query_per_class < n:
            raise ValueError(f"dist.query_per_class={query_per_class}: must be between 1 and {n - 1}")
        self.by_class = np.stack([x[y == c][:n] for c in range(10)])
        f = x.astype(np.float64) / 255.0
        self.mu = f.mean(0).astype(np.float32)
        self.sd = (f.std(0) + 0.1).astype(np.float32)
        self.n_train = n - query_per_class
        self.q = query_per_class

    def arrays(self):
        return jnp.asarray(self.by_class), jnp.asarray(self.mu), jnp.asarray(self.sd)


def rule_cfg(mc: MetaConfig) -> ml.Config:
    return ml.Config(family=mc.family, mlp_hidden=mc.mlp_hidden, feedback=mc.feedback, fan_in_scale=mc.fan_in_scale)


def make_task_fn(rcfg: ml.Config, dist: Dist, bucket: tuple, n_train: int, n_query: int, classes_from: tuple,
                 must_include: tuple = (), segment: int = 50, method: str = "rule"):
    """``task_fn(θ, key, data) -> (query CE (capped), query acc)`` for one bucket (k, d, width, T).

    ``method='rule'`` trains with rule(θ); ``'bp'`` trains by backprop-SGD with step e^{θ['loglr'][0]} (baseline).
    """
    k, d, width, T = bucket
    if not dist.project:
        d = 784
    if dist.online and T * dist.batch != k * dist.pool:
        raise ValueError(f"dist.online: horizon {T} × batch {dist.batch} must equal ways {k} × pool {dist.pool}")
    if len(classes_from) < k:
        raise ValueError(f"dist.ways={k}: only {len(classes_from)} classes are available ({classes_from})")
    arch = inner_arch(dist, d, width, k)
    heads = core.single_head("y", k)
    B, P = dist.batch, dist.pool
    pool_cls = jnp.asarray(classes_from, jnp.int32)
    inc = jnp.asarray(must_include, jnp.int32)
    seg = max(1, min(segment, T))
    if T % seg:
        raise ValueError(f"horizon {T} is not a multiple of segment={seg}; choose horizons divisible by it")

    def sample(data, ctx, key, t):
        pool, order = data
        if dist.online:
            j = jax.lax.dynamic_slice(order, (t * B,), (B,))
            y, i = j // P, j % P
        else:
            ky, ki = jax.random.split(key)
            y = jax.random.randint(ky, (B,), 0, k)
            i = jax.random.randint(ki, (B,), 0, P)
        return core.Batch(pool[y, i], y[:, None])

    def task_fn(theta, key, data):
        images, mu, sd = data
        kc, kp, ks, kq, kseed = jax.random.split(key, 5)
        perm = jax.random.permutation(kc, pool_cls)
        if len(must_include):  # held-out classes first, the rest random; then a random label order
            others = perm[jnp.argsort(jnp.isin(perm, inc), stable=True)]  # not-included classes first, in perm order
            chosen = jnp.concatenate([inc, others[: len(classes_from) - len(must_include)]])
            chosen = jax.random.permutation(jax.random.fold_in(kc, 1), chosen[:k])
        else:
            chosen = perm[:k]
        R = jax.random.normal(kp, (784, d), jnp.float32) / math.sqrt(784.0) if dist.project else None

        def prep(u8):
            z = (u8.astype(jnp.float32) / 255.0 - mu[None, :]) / sd[None, :]
            return z @ R if dist.project else z

        idx = jax.random.randint(ks, (k, P), 0, n_train)
        pool = jax.vmap(lambda c, i: prep(images[c][i]))(chosen, idx)  # (k, P, d)
        qy = jnp.arange(dist.query, dtype=jnp.int32) % k
        qi = n_train + jax.random.randint(kq, (dist.query,), 0, n_query)
        qx = prep(images[chosen[qy], qi])
        order = jax.random.permutation(jax.random.fold_in(ks, 1), k * P)
        task = core.Task("meta", heads, (d,), (pool, order), core.no_context, sample, None, None)
        state = _train_inner(rcfg, arch, heads, theta, method, task, (pool, order), kseed, T, seg)
        logits = arch.apply(state.params, qx)
        ce = cap_loss(core.loss(logits, qy[:, None], heads))
        acc = jnp.mean(jnp.argmax(logits, -1) == qy)
        return ce, acc

    task_fn.arch, task_fn.heads = arch, heads
    return task_fn


def _train_inner(rcfg, arch, heads, theta, method, task, data, kseed, T, seg):
    """The inner loop of one meta-training task: ``rule(θ)`` (or backprop at θ's ``loglr`` for ``method="bp"``)
    trains a fresh network for T steps, as T/seg rematerialised segments of the lab's own chunk."""
    rule = ml.make_with_theta(rcfg, arch, heads, theta) if method == "rule" else _backprop_rule(arch, heads)
    lr = jnp.exp(theta["loglr"][0]) if method == "bp" else 1.0
    program = make_program(rule, optax.sgd(lr), arch, task)
    seed = jax.random.randint(kseed, (), 0, 2**30)

    @jax.checkpoint
    def segment_fn(st):
        return program.chunk(st, data, seed, seg)[0]

    state, _ = jax.lax.scan(lambda st, _: (segment_fn(st), None), program.init(seed), None, length=T // seg)
    return state


def make_stage_task_fn(rcfg: ml.Config, dist: Dist, bucket: tuple, segment: int = 50, method: str = "rule"):
    """``task_fn(θ, key, sprites) -> (query CE (capped), query acc)`` for a curriculum-stage bucket
    ``(stage, d, width, T)``: the stage generator renders every batch from the task's key; ``sprites`` is the stage's
    atlas (``task_fn.data()``), passed as an argument rather than baked in as a constant (3× faster to compile)."""
    from localrules.tasks import nursery

    name, _, width, T = bucket
    if name not in nursery.STAGES or name in ("S4", "S5"):
        raise ValueError(f"dist.stages: {name!r} cannot be a meta-training stream; choose among S1, S2, S3, S6 "
                         "(S4/S5 are scored by forced choice)")
    F = dist.stage_frames
    if F not in (1, 2) or (name == "S6" and F != 2):
        raise ValueError(f"dist.stage_frames={F}: choose 1 or 2 (S6 needs 2)")
    cfg = nursery.stage_config(name)
    d = F * nursery.CANVAS * nursery.CANVAS * 3
    heads = nursery.HEADS
    arch = inner_arch(dist, d, width, heads.total)
    B = dist.batch
    seg = max(1, min(segment, T))
    if T % seg:
        raise ValueError(f"horizon {T} is not a multiple of segment={seg}; choose horizons divisible by it")

    def render(sprites, key, t, n):
        x, y, _ = nursery.generate(name, cfg, key, t, n, F, sprites=sprites)
        return core.Batch(x.reshape(n, -1) - 0.5, y)

    def sample(sprites, ctx, key, t):
        return render(sprites, key, t, B)

    def task_fn(theta, key, sprites):
        kq, kseed = jax.random.split(key)
        task = core.Task("meta/" + name, heads, (d,), sprites, core.no_context, sample, None, None)
        state = _train_inner(rcfg, arch, heads, theta, method, task, sprites, kseed, T, seg)
        q = render(sprites, kq, 0, dist.query)
        logits = arch.apply(state.params, q.x)
        ce = cap_loss(core.loss(logits, q.y, heads))
        ok, valid = core.correct(logits, q.y, heads)
        acc = jnp.sum(ok & valid) / jnp.maximum(jnp.sum(valid), 1)
        return ce, acc

    task_fn.arch, task_fn.heads, task_fn.data = arch, heads, lambda: nursery.atlas(cfg.sigma)
    return task_fn


def make_bucket_task_fn(rcfg: ml.Config, dist: Dist, bucket: tuple, n_train: int, n_query: int,
                        classes_from: tuple, segment: int = 50):
    """The meta-training task function of a bucket: Fashion-MNIST ``(k, d, width, T)`` or stage ``(S?, d, width, T)``."""
    if isinstance(bucket[0], str):
        return make_stage_task_fn(rcfg, dist, bucket, segment=segment)
    return make_task_fn(rcfg, dist, bucket, n_train, n_query, classes_from, segment=segment)


def inner_arch(dist: Dist, d: int, width: int, k: int):
    hidden = tuple(dist.hidden) or (width,) * dist.depth
    return build_mlp(MLPConfig(hidden=hidden, activation=dist.activation, bias=dist.bias, init="normal"), (d,), k)


def _backprop_rule(arch, heads):
    def update(params, state, batch, key):
        loss, g = jax.value_and_grad(lambda p: core.loss(arch.apply(p, batch.x), batch.y, heads))(params)
        return g, state, {"loss": loss}

    return core.Rule(lambda key, params: (), update, lambda p, s, x: arch.apply(p, x))


def batch_loss(task_fn, l1: float = 0.0):
    """Mean capped query CE over a batch of task keys (+ l1·‖c‖₁); aux = mean query accuracy."""

    def f(theta, keys, data):
        ce, acc = jax.vmap(task_fn, in_axes=(None, 0, None))(theta, keys, data)
        loss = jnp.mean(ce)
        if l1:
            loss = loss + l1 * jnp.sum(jnp.abs(theta["c"]))
        return loss, jnp.mean(acc)

    return f


def buckets(dist: Dist) -> list[tuple]:
    """Fashion-MNIST buckets (k, d, width, T), then stage buckets (stage, input dim, width, T), per horizon."""
    out = []
    for T in dist.horizons:
        out += [(k, d, w, T) for k in dist.ways for d in dist.dims for w in dist.widths]
        out += [(st, dist.stage_frames * 3072, w, T) for st in dist.stages for w in dist.widths]
    return out


# ------------------------------------------------------------------------------------------ FLOPs


def inner_flops(rcfg: ml.Config, theta, dist: Dist, bucket, method: str, tasks: int, pairs: int) -> dict:
    """Compiled FLOPs of one inner step (forward, and forward+VJP) × T × tasks (× members), per meta-step."""
    k, d, w, T = bucket
    stage = isinstance(k, str)
    if stage:
        from localrules.tasks import nursery

        heads = nursery.HEADS
        k = heads.total
    else:
        d = d if dist.project else 784
        heads = core.single_head("y", k)
    arch = inner_arch(dist, d, w, k)
    opt = optax.sgd(1.0)
    params = arch.init(jax.random.PRNGKey(0))
    batch = core.Batch(jnp.zeros((dist.batch, d)), jnp.zeros((dist.batch, 1), jnp.int32))

    def step(theta, params):
        rule = ml.make_with_theta(rcfg, arch, heads, theta)
        st = rule.init(jax.random.PRNGKey(1), params)
        g, _, _ = rule.update(params, st, batch, jax.random.PRNGKey(2))
        u, _ = opt.update(g, opt.init(params), params)
        return optax.apply_updates(params, u)

    fwd = compiled_cost(jax.jit(step).lower(theta, params).compile())["flops"]

    def vjp(theta, params):
        out, f = jax.vjp(step, theta, params)
        return f(out)

    both = compiled_cost(jax.jit(vjp).lower(theta, params).compile())["flops"]
    hid = tuple(dist.hidden) or (w,) * dist.depth
    q = 2.0 * dist.query * sum(a * b for a, b in zip((d,) + hid, hid + (k,)))
    # projection of the task's images (no gradient); stage rendering is a gather, not counted
    prep = 2.0 * k * (dist.pool + dist.query) * 784 * d if dist.project and not stage else 0.0
    if method == "grad":
        per_task = T * (2 * fwd + both) + 3 * q + prep  # scan forward, recomputed forward (checkpoint), forward+VJP
        total = tasks * per_task
    else:
        total = 2 * pairs * tasks * (T * fwd + q) + tasks * prep
    return {"inner_step_flops": fwd, "inner_step_vjp_flops": both, "meta_step_flops": total}


# ------------------------------------------------------------------------------------------ training


def train(mc: MetaConfig, log=print, argv=None) -> dict:
    """Meta-train θ within ``budget_s``; returns the summary (also written to ``<out>/summary.json``)."""
    if mc.method not in ("grad", "es"):
        raise ValueError(f"method={mc.method!r}: choose grad or es")
    if mc.tasks < 1 or mc.pairs < 1 or mc.budget_s <= 0:
        raise ValueError("tasks, pairs and budget_s must be positive")
    if mc.validate_tasks > 0 and mc.validate_steps > 0:
        raise ValueError("validate_tasks and validate_steps both set: choose one way of selecting θ (0 = off)")
    learn_mask(mc)  # unknown terms fail before any work
    t_start = time.time()
    dist = mc.dist
    train_classes = tuple(c for c in range(10) if c not in dist.held_out)
    data_np = Data(dist.query_per_class)
    data = data_np.arrays()
    rcfg = rule_cfg(mc)
    root = jax.random.fold_in(jax.random.PRNGKey(mc.seed), 1)
    theta = ml.init_theta(jax.random.fold_in(root, 0), mc.family, mc.mlp_hidden, mc.lr0)
    theta0 = theta
    opt = optax.adam(mc.lr)
    opt_state = opt.init(theta)
    bks = buckets(dist)
    steps, bdata = {}, {}
    for b in bks:
        task_fn = make_bucket_task_fn(rcfg, dist, b, data_np.n_train, data_np.q, train_classes, segment=mc.segment)
        steps[b] = jax.jit(_make_meta_step(task_fn, opt, mc))
        bdata[b] = task_fn.data() if isinstance(b[0], str) else data  # stage buckets: the sprite atlas
    os.makedirs(mc.out, exist_ok=True)
    writer = tb.Writer(os.path.join(mc.out, "tb"))
    flops = {b: inner_flops(rcfg, theta, dist, b, mc.method, mc.tasks, mc.pairs) for b in bks}
    base_meta = {"family": dataclasses.asdict(rcfg), "dist": dataclasses.asdict(dist),
                 "meta": {k: v for k, v in dataclasses.asdict(mc).items() if k != "dist"},
                 "command": " ".join(argv) if argv else None}
    cand_dir = os.path.join(mc.out, "candidates")
    ml.save_theta(os.path.join(cand_dir, "step_0"), theta0, {**base_meta, "step": 0, "seconds": 0.0})
    saved = [0]
    n, meta_flops, hist = 0, 0.0, []
    budget_end = t_start + mc.budget_s
    save_times = [t_start + mc.budget_s * (i + 1) / (mc.candidates + 1) for i in range(mc.candidates)]
    while time.time() < budget_end and (mc.max_steps <= 0 or n < mc.max_steps):
        b = bks[n % len(bks)]
        key = jax.random.fold_in(root, n + 1)
        theta, opt_state, loss, acc, norm = steps[b](theta, opt_state, key, bdata[b])
        loss, acc, norm = float(loss), float(acc), float(norm)
        n += 1
        meta_flops += flops[b]["meta_step_flops"]
        lrs = np.exp(np.asarray(theta["loglr"]))
        c = np.asarray(theta["c"])
        tag = f"{b[0]}_T{b[3]}" if isinstance(b[0], str) else f"T{b[3]}"
        row = {"step": n, "bucket": tag, "loss": loss, "acc": acc, "grad_norm": norm, "t": time.time() - t_start}
        hist.append(row)
        scal = {"meta/loss": loss, "meta/query_acc": acc, "meta/grad_norm": norm, "meta/horizon": b[3],
                "meta/lr_hidden": lrs[0], "meta/lr_head": lrs[1], "meta/gflop": meta_flops / 1e9,
                f"meta/loss_{tag}": loss}
        for r, role in enumerate(ml.ROLES):
            for i, term in enumerate(ml.TERMS):
                scal[f"theta/{role}/{term}"] = float(c[r, i])
        writer.scalars(scal, n)
        if n % 25 == 0 or n == 1:
            log(f"  meta-step {n}  {tag}  loss {loss:.4f}  acc {acc:.3f}  |g| {norm:.3f}  "
                f"lr {lrs[0]:.4f}/{lrs[1]:.4f}  {time.time() - t_start:.0f} s")
            writer.flush()
        while save_times and time.time() >= save_times[0]:
            save_times.pop(0)
            ml.save_theta(os.path.join(cand_dir, f"step_{n}"), theta,
                          {**base_meta, "step": n, "seconds": time.time() - t_start, "meta_flops": meta_flops})
            saved.append(n)
    seconds = time.time() - t_start
    if saved[-1] != n:
        ml.save_theta(os.path.join(cand_dir, f"step_{n}"), theta,
                      {**base_meta, "step": n, "seconds": seconds, "meta_flops": meta_flops})
        saved.append(n)
    writer.close()
    summary = {"meta_steps": n, "seconds": seconds, "meta_flops": meta_flops, "flops_per_bucket": {
        str(b): f for b, f in flops.items()}, "candidates": saved, "history_tail": hist[-10:]}
    chosen = n
    if mc.validate_tasks > 0:
        T = max(dist.horizons)
        b = next(b for b in bks if b[3] == T and not isinstance(b[0], str))
        fn = jax.jit(jax.vmap(make_task_fn(rcfg, dist, b, data_np.n_train, data_np.q, train_classes,
                                           segment=mc.segment), in_axes=(None, 0, None)))
        vkeys = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(mc.seed), 2), mc.validate_tasks)
        scores = {}
        for s in saved:
            th, _ = ml.load_theta(os.path.join(cand_dir, f"step_{s}"))
            ce, acc = fn(th, vkeys, data)
            scores[s] = {"ce": float(jnp.mean(ce)), "acc": float(jnp.mean(acc))}
            log(f"  meta-validation θ@{s} ({mc.validate_tasks} tasks, T={T}): CE {scores[s]['ce']:.4f} "
                f"acc {scores[s]['acc']:.4f}")
        chosen = min(scores, key=lambda s: scores[s]["ce"])
        summary["validation"] = {str(k): v for k, v in scores.items()}
    elif mc.validate_steps > 0:
        scores = {}
        for s in saved:
            th, _ = ml.load_theta(os.path.join(cand_dir, f"step_{s}"))
            r = plugin_accuracy(rcfg, th, mc.validate_width, mc.validate_steps, seeds=3, data_dir=None,
                                validation=True)
            scores[s] = r
            log(f"  plug-in validation θ@{s}: {r['mean']:.4f} ± {r['sd']:.4f}")
        chosen = max(scores, key=lambda s: scores[s]["mean"])
        summary["validation"] = {str(k): v for k, v in scores.items()}
    summary["chosen_step"] = chosen
    final, _ = ml.load_theta(os.path.join(cand_dir, f"step_{chosen}"))
    summary["path"] = ml.save_theta(os.path.join(mc.out, "theta"), final, {
        **base_meta, "step": chosen, "seconds": seconds, "meta_steps": n, "meta_flops": meta_flops,
        "selection": summary.get("validation")})
    with open(os.path.join(mc.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1, default=str)
    log(f"meta-training: {n} meta-steps in {seconds:.0f} s, {meta_flops / 1e12:.3f} TFLOP (meta-training only); "
        f"θ (step {chosen}) → {summary['path']}")
    return summary


def learn_mask(mc: MetaConfig):
    """(2, len(TERMS)) 0/1 mask of the trained coefficients (``learn``), or None for all."""
    if not mc.learn:
        return None
    bad = [t for t in mc.learn if t not in ml.TERMS]
    if bad:
        raise ValueError(f"learn={list(mc.learn)}: unknown term(s) {bad}; choose from {list(ml.TERMS)}")
    return jnp.asarray([[1.0 if t in mc.learn else 0.0 for t in ml.TERMS]] * 2, jnp.float32)


def _make_meta_step(task_fn, opt, mc: MetaConfig):
    loss_fn = batch_loss(task_fn, mc.l1)
    mask = learn_mask(mc)

    def step(theta, opt_state, key, data):
        keys = jax.random.split(key, mc.tasks + 1)
        if mc.method == "grad":
            reg = (lambda t: mc.l1 * jnp.sum(jnp.abs(t["c"]))) if mc.l1 else None
            loss, acc, g, norm = task_meta_gradient(task_fn, theta, keys[1:], data, clip=mc.clip, reg=reg)
        else:
            loss, acc, g, norm = es_gradient(loss_fn, theta, keys[0], keys[1:], data, sigma=mc.sigma,
                                             pairs=mc.pairs, rank=mc.rank, clip=mc.clip)
        if mask is not None:  # frozen coefficients: zero gradient, so Adam leaves them at θ₀
            g = {**g, "c": g["c"] * mask}
        u, opt_state = opt.update(g, opt_state, theta)
        return optax.apply_updates(theta, u), opt_state, loss, acc, norm

    return step


# ------------------------------------------------------------------------------------------ Oja recovery


def oja_recovery(seed: int = 0, steps: int = 1500, d: int = 8, T: int = 300, eta: float = 0.02, tasks: int = 16,
                 lr: float = 1e-2, l1: float = 1e-3, unroll: int = 1):
    """Spec §4.2: meta-train the 27-term polynomial rule Δw_i = η Σ θ_abc x_i^a y^b w_i^c (a, b, c ∈ {0, 1, 2}) of
    one linear neuron y = wᵀx on tasks whose best answer is the first principal component with ‖w‖ = 1 — the task
    Oja's rule solves. Same estimator as ``method=grad`` (:func:`task_meta_gradient`: capped loss, non-finite → 0,
    global-norm clip 1), Adam ``lr``, all meta-steps in one ``lax.scan``. Returns (θ (27,), seconds)."""
    lam = jnp.asarray([4.0] + [1.0] * (d - 1))

    def poly(u):  # (..., 3): u^0, u^1, u^2 as products, not pow (cheaper, and no pow in the reverse pass)
        return jnp.stack([jnp.ones_like(u), u, u * u], -1)

    def task_loss(theta, key):
        kq, kw, kz = jax.random.split(key, 3)
        Q, _ = jnp.linalg.qr(jax.random.normal(kq, (d, d)))
        w0 = jax.random.normal(kw, (d,)) / math.sqrt(d)
        xs = (jax.random.normal(kz, (T, d)) * jnp.sqrt(lam)[None, :]) @ Q.T

        th = theta.reshape(3, 3, 3)  # (a, b, c): x^a y^b w^c

        def body(w, x):  # Δw_i = η Σ_abc θ_abc x_i^a y^b w_i^c, contracted over b first: η Σ_ac X_ia M_ac W_ic
            y = jnp.dot(w, x)
            M = jnp.einsum("abc,b->ac", th, poly(y))
            return w + eta * jnp.sum((poly(x) @ M) * poly(w), -1), None

        w, _ = jax.lax.scan(body, w0, xs, unroll=unroll)
        n2 = jnp.sum(w * w)
        return cap_loss(1.0 - jnp.dot(w, Q[:, 0]) ** 2 / n2 + (n2 - 1.0) ** 2)

    def task_fn(theta, key):
        return task_loss(theta, key), 0.0

    opt = optax.adam(lr)
    root = jax.random.PRNGKey(seed)
    theta0 = 0.01 * jax.random.normal(jax.random.fold_in(root, 0), (27,))

    @jax.jit
    def run(theta):
        def step(carry, i):
            th, s = carry
            keys = jax.random.split(jax.random.fold_in(root, i + 1), tasks)
            L, _, g, norm = task_meta_gradient(task_fn, th, keys, reg=lambda t: l1 * jnp.sum(jnp.abs(t)))
            u, s = opt.update(g, s, th)
            return (optax.apply_updates(th, u), s), (L, norm)

        (th, _), hist = jax.lax.scan(step, (theta, opt.init(theta)), jnp.arange(steps))
        return th, hist

    t0 = time.time()
    theta, hist = jax.block_until_ready(run(theta0))
    return theta, time.time() - t0, hist


# ------------------------------------------------------------------------------------------ evaluation


def random_features_theta(head_lr: float) -> dict:
    """Random frozen hidden features (hidden role: no update) + delta-rule linear head at step ``head_lr``."""
    th = ml.init_theta(None, "coef")
    c = np.array(th["c"])
    c[ml.HIDDEN] = 0.0
    return {"c": jnp.asarray(c), "loglr": jnp.asarray([0.0, math.log(head_lr)], jnp.float32)}


LR_GRID = (0.01, 0.03, 0.1, 0.3)


def meta_test(theta, rcfg: ml.Config, dist: Dist, horizons: tuple, n_tasks: int = 64, key_root: int = 10_000,
              ways: int | None = None, width: int | None = None, dim: int | None = None, log=print,
              theta0=None, seeds: int = 1, lrs: tuple = LR_GRID) -> dict:
    """Query CE/accuracy on fresh tasks that contain the held-out classes, under key roots disjoint from
    meta-training: the learned θ vs θ₀ (``theta0``; default DFA/FA + delta rule at lr 0.05) vs the same hand rule at
    its best lr vs random frozen features + delta-rule head (best head lr) vs BP-SGD (best lr, and at θ₀'s lr:
    ``bp_sgd_lr0``), same nets, batches and horizons. ``theta`` is one θ or a list of θ, one per seed (e.g. from meta-training seeds 0, 1, 2): seed s
    evaluates ``theta[s]`` on task set s (``n_tasks`` tasks under key ``key_root + s``, fresh class subsets,
    initialisations, feedback and projections), and every baseline on the same task sets. A baseline's lr is the
    one with the lowest CE averaged over all seeds (chosen on these tasks, as the spec's "best reported").
    Returns {T: {method: {ce, ce_sd, acc, acc_sd, per_seed: [(ce, acc)], lr?}}} (sd over seeds)."""
    data_np = Data(dist.query_per_class)
    data = data_np.arrays()
    k = ways or dist.ways[0]
    d = dim or dist.dims[0]
    w = width or dist.widths[0]
    thetas = list(theta) if isinstance(theta, (list, tuple)) else [theta]
    theta0 = ml.init_theta(None, "coef") if theta0 is None else theta0
    fb = rcfg.feedback
    keysets = [jax.random.split(jax.random.PRNGKey(key_root + s), n_tasks) for s in range(seeds)]
    out = {}
    for T in horizons:
        bucket = (k, d, w, T)
        seg = math.gcd(T, 50)
        args = (rcfg, dist, bucket, data_np.n_train, data_np.q, tuple(range(10)))
        rule_fn = jax.jit(jax.vmap(make_task_fn(*args, must_include=dist.held_out, segment=seg),
                                   in_axes=(None, 0, None)))
        bp_fn = jax.jit(jax.vmap(make_task_fn(*args, must_include=dist.held_out, segment=seg, method="bp"),
                                 in_axes=(None, 0, None)))

        def ev(fn, th_of_seed):
            per = []
            for s, keys in enumerate(keysets):
                ce, acc = fn(th_of_seed(s), keys, data)
                per.append((float(jnp.mean(ce)), float(jnp.mean(acc))))
            a = np.asarray(per)
            sd = a.std(0, ddof=1) if len(per) > 1 else np.zeros(2)
            return {"ce": float(a[:, 0].mean()), "ce_sd": float(sd[0]), "acc": float(a[:, 1].mean()),
                    "acc_sd": float(sd[1]), "per_seed": per}

        def best(fn, mk):
            runs = {lr: ev(fn, lambda s, lr=lr: mk(lr)) for lr in lrs}
            lr = min(runs, key=lambda v: runs[v]["ce"])
            return {**runs[lr], "lr": lr}

        res = {"theta": ev(rule_fn, lambda s: thetas[s % len(thetas)]),
               f"{fb}_theta0": ev(rule_fn, lambda s: theta0),
               f"{fb}_best_lr": best(rule_fn, lambda lr: {"c": ml.init_theta()["c"],
                                                           "loglr": jnp.full((2,), math.log(lr))}),
               "random_features": best(rule_fn, random_features_theta),
               "bp_sgd": best(bp_fn, lambda lr: {"c": jnp.zeros((2, 7)), "loglr": jnp.full((2,), math.log(lr))}),
               "bp_sgd_lr0": {**ev(bp_fn, lambda s: {"c": jnp.zeros((2, 7)), "loglr": theta0["loglr"]}),
                              "lr": round(float(jnp.exp(theta0["loglr"][0])), 6)}}
        out[T] = res
        log(f"  T={T} ({seeds} seed(s) × {n_tasks} tasks): " + "  ".join(
            f"{n} CE {v['ce']:.3f}±{v['ce_sd']:.3f} acc {100 * v['acc']:.2f}±{100 * v['acc_sd']:.2f}"
            + (f" (lr {v['lr']})" if "lr" in v else "") for n, v in res.items()))
    return out


_PLUGIN_CACHE: dict = {}


def _fmnist_flat(data_dir=None):
    if ("data", data_dir) not in _PLUGIN_CACHE:
        from localrules.tasks import datasets

        xtr, ytr = datasets.load("fashion_mnist", "train", data_dir=data_dir)
        xte, yte = datasets.load("fashion_mnist", "test", data_dir=data_dir)
        _PLUGIN_CACHE[("data", data_dir)] = (xtr.reshape(len(xtr), -1), ytr, xte.reshape(len(xte), -1), yte)
    return _PLUGIN_CACHE[("data", data_dir)]


def _plugin_runner(rcfg, width, steps, seeds, validation, method, batch, data_dir):
    key = (rcfg, width, steps, seeds, validation, method, batch, data_dir)
    if key in _PLUGIN_CACHE:
        return _PLUGIN_CACHE[key]
    xtr, ytr, xte, yte = _fmnist_flat(data_dir)
    f = xtr.astype(np.float64) / 255.0
    mu, sd = jnp.asarray(f.mean(0), jnp.float32), jnp.asarray(f.std(0) + 0.1, jnp.float32)
    if validation:
        xte, yte, xtr, ytr = xtr[50_000:], ytr[50_000:], xtr[:50_000], ytr[:50_000]
    n = len(xtr)
    arch = build_mlp(MLPConfig(hidden=(width,), init="normal"), (784,), 10)
    heads = core.single_head("fashion", 10)

    def prep(u8):
        return (u8.astype(jnp.float32) / 255.0 - mu[None, :]) / sd[None, :]

    def sample(data, ctx, key, t):
        x, y = data
        i = jax.random.randint(key, (batch,), 0, n)
        return core.Batch(prep(x[i]), y[i][:, None])

    task = core.Task("fmnist_plugin", heads, (784,), (jnp.asarray(xtr), jnp.asarray(ytr, jnp.int32)),
                     core.no_context, sample, None, None)
    test = (jnp.asarray(xte), jnp.asarray(yte, jnp.int32))

    @jax.jit
    def run(theta, data, test):
        if method == "rule":
            rule, opt = ml.make_with_theta(rcfg, arch, heads, theta), optax.sgd(1.0)
        else:
            rule, opt = _backprop_rule(arch, heads), optax.sgd(jnp.exp(theta["loglr"][0]))
        program = make_program(rule, opt, arch, task)

        def one(seed):
            st = program.init(seed)
            st = program.chunk(st, data, seed, steps)[0]
            xq, yq = test
            return jnp.mean(jnp.argmax(arch.apply(st.params, prep(xq)), -1) == yq), st.diverged_at

        return jax.vmap(one)(jnp.arange(seeds, dtype=jnp.int32))

    _PLUGIN_CACHE[key] = (run, task.data, test)
    return _PLUGIN_CACHE[key]


def plugin_accuracy(rcfg: ml.Config, theta, width: int, steps: int, seeds: int = 3, data_dir=None,
                    validation: bool = False, method: str = "rule", lr: float = 0.1, batch: int = 16) -> dict:
    """The θ as an ordinary rule (the lab's engine, optax.sgd(1.0)) on full 10-way Fashion-MNIST: 784-width-10,
    batch 16 drawn with replacement, per-pixel standardised pixels as in meta-training, ``steps`` steps, seeds
    0..seeds−1; accuracy on the 10,000 test images (``validation=True``: trained on the first 50,000 training
    images, scored on the last 10,000 — for selecting θ or a baseline's lr without touching the test split).
    ``method='bp'``: backprop-SGD at ``lr`` on the same net, batches and seeds."""
    run, data, test = _plugin_runner(rcfg, width, steps, seeds, validation, method, batch, data_dir)
    if method != "rule":
        theta = {"c": jnp.zeros((2, len(ml.TERMS))), "loglr": jnp.full((2,), math.log(lr), jnp.float32)}
    acc, div = run(theta, data, test)
    acc = np.asarray(acc)
    return {"mean": float(acc.mean()), "sd": float(acc.std(ddof=1)) if seeds > 1 else 0.0,
            "per_seed": acc.tolist(), "diverged": np.asarray(div).tolist()}


# ------------------------------------------------------------------------------------------ CLI


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """``python -m localrules.meta eval|plugin theta=<dir> ...``."""

    theta: str = ""
    """θ directory or shipped name ('' = θ₀)."""
    horizons: tuple[int, ...] = (100, 1000, 2000)
    """eval: inner horizons of the meta-test tasks; plugin: training steps (batch 16)."""
    tasks: int = 64
    """eval: meta-test tasks per horizon."""
    ways: int = 5
    """eval: classes per meta-test task."""
    width: int = 64
    """eval: hidden width of the meta-test net; plugin: hidden width of 784-width-10."""
    dim: int = 64
    """eval: projection dimension."""
    seeds: int = 3
    """plugin: network seeds; eval: meta-test task sets (``tasks`` tasks each, key 10000 + s)."""
    thetas: tuple[str, ...] = ()
    """eval: one θ per seed instead of ``theta`` (e.g. the θ of meta-training seeds 0, 1, 2)."""
    lrs: tuple[float, ...] = LR_GRID
    """eval: learning-rate grid of the baselines (hand rule, random-features head, BP-SGD)."""
    out: str = ""
    """Write the results as JSON here ('' = print only)."""


def _parse(cls, tokens):
    """key=value tokens; ``preset=<name or file>`` reads a ``sweeps/meta_*.toml`` file's [base] table first."""
    from localrules import cli

    items = []
    for t in tokens:
        k, v = cli.split_token(t)
        if k == "preset":
            from localrules.sweep import read_sweep, sweep_path

            _, combos = read_sweep(sweep_path(v))
            items = list(combos[0]) + items
        else:
            items.append((k, v))
    return cli.apply_overrides(cls(), items)


def plugin(ec: EvalConfig, log=print) -> dict:
    theta, meta = ml.load_theta(ec.theta) if ec.theta else (ml.init_theta(), {})
    rcfg = ml.rule_settings(meta)
    res = {}
    for T in ec.horizons:
        r = {"theta": plugin_accuracy(rcfg, theta, ec.width, T, ec.seeds),
             "dfa_theta0": plugin_accuracy(rcfg, ml.init_theta(), ec.width, T, ec.seeds)}
        for name, mk in (("dfa", lambda lr: {"c": ml.init_theta()["c"], "loglr": jnp.full((2,), math.log(lr))}),
                         ("random_features", random_features_theta)):
            best = None
            for lr in LR_GRID:  # lr chosen on the validation split, reported on the test split
                v = plugin_accuracy(rcfg, mk(lr), ec.width, T, ec.seeds, validation=True)["mean"]
                if best is None or v > best[0]:
                    best = (v, lr)
            r[name] = {**plugin_accuracy(rcfg, mk(best[1]), ec.width, T, ec.seeds), "lr": best[1]}
        best = None
        for lr in LR_GRID:
            v = plugin_accuracy(rcfg, None, ec.width, T, ec.seeds, validation=True, method="bp", lr=lr)["mean"]
            if best is None or v > best[0]:
                best = (v, lr)
        r["bp_sgd"] = {**plugin_accuracy(rcfg, None, ec.width, T, ec.seeds, method="bp", lr=best[1]), "lr": best[1]}
        res[T] = r
        log(f"  {T} steps: " + "  ".join(f"{n} {100 * v['mean']:.2f}±{100 * v['sd']:.2f}"
                                        + (f" (lr {v['lr']})" if "lr" in v else "") for n, v in r.items()))
    return res


USAGE = """usage: python -m localrules.meta train [preset=<sweeps/meta_*.toml>] [key=value ...]     meta-train θ
       python -m localrules.meta eval theta=<dir> [horizons=[100,1000]] [tasks=64] [seeds=3] [thetas=[d0,d1,d2]]
                                                      meta-test on held-out tasks
       python -m localrules.meta plugin theta=<dir> [horizons=[1000]] [seeds=3]      full 10-way Fashion-MNIST"""


def main(argv=None) -> int:
    from localrules import cli

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in ("train", "eval", "plugin"):
        print(USAGE)
        if argv and argv[0] in ("-h", "--help"):
            print(cli.render_help(MetaConfig(), "meta train"))
            return 0
        return 2
    try:
        if argv[0] == "train":
            mc = _parse(MetaConfig, argv[1:])
            train(mc, argv=["python -m localrules.meta"] + argv)
            return 0
        ec = _parse(EvalConfig, argv[1:])
        if argv[0] == "eval":
            if ec.thetas and ec.theta:
                raise ValueError("give theta=<dir> or thetas=[dir,...] (one per seed), not both")
            if ec.thetas and len(ec.thetas) != ec.seeds:
                raise ValueError(f"thetas has {len(ec.thetas)} entries but seeds={ec.seeds}: give one θ per seed")
            loaded = [ml.load_theta(t) for t in ec.thetas] if ec.thetas else \
                [ml.load_theta(ec.theta) if ec.theta else (ml.init_theta(), {})]
            meta = loaded[0][1]
            rcfg = ml.rule_settings(meta)
            dist = Dist(**{k: tuple(v) if isinstance(v, list) else v for k, v in meta.get("dist", {}).items()})
            theta0 = ml.init_theta(None, "coef", lr=meta.get("meta", {}).get("lr0", 0.05))
            res = meta_test([t for t, _ in loaded], rcfg, dist, ec.horizons, ec.tasks, ways=ec.ways,
                            width=ec.width, dim=ec.dim, theta0=theta0, seeds=ec.seeds, lrs=ec.lrs)
        else:
            res = plugin(ec)
        if ec.out:
            with open(ec.out, "w") as f:
                json.dump({"argv": argv, "results": res}, f, indent=1, default=str)
        return 0
    except (ValueError, cli.CLIError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
