"""Counter-current learning: equation-level tests against NumPy hand computations of the spec's formulas
(shared/specs/counter_current.md §5), plus a learning run through the real engine.

Oracle tier: closed forms in NumPy float64, written from the spec's equations, never from the library's code.
Setup (§5): a 3-layer bias-free ELU MLP d_0 = 5, d_1 = 4, d_2 = 3, C = 2, n = 3 (n ≠ C catches transposes).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from localrules import core
from localrules.architectures import ccl_ae, ccl_mlp
from localrules.optim import OptimizerConfig, make_optimizer
from localrules.rules import counter_current as ccl
from localrules.train import make_program

D0, D1, D2, C, N = 5, 4, 3, 2, 3
LAM = 0.5
HEADS = core.single_head("class", C)
SGD1 = OptimizerConfig(name="sgd", lr=1.0, momentum=0.0, clip_norm=0.0)


@pytest.fixture(autouse=True)
def x64():
    """float64 end to end, so that hand and library agree to rtol 1e-5 without float32 noise."""
    with jax.enable_x64(True):
        yield


def elu(p):
    return np.where(p > 0, p, np.exp(np.minimum(p, 0)) - 1)


def elu_prime(p):
    return np.where(p > 0, 1.0, np.exp(np.minimum(p, 0)))


def draw(seed=0):
    """Weights in the spec's notation (W_l: d_l × d_{l−1}, V_l: d_{l−1} × d_l), U(±1/√fan_in); X; labels."""
    r = np.random.default_rng(seed)
    u = lambda shape, fan: r.uniform(-1, 1, shape) / np.sqrt(fan)  # noqa: E731
    W = [u((D1, D0), D0), u((D2, D1), D1), u((C, D2), D2)]
    V = [u((D0, D1), D1), u((D1, D2), D2), u((D2, C), C)]
    X = r.normal(size=(N, D0))
    y = np.array([1, 0, 1])
    return W, V, X, y


def to_lab(W, V):
    """Spec matrices → the lab's layout: dense ``w`` is Wᵀ (d_in, d_out); feedback ``w`` is Vᵀ."""
    params = ({},) + tuple({"w": jnp.asarray(w.T)} for w in W)
    return params, tuple({"w": jnp.asarray(v.T)} for v in V)


def hand(W, V, X, y, keep=None, per_sample=False):
    """§5 hand gradients. Returns (dW [3], dV [3]) in spec layout: dW_l from ℓ_l (l=1,2) and CE (l=3);
    dV_{l+1} from ℓ_l (l=0,1,2). ``keep`` (n,) zeroes filtered rows of every A_l in the pair losses."""
    keep = np.ones(N) if keep is None else keep
    Y = np.eye(C)[y]
    P1 = X @ W[0].T
    A1 = elu(P1)
    P2 = A1 @ W[1].T
    A2 = elu(P2)
    Z = A2 @ W[2].T
    B3 = Y if per_sample else np.eye(C)
    Q2 = B3 @ V[2].T
    B2 = elu(Q2)
    Q1 = B2 @ V[1].T
    B1 = elu(Q1)
    B0 = B1 @ V[0].T
    A, B, P, Q = [X, A1, A2], [B0, B1, B2], [None, P1, P2], [None, Q1, Q2]
    Bnext = [B1, B2, B3]
    dW, dV = [None] * 3, [None] * 3
    for l in range(3):
        c = 256 * LAM / A[l].shape[1]
        Am = A[l] * keep[:, None]
        if per_sample:
            G = 2 * c / (N * A[l].shape[1]) * (Am - B[l]) * keep[:, None]  # ∂ℓ/∂A_l; ∂ℓ/∂B_l = −G
            dA, dB = G, -G
        else:
            G = 2 * c / (N * C) * (Am @ B[l].T - Y)  # n × C
            dA, dB = (G @ B[l]) * keep[:, None], G.T @ Am
        if l >= 1:
            dW[l - 1] = (dA * elu_prime(P[l])).T @ A[l - 1]
            dV[l] = (dB * elu_prime(Q[l])).T @ Bnext[l]
        else:
            dV[0] = dB.T @ Bnext[0]
    Zs = Z - Z.max(1, keepdims=True)
    sm = np.exp(Zs) / np.exp(Zs).sum(1, keepdims=True)
    dW[2] = (sm - Y).T @ A2 / N
    return dW, dV, Z


