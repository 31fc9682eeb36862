"""Counter-current learning (Kao & Hariharan, NeurIPS 2024, arXiv:2409.19841): a forward network and a mirrored
feedback network with separate weights, trained layer pair by layer pair.

**Networks.** Forward layers W_l: d_{l−1} → d_l (l = 1..L, the architecture's parameter layers); feedback layers
V_l: d_l → d_{l−1}, one per forward layer, held in the rule state. sg = ``lax.stop_gradient``, σ_l the forward
block l's activation (and BN, where the architecture has one)::

    A_0 = X,   A_l = σ_l(W_l sg(A_{l−1})) (l < L),   Z = W_L sg(A_{L−1})           forward (layer inputs detached)
    B_L = I_C (class codes, C rows),   B_{l−1} = σ_{l−1}(V_l sg(B_l)),   B_0 = V_1 sg(B_1)   feedback (B_0 linear)

A "layer" here is a parameter layer plus the parameter-free layers after it (pool, flatten), so A_l is what the
next parameter layer reads. A dense V_l is a matrix; a conv V_l mirrors its forward block: ×r nearest upsample
then a k×k stride-1 conv if the block shrinks the map by r (stride or pooling), a stride-r conv if it grows it by r
(the autoencoder's decoder). Feedback layers have biases iff their forward layers do.

**Losses** (S_l = A_l B_lᵀ, n × C; Y the n × C one-hot target; M masks the columns of unlabelled heads)::

    mlp:  ℓ_l = (256·λ_C / d_l) · mean_{i,c} M_ic (S_l − Y)²_ic                         (d_l = A_l's size)
    cnn:  ℓ_l = λ_C · mean(M ⊙ (Â_l B̂_lᵀ − Y)²) + λ_ssl · [mean((Â_l Â_lᵀ − I_n)²) + mean((B̂_l B̂_lᵀ − I_C)²)]
          with Â, B̂ the rows of A_l, B_l flattened and divided by (‖row‖ + 1e-8)
    L  =  Σ_{l=0}^{L−1} ℓ_l + CE(Z, y)

The paper's own loss equation is unverified (spec §2.1); these are the reference code's losses. Because every
layer input is detached, pair l reaches exactly W_l and V_{l+1}; pair 0 (X ↔ B_0) trains only V_1;
the output layer W_L is trained only by CE. One scalar is differentiated once; the stop-gradients make it local.

- ``feedback_input=per_sample``: B_L = onehot(y) (n rows) and ℓ_l = (256·λ_C/d_l)·mean((A_l − B_l)²), the paired
  MSE of the autoencoder (the spec's choice of scale; the paper's own equation is unverified).
- ``loss=ae`` (autoencoder; B_L = the input image, A_0's layout): pairs l = 0..L, the last one (Z ↔ X) training the
  output layer; ℓ_l = H_l·λ_C·MSE(A_l, B_l) + H_l·λ_D·MSE(Ã_l, B̃_l) for hidden pairs, H_l·λ_C·MSE at both ends;
  H_l = the map's height; Ã, B̃ centred over space per (sample, channel) and divided by their spatial L2 norm + 1e-8.
  No CE. The metric ``loss`` is then the reconstruction MSE(Z, X).

**Step.** Gradient g = ∂(s·L)/∂(W, V) with the warm-up factor s = (t+1)/``warmup_steps`` for steps t < warmup
(it scales the loss, not the lr). With ``grad_centralisation`` each output unit's weight gradient has its mean over
the unit's inputs removed (biases untouched), in both networks. The forward gradients are returned as the
pseudo-gradients (descent sign; they *are* gradients), so the run's optimizer applies them, with its own
``optimizer.clip_norm`` as the forward clip. The feedback gradients are applied inside ``update`` by this rule's
``feedback_optimizer`` (its own ``clip_norm`` is the feedback clip), whose optax state lives in the rule state.

**Confident-sample filter** (``filter_target``): a sample whose every labelled head has softmax(Z)_y > 0.9 (the
reference's hard-coded |p − 1| < 0.1) has its rows of every A_l zeroed (for ``per_sample``: its rows dropped),
so it gives no gradient to any pair. The mask is computed from the same forward pass and carries no gradient.

**Inference**: the forward network only (``predict`` = the architecture's forward pass).

Reference code: IandRover/CCL-NeurIPS24 @ 789a8e48bdc3 — ``utils/loss.py`` (``compute_scl_loss_classification``:
``F.mse_loss(A@B.T, target) / A.shape[1] * loss_scale_C * 256``; ``compute_scl_loss_classification_cnn_test``;
``filter_target``; ``gradient_centralization``: ``grad -= grad.mean(dim=1)``), ``models/layers.py`` (``C2Linear``,
``C2Conv``: ``x.detach()`` at every layer input, ``reverse`` = upsample + conv), ``models/models_cnn_ae_legacy.py``
(``compute_SCL_loss_AE``, init), ``main_class_mlp.py`` (class codes ``T10``, warm-up ``loss *= (batch_idx+1)/warmup``,
separate ``clip_grad_norm_`` and ``optim.SGD`` per network, best-validation-CE model selection).

**Multiple heads** (the reference has one): C = ``heads.total``, the class codes are I_C over all heads' units,
Y is ``heads.one_hot(y)`` and the columns of a sample's unlabelled heads are masked out of the similarity losses
(M; the mean still divides by n·C, so with every head labelled it equals the reference).

**Deviations.**

- Model selection is the run's business, not the rule's: the lab's ``val_fraction=0.1 selection=best_val`` (set by
  every ``sweeps/ccl_*.toml``) holds out 10 % of the training set and reports, per seed, the test metrics of the
  evaluation with the lowest validation loss (CE; reconstruction MSE for the autoencoder), as the reference does
  with its best validation CE; ``selection=last`` reports the last step instead. Differences: the held-out rows are
  one fixed draw (seed 2023) shared by every seed and rule, not the reference's own draw; candidates are the lab's
  evaluations (every epoch at the presets' budgets, as the reference), the untrained step 0 excluded.
- Feedback schedule length: the lab's ``build`` passes the run's optimizer factory (``make(..., make_opt=...)``),
  so a non-constant ``feedback_optimizer.schedule`` runs over the run's own length; ``feedback_schedule_steps`` is
  needed only when ``make`` is called without it (tests, scripts).
- Autoencoder: the lab's image tasks score an image-to-image network by its test reconstruction MSE
  (``test/mse``); the backprop autoencoder (MSE(output, input)) and the input / backprop / CCL figure are
  ``python -m localrules.sweeps.ccl_ae_fmnist_png``, since the lab's ``rule=backprop`` trains class heads.
- BatchNorm (the autoencoder) uses batch statistics also at test time and has no affine parameters (the
  reference's are never optimised); feedback biases start at zero (the reference leaves PyTorch's init on some).
- The per-sample filter form and the M column mask exist only for multiple heads / ``per_sample``; with one head
  and class codes the gradients equal the reference's.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from localrules import core
from localrules.architectures.ccl_cnn import batch_norm, conv2d, upsample
from localrules.architectures.ccl_mlp import torch_uniform
from localrules.optim import OptimizerConfig, make_optimizer

CONFIDENT = 0.9
"""The filter's threshold on softmax(Z)_y, hard-coded in the reference (``diff < 0.1``)."""


