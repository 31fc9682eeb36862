"""Equation tests for Forward-Forward (Hinton 2022) as ``ffcode`` runs it: every expectation is computed in NumPy
float64 from the formulas of the paper and ``ffnew.m`` (spec §2, §5), never from the library's own code."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from localrules import core
from localrules.architectures import ff_mlp
from localrules.architectures import build_mlp, MLPConfig
from localrules.optim import OptimizerConfig, make_optimizer
from localrules.rules import forward_forward as ff
from tests.helpers import tiny_build

EPS = ff_mlp.NORM_EPS["rms"]
TOL = dict(rtol=1e-5, atol=1e-6)


def rms(X):
    return X / (np.sqrt(np.mean(X ** 2, axis=1, keepdims=True)) + EPS)


def sigmoid(u):
    return 1.0 / (1.0 + np.exp(-u))


def softplus(u):
    return np.logaddexp(0.0, u)


def f64(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def layer_data(seed=3, silent_unit=False):
    """Spec §5 test 1: D = 4, N = 3, B = 2 positive + 2 negative rows, X ~ U[0, 1), W ~ N(0, 1/D), b ~ N(0, 0.3²)."""
    rng = np.random.default_rng(seed)
    Xp, Xn = rng.uniform(size=(2, 4)), rng.uniform(size=(2, 4))
    W, b = rng.normal(0, 0.5, size=(4, 3)), rng.normal(0, 0.3, size=3)
    if silent_unit:
        b[2] = -50.0
    W, b, Xp, Xn = (a.astype(np.float32).astype(np.float64) for a in (W, b, Xp, Xn))
    layer = ff_mlp.normalised_dense(4, 3, "relu", True, "fan_in", "rms")
    return layer, W, b, Xp, Xn


def run_layer(cfg, layer, W, b, Xp, Xn):
    p = {"w": jnp.asarray(W, jnp.float32), "b": jnp.asarray(b, jnp.float32)}
    x = jnp.asarray(np.concatenate([Xp, Xn]), jnp.float32)
    return ff.layer_update(cfg, layer, p, x, jnp.full((3,), 0.5), 2)


def hand_layer(W, b, Xp, Xn, peer=None):
    """ffnew.m for one layer: returns ΔW, Δb (ascent), the new running mean and the loss."""
    Xhp, Xhn = rms(Xp), rms(Xn)
    Hp, Hn = np.maximum(Xhp @ W + b, 0), np.maximum(Xhn @ W + b, 0)
    N = W.shape[1]
    Gp, Gn = (Hp ** 2).sum(1), (Hn ** 2).sum(1)
    pp, pn = sigmoid(Gp - N), sigmoid(Gn - N)
    dp = (1 - pp)[:, None] * Hp
    dn = -pn[:, None] * Hn
    m = 0.9 * 0.5 + 0.1 * Hp.mean(0)
    if peer == "ffcode":
        dp = dp + 0.03 * (m.mean() - m)[None, :]
    elif peer == "loewex":
        dp = dp + 0.03 * 0.1 * (m.mean() - m)[None, :] / N
    B = Xp.shape[0]
    dW = (Xhp.T @ dp + Xhn.T @ dn) / B
    db = (dp.sum(0) + dn.sum(0)) / B
    loss = np.mean(softplus(N - Gp)) + np.mean(softplus(Gn - N))
    return dW, db, m, loss, Xhp @ W + b, Xhn @ W + b


def test_one_layer_update_is_ffcodes_delta_rule_on_rms_normalised_inputs():
    """Spec §5 test 1: δ⁺ = (1 − p⁺)h⁺, δ⁻ = −p⁻h⁻, ΔW = (X̂⁺ᵀδ⁺ + X̂⁻ᵀδ⁻)/B with X̂ = X/(rms(X) + ε) and
    p = σ(Σh² − N); the rule returns −ΔW. A missing normalisation, a wrong threshold or a swapped sign shows here."""
    layer, W, b, Xp, Xn = layer_data()
    g, m, h, stats = run_layer(ff.Config(peer_norm="off"), layer, W, b, Xp, Xn)
    dW, db, _, loss, Ap, An = hand_layer(W, b, Xp, Xn)
    assert (np.concatenate([Ap, An]) <= 0).any(), "pick a seed with at least one silent (row, unit)"
    np.testing.assert_allclose(np.asarray(g["w"]), -dW, **TOL)
    np.testing.assert_allclose(np.asarray(g["b"]), -db, **TOL)
    np.testing.assert_allclose(float(stats["loss"]), loss, rtol=1e-5)


def test_without_peer_term_the_pseudo_gradient_is_half_the_autodiff_gradient_of_the_paper_loss():
    """Spec §2.5: δ = −½ ∂L/∂a, so ffcode's ΔW is −½∇L with L = mean softplus(N − G⁺) + softplus(G⁻ − N): the
    factor that links ffcode's learning rate to an autodiff implementation's."""
    layer, W, b, Xp, Xn = layer_data()
    g, *_ = run_layer(ff.Config(peer_norm="off"), layer, W, b, Xp, Xn)

    def L(p):
        Hp = jax.nn.relu(ff_mlp.normalise(jnp.asarray(Xp)) @ p["w"] + p["b"][None, :])
        Hn = jax.nn.relu(ff_mlp.normalise(jnp.asarray(Xn)) @ p["w"] + p["b"][None, :])
        return (jnp.mean(jax.nn.softplus(3 - jnp.sum(Hp ** 2, 1)))
                + jnp.mean(jax.nn.softplus(jnp.sum(Hn ** 2, 1) - 3)))

    full = jax.grad(L)({"w": jnp.asarray(W, jnp.float32), "b": jnp.asarray(b, jnp.float32)})
    np.testing.assert_allclose(np.asarray(g["w"]), 0.5 * np.asarray(full["w"]), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(g["b"]), 0.5 * np.asarray(full["b"]), rtol=1e-4, atol=1e-6)


def test_peer_normalisation_adds_an_ungated_term_from_the_running_mean_of_positive_rows():
    """Spec §5 test 2: m ← 0.9·0.5 + 0.1·mean(H⁺); δ⁺ += 0.03(m̄ − m) on every positive row, not gated by the
    ReLU, so a unit silent on every row still gets exactly X̂⁺ᵀ·0.03(m̄ − m_j)/B and can come back to life."""
    layer, W, b, Xp, Xn = layer_data(silent_unit=True)
    g, m, _, _ = run_layer(ff.Config(), layer, W, b, Xp, Xn)
    dW, db, m_hand, _, Ap, An = hand_layer(W, b, Xp, Xn, peer="ffcode")
    assert (Ap[:, 2] < 0).all() and (An[:, 2] < 0).all()
    np.testing.assert_allclose(np.asarray(g["w"]), -dW, **TOL)
    np.testing.assert_allclose(np.asarray(g["b"]), -db, **TOL)
    np.testing.assert_allclose(np.asarray(m), m_hand, **TOL)
    peer_only = rms(Xp).T @ np.full((2, 1), 0.03 * (m_hand.mean() - m_hand[2])) / 2
    assert np.abs(peer_only).max() > 1e-4
    np.testing.assert_allclose(np.asarray(g["w"])[:, 2], -peer_only[:, 0], **TOL)
    # positive rows only: the negative rows' activity does not enter the running mean
    Hn = np.maximum(rms(Xn) @ W + b, 0)
    assert not np.allclose(m_hand, 0.9 * 0.5 + 0.1 * np.concatenate([np.maximum(rms(Xp) @ W + b, 0), Hn]).mean(0))


def test_loewex_peer_normalisation_is_the_ffcode_term_scaled_by_one_minus_momentum_over_n():
    """loeweX's loss λ·mean_j(m̄ − m_j)² through m = 0.9m + 0.1·mean(h⁺) with a straight-through ReLU gives
    −½B ∂/∂a = 0.1·λ(m̄ − m_j)/N: the two named forms differ by that factor only (spec §2.6)."""
    layer, W, b, Xp, Xn = layer_data(silent_unit=True)
    g, *_ = run_layer(ff.Config(peer_norm="loewex"), layer, W, b, Xp, Xn)
    dW, db, *_ = hand_layer(W, b, Xp, Xn, peer="loewex")
    np.testing.assert_allclose(np.asarray(g["w"]), -dW, **TOL)
    np.testing.assert_allclose(np.asarray(g["b"]), -db, **TOL)


def test_goodness_of_plus_minus_500_around_theta_gives_a_finite_loss_and_update():
    """Spec §5 test 6: G − θ reaches the hundreds for N = 1000–2000; exp would overflow, softplus/sigmoid do not."""
    layer, W, b, Xp, Xn = layer_data()
    cfg = ff.Config(theta=500.0, peer_norm="off")
    g, _, h, stats = run_layer(cfg, layer, W * 0.0, np.array([0.0, 0.0, 0.0]), Xp, Xn)  # G = 0: u = −500
    assert np.isfinite(float(stats["loss"])) and all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(g))
    np.testing.assert_allclose(float(stats["loss"]), 500.0, rtol=1e-5)  # softplus(500) + softplus(−500)
    b_big = np.array([np.sqrt(1000.0), 0.0, 0.0])  # h = (31.6, 0, 0): G = 1000, u = +500 on every row
    g, _, h, stats = run_layer(cfg, layer, W * 0.0, b_big, Xp, Xn)
    assert np.isfinite(float(stats["loss"])) and all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(g))
    np.testing.assert_allclose(float(stats["loss"]), 500.0, rtol=1e-4)


# ----------------------------------------------------------------------------------- whole update, by hand


def _tiny(arch_tokens, rule_tokens=(), classes=2, batch=4):
    b = tiny_build("rule=forward_forward", *arch_tokens, *rule_tokens, f"task.classes={classes}", "task.size=4",
                   f"batch_size={batch}")
    params = b.arch.init(jax.random.PRNGKey(0))
    rng = np.random.default_rng(5)
    # non-zero read-out and biases so that every term of the update is exercised
    params = tuple({k: jnp.asarray(rng.normal(0, 0.3 if k == "b" else 1.0 / np.sqrt(v.shape[0]), v.shape),
                                   jnp.float32) for k, v in p.items()} for p in params)
    state = b.rule.init(jax.random.PRNGKey(1), params)
    batch = b.task.sample((), (), jax.random.PRNGKey(2), 0)
    return b, params, state, batch


def _hand_ff_stack(P, ws, X0, y_pos, y_neg, K, pixels):
    """Positive and negative passes of ffnew.m through hidden layers ``ws`` (indices into P); input X0 (B, D)."""
    B = X0.shape[0]

    def embed(code):
        return np.concatenate([code, X0[:, K:]], 1) if pixels else np.concatenate([code, X0], 1)

    hp, hn = embed(np.eye(K)[y_pos]), embed(np.eye(K)[y_neg])
    grads, ms, loss = {}, [], 0.0
    for i in ws:
        W, b = P[i]["w"], P[i]["b"]
        Xhp, Xhn = rms(hp), rms(hn)
        hp, hn = np.maximum(Xhp @ W + b, 0), np.maximum(Xhn @ W + b, 0)
        N = W.shape[1]
        Gp, Gn = (hp ** 2).sum(1), (hn ** 2).sum(1)
        pp, pn = sigmoid(Gp - N), sigmoid(Gn - N)
        m = 0.9 * 0.5 + 0.1 * hp.mean(0)
        dp = (1 - pp)[:, None] * hp + 0.03 * (m.mean() - m)[None, :]
        dn = -pn[:, None] * hn
        grads[i] = {"w": -(Xhp.T @ dp + Xhn.T @ dn) / B, "b": -(dp.sum(0) + dn.sum(0)) / B}
        ms.append(m)
        loss += np.mean(softplus(N - Gp)) + np.mean(softplus(Gn - N))
    return grads, ms, loss


def _softmax_error(z, y, K):
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    return (p - np.eye(K)[y]) / z.shape[0]


def test_full_update_on_ff_mlp_matches_ffnew_m_with_label_units_neutral_pass_and_two_layer_readout():
    """The whole step of ffnew.m on arch=ff_mlp (label units + 4×4 image, hidden 4-3-3, read-out on layers 2..3):
    neutral pass with 1/K per label unit → read-out z = Σ_{ℓ≥2} x̂_ℓV_ℓ and its CE gradient; the negative label
    (with 2 classes the hard negative is the other class); positive and negative passes with peer terms; every
    layer's −ΔW, the running means and the summed FF loss."""
    b, params, state, batch = _tiny(["arch=ff_mlp", "arch.hidden=[4,3,3]"])
    g, st, met = jax.jit(b.rule.update)(params, state, batch, jax.random.PRNGKey(9))
    P = f64(params)
    X0 = np.asarray(batch.x, np.float64).reshape(4, -1)
    y = np.asarray(batch.y[:, 0])
    K, B = 2, 4
    assert 0 < y.sum() < B, "want both classes in the batch"
    # neutral pass and read-out
    h = np.concatenate([np.full((B, K), 1.0 / K), X0], 1)
    hs = []
    for i in (1, 2, 3):
        h = np.maximum(rms(h) @ P[i]["w"] + P[i]["b"], 0)
        hs.append(h)
    R = np.concatenate([rms(hs[1]), rms(hs[2])], 1)  # layers 2 and 3 only, each normalised
    e = _softmax_error(R @ P[4]["w"], y, K)
    np.testing.assert_allclose(np.asarray(g[4]["w"]), R.T @ e, **TOL)
    grads, ms, loss = _hand_ff_stack(P, (1, 2, 3), X0, y, 1 - y, K, pixels=False)
    for i in (1, 2, 3):
        for k in ("w", "b"):
            np.testing.assert_allclose(np.asarray(g[i][k]), grads[i][k], **TOL)
    for a, m in zip(st.mean_activity, ms):
        np.testing.assert_allclose(np.asarray(a), m, **TOL)
    np.testing.assert_allclose(float(met["loss"]), loss, rtol=1e-5)
    assert g[0] == {} and int(st.step) == 1