def setup(cfg, seed=0, step=0):
    arch = ccl_mlp.build(ccl_mlp.Config(hidden=(D1, D2)), (D0,), C)
    rule = ccl.make(cfg, arch, HEADS)
    W, V, X, y = draw(seed)
    params, Vlab = to_lab(W, V)
    state0 = rule.init(jax.random.PRNGKey(0), params)
    fb_opt = make_optimizer(cfg.feedback_optimizer, 1, None)
    state = ccl.CCLState(Vlab, fb_opt.init(Vlab), jnp.asarray(step, jnp.int32))
    assert jax.tree.structure(state) == jax.tree.structure(state0)
    batch = core.Batch(jnp.asarray(X), jnp.asarray(y, jnp.int32)[:, None])
    return arch, rule, params, state, batch, (W, V, X, y)


def lib_grads(rule, params, state, batch):
    """Forward pseudo-gradients (spec layout) and the feedback gradients recovered from one SGD(lr 1) step."""
    g, new, _ = jax.jit(rule.update)(params, state, batch, jax.random.PRNGKey(1))
    dW = [np.asarray(g[i]["w"]).T for i in (1, 2, 3)]
    dV = [np.asarray(state.V[l]["w"] - new.V[l]["w"]).T for l in range(3)]
    return dW, dV


def assert_close(got, want):
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)


def test_each_parameter_takes_the_hand_gradient_of_the_single_pair_that_owns_it():
    """§5 check 1: W_1 ← ℓ_1, W_2 ← ℓ_2, W_3 ← CE, V_1 ← ℓ_0, V_2 ← ℓ_1, V_3 ← ℓ_2 with class codes B_3 = I_C
    and the 256·λ_C/d_l scale. A transposed similarity, a wrong pairing or a dropped factor fails here."""
    _, rule, params, state, batch, (W, V, X, y) = setup(ccl.Config(feedback_optimizer=SGD1))
    dW, dV = lib_grads(rule, params, state, batch)
    hW, hV, _ = hand(W, V, X, y)
    assert_close(dW, hW)
    assert_close(dV, hV)


def test_per_sample_feedback_takes_the_hand_gradient_of_the_paired_mse():
    """The named option feedback_input=per_sample: B_3 = onehot(y) and ℓ_l = (256·λ_C/d_l)·mean((A_l − B_l)²)."""
    cfg = ccl.Config(feedback_input="per_sample", feedback_optimizer=SGD1)
    _, rule, params, state, batch, (W, V, X, y) = setup(cfg)
    dW, dV = lib_grads(rule, params, state, batch)
    hW, hV, _ = hand(W, V, X, y, per_sample=True)
    assert_close(dW, hW)
    assert_close(dV, hV)


@pytest.mark.parametrize("feedback_input", ["class_codes", "per_sample"])
def test_a_pair_reaches_only_its_forward_layer_and_the_feedback_layer_above(feedback_input):
    """§5 check 2: ∂ℓ_l/∂W_k = 0 exactly for k ≠ l and ∂ℓ_l/∂V_k = 0 for k ≠ l+1; CE reaches only W_3. A missing
    stop-gradient turns CCL into backprop and shows up here as a non-zero block for an earlier layer."""
    cfg = ccl.Config(feedback_input=feedback_input)
    arch, _, params, state, batch, _ = setup(cfg)
    losses = ccl.pair_losses(cfg, arch, HEADS)
    terms = [lambda p, v, l=l: losses(p, v, batch)[0][l] for l in range(3)]
    terms.append(lambda p, v: losses(p, v, batch)[1])
    owners = [(None, 0), (1, 1), (2, 2), (3, None)]  # (param layer index of W, index of V) per term
    for term, (w_owner, v_owner) in zip(terms, owners):
        gp, gv = jax.jit(jax.grad(term, argnums=(0, 1)))(params, state.V)
        for i in (1, 2, 3):
            nz = np.any(np.asarray(gp[i]["w"]) != 0)
            assert nz == (i == w_owner), f"W at layer {i}: non-zero={nz}, owner {w_owner}"
        for k in range(3):
            nz = np.any(np.asarray(gv[k]["w"]) != 0)
            assert nz == (k == v_owner), f"V_{k + 1}: non-zero={nz}, owner V_{None if v_owner is None else v_owner + 1}"