@dataclasses.dataclass(frozen=True)
class Config:
    feedback_input: str = "class_codes"
    """class_codes: the feedback net reads I_C and the loss compares A_l B_lᵀ with onehot(y) (reference code) |
    per_sample: it reads onehot(y) and the loss is the paired MSE (the spec's option; paper unverified)."""
    loss: str = "auto"
    """mlp (256·λ_C/d_l similarity loss) | cnn (normalised, with decorrelation) | ae (autoencoder) | auto (cnn
    when the architecture has conv layers, else mlp: the reference's choice per entry point)."""
    lambda_c: float = 0.5
    """λ_C, weight of the similarity term (reference MLP/MNIST/FMNIST 0.5; CIFAR/STL CNN 1; AE 1)."""
    lambda_ssl: float = 0.5
    """λ_ssl, weight of the two decorrelation terms of the cnn loss (reference ``loss_scale_ssl`` 0.5)."""
    lambda_d: float = 1.0
    """λ_D, weight of the centred-normalised term of the ae loss (reference ``loss_scale_D`` 1)."""
    filter_target: bool = False
    """Zero the activations of samples already predicted with p_y > 0.9 (reference ``filter_target`` ≠ 0; on
    only in the CIFAR-10 CNN recipe)."""
    grad_centralisation: bool = False
    """Remove each output unit's mean weight gradient, both networks (reference ``GradC``; on for CIFAR/STL CNN
    and the AE)."""
    warmup_steps: int = 0
    """Scale the loss by (t+1)/warmup_steps for steps t < warmup_steps (reference ``warmup``: 0 MLP, 100 CNN/AE)."""
    feedback_optimizer: OptimizerConfig = OptimizerConfig(name="sgd", lr=1.0, momentum=0.0, clip_norm=1.0)
    """Optimizer of the feedback network; its clip_norm is the feedback clip (reference MLP: SGD lr_B 1, momentum
    0, grad_clip_B 1). Set as ``rule.feedback_optimizer.lr=...``."""
    feedback_schedule_steps: int = 0
    """Length in steps of a non-constant feedback schedule when ``make`` is called without the run's optimizer
    factory (the lab's runs pass it, so there the schedule runs over the run's length and this is unused)."""
    feedback_init: str = "torch_default"
    """torch_default: U(±1/√fan_in) (reference classification nets) | orthogonal (reference autoencoder)."""
    feedback_gain: tuple[float, ...] = ()
    """Per-feedback-layer init multipliers, V_1 first (empty = all 1). Reference AE: [0, 0.001, 0.001, 0.001,
    1, 1, 1, 1] (encoder feedback ×0.001, its outermost ×0)."""


