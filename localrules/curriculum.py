"""The curriculum runner: stages in an order, graduation, evaluation schedule, and the continual-learning metrics.

A curriculum is a list of :class:`Stage` s, each a training stream (a :class:`~localrules.core.Task`), a test, a
graduation threshold θ and a budget in samples. Any rule trains through it with the lab's ordinary engine
(:mod:`localrules.train`): one compiled chunk program per stage, seeds vmapped, the stage's own step counter ``t``
(so a resumed run sees bit-identical batches).

**Schedule** (curriculum.md §5). The current stage is evaluated after 1,024, 2,048, 4,096 and 8,192 samples and
then every 8,192 (the first step boundary at or after); every stage's test at initialisation and at each stage's
end (the rows of R); the previous stages every 512 samples during the first 8,192 samples of a new stage (the
stability gap). **Graduation**: ≥ θ at two consecutive evaluations; samples-to-graduate is the sample count at the
first of the two. Seeds graduate independently: a graduated seed is frozen (its updates masked) until every seed
has graduated or the budget ends, so each seed's row of R is its state at its own graduation.

**Pacing**: ``mastery`` (graduation or budget), ``samples`` (a fixed number per stage), ``flops`` (a fixed
learner-update FLOP budget per stage = samples × FLOPs/sample of the compiled step). **on_fail** at the budget:
``continue`` (marked not graduated, go on: every rule gets a full R matrix), ``stop`` (end the curriculum),
``extend`` (keep training up to ``extend_cap`` samples).

**Metrics** (§6): R_{i,j} = score on stage j after stage i, with the random-init row b; GEM's ACC, BWT, FWT with the
paper's T−1 denominators; forgetting; κ = (acc − chance)/(1 − chance) and ACC/BWT/FWT on κ; per stage samples- and
FLOPs-to-graduate, fixed-budget accuracy at 65,536 and 262,144 samples, learning-curve area, stability gap; the
stage's extra numbers (S5 held-out gap, S6 ceilings, blur robustness) from its ``evaluate``.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from localrules import core

EVAL_FIRST = (1024, 2048, 4096, 8192)
EVAL_EVERY = 8192
OLD_EVERY = 512
OLD_WINDOW = 8192
FIXED_BUDGETS = (65_536, 262_144)


class Stage(NamedTuple):
    """One curriculum stage: train on ``task``'s stream, gate on ``test_task``'s ``acc``."""

    name: str
    task: core.Task
    threshold: float
    budget: int
    chance: float
    test_task: core.Task | None = None  # default: task

    @property
    def tester(self) -> core.Task:
        return self.test_task if self.test_task is not None else self.task


# ------------------------------------------------------------------------------------------------ mixtures


def mixture(tasks: Sequence[core.Task], weights: Callable[[jax.Array], jax.Array], batch_size: int,
            name: str) -> core.Task:
    """A stream whose every sample comes from component ``c ~ Categorical(weights(t))``.

    Each component draws a full batch with its own key (``fold_in(key, c)``) and the per-sample choice selects
    among them: exact, at the cost of generating K batches. Used for replay, joint training, growing-random and
    cyclical orders and the blurred+sharp acuity mixture. Components must share input shape and heads.
    """
    tasks = tuple(tasks)
    shapes = {t.input_shape for t in tasks}
    if len(shapes) != 1:
        raise ValueError(f"mixture {name}: components have different input shapes {shapes}")

    def context(data, key, t0):
        return tuple(tk.context(d, jax.random.fold_in(key, c), t0) for c, (tk, d) in enumerate(zip(tasks, data)))

    def sample(data, ctx, key, t):
        batches = [tk.sample(d, cx, jax.random.fold_in(key, c), t)
                   for c, (tk, d, cx) in enumerate(zip(tasks, data, ctx))]
        w = weights(t)
        choice = jax.random.choice(jax.random.fold_in(key, 10_000), len(tasks), (batch_size,), p=w)
        xs = jnp.stack([b.x for b in batches])  # (K, B, ...)
        ys = jnp.stack([b.y for b in batches])
        idx = jnp.arange(batch_size)
        return core.Batch(xs[choice, idx], ys[choice, idx])

    first = tasks[0]
    return core.Task(name, first.heads, first.input_shape, tuple(t.data for t in tasks), context, sample,
                     first.test, first.evaluate, None, first.chance)


# ------------------------------------------------------------------------------------------------ metrics


def gem_metrics(R: np.ndarray, b: np.ndarray) -> dict:
    """ACC, BWT, FWT (Lopez-Paz & Ranzato 2017) with the paper's T−1 denominators, and mean forgetting.

    Args:
      R: (T, T) with R[i, j] = score on stage j after finishing stage i (rows in training order).
      b: (T,) scores at random initialisation.
    """
    T = R.shape[0]
    acc = float(np.mean(R[T - 1]))
    if T < 2:
        return {"ACC": acc, "BWT": float("nan"), "FWT": float("nan"), "forgetting": float("nan")}
    bwt = float(np.sum(R[T - 1, : T - 1] - np.diag(R)[: T - 1]) / (T - 1))
    fwt = float(np.sum([R[j - 1, j] - b[j] for j in range(1, T)]) / (T - 1))
    forgetting = float(np.mean([np.max(R[: T - 1, j]) - R[T - 1, j] for j in range(T - 1)]))
    return {"ACC": acc, "BWT": bwt, "FWT": fwt, "forgetting": forgetting}


def kappa(acc, chance):
    return (np.asarray(acc) - chance) / (1.0 - chance)


def chunking(budget: int, batch: int, exact: bool = False) -> tuple[int, int, int, int]:
    """Chunk lengths (in steps) for a stage: ``small`` ≈ 512 samples while old stages are watched (the first
    8,192 samples), ``big`` ≈ 8,192 samples (a multiple of ``small``) between evaluations afterwards. The runner
    executes a big segment as ``big / small`` calls of the one compiled small chunk: one training program per
    stage, whatever the budget (the host round trip per call is negligible beside ≈ 5 steps of work).

    Returns (small, big, window, last_step); the budget is rounded down to whole chunks, or with ``exact`` to
    whole steps (the stage's last chunk is then shorter: one more compiled program).
    """
    small = max(1, -(-OLD_EVERY // batch))
    big = max(small, round(EVAL_EVERY / batch / small) * small)
    window = -(-OLD_WINDOW // (small * batch)) * small
    steps = budget // batch
    if exact:
        return small, big, window, max(1, steps)
    if steps <= window:
        return small, big, window, max(small, steps // small * small)
    return small, big, window, window + (steps - window) // big * big


def fixed_budget_acc(curve, budgets=FIXED_BUDGETS) -> dict:
    """Accuracy at each fixed sample budget: the first evaluation at or after it (evaluations fall on step
    boundaries: with batch 100 the 65,536-sample mark is evaluated at 67,200); None if the stage stopped earlier."""
    out = {}
    for fb in budgets:
        pts = [a for s_, a in curve if s_ >= fb]
        out[str(fb)] = pts[0] if pts else None
    return out


def crossed_mark(before: int, after: int) -> bool:
    """Whether an evaluation mark (1,024, 2,048, 4,096, 8,192 samples, then every 8,192) lies in (before, after]:
    the evaluation happens at the first chunk boundary at or after each mark."""
    for m in EVAL_FIRST:
        if before < m <= after:
            return True
    return after // EVAL_EVERY > before // EVAL_EVERY and after >= EVAL_EVERY


# ------------------------------------------------------------------------------------------------ runner


@dataclasses.dataclass
class Progress:
    """Host-side curriculum progress, saved with every checkpoint (JSON)."""

    stage_index: int = 0
    stage_step: int = 0
    R: list = dataclasses.field(default_factory=list)  # rows: [init] + one per finished stage; each (T, S)
    per_stage: list = dataclasses.field(default_factory=list)  # per finished stage: dict of stats
    curves: dict = dataclasses.field(default_factory=dict)  # stage -> list of (samples, acc per seed)
    old_curves: dict = dataclasses.field(default_factory=dict)  # "after>stage" -> list of (samples, acc)
    pass_streak: list = dataclasses.field(default_factory=list)  # per seed
    graduated_at: list = dataclasses.field(default_factory=list)  # per seed, samples or -1
    extras: dict = dataclasses.field(default_factory=dict)
    stopped: bool = False


def _select(mask, new, old):
    return jax.tree.map(lambda a, b: jnp.where(mask.reshape((-1,) + (1,) * (a.ndim - 1)), a, b), new, old)


def run_curriculum(stages: list[Stage], *, test_stages: list[Stage] | None = None, rule, opt, arch, seeds,
                   batch_size: int, pacing: str = "mastery",
                   samples_per_stage: int = 0, flops_per_stage: float = 0.0, on_fail: str = "continue",
                   extend_cap: int = 0, flops_per_step: float, checkpoint=None, progress_cb=None,
                   extra_tests: dict | None = None, exact_budget: bool = False, log=print) -> tuple[Any, dict]:
    """Train through ``stages``; return the R matrix, metrics and per-stage statistics (JSON-ready).

    Args:
      stages: in training order.
      rule, opt, arch: the learner (same for every stage; its state carries across stages).
      seeds: int array of seeds (vmapped).
      flops_per_step: learner-update FLOPs of one compiled step (the FLOPs axis).
      checkpoint: optional object with ``save(state, meta)`` and ``restore(template) -> (state, meta) | None``.
      progress_cb: optional ``(stage_index, stage, samples, eval_dict, budget, graduated_at)`` after each
        evaluation of the current stage (progress lines, TensorBoard).
      extra_tests: name → Task evaluated at init and after every stage (blur robustness).
      exact_budget: train exactly ``budget // batch_size`` steps per stage (see :func:`chunking`).
    """
    from localrules.train import make_program

    if pacing not in ("mastery", "samples", "flops"):
        raise ValueError(f"curriculum pacing={pacing!r}: choose mastery, samples or flops")
    if on_fail not in ("continue", "stop", "extend"):
        raise ValueError(f"curriculum on_fail={on_fail!r}: choose continue, stop or extend")
    S = len(seeds)
    T = len(stages)
    test_stages = list(test_stages) if test_stages is not None else list(stages)
    square = [st.name for st in test_stages] == [st.name for st in stages]
    programs = [make_program(rule, opt, arch, st.task) for st in stages]
    init = jax.jit(jax.vmap(programs[0].init))
    vchunk = lambda p, **kw: jax.jit(jax.vmap(p.chunk, in_axes=(0, None, 0, None)), static_argnums=3, **kw)  # noqa
    # the donating twin reuses the state's buffers in place (no fresh ~20 MB allocation and its page faults per call);
    # the plain one is needed only while graduated seeds are frozen (the old state is still read by the select)
    # one compiled chunk pair per distinct stream: stages that share a stream (same context/sample functions,
    # e.g. the blur variants of one stage) reuse it instead of compiling it again
    by_stream: dict = {}
    for st, p in zip(stages, programs):
        by_stream.setdefault((st.task.context, st.task.sample), (vchunk(p), vchunk(p, donate_argnums=0)))
    chunks = [by_stream[(st.task.context, st.task.sample)][0] for st in stages]
    chunks_donating = [by_stream[(st.task.context, st.task.sample)][1] for st in stages]
    ev_cache = {}

    def _ev(task):  # one compiled evaluator per evaluate function: tests that differ only in their data share it
        key = id(task.evaluate)
        if key not in ev_cache:
            ev_cache[key] = (task.evaluate, jax.jit(jax.vmap(make_program(rule, opt, arch, task).evaluate,
                                                             in_axes=(0, None))))
        return ev_cache[key][1]

    evals = [_ev(st.tester) for st in stages]
    test_evals = evals if square else [_ev(st.tester) for st in test_stages]
    extra_tests = extra_tests or {}
    extra_evals = {k: (_ev(t), t.test) for k, t in extra_tests.items()}
    select = jax.jit(_select)

    def eval_stage(state, j):
        ev = jax.device_get(evals[j](state, stages[j].tester.test))
        return {k: np.asarray(v, dtype=float) for k, v in ev.items()}

    def eval_all(state):
        if square:
            return [eval_stage(state, j) for j in range(T)]
        return [{k: np.asarray(v, dtype=float) for k, v in
                 jax.device_get(test_evals[j](state, test_stages[j].tester.test)).items()}
                for j in range(len(test_stages))]

    def eval_extra(state):
        return {k: {m: np.asarray(v, float).tolist() for m, v in jax.device_get(f(state, tst)).items()}
                for k, (f, tst) in extra_evals.items()}

    state = init(seeds)
    prog = Progress()
    restored = checkpoint.restore(state) if checkpoint is not None else None
    if restored is not None:
        state, meta = restored
        prog = Progress(**meta)
        log(f"  resuming curriculum at stage {prog.stage_index + 1}/{T}, step {prog.stage_step}")
    else:
        evs = eval_all(state)
        prog.R.append([e["acc"].tolist() for e in evs])
        prog.extras["init"] = {"stages": [{k: v.tolist() for k, v in e.items()} for e in evs],
                               "extra": eval_extra(state)}

    t_wall = time.time()
    while prog.stage_index < T and not prog.stopped:
        i = prog.stage_index
        st = stages[i]
        if pacing == "samples":
            budget = samples_per_stage or st.budget
        elif pacing == "flops":
            budget = int(flops_per_stage / max(flops_per_step / batch_size, 1e-9))
        else:
            budget = st.budget
        hard_cap = max(budget, extend_cap) if (on_fail == "extend" and pacing == "mastery") else budget
        small, big, window, last_step = chunking(hard_cap, batch_size, exact_budget)
        if prog.stage_step == 0:
            prog.pass_streak = [0] * S
            prog.graduated_at = [-1] * S
            prog.curves[st.name] = []
            state = state._replace(step=jnp.zeros_like(state.step))  # the stage's own counter t
            for j in range(i):
                prog.old_curves[f"{st.name}>{stages[j].name}"] = []
        stage_t0 = time.time()
        while prog.stage_step < last_step:
            step = prog.stage_step
            n = min(small if step < window else big, last_step - step)
            active = np.asarray(prog.graduated_at) < 0
            new_state, seg, first = state, n, True
            while seg > 0:  # one compiled program per stage: a long segment is several calls of the small chunk
                m = min(small, seg)
                run = chunks[i] if (first and not active.all()) else chunks_donating[i]
                new_state, _ = run(new_state, st.task.data, seeds, m)
                seg, first = seg - m, False
            # graduated seeds are frozen; every seed keeps the same step counter so batches stay aligned
            state = new_state if active.all() else select(jnp.asarray(active), new_state, state)
            prog.stage_step = step + n
            before, samples = step * batch_size, (step + n) * batch_size
            if i > 0 and step + n <= window:
                for j in range(i):
                    a = eval_stage(state, j)["acc"]
                    prog.old_curves[f"{st.name}>{stages[j].name}"].append([samples, a.tolist()])
            if crossed_mark(before, samples) or prog.stage_step == last_step:
                ev = eval_stage(state, i)
                acc = ev["acc"]
                prog.curves[st.name].append([samples, acc.tolist()])
                for s_ in range(S):
                    if prog.graduated_at[s_] >= 0:
                        continue
                    prog.pass_streak[s_] = prog.pass_streak[s_] + 1 if acc[s_] >= st.threshold else 0
                    if prog.pass_streak[s_] >= 2:
                        prog.graduated_at[s_] = prog.curves[st.name][-2][0]
                if progress_cb is not None:
                    progress_cb(i, st, samples, ev, budget, prog.graduated_at)
                if checkpoint is not None:
                    checkpoint.save(state, dataclasses.asdict(prog))
                if pacing == "mastery" and all(g >= 0 for g in prog.graduated_at):
                    break
        # stage end: a row of R, blur robustness, per-stage statistics
        evs = eval_all(state)
        prog.R.append([e["acc"].tolist() for e in evs])
        curve = prog.curves[st.name]
        fixed = fixed_budget_acc(curve)
        area = float(np.mean([np.mean(a) for _, a in curve])) if curve else float("nan")
        gap = {}
        if i > 0 and square:
            for j in range(i):
                key = f"{st.name}>{stages[j].name}"
                before = np.asarray(prog.R[i][j])  # row after stage i−1 (R[0] is init)
                seq = [np.asarray(a) for _, a in prog.old_curves.get(key, [])]
                if seq:
                    gap[stages[j].name] = (np.min(np.stack(seq), axis=0) - before).tolist()
        grad = np.asarray(prog.graduated_at)
        own = evs[i] if square else eval_stage(state, i)
        prog.per_stage.append({
            "stage": st.name, "threshold": st.threshold, "budget": budget, "chance": st.chance,
            "graduated": (grad >= 0).tolist(), "samples_to_graduate": grad.tolist(),
            "flops_to_graduate": [float(g / batch_size * flops_per_step) if g >= 0 else None for g in grad],
            "samples_trained": prog.stage_step * batch_size, "fixed_budget_acc": fixed, "curve_area": area,
            "stability_gap": gap, "final": {k: v.tolist() for k, v in own.items()},
            "wall_s": time.time() - stage_t0, "extra": eval_extra(state),
        })
        if pacing == "mastery" and on_fail == "stop" and not (grad >= 0).all():
            prog.stopped = True
        prog.stage_index += 1
        prog.stage_step = 0
        if checkpoint is not None:
            checkpoint.save(state, dataclasses.asdict(prog))

    return state, _summary(stages, test_stages, prog, S, time.time() - t_wall)


def _summary(stages, test_stages, prog: Progress, S: int, wall: float) -> dict:
    """R (mean and per seed), GEM metrics on accuracy and κ, per-stage table."""
    T = len(stages)
    square = [st.name for st in test_stages] == [st.name for st in stages]
    rows = np.asarray(prog.R, dtype=float)  # (1 + done, T_test, S)
    done = rows.shape[0] - 1
    b = rows[0]  # (T_test, S)
    R = rows[1:]  # (done, T_test, S)
    chance = np.asarray([st.chance for st in test_stages])[:, None]
    per_seed = []
    for s in range(S):
        if done == T and square:
            m = gem_metrics(R[:, :, s], b[:, s])
            mk = gem_metrics(kappa(R[:, :, s], chance[:, 0][None, :]), kappa(b[:, s], chance[:, 0]))
            per_seed.append({**m, **{f"{k}_kappa": v for k, v in mk.items()}})
    out = {
        "stages": [st.name for st in stages],
        "test_stages": [st.name for st in test_stages],
        "R_mean": R.mean(-1).tolist() if done else [],
        "R_sd": (R.std(-1, ddof=1) if S > 1 else np.zeros_like(R.mean(-1))).tolist() if done else [],
        "R_per_seed": R.tolist(),
        "init_mean": b.mean(-1).tolist(),
        "init_per_seed": b.tolist(),
        "per_stage": prog.per_stage,
        "curves": prog.curves,
        "old_curves": prog.old_curves,
        "stopped_early": prog.stopped,
        "extras_init": prog.extras.get("init", {}),
        "wall_s": wall,
    }
    if done and not square:  # joint training: one row; ACC is its mean over the stage tests
        out["ACC"] = float(np.mean(R[-1]))
        out["ACC_sd"] = float(np.std(R[-1].mean(0), ddof=1)) if S > 1 else 0.0
    if per_seed:
        for k in per_seed[0]:
            vals = np.asarray([p[k] for p in per_seed], float)
            out[k] = float(np.mean(vals))
            out[k + "_sd"] = float(np.std(vals, ddof=1)) if S > 1 else 0.0
    return out


def format_report(summary: dict) -> str:
    """The R matrix (mean over seeds), ACC/BWT/FWT and samples-to-graduate as text."""
    names = summary.get("test_stages", summary["stages"])
    rows_names = summary["stages"]
    lines = []
    R = np.asarray(summary["R_mean"]) if summary["R_mean"] else np.zeros((0, len(names)))
    w = max(6, max(len(n) for n in names) + 1)
    lines.append("R (rows: after stage; columns: score on stage; mean over seeds)")
    lines.append(" " * 8 + "".join(n.rjust(w) for n in names))
    lines.append("init".ljust(8) + "".join(f"{v:{w}.3f}" for v in summary["init_mean"]))
    for i, row in enumerate(R):
        lines.append(f"{rows_names[i]:8s}" + "".join(f"{v:{w}.3f}" for v in row))
    if "BWT" in summary:
        lines.append(f"ACC {summary['ACC']:.3f} ± {summary['ACC_sd']:.3f}   BWT {summary['BWT']:.3f} ± "
                     f"{summary['BWT_sd']:.3f}   FWT {summary['FWT']:.3f} ± {summary['FWT_sd']:.3f}   "
                     f"forgetting {summary['forgetting']:.3f}   ACC(κ) {summary['ACC_kappa']:.3f}")
    elif "ACC" in summary:
        lines.append(f"ACC {summary['ACC']:.3f} ± {summary['ACC_sd']:.3f} (joint training: no BWT/FWT)")
    lines.append("samples to graduate (per seed; - = not graduated within budget):")
    for ps in summary["per_stage"]:
        g = ["-" if x < 0 else f"{x:,}" for x in ps["samples_to_graduate"]]
        lines.append(f"  {ps['stage']:6s} θ={ps['threshold']:.2f}  " + "  ".join(g) +
                     f"   final acc {np.mean(ps['final']['acc']):.3f}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ as a run


class _Ckpt:
    """Adapter: the run's orbax Checkpointer with a save counter, curriculum progress as its JSON metadata."""

    def __init__(self, inner):
        self.inner = inner
        self.count = inner.latest() or 0

    def save(self, state, meta):
        self.count += 1
        self.inner.save(self.count, state, meta)

    def restore(self, template):
        if self.inner.latest() is None:
            return None
        return self.inner.restore(template)


def execute(cfg, run_dir: str, run_id: str, plan_fn, log=print) -> dict:
    """Run a curriculum task config as one lab run (checkpoints, TensorBoard, record for results.jsonl)."""
    import datetime
    import sys

    from localrules import cost, tb
    from localrules.run import Checkpointer, build, config_dict, git_revision, rule_label

    t_start = time.time()
    b = build(cfg)
    stages, test_stages, extra = plan_fn(cfg.task, cfg.batch_size)
    seeds = jnp.arange(cfg.seed, cfg.seed + cfg.seeds, dtype=jnp.int32)
    c = cost.step_cost(b.program, int(cfg.seed), b.task.data, repeats=cfg.timing_steps)
    if b.counted is not b.program:
        counted = cost.step_cost(b.counted, int(cfg.seed), b.task.data, repeats=0)
        c.update({k: counted[k] for k in ("flops", "bytes", "peak_bytes") if k in counted})
    fps = c["flops"]
    cfg_json = config_dict(cfg)
    ckpt = _Ckpt(Checkpointer(os.path.join(run_dir, "ckpt"), cfg_json)) if cfg.checkpoint else None
    resumed = ckpt is not None and ckpt.inner.latest() is not None
    writers = [tb.Writer(os.path.join(run_dir, f"seed{int(s)}")) for s in np.asarray(seeds)]
    hp = {"rule": rule_label(cfg.rule), "task": b.task_name, "arch": b.arch.name, "optimizer": cfg.optimizer.name,
          "lr": cfg.optimizer.lr, "batch_size": cfg.batch_size}
    for w, s in zip(writers, np.asarray(seeds)):
        if not resumed:
            tb.session_start(w, {**hp, "seed": int(s)}, trial_id=f"{run_id}/seed{int(s)}")

    def progress(i, st, samples, ev, budget, graduated):
        acc = np.asarray(ev["acc"])
        g = sum(x >= 0 for x in graduated)
        if cfg.progress:
            log(f"  {run_id}  stage {i + 1}/{len(stages)} {st.name}  {samples:,}/{budget:,} samples  "
                f"acc {acc.mean():.3f} (θ {st.threshold:.2f})  graduated {g}/{len(graduated)}  "
                f"{time.time() - t_start:.0f} s")
        for k, w in enumerate(writers):
            vals = {f"stage/{st.name}/{m}": float(np.asarray(v)[k]) for m, v in ev.items()
                    if np.asarray(v).ndim == 1}
            vals["test/accuracy"] = float(acc[k])
            w.scalars(vals, samples)
            w.flush()

    state, summary = run_curriculum(
        stages, test_stages=test_stages, rule=b.rule, opt=b.opt, arch=b.arch, seeds=seeds,
        batch_size=cfg.batch_size, pacing=getattr(cfg.task, "pacing", "mastery"),
        samples_per_stage=getattr(cfg.task, "samples_per_stage", 0), flops_per_stage=getattr(cfg.task, "flops_per_stage", 0.0),
        on_fail=getattr(cfg.task, "on_fail", "continue"), extend_cap=getattr(cfg.task, "extend_cap", 0),
        flops_per_step=fps, checkpoint=ckpt, progress_cb=progress, extra_tests=extra,
        exact_budget=getattr(cfg.task, "exact_budget", False), log=log)
    report = format_report(summary)
    if ckpt is not None:
        ckpt.inner.close()
    for k, w in enumerate(writers):
        R = np.asarray(summary["R_per_seed"])[:, :, k] if summary["R_per_seed"] else np.zeros((0, 0))
        if R.size:
            png, wd, ht = tb.png_of_matrix(R, summary["stages"], summary["test_stages"], f"R ({rule_label(cfg.rule)})")
            w.image("curriculum/R_matrix", png, wd, ht, 0)
        w.text("curriculum/report", "```\n" + report + "\n```", 0)
        w.scalars({"time/step_ms": c.get("step_ms") or 0.0, "mem/peak_mb": (c.get("peak_bytes") or 0) / 2**20,
                   "compute/gflop_per_step": fps / 1e9}, 0)
        tb.session_end(w, "ok")
        w.close()
    log(report)
    div = np.asarray(jax.device_get(state.diverged_at)).tolist()
    n_div = sum(d >= 0 for d in div)
    status = "ok" if n_div == 0 else ("diverged" if n_div == len(div) else "partly_diverged")
    record = {
        "run_id": run_id, "sweep": cfg.name, "rule": b.rule_name, "rule_label": rule_label(cfg.rule),
        "task": b.task_name, "task_instance": f"{b.task_name}/{getattr(cfg.task, 'order', 'developmental')}",
        "arch": b.arch_name,
        "seeds": np.asarray(seeds).tolist(), "status": status, "diverged_at": div,
        "acc_mean": summary.get("ACC", float("nan")), "acc_sd": summary.get("ACC_sd", 0.0),
        "final": {"acc": np.asarray(summary["R_per_seed"][-1]).mean(0).tolist() if summary["R_per_seed"] else []},
        "curriculum": summary,
        "compute": {"flops_per_step": fps, "flops_per_sample": fps / cfg.batch_size, "bytes_per_step": c["bytes"],
                    "peak_bytes_step": c.get("peak_bytes"), "compile_step_s": c["compile_s"],
                    "step_ms_median": c.get("step_ms"),
                    "gflops_achieved": fps / (c["step_ms"] * 1e-3) / 1e9 if c.get("step_ms") else None,
                    "train_flops": fps / cfg.batch_size * sum(ps["samples_trained"] for ps in summary["per_stage"])},
        "wall_s": time.time() - t_start, "resumed_from": "checkpoint" if resumed else None,
        "config": cfg_json, "platform": cost.platform(), "versions": cost.versions(), "git": git_revision(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "argv": sys.argv,
    }
    return cost.to_builtin(record)