def _clip(gs, c):
    norm = np.sqrt(sum(np.sum(g**2) for g in gs))
    return [g * min(1.0, c / norm) for g in gs]


def test_each_network_is_clipped_by_its_own_norm_and_stepped_by_sgd():
    """§5 check 3: with clip 1e-3 on both networks, W' = W − lr·clip(g_F) and V' = V − lr·clip(g_B) through the
    engine's real step: each clip sees only its own network's norm (one shared clip would mix them)."""
    lr, clip = 0.3, 1e-3
    fb = OptimizerConfig(name="sgd", lr=lr, momentum=0.0, clip_norm=clip)
    arch, rule, params, state, batch, (W, V, X, y) = setup(ccl.Config(feedback_optimizer=fb))
    opt = make_optimizer(OptimizerConfig(name="sgd", lr=lr, momentum=0.0, clip_norm=clip), 1, None)
    prog = make_program(rule, opt, arch, task=None)
    new_p, _, new_s, _ = jax.jit(prog.step)(params, opt.init(params), state, batch, jax.random.PRNGKey(1))
    hW, hV, _ = hand(W, V, X, y)
    assert np.sqrt(sum(np.sum(g**2) for g in hW)) > 10 * clip and np.sqrt(sum(np.sum(g**2) for g in hV)) > 10 * clip
    for w, g, i in zip(W, _clip(hW, clip), (1, 2, 3)):
        np.testing.assert_allclose(np.asarray(new_p[i]["w"]).T, w - lr * g, rtol=1e-5, atol=1e-10)
    for k, (v, g) in enumerate(zip(V, _clip(hV, clip))):
        np.testing.assert_allclose(np.asarray(new_s.V[k]["w"]).T, v - lr * g, rtol=1e-5, atol=1e-10)


def test_warm_up_scales_every_gradient_by_step_plus_one_over_warmup():
    """§5 check 4: at step k < warmup the loss (hence every gradient, both networks) is scaled by (k+1)/warmup;
    at k ≥ warmup by 1. The reference scales the loss, not the learning rate."""
    cfg = ccl.Config(warmup_steps=10, feedback_optimizer=SGD1)
    hW, hV, _ = hand(*draw())
    for step, s in ((3, 0.4), (10, 1.0)):
        _, rule, params, state, batch, _ = setup(cfg, step=step)
        dW, dV = lib_grads(rule, params, state, batch)
        assert_close(dW, [s * g for g in hW])
        assert_close(dV, [s * g for g in hV])


def test_gradient_centralisation_leaves_every_weight_row_summing_to_zero():
    """§5 check 5: GradC subtracts each output unit's mean over its inputs (rows of W_l and V_l in the spec's
    layout), in both networks; the result is the hand gradient minus that mean."""
    _, rule, params, state, batch, (W, V, X, y) = setup(ccl.Config(grad_centralisation=True, feedback_optimizer=SGD1))
    dW, dV = lib_grads(rule, params, state, batch)
    hW, hV, _ = hand(W, V, X, y)
    for got, want in zip(dW + dV, hW + hV):
        np.testing.assert_allclose(got.sum(axis=1), 0.0, atol=1e-12)
        np.testing.assert_allclose(got, want - want.mean(axis=1, keepdims=True), rtol=1e-5, atol=1e-8)