def test_full_update_on_a_plain_mlp_writes_the_label_over_the_first_pixels_and_normalises_every_input():
    """On arch=mlp (no label units) the paper's layout: the one-hot label replaces the first K input values, the
    rule RMS-normalises the input and every hidden state itself, and the read-out is the output layer on x̂_L."""
    b, params, state, batch = _tiny(["arch.hidden=[4,3]", "arch.init=normal"], ["rule.negatives=uniform"])
    g, st, met = jax.jit(b.rule.update)(params, state, batch, jax.random.PRNGKey(9))
    P = f64(params)
    X0 = np.asarray(batch.x, np.float64).reshape(4, -1)
    y = np.asarray(batch.y[:, 0])
    K, B = 2, 4
    h = np.concatenate([np.full((B, K), 1.0 / K), X0[:, K:]], 1)
    for i in (1, 2):
        h = np.maximum(rms(h) @ P[i]["w"] + P[i]["b"], 0)
    e = _softmax_error(rms(h) @ P[3]["w"] + P[3]["b"], y, K)
    np.testing.assert_allclose(np.asarray(g[3]["w"]), rms(h).T @ e, **TOL)
    np.testing.assert_allclose(np.asarray(g[3]["b"]), e.sum(0), **TOL)
    grads, ms, loss = _hand_ff_stack(P, (1, 2), X0, y, 1 - y, K, pixels=True)
    for i in (1, 2):
        for k in ("w", "b"):
            np.testing.assert_allclose(np.asarray(g[i][k]), grads[i][k], **TOL)
    np.testing.assert_allclose(float(met["loss"]), loss, rtol=1e-5)


