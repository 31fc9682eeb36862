"""Equation tests for PEPITA (Dellaferrera & Kreiman, ICML 2022) and its ICLR 2024 variants.

Oracle: every expectation is computed in NumPy float64 from the spec's formulas (``shared/specs/pepita.md`` §5),
never from the library's code: two forward passes of a d=5 → 4 → 3 → 2 ReLU net without biases, the modulated
input X′ = X ± E Fᵀ, the outer products (H − H′)ᵀ H′_prev / B, and the optimizer steps in the ICML and ICLR forms.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from localrules import core, cost
from localrules.architectures import MLPConfig, build_mlp
from localrules.optim import OptimizerConfig, make_optimizer
from localrules.rules import backprop, pepita

RTOL, ATOL = 1e-5, 1e-7
HEADS = core.single_head("y", 2)


# ----------------------------------------------------------------------------------------------- NumPy oracle


def _relu(a):
    return np.maximum(a, 0.0)


def _softmax(z):
    p = np.exp(z - z.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True)


def _np_forward(Ws, X, masks):
    """H_ℓ = M_ℓ ⊙ relu(H_{ℓ−1} W_ℓᵀ) for hidden ℓ, Y = softmax(H_{L−1} W_Lᵀ); paper layout W (out, in)."""
    Hs = [X]
    for W, M in zip(Ws[:-1], masks):
        Hs.append(M * _relu(Hs[-1] @ W.T))
    return Hs, _softmax(Hs[-1] @ Ws[-1].T)


class Setup:
    """The spec's net: d = 5, N_1 = 4, N_2 = 3, C = 2, B = 2; He-uniform W, X ~ U[0, 1), F ~ N(0, 0.5²)."""

    def __init__(self, **cfg):
        cfg.setdefault("dropout", 0.1)
        self.cfg = pepita.Config(**cfg)
        self.arch = build_mlp(MLPConfig(hidden=(4, 3), bias=False), (5,), 2)
        self.rule = pepita.make(self.cfg, self.arch, HEADS)
        # seeds chosen so that most units are active and the modulation flips several ReLU gates
        self.params = self.arch.init(jax.random.PRNGKey(27))
        rng = np.random.default_rng(4)
        self.F = rng.normal(0.0, 0.5, (5, 2)).astype(np.float32)
        state = self.rule.init(jax.random.PRNGKey(1), self.params)
        self.state = state._replace(F=jnp.asarray(self.F))
        self.X = rng.uniform(0.0, 1.0, (2, 5)).astype(np.float32)
        self.y = np.array([[0], [1]], np.int32)
        self.T = np.eye(2)[self.y[:, 0]]
        self.batch = core.Batch(jnp.asarray(self.X), jnp.asarray(self.y))
        self.key, self.masks = self._key_with_dropped_units()
        self.Ws = [np.asarray(self.params[i]["w"], np.float64).T for i in (1, 2, 3)]

    def _key_with_dropped_units(self):
        """A step key whose masks (drawn as ``update`` draws them) drop at least one unit in each hidden layer."""
        for s in range(200):
            key = jax.random.PRNGKey(100 + s)
            if self.cfg.dropout == 0:
                return key, [np.ones((2, 4)), np.ones((2, 3))]
            m = pepita.draw_masks(self.cfg, self.arch, {1: (2, 4), 2: (2, 3)}, key)
            m = [np.asarray(m[1], np.float64), np.asarray(m[2], np.float64)]
            if all((mm == 0).any() for mm in m):
                for mm in m:  # inverted dropout: entries in {0, 1/0.9}
                    np.testing.assert_allclose(mm[mm > 0], 1 / 0.9, rtol=1e-6)
                return key, m
        raise AssertionError("no key drops a unit in both layers")

    def update(self, params=None):
        return self.rule.update(self.params if params is None else params, self.state, self.batch, self.key)

    def passes(self, sign=+1.0, Ws=None):
        Ws = self.Ws if Ws is None else Ws
        X = self.X.astype(np.float64)
        Hs, Y = _np_forward(Ws, X, self.masks)
        E = Y - self.T
        Xm = X + sign * E @ self.F.astype(np.float64).T
        Hm, Ym = _np_forward(Ws, Xm, self.masks)
        return Hs, Y, E, Xm, Hm, Ym, Ym - self.T