class CCLState(NamedTuple):
    V: tuple
    """Feedback network: V[l−1] = {"w": ..., ("b": ...)} is V_l, mapping A_l's shape to A_{l−1}'s."""
    opt_state: optax.OptState
    """State of the feedback optimizer."""
    step: jax.Array
    """Update steps taken (drives the warm-up)."""


class Block(NamedTuple):
    """Forward layer l: parameter layer ``p`` and the parameter-free layers up to ``end`` (exclusive)."""

    p: int
    end: int
    in_shape: tuple
    """Per-example shape of A_{l−1} (the parameter layer's input)."""
    out_shape: tuple
    """Per-example shape of A_l (the block's output)."""
    map_shape: tuple
    """Per-example (H, W, C) shape of the block's last feature map before any flatten (conv blocks)."""


def blocks_of(arch) -> tuple[Block, ...]:
    """Split an architecture into CCL layers: one per parameter layer, with the parameter-free layers after it."""
    P = arch.param_layers
    if not P:
        raise ValueError(f"rule=counter_current: architecture {arch.name} has no layer with parameters")
    params = jax.eval_shape(arch.init, jax.random.PRNGKey(0))
    h = jax.ShapeDtypeStruct((2,) + tuple(arch.input_shape), jnp.float32)
    shapes = []
    for i, layer in enumerate(arch.layers):
        h = jax.eval_shape(lambda p, z, layer=layer: layer.apply(p, z)[1], params[i], h)
        shapes.append(tuple(h.shape[1:]))
    out = []
    for l, p in enumerate(P):
        end = P[l + 1] if l + 1 < len(P) else len(arch.layers)
        in_shape = shapes[p - 1] if p > 0 else tuple(arch.input_shape)
        maps = [s for s in shapes[p:end] if len(s) == 3]
        out.append(Block(p, end, in_shape, shapes[end - 1], maps[-1] if maps else ()))
    return tuple(out)