def test_a_confidently_classified_sample_contributes_nothing_to_any_pair_gradient():
    """§5 check 6: with filter_target, a sample with p_y > 0.9 has its rows of every A_l zeroed, so the pair
    gradients equal the hand gradients without its row; CE still uses it. Without the filter they differ."""
    W, V, X, _ = draw()
    A2 = elu(elu(X @ W[0].T) @ W[1].T)
    Z = A2 @ W[2].T
    W[2] = W[2] * 5.0 / abs(Z[0, 0] - Z[0, 1])  # sample 0: softmax margin 5 → p = 0.993 for its argmax
    y = np.array([np.argmax(Z[0]), np.argmin(Z[1]), np.argmin(Z[2])])  # samples 1, 2: p_y < 0.5
    params, Vlab = to_lab(W, V)
    batch = core.Batch(jnp.asarray(X), jnp.asarray(y, jnp.int32)[:, None])
    arch = ccl_mlp.build(ccl_mlp.Config(hidden=(D1, D2)), (D0,), C)
    keep = np.array([0.0, 1.0, 1.0])
    for on in (True, False):
        rule = ccl.make(ccl.Config(filter_target=on, feedback_optimizer=SGD1), arch, HEADS)
        state = ccl.CCLState(Vlab, make_optimizer(SGD1, 1, None).init(Vlab), jnp.zeros((), jnp.int32))
        dW, dV = lib_grads(rule, params, state, batch)
        hW, hV, _ = hand(W, V, X, y, keep=keep)
        if on:
            assert_close(dW, hW)
            assert_close(dV, hV)
        else:
            assert not np.allclose(dV[0], hV[0])


def _np_cnn_loss(A, B, Y, lc, ls):
    a = A / (np.linalg.norm(A, axis=1, keepdims=True) + 1e-8)
    b = B / (np.linalg.norm(B, axis=1, keepdims=True) + 1e-8)
    return (lc * np.mean((a @ b.T - Y) ** 2) + ls * (np.mean((a @ a.T - np.eye(len(a))) ** 2)
                                                     + np.mean((b @ b.T - np.eye(len(b))) ** 2)))


def test_cnn_pair_loss_gradient_matches_finite_differences_of_the_normalised_formula():
    """§5 check 7: ∂ℓ/∂A and ∂ℓ/∂B of the normalised similarity loss with both decorrelation terms
    (n = 3, C = 2, D = 6, λ_C = 1, λ_ssl = 0.5) equal central differences (step 1e-6) of a NumPy version."""
    r = np.random.default_rng(1)
    A, B = r.normal(size=(3, 6)), r.normal(size=(2, 6))
    Y = np.eye(2)[[1, 0, 1]]
    f = lambda a, b: ccl.normalised_similarity_loss(a, b, jnp.asarray(Y), jnp.ones((3, 2)), 1.0, 0.5)  # noqa: E731
    np.testing.assert_allclose(float(f(jnp.asarray(A), jnp.asarray(B))), _np_cnn_loss(A, B, Y, 1.0, 0.5), rtol=1e-10)
    gA, gB = jax.jit(jax.grad(f, argnums=(0, 1)))(jnp.asarray(A), jnp.asarray(B))
    for X, g, which in ((A, gA, 0), (B, gB, 1)):
        fd = np.zeros_like(X)
        for idx in np.ndindex(X.shape):
            e = np.zeros_like(X)
            e[idx] = 1e-6
            args_p = (A + e, B) if which == 0 else (A, B + e)
            args_m = (A - e, B) if which == 0 else (A, B - e)
            fd[idx] = (_np_cnn_loss(*args_p, Y, 1.0, 0.5) - _np_cnn_loss(*args_m, Y, 1.0, 0.5)) / 2e-6
        np.testing.assert_allclose(np.asarray(g), fd, rtol=1e-5, atol=1e-8)


