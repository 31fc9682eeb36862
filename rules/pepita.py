"""PEPITA: error-driven input modulation, two forward passes and no backward pass.

G. Dellaferrera, G. Kreiman. *Error-driven Input Modulation: Solving the Credit Assignment Problem without a Backward
Pass.* ICML 2022 (arXiv:2201.11665); variants from R. F. Srinivasan et al. *Forward Learning with Top-Down Feedback:
Empirical and Analytical Characterization.* ICLR 2024 (arXiv:2302.05440v2). Spec: ``shared/specs/pepita.md``.

**Notation** (paper's, batch rows): X (B, d) input, H_ℓ (B, N_ℓ) the output of parameter layer ℓ = 1..L after its
ReLU, the dropout mask M_ℓ and (optionally) the activity normalisation; H_0 = X; Y = softmax(H_{L−1} W_Lᵀ) per head;
T one-hot targets (zero rows for unlabelled heads); F (d, C) the fixed feedback matrix. The lab stores dense weights
as ``w = W_ℓᵀ`` (N_{ℓ−1}, N_ℓ).

**One step** (``output_mode="modulated"``, the ICML rule)::

    pass 1     H_ℓ = M_ℓ ⊙ relu(H_{ℓ−1} W_ℓᵀ),  Y = softmax(H_{L−1} W_Lᵀ),  E = Y − T
    modulate   X′ = X ± φ(E) Fᵀ          (+ ICML code, − ICLR code; φ = identity, or sign for ERINsign)
    pass 2     same W, same masks M_ℓ → H′_ℓ, Y′, E′ = Y′ − T
    hidden     ΔW_ℓ = (H_ℓ − H′_ℓ)ᵀ H′_{ℓ−1} / B           (H′_0 = X′: the presynaptic factor is *modulated*)
    last       ΔW_L = Eᵀ H′_{L−1} / B   or   E′ᵀ H′_{L−1} / B   (``last_layer_error`` = e | e_mod)
    apply      W ← W − η ΔW   (momentum 0.9 in both papers' recipes: the run's ``optimizer.*``)

**Descent sign.** PEPITA's update is already a descent direction (W ← W − ηΔW), so the pseudo-gradient returned is
+ΔW (+λW with ``weight_decay``); ``optimizer.name=momentum`` then performs v ← μv + ΔW, W ← W − ηv, the ICLR code's
(PyTorch SGD) form. The ICML code's v ← μv + ηΔW, W ← W − v is identical while η is constant and differs only for
the few steps after an lr drop (Deviations). There is no loss and no autodiff of a loss: every update is an explicit
product of activities (``local.param_grad`` evaluates hᵀδ through the layer's own ``apply``; it is linear in δ and
does not differentiate through the network).

**ICLR 2024 variants** (``output_mode``):

* ``forward``: presynaptic factors from pass 1: ΔW_ℓ = (H_ℓ − H′_ℓ)ᵀ H_{ℓ−1}/B, ΔW_L = E(′)ᵀ H_{L−1}/B.
* ``mixed`` (PEPITA-Hebbian, as the paper defines it): ΔW_ℓ = (H_ℓᵀ H_{ℓ−1} − H′_ℓᵀ H′_{ℓ−1})/B,
  ΔW_L = (Yᵀ H_{L−1} − Tᵀ H′_{L−1})/B. (The released code computes these and then overwrites them with the
  ``modulated`` rule, ``ravifrancesco/PEPITA@6f786f7/pepita/models/FCnet.py`` ``modulated_forward``: a preset that
  must match that code uses ``modulated``.)
* ``mixed_tl`` (PEPITA-time-local): the Hebbian half G₁ = H_ℓᵀ H_{ℓ−1}/B (last layer Yᵀ H_{L−1}/B) is applied
  right after pass 1, W̃ = W − η_tl G₁; pass 2 runs on W̃ and gives the anti-Hebbian half G₂ = −H̃′_ℓᵀ H̃′_{ℓ−1}/B
  (last layer −Tᵀ H̃′_{L−1}/B). The rule returns G₁ + G₂, so with ``optimizer.name=sgd`` and η = ``tl_lr`` the net
  effect is exactly the reference's two optimiser steps (Deviations for momentum).
* ``weight_decay`` λ: the SGD weight decay of the ICLR code, λW added to ΔW before the optimizer (the same as
  ``optimizer.weight_decay`` with sgd/momentum; kept here so a PEPITA config is self-contained).
* ``act_norm``: after each hidden ReLU (and dropout), divide the activity by the Frobenius norm of the whole batch
  matrix (``batch_frobenius``, the reference's ``Normalization`` layer: ``X / torch.linalg.norm(X)``) or of each
  sample (``per_sample``). It is part of the network, so inference applies it too.
* ``weight_mirroring`` (adaptive feedback alignment view; needs ``F_init="normal_product"``, F = B_0 B_1 ⋯ B_{L−1}):
  for each factor B_l (N_l × N_{l+1}) paired with forward layer l+1, draw ξ = σ_ξ·N(0, I) (B, N_l), subtract its
  scalar mean, ŷ = layer_{l+1}(ξ) (linear, dropout, ReLU [, norm]; per-head softmax at the output);
  B_l ← B_l + η_WM ξᵀŷ/B − η_WM λ_WM B_l; then every B_l is scaled by (σ*/std(F))^{1/L}, σ* = F_scale·√(2/d), so
  that std(F) = σ* again. Mirroring runs on every step of the first ``wm_pre_epochs`` epochs (with no PEPITA
  update) and of every epoch e with (e+1) mod ``wm_every_epochs`` = 0.

**Feedback matrix F** (``F_init``; d is the *input* dimension, not a layer's fan-in):
``uniform`` U(±F_scale·√(6/d)) (std F_scale·√(2/d); ICML code), ``uniform_positive`` U(0, F_scale·√(6/d)) (ICML conv
script without ``--B_mean_zero``), ``normal_product`` (ICLR code) a product of L factors N(0, s²) along the chain
d → hidden widths → C with s = (F_scale·√(2/d)/√(Π hidden widths))^{1/L}, so std(F) = F_scale·√(2/d) again.
``error_fn="sign"`` (ERINsign) multiplies F by a further 0.1, as the ICML code does. F changes only under mirroring.

**Dropout**: inverted, keep 1 − ``dropout``, on the outputs of hidden parameter layers only; the masks are drawn
once per step from the update's key (:func:`draw_masks`) and used in both passes; none at the output and none in
``predict`` (one clean pass, no modulation).

**Other layers.** Parameter-free layers (flatten, pool, reshape) are passed exactly in both passes. For a conv layer
the same rule is evaluated through the layer's own ``apply``: ΔW = Σ over batch and output positions of
(H − H′) ⊗ (modulated input patch) / B, the dense rule with tied weights. ``conv_double_batch_average`` divides
this by (positions × B), as the ICML conv code does (mean over batch and positions, then ÷B again), and
``conv_reference_sign`` flips its sign, as the ICML conv code's kernel update (it *adds* η·mean[(H − H′) ⊗ X′]/B
while its FC layers subtract; ``GiorgiaD/PEPITA@3fe03d80b642/main_pytorch.py``). Both are off by default and on in
the ``pepita_icml_conv_*`` presets.

**Biases.** The papers' networks have none (use ``arch.bias=false``; every preset does). If the architecture has
biases they are treated as weights from a constant input of 1, so Δb = Σ_n δ_n with δ the layer's error term
above (e.g. Σ_n (H_ℓ − H′_ℓ)_n / B); this is an extension, not part of either paper.

**Multiple heads.** E = softmax − onehot per labelled head (:func:`localrules.core.output_error`), zero on
unlabelled heads, so only labelled heads modulate the input and drive the output layer.

**Compute.** For a d-N-C net and batch B the update costs 2B(3dN + (2 + m)NC + Cd) FLOPs: pass 1 (2B(dN + NC)),
the projection E Fᵀ (2BCd), pass 2 up to H′ (2BdN; its output layer, 2BNC, only for ``last_layer_error=e_mod``:
m = 1, else XLA drops it) and the outer products (2BdN + 2BNC); backprop on the same net costs 2B(2dN + 3NC) (no
input gradient), so "no backward pass" is ≈ 1.5× backprop's FLOPs at 784-1024-10. The compiled training step adds
the optimizer (4P FLOPs for momentum, 13P for Adam, P = dN + NC); XLA's counts at B = 1000 with momentum: 4.95 vs
3.28 GFLOP, +1.5 % (dropout's random bits; +0.2 % without dropout) and +0.1 % of these formulas
(``tests/test_pepita.py`` checks B = 100). Nor does it save memory: pass 1's activity H_ℓ must live until pass 2
reaches layer ℓ (for H_ℓ − H′_ℓ), which is what backprop keeps for its backward pass, and pass 2's H′_ℓ is live
beside it. Compiled step at B = 1000, CPU (``docs/compute.md``): temporaries 11.7 MiB without dropout (three B×N
buffers) vs backprop's 7.8 MiB (two), 19.5 MiB with the paper's dropout 0.1 (the mask's random bits); peak 27.2 /
35.0 vs 23.2 MiB.

**Reference code.** ``GiorgiaD/PEPITA@3fe03d80b642``: ``functions.py`` (NumPy FC; F = 0.05·U(±√(6/d)), ×0.1 for
ERINsign; last layer uses the modulated error e′; momentum v ← 0.9v + ηΔW), ``Tutorial_PEPITA_FullyConnectedNets_
CIFAR-10.ipynb``, ``main_pytorch.py`` + ``models.py`` (conv). ``ravifrancesco/PEPITA@6f786f7ba72d``:
``pepita/models/FCnet.py`` (x − Fe, last layer e, ``output_mode``), ``pepita/models/layers/{RandomFeedback,
Normalization,ConsistentDropout}.py``, ``pepita/core/trainer.py`` (mirroring schedule, SGD for the factors).

**Deviations** (each with its reason):

1. Momentum form: the lab's optimizer applies η after the velocity (ICLR/PyTorch form); the ICML code applies it
   before. Identical at constant η; after each lr drop the ICML velocity still carries the old η for ~1/(1−μ) = 10
   steps. The optimizer belongs to the run, not the rule.
2. The ICML NumPy code multiplies hidden deltas by the dropout mask a second time in its learning step (surviving
   deltas scaled by 1/0.81 instead of 1/0.9); this rule follows the paper's equations (mask once, in H).
3. Weight mirroring uses the forward weights *before* this step's update (the ICLR trainer mirrors after
   ``opt_w.step()``): the optimizer runs after the rule. One step of lag.
4. The mirroring rescale multiplies every factor by (σ*/std(F))^{1/L} computed once, so std(F) = σ* exactly (the
   spec's statement). ``RandomFeedback.normalize_B`` recomputes std(F) after scaling each factor by √(σ*/std(F)),
   which reaches σ* exactly only for L = 1. std uses the unbiased estimator (ddof = 1), as ``torch.std``.
5. ``mixed_tl`` combines the two half-steps into one optimizer step: exact for plain SGD with η = ``tl_lr``; with
   momentum the reference takes two momentum steps (and its intermediate W̃ includes the momentum term), here W̃ =
   W − η_tl G₁ and one momentum step applies G₁ + G₂. ``tl_lr`` does not follow the run's lr schedule.
6. Activity norms are guarded, ‖·‖ → max(‖·‖, 1e-12), so an all-zero ReLU batch gives 0 instead of NaN.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp

from localrules import core, local


@dataclasses.dataclass(frozen=True)
class Config:
    """PEPITA (ICML 2022) and its ICLR 2024 variants; defaults are the ICML paper's rule (see module docstring)."""

    modulation_sign: Literal["+", "-"] = "+"
    """X′ = X + F·e ("+", ICML code, ``functions.py``) or X − F·e ("-", ICLR code, ``FCnet.modulated_forward``)."""
    last_layer_error: Literal["e", "e_mod"] = "e"
    """Output-layer update from the first-pass error e (paper pseudocode, ICML conv code, ICLR code) or the
    modulated-pass error e′ (ICML FC NumPy code and tutorial; the ``pepita_icml_fc_*`` presets)."""
    F_init: Literal["uniform", "uniform_positive", "normal_product"] = "uniform"
    """Feedback matrix: U(±s√(6/d)) (ICML), U(0, s√(6/d)) (ICML conv script without --B_mean_zero), or a product of
    per-layer normal factors with the same std (ICLR ``B_INIT=normal``); s = ``F_scale``, d = input dimension."""
    F_scale: float = 0.05
    """``Bstd`` of both reference codes: std(F) = F_scale·√(2/d)."""
    error_fn: Literal["identity", "sign"] = "identity"
    """Error projected onto the input: e (ERIN = PEPITA) or sign(e) with F × 0.1 (ERINsign, ICML ``functions.py``);
    the output layer's update always uses the error itself."""
    output_mode: Literal["modulated", "forward", "mixed", "mixed_tl"] = "modulated"
    """ICML rule (``modulated``), or the ICLR variants: presynaptic factors from pass 1 (``forward``), PEPITA-Hebbian
    (``mixed``), PEPITA-time-local (``mixed_tl``)."""
    dropout: float = 0.1
    """Drop probability on hidden layers, same mask in both passes (0.1 in both reference codes)."""
    weight_decay: float = 0.0
    """λ: λW added to ΔW before the optimizer (ICLR code's SGD weight_decay; its config 1e-4, README examples 0;
    not part of the ICML recipe)."""
    act_norm: Literal["off", "batch_frobenius", "per_sample"] = "off"
    """Divide each hidden activity by the Frobenius norm of the batch matrix (ICLR ``Normalization`` layer) or of
    each sample; off in the ICML recipe."""
    weight_mirroring: bool = False
    """Train the factors of F by weight mirroring (ICLR; needs ``F_init=normal_product``)."""
    wm_lr: float = 0.01
    """η_WM, the factors' SGD learning rate (ICLR ``config.py`` WMLR)."""
    wm_wd: float = 1e-4
    """λ_WM, the factors' SGD weight decay (ICLR ``config.py`` WMWD)."""
    wm_noise: float = 0.1
    """σ_ξ, amplitude of the mirroring noise (ICLR ``FCnet.mirror_weights`` noise_amplitude)."""
    wm_pre_epochs: int = 2
    """Epochs of mirroring only, without PEPITA updates, at the start (ICLR ``config.py`` PRE_MIRROR)."""
    wm_every_epochs: int = 100
    """Mirror on every step of epochs e with (e+1) mod this = 0 (ICLR ``config.py`` MIRROR); 0 = never after the
    pre-mirroring epochs."""
    steps_per_epoch: int = 0
    """Steps in one epoch (training examples // batch_size), to place the mirroring epochs; required when
    ``weight_mirroring`` is on unless wm_pre_epochs = 0 and wm_every_epochs = 1 (mirror on every step)."""
    tl_lr: float = 0.01
    """η_tl: learning rate of the Hebbian half-step inside ``mixed_tl``; set it to ``optimizer.lr`` (ICLR default
    lr 0.01)."""
    conv_double_batch_average: bool = False
    """Conv ΔW as the ICML conv code: mean over batch and output positions, then ÷B again (off: Σ positions, ÷B)."""
    conv_reference_sign: bool = False
    """Flip the conv ΔW's sign as the ICML conv code does (its kernels take +η·ΔW while its FC layers take −η·ΔW)."""