def test_a_layers_update_never_depends_on_the_layers_above_it():
    """Spec §5 test 3: ∂L₂/∂W₁ = ∂L₂/∂b₁ = 0 exactly (stop-gradient on every layer input), and changing layer 2
    leaves layer 1's pseudo-gradient bit-identical (uniform negatives, so the read-out does not pick them)."""
    b, params, state, batch = _tiny(["arch=ff_mlp", "arch.hidden=[4,3]"], ["rule.negatives=uniform"])
    key = jax.random.PRNGKey(9)
    update = jax.jit(b.rule.update)
    dL2 = jax.jit(jax.grad(lambda p: b.rule.update(p, state, batch, key)[2]["ff2/loss"]))(params)
    assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(dL2[1]))
    assert any(np.any(np.asarray(x) != 0) for x in jax.tree.leaves(dL2[2]))
    g1 = update(params, state, batch, key)[0]
    moved = params[:2] + ({"w": params[2]["w"] * 3.0, "b": params[2]["b"] + 1.0},) + params[3:]
    g2 = update(moved, state, batch, key)[0]
    for k in ("w", "b"):
        np.testing.assert_array_equal(np.asarray(g1[1][k]), np.asarray(g2[1][k]))
    assert not np.allclose(np.asarray(g1[2]["w"]), np.asarray(g2[2]["w"]))


