"""SoftHebb (Journé et al., ICLR 2023), tiered by oracle.

Equation tests: one Hebbian step computed by hand in NumPy float64 from the paper's formulas (spec §5), never from
the library's code, compared with ``rule.update``; the library returns ``g = −ηΔW`` for the Hebbian layers (applied
by ``sgd(1)``), so the library's new weights are ``W − g``. Then the block's forward path against NumPy, locality
and phase tests, and a tiny run through the real engine.
"""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from localrules import architectures, core
from localrules.architectures import softhebb_cnn, softhebb_mlp
from localrules.rules import softhebb

HEADS = core.single_head("c", 2)


def build_run(*tokens):
    from localrules import cli
    from localrules.config import RunConfig
    from localrules.run import build

    return build(cli.apply_overrides(RunConfig(), [cli.split_token(t) for t in tokens]))


# ------------------------------------------------------------------------------------------- NumPy oracle


def np_softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def np_step(X, W, t=1.0, eta0=0.08, q=0.5, plasticity="softkrotov", lr_mode="adaptive", progress=0.0,
            normalise=True, half_flip=False):
    """The paper's step (spec §2.2) in the paper's layout: X (N, D), W (K, D) → W' (K, D)."""
    U = X @ W.T
    Y = np_softmax(t * U)
    win = np.eye(W.shape[0])[U.argmax(1)]
    if plasticity == "softkrotov":
        Yt = np.where(win > 0, Y, -Y)
    elif plasticity == "soft":
        Yt = Y
    elif plasticity == "hard":
        Yt = win
    elif plasticity == "hard_krotov":  # winner +1, second-ranked −δ (δ = 0.05)
        second = np.argsort(-U, axis=1)[:, 1]
        Yt = win - 0.05 * np.eye(W.shape[0])[second]
    if half_flip:  # the bug the spec warns about: the Oja term keeps the un-flipped y
        dW = Yt.T @ X - np.sum(Y * U, 0)[:, None] * W
    else:
        dW = Yt.T @ X - np.sum(Yt * U, 0)[:, None] * W
    if normalise:
        dW = dW / (np.abs(dW).max() + 1e-30)
    if lr_mode == "adaptive":
        eta = eta0 * (np.abs(np.linalg.norm(W, axis=1) - 1.0) + 1e-10) ** q
    else:
        eta = eta0 * (1.0 - progress) * np.ones(W.shape[0])
    return W + eta[:, None] * dW


def dense_setup():
    """K = 3, D = 4, B = 5; W ~ N(0, (25/√4)²); row 4 has two near-tied neurons with large u, so a non-winner
    carries a large y·u (the Oja term of a non-winner matters)."""
    rng = np.random.default_rng(0)
    W = rng.normal(0.0, 25.0 / np.sqrt(4.0), (3, 4))
    X = rng.normal(0.0, 1.0, (5, 4))
    X[4] = np.linalg.lstsq(W, np.array([20.15, 19.85, 0.0]), rcond=None)[0]  # u = (20.15, 19.85, 0)
    return X, W


def run_dense(X, W, step=0, **rule_kw):
    """One rule.update on the SoftHebb MLP (no BN, D → K → 2) with the Hebbian weights set to W; returns W'."""
    arch = architectures.build(softhebb_mlp.Config(hidden=(W.shape[0],), bn="none"), (X.shape[1],), 2)
    cfg = softhebb.Config(**{"hebbian_batch": 0, "hebbian_steps": 4, **rule_kw})
    rule = softhebb.make(cfg, arch, HEADS)
    params = list(arch.init(jax.random.PRNGKey(0)))
    params[1] = {"w": jnp.asarray(W.T, jnp.float32)}
    batch = core.Batch(jnp.asarray(X, jnp.float32), jnp.zeros((X.shape[0], 1), jnp.int32))
    state = softhebb.SoftHebbState(jnp.asarray(step, jnp.int32))
    g, _, _ = rule.update(tuple(params), state, batch, jax.random.PRNGKey(1))
    return (np.asarray(params[1]["w"], np.float64) - np.asarray(g[1]["w"], np.float64)).T