def _close(g, expected_paper_layout):
    """Compare a lab pseudo-gradient (w: in × out) with the paper-layout ΔW (out × in)."""
    np.testing.assert_allclose(np.asarray(g["w"], np.float64), expected_paper_layout.T, rtol=RTOL, atol=ATOL)


# ----------------------------------------------------------------------------------------------- the ICML rule


@pytest.mark.parametrize("last_layer_error", ["e", "e_mod"])
@pytest.mark.parametrize("modulation_sign", ["+", "-"])
def test_one_pepita_step_equals_the_hand_computed_two_pass_update(last_layer_error, modulation_sign):
    """ΔW_ℓ = (H_ℓ − H′_ℓ)ᵀ H′_{ℓ−1}/B with H′_0 = X′ = X ± E Fᵀ, same dropout masks in both passes, and
    ΔW_L = Eᵀ H′_{L−1}/B (e) or E′ᵀ H′_{L−1}/B (e_mod): the whole rule, both error options and both signs. A
    clean presynaptic factor, a logit error, a fresh mask in pass 2 or a flipped update sign all fail here."""
    s = Setup(last_layer_error=last_layer_error, modulation_sign=modulation_sign)
    sign = 1.0 if modulation_sign == "+" else -1.0
    Hs, Y, E, Xm, Hm, Ym, Em = s.passes(sign)
    assert ((Hs[1] > 0) != (Hm[1] > 0)).any() or ((Hs[2] > 0) != (Hm[2] > 0)).any(), \
        "the modulation must change at least one ReLU gate, or the test cannot tell X′ from X"
    g, state, m = s.update()
    B = 2
    _close(g[1], (Hs[1] - Hm[1]).T @ Xm / B)
    _close(g[2], (Hs[2] - Hm[2]).T @ Hm[1] / B)
    e = E if last_layer_error == "e" else Em
    _close(g[3], e.T @ Hm[2] / B)
    assert g[0] == {}
    np.testing.assert_allclose(float(m["loss"]), -np.mean(np.log(Y[[0, 1], [0, 1]])), rtol=1e-5)


def test_the_icml_momentum_step_is_reproduced_by_the_lab_momentum_optimizer():
    """ICML form v′ = 0.9v + ηΔW, W′ = W − v′ (η = 0.1, non-zero v): the lab's momentum optimizer applies the
    returned +ΔW as v̂′ = 0.9v̂ + ΔW, W′ = W − ηv̂′, identical with v̂ = v/η at constant η. Checks the descent
    sign of the pseudo-gradient end to end."""
    s = Setup(last_layer_error="e_mod")
    Hs, Y, E, Xm, Hm, Ym, Em = s.passes()
    dW = [(Hs[1] - Hm[1]).T @ Xm / 2, (Hs[2] - Hm[2]).T @ Hm[1] / 2, Em.T @ Hm[2] / 2]
    rng = np.random.default_rng(5)
    v = [rng.normal(0, 0.01, W.shape) for W in s.Ws]
    eta = 0.1
    opt = make_optimizer(OptimizerConfig(name="momentum", lr=eta, momentum=0.9), 10, None)
    st = opt.init(s.params)
    trace = tuple({} if i == 0 else {"w": jnp.asarray((v[i - 1] / eta).T, jnp.float32)} for i in range(4))
    st = (st[0]._replace(trace=trace),) + tuple(st[1:])
    g, _, _ = s.update()
    u, _ = opt.update(g, st, s.params)
    for i in (1, 2, 3):
        v_new = 0.9 * v[i - 1] + eta * dW[i - 1]
        W_new = s.Ws[i - 1] - v_new
        np.testing.assert_allclose(np.asarray(s.params[i]["w"] + u[i]["w"], np.float64), W_new.T, rtol=1e-5, atol=1e-6)