def test_a_filtered_row_gets_zero_not_nan_gradient_in_the_normalised_loss():
    """The filter zeroes a sample's rows (A ⊙ keep) before the row normalisation; ‖0‖ must give the subgradient 0
    (as PyTorch's norm does), not NaN, or one confident sample would poison the whole CNN update."""
    r = np.random.default_rng(3)
    A, B = r.normal(size=(3, 6)), r.normal(size=(2, 6))
    keep = jnp.array([0.0, 1.0, 1.0])
    Y = jnp.eye(2)[jnp.array([1, 0, 1])]
    f = lambda a, b: ccl.normalised_similarity_loss(a * keep[:, None], b, Y, jnp.ones((3, 2)), 1.0, 0.5)  # noqa: E731
    gA, gB = jax.grad(f, argnums=(0, 1))(jnp.asarray(A), jnp.asarray(B))
    assert np.all(np.isfinite(gA)) and np.all(np.isfinite(gB))
    np.testing.assert_array_equal(np.asarray(gA[0]), 0.0)


def test_an_unlabelled_head_adds_nothing_to_the_similarity_loss():
    """Multi-head generalisation: columns of a sample's unlabelled head are masked out of (S − Y)², while the
    mean still divides by n·C (so with every head labelled the loss is the reference's)."""
    heads = core.Heads(("a", "b"), (2, 3))
    arch = ccl_mlp.build(ccl_mlp.Config(hidden=(D1,)), (D0,), heads.total)
    cfg = ccl.Config()
    rule = ccl.make(cfg, arch, heads)
    params = arch.init(jax.random.PRNGKey(0))
    state = rule.init(jax.random.PRNGKey(1), params)
    X = np.random.default_rng(2).normal(size=(N, D0))
    y = np.array([[1, -1], [0, 2], [-1, 1]])
    batch = core.Batch(jnp.asarray(X), jnp.asarray(y))
    pairs, _, _ = jax.jit(ccl.pair_losses(cfg, arch, heads))(params, state.V, batch)
    Y = np.concatenate([np.eye(2)[np.maximum(y[:, 0], 0)] * (y[:, :1] >= 0),
                        np.eye(3)[np.maximum(y[:, 1], 0)] * (y[:, 1:] >= 0)], 1)
    M = np.concatenate([np.repeat(y[:, :1] >= 0, 2, 1), np.repeat(y[:, 1:] >= 0, 3, 1)], 1)
    w = np.asarray(params[1]["w"], np.float64)
    v1, v2 = (np.asarray(v["w"], np.float64) for v in state.V)
    A1 = elu(X @ w)
    B1 = elu(np.eye(5) @ v2)
    B0 = B1 @ v1
    for l, (A, B) in enumerate(((X, B0), (A1, B1))):
        want = 256 * 0.5 / A.shape[1] * np.sum(M * (A @ B.T - Y) ** 2) / (N * 5)
        np.testing.assert_allclose(float(pairs[l]), want, rtol=1e-5)


def test_autoencoder_pairs_are_local_and_the_end_pair_trains_only_the_output_layer():
    """loss=ae: pairs l = 0..L with B_L = X; pair L (output ↔ input) reaches only the output layer, pair 0 only
    V_1, hidden pairs only W_l and V_{l+1}; the end pair's value is H·λ_C·MSE(Z, X)."""
    arch = ccl_ae.build(ccl_ae.Config(channels=(2, 3), decoder_gain=1.0, output_gain=1.0), (4, 4, 1), 1)
    cfg = ccl.Config(loss="ae", lambda_c=1.0)
    rule = ccl.make(cfg, arch, HEADS)
    params = arch.init(jax.random.PRNGKey(0))
    state = rule.init(jax.random.PRNGKey(1), params)
    x = jax.random.normal(jax.random.PRNGKey(2), (3, 4, 4, 1), jnp.float32)
    batch = core.Batch(x, jnp.zeros((3, 1), jnp.int32))
    losses = ccl.pair_losses(cfg, arch, HEADS)
    pairs, mse, _ = jax.jit(losses)(params, state.V, batch)
    Z = jax.jit(arch.apply)(params, x)
    assert len(pairs) == 5
    np.testing.assert_allclose(float(pairs[4]), 4 * float(jnp.mean((Z - x) ** 2)), rtol=1e-6)
    np.testing.assert_allclose(float(mse), float(jnp.mean((Z - x) ** 2)), rtol=1e-6)
    P = arch.param_layers
    per_pair = jax.jit(jax.jacrev(lambda p, v: jnp.stack(losses(p, v, batch)[0]), argnums=(0, 1)))
    jp, jv = per_pair(params, state.V)  # leading axis: the pair
    for l in range(5):
        gp, gv = jax.tree.map(lambda a: a[l], (jp, jv))
        for j, i in enumerate(P, 1):
            assert np.any(np.asarray(gp[i]["w"]) != 0) == (j == l), (l, j)
        for k in range(4):
            assert np.any(np.asarray(gv[k]["w"]) != 0) == (k == l), (l, k)