# ------------------------------------------------------------------------------------------- equation tests


def test_dense_softkrotov_step_matches_the_paper_formula_by_hand():
    """Spec Test 1: softmax WTA over neurons, every non-winner negated, Oja term with the flipped ỹ, one global
    max-normalisation, then per-neuron η_k = η0·|‖w_k‖ − 1|^q from the norms before the step (ascent)."""
    X, W = dense_setup()
    got = run_dense(X, W)
    np.testing.assert_allclose(got, np_step(X, W), rtol=1e-5, atol=1e-7)
    assert np.sum(np.abs(got - W)) > 1e-3  # the step is not trivially zero


def test_the_anti_hebbian_flip_changes_the_sign_of_both_terms():
    """Pitfall 3: flipping only ỹᵀx but keeping +y·u·w in the Oja term gives a visibly different step on this
    data (a non-winner with y ≈ 0.43 and u ≈ 19.9), so the test above would catch the half-flip bug."""
    X, W = dense_setup()
    good, half = np_step(X, W), np_step(X, W, half_flip=True)
    assert np.max(np.abs(good - half)) > 1e-2 * np.max(np.abs(good - W))
    assert not np.allclose(run_dense(X, W), half, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("plasticity", ["soft", "hard", "hard_krotov"])
def test_plasticity_variants_match_their_formulas_on_the_same_data(plasticity):
    """Spec Test 2: soft (2022: ỹ = y), hard (ỹ = onehot argmax u), hard_krotov (winner +1, second −δ)."""
    X, W = dense_setup()
    np.testing.assert_allclose(run_dense(X, W, plasticity=plasticity), np_step(X, W, plasticity=plasticity),
                               rtol=1e-5, atol=1e-7)


def test_linear_decay_uses_eta0_times_remaining_progress_without_norm_dependence():
    """Spec Test 2: lr_mode=linear_decay, η = η0·(1 − progress); step 1 of a 4-step phase is progress 1/4."""
    X, W = dense_setup()
    np.testing.assert_allclose(run_dense(X, W, step=1, lr_mode="linear_decay"),
                               np_step(X, W, lr_mode="linear_decay", progress=0.25), rtol=1e-5, atol=1e-7)


def test_a_unit_norm_neuron_barely_moves():
    """Spec Test 2 / pitfall 5: with ‖w_k‖ = 1, η_k = η0·(1e-10)^0.5 ≈ 8e-7, so unit-norm init stops learning."""
    X, W = dense_setup()
    W[2] /= np.linalg.norm(W[2])
    got = run_dense(X, W)
    np.testing.assert_allclose(got, np_step(X, W), rtol=1e-5, atol=1e-7)
    assert np.max(np.abs(got[2] - W[2])) < 1e-5 < np.max(np.abs(got[0] - W[0]))


def test_without_update_normalisation_the_raw_oja_step_is_applied():
    """update_norm=none skips the division by max|ΔW| (and nothing else)."""
    X, W = dense_setup()
    W = W / 10.0  # keep the raw step moderate
    np.testing.assert_allclose(run_dense(X, W, update_norm="none"), np_step(X, W, normalise=False),
                               rtol=1e-5, atol=1e-6)


def np_unfold_torch_order(x_nchw, k, pad, stride=1):
    """Reflect-pad (edge not repeated) and unfold into (B·H'·W', C·k·k) rows ordered like a (K, C, kh, kw) kernel,
    one row per output pixel of a stride-``stride`` convolution."""
    xp = np.pad(x_nchw, ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode="reflect")
    b, c, hp, wp = xp.shape
    rows = []
    for n in range(b):
        for i in range(0, hp - k + 1, stride):
            for j in range(0, wp - k + 1, stride):
                rows.append(xp[n, :, i:i + k, j:j + k].reshape(-1))
    return np.asarray(rows)


@pytest.mark.parametrize("impl,stride", [("im2col", 1), ("conv", 1), ("im2col", 2), ("conv", 2)])
def test_conv_update_equals_the_dense_update_on_unfolded_reflect_padded_patches(impl, stride):
    """Spec Test 3: the conv rule is the dense rule with one competition per (sample, pixel) on reflect-padded
    patches; one max over the whole (K, C_in, 3, 3) tensor. The oracle unfolds in PyTorch's (C, kh, kw) order,
    the library in (kh, kw, C): the comparison is made after transposing both to one layout. Both
    implementations of ΣỸᵀX (unfolded patches; a convolution's weight gradient, no unfolding) and a strided
    convolution (6×6 input, stride 2: 3×3 output pixels; the correlation is 4×4 and must be cropped to 3×3)."""
    rng = np.random.default_rng(1)
    b, c, s, k, K = 2, 2, 5 if stride == 1 else 6, 3, 3
    x = rng.normal(size=(b, c, s, s))
    Wt = rng.normal(0.0, 25.0 / np.sqrt(c * k * k), (K, c, k, k))  # (K, C_in, kh, kw)
    expected = np_step(np_unfold_torch_order(x, k, 1, stride), Wt.reshape(K, -1)).reshape(K, c, k, k)

    arch = architectures.build(softhebb_cnn.Config(channels=(K,), kernels=(k,), paddings=(1,), strides=(stride,),
                                                   pools=("none",), bn="none", conv_impl=impl), (s, s, c), 2)
    rule = softhebb.make(softhebb.Config(hebbian_batch=0, hebbian_steps=4), arch, HEADS)
    params = list(arch.init(jax.random.PRNGKey(0)))
    params[1] = {"w": jnp.asarray(Wt.transpose(2, 3, 1, 0), jnp.float32)}  # → (kh, kw, C_in, K)
    batch = core.Batch(jnp.asarray(x.transpose(0, 2, 3, 1), jnp.float32), jnp.zeros((b, 1), jnp.int32))
    g, _, _ = rule.update(tuple(params), softhebb.SoftHebbState(jnp.zeros((), jnp.int32)), batch,
                          jax.random.PRNGKey(1))
    got = np.asarray(params[1]["w"], np.float64) - np.asarray(g[1]["w"], np.float64)
    np.testing.assert_allclose(got.transpose(3, 2, 0, 1), expected, rtol=1e-5, atol=1e-6)


def test_the_block_being_trained_uses_batch_statistics_and_moves_its_running_statistics_like_pytorch():
    """Spec Test 4 / pitfall 7: in its phase the block's input BN normalises with the batch mean and biased
    variance; running stats move by momentum 0.1 towards the batch mean and the *unbiased* variance."""
    rng = np.random.default_rng(2)
    x = rng.normal(1.5, 2.0, (6, 4))
    W = rng.normal(0.0, 25.0 / 2.0, (3, 4))
    arch = architectures.build(softhebb_mlp.Config(hidden=(3,), bn="running", activation="triangle"), (4,), 2)
    rule = softhebb.make(softhebb.Config(hebbian_batch=0, hebbian_steps=4), arch, HEADS)
    params = list(arch.init(jax.random.PRNGKey(0)))
    params[1] = {"w": jnp.asarray(W.T, jnp.float32), "bn_mean": jnp.full((4,), 0.5), "bn_var": jnp.full((4,), 2.0)}
    batch = core.Batch(jnp.asarray(x, jnp.float32), jnp.zeros((6, 1), jnp.int32))
    g, _, _ = rule.update(tuple(params), softhebb.SoftHebbState(jnp.zeros((), jnp.int32)), batch,
                          jax.random.PRNGKey(1))
    xn = (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5)
    np.testing.assert_allclose((np.asarray(params[1]["w"]) - np.asarray(g[1]["w"])).T, np_step(xn, W),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(0.5 - np.asarray(g[1]["bn_mean"]), 0.9 * 0.5 + 0.1 * x.mean(0), rtol=1e-5)
    np.testing.assert_allclose(2.0 - np.asarray(g[1]["bn_var"]), 0.9 * 2.0 + 0.1 * x.var(0, ddof=1), rtol=1e-5)


# ------------------------------------------------------------------------------------------- forward path


def np_triangle(u, p):
    return np.maximum(u - u.mean(-1, keepdims=True), 0.0) ** p


def test_block_forward_is_eval_bn_then_reflect_padded_conv_then_triangle():
    """Spec Test 4: apply() normalises with the running statistics, reflect-pads, convolves without bias and
    passes relu(u − mean_c u)^0.7 forward (ReLU before the fractional power)."""
    rng = np.random.default_rng(3)
    arch = architectures.build(softhebb_cnn.Config(channels=(4,), kernels=(3,), paddings=(1,), pools=("none",)),
                               (5, 5, 2), 2)
    layer = arch.layers[1]
    w = rng.normal(size=(3, 3, 2, 4))
    mean, var = np.array([0.3, -0.2]), np.array([2.0, 0.5])
    x = rng.normal(size=(2, 5, 5, 2))
    u, y = layer.apply({"w": jnp.asarray(w, jnp.float32), "bn_mean": jnp.asarray(mean, jnp.float32),
                        "bn_var": jnp.asarray(var, jnp.float32)}, jnp.asarray(x, jnp.float32))
    xn = (x - mean) / np.sqrt(var + 1e-5)
    xp = np.pad(xn, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    u_np = np.zeros((2, 5, 5, 4))
    for i in range(5):
        for j in range(5):
            u_np[:, i, j] = np.einsum("bhwc,hwck->bk", xp[:, i:i + 3, j:j + 3], w)
    np.testing.assert_allclose(np.asarray(u), u_np, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(y), np_triangle(u_np, 0.7), rtol=1e-4, atol=1e-5)


def np_pool(x, k, s, p, kind):
    fill = -np.inf if kind == "max" else 0.0
    xp = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), constant_values=fill)
    n = (x.shape[1] + 2 * p - k) // s + 1
    out = np.zeros((x.shape[0], n, n, x.shape[3]))
    for i in range(n):
        for j in range(n):
            win = xp[:, i * s:i * s + k, j * s:j * s + k]
            out[:, i, j] = win.max((1, 2)) if kind == "max" else win.sum((1, 2)) / (k * k)
    return out


@pytest.mark.parametrize("kind,k,s,p", [("max", 4, 2, 1), ("avg", 4, 2, 1), ("max", 2, 2, 0), ("avg", 2, 2, 0),
                                        ("avg", 3, 3, 1)])
def test_pools_pad_like_pytorch(kind, k, s, p):
    """Pitfall 8: max4/2/1 pads with −∞ (a negative input must not see a 0 border); avg4/2/1 counts the zero
    padding in the average (count_include_pad=True). Overlapping windows (separable reduce_window) and
    non-overlapping ones (strided slices: the input pool of the curriculum default) alike."""
    x = -1.0 - np.random.default_rng(4).random((2, 6, 6, 3))
    layer = softhebb_cnn.padded_pool(f"{kind}{k}/{s}/{p}")
    got = np.asarray(layer.apply({}, jnp.asarray(x, jnp.float32))[1])
    np.testing.assert_allclose(got, np_pool(x, k, s, p, kind), rtol=1e-6)
    n = (6 + 2 * p - k) // s + 1
    assert got.shape == (2, n, n, 3)


def test_radius_initialisation_gives_weight_norms_near_the_radius():
    """Pitfall 5: r = 25 with input BN (normal) and r = 35 without (positive uniform) give ‖w_k‖ ≈ r, so that the
    adaptive η starts large."""
    cnn = architectures.build(softhebb_cnn.Config(), (28, 28, 1), 10).init(jax.random.PRNGKey(0))
    mlp = architectures.build(softhebb_mlp.Config(), (28, 28, 1), 10).init(jax.random.PRNGKey(0))
    n_cnn = np.linalg.norm(np.asarray(cnn[1]["w"]).reshape(-1, 96), axis=0)
    n_mlp = np.linalg.norm(np.asarray(mlp[1]["w"]), axis=0)
    assert abs(n_cnn.mean() - 25.0) < 2.0 and abs(n_mlp.mean() - 35.0) < 1.0
    assert np.asarray(mlp[1]["w"]).min() >= 0.0


# ------------------------------------------------------------------------------------------- locality, phases


def two_layer():
    arch = architectures.build(softhebb_cnn.Config(channels=(4, 6), kernels=(3,), paddings=(1,),
                                                   pools=("max4/2/1",)), (8, 8, 1), 2)
    x = jax.random.normal(jax.random.PRNGKey(7), (6, 8, 8, 1))
    y = jax.random.randint(jax.random.PRNGKey(8), (6, 1), 0, 2)
    return arch, arch.init(jax.random.PRNGKey(0)), core.Batch(x, y)


_JITTED = {}


def grads_at(arch, params, batch, step, **kw):
    cfg = softhebb.Config(**{"hebbian_steps": 3, "hebbian_batch": 0, "head_dropout": 0.0, **kw})
    if (cfg, arch.name) not in _JITTED:  # one compile per config: the phases are traced, not static
        _JITTED[cfg, arch.name] = jax.jit(softhebb.make(cfg, arch, HEADS).update)
    g, _, _ = _JITTED[cfg, arch.name](params, softhebb.SoftHebbState(jnp.asarray(step, jnp.int32)), batch,
                                      jax.random.PRNGKey(2))
    return g


def is_zero(tree):
    return all(np.all(np.asarray(a) == 0) for a in jax.tree.leaves(tree))


def test_successive_mode_trains_one_layer_per_phase_and_leaves_the_others_bit_identical():
    """Spec Test 5: greedy training. Steps 0–2 move only block 0, steps 3–5 only block 1 (block 0 frozen, BN
    stats included), and from step 6 only the head."""
    arch, params, batch = two_layer()
    hebb, head = softhebb.layout(arch)
    for step, moving in ((0, hebb[0]), (4, hebb[1]), (6, head)):
        g = grads_at(arch, params, batch, step)
        for i in (*hebb, head):
            assert is_zero(g[i]) == (i != moving), (step, i)


def test_consecutive_mode_trains_all_layers_together_then_the_head():
    arch, params, batch = two_layer()
    hebb, head = softhebb.layout(arch)
    g = grads_at(arch, params, batch, 0, training_mode="consecutive")
    assert not is_zero(g[hebb[0]]) and not is_zero(g[hebb[1]]) and is_zero(g[head])
    g = grads_at(arch, params, batch, 3, training_mode="consecutive")
    assert is_zero(g[hebb[0]]) and is_zero(g[hebb[1]]) and not is_zero(g[head])


def test_the_head_update_is_backprops_gradient_of_the_task_loss_and_nothing_reaches_the_hebbian_layers():
    """Spec Test 5: in the head phase the head's pseudo-gradient equals jax.grad of the task loss w.r.t. the head
    (no dropout), and every Hebbian parameter gets exactly zero."""
    arch, params, batch = two_layer()
    hebb, head = softhebb.layout(arch)
    g = grads_at(arch, params, batch, 6)
    bp = jax.grad(lambda p: core.loss(arch.apply(p, batch.x), batch.y, HEADS))(params)
    for a, c in zip(jax.tree.leaves(g[head]), jax.tree.leaves(bp[head])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(c), rtol=1e-4, atol=1e-7)
    assert all(is_zero(g[i]) for i in hebb)


def test_random_frozen_features_baseline_moves_only_the_bn_statistics():
    """plasticity=none is the paper's random-features control: weights stay at their init, BN still calibrates."""
    arch = architectures.build(softhebb_mlp.Config(hidden=(3,), bn="running"), (4,), 2)
    rule = softhebb.make(softhebb.Config(plasticity="none", hebbian_steps=3), arch, HEADS)
    params = arch.init(jax.random.PRNGKey(0))
    batch = core.Batch(jnp.asarray(dense_setup()[0] + 1.0, jnp.float32), jnp.zeros((5, 1), jnp.int32))
    g, _, _ = rule.update(params, rule.init(jax.random.PRNGKey(0), params), batch, jax.random.PRNGKey(1))
    assert is_zero(g[1]["w"]) and not is_zero(g[1]["bn_mean"]) and not is_zero(g[1]["bn_var"])


def test_random_baseline_stays_finite_under_vmap_over_three_seeds():
    """Regression: computing the all-zero update of plasticity=none under jit(vmap) over 3 seeds (64 channels,
    batch 20, micro-batches of 10) made XLA:CPU return NaN weights and −∞ softmax maxima (jax 0.10.2). The rule now
    skips that computation; weights must stay bit-identical and metrics finite."""
    arch = architectures.build(softhebb_cnn.Config(channels=(64,)), (8, 8, 1), 10)
    rule = softhebb.make(softhebb.Config(plasticity="none", hebbian_steps=1000), arch, core.single_head("c", 10))
    ps = jax.vmap(arch.init)(jax.random.split(jax.random.PRNGKey(0), 3))
    st = jax.vmap(lambda p: rule.init(jax.random.PRNGKey(0), p))(ps)
    x = jax.random.uniform(jax.random.PRNGKey(1), (3, 20, 8, 8, 1))
    batch = core.Batch(x, jnp.zeros((3, 20, 1), jnp.int32))
    g, _, m = jax.jit(jax.vmap(rule.update, in_axes=(0, 0, 0, None)))(ps, st, batch, jax.random.PRNGKey(0))
    assert is_zero(g[1]["w"])
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in m.values())