def test_the_iclr_step_with_weight_decay_adds_lambda_w_before_the_momentum():
    """ICLR form v′ = 0.9v + ΔW + λW, W′ = W − ηv′ with x − Fe and last layer e (``pepita_iclr_default``):
    ``rule.weight_decay`` must enter the velocity, not the weights directly."""
    lam, eta = 1e-2, 0.1
    s = Setup(modulation_sign="-", last_layer_error="e", weight_decay=lam)
    Hs, Y, E, Xm, Hm, Ym, Em = s.passes(-1.0)
    dW = [(Hs[1] - Hm[1]).T @ Xm / 2, (Hs[2] - Hm[2]).T @ Hm[1] / 2, E.T @ Hm[2] / 2]
    rng = np.random.default_rng(6)
    v = [rng.normal(0, 0.01, W.shape) for W in s.Ws]
    opt = make_optimizer(OptimizerConfig(name="momentum", lr=eta, momentum=0.9), 10, None)
    st = opt.init(s.params)
    trace = tuple({} if i == 0 else {"w": jnp.asarray(v[i - 1].T, jnp.float32)} for i in range(4))
    st = (st[0]._replace(trace=trace),) + tuple(st[1:])
    g, _, _ = s.update()
    u, _ = opt.update(g, st, s.params)
    for i in (1, 2, 3):
        W = s.Ws[i - 1]
        v_new = 0.9 * v[i - 1] + dW[i - 1] + lam * W
        np.testing.assert_allclose(np.asarray(s.params[i]["w"] + u[i]["w"], np.float64), (W - eta * v_new).T,
                                   rtol=1e-5, atol=1e-6)


def test_error_sign_variant_projects_sign_of_e_and_keeps_the_error_at_the_output():
    """ERINsign: X′ = X + sign(E) Fᵀ for the modulation only; the output layer still learns from e."""
    s = Setup(error_fn="sign")
    X = s.X.astype(np.float64)
    Hs, Y = _np_forward(s.Ws, X, s.masks)
    E = Y - s.T
    Xm = X + np.sign(E) @ s.F.astype(np.float64).T
    Hm, _ = _np_forward(s.Ws, Xm, s.masks)
    g, _, _ = s.update()
    _close(g[1], (Hs[1] - Hm[1]).T @ Xm / 2)
    _close(g[3], E.T @ Hm[2] / 2)


# ----------------------------------------------------------------------------------------------- ICLR variants


def test_forward_mode_takes_presynaptic_factors_from_the_clean_pass():
    """``forward``: ΔW_ℓ = (H_ℓ − H′_ℓ)ᵀ H_{ℓ−1}/B (H_0 = X), ΔW_L = Eᵀ H_{L−1}/B."""
    s = Setup(output_mode="forward")
    Hs, Y, E, Xm, Hm, Ym, Em = s.passes()
    g, _, _ = s.update()
    _close(g[1], (Hs[1] - Hm[1]).T @ Hs[0] / 2)
    _close(g[2], (Hs[2] - Hm[2]).T @ Hs[1] / 2)
    _close(g[3], E.T @ Hs[2] / 2)


def test_mixed_mode_is_hebbian_on_the_clean_pass_and_anti_hebbian_on_the_modulated_pass():
    """PEPITA-Hebbian as the paper defines it: (H_ℓᵀ H_{ℓ−1} − H′_ℓᵀ H′_{ℓ−1})/B, last layer
    (Yᵀ H_{L−1} − Tᵀ H′_{L−1})/B (the released code silently runs ``modulated`` instead)."""
    s = Setup(output_mode="mixed")
    Hs, Y, E, Xm, Hm, Ym, Em = s.passes()
    g, _, _ = s.update()
    _close(g[1], (Hs[1].T @ Hs[0] - Hm[1].T @ Xm) / 2)
    _close(g[2], (Hs[2].T @ Hs[1] - Hm[2].T @ Hm[1]) / 2)
    _close(g[3], (Y.T @ Hs[2] - s.T.T @ Hm[2]) / 2)


