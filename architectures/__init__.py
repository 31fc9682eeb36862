"""Architectures as tuples of pure layers with an explicit per-layer trace.

A layer is ``Layer(kind, init, apply, act)``: ``init(key) -> params dict`` (``{}`` for parameter-free layers) and
``apply(p, x) -> (pre, y)`` with ``y = act(pre)``. ``params[i]`` is layer ``i`` everywhere in the lab.
``Arch.trace(params, x)`` returns the output and, per layer, ``LayerIO(x, pre, y)``: exactly what a local rule may
read. ``Arch.apply_layer(i, p, x)`` re-runs one layer (PEPITA's second pass, FF's per-layer passes).

Conventions: dense weights are ``w (D_in, D_out)`` so ``pre = x @ w + b``; a paper's ``W (K, D)`` is ``w.T``.
Convolutions are NHWC with ``w (kh, kw, C_in, C_out)``; :func:`conv_patches` exposes the unfolded patches a
Hebbian rule needs. Inputs of shape ``(B, F, H, W, C)`` (frames, as the curriculum emits) are stacked as channels
by CNNs and flattened by MLPs.

Adding an architecture = one module ``architectures/<name>.py`` exporting ``ARCH = ArchSpec(name, Config, build,
doc)``; the registry ``ARCHS``, the CLI's ``arch=<name>`` and the unknown-architecture error all come from it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "linear": lambda x: x,
    "gelu": jax.nn.gelu,
    "elu": jax.nn.elu,
    "leaky_relu": lambda x: jax.nn.leaky_relu(x, 0.01),
    "softplus10": lambda x: jax.nn.softplus(10.0 * x) / 10.0,  # softplus with β = 10 (Shervani-Tabar & Rosenbaum)
}


def activation(name: str) -> Callable:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def act_derivative(act: Callable, pre: jax.Array) -> jax.Array:
    """f'(pre), elementwise, by forward-mode differentiation of the activation."""
    return jax.jvp(act, (pre,), (jnp.ones_like(pre),))[1]


class LayerIO(NamedTuple):
    """What one layer saw and produced: input ``x``, pre-activation ``pre``, output ``y = act(pre)``."""

    x: jax.Array
    pre: jax.Array
    y: jax.Array


class Layer(NamedTuple):
    kind: str  # "dense" | "conv" | "pool" | "flatten"
    init: Callable
    apply: Callable
    act: Callable
    meta: dict


class Arch(NamedTuple):
    """An architecture: ``layers`` and the input shape it expects (one example)."""

    layers: tuple
    input_shape: tuple
    out_dim: int
    name: str

    def init(self, key: jax.Array) -> tuple:
        keys = jax.random.split(key, len(self.layers))
        return tuple(l.init(k) for l, k in zip(self.layers, keys))

    def check_input(self, x):
        """Static check (free under jit): the batch's example shape must be the one the arch was built for."""
        if tuple(x.shape[1:]) != tuple(self.input_shape):
            raise ValueError(f"architecture {self.name} was built for inputs of shape {tuple(self.input_shape)} "
                             f"but got a batch of shape {tuple(x.shape)}; build the architecture for this task's "
                             "input_shape (localrules.run.build does)")

    def trace(self, params, x):
        self.check_input(x)
        ios = []
        for l, p in zip(self.layers, params):
            pre, y = l.apply(p, x)
            ios.append(LayerIO(x, pre, y))
            x = y
        return x, tuple(ios)

    def apply(self, params, x):
        self.check_input(x)
        for l, p in zip(self.layers, params):
            x = l.apply(p, x)[1]
        return x

    def apply_layer(self, i: int, p, x):
        return self.layers[i].apply(p, x)

    @property
    def param_layers(self) -> tuple[int, ...]:
        """Indices of layers that own parameters."""
        return tuple(i for i, l in enumerate(self.layers) if l.kind in ("dense", "conv"))


# ----------------------------------------------------------------------------------------------- layers


def _fan_in_uniform(key, shape, fan_in, gain=1.0):
    # PyTorch's default (kaiming_uniform with a=sqrt(5)) is U(±1/sqrt(fan_in)); He-uniform is U(±sqrt(6/fan_in)).
    bound = gain * math.sqrt(6.0 / fan_in)
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


INITS = ("he_uniform", "torch_default", "normal", "he_normal")


