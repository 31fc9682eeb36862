"""Forward-Forward (Hinton 2022, arXiv:2212.13345), as Hinton's ``ffcode`` runs it.

Every hidden layer has its own objective: high *goodness* on positive data (an image with its correct label) and
low goodness on negative data (the same image with a wrong label). Nothing crosses layers backwards.

Notation (``ffcode``/spec §2): hidden layers ℓ = 1..L with N_ℓ units, rows n of a minibatch of B positive and B
negative examples, x̂_{ℓ−1} = sg(norm(h_{ℓ−1})) with h_0 = the labelled input,

    a_ℓ = x̂_{ℓ−1} W_ℓ + b_ℓ,   h_ℓ = ReLU(a_ℓ),   G_ℓ = Σ_j h_{ℓ,j}²            (goodness, before normalising)
    p_ℓ = σ((G_ℓ − θ_ℓ)/T),    θ_ℓ = N_ℓ, T = 1                                (paper eq. 1; ffcode's θ)
    L_ℓ = mean_n [softplus(θ_ℓ − G⁺_ℓ) + softplus(G⁻_ℓ − θ_ℓ)]                  (= −log p⁺ − log(1 − p⁻))
    δ⁺ = (1 − p⁺) h⁺ + λ (m̄ − m),   δ⁻ = −p⁻ h⁻                                (ffcode's dCbydin; peer term not gated)
    ΔW_ℓ = (X̂⁺ᵀ δ⁺ + X̂⁻ᵀ δ⁻)/B,    Δb_ℓ = Σ_n (δ⁺ + δ⁻)/B

with norm(h) = h/(sqrt(mean_j h_j²) + ε) (no centring, no gain) and the peer-normalisation running mean
m ← 0.9 m + 0.1 mean_n h⁺ (positive rows, updated before δ⁺ is formed), m̄ = mean_j m_j, λ = 0.03.

**Descent sign and the factor 2.** The pseudo-gradient is −ΔW (``ffcode``'s ascent step, negated). Without the peer
term δ = −½ ∂L_ℓ/∂a_ℓ, so the pseudo-gradient is **½ ∇L_ℓ**, ``ffcode``'s scale: its ε = 0.01 with gradient
smoothing 0.9 is ``optimizer.name=momentum optimizer.lr=1e-3 optimizer.momentum=0.9`` here (spec §2.7); an
autodiff implementation such as loeweX's needs twice this lr. δ is computed from the formula above (for other
activations (1 − p) h ⊙ f'(a), and /N_ℓ for ``mean_sq``), then ΔW is the layer's own VJP on its stop-gradient
input (:func:`localrules.local.param_grad`), so dense and conv layers share the code and no gradient ever
reaches a lower layer.

**One update** (all on the same minibatch, all layers simultaneously, as ``ffnew.m``):

1. neutral pass (label code 1/K in every unit of each head: ffcode's 0.1 for 10 classes) → the read-out logits
   z = Σ_{ℓ≥2} x̂_ℓ V_ℓ (zero-initialised, no bias) → the read-out's pseudo-gradient, the softmax cross-entropy
   gradient x̂ᵀ(softmax(z) − onehot(y))/B (full gradient; ``ffcode`` ascends (t − p) with ε_sup = 0.1);
2. negative labels: ``hard`` samples from softmax(z − 1000·onehot(y)) (``ffcode``'s ``choosefrom``), ``uniform``
   from the K − 1 wrong labels (loeweX), ``randperm`` a permuted batch's labels (mpezeshki; equal to the true label
   about 1/K of the time, mpezeshki#8 — only to reproduce that code);
3. one pass of the 2B stacked positive and negative rows through every layer → δ and ΔW per layer.

The negative pass costs FLOPs, never samples. **Unsupervised FF** (``negatives=hybrid``, paper §3.2): no label in
the input; negatives are hybrid images x_A ⊙ M + x_B ⊙ (1 − M), M = a random bit image blurred
``blur_iterations`` times with [¼, ½, ¼] horizontally and vertically (edge padding), thresholded at 0.5, x_B the
next image of the batch; the read-out is trained on the positive pass and is the only classifier.

**Label input.** Paper: the first 10 pixels (MNIST border) are overwritten by the label. ``embed=auto`` writes the
code into the first ``heads.total`` units of the first layer's input: the label units of ``arch=ff_mlp``
(concatenated before the flattened image, curriculum §11.6: never overwrite canvas pixels) or, on any other
architecture, the first pixels (the paper). Multi-head batches: the code is ``heads.one_hot(y)`` over all heads
(unlabelled heads zero); a negative replaces every labelled head's label by a wrong one; samples with no labelled
head carry no FF loss.

**Classifiers** (spec §2.9). ``goodness`` (the paper's numbers): for every output unit j, one pass with the code
e_j (strength 1, every other unit 0), score_j = Σ_{ℓ ≥ goodness_from} G_ℓ; layer 1 is excluded because it sees the
label directly (``ffenergytest.m``, ``minlevelenergy = 3``). Scores come per unit, so the lab's per-head strict
argmax and the curriculum's forced choice use them unchanged. ``softmax``: the neutral pass's read-out logits.

**Architectures.** ``arch=ff_mlp`` is ``ffcode``'s network: label units, RMS normalisation inside each layer, the
read-out on layers readout_from..L. On a plain ``mlp``/``cnn`` the rule normalises every layer input itself
(``rule.norm``), the label goes into the first pixels, goodness of a conv layer sums over all of its units
(θ = H·W·C) and the read-out is the architecture's output layer on x̂_L only. Composition: ``rule=compose
rule.hidden_rule=forward_forward rule.head_rule=backprop arch=ff_mlp`` (ff_mlp's own forward pass is the neutral
pass, so backprop's head sees what FF's layers were trained on).

**Optimizer.** The run's ``optimizer.*`` applies the pseudo-gradients; ``rule.readout_optimizer.*`` gives the
read-out its own (ffcode: 10× the lr, weight cost 0.003). ``rule.ffcode_optimizer.*`` instead applies ``ffcode``'s
exact step to both groups (:func:`ffcode_sgd`: smoothing g ← 0.9 g + 0.1 ΔW, W ← W + ε_t (g − wc W), no weight
cost on biases, ε_t constant to E/2 then ε(1 + 2(E − e))/E).

**Compute** (``arch=ff_mlp``; same arithmetic, fewer operations; ``docs/compute.md``). Layer 1 sees
[code, x] normalised as one row, so x̂W₁ = (code·W_lab + x·W_img)/d with d = norm_divisor(‖code‖² + ‖x‖²): x·W_img
and ‖x‖² are computed once per batch and shared by the neutral, positive and negative rows (and by every candidate
label of the goodness classifier); code·W_lab is a row gather; and since a positive and its negative row share x,
ΔW_img = xᵀ Σ_{±}(e/d) is one B-row product (the label rows' ΔW_lab a scatter-add). Every normalised layer computes
norm(h)W as (hW)/d and its ΔW as hᵀ(e/d), so x̂ is never written out. Matmul FLOPs per update, D image inputs,
hidden N₁..N_L, read-out width R·K: 4BDN₁ + 10B Σ_{ℓ≥2} N_{ℓ−1}N_ℓ + 4BRK (before: 10B Σ_ℓ N_{ℓ−1}N_ℓ with
N₀ = D + K, + 4BRK); 784-1000-1000-1000 at B = 100: 2,321.6 vs 2,802.0 MFLOP.

Reference code: Hinton's ``ffcode`` (``ffnew.m``, ``ffenergytest.m``, ``ffnormrows.m``) as copied unmodified in
alessiopittiglio/forward-forward-matlab@e028a035edce ``src/hinton_forward_forward/``; loeweX/Forward-Forward@da516f0
(``src/ff_model.py``: peer-normalisation loss, straight-through ReLU, uniform negatives); mpezeshki/
pytorch_forward_forward@1c7a211 (``main.py``: mean goodness with θ = 2, greedy schedule, randperm negatives).

Deviations:
  * ε of the RMS norm is 1e-8 (loeweX), not ``ffcode``'s exp(−100), which float32 cannot hold as a normal number.
  * ``embed=auto`` uses label units (not pixels) on ``arch=ff_mlp``: the lab's curriculum forbids overwriting
    shared canvas pixels. On MNIST the two are the same input up to the order of the units (the first 10 pixels are
    always 0), so ``arch.label_slots=false`` only matters to reproduce the exact input width.
  * The read-out on a plain ``mlp``/``cnn`` reads x̂_L only and keeps that architecture's bias and init
    (``ffcode``: layers 2..L, zero init, no bias — use ``arch=ff_mlp``).
  * Hard negatives come from the read-out of the neutral pass (``ffcode``); the paper's recurrent net picks them
    from the goodness of every label, which costs K passes and is not implemented.
  * Not implemented: the recurrent top-down network (§3.4), locally connected layers (§3.2 LC, §4), jitter.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from localrules import core, local
from localrules.architectures import act_derivative
from localrules.architectures.ff_mlp import norm_divisor, normalise
from localrules.optim import OptimizerConfig

_PARAM_KINDS = ("dense", "conv")
_EMBEDS = ("auto", "slots", "pixels")
_GOODNESS = ("sum_sq", "mean_sq", "min_ssq")
_NEGATIVES = ("hard", "uniform", "randperm", "hybrid")
_PEER = ("ffcode", "loewex", "off")
_DECAY = ("ffcode", "loewex", "none")


@dataclasses.dataclass(frozen=True)
class FFCodeOptimizer:
    """``ffcode``'s own optimizer step, applied to the FF layers (ε, wc) and the read-out (ε_sup, wc_sup)."""

    epsilon: float = 0.01
    """Learning rate of the FF layers (ffcode ``epsilon``)."""
    epsilon_sup: float = 0.1
    """Learning rate of the read-out (ffcode ``epsilonsup``)."""
    weight_cost: float = 0.001
    """Weight cost of the FF layers' weights, outside the smoothing; none on biases (ffcode ``wc``)."""
    sup_weight_cost: float = 0.003
    """Weight cost of the read-out (ffcode ``supwc``)."""
    delay: float = 0.9
    """Gradient smoothing g ← delay·g + (1 − delay)·ΔW (ffcode ``delay``)."""
    decay: str = "ffcode"
    """Second-half lr decay: ffcode ε(1 + 2(E − e))/E | loewex ε·2(1 + E − e)/E | none."""
    epochs: float = 0.0
    """E of the schedule; 0 = the run's length (needs the lab to pass it to the optimizer hook)."""
    steps_per_epoch: int = 0
    """Steps in one epoch; 0 = the task's (needs the lab to pass it to the optimizer hook)."""