def centralise(grads):
    """Gradient centralisation: every weight ``w`` (…, D_out) loses its mean over all but the output axis."""

    def one(path, g):
        if getattr(path[-1], "key", None) != "w":
            return g
        return g - jnp.mean(g, axis=tuple(range(g.ndim - 1)), keepdims=True)

    return jax.tree_util.tree_map_with_path(one, grads)


# ------------------------------------------------------------------------------------------- pair losses


def _rows(x: jax.Array) -> jax.Array:
    return x.reshape(x.shape[0], -1)


def similarity_loss(A, B, Y, M, scale):
    """mlp pair loss: scale · mean_{i,c} M_ic ((A Bᵀ)_ic − Y_ic)²; A (n, …), B (C, …), Y, M (n, C)."""
    S = _rows(A) @ _rows(B).T
    return scale * jnp.mean(M * (S - Y) ** 2)


def safe_norm(x: jax.Array, axis) -> jax.Array:
    """L2 norm over ``axis`` (kept), with gradient 0 instead of NaN at an all-zero slice (a filtered sample, a
    1×1 map after centring), as PyTorch's ``norm`` gives."""
    s = jnp.sum(x**2, axis=axis, keepdims=True)
    pos = s > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, s, 1.0)), 0.0)


def normalise_rows(x: jax.Array) -> jax.Array:
    """Rows flattened and divided by (‖row‖ + 1e-8)."""
    r = _rows(x)
    return r / (safe_norm(r, 1) + 1e-8)


def normalised_similarity_loss(A, B, Y, M, lambda_c, lambda_ssl):
    """cnn pair loss: λ_C·mean(M ⊙ (ÂB̂ᵀ − Y)²) + λ_ssl·[mean((ÂÂᵀ − I_n)²) + mean((B̂B̂ᵀ − I_C)²)]."""
    a, b = normalise_rows(A), normalise_rows(B)
    sim = lambda_c * jnp.mean(M * (a @ b.T - Y) ** 2)
    dec_a = jnp.mean((a @ a.T - jnp.eye(a.shape[0], dtype=a.dtype)) ** 2)
    dec_b = jnp.mean((b @ b.T - jnp.eye(b.shape[0], dtype=b.dtype)) ** 2)
    return sim + lambda_ssl * (dec_a + dec_b)


def paired_loss(A, B, w, scale):
    """per_sample pair loss: scale · mean_{i,j} w_i (A_ij − B_ij)²; A, B (n, …), w (n,) sample weights."""
    return scale * jnp.mean(w[:, None] * (_rows(A) - _rows(B)) ** 2)


def _centre_normalise(x):
    x = x - jnp.mean(x, axis=(1, 2), keepdims=True)
    return x / (safe_norm(x, (1, 2)) + 1e-8)


def ae_pair_loss(A, B, lambda_c, lambda_d, hidden: bool):
    """ae pair loss on NHWC maps: H·λ_C·MSE(A, B) (+ H·λ_D·MSE(Ã, B̃) for hidden pairs)."""
    h = A.shape[1]
    loss = h * lambda_c * jnp.mean((A - B) ** 2)
    if hidden:
        loss = loss + h * lambda_d * jnp.mean((_centre_normalise(A) - _centre_normalise(B)) ** 2)
    return loss


def _head_columns(valid: jax.Array, heads: core.Heads) -> jax.Array:
    """(n, H) per-head flags → (n, C) per-unit flags."""
    return jnp.concatenate([jnp.broadcast_to(valid[:, i : i + 1], (valid.shape[0], s))
                            for i, s in enumerate(heads.sizes)], axis=-1)