class PepitaState(NamedTuple):
    F: jax.Array
    """(d, C) feedback matrix projecting the output error onto the flattened input."""
    factors: tuple
    """``normal_product``: the factors B_0 … B_{L−1} (F = their product); ``()`` otherwise."""
    step: jax.Array
    """int32 count of updates taken (places the weight-mirroring epochs)."""


def _check(cfg: Config, arch) -> None:
    if not 0.0 <= cfg.dropout < 1.0:
        raise ValueError(f"rule.dropout={cfg.dropout}: the drop probability must be in [0, 1)")
    if cfg.F_scale <= 0:
        raise ValueError(f"rule.F_scale={cfg.F_scale}: must be > 0 (the reference Bstd is 0.05)")
    if cfg.weight_decay < 0:
        raise ValueError(f"rule.weight_decay={cfg.weight_decay}: must be ≥ 0")
    if not arch.param_layers:
        raise ValueError(f"rule=pepita needs an architecture with weights; {arch.name} has none")
    if cfg.F_init == "normal_product" and any(arch.layers[i].kind != "dense" for i in arch.param_layers):
        raise ValueError("rule.F_init=normal_product follows the ICLR fully connected code and needs dense layers "
                         f"only; {arch.name} has conv layers: use rule.F_init=uniform")
    if cfg.weight_mirroring:
        if cfg.F_init != "normal_product":
            raise ValueError("rule.weight_mirroring=true needs per-layer factors: set rule.F_init=normal_product")
        if cfg.wm_pre_epochs < 0 or cfg.wm_every_epochs < 0:
            raise ValueError("rule.wm_pre_epochs and rule.wm_every_epochs must be ≥ 0")
        every_step = cfg.wm_pre_epochs == 0 and cfg.wm_every_epochs == 1
        if cfg.steps_per_epoch <= 0 and not every_step:
            raise ValueError("rule.weight_mirroring=true places mirroring by epochs: set rule.steps_per_epoch="
                             "<training examples // batch_size> (e.g. 937 for 60000 images at batch 64), or mirror "
                             "on every step with rule.wm_pre_epochs=0 rule.wm_every_epochs=1")