def _init_weight(key, shape, fan_in, scheme):
    if scheme == "he_uniform":
        return _fan_in_uniform(key, shape, fan_in)
    if scheme == "torch_default":
        b = 1.0 / math.sqrt(fan_in)
        return jax.random.uniform(key, shape, jnp.float32, -b, b)
    if scheme == "he_normal":
        return jax.random.normal(key, shape, jnp.float32) * math.sqrt(2.0 / fan_in)
    if scheme == "normal":
        return jax.random.normal(key, shape, jnp.float32) / math.sqrt(fan_in)
    raise ValueError(f"unknown init {scheme!r}; choose one of {INITS}")


def dense(d_in: int, d_out: int, act: str = "relu", bias: bool = True, init: str = "he_uniform") -> Layer:
    f = activation(act)

    def init_fn(key):
        p = {"w": _init_weight(key, (d_in, d_out), d_in, init)}
        if bias:
            p["b"] = jnp.zeros((d_out,), jnp.float32)
        return p

    def apply_fn(p, x):
        pre = x @ p["w"]
        if "b" in p:
            pre = pre + p["b"][None, :]  # explicit broadcast: tests raise on rank promotion
        return pre, f(pre)

    return Layer("dense", init_fn, apply_fn, f, {"d_in": d_in, "d_out": d_out, "act": act})


_DN = ("NHWC", "HWIO", "NHWC")


def conv2d(x: jax.Array, w: jax.Array, stride: int = 1, padding="SAME") -> jax.Array:
    """NHWC × HWIO convolution. Stride 1 (every conv of the lab's CNNs) differentiates through :func:`_conv_s1`,
    whose VJP XLA:CPU runs fast inside ``lax.scan`` as well as outside; other strides use JAX's own rule."""
    if stride != 1:
        return jax.lax.conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=_DN)
    return _conv_s1(x, w, _s1_pads(x, w.shape[0], w.shape[1], padding))


def _s1_pads(x, kh: int, kw: int, padding) -> tuple:
    """((lo, hi), (lo, hi)) of a stride-1 convolution: "SAME" / "VALID" resolved for ``x``, or explicit pairs."""
    pads = padding if not isinstance(padding, str) else jax.lax.padtype_to_pads(x.shape[1:3], (kh, kw), (1, 1),
                                                                                padding)
    return tuple((int(lo), int(hi)) for lo, hi in pads)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_s1(x, w, pads):
    """Stride-1 convolution with a hand-written VJP (same values as JAX's rule up to float summation order).

    JAX's transpose rule hands XLA:CPU an input gradient with a reversed, in/out-swapped kernel and a kernel gradient
    with the batch as the contraction "feature"; outside loops XLA rewrites both into fast kernels, inside a
    ``while`` body (every training chunk is a ``lax.scan``) it does not: the kernel gradient of a 14×14 32→64 conv
    at batch 100 took 630 ms per step there against 12 ms here. Here the input gradient is a plain convolution of
    the cotangent with the explicitly flipped, swapped kernel, and the kernel gradient is one matmul of the unfolded
    input patches with the cotangent (docs/compute.md, section 4)."""
    return jax.lax.conv_general_dilated(x, w, (1, 1), pads, dimension_numbers=_DN)


def _conv_s1_fwd(x, w, pads):
    return _conv_s1(x, w, pads), (x, w)


def _conv_s1_bwd(pads, res, g):
    x, w = res
    kh, kw, c, o = w.shape
    (lh, hh), (lw, hw) = pads
    wt = jnp.flip(w, (0, 1)).swapaxes(2, 3)
    dx = jax.lax.conv_general_dilated(g, wt, (1, 1), ((kh - 1 - lh, kh - 1 - hh), (kw - 1 - lw, kw - 1 - hw)),
                                      dimension_numbers=_DN)
    b, ho, wo, _ = g.shape
    patches = _unfold_s1(x, kh, kw, pads)
    n = b * ho * wo
    split = 2 if n % 2 == 0 else 1  # two independent halves: XLA:CPU runs a long-contraction matmul on one thread
    dw = jnp.einsum("snk,sno->sko", patches.reshape(split, n // split, kh * kw * c), g.reshape(split, n // split, o))
    return dx, dw.sum(0).reshape(kh, kw, c, o)


_conv_s1.defvjp(_conv_s1_fwd, _conv_s1_bwd)


def _unfold_s1(x: jax.Array, kh: int, kw: int, pads) -> jax.Array:
    """Stride-1 patches (B, H', W', kh·kw·C), features in (kh, kw, C) order, from kh·kw slices of the zero-padded
    input (data movement only; ``conv_general_dilated_patches`` is a convolution with an identity kernel, several
    times slower on XLA:CPU inside a scan)."""
    (lh, hh), (lw, hw) = pads
    xp = jax.lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (lh, hh, 0), (lw, hw, 0), (0, 0, 0)))
    ho, wo = xp.shape[1] - kh + 1, xp.shape[2] - kw + 1
    return jnp.concatenate([xp[:, i:i + ho, j:j + wo, :] for i in range(kh) for j in range(kw)], axis=-1)