@dataclasses.dataclass(frozen=True)
class Config:
    """Forward-Forward: per-layer goodness objectives on positive and negative data (Hinton 2022; ffcode)."""

    embed: str = "auto"
    """Label input: auto (label units of arch=ff_mlp, else the first pixels) | slots | pixels (the paper's MNIST)."""
    label_strength: float = 1.0
    """Value of the one-hot label code (ffcode, loeweX: 1; mpezeshki writes max(x))."""
    norm: str = "rms"
    """Layer-input normalisation: rms (ffcode, loeweX; ‖x̂‖ = √N) | l2 (unit length; mpezeshki)."""
    goodness: str = "sum_sq"
    """sum_sq G = Σh² (ffcode, loeweX) | mean_sq G = mean h² (mpezeshki) | min_ssq positive = low Σh² (paper §4)."""
    theta: float = 0.0
    """Threshold θ; 0 = the source's own: N_ℓ for sum_sq/min_ssq (ffcode, loeweX), 2 for mean_sq (mpezeshki)."""
    temperature: float = 1.0
    """T in p = σ((G − θ)/T) (ffcode ``temp`` = 1)."""
    negatives: str = "hard"
    """hard (ffcode: from the read-out's mistakes) | uniform (loeweX) | randperm (mpezeshki) | hybrid (unsupervised)."""
    blur_iterations: int = 0
    """Blur passes of the hybrid-image mask; required with negatives=hybrid (the paper gives no number)."""
    classifier: str = "goodness"
    """goodness (every label, Σ_{ℓ≥goodness_from} G_ℓ; the paper's numbers) | softmax (one-pass read-out)."""
    goodness_from: int = 2
    """First hidden layer (1-based) summed by the goodness classifier (ffcode minlevelenergy = 3 → 2; mpezeshki 1);
    capped at L, so a one-hidden-layer net scores its only layer."""
    peer_norm: str = "ffcode"
    """ffcode (additive δ term, not ReLU-gated) | loewex (squared-deviation loss, straight-through ReLU) | off."""
    peer_weight: float = 0.03
    """λ of peer normalisation (ffcode ``lambdamean``, loeweX ``peer_normalization``)."""
    peer_momentum: float = 0.9
    """Running-mean momentum of the per-unit mean activity (ffcode, loeweX)."""
    peer_init: float = 0.5
    """Initial running mean of every unit (ffcode ``meanstates``)."""
    schedule: str = "simultaneous"
    """simultaneous (ffcode, loeweX: every layer on every minibatch) | greedy (mpezeshki: layer by layer)."""
    greedy_steps: int = 1000
    """Steps per layer with schedule=greedy (mpezeshki: 1000 full-batch steps)."""
    readout_optimizer: Optional[OptimizerConfig] = None
    """Optimizer of the read-out (unset = the run's); ffcode: momentum, lr 1e-2, weight cost 3e-3."""
    ffcode_optimizer: Optional[FFCodeOptimizer] = None
    """Set any field (e.g. rule.ffcode_optimizer.epsilon=0.01) to apply ffcode's exact step instead of the run's."""