# ----------------------------------------------------------------------------------- optimizer


def test_ffcode_step_smooths_the_update_and_applies_weight_cost_outside_the_smoothing_and_not_to_biases():
    """Spec §5 test 4: g′ = 0.9g + 0.1ΔW; W′ = W + 0.01(g′ − 0.001W); b′ = b + 0.01g′_b, from a non-zero g."""
    rng = np.random.default_rng(0)
    W, b, gW, gb, dW, db = (rng.normal(size=s).astype(np.float32) for s in ((4, 3), (3,), (4, 3), (3,), (4, 3), (3,)))
    opt = ff.ffcode_sgd(0.01, 0.001, 0.9)
    params = ({}, {"w": jnp.asarray(W), "b": jnp.asarray(b)})
    state = ff.FFCodeSGDState(jnp.zeros((), jnp.int32), ({}, {"w": jnp.asarray(gW), "b": jnp.asarray(gb)}))
    upd, st = opt.update(({}, {"w": -jnp.asarray(dW), "b": -jnp.asarray(db)}), state, params)
    gW2, gb2 = 0.9 * gW + 0.1 * dW, 0.9 * gb + 0.1 * db
    np.testing.assert_allclose(np.asarray(st.smoothed[1]["w"]), gW2, **TOL)
    np.testing.assert_allclose(np.asarray(params[1]["w"] + upd[1]["w"]), W + 0.01 * (gW2 - 0.001 * W), **TOL)
    np.testing.assert_allclose(np.asarray(params[1]["b"] + upd[1]["b"]), b + 0.01 * gb2, **TOL)


def test_ffcode_learning_rate_is_constant_to_half_time_then_falls_linearly():
    """ε_t = ε for e ≤ E/2, then ε(1 + 2(E − e))/E (ffnew.m's epsgain): for E = 60, gains 1, 59/60, 1/60 at epochs
    30, 31, 60; loeweX's 2(1 + E − e)/E gives 1 at epoch 31."""
    spe = 7
    gain = ff.schedule_gain("ffcode", 60.0, spe)
    at = lambda e: float(gain(jnp.int32((e - 1) * spe + 3)))  # noqa: E731  (a step inside epoch e)
    np.testing.assert_allclose([at(30), at(31), at(60)], [1.0, 59 / 60, 1 / 60], rtol=1e-6)
    np.testing.assert_allclose(float(ff.schedule_gain("loewex", 60.0, spe)(jnp.int32(30 * spe))), 1.0, rtol=1e-6)


