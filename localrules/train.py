"""The engine: one update step, a ``lax.scan`` over a chunk of steps, vmapped over seeds by the caller.

Pure functions only; nothing here is jitted. The caller (``localrules.run``) writes::

    chunk = jax.jit(jax.vmap(program.chunk, in_axes=(0, None, None)), static_argnums=3)

**Keys and fairness.** A run's seed ``s`` gives ``run_key = PRNGKey(s)`` and from it, by ``fold_in``:
``0`` → parameter init, ``1`` → the data stream, ``2`` → rule state init (feedback matrices), ``3`` → the rule's
per-step randomness. Batch ``t`` is sampled with ``fold_in(data_key, t)``, ``t`` the task's own step counter. So
every rule given the same seed starts from the same weights (same architecture) and sees the same data in the same
order, and a resumed run sees bit-identical batches.

**Divergence.** After each step the new parameters are checked for non-finite values. The first time a seed goes
non-finite its step is recorded in ``diverged_at`` and the seed is frozen at its last finite state with
``jnp.where``; the other seeds of the same program continue untouched.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from localrules import core


class TrainState(NamedTuple):
    params: tuple
    opt_state: optax.OptState
    rule_state: core.PyTree
    step: jax.Array
    """Number of update steps taken (the task's own counter t)."""
    diverged_at: jax.Array
    """Step at which parameters first became non-finite; -1 while finite."""


class Program(NamedTuple):
    """The pure functions of one run configuration (one rule × optimizer × architecture × task)."""

    init: Callable  # (seed) -> TrainState
    step: Callable  # (params, opt_state, rule_state, batch, key) -> (params, opt_state, rule_state, metrics)
    chunk: Callable  # (state, data, seed, n_steps) -> (state, metrics averaged over the chunk)
    evaluate: Callable  # (state, test) -> dict of scalars
    sample: Callable  # (data, seed, t) -> Batch  (the batch step t of this seed trains on)


def keys(seed):
    run = jax.random.PRNGKey(seed)
    return {name: jax.random.fold_in(run, i) for i, name in enumerate(("init", "data", "rule_init", "rule"))}


def make_program(rule: core.Rule, opt: optax.GradientTransformation, arch, task: core.Task) -> Program:
    def init(seed) -> TrainState:
        k = keys(seed)
        params = arch.init(k["init"])
        return TrainState(params, opt.init(params), rule.init(k["rule_init"], params),
                          jnp.zeros((), jnp.int32), jnp.full((), -1, jnp.int32))

    def step(params, opt_state, rule_state, batch, key):
        grads, rule_state, metrics = rule.update(params, rule_state, batch, key)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, rule_state, metrics

    def sample(data, seed, t):
        k = keys(seed)
        ctx = task.context(data, k["data"], t)
        return task.sample(data, ctx, jax.random.fold_in(k["data"], t), t)

    def chunk(state: TrainState, data, seed, n_steps: int):
        k = keys(seed)
        ctx = task.context(data, k["data"], state.step)

        def body(s: TrainState, _):
            t = s.step
            batch = task.sample(data, ctx, jax.random.fold_in(k["data"], t), t)
            params, opt_state, rule_state, metrics = step(s.params, s.opt_state, s.rule_state, batch,
                                                          jax.random.fold_in(k["rule"], t))
            finite = core.tree_all_finite(params)
            if "loss" in metrics:
                finite = finite & jnp.isfinite(metrics["loss"])
            ok = finite & (s.diverged_at < 0)
            new = TrainState(params, opt_state, rule_state, t + 1, s.diverged_at)
            kept = jax.tree.map(lambda a, b: jnp.where(ok, a, b), new[:3], s[:3])
            diverged_at = jnp.where((s.diverged_at < 0) & ~finite, t, s.diverged_at)
            return TrainState(*kept, t + 1, diverged_at), metrics

        state, metrics = jax.lax.scan(body, state, None, length=n_steps)
        return state, jax.tree.map(lambda m: jnp.mean(m, axis=0), metrics)

    def evaluate(state: TrainState, test):
        tokens = rule.token_scores
        return task.evaluate(core.Scorer(lambda x: rule.predict(state.params, state.rule_state, x),
                                         None if tokens is None else
                                         (lambda x: tokens(state.params, state.rule_state, x))), test)

    return Program(init, step, chunk, evaluate, sample)