class FFState(NamedTuple):
    mean_activity: tuple
    """Per FF layer, the running mean activity m_ℓ of every unit (peer normalisation), shape of one example's h_ℓ."""
    step: jax.Array
    """Updates taken (for the greedy schedule)."""


# ------------------------------------------------------------------------------------------- label codes


def neutral_code(heads: core.Heads, strength: float = 1.0) -> jax.Array:
    """(total,) — strength/K_h in every unit of head h: ffcode's neutral label (0.1 × 10 for 10 classes)."""
    return jnp.concatenate([jnp.full((k,), strength / k, jnp.float32) for k in heads.sizes])


def negative_labels(kind: str, key, logits, y, heads: core.Heads) -> jax.Array:
    """(B, H) wrong labels for every labelled head (−1 where y is −1).

    hard: sample from softmax(z_h − 1000·onehot(y_h)) per head (ffcode ``choosefrom(softmax(labin − 1000·t))``);
    uniform: uniform over the K − 1 wrong labels; randperm: the labels of a permuted batch.
    """
    cols = []
    keys = jax.random.split(key, len(heads.sizes))
    if kind == "randperm":
        perm = jax.random.permutation(key, y.shape[0])
    for i, k in enumerate(heads.sizes):
        yi = y[:, i]
        if kind == "hard":
            z = heads.slice(logits, i) - 1000.0 * jax.nn.one_hot(yi, k, dtype=logits.dtype)
            neg = jax.random.categorical(keys[i], z, axis=-1)
        elif kind == "uniform":
            neg = (jnp.maximum(yi, 0) + 1 + jax.random.randint(keys[i], yi.shape, 0, k - 1)) % k
        elif kind == "randperm":
            neg = yi[perm]
        else:
            raise ValueError(f"negative labels {kind!r}")
        cols.append(jnp.where(yi >= 0, neg, -1).astype(jnp.int32))
    return jnp.stack(cols, axis=-1)


