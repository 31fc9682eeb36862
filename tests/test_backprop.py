"""Backprop as a rule: it must be exactly the hand-written jax.grad + optax loop, or every comparison against
"backprop" in this lab compares against something else."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from localrules import core, train
from tests.helpers import tiny_build


def test_backprop_rule_equals_a_hand_written_grad_and_optax_loop():
    """Same init, same batches, same optimizer: the engine's scanned chunk and a plain Python loop over
    jax.grad + optax.adam must produce the same parameters after several steps."""
    b = tiny_build("rule=backprop", "optimizer.name=adam", "optimizer.lr=0.01")
    seed, n = 3, 6
    state = b.program.init(seed)
    out, _ = jax.jit(b.program.chunk, static_argnums=3)(state, b.task.data, seed, n)

    k = train.keys(seed)
    params = b.arch.init(k["init"])
    opt = optax.adam(0.01)
    opt_state = opt.init(params)

    def loss_fn(p, batch):
        return core.loss(b.arch.apply(p, batch.x), batch.y, b.task.heads)

    @jax.jit
    def step(params, opt_state, t):
        batch = b.task.sample((), (), jax.random.fold_in(k["data"], t), t)
        g = jax.grad(loss_fn)(params, batch)
        u, opt_state = opt.update(g, opt_state, params)
        return optax.apply_updates(params, u), opt_state

    for t in range(n):
        params, opt_state = step(params, opt_state, jnp.int32(t))
    for a, c in zip(jax.tree.leaves(out.params), jax.tree.leaves(params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(c), rtol=0, atol=1e-6)
    assert int(out.step) == n and int(out.diverged_at) == -1


def test_backprop_pseudo_gradient_is_the_gradient_of_the_mean_task_loss():
    """The rule's pseudo-gradient is ∇L with L the batch-mean cross-entropy (not the sum): optimizers'
    learning rates mean the same thing for every rule only if this scale is fixed."""
    b = tiny_build("rule=backprop")
    params = b.arch.init(jax.random.PRNGKey(0))
    batch = b.task.sample((), (), jax.random.PRNGKey(1), 0)
    g, _, m = b.rule.update(params, b.rule.init(jax.random.PRNGKey(2), params), batch, jax.random.PRNGKey(3))
    logits = b.arch.apply(params, batch.x)
    # d(mean CE)/d(output bias) = mean over the batch of softmax − onehot
    expected_bias_grad = np.mean(np.asarray(jax.nn.softmax(logits) - jax.nn.one_hot(batch.y[:, 0], 10)), axis=0)
    np.testing.assert_allclose(np.asarray(g[-1]["b"]), expected_bias_grad, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(float(m["loss"]), float(core.loss(logits, batch.y, b.task.heads)), rtol=1e-6)