def test_ffcode_optimizer_gives_the_readout_its_own_learning_rate_and_weight_cost():
    """With rule.ffcode_optimizer the read-out takes ε_sup = 0.1, wc = 0.003 and the FF layers ε = 0.01, wc = 0.001
    (ffnew.m's two groups); from zero smoothing state the first step is ε·(0.1ΔW − wc·W)."""
    cfg = ff.Config(ffcode_optimizer=ff.FFCodeOptimizer(epochs=10, steps_per_epoch=5))
    arch = ff_mlp.build(ff_mlp.Config(hidden=(4, 3)), (4, 4, 1), 10)
    opt = ff.optimizer(cfg, arch, lambda c=None: pytest.fail("ffcode must not use the run's optimizer"))
    params = arch.init(jax.random.PRNGKey(0))
    params = jax.tree.map(lambda a: a + 0.5, params)
    d = jax.tree.map(jnp.ones_like, params)
    upd, _ = opt.update(d, opt.init(params), params)
    np.testing.assert_allclose(np.asarray(upd[3]["w"]), 0.1 * (-0.1 - 0.003 * np.asarray(params[3]["w"])), **TOL)
    np.testing.assert_allclose(np.asarray(upd[1]["w"]), 0.01 * (-0.1 - 0.001 * np.asarray(params[1]["w"])), **TOL)
    np.testing.assert_allclose(np.asarray(upd[1]["b"]), np.full(4, 0.01 * -0.1), **TOL)


def test_ffcode_schedule_length_defaults_to_the_runs_epochs():
    """rule.ffcode_optimizer with epochs unset takes E from the run (total steps / steps per epoch), as the
    Fashion-MNIST preset relies on: for a 10-epoch run of 4 steps per epoch ε_t/ε = 1 through epoch 5, then
    (1 + 2(10 − e))/10 = 0.9, 0.7, 0.5, 0.3, 0.1 in epochs 6..10. Read off the weight-cost part of the step
    (zero pseudo-gradients: the update is −ε_t·wc·W)."""
    cfg = ff.Config(ffcode_optimizer=ff.FFCodeOptimizer())
    arch = ff_mlp.build(ff_mlp.Config(hidden=(4, 3)), (4, 4, 1), 10)

    def make_opt(c=None):
        pytest.fail("ffcode must not use the run's optimizer")

    make_opt.total_steps, make_opt.steps_per_epoch = 40, 4
    opt = ff.optimizer(cfg, arch, make_opt)
    params = jax.tree.map(lambda a: a + 0.5, arch.init(jax.random.PRNGKey(0)))
    zeros = jax.tree.map(jnp.zeros_like, params)
    step = jax.jit(lambda s, p: opt.update(zeros, s, p))
    state, gains = opt.init(params), []
    for _ in range(40):
        upd, state = step(state, params)
        gains.append(float(np.mean(np.asarray(upd[1]["w"]) / (-0.01 * 0.001 * np.asarray(params[1]["w"])))))
    expect = [1.0] * 20 + [g for g in (0.9, 0.7, 0.5, 0.3, 0.1) for _ in range(4)]
    np.testing.assert_allclose(gains, expect, rtol=1e-4)
    with pytest.raises(ValueError, match="rule.ffcode_optimizer.epochs"):
        ff.optimizer(cfg, arch, lambda c=None: None)


def test_readout_optimizer_partitions_the_readout_from_the_ff_layers():
    """rule.readout_optimizer.* applies to the output layer only; the FF layers keep the run's optimizer."""
    cfg = ff.Config(readout_optimizer=OptimizerConfig(name="sgd", lr=0.5))
    arch = ff_mlp.build(ff_mlp.Config(hidden=(4, 3)), (4, 4, 1), 10)
    opt = ff.optimizer(cfg, arch, lambda c=None: make_optimizer(c or OptimizerConfig(name="sgd", lr=0.01), 10, 5))
    params = arch.init(jax.random.PRNGKey(0))
    upd, _ = opt.update(jax.tree.map(jnp.ones_like, params), opt.init(params), params)
    assert np.allclose(np.asarray(upd[3]["w"]), -0.5) and np.allclose(np.asarray(upd[1]["w"]), -0.01)


# ----------------------------------------------------------------------------------- labels and classifiers


def test_neutral_label_is_one_over_k_per_unit_and_the_positive_code_is_the_one_hot_label():
    """Spec §5 test 5: ffcode's neutral label is 0.1 in all 10 label units (labelstrength·ones/numlab); per head
    on a multi-head task."""
    np.testing.assert_allclose(np.asarray(ff.neutral_code(core.single_head("digit", 10))), np.full(10, 0.1))
    heads = core.Heads(("noun", "size"), (8, 2))
    np.testing.assert_allclose(np.asarray(ff.neutral_code(heads)), np.r_[np.full(8, 1 / 8), np.full(2, 0.5)])
    y = jnp.asarray([[3, -1], [0, 1]])
    np.testing.assert_array_equal(np.asarray(heads.one_hot(y))[:, [3, 8, 9]], [[1, 0, 0], [0, 0, 1]])


