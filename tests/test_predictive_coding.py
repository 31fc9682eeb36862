"""Equation tests for predictive coding (PCX, Pinchetti et al. ICLR 2025), spec §5.

Oracles, by tier: NumPy float64 in the PCX convention (tests 1, 1b, 4) and in the Whittington–Bogacz convention;
``jax.grad`` of a hand-written energy (test 1.6); ``jax.grad`` of the backprop loss through the architecture
(identities of §2.6: tests 2, 3a–c, the CNN); closed forms for the β schedules (test 5); the compiler's FLOP count
(test 7); and a run through the real engine.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from localrules import core
from localrules.architectures import MLPConfig, build_mlp, pc_vgg
from localrules.rules import predictive_coding as pc

D, N1, N2, C, B = 5, 4, 3, 2, 3
HEADS = core.single_head("y", C)


# --------------------------------------------------------------------------------------------- fixtures


def _arch(act="tanh"):
    return build_mlp(MLPConfig(hidden=(N1, N2), activation=act), (D,), C)


def _problem(seed=0, batch=B, dtype=np.float32):
    """W_l ~ N(0, 1/N_{l−1}), b_l ~ N(0, 0.1²), X ~ N(0, 1), one-hot Y (spec §5 set-up). Lab layout w = Wᵀ."""
    rng = np.random.default_rng(seed)
    dims = (D, N1, N2, C)
    params = [{}]
    for a, b in zip(dims[:-1], dims[1:]):
        params.append({"w": rng.normal(0, 1 / np.sqrt(a), (a, b)), "b": rng.normal(0, 0.1, (b,))})
    x = rng.normal(0, 1, (batch, D))
    y = rng.integers(0, C, (batch, 1))
    jparams = tuple({k: jnp.asarray(v, dtype) for k, v in p.items()} for p in params)
    return params, x, y, jparams, core.Batch(jnp.asarray(x, dtype), jnp.asarray(y, jnp.int32))


def _runner(cfg, arch=None, heads=HEADS):
    """The jitted update of ``cfg`` as ``f(params, batch, beta=None)``; β passed as data compiles once."""
    run = pc.inference(cfg, arch or _arch(), heads)
    return jax.jit(lambda p, b, beta=None: run(p, b, jax.random.PRNGKey(0), beta=beta))


def _run(cfg, jparams, batch, arch=None, heads=HEADS):
    return _runner(cfg, arch, heads)(jparams, batch)


def _update(rule, jparams, batch, state=None, key=2):
    state = rule.init(jax.random.PRNGKey(1), jparams) if state is None else state
    return jax.jit(rule.update)(jparams, state, batch, jax.random.PRNGKey(key))


def _act(name):
    if name == "tanh":
        return np.tanh, lambda a: 1 - np.tanh(a) ** 2
    c = np.sqrt(2 / np.pi)  # jax.nn.gelu's default tanh approximation

    def f(a):
        return 0.5 * a * (1 + np.tanh(c * (a + 0.044715 * a**3)))

    def df(a):
        t = np.tanh(c * (a + 0.044715 * a**3))
        return 0.5 * (1 + t) + 0.5 * a * (1 - t**2) * c * (1 + 3 * 0.044715 * a**2)

    return f, df


def _softmax(u):
    e = np.exp(u - u.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


# ------------------------------------------------------------------------------------ NumPy oracle (PCX)


def _pcx_oracle(P, x, Y, T, eta, mu, act="tanh", energy="se", eta_w=0.0):
    """Spec §5 test 1 (and test 4 when eta_w > 0: iPC, simultaneous H and W steps from the same gradients).

    Returns the trajectory [(H1, H2, v1, v2)] after each step, the final weight gradient (lab layout) and the
    final weights."""
    f, df = _act(act)
    B_ = x.shape[0]
    W = [None] + [P[l]["w"].copy() for l in (1, 2, 3)]
    b = [None] + [P[l]["b"].copy() for l in (1, 2, 3)]

    def grads(H1, H2):
        A1 = x @ W[1] + b[1]
        A2 = H1 @ W[2] + b[2]
        U3 = H2 @ W[3] + b[3]
        e1, e2 = H1 - f(A1), H2 - f(A2)
        r3 = Y - U3 if energy == "se" else Y - _softmax(U3)
        G2 = e2 - r3 @ W[3].T
        G1 = e1 - (e2 * df(A2)) @ W[2].T
        d = {1: e1 * df(A1), 2: e2 * df(A2), 3: r3}
        pre = {1: x, 2: H1, 3: H2}
        Pw = {l: (-pre[l].T @ d[l] / B_, -d[l].sum(0) / B_) for l in (1, 2, 3)}
        return G1, G2, Pw

    H1 = f(x @ W[1] + b[1])
    H2 = f(H1 @ W[2] + b[2])
    v1, v2 = np.zeros_like(H1), np.zeros_like(H2)
    traj = []
    for _ in range(T):
        G1, G2, Pw = grads(H1, H2)
        v1, v2 = mu * v1 + G1, mu * v2 + G2
        H1, H2 = H1 - eta * v1, H2 - eta * v2
        if eta_w:
            for l in (1, 2, 3):
                W[l] = W[l] - eta_w * Pw[l][0]
                b[l] = b[l] - eta_w * Pw[l][1]
        traj.append((H1, H2, v1, v2))
    _, _, Pw = grads(H1, H2)
    return traj, Pw, (W, b)


def _assert_weight_update(g, Pw, rtol=1e-5, atol=1e-6):
    for l in (1, 2, 3):
        np.testing.assert_allclose(np.asarray(g[l]["w"]), Pw[l][0], rtol=rtol, atol=atol)
        np.testing.assert_allclose(np.asarray(g[l]["b"]), Pw[l][1], rtol=rtol, atol=atol)


@pytest.mark.parametrize("act,energy", [("tanh", "se"), ("gelu", "se"), ("tanh", "ce"), ("gelu", "ce")])
def test_value_nodes_momentum_and_weight_update_follow_the_pcx_energy_gradients(act, energy):
    """Test 1: forward init, then v ← μv + G, H ← H − ηv with G₂ = ε₂ − r₃W₃, G₁ = ε₁ − (ε₂⊙f′(A₂))W₂ at the
    pre-step state, after every one of T = 3 steps; then P_l = −(1/B)(r_l⊙f′(A_l))ᵀH_{l−1} from the final state.
    ce replaces r₃ = ε₃ by Y − softmax(U₃). Any slip in a sign, a f′ factor, the momentum form or the 1/B scaling of
    the weight gradient shows here. (Every step is checked once, for tanh/se; the others check the last.)"""
    P, x, y, jp, batch = _problem()
    Y = np.eye(C)[y[:, 0]]
    arch = _arch(act)
    traj, Pw, _ = _pcx_oracle(P, x, Y, 3, 0.1, 0.5, act, energy)
    for T in (1, 2, 3) if (act, energy) == ("tanh", "se") else (3,):
        cfg = pc.Config(T=T, x_lr=0.1, x_momentum=0.5, output_energy=energy)
        out = _run(cfg, jp, batch, arch)
        H1, H2, v1, v2 = traj[T - 1]
        for got, want in zip((*out.hidden, *out.momentum), (H1, H2, v1, v2)):
            np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
        assert np.array_equal(np.asarray(out.target), Y.astype(np.float32))  # the clamped output never moves
    _assert_weight_update(out.grads, Pw)
    if (act, energy) == ("tanh", "se"):  # the Rule returns the same update
        g, _, _ = _update(pc.make(cfg, arch, HEADS), jp, batch)
        _assert_weight_update(g, Pw)


def test_state_and_weight_gradients_equal_autodiff_of_the_energy_including_the_batch_factor():
    """Test 1.6: the state step is η·∂(Σ_i E_i)/∂H (per sample, PCX's ×B) and P = ∂Ē/∂W (batch mean). A port
    that differentiates Ē for the states moves them B times too little; this catches it."""
    P, x, y, jp, batch = _problem()
    Y = jnp.asarray(np.eye(C)[y[:, 0]], jnp.float32)
    arch = _arch()
    f = jnp.tanh

    def energy_sum(H, W):  # Σ_i E_i
        H1, H2 = H
        e1 = H1 - f(batch.x @ W[1]["w"] + W[1]["b"][None, :])
        e2 = H2 - f(H1 @ W[2]["w"] + W[2]["b"][None, :])
        e3 = Y - (H2 @ W[3]["w"] + W[3]["b"][None, :])
        return 0.5 * (jnp.sum(e1**2) + jnp.sum(e2**2) + jnp.sum(e3**2))

    a1 = jnp.tanh(batch.x @ jp[1]["w"] + jp[1]["b"][None, :])
    H0 = (a1, jnp.tanh(a1 @ jp[2]["w"] + jp[2]["b"][None, :]))  # forward initialisation
    H1 = _run(pc.Config(T=1, x_lr=0.1, x_momentum=0.0), jp, batch, arch).hidden
    G = jax.jit(jax.grad(energy_sum))(H0, jp)
    for h0, h1, g in zip(H0, H1, G):
        # compared on the states' own scale: (h0 - h1) / 0.1 amplifies float32 rounding of h (~1e-7) tenfold
        np.testing.assert_allclose(np.asarray(h1), np.asarray(h0 - 0.1 * g), rtol=1e-5, atol=1e-6)
    assert float(jnp.max(jnp.abs(0.1 * G[1]))) > 1e-3  # the step is not vacuously small (at the forward
    # initialisation only the output error is non-zero, so only the top hidden layer moves in the first step)
    out = _run(pc.Config(T=3, x_lr=0.1, x_momentum=0.5), jp, batch, arch)
    Pw = jax.jit(jax.grad(lambda W, H: energy_sum(H, W) / B))(jp, out.hidden)
    for a, c in zip(jax.tree.leaves(out.grads), jax.tree.leaves(Pw)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(c), rtol=1e-5, atol=1e-6)


def test_whittington_bogacz_convention_puts_nodes_on_preactivations_with_no_fprime_in_the_weight_update():
    """convention=wb has its own oracle: μ_l = φ(X_{l−1})W_l + b_l (φ not applied to the input), G_l = ε_l −
    φ′(X_l)⊙(ε_{l+1}W_{l+1}ᵀ), P_W = −φ(X_{l−1})ᵀε_l/B. Checking it against PCX's formulas would be wrong (§6.2)."""
    P, x, y, jp, batch = _problem(seed=3)
    Y = np.eye(C)[y[:, 0]]
    W = {l: P[l]["w"] for l in (1, 2, 3)}
    b = {l: P[l]["b"] for l in (1, 2, 3)}
    phi, dphi = np.tanh, lambda a: 1 - np.tanh(a) ** 2
    X1 = x @ W[1] + b[1]
    X2 = phi(X1) @ W[2] + b[2]
    v1, v2 = np.zeros_like(X1), np.zeros_like(X2)

    def errors(X1, X2):
        e1 = X1 - (x @ W[1] + b[1])
        e2 = X2 - (phi(X1) @ W[2] + b[2])
        e3 = Y - (phi(X2) @ W[3] + b[3])
        return e1, e2, e3

    for _ in range(2):
        e1, e2, e3 = errors(X1, X2)
        G1 = e1 - dphi(X1) * (e2 @ W[2].T)
        G2 = e2 - dphi(X2) * (e3 @ W[3].T)
        v1, v2 = 0.5 * v1 + G1, 0.5 * v2 + G2
        X1, X2 = X1 - 0.2 * v1, X2 - 0.2 * v2
    e1, e2, e3 = errors(X1, X2)
    out = _run(pc.Config(T=2, x_lr=0.2, x_momentum=0.5, convention="wb"), jp, batch)
    for got, want in zip(out.hidden, (X1, X2)):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
    for l, pre, e in ((1, x, e1), (2, phi(X1), e2), (3, phi(X2), e3)):
        np.testing.assert_allclose(np.asarray(out.grads[l]["w"]), -pre.T @ e / B, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(out.grads[l]["b"]), -e.sum(0) / B, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------- batch, reset, prediction


def test_a_sample_relaxes_the_same_alone_or_in_a_batch_and_batch_mean_moves_it_a_third_as_far():
    """Test 1b: with per_sample state gradients a sample's trajectory does not depend on its batch-mates or on
    B; with batch_mean its first step is exactly 1/B as long (the missing-×B pitfall, §6.1)."""
    P, x, y, jp, batch = _problem(batch=3)
    one = core.Batch(batch.x[:1], batch.y[:1])
    cfg = pc.Config(T=3, x_lr=0.1, x_momentum=0.5)
    alone, together = _run(cfg, jp, one), _run(cfg, jp, batch)
    for a, t in zip(alone.hidden, together.hidden):
        np.testing.assert_allclose(np.asarray(a[0]), np.asarray(t[0]), rtol=1e-6, atol=1e-7)
    a1 = np.tanh(x @ P[1]["w"] + P[1]["b"])
    h0 = (a1, np.tanh(a1 @ P[2]["w"] + P[2]["b"]))  # forward initialisation
    per = _run(dataclasses.replace(cfg, T=1), jp, batch).hidden
    mean = _run(dataclasses.replace(cfg, T=1, state_grad="batch_mean"), jp, batch).hidden
    for a, p, m in zip(h0, per, mean):
        np.testing.assert_allclose(np.asarray(m) - a, (np.asarray(p) - a) / 3, rtol=1e-4, atol=1e-7)


def test_state_momentum_is_reset_for_every_batch():
    """Test 1c: the update on batch 2 after batch 1 equals the update on batch 2 from a fresh state, so no
    value-node momentum leaks across batches (PCX re-initialises optim_h per batch)."""
    P, x, y, jp, b1 = _problem(seed=0)
    _, _, _, _, b2 = _problem(seed=1)
    rule = pc.make(pc.Config(T=4, x_lr=0.1, x_momentum=0.9), _arch(), HEADS)
    s0 = rule.init(jax.random.PRNGKey(0), jp)
    _, s1, _ = _update(rule, jp, b1, s0, key=1)
    g_after, _, _ = _update(rule, jp, b2, s1)
    g_fresh, _, _ = _update(rule, jp, b2, s0)
    for a, c in zip(jax.tree.leaves(g_after), jax.tree.leaves(g_fresh)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(c))


def test_prediction_is_the_plain_forward_pass_for_any_T_and_state():
    """Test 6: PC has no test-time inference (§6.14): predict is arch.apply, whatever T and the rule state."""
    P, x, y, jp, batch = _problem()
    arch = _arch()
    want = np.asarray(arch.apply(jp, batch.x))
    for T in (0, 7):
        rule = pc.make(pc.Config(T=T), arch, HEADS)
        s = rule.init(jax.random.PRNGKey(0), jp)
        _, s2, _ = _update(rule, jp, batch, s)
        for st in (s, s2):
            np.testing.assert_array_equal(np.asarray(rule.predict(jp, st, batch.x)), want)


# ---------------------------------------------------------------------------------- identities with backprop


def _bp_grads(arch, jp, batch, energy="se"):
    Y = HEADS.one_hot(batch.y).astype(batch.x.dtype)

    def loss(p):
        u = arch.apply(p, batch.x)
        if energy == "ce":
            return core.loss(u, batch.y, HEADS)
        return jnp.mean(0.5 * jnp.sum((u - Y) ** 2, axis=-1))

    return jax.jit(jax.grad(loss))(jp)


@pytest.mark.parametrize("energy", ["se", "ce"])
def test_with_no_inference_only_the_output_layer_learns_and_it_learns_the_backprop_gradient(energy):
    """Identity (i), T = 0: all hidden errors are zero, so P₁ = P₂ = 0 exactly and P₃ is the backprop gradient of
    the output loss (batch-mean ½‖U₃ − Y‖², or cross-entropy with ce)."""
    P, x, y, jp, batch = _problem()
    arch = _arch()
    g = _run(pc.Config(T=0, output_energy=energy), jp, batch, arch).grads
    bp = _bp_grads(arch, jp, batch, energy)
    for l in (1, 2):
        for k in ("w", "b"):
            assert np.all(np.asarray(g[l][k]) == 0.0)
    for k in ("w", "b"):
        np.testing.assert_allclose(np.asarray(g[3][k]), np.asarray(bp[3][k]), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("mu", [0.0, 0.9])
def test_after_one_step_the_error_has_reached_only_the_last_hidden_layer_scaled_by_the_step_size(mu):
    """Identity (ii), T = 1: only H₂ moves, by η·δ₃W₃ᵀ, so P₂ = η × the backprop gradient of W₂ and P₁ = 0 exactly:
    the error reaches layer L − k only after k steps (§6.3)."""
    P, x, y, jp, batch = _problem()
    arch = _arch()
    g = _run(pc.Config(T=1, x_lr=0.1, x_momentum=mu), jp, batch, arch).grads
    bp = _bp_grads(arch, jp, batch)
    for k in ("w", "b"):
        assert np.all(np.asarray(g[1][k]) == 0.0)
        np.testing.assert_allclose(np.asarray(g[2][k]), 0.1 * np.asarray(bp[2][k]), rtol=1e-5, atol=1e-7)


def _rel_cos(g, bp):
    out = []
    for l in (1, 2, 3):
        a = np.concatenate([np.ravel(np.asarray(g[l][k], np.float64)) for k in ("w", "b")])
        c = np.concatenate([np.ravel(np.asarray(bp[l][k], np.float64)) for k in ("w", "b")])
        out.append((np.linalg.norm(a - c) / np.linalg.norm(c), a @ c / np.linalg.norm(a) / np.linalg.norm(c)))
    return out


@pytest.mark.parametrize("x64", [False, True])
def test_a_small_weighted_nudge_with_many_steps_gives_the_backprop_gradient(x64):
    """Test 3a, identity (iv): H_L = Y with the output energy scaled by β and P × 1/β tends to the BP gradient of
    ½‖U − Y‖² as β → 0, T → ∞ (equilibrium-propagation limit), with O(β) bias. η_x = 0.1 needs T = 1000."""
    with jax.enable_x64(x64):
        dt = np.float64 if x64 else np.float32
        P, x, y, jp, batch = _problem(dtype=dt)
        arch = _arch()
        bp = _bp_grads(arch, jp, batch)
        err = {}
        f = _runner(pc.Config(T=1000, x_lr=0.1, x_momentum=0.0, nudge="weighted", beta=1e-2), arch)
        for beta in (1e-2, 1e-3):
            g = f(jp, batch, jnp.asarray(beta, dt)).grads
            rc = _rel_cos(g, bp)
            err[beta] = max(r for r, _ in rc)
            if beta == 1e-3:
                for r, c in rc:
                    assert c > 0.9999 and r < 0.02, rc
        if x64:
            assert err[1e-3] < 0.2 * err[1e-2], err


def test_fixed_prediction_gives_the_backprop_gradient_exactly_after_depth_minus_one_steps():
    """Test 3b, identity (iii): with predictions held at the feed-forward point, η_x = 1, μ_x = 0, the error
    reaches every layer after L − 1 = 2 steps and equals BP's δ; further steps change nothing (fixed point)."""
    P, x, y, jp, batch = _problem()
    arch = _arch()
    bp = _bp_grads(arch, jp, batch)
    for T in (2, 10):
        g = _run(pc.Config(T=T, x_lr=1.0, x_momentum=0.0, fixed_prediction=True), jp, batch, arch).grads
        for a, c in zip(jax.tree.leaves(g), jax.tree.leaves(bp)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(c), rtol=1e-5, atol=1e-7)


def test_the_pcx_frozen_nudge_does_not_converge_to_backprop_as_beta_shrinks():
    """Test 3c, negative control (§2.4, §6.6): PCX's output node U⁰ − β(U⁰ − Y) is frozen, so the relaxed state is
    linear in β and (1/β)∂Ē/∂W has a β-independent limit that is not the BP gradient."""
    P, x, y, jp, batch = _problem()
    arch = _arch()
    bp = _bp_grads(arch, jp, batch)
    err = {}
    f = _runner(pc.Config(T=1000, x_lr=0.1, x_momentum=0.0, nudge="pn", beta=1e-2), arch)
    for beta in (1e-2, 1e-3):
        g = f(jp, batch, jnp.asarray(beta, jnp.float32)).grads
        err[beta] = max(r for r, _ in _rel_cos(g, bp))
    assert err[1e-3] > 0.5 * err[1e-2], err


def test_on_the_vgg5_cnn_fixed_prediction_pc_equals_backprop_through_conv_and_pooling():
    """The same rule drives conv blocks (conv → act → pool, one value node per block, as PCX's VGG-5; here at 1/64
    of the width on 16×16 input) through each block's own VJP: identity (iii) — fixed prediction, η_x = 1,
    T = L − 1 gives the BP gradient in every layer — checks the conv, pool and flatten derivatives."""
    arch = pc_vgg.build(pc_vgg.Config(layout="vgg5", activation="tanh", width=1 / 64), (16, 16, 3), C)
    rng = np.random.default_rng(0)  # fan-in-scaled normal draws; arch.init's compile would dominate the test time
    jp = jax.tree.map(lambda s: jnp.asarray(rng.normal(0, 1 / np.sqrt(np.prod(s.shape[:-1])), s.shape), jnp.float32),
                      jax.eval_shape(arch.init, jax.random.PRNGKey(0)))
    batch = core.Batch(jnp.asarray(rng.normal(size=(B, 16, 16, 3)), jnp.float32),
                       jnp.asarray(rng.integers(0, C, (B, 1)), jnp.int32))
    bp = _bp_grads(arch, jp, batch)
    L = len(arch.param_layers)
    g = _run(pc.Config(T=L - 1, x_lr=1.0, x_momentum=0.0, fixed_prediction=True), jp, batch, arch).grads
    for a, c in zip(jax.tree.leaves(g), jax.tree.leaves(bp)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(c), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("padding", ["SAME", "VALID"])
def test_the_lab_conv_has_jax_derivatives_and_canonical_convolutions_inside_the_inference_scan(padding):
    """The lab's ``conv`` (pc_vgg's too) differentiates through a hand-written stride-1 VJP: values identical and
    gradients equal (to float summation order) to JAX's own rule; and differentiated inside a ``lax.scan`` (PC / iPC
    inference, every training chunk) every convolution XLA:CPU compiles has the canonical NHWC/HWIO form — JAX's own
    transpose rule there left reversed, in/out-swapped kernels that ran ~5× slower, and kernel gradients with the
    batch as the contraction feature that ran ~50× slower (docs/compute.md)."""
    from localrules.architectures.pc_vgg import conv3x3

    b = conv3x3(3, 4, padding)
    p = {"w": jax.random.normal(jax.random.PRNGKey(0), (3, 3, 3, 4)), "b": jnp.arange(4.0)}
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 5, 3))

    def jax_rule(q, z):
        return jax.lax.conv_general_dilated(z, q["w"], (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")) \
            + q["b"][None, None, None, :]

    (ya, va), (yb, vb) = jax.vjp(jax_rule, p, x), jax.vjp(lambda q, z: b.apply(q, z)[0], p, x)
    g = jax.random.normal(jax.random.PRNGKey(2), ya.shape)
    np.testing.assert_array_equal(np.asarray(ya), np.asarray(yb))
    for u, v in zip(jax.tree.leaves(va(g)), jax.tree.leaves(vb(g))):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-5, atol=1e-5)
    if jax.default_backend() != "cpu":
        return

    def relax(q, z):  # a scanned loop of input and kernel VJPs, as PC / iPC inference runs them
        def body(c, _):
            dq, dz = jax.vjp(lambda q_, z_: b.apply(q_, z_)[0], *c)[1](g)
            return (jax.tree.map(lambda u, v: u - 1e-3 * v, c[0], dq), c[1] - 1e-3 * dz), None
        return jax.lax.scan(body, (q, z), None, length=3)[0]

    hlo = jax.jit(relax).lower(p, x).compile().as_text()
    labels = {line.split("dim_labels=")[1].split(",")[0] for line in hlo.splitlines() if " convolution(" in line}
    assert labels == {"b01f_01io->b01f"}, labels


# -------------------------------------------------------------------------------------------------- iPC


def test_incremental_pc_steps_states_and_weights_together_from_the_same_gradients():
    """Test 4 (iPC): each of T = 2 steps takes ∂Ē/∂W and the per-sample ∂E/∂H at the same (H, W) and steps both
    (weights by sgd(η_w) inside the rule); the rule returns P = W₀ − W₂ for an outer sgd(1.0)."""
    P, x, y, jp, batch = _problem()
    Y = np.eye(C)[y[:, 0]]
    traj, _, (W, b) = _pcx_oracle(P, x, Y, 2, 0.1, 0.5, eta_w=0.05)
    cfg = pc.Config(T=2, x_lr=0.1, x_momentum=0.5, incremental=True, ipc_optimizer="sgd", ipc_lr=0.05)
    out = _run(cfg, jp, batch)
    for got, want in zip(out.hidden, traj[-1][:2]):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
    g, _, _ = _update(pc.make(cfg, _arch(), HEADS), jp, batch)
    for l in (1, 2, 3):
        np.testing.assert_allclose(np.asarray(g[l]["w"]), P[l]["w"] - W[l], rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(np.asarray(g[l]["b"]), P[l]["b"] - b[l], rtol=1e-4, atol=1e-7)
    opt = pc.RULE.optimizer(cfg, _arch(), lambda c=None: pytest.fail("iPC must not use the run's optimizer"))
    upd, _ = opt.update(g, opt.init(jp), jp)
    for a, c in zip(jax.tree.leaves(upd), jax.tree.leaves(g)):
        np.testing.assert_array_equal(np.asarray(a), -np.asarray(c))


# ------------------------------------------------------------------------------------------- β schedules


def test_positive_and_negative_nudging_follow_the_pcx_per_epoch_schedules_and_clipping():
    """Test 5: PN β_e = min(1, 0.75 + 0.02e); NN β_e = −(0.179 + 0.02e) clipped to −1 by the MLP scripts but
    flipped to +1 by the VGG scripts once |β| ≥ 1 (epoch 42 of VGG-5 CIFAR-10 NN); centred nudging
    β_e = s_e·min(1, β₀ + β_ir e)."""
    pn = pc.Config(nudge="pn", beta=0.75, beta_ir=0.02, steps_per_epoch=10)
    for e in (0, 5, 12, 13, 30):
        np.testing.assert_allclose(float(pc.beta_at(pn, e)), min(1.0, 0.75 + 0.02 * e), rtol=1e-6)
    nn = pc.Config(nudge="nn", beta=0.179, beta_ir=0.02, beta_factor=-1.0, steps_per_epoch=10)
    flip = dataclasses.replace(nn, beta_clip="pcx_vgg_flip")
    assert float(pc.beta_at(nn, 42)) == -1.0 and float(pc.beta_at(flip, 42)) == 1.0
    for cfg in (nn, flip):
        np.testing.assert_allclose(float(pc.beta_at(cfg, 41)), -0.999, rtol=1e-6)
    signs = (-1, 1, 1, -1)
    cn = pc.Config(nudge="pcx_cn", beta=0.3, beta_ir=0.02, cn_signs=signs, steps_per_epoch=10)
    for e in range(8):
        np.testing.assert_allclose(float(pc.beta_at(cn, e)), signs[e % 4] * min(1.0, 0.3 + 0.02 * e), rtol=1e-6)
    rand = dataclasses.replace(cn, cn_signs=())
    got = [float(pc.beta_at(rand, e, jax.random.PRNGKey(0))) for e in range(40)]
    assert {np.sign(v) for v in got} == {-1.0, 1.0}
    np.testing.assert_allclose(np.abs(got), [min(1.0, 0.3 + 0.02 * e) for e in range(40)], rtol=1e-6)


def test_the_rule_reads_beta_from_its_own_update_count():
    """β must change at epoch boundaries inside the jitted training scan: the rule counts updates and divides by
    steps_per_epoch (metric ``beta``)."""
    P, x, y, jp, batch = _problem()
    rule = pc.make(pc.Config(nudge="pn", beta=0.5, beta_ir=0.1, steps_per_epoch=2), _arch(), HEADS)
    s = rule.init(jax.random.PRNGKey(0), jp)
    seen = []
    for t in range(5):
        _, s, m = _update(rule, jp, batch, s, key=t)
        seen.append(float(m["beta"]))
    np.testing.assert_allclose(seen, [0.5, 0.5, 0.6, 0.6, 0.7], rtol=1e-6)


def test_invalid_combinations_raise_with_the_fix():
    """CE with a frozen nudge mixes logits and one-hots (§6.7): it raises unless allowed; so do a nudge sign that
    contradicts its name and a per-epoch schedule without steps_per_epoch."""
    arch = _arch()
    with pytest.raises(ValueError, match="allow_ce_nudge"):
        pc.make(pc.Config(output_energy="ce", nudge="pn", beta=0.5), arch, HEADS)
    pc.make(pc.Config(output_energy="ce", nudge="pn", beta=0.5, allow_ce_nudge=True), arch, HEADS)
    pc.make(pc.Config(output_energy="ce", nudge="weighted", beta=0.1), arch, HEADS)
    with pytest.raises(ValueError, match="beta_factor"):
        pc.make(pc.Config(nudge="nn", beta=0.5), arch, HEADS)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        pc.make(pc.Config(nudge="pn", beta=0.5, beta_ir=0.02), arch, HEADS)
    with pytest.raises(ValueError, match="nudge=clamp"):
        pc.make(pc.Config(beta=0.5), arch, HEADS)


def test_centered_eqprop_phases_cancel_the_first_order_bias_of_the_weighted_nudge():
    """eqprop_centered averages the ±β weighted phases; its error against BP at β = 1e-2 is far below the
    one-sided weighted nudge's (O(β²) vs O(β), Laborieux et al. 2021)."""
    P, x, y, jp, batch = _problem()
    arch = _arch()
    bp = _bp_grads(arch, jp, batch)
    err = {}
    for nudge in ("weighted", "eqprop_centered"):
        cfg = pc.Config(T=1000, x_lr=0.1, x_momentum=0.0, nudge=nudge, beta=1e-2)
        g = _run(cfg, jp, batch, arch).grads
        err[nudge] = max(r for r, _ in _rel_cos(g, bp))
    assert err["eqprop_centered"] < 0.2 * err["weighted"], err


# ------------------------------------------------------------------------------------------ multiple heads


def test_an_unlabelled_head_is_left_free_and_gets_no_output_error():
    """Curriculum batches label some heads only (y = −1 elsewhere). An unlabelled head's output node is free, so
    its error is zero: the output weights of its units get no update at T = 0, the labelled head's get BP's."""
    heads = core.Heads(("a", "b"), (2, 3))
    arch = build_mlp(MLPConfig(hidden=(4,), activation="tanh"), (D,), heads.total)
    jp = arch.init(jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    y = np.stack([rng.integers(0, 2, B), np.full(B, -1)], 1)
    batch = core.Batch(jnp.asarray(rng.normal(size=(B, D)), jnp.float32), jnp.asarray(y, jnp.int32))
    for energy in ("se", "ce"):
        g = _run(pc.Config(T=0, output_energy=energy), jp, batch, arch, heads).grads
        assert np.all(np.asarray(g[-1]["w"])[:, 2:] == 0) and np.any(np.asarray(g[-1]["w"])[:, :2] != 0)


# ------------------------------------------------------------------------------------------ FLOPs and engine


def test_counted_flops_grow_affinely_with_the_number_of_inference_steps():
    """Test 7 (§6.10): XLA counts a scanned loop body once; the runner counts the unrolled twin (cost_config), so
    flops(5) − flops(3) = flops(3) − flops(1) (every step costs the same) and the rolled program under-counts.
    Deviation from the spec's 0/4/8: at T = 0 the final state is the forward state and XLA shares a little more
    (≈1 % here, 0.2 % at PCX's MLP size), and shorter twins compile inside the test budget."""
    from localrules import cost, rules
    from localrules.optim import OptimizerConfig, make_optimizer
    from localrules.train import make_program

    arch = build_mlp(MLPConfig(hidden=(128, 128)), (64,), 10)
    heads = core.single_head("y", 10)
    opt = make_optimizer(OptimizerConfig(), 100, None)  # adam, the run's default
    params = arch.init(jax.random.PRNGKey(0))
    batch = core.Batch(jnp.ones((32, 64)), jnp.zeros((32, 1), jnp.int32))
    spec = rules.RULES["predictive_coding"]

    def step_flops(cfg):
        rule = pc.make(cfg, arch, heads)
        args = (params, opt.init(params), rule.init(jax.random.PRNGKey(1), params), batch, jax.random.PRNGKey(2))
        return cost.compiled_cost(jax.jit(make_program(rule, opt, arch, None).step).lower(*args).compile())["flops"]

    flops = {T: step_flops(spec.cost_config(pc.Config(T=T))) for T in (1, 3, 5)}  # the twin the runner counts
    d1, d2 = flops[3] - flops[1], flops[5] - flops[3]
    assert d1 > 0 and abs(d2 - d1) <= 0.01 * d1, flops
    rolled = step_flops(pc.Config(T=5))
    assert rolled < flops[5] - 0.5 * d2, (rolled, flops)
    # the formula (docs/compute.md): flops(T) ≈ a + b·T with b = 2(F − F₁) (blocks 2..L: prediction + input-VJP;
    # block 1 reads the clamped input and is hoisted) and a = 2F + 13P (forward init, final predictions and
    # parameter-VJPs; Adam). Matmuls only: the elementwise rest is a few per cent.
    B, dims = 32, (64, 128, 128, 10)
    F = 2 * B * sum(i * o for i, o in zip(dims[:-1], dims[1:]))
    F1 = 2 * B * dims[0] * dims[1]
    P = sum(i * o + o for i, o in zip(dims[:-1], dims[1:]))
    slope = (flops[5] - flops[1]) / 4
    assert abs(slope / (2 * (F - F1)) - 1) < 0.05, (slope, 2 * (F - F1))
    assert abs((flops[1] - slope) / (2 * F + 13 * P) - 1) < 0.1, (flops[1] - slope, 2 * F + 13 * P)


def test_inference_is_one_lax_scan_whose_program_does_not_grow_with_T():
    """No Python loop over inference steps in the training program: the update's jaxpr holds one ``scan`` of
    length T − 1 (step 1 is peeled off) and has the same number of equations for T = 3 and T = 9; XLA's count of
    the rolled program is therefore the same for both (the loop body once), which is why the runner counts the
    unrolled twin."""
    from localrules import cost

    arch = _arch()
    params = arch.init(jax.random.PRNGKey(0))
    x, y = jnp.ones((B, D)), jnp.zeros((B, 1), jnp.int32)
    sizes, counted = {}, {}
    for T in (3, 9):
        rule = pc.make(pc.Config(T=T), arch, HEADS)
        state = rule.init(jax.random.PRNGKey(1), params)
        args = (params, state, core.Batch(x, y), jax.random.PRNGKey(2))
        jaxpr = jax.make_jaxpr(rule.update)(*args).jaxpr
        scans = [e for e in jaxpr.eqns if e.primitive.name == "scan"]
        assert [e.params["length"] for e in scans] == [T - 1], scans
        sizes[T] = len(jaxpr.eqns)
        counted[T] = cost.compiled_cost(jax.jit(rule.update).lower(*args).compile())["flops"]
    assert sizes[3] == sizes[9], sizes
    assert counted[3] == counted[9], counted


def test_pc_learns_the_prototype_task_through_the_engine(tmp_path):
    """A tiny run through the real engine (CLI, jit, vmap over 2 seeds, scan over steps) ends far above the 10 %
    chance level (PC-CE; backprop reaches about 0.8 on this budget)."""
    import json

    from localrules import sweep

    sweep.main(["rule=pc", "rule.T=3", "rule.x_lr=0.1", "rule.output_energy=ce", "task=prototypes", "task.size=8",
                "task.test_size=200", "arch.hidden=[32,32]", "batch_size=32", "samples=3200", "seeds=2",
                "optimizer.lr=3e-3",
                "name=pc_learn", f"out={tmp_path}", "progress=false", "timing_steps=0", "checkpoint=false"])
    rec = json.loads((tmp_path / "pc_learn" / "results.jsonl").read_text().splitlines()[-1])
    assert rec["status"] == "ok"
    assert min(rec["final"]["acc"]) > 0.5, rec["final"]["acc"]