def draw_masks(cfg: Config, arch, shapes: dict, key: jax.Array) -> dict:
    """Inverted-dropout masks {layer index: (B, …) in {0, 1/(1−p)}} for the hidden parameter layers.

    ``shapes`` maps each hidden parameter layer to its output shape. ``update`` calls this with its own ``key``, so
    a step's masks are ``draw_masks(cfg, arch, shapes, key)``; they serve both passes.
    """
    keep = 1.0 - cfg.dropout
    out = {}
    for i in sorted(shapes):
        k = jax.random.fold_in(key, i)
        out[i] = jax.random.bernoulli(k, keep, shapes[i]).astype(jnp.float32) / keep
    return out


def normalise(cfg: Config, y: jax.Array) -> jax.Array:
    """``act_norm``: y / ‖y‖ over the whole batch matrix (``batch_frobenius``) or per sample (``per_sample``)."""
    if cfg.act_norm == "off":
        return y
    if cfg.act_norm == "batch_frobenius":
        return y / jnp.maximum(jnp.sqrt(jnp.sum(y * y)), 1e-12)
    n = jnp.sqrt(jnp.sum(y * y, axis=tuple(range(1, y.ndim)), keepdims=True))
    return y / jnp.maximum(n, 1e-12)


def target_std(cfg: Config, arch) -> float:
    """std(F) of the initial feedback matrix: F_scale·√(2/d), × 0.1 for ``error_fn="sign"``."""
    return cfg.F_scale * math.sqrt(2.0 / math.prod(arch.input_shape)) * (0.1 if cfg.error_fn == "sign" else 1.0)


