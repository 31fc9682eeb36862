"""SoftHebb: soft winner-take-all Hebbian plasticity without feedback (Journé et al., ICLR 2023).

**Notation.** A Hebbian layer has K neurons with weights W (K, D), row w_k (the lab stores ``w`` (D, K) = Wᵀ; a
conv kernel ``(kh, kw, C_in, K)`` is ``w.reshape(D, K)`` with D = kh·kw·C_in). The competition instances n are
the samples (dense) or every (sample, output pixel) pair (conv, x_n = the reflect-padded input patch of the
block's batch-normalised input). u_{n,k} = w_k · x_n (the layer's ``pre``).

**Plasticity** (one Hebbian step on a batch; reference plasticity ``softkrotov``, mode 0)::

    y_{n,k}  = softmax_k(t · u_{n,k})                       t = 1/τ = t_invert; softmax over neurons (channels)
    ỹ_{n,k}  = +y_{n,k} if k = argmax_l u_{n,l}, else −y_{n,k}   every non-winner is anti-Hebbian
    ΔW       = Ỹᵀ X − diag(Σ_n ỹ_{n,k} u_{n,k}) W            Oja-like; the flip changes the sign of BOTH terms
    ΔW      ← ΔW / (max|ΔW| + 1e-30)                         ONE scalar over the whole layer, every step
    η_k      = η0 · (|‖w_k‖₂ − 1| + 1e-10)^q                 per neuron, norms of W before the step
    W       ← W + η ⊙ ΔW                                     ascent

``plasticity`` variants: ``soft`` (Moraitis et al. 2022: ỹ = y), ``hard`` (ỹ = onehot argmax u), ``hard_krotov``
(winner +1, the ``krotov_rank``-th ranked −``krotov_delta``) and ``none`` (ỹ = 0: the random-frozen-features
baseline; BN statistics still move). ``lr_mode=linear_decay``: η_k = η0·(1 − progress through the layer's
phase), no norm dependence (appendix B.3 ablation). ``update_norm=none`` skips the max-normalisation.

**Descent-sign convention.** The rule returns the whole step as a pseudo-gradient, ``g = −η ⊙ ΔW`` (η is per
neuron and norm-dependent, so it cannot be an optimizer learning rate), and :data:`RULE` declares the optimizer
that applies it: ``optax.sgd(1.0)`` on the Hebbian layers (``W − g = W + ηΔW``) and the run's ``optimizer.*`` on
the head only. Under ``rule=compose`` the same must be asked for explicitly: ``rule.hidden_optimizer.name=sgd
rule.hidden_optimizer.lr=1``.

**Block forward and BatchNorm.** Blocks are ``BN(no affine) → conv (reflect pad, no bias) → Triangle^p → pool``
(``arch=softhebb_cnn`` / ``softhebb_mlp``). The block being trained runs its input BN in train mode (batch
statistics); frozen blocks use running statistics. The running statistics are the parameters ``bn_mean``/``bn_var``
of the block and move as PyTorch's (momentum 0.1, unbiased batch variance): the pseudo-gradient
``m·(running − batch)`` is exactly that EMA under ``sgd(1)``. The rule also trains the usual lab architectures
(``arch=mlp|cnn``: u = the layer's pre-activation, no BN, biases left alone).

**Training protocol** (step counter in the rule state; pure, jittable). ``training_mode=successive`` (greedy):
Hebbian layer ℓ (0-based) learns on steps ``[ℓ·S, (ℓ+1)·S)`` with S = ``hebbian_steps``, earlier layers frozen
and in eval mode; ``consecutive``: all layers learn on steps ``[0, S)`` from one forward pass. Then the head: the
last parameter layer learns by its local delta rule on the frozen features (``head=delta``: dropout on its input,
``g = h̃ᵀ(softmax(z) − onehot)/B``, exactly backprop's gradient for a linear head; its optimizer is gated to start
fresh when the Hebbian phase ends). ``hebbian_steps=0``: Hebbian layers and head all learn on every step (for
streams). ``head=none`` returns zeros for the head (for ``rule=compose rule.head_rule=backprop``).
``hebbian_batch`` splits each lab batch into sequential Hebbian micro-steps (a ``lax.scan``), so the Hebbian
phase can use the paper's batch 10 while the head trains at a larger batch in the same run.

Paper: Journé, Garcia Rodriguez, Guo, Moraitis, *Hebbian Deep Learning Without Feedback*, ICLR 2023,
arXiv:2209.11883; Moraitis et al., *SoftHebb*, Neuromorph. Comput. Eng. 2022 (the ``soft`` rule).
Reference code: NeuromorphicComputing/SoftHebb@f4252307633b — ``hebbconv.py`` ``HebbSoftKrotovConv2d.get_wta``
(mode 0 sign flip), ``HebbHardConv2d.delta_weight`` (Oja term, global ``amax`` normalisation), ``update_lr``
(adaptive η), ``update`` (``weight += lr · delta_w``), ``layer.py`` (block order), ``train.py`` (successive).

Deviations, each with its reason:
  * Phase lengths are steps (``hebbian_steps``), not epochs: a rule does not know the dataset size. Presets set
    one epoch. The default, 0 (Hebbian layers and head learning together on every step), is not the paper's
    protocol: it is what works for streams (the curriculum) and for short runs such as ``rule=softhebb`` alone,
    where a phase of one epoch would leave no steps for the head.
  * ``rule=softhebb`` without ``arch=`` uses ``softhebb_cnn.CURRICULUM``, a cheap SoftHebb CNN, not the paper's
    block: avg2/2/0 input pool → BN → 2×2 conv, stride 2, 64 channels → Triangle^1.4 → linear head on the 8×8×64
    = 4096 features (0.88 MFLOP per sample). The default task is the nursery curriculum, where a stage the rule
    does not graduate takes its whole budget (up to 3.5 M samples in all), and the paper's 96-channel 5×5 block
    on the full 32×32×6 canvas costs 2.4 ms of CPU per training sample (4.6 ms before this version's speed-ups):
    about an hour for the curriculum, which must finish in under 5 minutes. The choice among cheap variants
    (wider, larger kernels, pooled, other Triangle powers, a Triangle MLP on a 4×-pooled canvas) is tabulated at
    ``CURRICULUM``. Measured from a fresh venv on the quiet 2-core CPU (2026-12-03, fresh process, compile
    included), ``/usr/bin/time -v python -m localrules.sweep rule=softhebb``: 4 min 10 s wall (user 324.7 s,
    sys 33.6 s); S1 graduated at 2,400 samples, S5 at 33,600, S2/S3/S4/S6 not (final 0.63/0.46/0.65/0.25), ACC 0.197, BWT −0.54. Not the lab's
    ReLU MLP: there the anti-Hebbian non-winners are pushed below zero and ReLU silences them, so the features
    are worse than random ones (prototypes: 0.52 vs 0.90); the Triangle keeps the above-mean units active.
  * The winner of the soft WTA is every neuron at its row's maximum, not ``argmax`` (3× cheaper on XLA:CPU):
    they differ only on exact float ties, which random weights give only for an all-zero input patch, whose
    contribution to ΔW is zero either way.
  * The head's dropout keep probability is rounded to a multiple of 1/256 (exact for the paper's 0.5): the mask
    is drawn from as few random bits per element as that needs (:func:`dropout_mask`).
  * One run has one batch size, so the head batch is the run's batch (Fashion-MNIST presets: 60, paper 64) and
    the Hebbian batch comes from ``hebbian_batch`` micro-steps (10, as the paper).
  * The 2022 bias rule and the Lebesgue exponent p ≠ 2 are not implemented (unused by the ICLR presets).
  * Compute: under ``vmap`` over seeds the gated Hebbian work still runs during the head phase (a ``where``, not a
    branch), so the counted FLOPs per step are those of a Hebbian step plus a head step.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from localrules import core
from localrules.architectures import conv_patches
from localrules.architectures.softhebb_cnn import bn_batch_stats
from localrules.local import param_grad
from localrules.optim import gated

PLASTICITIES = ("softkrotov", "soft", "hard", "hard_krotov", "none")


@dataclasses.dataclass(frozen=True)
class Config:
    """SoftHebb hyper-parameters. Per-layer fields take one value for every Hebbian layer or one per layer."""

    plasticity: str = "softkrotov"
    """softkrotov (ICLR 2023: soft WTA, every non-winner anti-Hebbian) | soft (2022: ỹ = y) | hard (hard WTA) |
    hard_krotov | none (random frozen features). Paper default: softkrotov."""
    t_invert: tuple[float, ...] = (1.0,)
    """Inverse temperature t = 1/τ of the plasticity softmax, per layer (paper CIFAR: 1, 0.65, 0.25)."""
    lr: tuple[float, ...] = (0.08,)
    """η0 per layer (paper CIFAR: 0.08, 0.005, 0.01)."""
    power_lr: tuple[float, ...] = (0.5,)
    """q of the adaptive η = η0·|‖w‖ − 1|^q, per layer (paper CIFAR/STL `lp0.5`; ImageNet 0.75; MLP 0.2)."""
    lr_mode: str = "adaptive"
    """adaptive (norm-dependent, paper) | linear_decay (η0·(1 − progress); appendix B.3 ablation)."""
    update_norm: str = "global_max"
    """global_max (ΔW / max|ΔW| over the whole layer, reference code) | none."""
    training_mode: str = "successive"
    """successive (greedy, one layer per phase; the paper per the reference README) | consecutive (all layers in
    one phase, as demo.py)."""
    hebbian_steps: int = 0
    """Lab steps per Hebbian phase S (paper: one epoch = dataset size / batch_size; the presets set it).
    0 = no phases: Hebbian layers and head learn together on every step (for streams and short runs)."""
    hebbian_batch: int = 10
    """Hebbian micro-batch (paper CIFAR: 10; MNIST MLP: 32): each lab batch is split into sequential Hebbian
    steps of the largest divisor of batch_size not above this value. 0 = the whole lab batch."""
    bn_momentum: float = 0.1
    """Running-statistics momentum of the blocks' input BatchNorm (PyTorch default)."""
    head: str = "delta"
    """delta (the rule trains the output layer by its local delta rule = backprop of a linear head) | none (zero
    pseudo-gradients for the output layer, for rule=compose with a head rule)."""
    head_dropout: float = 0.5
    """Dropout on the head's input during head training (paper: 0.5; 2SoftMlpMNIST: 0)."""
    krotov_delta: float = 0.05
    """hard_krotov: strength δ of the anti-Hebbian ranked neuron (reference HebbHardKrotov default 0.05)."""
    krotov_rank: int = 2
    """hard_krotov: rank of the anti-Hebbian neuron (reference ranking_param 2)."""
    unroll: bool = False
    """Unroll the micro-batch scan (set automatically for FLOP counting; the trained program keeps the loop)."""