def blur_mask(bits: jax.Array, iterations: int) -> jax.Array:
    """Blur (B, H, W) bit images ``iterations`` times with [¼, ½, ¼] along W then H (edge padding); threshold 0.5."""
    m = bits
    for _ in range(iterations):  # unrolled: XLA counts a loop body once, this keeps the FLOP count honest
        p = jnp.pad(m, ((0, 0), (0, 0), (1, 1)), mode="edge")
        m = 0.25 * p[:, :, :-2] + 0.5 * p[:, :, 1:-1] + 0.25 * p[:, :, 2:]
        p = jnp.pad(m, ((0, 0), (1, 1), (0, 0)), mode="edge")
        m = 0.25 * p[:, :-2, :] + 0.5 * p[:, 1:-1, :] + 0.25 * p[:, 2:, :]
    return (m > 0.5).astype(bits.dtype)


def hybrid_images(key, x: jax.Array, iterations: int) -> jax.Array:
    """Paper §3.2 negatives: x ⊙ M + roll(x, 1) ⊙ (1 − M), M a blurred random bit mask over (H, W).

    ``x`` is (B, H, W, C) or (B, F, H, W, C); the mask is shared by channels and frames.
    """
    b = x.shape[0]
    h, w = x.shape[-3], x.shape[-2]
    bits = jax.random.bernoulli(key, 0.5, (b, h, w)).astype(x.dtype)
    m = blur_mask(bits, iterations)
    m = m.reshape((b,) + (1,) * (x.ndim - 4) + (h, w, 1))
    other = jnp.roll(x, 1, axis=0)
    return x * m + other * (1.0 - m)


# ------------------------------------------------------------------------------------------- one layer


def goodness(h: jax.Array, kind: str) -> jax.Array:
    """(rows,) goodness of each row over every unit of the layer: Σh² (sum_sq, min_ssq) or mean h² (mean_sq)."""
    sq = jnp.sum(h * h, axis=tuple(range(1, h.ndim)))
    return sq / math.prod(h.shape[1:]) if kind == "mean_sq" else sq


def layer_delta(cfg: Config, act, pre, h, m, n_pos: int, row_weight=None):
    """FF's local error of one layer from its stacked rows (the first ``n_pos`` positive, the rest negative).

    Args:
      cfg: the rule's config (goodness, θ, T, peer normalisation).
      act: the layer's activation (h = act(pre)).
      pre, h: (rows, ...) pre-activation and output of the layer.
      m: running mean activity of every unit (peer normalisation), shape of one row of h.
      n_pos: number of positive rows (= B, the ΔW denominator).
      row_weight: (rows,) 0/1 weight of each row in the FF loss (samples without a label), or None.

    Returns:
      ``(delta, m_new, stats)``: δ of the module docstring (ascent direction w.r.t. ``pre``; the pseudo-gradient
      is the parameter VJP of −δ/n_pos), the new running mean and a dict of scalars.
    """
    rows = h.shape[0]
    n_units = math.prod(h.shape[1:])
    G = goodness(h, cfg.goodness)
    theta = cfg.theta or (2.0 if cfg.goodness == "mean_sq" else float(n_units))
    s = -1.0 if cfg.goodness == "min_ssq" else 1.0
    u = s * (G - theta) / cfg.temperature  # logit of p("positive"); |u| reaches hundreds: sigmoid/softplus only
    is_pos = jnp.arange(rows) < n_pos
    w = jnp.ones((rows,), h.dtype) if row_weight is None else row_weight.astype(h.dtype)
    per_row = jnp.where(is_pos, jax.nn.softplus(-u), jax.nn.softplus(u)) * w
    # c = −∂ℓ_n/∂G_n: (1 − p⁺) on positives, −p⁻ on negatives (ffcode's dCbydin before the ×h)
    c = jnp.where(is_pos, jax.nn.sigmoid(-u), -jax.nn.sigmoid(u)) * (s / cfg.temperature) * w
    half_dG = h * act_derivative(act, pre)  # ½ ∂G/∂a; = h for ReLU
    if cfg.goodness == "mean_sq":
        half_dG = half_dG / n_units
    delta = c.reshape((rows,) + (1,) * (h.ndim - 1)) * half_dG

    m_new = cfg.peer_momentum * m + (1.0 - cfg.peer_momentum) * jnp.mean(h[:n_pos], axis=0)
    if cfg.peer_norm != "off":
        # ffcode: λ(m̄ − m) added to δ⁺ of every positive row, not gated by the ReLU (revives dead units).
        # loewex: ½·B·∂/∂a of λ·mean_j (m̄ − m_j)² through m_new with a straight-through ReLU = the ffcode term
        # scaled by (1 − momentum)/N.
        peer = cfg.peer_weight * (jnp.mean(m_new) - m_new)
        if cfg.peer_norm == "loewex":
            peer = peer * (1.0 - cfg.peer_momentum) / n_units
        delta = delta + jnp.where(is_pos.reshape((rows,) + (1,) * (h.ndim - 1)), peer[None], 0.0)
    n_lab = jnp.maximum(jnp.sum(w[:n_pos]), 1.0)
    stats = {
        "loss": jnp.sum(per_row) / n_pos,
        "g_pos": jnp.sum(G[:n_pos] * w[:n_pos]) / n_lab,
        "g_neg": jnp.sum(G[n_pos:] * w[n_pos:]) / n_lab,
        # ffcode's pairsumerrs: a negative judged more positive than its own positive
        "pair_err": jnp.sum((u[n_pos:] > u[:n_pos]) * w[:n_pos]) / n_lab,
    }
    return delta, m_new, stats