def product(factors) -> jax.Array:
    """F = B_0 B_1 ⋯ B_{L−1}."""
    F = factors[0]
    for b in factors[1:]:
        F = F @ b
    return F


def softmax_heads(heads: core.Heads, z: jax.Array) -> jax.Array:
    return jnp.concatenate([jax.nn.softmax(heads.slice(z, j), axis=-1) for j in range(len(heads.sizes))], -1)


def mirror(cfg: Config, arch, heads: core.Heads, params, factors: tuple, xis, key: jax.Array):
    """One weight-mirroring step of every factor of F, then the global rescale; returns ``(factors, F)``.

    Factor B_l (N_l, N_{l+1}) pairs with the l-th parameter layer: ξ = ``xis[l]`` minus its scalar mean,
    ŷ = that layer applied to ξ (dropout with masks from ``key`` and ``act_norm`` on hidden layers, per-head softmax
    at the output), B_l ← B_l + η ξᵀŷ/B − ηλ B_l; then every B_l is scaled by (σ*/std(Π B_l))^{1/L}.
    """
    P = arch.param_layers
    new = []
    for l, i in enumerate(P):
        xi = xis[l] - jnp.mean(xis[l])
        _, y = arch.layers[i].apply(params[i], xi)
        if i == P[-1]:
            y = softmax_heads(heads, y)
        else:
            if cfg.dropout > 0:
                y = y * draw_masks(cfg, arch, {i: y.shape}, jax.random.fold_in(key, l))[i]
            y = normalise(cfg, y)
        Bl = factors[l]
        new.append(Bl + cfg.wm_lr * (xi.T @ y) / xi.shape[0] - cfg.wm_lr * cfg.wm_wd * Bl)
    scale = (target_std(cfg, arch) / jnp.std(product(new), ddof=1)) ** (1.0 / len(new))
    new = tuple(b * scale for b in new)
    return new, product(new)


