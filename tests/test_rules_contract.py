"""One suite over the whole rule registry (a new rule joins with no edit): pseudo-gradients match the params
tree, state keeps its structure (a lax.scan carry needs that), no retrace on the second call, jit(vmap) over
seeds equals separate runs, same key → same result, shape mismatches fail clearly, and a tiny run learns."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from localrules import rules as registry
from tests.helpers import tiny_build

NAMES = sorted(registry.RULES)


def _tiny(name, *extra):
    return tiny_build(f"rule={name}", "task.classes=4", "task.noise=0.1", "arch.hidden=[32]", *extra)


def _struct(tree):
    return jax.tree.map(lambda a: (tuple(a.shape), str(a.dtype)), tree)


@pytest.mark.parametrize("name", NAMES)
def test_pseudo_gradients_have_the_params_tree_and_state_keeps_its_structure(name):
    b = _tiny(name)
    params = b.arch.init(jax.random.PRNGKey(0))
    state = b.rule.init(jax.random.PRNGKey(1), params)
    batch = b.task.sample((), (), jax.random.PRNGKey(2), 0)
    g, state2, metrics = b.rule.update(params, state, batch, jax.random.PRNGKey(3))
    assert jax.tree.structure(g) == jax.tree.structure(params)
    assert _struct(g) == _struct(params)
    assert jax.tree.structure(state2) == jax.tree.structure(state)
    assert _struct(state2) == _struct(state)
    assert all(jnp.ndim(v) == 0 for v in metrics.values())
    scores = b.rule.predict(params, state, batch.x)
    assert scores.shape == (batch.x.shape[0], b.task.heads.total)


@pytest.mark.parametrize("name", NAMES)
def test_update_does_not_retrace_on_the_second_call_and_is_deterministic_in_its_key(name):
    b = _tiny(name)
    params = b.arch.init(jax.random.PRNGKey(0))
    state = b.rule.init(jax.random.PRNGKey(1), params)
    batch = b.task.sample((), (), jax.random.PRNGKey(2), 0)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def upd(p, s, bt, k):
        return b.rule.update(p, s, bt, k)

    r1 = upd(params, state, batch, jax.random.PRNGKey(5))
    _, s1, _ = r1
    r2 = upd(params, s1, batch, jax.random.PRNGKey(5))
    r3 = upd(params, state, batch, jax.random.PRNGKey(5))
    for a, c in zip(jax.tree.leaves(r1), jax.tree.leaves(r3)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(c))
    chex.clear_trace_counter()
    del r2


@pytest.mark.parametrize("name", NAMES)
def test_jit_vmap_over_two_seeds_equals_two_single_runs(name):
    b = _tiny(name)
    chunk = jax.jit(jax.vmap(b.program.chunk, in_axes=(0, None, 0, None)), static_argnums=3)

    def run(seeds):
        seeds = jnp.asarray(seeds, jnp.int32)
        return chunk(jax.vmap(b.program.init)(seeds), b.task.data, seeds, 3)[0]

    both = run([0, 1])
    for i in range(2):
        alone = run([i])
        for a, c in zip(jax.tree.leaves(both.params), jax.tree.leaves(alone.params)):
            np.testing.assert_allclose(np.asarray(a)[i], np.asarray(c)[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_a_batch_of_the_wrong_shape_fails_with_a_clear_error(name):
    b = _tiny(name)
    params = b.arch.init(jax.random.PRNGKey(0))
    state = b.rule.init(jax.random.PRNGKey(1), params)
    batch = b.task.sample((), (), jax.random.PRNGKey(2), 0)
    bad = batch._replace(x=jnp.zeros((batch.x.shape[0], 3, 3, 1), jnp.float32))
    with pytest.raises((ValueError, TypeError)) as e:
        b.rule.update(params, state, bad, jax.random.PRNGKey(3))
    assert "shape" in str(e.value)


@pytest.mark.parametrize("name", NAMES)
def test_a_tiny_run_learns_an_easy_task_well_above_chance(name):
    """Four well-separated classes (chance 0.25), 3,200 samples: every rule at its defaults must get
    clearly above chance, or its defaults are broken."""
    b = _tiny(name, "samples=3200", "batch_size=32")
    seeds = jnp.asarray([0], jnp.int32)
    state = jax.vmap(b.program.init)(seeds)
    chunk = jax.jit(jax.vmap(b.program.chunk, in_axes=(0, None, 0, None)), static_argnums=3)
    state, _ = chunk(state, b.task.data, seeds, b.total_steps)
    acc = float(jax.vmap(b.program.evaluate, in_axes=(0, None))(state, b.task.test)["acc"][0])
    assert acc > 0.5, f"{name}: accuracy {acc:.3f} after {b.total_steps} steps"