def test_time_local_mode_runs_pass_two_on_weights_already_moved_by_the_hebbian_half():
    """PEPITA-TL: G₁ = H_ℓᵀH_{ℓ−1}/B (Yᵀ H_{L−1}/B) is applied first, W̃ = W − η_tl G₁; pass 2 uses W̃ and the
    original pass-1 error; G₂ = −H̃′_ℓᵀ H̃′_{ℓ−1}/B (−Tᵀ H̃′_{L−1}/B). The rule returns G₁ + G₂. Running pass 2 on
    the old W (the ``mixed`` rule) differs, so the test pins the time-local order."""
    eta_tl = 0.5
    s = Setup(output_mode="mixed_tl", tl_lr=eta_tl)
    X = s.X.astype(np.float64)
    Hs, Y = _np_forward(s.Ws, X, s.masks)
    E = Y - s.T
    G1 = [Hs[1].T @ Hs[0] / 2, Hs[2].T @ Hs[1] / 2, Y.T @ Hs[2] / 2]
    Wt = [W - eta_tl * G for W, G in zip(s.Ws, G1)]
    Xm = X + E @ s.F.astype(np.float64).T
    Ht, _ = _np_forward(Wt, Xm, s.masks)
    G2 = [-Ht[1].T @ Xm / 2, -Ht[2].T @ Ht[1] / 2, -s.T.T @ Ht[2] / 2]
    g, _, _ = s.update()
    for i in (1, 2, 3):
        _close(g[i], G1[i - 1] + G2[i - 1])
    Hm, _ = _np_forward(s.Ws, Xm, s.masks)
    assert not np.allclose(np.asarray(g[1]["w"]).T, G1[0] - Hm[1].T @ Xm / 2, atol=1e-6)


@pytest.mark.parametrize("act_norm", ["batch_frobenius", "per_sample"])
def test_activity_normalisation_divides_hidden_activity_in_both_passes_and_at_inference(act_norm):
    """ICLR ``Normalization``: H_ℓ = n(M_ℓ ⊙ relu(·)) with n dividing by the batch-matrix Frobenius norm (the code's
    quirk) or each row's norm; it is part of the network, so ``predict`` applies it too."""
    s = Setup(act_norm=act_norm)

    def n(H):
        if act_norm == "batch_frobenius":
            return H / np.linalg.norm(H)
        return H / np.maximum(np.linalg.norm(H, axis=1, keepdims=True), 1e-12)  # guarded, as the rule (Deviation 6)

    def fwd(Ws, X, masks):
        Hs = [X]
        for W, M in zip(Ws[:-1], masks):
            Hs.append(n(M * _relu(Hs[-1] @ W.T)))
        return Hs, _softmax(Hs[-1] @ Ws[-1].T)

    X = s.X.astype(np.float64)
    Hs, Y = fwd(s.Ws, X, s.masks)
    E = Y - s.T
    Xm = X + E @ s.F.astype(np.float64).T
    Hm, _ = fwd(s.Ws, Xm, s.masks)
    g, _, _ = s.update()
    _close(g[1], (Hs[1] - Hm[1]).T @ Xm / 2)
    _close(g[2], (Hs[2] - Hm[2]).T @ Hm[1] / 2)
    _close(g[3], E.T @ Hm[2] / 2)
    Hc, _ = fwd(s.Ws, X, [np.ones((2, 4)), np.ones((2, 3))])
    np.testing.assert_allclose(np.asarray(s.rule.predict(s.params, s.state, s.batch.x)), Hc[-1] @ s.Ws[-1].T,
                               rtol=1e-5, atol=1e-6)