def test_counter_current_learns_prototypes_well_above_chance_through_the_engine():
    """End to end through the CLI's config and the engine's program: a small CCL MLP (lr 1, both clips 1, as the
    reference MLP recipe) on the procedural prototypes stream ends far above the 10 % chance in 64 steps."""
    from localrules import run
    from localrules.cli import apply_overrides
    from localrules.config import RunConfig

    tokens = ["rule=ccl", "arch=ccl_mlp", "arch.hidden=[32,32]", "task=prototypes", "task.size=12",
              "task.test_size=500", "samples=4096", "batch_size=64", "optimizer.name=sgd", "optimizer.lr=1.0",
              "optimizer.momentum=0.0", "optimizer.clip_norm=1.0"]
    with jax.enable_x64(False):
        cfg = apply_overrides(RunConfig(), [tuple(t.split("=", 1)) for t in tokens])
        b = run.build(cfg)
        state = b.program.init(0)
        state, metrics = jax.jit(b.program.chunk, static_argnums=3)(state, b.task.data, 0, b.total_steps)
        acc = float(b.program.evaluate(state, b.task.test)["acc"])
    assert int(state.diverged_at) < 0 and np.isfinite(float(metrics["loss"]))
    assert acc > 0.6, acc


def test_a_scheduled_feedback_optimizer_needs_the_run_length_or_the_runs_factory():
    """Without the run's length a cosine feedback schedule cannot be built: make() says which field to set, and
    accepts the run's optimizer factory (``make_opt``, which knows the length) instead."""
    arch = ccl_mlp.build(ccl_mlp.Config(hidden=(D1,)), (D0,), C)
    cfg = ccl.Config(feedback_optimizer=OptimizerConfig(name="sgd", lr=1.0, schedule="cosine"))
    with pytest.raises(ValueError, match="feedback_schedule_steps"):
        ccl.make(cfg, arch, HEADS)
    ccl.make(cfg, arch, HEADS, make_opt=lambda ocfg: make_optimizer(ocfg, 100, None))
    ccl.make(ccl.Config(feedback_optimizer=cfg.feedback_optimizer, feedback_schedule_steps=100), arch, HEADS)


_PRESET_SHAPES = {"MnistConfig": (28, 28, 1), "FashionMnistConfig": (28, 28, 1), "Cifar10Config": (32, 32, 3),
                  "Cifar100Config": (32, 32, 3), "Stl10Config": (96, 96, 3)}