def confident(Z, y, heads: core.Heads) -> jax.Array:
    """(n,) bool: the sample has a label and every labelled head gives its label probability > 0.9."""
    labelled = y >= 0
    ok = []
    for i, s in enumerate(heads.sizes):
        p = jax.nn.softmax(heads.slice(Z, i), axis=-1)
        py = jnp.take_along_axis(p, jnp.maximum(y[:, i], 0)[:, None], axis=-1)[:, 0]
        ok.append((py > CONFIDENT) | ~labelled[:, i])
    return jnp.all(jnp.stack(ok, -1), -1) & jnp.any(labelled, -1)


# ------------------------------------------------------------------------------------------- the rule


def _check(cfg: Config, arch, blocks) -> str:
    if cfg.feedback_input not in ("class_codes", "per_sample"):
        raise ValueError(f"rule.feedback_input={cfg.feedback_input!r}: choose class_codes or per_sample")
    if cfg.loss not in ("auto", "mlp", "cnn", "ae"):
        raise ValueError(f"rule.loss={cfg.loss!r}: choose auto, mlp, cnn or ae")
    if cfg.feedback_init not in ("torch_default", "orthogonal"):
        raise ValueError(f"rule.feedback_init={cfg.feedback_init!r}: choose torch_default or orthogonal")
    if cfg.feedback_gain and len(cfg.feedback_gain) != len(blocks):
        raise ValueError(f"rule.feedback_gain has {len(cfg.feedback_gain)} values; the architecture has "
                         f"{len(blocks)} feedback layers (one per parameter layer), V_1 first")
    if cfg.warmup_steps < 0:
        raise ValueError(f"rule.warmup_steps={cfg.warmup_steps}: must be ≥ 0")
    kind = cfg.loss
    if kind == "auto":
        kind = "cnn" if any(arch.layers[b.p].kind == "conv" for b in blocks) else "mlp"
    if kind == "ae":
        if blocks[-1].out_shape != blocks[0].in_shape or len(blocks[0].in_shape) != 3:
            raise ValueError(f"rule.loss=ae needs an image-to-image architecture (e.g. arch=ccl_ae); {arch.name} "
                             f"maps {blocks[0].in_shape} to {blocks[-1].out_shape}")
    for l, b in enumerate(blocks, 1):
        if arch.layers[b.p].kind == "conv":
            if len(b.in_shape) != 3 or not b.map_shape:
                raise ValueError(f"rule=counter_current: conv layer {b.p} of {arch.name} needs (H, W, C) maps")
            hi, ho = b.in_shape[0], b.map_shape[0]
            if max(hi, ho) % min(hi, ho):
                raise ValueError(f"rule=counter_current cannot mirror layer {b.p} of {arch.name}: it maps {hi}×{hi} "
                                 f"to {ho}×{ho}, not an integer factor; use inputs divisible by the total stride")
        elif arch.layers[b.p].kind != "dense":
            raise ValueError(f"rule=counter_current: layer {b.p} of kind {arch.layers[b.p].kind!r} has parameters; "
                             "only dense and conv layers can be mirrored")
    return kind