class SoftHebbState(NamedTuple):
    step: jax.Array
    """Lab steps taken: selects the training phase."""


def _per_layer(name, values, n):
    values = tuple(values)
    if len(values) == 1:
        return values * n
    if len(values) != n:
        raise ValueError(f"rule.{name} has {len(values)} values for {n} Hebbian layers: give one value or {n}")
    return values


def _check(cfg: Config):
    opts = {"plasticity": PLASTICITIES, "lr_mode": ("adaptive", "linear_decay"),
            "update_norm": ("global_max", "none"), "training_mode": ("successive", "consecutive"),
            "head": ("delta", "none")}
    for name, allowed in opts.items():
        if getattr(cfg, name) not in allowed:
            raise ValueError(f"rule.{name}={getattr(cfg, name)!r}: choose one of {', '.join(allowed)}")
    if cfg.hebbian_steps < 0 or cfg.hebbian_batch < 0:
        raise ValueError("rule.hebbian_steps and rule.hebbian_batch must be ≥ 0")
    if cfg.lr_mode == "linear_decay" and cfg.hebbian_steps == 0:
        raise ValueError("rule.lr_mode=linear_decay needs phases: set rule.hebbian_steps > 0")
    if not 0.0 <= cfg.head_dropout < 1.0:
        raise ValueError(f"rule.head_dropout={cfg.head_dropout}: must be in [0, 1)")


