"""``task=nursery``: the developmental curriculum S1–S6 (curriculum.md) with its orders, pacing, acuity schedules,
replay and real-data stages — the lab's default task.

Every knob is a field of :class:`Config`, reachable from the command line (``task.order=reverse``,
``task.pacing=samples``, ``task.acuity=mixture``, ``task.replay=0.1``, ``task.real=[fashion_mnist]``).
The stages themselves (renderer, generators, tests, forced choice) are :mod:`localrules.tasks.nursery`; the runner
(schedule, graduation, R matrix, metrics) is :mod:`localrules.curriculum`.

Orders: ``developmental`` (as listed), ``reverse``, ``random`` (permutation seeded by ``order_seed``), ``joint``
(one IID mixture of all stages for the summed budget; no graduation, one row of R), ``growing_random`` (random
order; stage k trains on the uniform mixture of the first k stages, Wu, Dyer & Neyshabur 2021), ``cyclical``
(developmental order; within each stage, phases of ``cycle`` samples alternate the current stage and the uniform
mixture of all stages, Kesgin & Amasyali 2024).

Acuity (training streams only; every test stays at its stage's default so R matrices are comparable):
``stepwise`` (stage defaults: S1 σ=3, S2 σ=1.5, then 0.5), ``sharp`` (σ=0 throughout), ``blur`` (σ=3 throughout),
``continuous`` (σ falling linearly from 3 to 0 across the stages), ``sharp_to_blur`` (σ rising from 0 to 3),
``mixture`` (each sample sharp with probability ``mix``, else at the stage default: blurred + sharp training).
"""

from __future__ import annotations

import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from localrules import core

ORDERS = ("developmental", "reverse", "random", "joint", "growing_random", "cyclical")
ACUITY = ("stepwise", "sharp", "blur", "continuous", "sharp_to_blur", "mixture")
REAL_HEADS = {"mnist": ("digit", 10), "fashion_mnist": ("fashion", 10), "cifar10": ("object10", 10)}


@dataclasses.dataclass(frozen=True)
class Config:
    """The developmental nursery curriculum S1–S6 (procedural, no download) and its controls."""

    stages: tuple[str, ...] = ("S1", "S2", "S3", "S4", "S5", "S6")
    """Stages in developmental order (any subset of S1..S6)."""
    order: str = "developmental"
    """developmental | reverse | random | joint | growing_random | cyclical."""
    order_seed: int = 0
    """Seed of the permutation for random / growing_random orders."""
    pacing: str = "mastery"
    """mastery (graduation or budget) | samples (samples_per_stage each) | flops (flops_per_stage each)."""
    samples_per_stage: int = 0
    """pacing=samples: samples per stage (0 = the stage's budget)."""
    flops_per_stage: float = 0.0
    """pacing=flops: learner-update FLOPs per stage."""
    budget: int = 500_000
    """Budget in samples per stage (curriculum §5)."""
    budget_s6: int = 1_000_000
    """Budget of S6 (two-frame clips are harder)."""
    thresholds: tuple[float, ...] = ()
    """Graduation thresholds θ per stage in `stages` order (empty = the spec's: .90 .90 .75 .75 .85 .65)."""
    on_fail: str = "continue"
    """At the budget without graduating: continue | stop | extend (up to extend_cap samples)."""
    extend_cap: int = 0
    """on_fail=extend: the most samples a stage may take."""
    replay: float = 0.0
    """Fraction of every batch drawn (stage-balanced) from the earlier stages' streams."""
    acuity: str = "stepwise"
    """stepwise | sharp | blur | continuous | sharp_to_blur | mixture (training streams only)."""
    mix: float = 0.5
    """acuity=mixture: probability that a sample is rendered sharp (σ = 0)."""
    cycle: int = 16_384
    """order=cyclical: samples per phase (curriculum phase, then random phase, alternating)."""
    frames: int = 0
    """Frames per example (0 = 2 if S6 is in the curriculum, else 1)."""
    real: tuple[str, ...] = ()
    """Real-data stages R1–R3 to add: mnist, fashion_mnist, cifar10 (need the files; Fashion-MNIST is offline)."""
    real_position: str = "end"
    """Where the real stages go: after_S3 ('picture books') | end ('school')."""
    real_threshold: float = 0.80
    """θ of the real stages (the spec sets it per architecture from the lab's BP reference run)."""
    real_budget: int = 300_000
    """Budget in samples of each real stage."""
    input: str = "centred"
    """What the learner sees: centred (canvas − 0.5, in [−0.5, 0.5]) | unit (the [0, 1] canvas as rendered)."""
    blur_robustness: bool = True
    """Evaluate S1/S2 tests at σ ∈ {0, 0.5, 1.5, 3} at init and after every stage."""