def test_hebbian_micro_batches_equal_sequential_whole_batch_steps():
    """hebbian_batch splits a lab batch into sequential Hebbian steps: one update on 6 samples in micro-batches
    of 3 equals two updates on the halves (the second from the weights after the first)."""
    arch, params, batch = two_layer()
    i = softhebb.layout(arch)[0][0]
    g = grads_at(arch, params, batch, 0, hebbian_batch=3)
    first = core.Batch(batch.x[:3], batch.y[:3])
    second = core.Batch(batch.x[3:], batch.y[3:])
    g1 = grads_at(arch, params, first, 0)
    p1 = list(params)
    p1[i] = jax.tree.map(lambda a, b: a - b, params[i], g1[i])
    g2 = grads_at(arch, tuple(p1), second, 0)
    for k in params[i]:
        np.testing.assert_allclose(np.asarray(g[i][k]), np.asarray(g1[i][k] + g2[i][k]), rtol=1e-4, atol=1e-4)


def test_micro_batch_is_the_largest_divisor_not_above_the_setting():
    assert [softhebb.micro_batch(10, b) for b in (60, 64, 32, 8, 7)] == [10, 8, 8, 8, 7]
    assert softhebb.micro_batch(0, 60) == 60


def test_the_rules_optimizer_applies_hebbian_steps_exactly_and_starts_the_head_after_the_phases():
    """RULE.optimizer: sgd(1) on Hebbian layers (W − g = W + ηΔW); the head's optimizer is gated until step
    L·S, so it starts with fresh state."""
    import optax

    arch, params, batch = two_layer()
    cfg = softhebb.Config(hebbian_steps=3)
    opt = softhebb.RULE.optimizer(cfg, arch, lambda c=None: optax.sgd(0.5))
    state = opt.init(params)
    g = jax.tree.map(jnp.ones_like, params)
    upd, _ = opt.update(g, state, params)
    hebb, head = softhebb.layout(arch)
    assert all(np.all(np.asarray(a) == -1.0) for a in jax.tree.leaves(upd[hebb[0]]))
    assert is_zero(upd[head])
    assert softhebb.head_start(cfg, arch) == 6