def layout(arch) -> tuple[tuple[int, ...], int]:
    """(indices of the Hebbian layers, index of the head): every parameter layer but the last is Hebbian."""
    pl = arch.param_layers
    if len(pl) < 2:
        raise ValueError(f"rule=softhebb needs at least one hidden layer below the output layer; {arch.name} has "
                         f"{len(pl)} parameter layer(s)")
    return tuple(pl[:-1]), pl[-1]


def head_start(cfg: Config, arch) -> int:
    """First step of the head phase (0 when every part learns on every step)."""
    n = len(layout(arch)[0])
    return cfg.hebbian_steps * (n if cfg.training_mode == "successive" else 1)


def micro_batch(hebbian_batch: int, batch_size: int) -> int:
    """The largest divisor of ``batch_size`` not above ``hebbian_batch`` (0: the whole batch)."""
    if hebbian_batch <= 0 or hebbian_batch >= batch_size:
        return batch_size
    return max(d for d in range(1, hebbian_batch + 1) if batch_size % d == 0)


def wta_signal(u: jax.Array, cfg_plasticity: str, t: float, krotov_delta: float = 0.05,
               krotov_rank: int = 2) -> tuple[jax.Array, jax.Array]:
    """ỹ (N, K) for pre-activations ``u`` (N, K), and the soft WTA y itself. See the module docstring.

    The winner is where u equals its row maximum (the softmax reuses that maximum). On XLA:CPU ``argmax`` (a
    variadic value-and-index reduction) costs about 3× the whole softmax. The two differ only on exact float
    ties, where this makes every tied neuron a winner: ties need w_k·x_n = w_l·x_n exactly, which random
    weights give only for x_n = 0 — a patch that adds nothing to ΔW (both of its terms carry x_n or u_n = 0).
    """
    m = jnp.max(u, axis=-1, keepdims=True)
    e = jnp.exp(t * (u - m))  # t > 0: max(t·u) = t·max(u)
    y = e / jnp.sum(e, axis=-1, keepdims=True)
    win = u >= m
    if cfg_plasticity == "softkrotov":
        yt = jnp.where(win, y, -y)
    elif cfg_plasticity == "soft":
        yt = y
    elif cfg_plasticity == "hard":
        yt = win.astype(u.dtype)
    elif cfg_plasticity == "hard_krotov":
        ranked = jax.lax.top_k(u, krotov_rank)[1][:, krotov_rank - 1]
        yt = win.astype(u.dtype) - krotov_delta * jax.nn.one_hot(ranked, u.shape[-1], dtype=u.dtype)
    else:  # none
        yt = jnp.zeros_like(u)
    return yt, y