def layer_update(cfg: Config, layer, p, x_in, m, n_pos: int, row_weight=None):
    """The local FF update of one layer from stacked rows: the first ``n_pos`` positive, the rest negative.

    ``x_in`` is what the layer receives, already stop-gradiented (and normalised unless the layer does it);
    ``layer.apply(p, x_in)`` is its forward pass. Other arguments as :func:`layer_delta`.

    Returns:
      ``(pseudo_grad, m_new, h, stats)``: pseudo_grad = −ΔW with ffcode's scale (½ ∇L_ℓ without the peer term),
      h the layer's output (rows, ...), stats a dict of scalars.
    """
    pre, h = layer.apply(p, x_in)
    delta, m_new, stats = layer_delta(cfg, layer.act, pre, h, m, n_pos, row_weight)
    grad = local.param_grad(layer, p, x_in, -delta / n_pos)
    return grad, m_new, h, stats


# ------------------------------------------------------------------------------------------- split first layer


class Labels(NamedTuple):
    """A label code given by its labels: row n carries strength·heads.one_hot(y[n]) (y = −1: that head is 0)."""

    y: jax.Array
    """(rows, H) int labels."""


def dense_code(code, rows: int, heads: core.Heads, strength: float) -> jax.Array:
    """Any code form (a shared (T,) vector, (rows, T) rows, :class:`Labels`) as (rows, T) rows."""
    if isinstance(code, Labels):
        return strength * heads.one_hot(code.y)
    if code.ndim == 1:
        return jnp.broadcast_to(code[None, :], (rows, code.shape[0]))
    return code


def label_rows(w_lab, code, heads: core.Heads, strength: float):
    """(code·W_lab, ‖code‖²) of the label units: a row gather for :class:`Labels`, one vector-matrix product for a
    shared (T,) code (→ (N,), ()), a matmul for general rows."""
    if isinstance(code, Labels):
        cw, n_on = 0.0, 0.0
        for h, (o, k) in enumerate(zip(heads.offsets, heads.sizes)):
            yh = code.y[:, h]
            on = yh >= 0
            cw = cw + jnp.where(on[:, None], jnp.take(w_lab, o + jnp.clip(yh, 0, k - 1), axis=0), 0.0)
            n_on = n_on + on.astype(w_lab.dtype)
        return strength * cw, (strength * strength) * n_on
    return code @ w_lab, jnp.sum(code * code, axis=-1)


def label_grad(code, ds, heads: core.Heads, strength: float, total: int):
    """codeᵀ·ds (T, N) — for :class:`Labels` a scatter-add of the rows of ds into their label units."""
    if isinstance(code, Labels):
        g = jnp.zeros((total, ds.shape[1]), ds.dtype)
        for h, (o, k) in enumerate(zip(heads.offsets, heads.sizes)):
            yh = code.y[:, h]
            g = g.at[o + jnp.clip(yh, 0, k - 1)].add(jnp.where((yh >= 0)[:, None], strength * ds, 0.0))
        return g
    if code.ndim == 1:
        return jnp.outer(code, jnp.sum(ds, axis=0))
    return code.T @ ds


# ------------------------------------------------------------------------------------------- the rule


def _analyse(cfg: Config, arch, heads: core.Heads):
    """Which layers FF trains, where the label goes and what the read-out reads; validates the combination."""
    plist = arch.param_layers
    if len(plist) < 2:
        raise ValueError("forward_forward needs at least one hidden layer below the output (read-out) layer")
    out, ff = plist[-1], plist[:-1]
    first = ff[0]
    slots = 0
    for l in arch.layers[:first]:
        slots = max(slots, int(l.meta.get("label_slots", 0)))
    if cfg.negatives == "hybrid":
        embed = "none"
    elif cfg.embed == "auto":
        embed = "slots" if slots else "pixels"
    else:
        embed = cfg.embed
    if embed == "slots" and slots != heads.total:
        raise ValueError(f"rule.embed=slots needs an architecture with {heads.total} label units before the input "
                         "(arch=ff_mlp with arch.label_slots=true); use rule.embed=pixels to overwrite the first "
                         "pixels as the paper does")
    if embed == "pixels" and slots:
        raise ValueError("rule.embed=pixels on an architecture with label units: set arch.label_slots=false "
                         "(or rule.embed=slots)")
    for i in plist:
        n = arch.layers[i].meta.get("input_norm")
        if n is not None and n != cfg.norm:
            raise ValueError(f"rule.norm={cfg.norm} but the architecture normalises with {n}: set arch.norm={cfg.norm}"
                             f" or rule.norm={n}")
    sources = arch.layers[out].meta.get("sources")
    if sources is not None and any(j not in ff for j in sources):
        raise ValueError(f"the read-out reads layers {sources}, which are not all hidden layers {ff}")
    if cfg.goodness_from < 1:
        raise ValueError(f"rule.goodness_from={cfg.goodness_from}: hidden layers are numbered from 1")
    return out, ff, first, embed, sources