def _multihead_rule(cfg, hidden=(5, 4, 3)):
    heads = core.Heads(("a", "b"), (3, 2))
    arch = ff_mlp.build(ff_mlp.Config(hidden=hidden), (2, 3, 1), heads.total)
    rule = ff.make(cfg, arch, heads)
    rng = np.random.default_rng(1)
    params = tuple({k: jnp.asarray(rng.normal(0, 1.0 / np.sqrt(v.shape[0]), v.shape), jnp.float32)
                    for k, v in p.items()} for p in arch.init(jax.random.PRNGKey(0)))
    x = jnp.asarray(rng.uniform(size=(6, 2, 3, 1)), jnp.float32)
    return heads, arch, rule, params, x


def test_goodness_classifier_scores_every_candidate_unit_with_layers_two_and_up_only():
    """Spec §5 test 5 / pitfall 6: score_j = Σ_{ℓ≥2} G_ℓ with the code e_j (all other label units 0), one pass per
    output unit of every head. Layer-1 weights on label unit 0 are made large so that including layer 1 would
    change the argmax; the library must not."""
    heads, arch, rule, params, x = _multihead_rule(ff.Config())
    w1 = params[1]["w"].at[0].set(3.0)
    params = params[:1] + ({"w": w1, "b": params[1]["b"]},) + params[2:]
    scores = np.asarray(jax.jit(rule.predict)(params, rule.init(jax.random.PRNGKey(0), params), x))
    P = f64(params)
    X0 = np.asarray(x, np.float64).reshape(6, -1)
    G = np.zeros((3, 6, 5))
    for j in range(5):
        h = np.concatenate([np.tile(np.eye(5)[j], (6, 1)), X0], 1)
        for l in (1, 2, 3):
            h = np.maximum(rms(h) @ P[l]["w"] + P[l]["b"], 0)
            G[l - 1, :, j] = (h ** 2).sum(1)
    np.testing.assert_allclose(scores, G[1] + G[2], rtol=1e-5)
    with_l1 = G.sum(0)
    assert (with_l1[:, :3].argmax(1) != (G[1] + G[2])[:, :3].argmax(1)).any()


def test_softmax_classifier_reads_the_normalised_states_of_layers_two_and_up_under_the_neutral_label():
    """ffsoftmaxtest: z = Σ_{ℓ≥2} x̂_ℓ V_ℓ after a pass with 1/K in every label unit of each head."""
    heads, arch, rule, params, x = _multihead_rule(ff.Config(classifier="softmax"))
    z = np.asarray(jax.jit(rule.predict)(params, rule.init(jax.random.PRNGKey(0), params), x))
    P = f64(params)
    h = np.concatenate([np.tile(np.r_[np.full(3, 1 / 3), np.full(2, 1 / 2)], (6, 1)),
                        np.asarray(x, np.float64).reshape(6, -1)], 1)
    hs = []
    for l in (1, 2, 3):
        h = np.maximum(rms(h) @ P[l]["w"] + P[l]["b"], 0)
        hs.append(h)
    np.testing.assert_allclose(z, np.concatenate([rms(hs[1]), rms(hs[2])], 1) @ P[4]["w"], rtol=1e-5, atol=1e-6)


def test_multi_head_update_with_unlabelled_heads_matches_ffnew_m_with_zero_codes_and_row_weights():
    """ff_mlp's first layer is computed split (label part gathered, x·W_img shared by the neutral, positive and
    negative rows, ΔW_img from one product over the summed row errors): on two heads with unlabelled heads and a
    sample without any label, every layer's −ΔW equals ffnew.m on the full [code, x] input, with zero code units
    for unlabelled heads and no FF loss (but the peer term) on rows without a label."""
    heads, arch, rule, params, x = _multihead_rule(ff.Config(negatives="uniform"))
    y = jnp.asarray([[0, 1], [2, -1], [-1, 0], [-1, -1], [1, 1], [2, 0]], jnp.int32)
    key = jax.random.PRNGKey(3)
    state = rule.init(jax.random.PRNGKey(0), params)
    g, st, met = jax.jit(rule.update)(params, state, core.Batch(x, y), key)
    y_neg = ff.negative_labels("uniform", jax.random.split(key)[0], None, y, heads)
    P = f64(params)
    X0 = np.asarray(x, np.float64).reshape(6, -1)
    codes = np.concatenate([np.asarray(heads.one_hot(y)), np.asarray(heads.one_hot(y_neg))]).astype(np.float64)
    assert (codes[3] == 0).all() and (codes[9] == 0).all() and (codes[1, 3:] == 0).all()
    w = np.tile((np.asarray(y) >= 0).any(1).astype(np.float64), 2)
    h = np.concatenate([codes, np.tile(X0, (2, 1))], 1)
    B, loss = 6, 0.0
    for i in (1, 2, 3):
        Xh = rms(h)
        h = np.maximum(Xh @ P[i]["w"] + P[i]["b"], 0)
        N = h.shape[1]
        G = (h ** 2).sum(1)
        c = np.where(np.arange(12) < B, 1 - sigmoid(G - N), -sigmoid(G - N)) * w
        m = 0.9 * 0.5 + 0.1 * h[:B].mean(0)
        d = c[:, None] * h
        d[:B] += 0.03 * (m.mean() - m)[None, :]
        np.testing.assert_allclose(np.asarray(g[i]["w"]), -Xh.T @ d / B, **TOL)
        np.testing.assert_allclose(np.asarray(g[i]["b"]), -d.sum(0) / B, **TOL)
        np.testing.assert_allclose(np.asarray(st.mean_activity[i - 1]), m, **TOL)
        loss += np.sum(np.where(np.arange(12) < B, softplus(N - G), softplus(G - N)) * w) / B
    np.testing.assert_allclose(float(met["loss"]), loss, rtol=1e-5)


