"""``arch=ff_mlp``: the Forward-Forward network of Hinton's ``ffcode`` as an architecture.

Layers (``params[i]`` is layer ``i``)::

    0      embed    flatten the input and put ``out_dim`` label units in front of it (kind "reshape")
    1..L   dense    x̂ = norm(x);  a = x̂ W + b;  h = ReLU(a)          (RMS input normalisation inside the layer)
    L+1    readout  z = Σ_{ℓ ≥ readout_from} norm(h_ℓ) V_ℓ           (one linear map on the concatenation)

* **Label units.** Forward-Forward feeds the label as input. The paper writes it over the first 10 pixels of the
  MNIST border; the lab's curriculum forbids overwriting shared canvas pixels (curriculum §11.6), so this
  architecture gives the label its own ``out_dim`` (= ``heads.total``) input units, placed before the flattened
  image. The FF rule writes its label codes there; every other caller (``arch.apply``, backprop, a composed head)
  sees them filled with ``label_fill`` (0.1: ``ffcode``'s neutral label, 1/10 per unit). With
  ``label_slots=false`` the layer only flattens, and FF overwrites the first pixels as in the paper.
* **Normalisation.** ``norm(h) = h / (sqrt(mean_j h_j²) + ε)`` (``rms``, ``ffnormrows.m``; no centring, no gain;
  ‖x̂‖ = √N) or ``h / (‖h‖ + ε)`` (``l2``, mpezeshki). It is part of each layer, so ``Arch.trace`` records the
  un-normalised input ``x`` of every layer and ``apply_layer(i, p, x)`` normalises it; the input image (label
  units included) is normalised too, as in ``ffcode``. ε = 1e-8 for rms (loeweX; ``ffcode``'s exp(−100) is below
  float32's normal range and XLA flushes it to 0), 1e-4 for l2 (mpezeshki).
* **Read-out.** ``ffcode`` predicts the label from the normalised states of hidden layers ``minlevelsup``..L
  (``minlevelsup = 3`` in Matlab numbering = hidden layers 2..L here), zero-initialised, no bias. The read-out
  layer's ``meta["sources"]`` lists the layers it reads; :class:`FFArch` overrides ``trace``/``apply`` to feed it
  their concatenated outputs, so this is **not a chain**: rules that walk the layers backwards one by one
  (feedback alignment, DFA) do not apply to it; backprop (autodiff of ``arch.apply``) and FF do.

Initialisation: W ~ N(0, 1/fan_in), b = 0 (``ffcode``) or N(0, 1/fan_out) (loeweX takes the first weight
dimension, which is fan-out); the read-out starts at zero.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import jax
import jax.numpy as jnp

from localrules.architectures import ACTIVATIONS, Arch, ArchSpec, Layer, LayerIO, activation

NORM_EPS = {"rms": 1e-8, "l2": 1e-4}


def normalise(h: jax.Array, kind: str = "rms") -> jax.Array:
    """Divide each row by its RMS (``rms``: ‖result‖ = √N) or its L2 norm (``l2``); no centring, no gain.

    The statistics run over every non-batch axis, so a conv layer's map is normalised as one vector of units.
    """
    axes = tuple(range(1, h.ndim))
    if kind == "rms":
        s = jnp.sqrt(jnp.mean(h * h, axis=axes, keepdims=True))
    elif kind == "l2":
        s = jnp.sqrt(jnp.sum(h * h, axis=axes, keepdims=True))
    else:
        raise ValueError(f"normalisation {kind!r}: choose rms or l2")
    return h / (s + NORM_EPS[kind])


def norm_divisor(sumsq: jax.Array, n: int, kind: str = "rms") -> jax.Array:
    """The divisor of :func:`normalise` from a row's sum of squares over its ``n`` units: sqrt(Σh²/n) + ε (rms) or
    sqrt(Σh²) + ε (l2). Lets a caller that knows Σh² in pieces (label units + image) scale after the matmul."""
    if kind == "rms":
        return jnp.sqrt(sumsq / n) + NORM_EPS[kind]
    if kind == "l2":
        return jnp.sqrt(sumsq) + NORM_EPS[kind]
    raise ValueError(f"normalisation {kind!r}: choose rms or l2")


@dataclasses.dataclass(frozen=True)
class Config:
    """Forward-Forward MLP (ffcode): label units + flattened input → RMS-normalised dense ReLU layers → read-out."""

    hidden: tuple[int, ...] = (1000, 1000, 1000)
    """Hidden widths (``ffcode``: 784-1000-1000-1000; paper §3.3: four layers of 2000)."""
    activation: str = "relu"
    """Hidden activation (FF: relu)."""
    bias: bool = True
    """Biases in the hidden layers (``ffcode``: yes, initialised to 0)."""
    init: str = "fan_in"
    """Hidden weights: fan_in N(0, 1/fan_in) (ffcode) | fan_out N(0, 1/fan_out) (loeweX)."""
    norm: str = "rms"
    """Input normalisation of every layer: rms (ffcode, loeweX) | l2 (unit length; mpezeshki)."""
    label_slots: bool = True
    """Put out_dim label units before the flattened input (curriculum §11.6); false = flatten only (the paper's
    MNIST layout, where FF overwrites the first pixels)."""
    label_fill: float = 0.1
    """Value of the label units when no label is given (arch.apply): ffcode's neutral label, 1/10 per unit."""
    readout_from: int = 2
    """First hidden layer (1-based) whose normalised state feeds the read-out: 2 (ffcode minlevelsup = 3, loeweX);
    the paper's unsupervised §3.2 reads the last 3 of 4 layers, i.e. 2 as well."""
    readout_bias: bool = False
    """Bias of the read-out (ffcode's stays 0; loeweX's read-out is bias-free)."""


