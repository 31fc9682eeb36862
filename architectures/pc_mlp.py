"""The PCX benchmark's MLP (Pinchetti et al., ICLR 2025; ``liukidar/pcx`` v0.6.1-public,
``examples/s4_1_discriminative_mode/MLP/*/PC_*.py``, ``LinearModel``): ``arch=pc_mlp``.

784-128-128-128-10 by default: the input is flattened and mapped to [−1, 1] (PCX's ``Normalize((0.5,), (0.5,))``
on [0, 1] pixels, i.e. x ↦ 2x − 1, as a parameter-free layer so that every rule, backprop included, sees the same
input), then dense layers with the activation on every hidden layer and a linear output. Weights and biases are
initialised U(±1/√fan_in), as equinox's ``Linear`` (which ``pcx.nn.Linear`` wraps) and PyTorch do. Activations
add ``hard_tanh`` (PCX's BP-CE configurations) to the lab's set.

Deviation: none in the network. The task's own normalisation must be ``task.normalize=unit`` (the default) for the
[−1, 1] mapping to equal PCX's.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from localrules.architectures import ACTIVATIONS, Arch, ArchSpec, Layer, dense, flatten

PC_ACTIVATIONS = {**ACTIVATIONS, "hard_tanh": jax.nn.hard_tanh}


def pc_activation(name: str):
    if name not in PC_ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(PC_ACTIVATIONS)}")
    return PC_ACTIVATIONS[name]


def with_activation(layer: Layer, act: str) -> Layer:
    """``layer`` (built with a linear activation) followed by ``act``, which may be ``hard_tanh``."""
    f = pc_activation(act)

    def apply_fn(p, x):
        pre = layer.apply(p, x)[0]
        return pre, f(pre)

    return Layer(layer.kind, layer.init, apply_fn, f, {**layer.meta, "act": act})


def torch_init(layer: Layer, fan_in: int) -> Layer:
    """Weights and biases U(±1/√fan_in) (equinox / PyTorch ``Linear`` and ``Conv2d`` defaults)."""
    b = 1.0 / math.sqrt(fan_in)

    def init_fn(key):
        shapes = jax.eval_shape(layer.init, key)  # names and shapes only; the base layer's draw is never made
        keys = jax.random.split(jax.random.fold_in(key, 1), len(shapes))
        return {k: jax.random.uniform(kk, v.shape, jnp.float32, -b, b)
                for (k, v), kk in zip(sorted(shapes.items()), keys)}

    return Layer(layer.kind, init_fn, layer.apply, layer.act, layer.meta)


def affine_input(scale: float, shift: float) -> Layer:
    """Parameter-free x ↦ scale·x + shift (kind ``reshape``: a fixed map every rule passes through exactly)."""
    ident = ACTIVATIONS["linear"]

    def apply_fn(p, x):
        y = x * scale + shift
        return y, y

    return Layer("reshape", lambda key: {}, apply_fn, ident, {"scale": scale, "shift": shift})


INPUT_RANGES = {"pm1": (2.0, -1.0), "unit": (1.0, 0.0)}


@dataclasses.dataclass(frozen=True)
class Config:
    """PCX MLP: flatten → x ↦ 2x − 1 → dense hidden layers (activation) → linear output over all heads."""

    hidden: tuple[int, ...] = (128, 128, 128)
    """Hidden widths (PCX: 3 × 128, ``nm_layers=4``)."""
    activation: str = "gelu"
    """Hidden activation (PCX ``hp/act_fn``): gelu | leaky_relu | hard_tanh | relu | tanh | sigmoid | linear."""
    input_range: str = "pm1"
    """pm1: x ↦ 2x − 1 (PCX's Normalize(0.5, 0.5) on [0, 1] input) | unit: leave the task's input as it is."""
    init: str = "torch"
    """torch: weights and biases U(±1/√fan_in) (equinox/PCX) | he_uniform (lab default, zero biases)."""


def build(cfg: Config, input_shape: tuple, out_dim: int) -> Arch:
    if cfg.input_range not in INPUT_RANGES:
        raise ValueError(f"arch.input_range={cfg.input_range!r}; choose pm1 or unit")
    if cfg.init not in ("torch", "he_uniform"):
        raise ValueError(f"arch.init={cfg.init!r}; choose torch or he_uniform")
    pc_activation(cfg.activation)
    if any(int(h) <= 0 for h in cfg.hidden):
        raise ValueError(f"arch.hidden={list(cfg.hidden)}: every width must be a positive integer")
    dims = [int(np.prod(input_shape)), *cfg.hidden, out_dim]
    layers = [flatten(), affine_input(*INPUT_RANGES[cfg.input_range])]
    for i in range(len(dims) - 1):
        last = i == len(dims) - 2
        layer = dense(dims[i], dims[i + 1], "linear", True, "he_uniform")
        if not last:
            layer = with_activation(layer, cfg.activation)
        if cfg.init == "torch":
            layer = torch_init(layer, dims[i])
        layers.append(layer)
    name = "pc_mlp_" + "-".join(map(str, dims)) + f"_{cfg.activation}"
    return Arch(tuple(layers), tuple(input_shape), out_dim, name)


ARCH = ArchSpec("pc_mlp", Config, build, Config.__doc__)
