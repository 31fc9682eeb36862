"""``arch=ccl_mlp``: the bias-free ELU MLP of counter-current learning (Kao & Hariharan, NeurIPS 2024).

flatten → [dense (no bias) → ELU] × len(hidden) → dense (no bias, linear) over all heads. Weights are PyTorch's
default ``U(±1/√fan_in)`` (``torch.nn.Linear`` with ``bias=False``), the init of both CCL networks in the reference
code (IandRover/CCL-NeurIPS24, ``models/models.py`` ``LinearModel_MNIST``: 784 → 256 ×5 → 10; ``LinearModel_CIFAR10``:
3072 → 1024 ×3 → 10). It exists because the lab's ``mlp`` has no ELU; with ``elu`` in
``architectures.ACTIVATIONS`` it equals ``arch=mlp arch.activation=elu arch.bias=false arch.init=torch_default``.

The same architecture serves backprop in the matched comparison (``rule=backprop arch=ccl_mlp``).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from localrules import architectures as A

ACTIVATIONS = A.ACTIVATIONS  # the lab's table includes ``elu`` (α = 1, as ``torch.nn.functional.elu``)
activation = A.activation


def torch_uniform(key, shape, fan_in: int) -> jax.Array:
    """PyTorch's default weight init for Linear and Conv2d: U(±1/√fan_in)."""
    b = 1.0 / math.sqrt(fan_in)
    return jax.random.uniform(key, shape, jnp.float32, -b, b)


def dense(d_in: int, d_out: int, act: str = "elu", bias: bool = False) -> A.Layer:
    """A dense layer ``pre = x @ w (+ b)``, ``w (d_in, d_out)`` ~ U(±1/√d_in), bias zero: the lab's dense layer
    with PyTorch's default init."""
    return A.dense(d_in, d_out, act, bias, "torch_default")


@dataclasses.dataclass(frozen=True)
class Config:
    """CCL's MLP: flatten → bias-free ELU dense layers → bias-free linear output."""

    hidden: tuple[int, ...] = (256, 256, 256, 256, 256)
    """Hidden widths (reference: 256 ×5 for MNIST/FMNIST, 1024 ×3 for CIFAR-10/100)."""
    activation: str = "elu"
    """Hidden activation (reference yaml ``act_F: elu``)."""
    bias: bool = False
    """Biases in every dense layer (reference ``C2Linear(..., fw_bias=False)``)."""


def build(cfg: Config, input_shape: tuple, out_dim: int) -> A.Arch:
    if any(int(h) <= 0 for h in cfg.hidden):
        raise ValueError(f"arch.hidden={list(cfg.hidden)}: every width must be a positive integer")
    dims = [math.prod(input_shape), *cfg.hidden, out_dim]
    layers = [A.flatten()]
    for i in range(len(dims) - 1):
        last = i == len(dims) - 2
        layers.append(dense(dims[i], dims[i + 1], "linear" if last else cfg.activation, cfg.bias))
    return A.Arch(tuple(layers), tuple(input_shape), out_dim, "ccl_mlp_" + "-".join(map(str, dims)))


ARCH = A.ArchSpec("ccl_mlp", Config, build, Config.__doc__)