# ------------------------------------------------------------------------------------------- through the engine


def _trained_accuracy(*tokens):
    b = build_run(*tokens)
    seeds = jnp.asarray([0], jnp.int32)
    chunk = jax.jit(jax.vmap(b.program.chunk, in_axes=(0, None, 0, None)), static_argnums=3)
    state, _ = chunk(jax.vmap(b.program.init)(seeds), b.task.data, seeds, b.total_steps)
    return b, float(jax.vmap(b.program.evaluate, in_axes=(0, None))(state, b.task.test)["acc"][0])


def test_the_default_rule_and_the_composed_paper_protocol_learn_through_the_engine():
    """``rule=softhebb`` at its defaults (its own curriculum SoftHebb CNN, here 32 channels; no phases) and the
    paper protocol as ``rule=compose`` (one Hebbian phase with sgd(1), then a backprop head, on the paper's block)
    on 4 prototype classes, through the engine's jitted, vmapped training chunk: both clearly above chance 0.25."""
    task = ["task=prototypes", "task.classes=4", "task.size=8", "task.noise=0.1", "task.test_size=200",
            "batch_size=20", "samples=600"]
    b, acc = _trained_accuracy("rule=softhebb", *task, "arch.channels=[32]")
    assert b.arch.name.startswith("softhebb_cnn") and acc > 0.6, acc
    _, acc = _trained_accuracy("rule=compose", "arch=softhebb_cnn", "arch.channels=[8]", "rule.hidden_rule=softhebb",
                               "rule.hidden_rule.head=none", "rule.hidden_rule.hebbian_steps=10",
                               "rule.hidden_steps=10", "rule.head_rule=backprop", "rule.hidden_optimizer.name=sgd",
                               "rule.hidden_optimizer.lr=1", *task)
    assert acc > 0.6, acc