@pytest.mark.parametrize("norm,slots", [("l2", True), ("rms", False)])
def test_split_and_post_matmul_normalised_layers_equal_the_layer_by_layer_update(norm, slots):
    """The fast paths of the rule on ff_mlp (label part gathered and x·W_img shared; norm(h)W computed as (hW)/d)
    give the same pseudo-gradients as :func:`ff.layer_update` applied layer by layer to the full normalised input
    (the path the one-layer tests pin to ffnew.m) — for L2 normalisation and for the paper's pixel layout (rms with
    label units is the NumPy full-update test above)."""
    heads = core.single_head("y", 3)
    arch = ff_mlp.build(ff_mlp.Config(hidden=(5, 4, 3), norm=norm, label_slots=slots), (2, 3, 1), 3)
    cfg = ff.Config(norm=norm, negatives="uniform")
    rule = ff.make(cfg, arch, heads)
    rng = np.random.default_rng(2)
    params = tuple({k: jnp.asarray(rng.normal(0, 1.0 / np.sqrt(v.shape[0]), v.shape), jnp.float32)
                    for k, v in p.items()} for p in arch.init(jax.random.PRNGKey(0)))
    x = jnp.asarray(rng.uniform(size=(4, 2, 3, 1)), jnp.float32)
    y = jnp.asarray([[0], [2], [1], [2]], jnp.int32)
    key = jax.random.PRNGKey(7)
    state = rule.init(jax.random.PRNGKey(0), params)
    g = jax.jit(rule.update)(params, state, core.Batch(x, y), key)[0]
    y_neg = ff.negative_labels("uniform", jax.random.split(key)[0], None, y, heads)

    @jax.jit
    def reference(params, m):
        codes = jnp.concatenate([heads.one_hot(y), heads.one_hot(y_neg)])
        xf = jnp.tile(x.reshape(4, -1), (2, 1))
        h = jnp.concatenate([codes, xf if slots else xf[:, 3:]], axis=1)
        out = []
        for i in (1, 2, 3):
            ref, _, h, _ = ff.layer_update(cfg, arch.layers[i], params[i], h, m[i - 1], 4)
            out.append(ref)
        return out

    for i, ref in zip((1, 2, 3), reference(params, state.mean_activity)):
        for k in ("w", "b"):
            np.testing.assert_allclose(np.asarray(g[i][k]), np.asarray(ref[k]), rtol=2e-5, atol=1e-6)


def test_hard_negatives_never_pick_the_true_label_and_follow_the_masked_softmax():
    """Spec §5 test 7: over 10⁴ draws with fixed logits the true label never appears and the frequencies match
    softmax(z − 1000·onehot(y)) within sampling error; uniform negatives are uniform over the K − 1 wrong labels;
    unlabelled heads stay −1."""
    n = 10_000
    heads = core.Heads(("a", "b"), (4, 3))
    z = jnp.tile(jnp.asarray([[0.5, -1.0, 2.0, 0.0, 1.0, 1.0, -1.0]]), (n, 1))
    y = jnp.tile(jnp.asarray([[2, -1]]), (n, 1))
    neg = np.asarray(ff.negative_labels("hard", jax.random.PRNGKey(0), z, y, heads))
    assert (neg[:, 0] != 2).all() and (neg[:, 1] == -1).all()
    q = np.exp(np.array([0.5, -1.0, 2.0 - 1000, 0.0]))
    q /= q.sum()
    freq = np.bincount(neg[:, 0], minlength=4) / n
    np.testing.assert_allclose(freq, q, atol=4 * np.sqrt(q * (1 - q) / n).max())
    neg = np.asarray(ff.negative_labels("uniform", jax.random.PRNGKey(1), z, y, heads))
    assert (neg[:, 0] != 2).all()
    np.testing.assert_allclose(np.bincount(neg[:, 0], minlength=4) / n, [1 / 3, 1 / 3, 0, 1 / 3], atol=0.02)