def conv(c_in: int, c_out: int, k: int, act: str = "relu", stride: int = 1, padding: str = "SAME",
         bias: bool = True, init: str = "he_uniform") -> Layer:
    f = activation(act)

    def init_fn(key):
        p = {"w": _init_weight(key, (k, k, c_in, c_out), k * k * c_in, init)}
        if bias:
            p["b"] = jnp.zeros((c_out,), jnp.float32)
        return p

    def apply_fn(p, x):
        pre = conv2d(x, p["w"], stride, padding)
        if "b" in p:
            pre = pre + p["b"][None, None, None, :]
        return pre, f(pre)

    return Layer("conv", init_fn, apply_fn, f,
                 {"c_in": c_in, "c_out": c_out, "k": k, "stride": stride, "padding": padding, "act": act})


def conv_patches(x: jax.Array, k: int, stride: int = 1, padding: str = "SAME") -> jax.Array:
    """Unfolded patches (B, H', W', k·k·C) in the (kh, kw, C) order of an HWIO kernel reshaped to (k·k·C, C_out)."""
    if stride == 1:
        return _unfold_s1(x, k, k, _s1_pads(x, k, k, padding))
    c = x.shape[-1]
    p = jax.lax.conv_general_dilated_patches(x, (k, k), (stride, stride), padding,
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
    # conv_general_dilated_patches orders features as (C, kh, kw); reorder to (kh, kw, C).
    b, h, w, _ = p.shape
    return p.reshape(b, h, w, c, k, k).transpose(0, 1, 2, 4, 5, 3).reshape(b, h, w, k * k * c)


def pool(kind: str = "max", window: int = 2, stride: int | None = None) -> Layer:
    stride = stride or window
    ident = ACTIVATIONS["linear"]

    if kind not in ("max", "avg"):
        raise ValueError(f"unknown pooling {kind!r}; choose 'max' or 'avg'")

    def apply_fn(p, x):
        if stride == window:
            # non-overlapping windows: a reshape and a reduction. Same values as reduce_window; its gradient is an
            # elementwise mask, where reduce_window's (select-and-scatter) compiles to scatters on XLA:CPU that cost
            # more than the convolutions of the lab's CNN. Ties in a max window share the gradient equally (one
            # winner takes it in reduce_window); after a ReLU those ties are zeros, whose gradient ReLU drops anyway.
            b, h, w, c = x.shape
            h, w = h // window * window, w // window * window
            xs = x[:, :h, :w, :].reshape(b, h // window, window, w // window, window, c)
            y = jnp.max(xs, axis=(2, 4)) if kind == "max" else jnp.mean(xs, axis=(2, 4))
        elif kind == "max":
            y = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, window, window, 1), (1, stride, stride, 1), "VALID")
        else:
            y = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, window, window, 1), (1, stride, stride, 1), "VALID")
            y = y / (window * window)
        return y, y

    return Layer("pool", lambda key: {}, apply_fn, ident, {"kind": kind, "window": window, "stride": stride})


def flatten() -> Layer:
    ident = ACTIVATIONS["linear"]

    def apply_fn(p, x):
        y = x.reshape(x.shape[0], -1)
        return y, y

    return Layer("flatten", lambda key: {}, apply_fn, ident, {})


def frames_to_channels() -> Layer:
    """(B, F, H, W, C) → (B, H, W, F·C); identity on 4-D input."""
    ident = ACTIVATIONS["linear"]

    def apply_fn(p, x):
        if x.ndim == 5:
            b, f, h, w, c = x.shape
            x = x.transpose(0, 2, 3, 1, 4).reshape(b, h, w, f * c)
        return x, x

    return Layer("reshape", lambda key: {}, apply_fn, ident, {})


# ----------------------------------------------------------------------------------------------- configs


@dataclasses.dataclass(frozen=True)
class MLPConfig:
    """Multi-layer perceptron: flatten → dense hidden layers → linear output over all heads."""

    hidden: tuple[int, ...] = (256, 256)
    """Hidden widths, e.g. ``arch.hidden=[1000,1000]``."""
    activation: str = "relu"
    """Hidden activation: relu | tanh | sigmoid | gelu | leaky_relu | linear."""
    bias: bool = True
    """Biases in every dense layer (PEPITA's recipe turns them off)."""
    init: str = "he_uniform"
    """Weight init: he_uniform (U(±√(6/fan_in))) | torch_default (U(±1/√fan_in)) | normal (N(0, 1/fan_in))."""