def test_inference_is_one_clean_pass_without_masks_or_modulation():
    """``predict`` = logits of one pass with no dropout and no F·e (softmax is monotone, so logits rank the same)."""
    s = Setup()
    X = s.X.astype(np.float64)
    Hs, _ = _np_forward(s.Ws, X, [np.ones((2, 4)), np.ones((2, 3))])
    np.testing.assert_allclose(np.asarray(s.rule.predict(s.params, s.state, s.batch.x)), Hs[-1] @ s.Ws[-1].T,
                               rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------- F and mirroring


def _mnist_like(**cfg):
    arch = build_mlp(MLPConfig(hidden=(1024,), bias=False), (28, 28, 1), 10)
    heads = core.single_head("digit", 10)
    rule = pepita.make(pepita.Config(**cfg), arch, heads)
    params = jax.eval_shape(arch.init, jax.random.PRNGKey(0))  # init reads only the structure
    return jax.jit(rule.init)(jax.random.PRNGKey(3), params)


def test_uniform_feedback_matrix_has_the_icml_scale_set_by_the_input_dimension():
    """F ~ U(±0.05·√(6/d)) with d = 784 the input dimension: max|F| ≤ 4.374e-3, std ≈ 2.525e-3 (±3 %), mean ≈ 0.
    Using the fan-in of a layer, 1/√C or 0.05 itself as the scale is the spec's pitfall 1."""
    F = np.asarray(_mnist_like().F, np.float64)
    assert F.shape == (784, 10)
    assert np.abs(F).max() <= 0.05 * np.sqrt(6 / 784)
    assert abs(F.std() / 2.525e-3 - 1) < 0.03
    assert abs(F.mean()) < 3 * F.std() / np.sqrt(7840)


def test_normal_product_feedback_matrix_has_the_same_std_as_the_uniform_one():
    """ICLR ``B_INIT=normal``: F = B_0 B_1 with per-factor std s = (σ*/√1024)^{1/2}; std(F) within 5 % of σ*."""
    st = _mnist_like(F_init="normal_product")
    assert [f.shape for f in st.factors] == [(784, 1024), (1024, 10)]
    F = np.asarray(st.F, np.float64)
    np.testing.assert_allclose(F, np.asarray(st.factors[0], np.float64) @ np.asarray(st.factors[1], np.float64),
                               rtol=1e-4, atol=1e-8)
    assert abs(F.std() / 2.525e-3 - 1) < 0.05


def test_one_weight_mirroring_step_follows_the_sgd_update_and_restores_the_std_of_f():
    """WM with fixed ξ and dropout off: B_l′ = B_l + η ξ̄ᵀŷ/B − ηλB_l (ξ̄ = ξ − mean ξ, ŷ = relu(ξ̄ W_{l+1}ᵀ), softmax
    at the output), then the global rescale makes std(Π B_l′) = 0.05·√(2/d) again (unbiased std, as torch.std)."""
    eta, lam = 0.3, 0.05
    cfg = pepita.Config(F_init="normal_product", weight_mirroring=True, wm_lr=eta, wm_wd=lam, wm_pre_epochs=0,
                        wm_every_epochs=1, dropout=0.0)
    arch = build_mlp(MLPConfig(hidden=(4, 3), bias=False), (5,), 2)
    rule = pepita.make(cfg, arch, HEADS)
    params = arch.init(jax.random.PRNGKey(0))
    st = rule.init(jax.random.PRNGKey(1), params)
    rng = np.random.default_rng(7)
    xis = [0.1 * rng.normal(size=(6, n)) for n in (5, 4, 3)]
    factors, F = pepita.mirror(cfg, arch, HEADS, params, st.factors, [jnp.asarray(x, jnp.float32) for x in xis],
                               jax.random.PRNGKey(9))
    Ws = [np.asarray(params[i]["w"], np.float64).T for i in (1, 2, 3)]
    new = []
    for l, (W, xi) in enumerate(zip(Ws, xis)):
        xb = xi - xi.mean()
        yh = _softmax(xb @ W.T) if l == 2 else _relu(xb @ W.T)
        Bl = np.asarray(st.factors[l], np.float64)
        new.append(Bl + eta * xb.T @ yh / 6 - eta * lam * Bl)
    prod = new[0] @ new[1] @ new[2]
    sigma = 0.05 * np.sqrt(2 / 5)
    scale = (sigma / prod.std(ddof=1)) ** (1 / 3)
    for a, b in zip(factors, new):
        np.testing.assert_allclose(np.asarray(a, np.float64), b * scale, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(F, np.float64).std(ddof=1), sigma, rtol=1e-5)


def test_mirroring_schedule_freezes_weights_in_pre_mirror_epochs_and_changes_only_f():
    """In the first ``wm_pre_epochs`` epochs every pseudo-gradient is zero while F moves; afterwards (outside
    mirroring epochs) W learns and F stays. F is always the product of the stored factors."""
    cfg = dict(F_init="normal_product", weight_mirroring=True, wm_pre_epochs=1, wm_every_epochs=0,
               steps_per_epoch=2)
    s = Setup(**cfg)
    st = s.rule.init(jax.random.PRNGKey(1), s.params)
    for t in range(3):
        g, st2, m = s.rule.update(s.params, st, s.batch, jax.random.PRNGKey(t))
        zero = all(float(jnp.abs(l).max()) == 0 for l in jax.tree.leaves(g))
        f_moved = not np.allclose(np.asarray(st2.F), np.asarray(st.F))
        assert (zero, f_moved) == ((True, True) if t < 2 else (False, False)), t
        np.testing.assert_allclose(np.asarray(st2.F), np.asarray(pepita.product(st2.factors)), rtol=1e-5, atol=1e-9)
        assert int(st2.step) == t + 1
        st = st2


@pytest.mark.parametrize("mode", ["modulated", "forward", "mixed", "mixed_tl"])
def test_only_the_weight_matrices_change_and_f_is_fixed_without_mirroring(mode):
    """No biases in the net → pseudo-gradients hold exactly the ``w`` leaves; F is rule state that the update
    returns unchanged (vanilla PEPITA never trains F)."""
    s = Setup(output_mode=mode)
    g, st2, _ = s.update()
    assert [sorted(p) for p in g] == [[], ["w"], ["w"], ["w"]]
    np.testing.assert_array_equal(np.asarray(st2.F), s.F)


def test_biases_if_present_learn_as_weights_from_a_constant_input():
    """Documented extension (the papers have no biases): Δb_ℓ = Σ_n (H_ℓ − H′_ℓ)_n / B for hidden layers and
    Σ_n E_n / B at the output, i.e. the same rule with presynaptic activity 1."""
    arch = build_mlp(MLPConfig(hidden=(4,), bias=True), (5,), 2)
    cfg = pepita.Config(dropout=0.0)
    rule = pepita.make(cfg, arch, HEADS)
    params = arch.init(jax.random.PRNGKey(0))
    params = (params[0], {"w": params[1]["w"], "b": jnp.full((4,), 0.1)}, {"w": params[2]["w"], "b": jnp.zeros(2)})
    rng = np.random.default_rng(0)
    F = rng.normal(0.0, 0.5, (5, 2))
    st = rule.init(jax.random.PRNGKey(1), params)._replace(F=jnp.asarray(F, jnp.float32))
    X = rng.uniform(size=(3, 5))
    y = np.array([[0], [1], [1]])
    g, _, _ = rule.update(params, st, core.Batch(jnp.asarray(X, jnp.float32), jnp.asarray(y, jnp.int32)),
                          jax.random.PRNGKey(2))
    W1, b1 = np.asarray(params[1]["w"], np.float64), np.asarray(params[1]["b"], np.float64)
    W2 = np.asarray(params[2]["w"], np.float64)
    X = X.astype(np.float32).astype(np.float64)
    F = F.astype(np.float32).astype(np.float64)
    H = _relu(X @ W1 + b1[None, :])
    E = _softmax(H @ W2) - np.eye(2)[y[:, 0]]
    Hm = _relu((X + E @ F.T) @ W1 + b1[None, :])
    np.testing.assert_allclose(np.asarray(g[1]["b"]), (H - Hm).sum(0) / 3, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(g[2]["b"]), E.sum(0) / 3, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------------------------- conv net


def _np_conv_valid(x, w):
    """x (B, H, W, C), w (k, k, C, O) → (B, H−k+1, W−k+1, O); and the patches (B, H′, W′, k, k, C)."""
    k = w.shape[0]
    Ho, Wo = x.shape[1] - k + 1, x.shape[2] - k + 1
    patches = np.stack([np.stack([x[:, r:r + k, c:c + k, :] for c in range(Wo)], 1) for r in range(Ho)], 1)
    return np.einsum("bhwijc,ijco->bhwo", patches, w), patches


def _np_pool(h):
    b, H, W, C = h.shape
    return h[:, : H // 2 * 2, : W // 2 * 2].reshape(b, H // 2, 2, W // 2, 2, C).max((2, 4))


@pytest.mark.parametrize("reference", [False, True])
def test_conv_kernel_update_is_the_tied_weight_outer_product_with_the_reference_scalings(reference):
    """Conv layer: ΔK = Σ_{b,p} (H − H′)_{b,p} ⊗ patch′_{b,p} / B (the dense rule with tied weights); the ICML conv
    code instead takes the mean over batch and positions, divides by B again and flips the sign
    (``conv_double_batch_average`` and ``conv_reference_sign``). The FC layer after pool/flatten uses pooled H′."""
    from localrules.architectures import pepita_conv

    arch = pepita_conv.build(pepita_conv.PepitaConvConfig(channels=2, kernel=3), (6, 6, 1), 2)
    cfg = pepita.Config(dropout=0.0, conv_double_batch_average=reference, conv_reference_sign=reference)
    rule = pepita.make(cfg, arch, HEADS)
    params = arch.init(jax.random.PRNGKey(0))
    rng = np.random.default_rng(1)
    F = rng.normal(0.0, 0.5, (36, 2)).astype(np.float32)
    st = rule.init(jax.random.PRNGKey(1), params)._replace(F=jnp.asarray(F))
    X = rng.uniform(size=(2, 6, 6, 1)).astype(np.float32)
    y = np.array([[1], [0]], np.int32)
    g, _, _ = rule.update(params, st, core.Batch(jnp.asarray(X), jnp.asarray(y)), jax.random.PRNGKey(2))
    K = np.asarray(params[1]["w"], np.float64)
    W = np.asarray(params[4]["w"], np.float64)  # (8, 2)
    X = X.astype(np.float64)

    def fwd(x):
        a, patches = _np_conv_valid(x, K)
        h = _relu(a)
        z = _np_pool(h).reshape(2, -1)
        return h, patches, z, _softmax(z @ W)

    H, _, Z, Y = fwd(X)
    E = Y - np.eye(2)[y[:, 0]]
    Xm = X + (E @ F.astype(np.float64).T).reshape(X.shape)
    Hm, Pm, Zm, _ = fwd(Xm)
    dK = np.einsum("bhwo,bhwijc->ijco", H - Hm, Pm) / 2
    if reference:
        dK = -dK / (16 * 2)
    np.testing.assert_allclose(np.asarray(g[1]["w"], np.float64), dK, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(g[4]["w"], np.float64), Zm.T @ E / 2, rtol=1e-5, atol=1e-7)
    assert g[2] == {} and g[3] == {}


def test_pepita_conv_architecture_has_the_reference_fc_widths():
    """Stride 1, no padding, 5×5, 32 maps, 2×2 max-pool: 4608 FC inputs on 28×28×1 and 6272 on 32×32×3."""
    from localrules.architectures import pepita_conv

    cfg = pepita_conv.PepitaConvConfig()
    for shape, width in (((28, 28, 1), 4608), ((32, 32, 3), 6272)):
        arch = pepita_conv.build(cfg, shape, 10)
        p = jax.eval_shape(arch.init, jax.random.PRNGKey(0))
        assert p[4]["w"].shape == (width, 10) and "b" not in p[1] and "b" not in p[4]


# ----------------------------------------------------------------------------------------------- compute


# optimizer FLOPs per parameter in XLA's count: momentum v ← g + μv (2), u = −ηv (1); adam m (3), v (4), two bias
# corrections (2), m̂/(√v̂ + ε) (2; the square root is a transcendental, not a FLOP), u = −η·(…) (1); + W + u (1)
OPT_FLOPS_PER_PARAM = {"momentum": 4, "adam": 13}


def test_compiled_step_flops_match_two_forward_passes_plus_projection_plus_outer_products():
    """The paper's FC net 784-1024-10 without biases, batch B = 100, one compiled training step (rule + optimizer,
    ``Program.step``). PEPITA: pass 1 (2B(dN + NC)), the projection E Fᵀ (2BCd), pass 2 (2BdN, plus 2BNC for the
    output layer only when the last layer learns from E′: ``last_layer_error=e_mod``), the outer products
    (H₁ − H₁′)ᵀX′ and EᵀH₁′ (2BdN + 2BNC) → 2B(3dN + (2 + m)NC + Cd), m = 1 for e_mod; backprop: forward
    (2B(dN + NC)), dW₂, dH₁ and dW₁ (2BNC + 2BNC + 2BdN; no input gradient) → 2B(2dN + 3NC); both + k·P for the
    optimizer (P = dN + NC). XLA's count of each compiled step (momentum, the papers' optimizer) is within 5 %
    (measured +1.5 %, +0.2 %, +0.1 %; dropout's random bits and elementwise ops are the rest); the optimizer alone
    costs k·P for momentum and Adam."""
    from localrules.train import make_program

    d, N, C, B = 784, 1024, 10, 100
    P = d * N + N * C
    arch = build_mlp(MLPConfig(hidden=(N,), bias=False), (d,), C)
    heads = core.single_head("y", C)
    opt = make_optimizer(OptimizerConfig(name="momentum"), 100, None)
    params = arch.init(jax.random.PRNGKey(0))
    batch = core.Batch(jnp.ones((B, d)), jnp.zeros((B, 1), jnp.int32))
    key = jax.random.PRNGKey(1)
    k = OPT_FLOPS_PER_PARAM["momentum"]
    counted = {}
    for name, rule, analytic in (
            ("pepita", pepita.make(pepita.Config(), arch, heads), 2 * B * (3 * d * N + 2 * N * C + C * d) + k * P),
            ("pepita e_mod", pepita.make(pepita.Config(last_layer_error="e_mod"), arch, heads),
             2 * B * (3 * d * N + 3 * N * C + C * d) + k * P),
            ("backprop", backprop.make(backprop.Config(), arch, heads), 2 * B * (2 * d * N + 3 * N * C) + k * P)):
        step = make_program(rule, opt, arch, None).step
        args = (params, opt.init(params), rule.init(key, params), batch, key)
        counted[name] = cost.compiled_cost(jax.jit(step).lower(*args).compile())["flops"]
        assert abs(counted[name] / analytic - 1) < 0.05, (name, counted[name], analytic)
    # the optimizer's share is what the per-parameter constants say, up to a few scalar ops (Adam's step count and
    # bias-correction powers)
    for name, k in OPT_FLOPS_PER_PARAM.items():
        o = make_optimizer(OptimizerConfig(name=name), 100, None)
        opt_only = cost.compiled_cost(jax.jit(lambda g, s, q: optax.apply_updates(q, o.update(g, s, q)[0]))
                                      .lower(params, o.init(params), params).compile())["flops"]
        assert abs(opt_only - k * P) < 100, (name, opt_only, k * P)


# ----------------------------------------------------------------------------------------------- learning


def test_pepita_learns_the_prototypes_task_through_the_real_engine(tmp_path):
    """End to end (sweep CLI → engine → scanned, vmapped updates): a 256-32-10 net without biases trained by PEPITA
    with the ICML momentum recipe reaches far above the 10 % chance level on 6,400 samples."""
    from localrules import sweep

    rc = sweep.main(["rule=pepita", "arch.bias=false", "arch.hidden=[32]", "task=prototypes", "task.test_size=500",
                     "optimizer.name=momentum", "optimizer.lr=0.1", "batch_size=32", "samples=3200", "eval_every=100",
                     "name=pepita_learns", f"out={tmp_path}", "progress=false", "timing_steps=0", "checkpoint=false"])
    assert rc == 0
    rec = json.loads((tmp_path / "pepita_learns" / "results.jsonl").read_text().splitlines()[-1])
    assert rec["status"] == "ok"
    assert rec["final"]["acc"][0] > 0.6, rec["final"]["acc"]


# ----------------------------------------------------------------------------------------------- presets

_INPUT_SHAPES = {"MnistConfig": (28, 28, 1), "Cifar10Config": (32, 32, 3), "Cifar100Config": (32, 32, 3),
                 "FashionMnistConfig": (28, 28, 1)}


def test_every_pepita_preset_parses_and_builds_its_rule_without_the_dataset():
    """The paper presets cannot run offline (MNIST/CIFAR files are absent), so check what can be: each parses,
    has no biases, and its rule config builds on the architecture the real task would give."""
    import glob
    import os

    from localrules import architectures, sweep

    files = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "sweeps", "pepita_*.toml")))
    assert len(files) >= 8
    for f in files:
        cfgs, _ = sweep.parse([f"sweep={f}"])
        for c in cfgs:
            assert c.arch.bias is False, f
            shape = _INPUT_SHAPES[type(c.task).__name__]
            n_out = 100 if "Cifar100" in type(c.task).__name__ else 10
            arch = architectures.build(c.arch, shape, n_out)
            if isinstance(c.rule, pepita.Config):
                pepita.make(c.rule, arch, core.single_head("y", n_out))