def test_head_dropout_mask_keeps_the_requested_fraction_from_independent_bits():
    """The head's dropout draws the fewest random bits per element that express the keep probability rounded to
    1/256 (1 bit for the paper's 0.5, 2 for 0.75, 8 for 0.8), returned for the inverted-dropout scale; neighbours
    (bits of one 32-bit draw) are not correlated."""
    for keep, exact in ((0.5, 0.5), (0.75, 0.75), (0.8, 205 / 256)):
        m, p = softhebb.dropout_mask(jax.random.PRNGKey(0), keep, (400, 501))
        m = np.asarray(m, np.float64)
        assert p == exact and m.shape == (400, 501) and abs(m.mean() - exact) < 0.005, (keep, m.mean())
        a, b = m.reshape(-1)[:-1], m.reshape(-1)[1:]
        assert abs(np.corrcoef(a, b)[0, 1]) < 0.01
    m, p = softhebb.dropout_mask(jax.random.PRNGKey(0), 1.0, (3, 4))
    assert p == 1.0 and bool(jnp.all(m))


def test_rule_softhebb_alone_builds_its_curriculum_architecture_and_it_learns():
    """``python -m localrules.sweep rule=softhebb`` (no arch=) builds ``softhebb_cnn.CURRICULUM``, the cheap
    SoftHebb net sized for the nursery curriculum: on its input (two 32×32×3 frames stacked as 6 channels) an
    input pool, one Hebbian conv block and the linear head over the 21 named outputs. A few engine steps on the
    S1 stream move the Hebbian weights, the block's BN statistics and the head."""
    from localrules import cli
    from localrules.config import RunConfig

    cfg = cli.apply_overrides(RunConfig(), [cli.split_token("rule=softhebb")])
    assert cfg.arch == softhebb._default_arch() == softhebb_cnn.CURRICULUM
    assert type(cfg.task).__module__.endswith("curriculum")  # the default task is the nursery curriculum
    b = build_run("rule=softhebb", "task.stages=[S1]", "task.frames=2", "task.blur_robustness=false",
                  "batch_size=20", "timing_steps=0", "checkpoint=false", "progress=false")
    assert b.arch.input_shape == (2, 32, 32, 3) and b.arch.out_dim == 21
    kinds = [layer.kind for layer in b.arch.layers]
    hebb, head = softhebb.layout(b.arch)
    assert len(hebb) == 1 and kinds[hebb[0] - 1] == "pool" and kinds[head] == "dense"
    conv = b.arch.layers[hebb[0]]
    assert conv.kind == "conv" and conv.meta["c_in"] == 6 and conv.meta["c_out"] == softhebb_cnn.CURRICULUM.channels[0]
    seeds = jnp.asarray([0], jnp.int32)
    chunk = jax.jit(jax.vmap(b.program.chunk, in_axes=(0, None, 0, None)), static_argnums=3)
    s0 = jax.vmap(b.program.init)(seeds)
    s1, _ = chunk(s0, b.task.data, seeds, 3)
    p0, p1 = s0.params, s1.params
    for i, key in ((hebb[0], "w"), (hebb[0], "bn_mean"), (head, "w")):
        assert float(jnp.max(jnp.abs(p1[i][key] - p0[i][key]))) > 1e-4, (i, key)
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree.leaves(p1))