SHIFT = {"centred": 0.5, "unit": 0.0}
DEFAULT_THETA = {"S1": 0.90, "S2": 0.90, "S3": 0.75, "S4": 0.75, "S5": 0.85, "S6": 0.65}


def _validate(cfg: Config):
    from localrules.tasks import nursery

    bad = [s for s in cfg.stages if s not in nursery.STAGES]
    if bad or not cfg.stages:
        raise ValueError(f"task.stages={list(cfg.stages)}: unknown stage(s) {bad}; choose from {list(nursery.STAGES)}")
    if cfg.order not in ORDERS:
        raise ValueError(f"task.order={cfg.order!r}: choose one of {', '.join(ORDERS)}")
    if cfg.acuity not in ACUITY:
        raise ValueError(f"task.acuity={cfg.acuity!r}: choose one of {', '.join(ACUITY)}")
    if cfg.thresholds and len(cfg.thresholds) != len(cfg.stages):
        raise ValueError(f"task.thresholds has {len(cfg.thresholds)} values for {len(cfg.stages)} stages")
    if not 0.0 <= cfg.replay < 1.0:
        raise ValueError(f"task.replay={cfg.replay}: must be in [0, 1)")
    if not 0.0 <= cfg.mix <= 1.0:
        raise ValueError(f"task.mix={cfg.mix}: must be in [0, 1]")
    if cfg.frames not in (0, 1, 2):
        raise ValueError(f"task.frames={cfg.frames}: choose 0 (auto), 1 or 2")
    if cfg.frames == 1 and "S6" in cfg.stages:
        raise ValueError("task.frames=1 cannot show S6's two-frame clips; use task.frames=2 or drop S6")
    bad = [r for r in cfg.real if r not in REAL_HEADS]
    if bad:
        raise ValueError(f"task.real: unknown dataset(s) {bad}; choose from {list(REAL_HEADS)}")
    if cfg.real_position not in ("after_S3", "end"):
        raise ValueError(f"task.real_position={cfg.real_position!r}: choose after_S3 or end")
    if cfg.input not in SHIFT:
        raise ValueError(f"task.input={cfg.input!r}: choose centred or unit")
    if cfg.budget <= 0 or cfg.budget_s6 <= 0:
        raise ValueError("task.budget and task.budget_s6 must be positive sample counts")


def frames_of(cfg: Config) -> int:
    return cfg.frames or (2 if "S6" in cfg.stages else 1)


def global_heads(cfg: Config) -> core.Heads:
    from localrules.tasks import nursery

    names, sizes = list(nursery.HEADS.names), list(nursery.HEADS.sizes)
    for r in cfg.real:
        h, k = REAL_HEADS[r]
        names.append(h)
        sizes.append(k)
    return core.Heads(tuple(names), tuple(sizes))