@dataclasses.dataclass(frozen=True)
class CNNConfig:
    """Small CNN: [conv k×k → activation → pool] blocks → flatten → dense hidden → linear output."""

    channels: tuple[int, ...] = (32, 64)
    """Output channels of each conv block."""
    kernel: int = 3
    """Conv kernel size (stride 1, SAME padding)."""
    pool: str = "max"
    """Pooling after each block: max | avg."""
    pool_window: int = 2
    """Pooling window = stride."""
    hidden: tuple[int, ...] = ()
    """Dense hidden widths after the conv blocks."""
    activation: str = "relu"
    """Activation of conv and hidden layers."""
    bias: bool = True
    """Biases in conv and dense layers."""
    init: str = "he_uniform"
    """Weight init, as for the MLP."""


def _flat(shape) -> int:
    return int(np.prod(shape))


def build_mlp(cfg: MLPConfig, input_shape: tuple, out_dim: int) -> Arch:
    if not cfg.hidden and cfg.hidden != ():
        raise ValueError("arch.hidden must be a list of widths, e.g. arch.hidden=[256,256]")
    if any(int(h) <= 0 for h in cfg.hidden):
        raise ValueError(f"arch.hidden={list(cfg.hidden)}: every width must be a positive integer")
    dims = [_flat(input_shape), *cfg.hidden, out_dim]
    layers = [flatten()]
    for i in range(len(dims) - 1):
        last = i == len(dims) - 2
        layers.append(dense(dims[i], dims[i + 1], "linear" if last else cfg.activation, cfg.bias, cfg.init))
    name = "mlp_" + "-".join(map(str, dims))
    return Arch(tuple(layers), tuple(input_shape), out_dim, name)


def build_cnn(cfg: CNNConfig, input_shape: tuple, out_dim: int) -> Arch:
    if len(input_shape) == 4:  # frames
        f, h, w, c = input_shape
        c = f * c
    elif len(input_shape) == 3:
        h, w, c = input_shape
    else:
        raise ValueError(f"arch=cnn needs image input (H, W, C) or (F, H, W, C); this task's input is {input_shape}")
    layers = [frames_to_channels()]
    for ch in cfg.channels:
        layers.append(conv(c, ch, cfg.kernel, cfg.activation, bias=cfg.bias, init=cfg.init))
        layers.append(pool(cfg.pool, cfg.pool_window))
        c = ch
        h, w = h // cfg.pool_window, w // cfg.pool_window
        if h < 1 or w < 1:
            raise ValueError(f"arch.channels has {len(cfg.channels)} pooled blocks: too many for a {input_shape} input")
    layers.append(flatten())
    d = h * w * c
    for hd in cfg.hidden:
        layers.append(dense(d, hd, cfg.activation, cfg.bias, cfg.init))
        d = hd
    layers.append(dense(d, out_dim, "linear", cfg.bias, cfg.init))
    name = "cnn_" + "-".join(map(str, cfg.channels)) + ("_fc" + "-".join(map(str, cfg.hidden)) if cfg.hidden else "")
    return Arch(tuple(layers), tuple(input_shape), out_dim, name)


class ArchSpec(NamedTuple):
    name: str
    config: type
    build: Callable[..., Arch]
    doc: str


def _registry() -> dict[str, ArchSpec]:
    """MLP and CNN live here; any module ``architectures/<name>.py`` exporting ``ARCH = ArchSpec(...)`` joins."""
    import importlib
    import pkgutil

    reg = {
        "mlp": ArchSpec("mlp", MLPConfig, build_mlp, MLPConfig.__doc__),
        "cnn": ArchSpec("cnn", CNNConfig, build_cnn, CNNConfig.__doc__),
    }
    for m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if m.name.startswith("_"):
            continue
        mod = importlib.import_module(f"{__name__}.{m.name}")
        spec = getattr(mod, "ARCH", None)
        if spec is not None:
            if spec.name in reg:
                raise RuntimeError(f"architecture {spec.name!r} registered twice")
            reg[spec.name] = spec
    return reg


ARCHS: dict[str, ArchSpec] = _registry()


def build(cfg, input_shape: tuple, out_dim: int) -> Arch:
    for spec in ARCHS.values():
        if type(cfg) is spec.config:
            return spec.build(cfg, tuple(input_shape), out_dim)
    raise TypeError(f"not an architecture config: {cfg!r}")