def test_every_ccl_preset_parses_and_its_rule_traces_one_update_on_the_real_input_shape():
    """The paper presets need datasets that are not on this machine, so check what can be checked offline: each
    parses, selects by validation loss on a 10 % split as the reference does, and its architecture and CCL rule
    trace one update (abstractly, no FLOPs) on the real input shape."""
    import glob
    import os

    from localrules import architectures, sweep

    files = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "sweeps", "ccl_*.toml")))
    assert len(files) >= 10
    for f in files:
        for c in sweep.parse([f"sweep={f}"])[0]:
            assert (c.val_fraction, c.selection) == (0.1, "best_val"), f  # the reference's model selection
            shape = _PRESET_SHAPES[type(c.task).__name__]
            if getattr(c.task, "canvas", False):
                shape = (32, 32, 3)
            n_out = 100 if "Cifar100" in type(c.task).__name__ else 10
            arch = architectures.build(c.arch, shape, n_out)
            if not isinstance(c.rule, ccl.Config):
                continue
            rule = ccl.make(c.rule, arch, core.single_head("y", n_out),
                            make_opt=lambda o: make_optimizer(o, 1000, 100))  # what the lab's build passes
            p = jax.eval_shape(arch.init, jax.random.PRNGKey(0))
            s = jax.eval_shape(rule.init, jax.random.PRNGKey(1), p)
            b = core.Batch(jax.ShapeDtypeStruct((4,) + shape, jnp.float32), jax.ShapeDtypeStruct((4, 1), jnp.int32))
            g = jax.eval_shape(rule.update, p, s, b, jax.random.PRNGKey(2))[0]
            assert jax.tree.structure(g) == jax.tree.structure(p), f


def _write_mnist(folder, n_train=96, n_test=40):
    """Generated MNIST-format files: a fixed smooth pattern per class (7×7 blocks of 4×4 pixels, what a 7×7 code
    can hold) plus a little noise (no real data needed)."""
    import struct

    def idx(arr):
        arr = np.ascontiguousarray(arr, dtype=np.uint8)
        return b"\x00\x00\x08" + bytes([arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()

    r = np.random.default_rng(0)
    patterns = np.kron(r.integers(0, 256, (10, 7, 7)), np.ones((1, 4, 4), int))
    folder.mkdir(parents=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        y = r.integers(0, 10, n)
        x = np.clip(patterns[y] + r.integers(-10, 11, (n, 28, 28)), 0, 255)
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(idx(x))
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(idx(y))


def test_the_autoencoder_figure_trains_backprop_and_ccl_and_both_reconstruct_better_than_zero(tmp_path, monkeypatch):
    """The figure command end to end on a tiny generated dataset: both networks start from the preset's zero output
    layer (test MSE = mean(x²) of the standardised input), both end below it, the PNG has the three rows, and the
    lab refuses backprop on the image-to-image network with a one-line pointer to this command."""
    import json

    from localrules import run
    from localrules.cli import apply_overrides
    from localrules.cli import split_token as cli_split
    from localrules.config import RunConfig
    from localrules.sweeps import ccl_ae_fmnist_png as fig
    from localrules.tasks import images

    monkeypatch.setenv("LOCALRULES_OFFLINE", "1")
    _write_mnist(tmp_path / "data" / "mnist")
    out = tmp_path / "fig" / "rec.png"
    common = ["task=mnist", f"task.data_dir={tmp_path / 'data'}", "arch.channels=[4,8]", "batch_size=8"]
    with jax.enable_x64(False):
        res = fig.main(common + ["samples=320", "images=3", f"out={out}", "rule.warmup_steps=0", "bp_warmup_steps=0"])
        b = run.build(fig.sweep_config(common))
        mean, std = images.normalisation("standard", b.task.data[0])
        zero = float(jnp.mean(images.prepare(b.task.test.x, mean, std) ** 2))
        with pytest.raises(ValueError, match=r"only rule=counter_current rule.loss=ae trains it .*ccl_ae_fmnist_png"):
            run.build(apply_overrides(RunConfig(), [cli_split(t) for t in common + ["arch=ccl_ae", "rule=backprop"]]))
    assert res["backprop"]["test_mse"] < 0.9 * zero and res["ccl"]["test_mse"] < 0.9 * zero, (res, zero)
    assert res["steps"] == 40 and res["backprop"]["diverged_at"] == res["ccl"]["diverged_at"] == -1
    png = out.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(out.with_suffix(".json").read_text())["ccl"]["test_mse"] == res["ccl"]["test_mse"]