def hebbian_delta(xty: jax.Array, u: jax.Array, w2d: jax.Array, yt: jax.Array, normalise: bool) -> jax.Array:
    """ΔW in the lab's (D, K) layout from the correlation ``xty = Xᵀỹ``: ``Xᵀỹ − W·diag(Σ_n ỹ ⊙ u)``, optionally
    divided by the layer's max |ΔW|."""
    # Σ_n ỹ_nk u_nk as a matrix-vector product: XLA:CPU runs a column sum over many rows (jnp.sum(axis=0))
    # about 15× slower (measured: 8.8 vs 0.5 ms for 25,600 × 32)
    s = jnp.ones((u.shape[0],), u.dtype) @ (yt * u)
    dw = xty - w2d * s[None, :]  # explicit broadcast: tests raise on rank promotion
    if normalise:
        dw = dw / (jnp.max(jnp.abs(dw)) + 1e-30)
    return dw


def dropout_mask(key, keep: float, shape) -> tuple[jax.Array, float]:
    """A Bernoulli keep-mask from b ∈ {1, 2, 4, 8} random bits per element, the fewest that express the keep
    probability rounded to a multiple of 1/256 (b = 1 for the paper's 0.5: one 32-bit threefry draw serves 32
    elements, where ``jax.random.bernoulli`` draws 32 bits per element — the dropout was ~15 % of a small
    block's step). Returns the mask and the (rounded) keep probability for the inverted-dropout scale."""
    level = min(max(round(keep * 256), 1), 256)
    if level == 256:
        return jnp.ones(shape, bool), 1.0
    bits = next(b for b in (1, 2, 4, 8) if level % (256 >> b) == 0)
    n, per = math.prod(shape), 32 // bits
    words = jax.random.bits(key, (-(-n // per),), jnp.uint32)
    shifts = jnp.arange(0, 32, bits, dtype=jnp.uint32)
    vals = (words[:, None] >> shifts[None, :]) & jnp.uint32((1 << bits) - 1)
    return vals.reshape(-1)[:n].reshape(shape) < jnp.uint32(level >> (8 - bits)), level / 256


def _correlation(layer, p, x, yt):
    """``Σ_n x_n ỹ_nᵀ`` (D, K) over the layer's competition instances: x_n = its normalised input rows (dense) or
    reflect-padded patches (conv). SoftHebb blocks compute it themselves (``meta["correlate"]``, without
    unfolding when ``conv_impl=conv``); other layers from unfolded rows. ``yt`` has the layer's ``pre`` shape."""
    meta = layer.meta
    k = yt.shape[-1]
    if meta.get("softhebb"):
        return meta["correlate"](meta["normalize"](p, x), yt)
    if layer.kind == "conv":
        pt = conv_patches(x, meta["k"], meta["stride"], meta["padding"])
        return pt.reshape(-1, pt.shape[-1]).T @ yt.reshape(-1, k)
    return x.reshape(x.shape[0], -1).T @ yt.reshape(-1, k)


def make(cfg: Config, arch, heads: core.Heads) -> core.Rule:
    _check(cfg)
    hebb, head_idx = layout(arch)
    n = len(hebb)
    t_inv, lr0, q = (_per_layer(nm, getattr(cfg, nm), n) for nm in ("t_invert", "lr", "power_lr"))
    if cfg.plasticity == "hard_krotov":
        widths = [arch.layers[i].init(jax.random.PRNGKey(0))["w"].shape[-1] for i in hebb]
        if not 1 < cfg.krotov_rank <= min(widths):
            raise ValueError(f"rule.krotov_rank={cfg.krotov_rank}: must be in 2..{min(widths)}")
    S = cfg.hebbian_steps
    start_head = head_start(cfg, arch)

    def phase(li, t):
        """(active, start step) of Hebbian layer number ``li`` at lab step ``t``."""
        if S == 0:
            return jnp.array(True), jnp.zeros((), jnp.int32)
        start = li * S if cfg.training_mode == "successive" else 0
        return (t >= start) & (t < start + S), jnp.asarray(start, jnp.int32)

    def micro_step(P, x, t, j, nm):
        """One Hebbian step on the micro-batch ``x``: returns (new params, head input, metrics)."""
        P = list(P)
        h = x
        metrics = {}
        head_in = None
        for i, layer in enumerate(arch.layers):
            p = P[i]
            if i == head_idx:
                head_in = h
            if i not in hebb:
                h = layer.apply(p, h)[1]
                continue
            li = hebb.index(i)
            active, start = phase(li, t)
            p_fwd, new = p, dict(p)
            if "bn_mean" in p:  # the block being trained uses batch statistics (BN train mode)
                m_b, v_b = bn_batch_stats(h)
                p_fwd = {**p, "bn_mean": jnp.where(active, m_b, p["bn_mean"]),
                         "bn_var": jnp.where(active, v_b, p["bn_var"])}
                cnt = h.size // h.shape[-1]
                v_unb = v_b * (cnt / max(cnt - 1, 1))
                mom = cfg.bn_momentum * active
                new["bn_mean"] = p["bn_mean"] + mom * (m_b - p["bn_mean"])
                new["bn_var"] = p["bn_var"] + mom * (v_unb - p["bn_var"])
            u, y_out = layer.apply(p_fwd, h)
            k = u.shape[-1]
            U = u.reshape(-1, k)  # (N, K)
            w2d = p["w"].reshape(-1, k)  # (D, K)
            yt, ysoft = wta_signal(U, cfg.plasticity, t_inv[li], cfg.krotov_delta, cfg.krotov_rank)
            if cfg.plasticity != "none":
                xty = _correlation(layer, p_fwd, h, yt.reshape(u.shape))  # Σ_n x_n ỹ_nᵀ, (D, K)
                dw = hebbian_delta(xty, U, w2d, yt, cfg.update_norm == "global_max")
            if cfg.lr_mode == "adaptive":
                norm = jnp.sqrt(jnp.sum(w2d * w2d, axis=0))  # (K,) before the step
                eta = lr0[li] * jnp.power(jnp.abs(norm - 1.0) + 1e-10, q[li])
            else:
                total = max(S, 1) * nm
                progress = ((t - start) * nm + j).astype(jnp.float32) / total
                eta = lr0[li] * jnp.clip(1.0 - progress, 0.0, 1.0) * jnp.ones((k,), jnp.float32)
            if cfg.plasticity != "none":  # "none" leaves w untouched (also sidesteps an XLA:CPU miscompile of
                # the all-zero update under vmap over 3 seeds, which produced NaNs)
                step = (eta * active)[None, :] * dw
                new["w"] = p["w"] + step.reshape(p["w"].shape)
            P[i] = new
            win = jnp.max(ysoft, axis=-1)
            metrics[f"winner_y/{i}"] = jnp.mean(win)
            metrics[f"w_norm/{i}"] = jnp.mean(jnp.sqrt(jnp.sum(w2d * w2d, axis=0)))
            metrics[f"eta/{i}"] = jnp.mean(eta)
            h = y_out
        return tuple(P), head_in, metrics

    def init_fn(key, params):
        if len(params) != len(arch.layers):
            raise ValueError(f"softhebb: params have {len(params)} layers, the architecture {len(arch.layers)}")
        return SoftHebbState(jnp.zeros((), jnp.int32))

    def update_fn(params, state, batch, key):
        arch.check_input(batch.x)  # a clear error (the micro-batch reshape below would fail obscurely)
        t = state.step
        b = batch.x.shape[0]
        hb = micro_batch(cfg.hebbian_batch, b)
        nm = b // hb

        def body(P, j):  # the batch is sliced in the loop: reshaped to (nm, hb, ...) it is copied under vmap
            x = jax.lax.dynamic_slice_in_dim(batch.x, j * hb, hb) if nm > 1 else batch.x
            P2, h, m = micro_step(P, x, t, j, nm)
            return P2, (h, m)

        P_end, (h_head, ms) = jax.lax.scan(body, tuple(params), jnp.arange(nm), unroll=nm if cfg.unroll else 1)
        metrics = jax.tree.map(lambda v: jnp.mean(v, axis=0), ms)
        h_head = h_head.reshape((b,) + h_head.shape[2:])  # the head's input, from the same forward passes

        grads = []
        for i, p in enumerate(params):
            if i in hebb:
                grads.append(jax.tree.map(lambda a, c: a - c, p, P_end[i]))  # = −ηΔW; BN: m·(running − batch)
            else:
                grads.append(jax.tree.map(jnp.zeros_like, p))

        # the head: dropout on its input, then the exact gradient of the task loss w.r.t. the head's parameters
        hp = params[head_idx]
        if cfg.head_dropout > 0:
            keep, p_keep = dropout_mask(key, 1.0 - cfg.head_dropout, h_head.shape)
            h_head = jnp.where(keep, h_head / p_keep, 0.0)
        _, z = arch.apply_layer(head_idx, hp, h_head)
        metrics["loss"] = core.loss(z, batch.y, heads)
        if cfg.head == "delta":
            e = core.output_error(z, batch.y, heads) / b  # ∂(batch-mean loss)/∂z
            g = param_grad(arch.layers[head_idx], hp, h_head, e)
            on = t >= start_head
            grads[head_idx] = jax.tree.map(lambda a: jnp.where(on, a, jnp.zeros_like(a)), g)
        return tuple(grads), SoftHebbState(t + 1), metrics

    def predict_fn(params, state, x):
        return arch.apply(params, x)

    return core.Rule(init_fn, update_fn, predict_fn)


def optimizer(cfg: Config, arch, make_opt) -> optax.GradientTransformation:
    """``sgd(1)`` applies the Hebbian steps as computed; the run's optimizer trains the head, started fresh (gated)
    when the Hebbian phase ends."""
    hebb, head_idx = layout(arch)
    labels = tuple("head" if i == head_idx else "hebb" for i in range(len(arch.layers)))
    head_opt = make_opt()
    start = head_start(cfg, arch)
    if start > 0:
        head_opt = gated(head_opt, start, None)
    return optax.partition({"hebb": optax.sgd(1.0), "head": head_opt},
                           lambda params: core.layer_labels(params, labels))


def _default_arch():
    """``rule=softhebb`` without ``arch=``: the cheap SoftHebb CNN sized for the curriculum (the default task)."""
    from localrules.architectures import softhebb_cnn

    return softhebb_cnn.CURRICULUM


RULE = core.RuleSpec("softhebb", Config, make, aliases=("sh",),
                     doc="soft winner-take-all Hebbian layers (Journé et al. 2023) + a delta-rule linear head",
                     optimizer=optimizer, cost_config=lambda cfg: dataclasses.replace(cfg, unroll=True),
                     default_arch=_default_arch)