def test_blurred_mask_is_the_thresholded_repeated_quarter_half_quarter_blur():
    """Paper §3.2: blur a random bit image with [¼, ½, ¼] horizontally and vertically, repeatedly, then
    threshold at 0.5 (edge padding at the border)."""
    bits = (np.random.default_rng(0).uniform(size=(2, 7, 9)) > 0.5).astype(np.float32)
    m = bits.astype(np.float64)
    for _ in range(3):
        p = np.pad(m, ((0, 0), (0, 0), (1, 1)), mode="edge")
        m = 0.25 * p[:, :, :-2] + 0.5 * p[:, :, 1:-1] + 0.25 * p[:, :, 2:]
        p = np.pad(m, ((0, 0), (1, 1), (0, 0)), mode="edge")
        m = 0.25 * p[:, :-2] + 0.5 * p[:, 1:-1] + 0.25 * p[:, 2:]
    np.testing.assert_array_equal(np.asarray(ff.blur_mask(jnp.asarray(bits), 3)), (m > 0.5).astype(np.float32))


def test_hybrid_images_take_every_pixel_from_one_of_two_different_images_with_one_mask_for_all_channels():
    """x_A ⊙ M + x_B ⊙ (1 − M): every pixel equals the image's own or the next image's, both occur, and all
    channels of a pixel come from the same source."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(size=(3, 12, 12, 2)) + np.arange(3)[:, None, None, None] * 10, jnp.float32)
    neg = np.asarray(ff.hybrid_images(jax.random.PRNGKey(0), x, 4))
    own = np.isclose(neg, np.asarray(x))
    other = np.isclose(neg, np.roll(np.asarray(x), 1, axis=0))
    assert (own | other).all() and own.any() and other.any()
    assert (own[..., 0] == own[..., 1]).all()


# ----------------------------------------------------------------------------------- schedules and learning


def test_greedy_schedule_trains_one_layer_at_a_time():
    """mpezeshki's schedule: layer 1 for greedy_steps updates, then layer 2; the other layer's update is zero."""
    b, params, state, batch = _tiny(["arch=ff_mlp", "arch.hidden=[4,3]"],
                                    ["rule.schedule=greedy", "rule.greedy_steps=3"])
    update = jax.jit(b.rule.update)
    g0 = update(params, state, batch, jax.random.PRNGKey(9))[0]
    g3 = update(params, state._replace(step=jnp.int32(3)), batch, jax.random.PRNGKey(9))[0]
    assert np.abs(np.asarray(g0[1]["w"])).max() > 0 and np.abs(np.asarray(g0[2]["w"])).max() == 0
    assert np.abs(np.asarray(g3[1]["w"])).max() == 0 and np.abs(np.asarray(g3[2]["w"])).max() > 0


def test_invalid_combinations_are_refused_with_the_fix():
    """Unsupervised FF has no label to score, hybrid needs a blur count, label units must match the option."""
    heads = core.single_head("class", 4)
    mlp = build_mlp(MLPConfig(hidden=(8, 8)), (4, 4, 1), 4)
    ffa = ff_mlp.build(ff_mlp.Config(hidden=(8, 8)), (4, 4, 1), 4)
    with pytest.raises(ValueError, match="blur_iterations"):
        ff.make(ff.Config(negatives="hybrid", classifier="softmax"), mlp, heads)
    with pytest.raises(ValueError, match="classifier=softmax"):
        ff.make(ff.Config(negatives="hybrid", blur_iterations=2), mlp, heads)
    with pytest.raises(ValueError, match="label units"):
        ff.make(ff.Config(embed="slots"), mlp, heads)
    with pytest.raises(ValueError, match="arch.norm"):
        ff.make(ff.Config(norm="l2"), ffa, heads)
    with pytest.raises(ValueError, match="goodness_from"):
        ff.make(ff.Config(goodness_from=0), ffa, heads)


def test_forward_forward_learns_prototypes_through_the_engine():
    """A short run of the real engine (ff_mlp, hard negatives, momentum): the goodness classifier ends clearly
    above the 1/4 chance level."""
    b = tiny_build("rule=ff", "arch=ff_mlp", "arch.hidden=[32,32]", "task.classes=4", "task.test_size=400",
                   "batch_size=50", "samples=3000", "optimizer.name=momentum", "optimizer.lr=0.02")
    state = b.program.init(0)
    state, metrics = jax.jit(b.program.chunk, static_argnums=3)(state, b.task.data, 0, b.total_steps)
    acc = float(jax.jit(b.program.evaluate)(state, b.task.test)["acc"])
    assert acc > 0.6 and int(state.diverged_at) == -1, acc


def test_unsupervised_ff_with_hybrid_negatives_trains_a_readout_above_chance():
    """Paper §3.2 in miniature: no label in the input, hybrid-image negatives, and the linear read-out on the
    normalised hidden states learns the classes."""
    b = tiny_build("rule=ff", "rule.negatives=hybrid", "rule.blur_iterations=2", "rule.classifier=softmax",
                   "arch=ff_mlp", "arch.hidden=[32,32]", "task.classes=4", "task.test_size=400", "batch_size=50",
                   "samples=3000", "optimizer.name=momentum", "optimizer.lr=0.02")
    state = b.program.init(0)
    state, _ = jax.jit(b.program.chunk, static_argnums=3)(state, b.task.data, 0, b.total_steps)
    acc = float(jax.jit(b.program.evaluate)(state, b.task.test)["acc"])
    assert acc > 0.5, acc
