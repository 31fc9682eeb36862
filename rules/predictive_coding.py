r"""Predictive coding networks (PCNs) for discriminative learning, at parity with the PCX benchmark.

Reference: L. Pinchetti, C. Qi, O. Lokshyn, …, T. Salvatori. *Benchmarking Predictive Coding Networks — Made
Simple.* ICLR 2025, arXiv:2407.01163 ("PCX"). Reference code ``liukidar/pcx`` at tag ``v0.6.1-public`` (3e974215),
``examples/s4_1_discriminative_mode/{MLP,VGG5,VGG7}/<dataset>/{PC_SE,PC_CE,iPC_SE}.py`` (``train_on_batch``) and
``pcx/predictive_coding/_energy.py`` (``se_energy``, ``ce_energy``); centred nudging from PR #52 (head c722834e,
``hps/*/*_PC-CN_*``). Also Whittington & Bogacz, Neural Computation 29(5), 2017 (``convention="wb"``); Millidge,
Tschantz & Buckley, Neural Computation 34(6), 2022 (``fixed_prediction``); Salvatori et al., ICLR 2024 (iPC).

**Value nodes and blocks.** The architecture is cut into L *blocks*, one per layer with parameters. Block k is
that layer followed by the parameter-free layers after it (pool, flatten), so a VGG block is conv → act → pool
exactly as in PCX's ``ConvNet.feature_layers``; the parameter-free layers before the first weight layer (flatten,
input scaling) act on the clamped input H₀ = X. A value node H_k sits at the output of block k (k = 1..L);
H_L, the output node, has ``heads.total`` units. The prediction of node k is U_k = g_k(θ_k, H_{k−1}), with g_k
the block's own ``apply`` (so the same code serves dense and conv layers: every derivative below is a
``jax.vjp`` of g_k, as in :mod:`localrules.local`).

**Energy** (PCX convention, activation inside the prediction; for a dense block U_l = f(A_l), A_l = H_{l−1}W_l + b_l,
errors ε_l = H_l − U_l in activation space):

.. math::

    E_i = \sum_{l<L} \tfrac12\|ε_{i,l}\|^2 + w_{out} E_{L,i},\qquad
    E_{L,i} = \tfrac12\|ε_{i,L}\|^2 \ (\texttt{se}) \quad\text{or}\quad
              -\textstyle\sum_k H_{i,L,k}\log\mathrm{softmax}(U_{i,L})_k \ (\texttt{ce}),

with the output terms summed over labelled heads only (softmax per head). The output signal is
r_L = −∂(w_out E_L)/∂U_L (``se``: w_out ε_L; ``ce``: w_out (H_L − softmax(U_L)) for one-hot H_L) and hidden
r_l = ε_l; δ_l = r_l ⊙ f′(A_l) for a dense block (the VJP of g_l in general).

**One update** (PCX ``train_on_batch``):

1. Forward initialisation: H_l ← U_l⁰ for every hidden node (all hidden errors 0); the output node is set from the
   target and then frozen (``nudge`` below). ``h_init="zero"|"random"`` start the hidden nodes at 0 or N(0, 1).
2. The state optimiser ``optax.sgd(x_lr, momentum=x_momentum)`` (heavy ball: v ← μv + G, H ← H − ηv) is
   initialised afresh for every batch (PCX ``optim_h.init`` per batch), so no momentum leaks across batches.
3. T inference steps (a ``lax.scan``; see Compute): every hidden node moves together on
   G_l = ∂E_i/∂H_{i,l} = ε_l − δ_{l+1} W_{l+1} (in general ε_l − VJP_{H}(g_{l+1})(r_{l+1})), all evaluated at the
   pre-step state. This is the **per-sample** gradient: PCX differentiates the batch-mean energy and multiplies by
   B (``optim_h.step(…, scale_by_batch_size=True)``), so the state step size does not depend on B
   (``state_grad="batch_mean"`` drops the ×B, for comparison). Input and output nodes never move.
4. Weight pseudo-gradient from the final state, recomputing every prediction:
   P_l = (1/β)·∂Ē/∂θ_l with Ē = (1/B)Σ_i E_i, i.e. for a dense block P_{W_l} = −(1/(βB)) H_{l−1}ᵀ δ_l and
   P_{b_l} = −(1/(βB)) Σ_rows δ_l: post-synaptic error times pre-synaptic value (VJP w.r.t. θ_l for conv blocks).
   P is a gradient of the energy, so it is already in the **descent** convention; the run's optax optimiser
   applies it (PCX: AdamW with a warm-up cosine schedule — presets, not rule fields).

Test-time prediction is the forward pass (PCX ``eval_on_batch``): without a label the feedforward state is the
energy minimum, so inference would change nothing.

**Nudging** (``nudge``; β_e per epoch e, see :func:`beta_at`):

* ``clamp`` (PC-SE / PC-CE): H_L = Y, β = 1.
* ``pn`` / ``nn`` (PCX positive / negative nudging): frozen H_L = U_L⁰ − β_e(U_L⁰ − Y) with
  β_e = factor·(β₀ + β_ir·e), then ``beta_clip``: ``clip`` to [−1, 1] (PCX MLP scripts) or ``pcx_vgg_flip``
  (|β| ≥ 1 → +1, PCX VGG scripts, which silently turn NN into clamping late in training). P × 1/β_e.
* ``pcx_cn`` (PR #52 "centred" nudging): as ``pn`` with β_e = s_e·min(1, β₀ + β_ir·e), s_e = ±1 per epoch
  (``cn_signs``, the signs of PR #52's ``*_beta.json``; random per epoch from the rule-state key when empty).
  Not EqProp's symmetric estimator.
* ``weighted``: H_L = Y, output energy × β (w_out = β), P × 1/β. As β → 0 and T → ∞ this tends to the
  backprop gradient (the equilibrium-propagation limit); PCX's frozen nudge does not (spec §2.4, tests 3a/3c).
* ``eqprop_centered`` (Laborieux et al. 2021): two weighted phases at ±β from the same forward init,
  P = (∂Ē/∂θ|₊β − ∂Ē/∂θ|₋β)/(2β). Not used by PCX.

**Variants.** ``incremental`` (iPC, PCX ``iPC_SE.py``): at each of the T steps one gradient of Ē at the current
(H, θ) moves both H (state optimiser, per sample) and θ (the rule's own weight optimiser ``ipc_*``, kept in the
rule state across batches, schedule counted in inference steps); the rule returns P = θ₀ − θ_T, which the run must
apply with ``optax.sgd(1.0)`` — the rule's ``optimizer`` hook installs exactly that, so the run's ``optimizer.*``
fields are unused under iPC. ``fixed_prediction`` (Millidge et al. 2022): predictions U_l and their derivatives
are held at the feed-forward point (θ-gradients use the feed-forward H_{l−1}⁰); with η_x = 1, μ_x = 0 and
T ≥ L − 1 the weight update equals the backprop gradient of the output energy exactly.

**Conventions.** ``convention="wb"`` (Whittington & Bogacz 2017, ngc-learn's PCN) puts the value nodes on the
*pre-activations*: μ_l = φ(X_{l−1})W_l + b_l, ε_l = X_l − μ_l, ∂F/∂X_l = ε_l − φ′(X_l) ⊙ ε_{l+1}W_{l+1},
∂F/∂W_l = −φ(X_{l−1})ᵀε_l/B (no φ′). φ is *not* applied to the clamped input node (X₀ = the input). The feedforward
map is the same network; the energies, hence dynamics and updates, differ from PCX's.

**Unlabelled heads** (y = −1): a head without a label has no target; its output units are left free. A free
output node has no children, so its energy minimum is H = U, i.e. zero error — implemented by masking that head's
output energy (SE and CE alike). Such a sample still trains the hidden layers through its labelled heads.

**Compute.** Block 1 reads only the clamped input, so its prediction (and VJP) is computed once per update, not
per step; step 1 is peeled off the loop, because from the forward initialisation its predictions are the forward
pass already computed. One update is then ≈ 2F + T·2(F − F₁) FLOPs (F: one forward pass, F₁: block 1's share):
forward + T × (forward + input-VJP of blocks 2..L) + parameter-VJPs once. Measured by the compiler, at batch 128:
PCX MLP 784-128-128-128-10 PC-SE T = 5, 1.30 MFLOP/sample vs backprop's 0.63 (≈ 0.90 + 0.23·T × backprop: the
784-wide first layer is hoisted); VGG-5 T = 7, 5.1 vs 0.98 GFLOP/sample (≈ (2 + 2T)/3 × backprop, block 1 is
cheap there). XLA counts a loop body once, so the rule's ``cost_config`` sets ``unroll=True`` and the runner counts
that twin: the same arithmetic with each step in its own single-trip while loop (a plainly unrolled loop lets CPU
fusion recompute the momentum chain of all earlier steps inside each later one, a cost quadratic in T that the
rolled loop never pays). ``tests/test_predictive_coding.py`` checks the count is affine in T.

**Deviations from PCX.** (1) Nothing is unrolled in Python: inference is a ``lax.scan`` (PCX unrolls T in
``pxf.jit``); same arithmetic. (2) In iPC the state and weight optimisers get separate gradient trees (PCX feeds one
tree to both, pcx#67). (3) The per-epoch β needs the epoch: the rule counts its own updates and divides by
``steps_per_epoch`` (a rule sees no task), which presets set. (4) A ``pcx_cn`` sign list shorter than the run is
reused cyclically (PCX's script would raise IndexError on two published schedules). (5) Unlabelled heads (above)
do not exist in PCX. (6) The weight schedule (AdamW, warm-up cosine from lr to 1.1·lr to 0.1·lr) belongs to the
run's optimiser; the lab's ``warmup_cosine`` starts and ends at 0 (presets: ``sweeps/pc_pcx_*.toml``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from localrules import core

NUDGES = ("clamp", "pn", "nn", "pcx_cn", "weighted", "eqprop_centered")
_FROZEN_NUDGES = ("pn", "nn", "pcx_cn")


@dataclasses.dataclass(frozen=True)
class Config:
    """Predictive coding (PCX). Defaults: PCX's Fashion-MNIST PC-SE MLP configuration
    (``hps/MLP/FashionMNIST/MLP_PC-SE_FashionMNIST.yaml``), weight optimiser aside (a run/preset setting)."""

    T: int = 5
    """Inference steps per batch (static; PCX ``hp/T``, FMNIST PC-SE: 5)."""
    x_lr: float = 0.0261
    """State step size η_x of the value-node SGD (PCX ``hp/optim/x/lr``, FMNIST PC-SE: 0.02607)."""
    x_momentum: float = 0.1
    """Heavy-ball momentum μ_x of the value-node SGD (PCX ``hp/optim/x/momentum``, FMNIST PC-SE: 0.1)."""
    output_energy: str = "se"
    """Output-node energy: se (½‖H_L − U_L‖², PCX ``se_energy``) | ce (−Σ H_L log softmax U_L, ``ce_energy``)."""
    convention: str = "pcx"
    """Value nodes on activations, U_l = f(A_l) (pcx, PCX code) | on pre-activations, μ_l = φ(X_{l−1})W_l (wb,
    Whittington & Bogacz 2017)."""
    state_grad: str = "per_sample"
    """per_sample: each node moves by its own sample's ∂E_i/∂H (PCX's ×B) | batch_mean: ∂Ē/∂H (1/B of it)."""
    h_init: str = "forward"
    """Hidden value-node initialisation: forward (PCX STATUS.INIT) | zero | random (N(0, 1))."""
    nudge: str = "clamp"
    """clamp | pn | nn | pcx_cn | weighted | eqprop_centered (module docstring; PCX scripts + PR #52)."""
    beta: float = 1.0
    """β₀ of the nudge schedule β_e = factor·(β₀ + β_ir·e) (PCX ``hp/beta``)."""
    beta_ir: float = 0.0
    """β increase per epoch (PCX ``hp/beta_ir``); needs steps_per_epoch."""
    beta_factor: float = 1.0
    """Sign/scale factor of β (PCX ``hp/beta_factor``: 1 for PN, −1 for NN)."""
    beta_clip: str = "clip"
    """How pn/nn limit β: clip to [−1, 1] (PCX MLP scripts) | pcx_vgg_flip (|β| ≥ 1 → +1, PCX VGG scripts)."""
    cn_signs: tuple[int, ...] = ()
    """pcx_cn: sign s_e ∈ {−1, 1} of epoch e (PR #52 ``*_beta.json`` signs; reused cyclically); () = random."""
    steps_per_epoch: int = 0
    """Updates per epoch, for per-epoch β (β_ir ≠ 0 or pcx_cn); 0 = every update is epoch 0. FMNIST at batch 128:
    468 (drop_last, as PCX)."""
    allow_ce_nudge: bool = False
    """Permit ce output with a frozen nudge (pn/nn/pcx_cn): U − β(U − Y) mixes logits with a one-hot (spec §6.7)."""
    incremental: bool = False
    """iPC (Salvatori et al. 2024; PCX ``iPC_SE.py``): weights step at every inference step (ipc_* fields)."""
    ipc_optimizer: str = "adamw"
    """iPC weight optimiser inside the rule: adamw (PCX) | sgd."""
    ipc_lr: float = 2.69e-4
    """iPC weight learning rate (PCX FMNIST iPC ``hp/optim/w/lr``: 2.691e-4; schedule init value)."""
    ipc_weight_decay: float = 1.16e-2
    """iPC AdamW weight decay (PCX FMNIST iPC ``hp/optim/w/wd``: 0.01162)."""
    ipc_schedule_steps: int = 0
    """iPC: updates in the run (PCX S = batches × epochs); > 0 gives PCX's warmup_cosine_decay_schedule(lr, 1.1·lr,
    0.1·S·T, S·T, 0.1·lr) over inference steps; 0 = constant lr."""
    fixed_prediction: bool = False
    """Hold predictions and their derivatives at the feed-forward point (Millidge, Tschantz & Buckley 2022)."""
    unroll: bool = False
    """Run the T steps as a Python loop (one single-trip while loop each) instead of a scan: the FLOP-counting
    twin the runner compiles via ``cost_config``; the arithmetic is identical."""


class PCState(NamedTuple):
    step: jax.Array
    """Updates taken so far (int32), for the per-epoch β schedule."""
    key: jax.Array
    """Rule-init key: the random per-epoch signs of pcx_cn come from fold_in(key, epoch)."""
    w_opt: Any
    """iPC: the rule's own weight-optimiser state; () otherwise."""


class Inference(NamedTuple):
    """What one update's inference produced (first phase for eqprop_centered): for tests and diagnostics."""

    hidden: tuple
    """Final hidden value nodes H_1..H_{L−1}."""
    momentum: tuple
    """Final heavy-ball buffers v_1..v_{L−1} of the state optimiser."""
    target: jax.Array
    """The frozen output node H_L."""
    grads: tuple
    """Pseudo-gradients (params tree, descent sign)."""
    params: tuple
    """iPC: θ_T after the inner weight steps; otherwise the given params."""
    w_opt: Any
    """iPC: the inner weight-optimiser state after the T steps; () otherwise."""
    metrics: dict


def _check(cfg: Config) -> None:
    def bad(msg):
        raise ValueError(f"predictive_coding: {msg}")

    for field, allowed in (("output_energy", ("se", "ce")), ("convention", ("pcx", "wb")),
                           ("state_grad", ("per_sample", "batch_mean")), ("h_init", ("forward", "zero", "random")),
                           ("nudge", NUDGES), ("beta_clip", ("clip", "pcx_vgg_flip")),
                           ("ipc_optimizer", ("adamw", "sgd"))):
        if getattr(cfg, field) not in allowed:
            bad(f"rule.{field}={getattr(cfg, field)!r}; choose one of {', '.join(allowed)}")
    if int(cfg.T) != cfg.T or cfg.T < 0:
        bad(f"rule.T={cfg.T}: the number of inference steps must be an integer ≥ 0")
    if cfg.x_lr < 0 or not 0 <= cfg.x_momentum < 1:
        bad(f"rule.x_lr={cfg.x_lr}, rule.x_momentum={cfg.x_momentum}: need x_lr ≥ 0 and 0 ≤ x_momentum < 1")
    if cfg.nudge == "clamp" and (cfg.beta, cfg.beta_ir, cfg.beta_factor) != (1.0, 0.0, 1.0):
        extra = " (and rule.allow_ce_nudge=true for ce output)" if cfg.output_energy == "ce" else ""
        bad(f"rule.beta={cfg.beta}, beta_ir={cfg.beta_ir}, beta_factor={cfg.beta_factor} have no effect with "
            f"nudge=clamp (β = 1); choose rule.nudge=pn|nn|pcx_cn|weighted{extra}")
    if cfg.nudge in _FROZEN_NUDGES and cfg.output_energy == "ce" and not cfg.allow_ce_nudge:
        bad(f"output_energy=ce with nudge={cfg.nudge}: H_L = U − β(U − Y) mixes logits with a one-hot and is "
            "meaningful only at β = 1; use nudge=clamp or weighted, or set rule.allow_ce_nudge=true")
    if cfg.nudge == "pn" and cfg.beta_factor <= 0:
        bad(f"nudge=pn needs rule.beta_factor > 0 (got {cfg.beta_factor}); negative nudging is nudge=nn")
    if cfg.nudge == "nn" and cfg.beta_factor >= 0:
        bad(f"nudge=nn needs rule.beta_factor < 0 (PCX uses −1; got {cfg.beta_factor})")
    if cfg.nudge in ("pn", "nn", "weighted", "eqprop_centered") and cfg.beta_factor * cfg.beta == 0:
        bad(f"nudge={cfg.nudge} needs β₀·factor ≠ 0 (the update is divided by β); got beta={cfg.beta}, "
            f"beta_factor={cfg.beta_factor}")
    if cfg.nudge == "pcx_cn":
        if cfg.beta <= 0:
            bad(f"nudge=pcx_cn needs rule.beta > 0 (the magnitude β₀; got {cfg.beta})")
        if any(s not in (-1, 1) for s in cfg.cn_signs):
            bad(f"rule.cn_signs={list(cfg.cn_signs)}: every sign must be -1 or 1")
    per_epoch = (cfg.nudge != "clamp" and cfg.beta_ir != 0) or (cfg.nudge == "pcx_cn" and len(cfg.cn_signs) != 1)
    if per_epoch and cfg.steps_per_epoch <= 0:
        bad("this β schedule changes per epoch; set rule.steps_per_epoch (updates per epoch, e.g. 468 for "
            "Fashion-MNIST at batch 128)")
    if cfg.incremental and (cfg.fixed_prediction or cfg.nudge == "eqprop_centered"):
        bad("incremental=true (iPC) cannot be combined with fixed_prediction or nudge=eqprop_centered")
    if cfg.incremental and cfg.ipc_lr <= 0:
        bad(f"rule.ipc_lr={cfg.ipc_lr}: iPC's weight learning rate must be > 0")


def beta_at(cfg: Config, epoch, key: jax.Array | None = None) -> jax.Array:
    """β_e of ``cfg.nudge`` at (traced) epoch ``e``; float32 scalar. ``key`` gives pcx_cn's random signs."""
    e = jnp.asarray(epoch, jnp.int32)
    ef = e.astype(jnp.float32)
    if cfg.nudge == "clamp":
        return jnp.ones((), jnp.float32)
    if cfg.nudge == "pcx_cn":
        mag = jnp.minimum(1.0, cfg.beta + cfg.beta_ir * ef)
        if cfg.cn_signs:
            signs = jnp.asarray(cfg.cn_signs, jnp.float32)
            s = signs[e % len(cfg.cn_signs)]
        else:
            if key is None:
                raise ValueError("beta_at: pcx_cn without cn_signs needs the rule-state key")
            s = jnp.where(jax.random.bernoulli(jax.random.fold_in(key, e)), 1.0, -1.0)
        return (s * mag).astype(jnp.float32)
    b = jnp.asarray(cfg.beta_factor * (cfg.beta + cfg.beta_ir * ef), jnp.float32)
    if cfg.nudge in ("pn", "nn"):
        if cfg.beta_clip == "clip":
            b = jnp.clip(b, -1.0, 1.0)
        else:  # PCX VGG scripts: `if abs(beta) >= 1.0: beta = 1.0`
            b = jnp.where(jnp.abs(b) >= 1.0, 1.0, b)
    return b


# ------------------------------------------------------------------------------------------------ blocks


class _Blocks(NamedTuple):
    prep: Callable  # x -> H_0 (parameter-free layers before the first weight layer)
    fns: tuple  # g_k(p, h) -> U_{k+1}, k = 0..L-1
    index: tuple  # arch layer index of block k's weight layer


def _blocks(arch, convention: str) -> _Blocks:
    layers = arch.layers
    P = arch.param_layers
    if not P:
        raise ValueError(f"predictive_coding: architecture {arch.name} has no layer with parameters")

    def prep(x):
        for j in range(P[0]):
            x = layers[j].apply({}, x)[1]
        return x

    fns = []
    for k, i in enumerate(P):
        if convention == "pcx":
            stop = P[k + 1] if k + 1 < len(P) else len(layers)

            def g(p, h, i=i, stop=stop):
                h = layers[i].apply(p, h)[1]
                for j in range(i + 1, stop):
                    h = layers[j].apply({}, h)[1]
                return h
        else:
            if k == len(P) - 1 and i != len(layers) - 1:
                raise ValueError("predictive_coding: convention=wb needs the last weight layer to be the last layer "
                                 f"(architecture {arch.name} has parameter-free layers after it)")
            prev = P[k - 1] if k > 0 else None

            def g(p, h, i=i, prev=prev):
                if prev is not None:
                    h = layers[prev].act(h)
                    for j in range(prev + 1, i):
                        h = layers[j].apply({}, h)[1]
                return layers[i].apply(p, h)[0]
        fns.append(g)
    return _Blocks(prep, tuple(fns), tuple(P))


# ------------------------------------------------------------------------------------------------ the rule


def _inner_optimizer(cfg: Config) -> optax.GradientTransformation:
    lr = cfg.ipc_lr
    if cfg.ipc_schedule_steps > 0:
        S = cfg.ipc_schedule_steps * max(cfg.T, 1)
        lr = optax.warmup_cosine_decay_schedule(init_value=cfg.ipc_lr, peak_value=1.1 * cfg.ipc_lr,
                                                warmup_steps=int(0.1 * S), decay_steps=S, end_value=0.1 * cfg.ipc_lr)
    if cfg.ipc_optimizer == "adamw":
        return optax.adamw(lr, weight_decay=cfg.ipc_weight_decay)
    return optax.sgd(lr)


def inference(cfg: Config, arch, heads: core.Heads) -> Callable:
    """The whole PC update as one pure function ``run(params, batch, key, epoch=0, w_opt=None, beta=None,
    cn_key=None) -> Inference`` (``w_opt``: iPC's weight-optimiser state, fresh when None; ``beta`` overrides the
    schedule; ``cn_key`` draws pcx_cn's random signs).

    ``make`` wraps it into the Rule; tests call it to read the value nodes and the state momentum.
    """
    _check(cfg)
    bl = _blocks(arch, cfg.convention)
    L = len(bl.fns)
    n_layers = len(arch.layers)
    x_opt = optax.sgd(cfg.x_lr, momentum=cfg.x_momentum)
    w_inner = _inner_optimizer(cfg) if cfg.incremental else None

    def out_energy(t, u, valid):
        """Per-sample output energy E_L (B,), summed over labelled heads."""
        total = jnp.zeros(u.shape[:1], u.dtype)
        for h in range(len(heads.sizes)):
            th, uh = heads.slice(t, h), heads.slice(u, h)
            if cfg.output_energy == "se":
                e = 0.5 * jnp.sum((th - uh) ** 2, axis=-1)
            else:
                e = -jnp.sum(th * jax.nn.log_softmax(uh, axis=-1), axis=-1)
            total = total + e * valid[:, h]
        return total

    def predictions(params, pred_nodes, first=None):
        """U_k = g_k(θ_k, H_{k−1}) for k = 1..L and each block's VJP closure at that point; ``first`` reuses
        block 1's (its input, the clamped X, never moves)."""
        U, vjps = [], []
        for k in range(L):
            u, vjp = first if (k == 0 and first is not None) else jax.vjp(bl.fns[k], params[bl.index[k]],
                                                                          pred_nodes[k])
            U.append(u)
            vjps.append(vjp)
        return U, vjps

    def errors(nodes, U, target, w_out, valid):
        """r_k = −∂E/∂U_k: ε_k for hidden nodes, −w_out·∂E_L/∂U_L for the output."""
        r = [nodes[k + 1] - U[k] for k in range(L - 1)]
        r.append(-jax.grad(lambda u: jnp.sum(out_energy(target, u, valid)))(U[L - 1]) * w_out)
        return r

    def state_grad(r, vjps, B):
        """G_k = ε_k − VJP_H(g_{k+1})(r_{k+1}) for the hidden nodes k = 1..L−1 (per sample)."""
        G = tuple(r[k] - vjps[k + 1](r[k + 1])[1] for k in range(L - 1))
        if cfg.state_grad == "batch_mean":
            G = tuple(g / B for g in G)
        return G

    def weight_grad(r, vjps, B, scale):
        """∂Ē/∂θ_k = −VJP_θ(g_k)(r_k)/B, times ``scale`` (1/β), on the params tree ({} for parameter-free layers)."""
        out = [{} for _ in range(n_layers)]
        for k in range(L):
            out[bl.index[k]] = jax.tree.map(lambda a: -a * (scale / B), vjps[k](r[k])[0])
        return tuple(out)

    def energies(nodes, U, target, valid):
        e = [jnp.mean(0.5 * jnp.sum(jnp.reshape(nodes[k + 1] - U[k], (U[k].shape[0], -1)) ** 2, axis=-1))
             for k in range(L - 1)]
        e.append(jnp.mean(out_energy(target, U[L - 1], valid)))
        return e

    def phase(params, x0, ff, first, hidden0, target, w_out, scale, valid, w_opt, n_one):
        B = x0.shape[0]
        fixed = predictions(params, ff, first) if cfg.fixed_prediction else None  # loop-invariant

        def local(p, hidden):
            nodes = (x0,) + tuple(hidden)
            if cfg.fixed_prediction:
                U, vjps = fixed
            else:  # block 1 sees only the clamped input: hoisted out of the loop unless θ moves (iPC)
                U, vjps = predictions(p, nodes, None if cfg.incremental else first)
            return nodes, U, errors(nodes, U, target, w_out, valid), vjps

        def step(carry):
            hidden, xs, p, ws = carry
            _, _, r, vjps = local(p, hidden)
            upd, xs = x_opt.update(state_grad(r, vjps, B), xs, hidden)
            hidden = optax.apply_updates(hidden, upd)
            if cfg.incremental:  # iPC: the same (H, θ) point gives both gradients; both optimisers step
                wu, ws = w_inner.update(weight_grad(r, vjps, B, scale), ws, p)
                p = optax.apply_updates(p, wu)
            return hidden, xs, p, ws

        carry = (tuple(hidden0), x_opt.init(tuple(hidden0)), params, w_opt)
        # Step 1 is peeled off the loop: from the forward initialisation its predictions are the forward pass
        # already computed, which XLA then shares (one forward pass saved per update; cost affine in T).
        if cfg.T >= 1:
            carry = step(carry)
        if cfg.unroll:
            # The FLOP-counting twin. XLA counts a loop body once, and a plain unrolled loop lets CPU fusion
            # recompute the momentum chain of all earlier steps inside every later step (cost quadratic in T,
            # work the rolled loop never does). Each step therefore runs in its own while loop with one trip
            # (n_one = 1, read from the data so XLA cannot fold the loop away): counted once each, T in all.
            for _ in range(int(cfg.T) - 1):
                carry = jax.lax.while_loop(lambda c: c[0] < n_one, lambda c: (c[0] + 1, step(c[1])),
                                           (jnp.zeros((), jnp.int32), carry))[1]
        elif cfg.T >= 2:
            carry = jax.lax.scan(lambda c, _: (step(c), None), carry, None, length=int(cfg.T) - 1)[0]
        hidden, xs, p_T, w_opt = carry
        nodes, U, r, vjps = local(p_T, hidden)
        if cfg.incremental:
            grads = jax.tree.map(lambda a, b: a - b, params, p_T)  # P = θ₀ − θ_T, applied by sgd(1.0)
        else:
            grads = weight_grad(r, vjps, B, scale)
        v = tuple(optax.tree_utils.tree_get(xs, "trace"))
        return hidden, v, grads, p_T, w_opt, energies(nodes, U, target, valid)

    def run(params, batch: core.Batch, key, epoch=0, w_opt=None, beta=None, cn_key=None):
        if w_opt is None:
            w_opt = w_inner.init(params) if cfg.incremental else ()
        x0 = bl.prep(batch.x)
        first = jax.vjp(bl.fns[0], params[bl.index[0]], x0)
        ff = [x0, first[0]]
        for k in range(1, L):
            ff.append(bl.fns[k](params[bl.index[k]], ff[k]))
        ff = tuple(ff)
        n_one = (batch.y[0, 0] >= -1).astype(jnp.int32)  # = 1; opaque to XLA (see phase)
        u0 = ff[L]
        dt = u0.dtype
        Y = heads.one_hot(batch.y).astype(dt)
        valid = (batch.y >= 0).astype(dt)
        if beta is None:
            beta = beta_at(cfg, epoch, cn_key)
        beta = jnp.asarray(beta).astype(dt)
        if cfg.h_init == "forward":
            hidden0 = ff[1:L]
        elif cfg.h_init == "zero":
            hidden0 = tuple(jnp.zeros_like(h) for h in ff[1:L])
        else:
            ks = jax.random.split(key, max(L - 1, 1))
            hidden0 = tuple(jax.random.normal(k, h.shape, dt) for k, h in zip(ks, ff[1:L]))
        one = jnp.ones((), dt)
        if cfg.nudge == "clamp":
            phases = [(Y, one, one)]
        elif cfg.nudge in _FROZEN_NUDGES:
            phases = [(u0 - beta * (u0 - Y), one, 1.0 / beta)]
        elif cfg.nudge == "weighted":
            phases = [(Y, beta, 1.0 / beta)]
        else:  # eqprop_centered
            phases = [(Y, beta, 0.5 / beta), (Y, -beta, -0.5 / beta)]
        outs = [phase(params, x0, ff, first, hidden0, t, w, s, valid, w_opt, n_one) for t, w, s in phases]
        grads = outs[0][2]
        for o in outs[1:]:
            grads = jax.tree.map(jnp.add, grads, o[2])
        hidden, v, _, p_T, w_opt_new, e = outs[0]
        metrics = {"loss": core.loss(u0, batch.y, heads), "beta": beta.astype(jnp.float32),
                   "energy": sum(e).astype(jnp.float32)}
        for k, ek in enumerate(e):
            metrics[f"energy/{k + 1}"] = ek.astype(jnp.float32)
        return Inference(hidden, v, phases[0][0], grads, p_T, w_opt_new, metrics)

    return run


def make(cfg: Config, arch, heads: core.Heads) -> core.Rule:
    run = inference(cfg, arch, heads)
    inner = _inner_optimizer(cfg) if cfg.incremental else None
    spe = int(cfg.steps_per_epoch)

    def init_fn(key, params):
        w_opt = inner.init(params) if cfg.incremental else ()
        return PCState(jnp.zeros((), jnp.int32), key, w_opt)

    def update_fn(params, state, batch, key):
        epoch = state.step // spe if spe > 0 else jnp.zeros((), jnp.int32)
        out = run(params, batch, key, epoch, state.w_opt, cn_key=state.key)
        return out.grads, PCState(state.step + 1, state.key, out.w_opt), out.metrics

    def predict_fn(params, state, x):
        return arch.apply(params, x)

    return core.Rule(init_fn, update_fn, predict_fn)


def _optimizer(cfg: Config, arch, make_opt):
    # iPC applies its own weight steps inside the update and returns θ₀ − θ_T: the run must add it unchanged.
    return optax.sgd(1.0) if cfg.incremental else make_opt()


RULE = core.RuleSpec(
    "predictive_coding", Config, make, aliases=("pc",),
    doc="predictive coding networks: T inference steps on value nodes, local weight updates (PCX, ICLR 2025)",
    optimizer=_optimizer,
    cost_config=lambda cfg: dataclasses.replace(cfg, unroll=True),
)
