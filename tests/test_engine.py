"""The engine's promises: seeds vmapped in one program equal separate runs, the same seed gives identical
results, every rule with the same seed sees the same data, and a diverging seed is frozen and recorded while
the others continue."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import tiny_build


def _run(b, seeds, n=5):
    seeds = jnp.asarray(seeds, jnp.int32)
    state = jax.vmap(b.program.init)(seeds)
    chunk = jax.jit(jax.vmap(b.program.chunk, in_axes=(0, None, 0, None)), static_argnums=3)
    return chunk(state, b.task.data, seeds, n)


def test_vmapped_seeds_equal_separate_runs():
    """Running seeds 0 and 1 together under vmap must give each seed what it gets alone (up to float
    reassociation), or vmapping seeds would change the science."""
    b = tiny_build("rule=feedback_alignment")
    both, _ = _run(b, [0, 1])
    for i, s in enumerate((0, 1)):
        alone, _ = _run(b, [s])
        for a, c in zip(jax.tree.leaves(both.params), jax.tree.leaves(alone.params)):
            np.testing.assert_allclose(np.asarray(a)[i], np.asarray(c)[0], rtol=1e-5, atol=1e-6)


def test_same_seed_gives_bit_identical_results_twice():
    """Determinism: two runs of the same config and seed agree exactly."""
    b = tiny_build("rule=direct_feedback_alignment")
    s1, m1 = _run(b, [4])
    s2, m2 = _run(b, [4])
    for a, c in zip(jax.tree.leaves((s1, m1)), jax.tree.leaves((s2, m2))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(c))


def test_every_rule_with_the_same_seed_sees_the_same_batches_and_the_same_initial_weights():
    """Fairness: the data stream and the init depend on the seed only, never on the rule."""
    b1 = tiny_build("rule=backprop")
    b2 = tiny_build("rule=feedback_alignment")
    for t in (0, 7):
        x1 = b1.program.sample((), 2, jnp.int32(t))
        x2 = b2.program.sample((), 2, jnp.int32(t))
        np.testing.assert_array_equal(np.asarray(x1.x), np.asarray(x2.x))
    p1, p2 = b1.program.init(2).params, b2.program.init(2).params
    for a, c in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(c))


def test_a_non_finite_seed_is_frozen_and_recorded_while_the_other_seed_trains_on():
    """Divergence masking: seed 1 is poisoned with NaN before the chunk; it must be recorded as diverged at the
    first step and keep its last parameters, while seed 0 trains exactly as it would alone."""
    b = tiny_build("rule=backprop")
    seeds = jnp.asarray([0, 1], jnp.int32)
    state = jax.vmap(b.program.init)(seeds)
    poisoned = jax.tree.map(lambda a: a.at[1].set(jnp.nan) if a.dtype == jnp.float32 and a.ndim >= 2 else a,
                            state.params)
    state = state._replace(params=poisoned)
    chunk = jax.jit(jax.vmap(b.program.chunk, in_axes=(0, None, 0, None)), static_argnums=3)
    out, _ = chunk(state, b.task.data, seeds, 4)
    assert np.asarray(out.diverged_at).tolist() == [-1, 0]
    assert np.asarray(out.step).tolist() == [4, 4]
    alone, _ = _run(b, [0], n=4)
    for a, c in zip(jax.tree.leaves(out.params), jax.tree.leaves(alone.params)):
        np.testing.assert_allclose(np.asarray(a)[0], np.asarray(c)[0], rtol=1e-5, atol=1e-6)


def test_a_chunk_compiles_once_for_all_chunks_of_the_same_length():
    """No recompilation between chunks: the step counter is traced, so chunk 2 reuses chunk 1's program."""
    b = tiny_build("rule=backprop")
    traces = []

    def counted(state, data, seed, n):
        traces.append(1)
        return b.program.chunk(state, data, seed, n)

    chunk = jax.jit(jax.vmap(counted, in_axes=(0, None, 0, None)), static_argnums=3)
    seeds = jnp.asarray([0], jnp.int32)
    state = jax.vmap(b.program.init)(seeds)
    for _ in range(3):
        state, _ = chunk(state, b.task.data, seeds, 4)
    assert len(traces) == 1
    assert int(state.step[0]) == 12


@pytest.mark.parametrize("table", [True, False])
def test_prototypes_samples_are_the_class_prototype_rolled_by_the_drawn_shift(table, monkeypatch):
    """The generator gathers rows of a constant table of shifted prototypes (fast on CPU); each sample must be
    exactly its class prototype rolled by the shift the key draws, and the cached constants must be concrete even
    when first asked for inside a jit trace."""
    from localrules.tasks import prototypes as P

    cfg = P.Config(classes=4, size=9, blobs=3, shift=2, noise=0.0)
    if not table:  # the per-image roll used when the table would be too large to embed
        monkeypatch.setattr(P, "TABLE_LIMIT_BYTES", 0)
    P.prototypes.cache_clear()
    P.shifted_prototypes.cache_clear()
    key = jax.random.PRNGKey(3)
    batch = jax.jit(lambda k: P._draw(cfg, k, 64))(key)  # first use inside a trace: no leaked tracer
    protos = np.asarray(P.prototypes(cfg.classes, cfg.size, cfg.blobs))
    ky, ks, kc, _ = jax.random.split(key, 4)
    y = np.asarray(jax.random.randint(ky, (64,), 0, cfg.classes))
    sh = np.asarray(jax.random.randint(ks, (64, 2), -cfg.shift, cfg.shift + 1))
    contrast = np.asarray(jax.random.uniform(kc, (64, 1, 1), minval=0.6, maxval=1.0))
    want = np.stack([np.roll(protos[c], tuple(s), axis=(0, 1)) for c, s in zip(y, sh)]) * contrast
    assert len({tuple(s) for s in sh}) > 10  # many different shifts exercised
    np.testing.assert_allclose(np.asarray(batch.x)[..., 0], want, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(batch.y)[:, 0], y)

