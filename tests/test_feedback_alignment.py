"""Equation tests for feedback alignment (Lillicrap et al. 2016) and direct feedback alignment (Nøkland 2016):
one update computed by hand in NumPy from the papers' formulas, compared with the library's update."""

import jax
import numpy as np

from localrules import core
from tests.helpers import tiny_build


def _setup(rule):
    b = tiny_build(f"rule={rule}", "arch.hidden=[5,4]", "arch.activation=tanh", "task.size=4", "task.classes=3",
                   "batch_size=6")
    params = b.arch.init(jax.random.PRNGKey(0))
    state = b.rule.init(jax.random.PRNGKey(1), params)
    batch = b.task.sample((), (), jax.random.PRNGKey(2), 0)
    g, _, _ = b.rule.update(params, state, batch, jax.random.PRNGKey(3))
    P = [{k: np.asarray(v, np.float64) for k, v in p.items()} for p in params]
    x = np.asarray(batch.x, np.float64).reshape(batch.x.shape[0], -1)
    y = np.asarray(batch.y[:, 0])
    return b, P, state, x, y, g


def _forward(P, x):
    W1, b1, W2, b2, W3, b3 = P[1]["w"], P[1]["b"], P[2]["w"], P[2]["b"], P[3]["w"], P[3]["b"]
    a1 = x @ W1 + b1
    h1 = np.tanh(a1)
    a2 = h1 @ W2 + b2
    h2 = np.tanh(a2)
    a3 = h2 @ W3 + b3
    return a1, h1, a2, h2, a3


def _error(a3, y):
    p = np.exp(a3 - a3.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    return (p - np.eye(a3.shape[1])[y]) / a3.shape[0]  # δ_L of the batch-mean loss


def test_feedback_alignment_update_uses_the_fixed_random_matrices_in_place_of_transposed_weights():
    """δ_ℓ = (δ_{ℓ+1} B_{ℓ+1}ᵀ) ⊙ f'(a_ℓ) with B of W's shape; ∂W_ℓ = h_{ℓ−1}ᵀ δ_ℓ. Using W instead of B here
    (backprop) would give a different hidden update, so the test distinguishes FA from BP."""
    b, P, state, x, y, g = _setup("feedback_alignment")
    a1, h1, a2, h2, a3 = _forward(P, x)
    B2, B3 = np.asarray(state.B[2]["w"], np.float64), np.asarray(state.B[3]["w"], np.float64)
    d3 = _error(a3, y)
    d2 = (d3 @ B3.T) * (1 - np.tanh(a2) ** 2)
    d1 = (d2 @ B2.T) * (1 - np.tanh(a1) ** 2)
    for layer, (h, d) in zip((1, 2, 3), ((x, d1), (h1, d2), (h2, d3))):
        np.testing.assert_allclose(np.asarray(g[layer]["w"]), h.T @ d, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(g[layer]["b"]), d.sum(0), rtol=1e-5, atol=1e-6)
    bp_d1 = ((d3 @ P[3]["w"].T) * (1 - np.tanh(a2) ** 2) @ P[2]["w"].T) * (1 - np.tanh(a1) ** 2)
    assert not np.allclose(x.T @ bp_d1, np.asarray(g[1]["w"]), atol=1e-6)


def test_feedback_matrices_are_fixed_across_updates():
    """FA's B never learns: the state returned by update is the state given."""
    b, P, state, x, y, g = _setup("feedback_alignment")
    params = b.arch.init(jax.random.PRNGKey(0))
    batch = b.task.sample((), (), jax.random.PRNGKey(2), 0)
    _, state2, _ = b.rule.update(params, state, batch, jax.random.PRNGKey(3))
    for a, c in zip(jax.tree.leaves(state), jax.tree.leaves(state2)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(c))


def test_direct_feedback_alignment_projects_the_output_error_straight_to_each_hidden_layer():
    """δ_ℓ = (e B_ℓ) ⊙ f'(a_ℓ) for hidden ℓ, δ_L = e, with e the output error of the mean loss;
    no layer's update depends on the weights above it."""
    b, P, state, x, y, g = _setup("direct_feedback_alignment")
    a1, h1, a2, h2, a3 = _forward(P, x)
    e = _error(a3, y)
    B1, B2 = np.asarray(state.B[1], np.float64), np.asarray(state.B[2], np.float64)
    d1 = (e @ B1) * (1 - np.tanh(a1) ** 2)
    d2 = (e @ B2) * (1 - np.tanh(a2) ** 2)
    for layer, (h, d) in zip((1, 2, 3), ((x, d1), (h1, d2), (h2, e))):
        np.testing.assert_allclose(np.asarray(g[layer]["w"]), h.T @ d, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(g[layer]["b"]), d.sum(0), rtol=1e-5, atol=1e-6)


def test_fa_on_a_cnn_passes_pooling_exactly_and_replaces_only_the_kernels():
    """On conv → pool → dense, FA's conv-layer update must equal backprop's when the dense feedback matrix is
    set to the dense weights (the only replaced quantity): a check that pooling/flatten are backpropagated
    exactly and the conv VJP is right."""
    b = tiny_build("rule=feedback_alignment", "arch=cnn", "arch.channels=[3]", "task.size=8", "batch_size=4")
    params = b.arch.init(jax.random.PRNGKey(0))
    state = b.rule.init(jax.random.PRNGKey(1), params)
    state = state._replace(B=tuple({"w": p["w"]} if "w" in p else {} for p in params))
    batch = b.task.sample((), (), jax.random.PRNGKey(2), 0)
    g, _, _ = b.rule.update(params, state, batch, jax.random.PRNGKey(3))
    g_bp = jax.grad(lambda p: core.loss(b.arch.apply(p, batch.x), batch.y, b.task.heads))(params)
    for a, c in zip(jax.tree.leaves(g), jax.tree.leaves(g_bp)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(c), rtol=1e-4, atol=1e-6)