def make(cfg: Config, arch, heads: core.Heads) -> core.Rule:
    _check(cfg, arch)
    layers = arch.layers
    P = arch.param_layers
    last = P[-1]
    hidden = tuple(P[:-1])
    d = math.prod(arch.input_shape)
    C = heads.total
    sign = 1.0 if cfg.modulation_sign == "+" else -1.0

    def norm(y):
        return normalise(cfg, y)

    def forward(params, x, masks):
        """One pass: logits, and per layer its input ``xs[i]`` and output ``hs[i]`` (after mask and norm)."""
        xs, hs = [], []
        h = x
        for i, layer in enumerate(layers):
            xs.append(h)
            _, y = layer.apply(params[i], h)
            if i in hidden:
                if masks is not None:
                    y = y * masks[i]
                y = norm(y)
            hs.append(y)
            h = y
        return h, xs, hs

    def pg(i, p, x, delta):
        """hᵀδ for layer i (descent sign), with the conv options of the ICML conv code."""
        g = local.param_grad(layers[i], p, x, delta)
        if layers[i].kind == "conv":
            f = 1.0
            if cfg.conv_double_batch_average:
                f = f / (math.prod(delta.shape[1:-1]) * delta.shape[0])
            if cfg.conv_reference_sign:
                f = -f
            if f != 1.0:
                g = jax.tree.map(lambda a: a * f, g)
        return g

    def sub(a, b):
        return jax.tree.map(jnp.subtract, a, b)

    # ------------------------------------------------------------------ feedback matrix

    def chain_sizes():
        return [d] + [layers[i].meta["d_out"] for i in hidden] + [C]

    def init_fn(key, params):
        bound = cfg.F_scale * math.sqrt(6.0 / d) * (0.1 if cfg.error_fn == "sign" else 1.0)
        if cfg.F_init == "uniform":
            F = jax.random.uniform(key, (d, C), jnp.float32, -bound, bound)
            factors = ()
        elif cfg.F_init == "uniform_positive":
            F = jax.random.uniform(key, (d, C), jnp.float32, 0.0, bound)
            factors = ()
        else:
            sizes = chain_sizes()
            L = len(sizes) - 1
            s = (target_std(cfg, arch) / math.sqrt(math.prod(sizes[1:-1]))) ** (1.0 / L)
            keys = jax.random.split(key, L)
            factors = tuple(s * jax.random.normal(k, (a, b), jnp.float32)
                            for k, a, b in zip(keys, sizes[:-1], sizes[1:]))
            F = product(factors)
        return PepitaState(F, factors, jnp.zeros((), jnp.int32))

    # ------------------------------------------------------------------ update

    def update_fn(params, state, batch, key):
        x, y = batch.x, batch.y
        B = x.shape[0]
        if cfg.dropout > 0:
            shapes = {i: s.shape for i, s in zip(hidden, _hidden_shapes(params, x))}
            masks = draw_masks(cfg, arch, shapes, key)
        else:
            masks = None

        logits, xs, hs = forward(params, x, masks)
        E = core.output_error(logits, y, heads)  # (B, C) = Y − T on labelled heads
        T = heads.one_hot(y)
        Y = E + T  # softmax on labelled heads, 0 on unlabelled ones
        proj = jnp.sign(E) if cfg.error_fn == "sign" else E
        x_mod = x + sign * (proj @ state.F.T).reshape(x.shape)

        grads = [{} for _ in layers]
        if cfg.output_mode == "mixed_tl":
            g1 = {i: pg(i, params[i], xs[i], (Y if i == last else hs[i]) / B) for i in P}
            tilde = tuple(jax.tree.map(lambda w, g: w - cfg.tl_lr * g, params[i], g1[i]) if i in g1 else params[i]
                          for i in range(len(layers)))
            logits2, xs2, hs2 = forward(tilde, x_mod, masks)
            for i in P:
                g2 = pg(i, tilde[i], xs2[i], (T if i == last else hs2[i]) / B)
                grads[i] = sub(g1[i], g2)
        else:
            logits2, xs2, hs2 = forward(params, x_mod, masks)
            E2 = core.output_error(logits2, y, heads)
            pre = xs if cfg.output_mode == "forward" else xs2  # presynaptic factors
            for i in P:
                if cfg.output_mode == "mixed":
                    if i == last:
                        grads[i] = sub(pg(i, params[i], xs[i], Y / B), pg(i, params[i], xs2[i], T / B))
                    else:
                        grads[i] = sub(pg(i, params[i], xs[i], hs[i] / B), pg(i, params[i], xs2[i], hs2[i] / B))
                elif i == last:
                    e = E if cfg.last_layer_error == "e" else E2
                    grads[i] = pg(i, params[i], pre[i], e / B)
                else:
                    grads[i] = pg(i, params[i], pre[i], (hs[i] - hs2[i]) / B)
        if cfg.weight_decay > 0:
            for i in P:
                grads[i] = jax.tree.map(lambda g, w: g + cfg.weight_decay * w, grads[i], params[i])

        metrics = {"loss": core.loss(logits, y, heads),
                   "modulation_ratio": jnp.linalg.norm((x_mod - x).reshape(-1))
                   / jnp.maximum(jnp.linalg.norm(x.reshape(-1)), 1e-12)}
        new_state = state._replace(step=state.step + 1)
        if cfg.weight_mirroring:
            epoch = state.step // cfg.steps_per_epoch if cfg.steps_per_epoch > 0 else jnp.zeros((), jnp.int32)
            pre_phase = epoch < cfg.wm_pre_epochs
            mirror_now = pre_phase
            if cfg.wm_every_epochs > 0:
                mirror_now = mirror_now | ((epoch + 1) % cfg.wm_every_epochs == 0)
            k_xi, k_drop = jax.random.split(jax.random.fold_in(key, 10_000))
            xis = [cfg.wm_noise * jax.random.normal(k, (B, f.shape[0]), jnp.float32)
                   for k, f in zip(jax.random.split(k_xi, len(P)), state.factors)]
            factors, F = mirror(cfg, arch, heads, params, state.factors, xis, k_drop)
            factors = tuple(jnp.where(mirror_now, a, b) for a, b in zip(factors, state.factors))
            F = jnp.where(mirror_now, F, state.F)
            new_state = new_state._replace(F=F, factors=factors)
            grads = [jax.tree.map(lambda g: jnp.where(pre_phase, jnp.zeros_like(g), g), g) for g in grads]
            metrics["F_std"] = jnp.std(F, ddof=1)
        return tuple(grads), new_state, metrics

    def _hidden_shapes(params, x):
        _, _, hs = jax.eval_shape(lambda p, z: forward(p, z, None), params, x)
        return [hs[i] for i in hidden]

    def predict_fn(params, state, x):
        return forward(params, x, None)[0]

    return core.Rule(init_fn, update_fn, predict_fn)


RULE = core.RuleSpec("pepita", Config, make, aliases=(),
                     doc="two forward passes, the second on the error-modulated input (Dellaferrera & Kreiman 2022)")