def mirror_fn(arch, blocks) -> Callable:
    """``mirror(l, v, B_l) -> B_{l−1}``: feedback layer V_l (params ``v``) mirroring forward layer l."""
    layers = arch.layers

    def mirror(l: int, v, h):
        """B_{l-1} = post_{l-1}(V_l B_l); see the module docstring."""
        b, fwd = blocks[l - 1], layers[blocks[l - 1].p]
        n = h.shape[0]
        if fwd.kind == "dense":
            h = _rows(h) @ v["w"]
            if "b" in v:
                h = h + v["b"][None, :]
            h = h.reshape((n,) + b.in_shape)
        else:
            h = h.reshape((n,) + b.map_shape)
            hi, ho = b.in_shape[0], b.map_shape[0]
            if hi > ho:
                h = conv2d(upsample(h, hi // ho), v["w"], 1)
            else:
                h = conv2d(h, v["w"], ho // hi)
            if "b" in v:
                h = h + v["b"][None, None, None, :]
        if l >= 2:  # B_{l-1} gets forward layer l-1's normalisation and activation; B_0 stays linear
            below = layers[blocks[l - 2].p]
            if below.meta.get("bn") == "post":
                h = batch_norm(h)
            h = below.act(h)
        return h

    return mirror


def make(cfg: Config, arch, heads: core.Heads, make_opt: Callable | None = None) -> core.Rule:
    """Build the rule.

    Args:
      cfg: hyper-parameters.
      arch: the forward architecture; the feedback network mirrors it.
      heads: the output heads (C = ``heads.total`` class codes).
      make_opt: optional optimizer factory of the run (``make_opt(OptimizerConfig) -> optax``, knowing the run's
        length); without it, a non-constant feedback schedule runs over ``cfg.feedback_schedule_steps`` steps.
    """
    blocks = blocks_of(arch)
    kind = _check(cfg, arch, blocks)
    L = len(blocks)
    layers = arch.layers

    if make_opt is not None:
        fb_opt = make_opt(cfg.feedback_optimizer)
    else:
        if cfg.feedback_optimizer.schedule != "constant" and cfg.feedback_schedule_steps <= 0:
            raise ValueError(f"rule.feedback_optimizer.schedule={cfg.feedback_optimizer.schedule!r} needs "
                             "rule.feedback_schedule_steps=<the run's steps> (the rule does not know the run's length)")
        fb_opt = make_optimizer(cfg.feedback_optimizer, cfg.feedback_schedule_steps, None)

    mirror = mirror_fn(arch, blocks)

    def init_fn(key, params):
        keys = jax.random.split(key, L)
        V = []
        for l, (k, b) in enumerate(zip(keys, blocks), 1):
            fwd = layers[b.p]
            if fwd.kind == "dense":
                shape, fan_in = (math.prod(b.out_shape), math.prod(b.in_shape)), math.prod(b.out_shape)
            else:
                kk = fwd.meta["k"]
                shape, fan_in = (kk, kk, b.map_shape[-1], b.in_shape[-1]), kk * kk * b.map_shape[-1]
            if cfg.feedback_init == "orthogonal":
                w = jax.nn.initializers.orthogonal()(k, shape, jnp.float32)
            else:
                w = torch_uniform(k, shape, fan_in)
            if cfg.feedback_gain:
                w = cfg.feedback_gain[l - 1] * w
            v = {"w": w}
            if "b" in params[b.p]:
                v["b"] = jnp.zeros((shape[-1],), jnp.float32)
            V.append(v)
        V = tuple(V)
        return CCLState(V, fb_opt.init(V), jnp.zeros((), jnp.int32))

    losses = _losses_fn(cfg, kind, arch, heads, blocks, mirror)

    def update_fn(params, state, batch, key):
        warm = jnp.ones((), jnp.float32)
        if cfg.warmup_steps > 0:
            warm = jnp.where(state.step < cfg.warmup_steps, (state.step + 1) / cfg.warmup_steps, 1.0)

        def objective(params, V):
            pairs, task, aux = losses(params, V, batch)
            total = sum(pairs) + (task if kind != "ae" else 0.0)
            return warm * total, (pairs, task, aux)

        (_, (pairs, task, aux)), (g_w, g_v) = jax.value_and_grad(objective, argnums=(0, 1), has_aux=True)(
            params, state.V)
        if cfg.grad_centralisation:
            g_w, g_v = centralise(g_w), centralise(g_v)
        upd, opt_state = fb_opt.update(g_v, state.opt_state, state.V)
        V = optax.apply_updates(state.V, upd)
        metrics = {"loss": task, "local_loss": sum(pairs), "filtered": aux["filtered"],
                   "feedback_grad_norm": optax.tree.norm(g_v), "forward_grad_norm": optax.tree.norm(g_w)}
        metrics.update({f"pair{l}": p for l, p in enumerate(pairs)})
        return g_w, CCLState(V, opt_state, state.step + 1), metrics

    def predict_fn(params, state, x):
        return arch.apply(params, x)

    return core.Rule(init_fn, update_fn, predict_fn)


def _losses_fn(cfg: Config, kind: str, arch, heads: core.Heads, blocks, mirror):
    L = len(blocks)
    layers = arch.layers
    first = blocks[0].p

    def losses(params, V, batch):
        """(pair losses ℓ_0..ℓ_{L−1} (ℓ_L too for ae), task loss, aux) of one batch."""
        x = batch.x
        for i in range(first):  # parameter-free prefix (flatten, frames → channels): A_0 is its output
            x = layers[i].apply(params[i], x)[1]
        A, h = [x], x
        for b in blocks:
            h = jax.lax.stop_gradient(h)
            for i in range(b.p, b.end):
                h = layers[i].apply(params[i], h)[1]
            A.append(h)
        Z = A[L]
        n = x.shape[0]

        if kind == "ae":
            top = jax.lax.stop_gradient(A[0])
        elif cfg.feedback_input == "class_codes":
            top = jnp.eye(heads.total, dtype=Z.dtype)
        else:
            top = heads.one_hot(batch.y).astype(Z.dtype)
        Bs, h = [None] * (L + 1), top
        Bs[L] = top
        for l in range(L, 0, -1):
            h = mirror(l, V[l - 1], jax.lax.stop_gradient(h))
            Bs[l - 1] = h

        if kind == "ae":
            pairs = [ae_pair_loss(A[l], Bs[l], cfg.lambda_c, cfg.lambda_d, 0 < l < L) for l in range(L + 1)]
            return pairs, jnp.mean((Z - A[0]) ** 2), {"filtered": jnp.zeros((), Z.dtype)}

        keep = jnp.ones((n,), Z.dtype)
        if cfg.filter_target:
            keep = 1.0 - jax.lax.stop_gradient(confident(Z, batch.y, heads)).astype(Z.dtype)
        Y = heads.one_hot(batch.y).astype(Z.dtype)
        M = _head_columns(batch.y >= 0, heads).astype(Z.dtype)
        pairs = []
        for l in range(L):
            d = math.prod(A[l].shape[1:])
            if cfg.feedback_input == "per_sample":
                pairs.append(paired_loss(A[l], Bs[l], keep, 256.0 * cfg.lambda_c / d))
                continue
            a = A[l] * keep.reshape((n,) + (1,) * (A[l].ndim - 1))
            if kind == "mlp":
                pairs.append(similarity_loss(a, Bs[l], Y, M, 256.0 * cfg.lambda_c / d))
            else:
                pairs.append(normalised_similarity_loss(a, Bs[l], Y, M, cfg.lambda_c, cfg.lambda_ssl))
        return pairs, core.loss(Z, batch.y, heads), {"filtered": 1.0 - jnp.mean(keep)}

    return losses


def pair_losses(cfg: Config, arch, heads: core.Heads) -> Callable:
    """``losses(params, V, batch) -> (pairs, task_loss, aux)``: the terms ``update`` differentiates.

    ``pairs[l]`` is ℓ_l (l = 0..L−1; also l = L for ``loss=ae``); ``task_loss`` is CE(Z, y) (ae: MSE(Z, X)).
    For tests and analysis: differentiating ``pairs[l]`` shows which parameters pair l reaches.
    """
    blocks = blocks_of(arch)
    kind = _check(cfg, arch, blocks)
    return _losses_fn(cfg, kind, arch, heads, blocks, mirror_fn(arch, blocks))


def default_arch():
    """The reference's bias-free ELU MLP (``arch=ccl_mlp``) when a command line names no architecture."""
    from localrules.architectures import ccl_mlp

    return ccl_mlp.Config()


RULE = core.RuleSpec("counter_current", Config, make, aliases=("ccl",), default_arch=default_arch,
                     doc="forward net + mirrored feedback net trained pair by pair (Kao & Hariharan 2024)")