def _validate(cfg: Config, arch):
    checks = [("embed", _EMBEDS), ("goodness", _GOODNESS), ("negatives", _NEGATIVES), ("peer_norm", _PEER),
              ("classifier", ("goodness", "softmax")), ("schedule", ("simultaneous", "greedy")),
              ("norm", ("rms", "l2"))]
    for name, allowed in checks:
        if getattr(cfg, name) not in allowed:
            raise ValueError(f"rule.{name}={getattr(cfg, name)!r}: choose one of {', '.join(allowed)}")
    if cfg.negatives == "hybrid":
        if cfg.blur_iterations < 1:
            raise ValueError("rule.negatives=hybrid needs rule.blur_iterations ≥ 1 (the paper gives no number; "
                             "it sets the scale of the mask's blobs)")
        if cfg.classifier != "softmax":
            raise ValueError("unsupervised FF (rule.negatives=hybrid) has no label in the input: set "
                             "rule.classifier=softmax")
        if len(arch.input_shape) < 3:
            raise ValueError(f"hybrid negatives need image input (H, W, C); this task's input is {arch.input_shape}")
    if cfg.temperature <= 0:
        raise ValueError(f"rule.temperature={cfg.temperature}: must be > 0")
    if cfg.schedule == "greedy" and cfg.greedy_steps < 1:
        raise ValueError(f"rule.greedy_steps={cfg.greedy_steps}: must be ≥ 1")