def _adapt(task: core.Task, heads: core.Heads, shift: float = 0.0) -> core.Task:
    """The learner's view of a stage: its label matrix padded with -1 columns to the global heads (real stages add
    heads), and its inputs shifted by ``-shift`` (``input=centred``: the [0, 1] canvas becomes [-0.5, 0.5]) in the
    training stream and in every test, the 4AFC candidates included."""
    extra = len(heads.names) - len(task.heads.names)
    if extra == 0 and shift == 0.0:
        return task

    def sample(data, ctx, key, t):
        b = task.sample(data, ctx, key, t)
        y = b.y if extra == 0 else jnp.concatenate([b.y, jnp.full((b.y.shape[0], extra), -1, b.y.dtype)], axis=1)
        return core.Batch(b.x - shift if shift else b.x, y)

    def evaluate(scores_fn, test):
        return task.evaluate(core.scorer(scores_fn).map_input(lambda x: x - shift), test) if shift else \
            task.evaluate(scores_fn, test)

    return task._replace(heads=heads, sample=sample, evaluate=evaluate)


def _real_stage(dataset: str, heads: core.Heads, frames: int, batch_size: int) -> core.Task:
    """A real dataset on the curriculum canvas (32×32×3, repeated over frames), labelling its own head."""
    from localrules.tasks import images

    base = images.make_dataset_task(dataset, images.Config(canvas=True), batch_size)
    hi = heads.index(REAL_HEADS[dataset][0])
    off, k = heads.offsets[hi], heads.sizes[hi]

    def to_frames(x):
        return jnp.repeat(x[:, None], frames, axis=1)

    def sample(data, ctx, key, t):
        b = base.sample(data, ctx, key, t)
        y = jnp.full((b.y.shape[0], len(heads.names)), -1, jnp.int32).at[:, hi].set(b.y[:, 0])
        return core.Batch(to_frames(b.x), y)

    def evaluate(scores_fn, test):
        return base.evaluate(lambda x: core.scorer(scores_fn).map_input(to_frames)(x)[..., off:off + k], test)

    return core.Task(f"real/{dataset}", heads, (frames,) + base.input_shape, base.data, base.context, sample,
                     base.test, evaluate, None, base.chance)


def _sigmas(cfg: Config, order: list[str]) -> dict[str, float | None]:
    """Training σ per stage name for the acuity schedule (None = the stage's default)."""
    T = len(order)
    if cfg.acuity in ("stepwise", "mixture"):
        return {s: None for s in order}
    if cfg.acuity == "sharp":
        return {s: 0.0 for s in order}
    if cfg.acuity == "blur":
        return {s: 3.0 for s in order}
    frac = {s: (p / (T - 1) if T > 1 else 0.0) for p, s in enumerate(order)}
    if cfg.acuity == "continuous":
        return {s: round(3.0 * (1 - f), 3) for s, f in frac.items()}
    return {s: round(3.0 * f, 3) for s, f in frac.items()}  # sharp_to_blur


def stage_order(cfg: Config) -> list[str]:
    """The procedural stages in training order: as listed (developmental, joint, cyclical), reversed, or permuted by
    ``order_seed`` (random, growing_random)."""
    names = list(cfg.stages)
    if cfg.order == "reverse":
        return names[::-1]
    if cfg.order in ("random", "growing_random"):
        perm = np.asarray(jax.random.permutation(jax.random.PRNGKey(cfg.order_seed), len(names)))
        return [names[i] for i in perm]
    return names