class FFArch(Arch):
    """An :class:`Arch` whose read-out layer reads several hidden layers (``meta["sources"]``)."""

    __slots__ = ()

    def trace(self, params, x):
        ios = []
        for l, p in zip(self.layers, params):
            if "sources" in l.meta:
                x = jnp.concatenate([ios[j].y.reshape(ios[j].y.shape[0], -1) for j in l.meta["sources"]], -1)
            pre, y = l.apply(p, x)
            ios.append(LayerIO(x, pre, y))
            x = y
        return x, tuple(ios)

    def apply(self, params, x):
        return self.trace(params, x)[0]


def _weight(key, shape, scheme):
    fan_in, fan_out = shape
    if scheme == "fan_in":
        return jax.random.normal(key, shape, jnp.float32) / math.sqrt(fan_in)
    if scheme == "fan_out":
        return jax.random.normal(key, shape, jnp.float32) / math.sqrt(fan_out)
    raise ValueError(f"arch.init={scheme!r}: choose fan_in (ffcode) or fan_out (loeweX)")


def embed_layer(slots: int, fill: float) -> Layer:
    """Flatten, then put ``slots`` label units (value ``fill``) in front: (B, ...) → (B, slots + D)."""
    ident = ACTIVATIONS["linear"]

    def apply_fn(p, x):
        y = x.reshape(x.shape[0], -1)
        if slots:
            y = jnp.concatenate([jnp.full((y.shape[0], slots), fill, y.dtype), y], axis=-1)
        return y, y

    return Layer("reshape", lambda key: {}, apply_fn, ident, {"label_slots": slots})


def normalised_dense(d_in, d_out, act, bias, init, norm) -> Layer:
    """Dense layer that RMS- (or L2-) normalises its input first: pre = norm(x) W + b."""
    f = activation(act)

    def init_fn(key):
        p = {"w": _weight(key, (d_in, d_out), init)}
        if bias:
            p["b"] = jnp.zeros((d_out,), jnp.float32)
        return p

    def apply_fn(p, x):
        pre = normalise(x, norm) @ p["w"]
        if "b" in p:
            pre = pre + p["b"][None, :]  # explicit broadcast: tests raise on rank promotion
        return pre, f(pre)

    return Layer("dense", init_fn, apply_fn, f, {"d_in": d_in, "d_out": d_out, "act": act, "input_norm": norm})


def readout_layer(sources, widths, d_out, bias, norm) -> Layer:
    """z = Σ_k norm(h_k) V_k over the source layers, as one matmul on the concatenation; V starts at 0."""
    d_in = int(sum(widths))
    ident = ACTIVATIONS["linear"]
    cuts = list(itertools.accumulate(int(w) for w in widths))[:-1]

    def init_fn(key):
        p = {"w": jnp.zeros((d_in, d_out), jnp.float32)}
        if bias:
            p["b"] = jnp.zeros((d_out,), jnp.float32)
        return p

    def apply_fn(p, x):
        xn = jnp.concatenate([normalise(part, norm) for part in jnp.split(x, cuts, axis=-1)], axis=-1)
        pre = xn @ p["w"]
        if "b" in p:
            pre = pre + p["b"][None, :]
        return pre, pre

    return Layer("dense", init_fn, apply_fn, ident,
                 {"d_in": d_in, "d_out": d_out, "act": "linear", "input_norm": norm, "sources": tuple(sources),
                  "widths": tuple(widths)})


def build(cfg: Config, input_shape: tuple, out_dim: int) -> FFArch:
    if not cfg.hidden or any(int(h) <= 0 for h in cfg.hidden):
        raise ValueError(f"arch.hidden={list(cfg.hidden)}: give at least one positive width, e.g. [1000,1000,1000]")
    if cfg.norm not in NORM_EPS:
        raise ValueError(f"arch.norm={cfg.norm!r}: choose rms or l2")
    L = len(cfg.hidden)
    if not 1 <= cfg.readout_from <= L:
        raise ValueError(f"arch.readout_from={cfg.readout_from}: the network has hidden layers 1..{L}; "
                         f"choose one of them (ffcode: 2, which needs ≥ 2 hidden layers)")
    slots = out_dim if cfg.label_slots else 0
    d = slots + math.prod(input_shape)
    layers = [embed_layer(slots, cfg.label_fill)]
    for h in cfg.hidden:
        layers.append(normalised_dense(d, int(h), cfg.activation, cfg.bias, cfg.init, cfg.norm))
        d = int(h)
    sources = tuple(range(cfg.readout_from, L + 1))  # layer indices = hidden-layer numbers (layer 0 is embed)
    layers.append(readout_layer(sources, [int(cfg.hidden[i - 1]) for i in sources], out_dim, cfg.readout_bias,
                                cfg.norm))
    dims = "-".join(map(str, [math.prod(input_shape), *cfg.hidden]))
    name = f"ff_mlp_{f'{slots}+' if slots else ''}{dims}_ro{cfg.readout_from}-{out_dim}"
    return FFArch(tuple(layers), tuple(input_shape), out_dim, name)


ARCH = ArchSpec("ff_mlp", Config, build, Config.__doc__)