def make(cfg: Config, arch, heads: core.Heads) -> core.Rule:
    _validate(cfg, arch)
    out, ff, first, embed, sources = _analyse(cfg, arch, heads)
    layers = arch.layers
    T = heads.total
    strength = cfg.label_strength
    neutral = neutral_code(heads, strength)
    d_first = T + math.prod(arch.input_shape)
    # ff_mlp's first layer sees [label units, image] normalised as one row: x̂W = (code·W_lab + x·W_img)/d(x, code)
    # with d = norm_divisor(‖code‖² + ‖x‖²). x·W_img and ‖x‖² are then computed once per batch and shared by the
    # neutral pass, the positive and the negative rows (and every candidate label of the goodness classifier); the
    # label part is a row gather; ΔW_img = xᵀ Σ_passes (δ/d) takes one B-row product instead of one per pass.
    split = (embed == "slots" and first == 1 and layers[0].meta.get("label_slots") == T
             and layers[first].kind == "dense" and layers[first].meta.get("input_norm") in ("rms", "l2")
             and layers[first].meta.get("d_in") == d_first)
    # ff_mlp's other layers (normalise inside, a 2-D dense input): computed as (hW)/d + b, see scaled_pre
    scaled = {i for i in ff if layers[i].kind == "dense" and layers[i].meta.get("input_norm") in ("rms", "l2")}

    def prep(i, h):
        h = jax.lax.stop_gradient(h)
        return h if layers[i].meta.get("input_norm") else normalise(h, cfg.norm)

    def write_code(h, code):
        if embed == "none" or code is None:
            return h
        flat = h.reshape(h.shape[0], -1)
        if flat.shape[1] <= T:
            raise ValueError(f"the first layer's input has {flat.shape[1]} values: no room for {T} label units")
        return jnp.concatenate([code.astype(flat.dtype), flat[:, T:]], axis=-1).reshape(h.shape)

    def first_parts(params, x):
        """(x, x·W_img, ‖x‖²) of the split first layer: per batch, shared by every pass and candidate label."""
        xf = x.reshape(x.shape[0], -1)
        return xf, xf @ params[first]["w"][T:], jnp.sum(xf * xf, axis=-1)

    def first_pre(p, parts, code):
        """Pre-activation of the split first layer for the images under ``code``; rows = code rows (a multiple
        r of the B images, in r blocks of B), or B for a shared (T,) code. Returns (pre, divisor per row)."""
        _, xw, xsq = parts
        B, N = xw.shape
        cw, csq = label_rows(p["w"][:T], code, heads, strength)
        norm = layers[first].meta["input_norm"]
        if cw.ndim == 1:
            d = norm_divisor(xsq + csq, d_first, norm)
            pre = (xw + cw[None, :]) / d[:, None]
        else:
            r = cw.shape[0] // B
            d = norm_divisor(jnp.tile(xsq, r) + csq, d_first, norm)
            pre = ((xw[None] + cw.reshape(r, B, N)) / d.reshape(r, B, 1)).reshape(r * B, N)
        if "b" in p:
            pre = pre + p["b"][None, :]
        return pre, d

    def first_grad(p, parts, code, d, e):
        """Parameter VJP of the split first layer for the row errors ``e`` (= −δ/B): [codeᵀ(e/d); xᵀ Σ_r (e/d)_r]."""
        xf = parts[0]
        B = xf.shape[0]
        es = e / d[:, None]
        g = {"w": jnp.concatenate([label_grad(code, es, heads, strength, T),
                                   xf.T @ jnp.sum(es.reshape(-1, B, es.shape[1]), axis=0)], axis=0)}
        if "b" in p:
            g["b"] = jnp.sum(e, axis=0)
        return g

    def scaled_pre(p, hin, norm):
        """A normalised dense layer as norm(h)W + b = (hW)/d + b, d = norm_divisor(Σh²): the division moves past
        the matmul into the bias/activation pass, and x̂ is never written out."""
        d = norm_divisor(jnp.sum(hin * hin, axis=-1), hin.shape[1], norm)
        pre = (hin @ p["w"]) / d[:, None]
        return (pre + p["b"][None, :] if "b" in p else pre), d

    def scaled_grad(p, hin, d, e):
        """Parameter VJP of :func:`scaled_pre` for the row errors e: x̂ᵀe = hᵀ(e/d), Σ_rows e."""
        g = {"w": hin.T @ (e / d[:, None])}
        if "b" in p:
            g["b"] = jnp.sum(e, axis=0)
        return g

    def forward(params, x, code, m=None, n_pos=None, row_weight=None, parts=None):
        """One pass of the images ``x`` (B, ...) under ``code``; with ``m`` also the local updates.

        ``code``: None (no label input), a shared (T,) code, (R, T) rows or :class:`Labels` (R, H), with R = r·B
        rows (the images repeated r times, in blocks). ``parts``: the split first layer's per-batch products.
        Returns (h per hidden layer, read-out input, pseudo-gradients, new running means, stats).
        """
        h = x
        if code is not None and embed != "none":
            rows = code.y.shape[0] if isinstance(code, Labels) else (code.shape[0] if code.ndim == 2 else x.shape[0])
            if rows != x.shape[0] and not split:
                h = jnp.tile(x, (rows // x.shape[0],) + (1,) * (x.ndim - 1))
        hs, grads, ms, stats = {}, {}, [], {}
        for i, layer in enumerate(layers[:out]):
            if layer.kind not in _PARAM_KINDS:
                if not (split and i < first):
                    h = layer.apply({}, h)[1]
                continue
            k = ff.index(i)
            p = params[i]
            if split and i == first:
                parts = first_parts(params, x) if parts is None else parts
                pre, d = first_pre(p, parts, code)
                h = layer.act(pre)
                grad_fn = lambda e, p=p, parts=parts, d=d: first_grad(p, parts, code, d, e)
            else:
                if i == first:
                    h = write_code(h, None if code is None else dense_code(code, h.shape[0], heads, strength))
                if i in scaled:
                    hin = jax.lax.stop_gradient(h)
                    pre, d = scaled_pre(p, hin, layer.meta["input_norm"])
                    h = layer.act(pre)
                    grad_fn = lambda e, p=p, hin=hin, d=d: scaled_grad(p, hin, d, e)
                else:
                    x_in = prep(i, h)
                    pre, h = layer.apply(p, x_in)
                    grad_fn = lambda e, p=p, x_in=x_in, layer=layer: local.param_grad(layer, p, x_in, e)
            if m is not None:
                delta, mk, st = layer_delta(cfg, layer.act, pre, h, m[k], n_pos, row_weight)
                grads[i] = grad_fn(-delta / n_pos)
                ms.append(mk)
                stats.update({f"ff{k + 1}/{n}": v for n, v in st.items()})
            hs[i] = h
        if sources is not None:
            rin = jnp.concatenate([hs[j].reshape(hs[j].shape[0], -1) for j in sources], axis=-1)
        else:
            rin = h
        return hs, prep(out, rin), grads, tuple(ms), stats

    def readout(params, rin):
        return layers[out].apply(params[out], rin)[0]

    def init_fn(key, params):
        x0 = jax.ShapeDtypeStruct((1, *arch.input_shape), jnp.float32)
        code0 = None if embed == "none" else neutral
        hs = jax.eval_shape(lambda p, x: forward(p, x, code0)[0], params, x0)
        m = tuple(jnp.full(hs[i].shape[1:], cfg.peer_init, jnp.float32) for i in ff)
        return FFState(m, jnp.zeros((), jnp.int32))

    def update_fn(params, state, batch, key):
        k_neg, k_mix = jax.random.split(key)
        x, y = batch.x, batch.y
        B = x.shape[0]
        if embed == "none":  # unsupervised: positives = images, negatives = hybrid images
            xs = jnp.concatenate([x, hybrid_images(k_mix, x, cfg.blur_iterations)], axis=0)
            _, rin, grads, m_new, stats = forward(params, xs, None, state.mean_activity, B)
            rin = rin[:B]
        else:
            parts = first_parts(params, x) if split else None
            _, rin, _, _, _ = forward(params, x, neutral, parts=parts)
            z = readout(params, rin)  # the read-out of the neutral pass picks the hard negatives
            y_neg = negative_labels(cfg.negatives, k_neg, jax.lax.stop_gradient(z), y, heads)
            codes = Labels(jnp.concatenate([y, y_neg], axis=0))  # positive rows, then negative rows
            labelled = jnp.any(y >= 0, axis=-1).astype(jnp.float32)
            w = jnp.concatenate([labelled, labelled])
            _, _, grads, m_new, stats = forward(params, x, codes, state.mean_activity, B, w, parts=parts)
        z = readout(params, rin)
        e = core.output_error(z, y, heads) / B  # softmax CE gradient on stop-gradient inputs: the read-out only
        g_out = local.param_grad(layers[out], params[out], rin, e)
        if cfg.schedule == "greedy":
            active = jnp.minimum(state.step // cfg.greedy_steps, len(ff) - 1)
            grads = {i: jax.tree.map(lambda g, k=k: jnp.where(active == k, g, 0.0), grads[i])
                     for k, i in enumerate(ff)}
        pseudo = tuple(grads[i] if i in grads else (g_out if i == out else jax.tree.map(jnp.zeros_like, params[i]))
                       for i in range(len(layers)))
        metrics = {"loss": sum(stats[f"ff{k + 1}/loss"] for k in range(len(ff))),
                   "readout_loss": core.loss(z, y, heads), **stats}
        return pseudo, FFState(m_new, state.step + 1), metrics

    scored = ff[min(cfg.goodness_from, len(ff)) - 1:]  # a single hidden layer has nothing above layer 1
    sign = -1.0 if cfg.goodness == "min_ssq" else 1.0

    def predict_fn(params, state, x):
        if cfg.classifier == "softmax":
            return readout(params, forward(params, x, None if embed == "none" else neutral)[1])
        parts = first_parts(params, x) if split else None  # shared by every candidate label

        def scores(c):  # c (T,): one candidate unit on, every other unit 0
            hs = forward(params, x, c, parts=parts)[0]
            return sign * sum(goodness(hs[i], cfg.goodness) for i in scored)

        return jax.vmap(scores, out_axes=1)(strength * jnp.eye(T, dtype=jnp.float32))

    # the curriculum's 4AFC forced choice compares images by their goodness with the uttered label (curriculum §2)
    token_scores = predict_fn if cfg.classifier == "goodness" else None
    return core.Rule(init_fn, update_fn, predict_fn, token_scores)


# ------------------------------------------------------------------------------------------- optimizer


class FFCodeSGDState(NamedTuple):
    count: jax.Array
    smoothed: optax.Params
    """ffcode's ``weightsgrad``: the smoothed ascent direction g."""


def schedule_gain(decay: str, epochs: float, steps_per_epoch: int) -> Callable:
    """count → lr multiplier: 1 for epochs e ≤ E/2 (1-based), then (1 + 2(E − e))/E (ffcode) or 2(1 + E − e)/E
    (loeweX); ``none`` keeps 1."""
    if decay not in _DECAY:
        raise ValueError(f"rule.ffcode_optimizer.decay={decay!r}: choose one of {', '.join(_DECAY)}")

    def gain(count):
        e = (count // steps_per_epoch + 1).astype(jnp.float32)
        if decay == "ffcode":
            late = (1.0 + 2.0 * (epochs - e)) / epochs
        elif decay == "loewex":
            late = 2.0 * (1.0 + epochs - e) / epochs
        else:
            return jnp.ones((), jnp.float32)
        return jnp.where(e <= epochs / 2, 1.0, late)

    return gain


def ffcode_sgd(epsilon: float, weight_cost: float, delay: float = 0.9,
               gain: Callable | None = None) -> optax.GradientTransformation:
    """``ffcode``'s step as an optax transformation of descent-sign pseudo-gradients d = −ΔW::

        g ← delay·g + (1 − delay)·ΔW;   w ← w + ε_t (g − wc·w);   b ← b + ε_t g        (ε_t = ε·gain(count))

    The weight cost acts on leaves named ``w`` only and sits outside the smoothing, as in ``ffnew.m``.
    """
    gain = gain or (lambda count: jnp.ones((), jnp.float32))

    def init_fn(params):
        return FFCodeSGDState(jnp.zeros((), jnp.int32), jax.tree.map(jnp.zeros_like, params))

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("ffcode_sgd needs params (weight cost)")
        g = jax.tree.map(lambda s, d: delay * s - (1.0 - delay) * d, state.smoothed, updates)
        lr = epsilon * gain(state.count)

        def step(path, gi, wi):
            is_w = getattr(path[-1], "key", None) == "w"
            return lr * (gi - weight_cost * wi) if is_w else lr * gi

        return jax.tree_util.tree_map_with_path(step, g, params), FFCodeSGDState(state.count + 1, g)

    return optax.GradientTransformation(init_fn, update_fn)


def optimizer(cfg: Config, arch, make_opt) -> optax.GradientTransformation:
    """The run's optimizer, or per-group optimizers for the FF layers and the read-out (``optax.partition``)."""
    out = arch.param_layers[-1]
    labels = tuple("readout" if i == out else "ff" for i in range(len(arch.layers)))
    o = cfg.ffcode_optimizer
    if o is not None:
        spe = o.steps_per_epoch or getattr(make_opt, "steps_per_epoch", None)
        epochs = o.epochs
        if not epochs and getattr(make_opt, "total_steps", None) and spe:
            epochs = make_opt.total_steps / spe
        if not epochs or not spe:
            raise ValueError("rule.ffcode_optimizer needs the schedule length: set rule.ffcode_optimizer.epochs=E and "
                             "rule.ffcode_optimizer.steps_per_epoch=N (this lab version does not pass them itself)")
        gain = schedule_gain(o.decay, float(epochs), int(spe))
        ff_opt = ffcode_sgd(o.epsilon, o.weight_cost, o.delay, gain)
        ro_opt = ffcode_sgd(o.epsilon_sup, o.sup_weight_cost, o.delay, gain)
    elif cfg.readout_optimizer is not None:
        ff_opt, ro_opt = make_opt(None), make_opt(cfg.readout_optimizer)
    else:
        return make_opt(None)
    return optax.partition({"ff": ff_opt, "readout": ro_opt}, lambda params: core.layer_labels(params, labels))


RULE = core.RuleSpec("forward_forward", Config, make, aliases=("ff",),
                     doc="Forward-Forward: layer-local goodness of positive vs negative data (Hinton 2022)",
                     optimizer=optimizer)