def plan(cfg: Config, batch_size: int):
    """The training stages (with streams, tests, θ, budgets) in order, and the extra blur-robustness tests."""
    from localrules.curriculum import Stage, mixture
    from localrules.tasks import nursery

    _validate(cfg)
    F = frames_of(cfg)
    heads = global_heads(cfg)
    names = list(cfg.stages)
    theta = dict(zip(names, cfg.thresholds)) if cfg.thresholds else {s: DEFAULT_THETA[s] for s in names}
    names = stage_order(cfg)
    sig = _sigmas(cfg, names)
    shift = SHIFT[cfg.input]

    def stream(s):
        t = nursery.make_stage(s, batch_size, F, **({"sigma": sig[s]} if sig[s] is not None else {}))
        if cfg.acuity == "mixture":
            sharp = nursery.make_stage(s, batch_size, F, sigma=0.0)
            m = cfg.mix
            t = mixture([t, sharp], lambda _t: jnp.array([1 - m, m]), batch_size, f"{t.name}+sharp")
        return _adapt(t, heads, shift)

    tests = {s: _adapt(nursery.make_stage(s, batch_size, F), heads, shift) for s in names}
    streams = {s: stream(s) for s in names}
    budgets = {s: (cfg.budget_s6 if s == "S6" else cfg.budget) for s in names}
    chances = {s: nursery.STAGES[s].chance for s in names}
    reals = [(r, _adapt(_real_stage(r, heads, F, batch_size), heads, shift)) for r in cfg.real]
    for r, t in reals:
        streams[r], tests[r], budgets[r], theta[r], chances[r] = t, t, cfg.real_budget, cfg.real_threshold, t.chance
    if reals:
        rnames = [r for r, _ in reals]
        if cfg.real_position == "after_S3" and "S3" in names:
            k = names.index("S3") + 1
            names = names[:k] + rnames + names[k:]
        else:
            names = names + rnames

    stages = []
    if cfg.order == "joint":
        k = len(names)
        joint = mixture([streams[s] for s in names], lambda _t: jnp.full((k,), 1.0 / k), batch_size, "joint")
        total = sum(budgets[s] for s in names)
        stages.append(Stage("joint", joint, 2.0, total, 0.0, tests[names[0]]))  # θ > 1: no graduation
        test_stages = [Stage(s, tests[s], theta[s], budgets[s], chances[s]) for s in names]
        return stages, test_stages, _blur_tests(cfg, F, heads, batch_size)
    for i, s in enumerate(names):
        task = streams[s]
        if cfg.order == "growing_random" and i > 0:
            comps = [streams[n] for n in names[: i + 1]]
            task = mixture(comps, lambda _t, k=i + 1: jnp.full((k,), 1.0 / k), batch_size, f"grow{i + 1}")
        elif cfg.order == "cyclical":
            comps = [streams[s]] + [streams[n] for n in names if n != s]
            k = len(comps)
            steps = max(1, cfg.cycle // batch_size)
            cur = jnp.zeros((k,)).at[0].set(1.0)
            uni = jnp.full((k,), 1.0 / k)
            task = mixture(comps, lambda t, cur=cur, uni=uni, steps=steps: jnp.where((t // steps) % 2 == 0, cur, uni),
                           batch_size, f"cyc/{s}")
        if cfg.replay > 0 and i > 0:
            comps = [task] + [streams[n] for n in names[:i]]
            r = cfg.replay
            w = jnp.asarray([1 - r] + [r / i] * i)
            task = mixture(comps, lambda _t, w=w: w, batch_size, f"{s}+replay")
        stages.append(Stage(s, task, theta[s], budgets[s], chances[s], tests[s]))
    return stages, stages, _blur_tests(cfg, F, heads, batch_size)


def _blur_tests(cfg: Config, frames: int, heads, batch_size) -> dict:
    from localrules.tasks import nursery

    if not cfg.blur_robustness:
        return {}
    out = {}
    for s in ("S1", "S2"):
        if s in cfg.stages:
            first = None
            for sg in nursery.SIGMAS:
                t = nursery.make_stage(s, batch_size, frames, sigma=sg)
                # one evaluate function for the four σ variants (only the test images differ): one compiled evaluator
                first = first or _adapt(t, heads, SHIFT[cfg.input])
                out[f"blur/{s}/sigma{sg}"] = first._replace(name=t.name, test=t.test)
    return out


def make(cfg: Config, batch_size: int) -> core.Task:
    """The first training stage (gives the runner's builder the input shape and the global heads)."""
    stages, _, _ = plan(cfg, batch_size)
    return stages[0].task


def runner(run_cfg, run_dir: str, run_id: str, log=print) -> dict:
    from localrules import curriculum

    return curriculum.execute(run_cfg, run_dir, run_id, plan, log)


TASK = core.TaskSpec("nursery", Config, make, aliases=("curriculum",),
                     doc="developmental curriculum S1–S6 (procedural, no download) — the default task", runner=runner)
