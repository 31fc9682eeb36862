"""``arch=ccl_cnn``: the CNNs of counter-current learning (Kao & Hariharan, NeurIPS 2024).

Reference: IandRover/CCL-NeurIPS24, ``models/models_cnn.py``.

- ``downsample=pool`` (``CNNModel_Pool``, CCL on CIFAR-10/100 and STL-10 at 32 px): 5 × [3×3 conv, stride 1,
  padding 1, no bias → ELU → 2×2 max pool], channels 3 → 128 → 128 → 256 → 256 → 512, spatial 32 → 1, then
  flatten → dense 512 → C (no bias).
- ``downsample=stride`` (``CNNModel``, CCL on MNIST/FMNIST, the CIFAR-10 BP baseline): the same widths with
  3×3 stride-2 convs (padding 1, biases zero-initialised) instead of pooling.

Weights are PyTorch's default ``U(±1/√fan_in)``, biases zero (``bias_init: zero``). ``bn=pre`` puts a
BatchNorm without affine parameters on every conv/dense input (the reference's ``fw_bn: 1`` with affine
parameters that no optimiser updates, used by its BP baselines); ``bn=post`` after every conv (``fw_bn: 2``).
BatchNorm here always uses the statistics of the batch it is given, also at test time (the reference uses running
averages in ``eval()``); the lab's layers are pure and carry no running statistics.

The input side must be divisible by 2^len(channels) (32 for five blocks): use ``task.canvas=true`` to pad 28×28
images to 32×32 (the reference resizes MNIST to 32).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from localrules import architectures as A
from localrules.architectures.ccl_mlp import activation, dense, torch_uniform


def batch_norm(x: jax.Array, eps: float = 1e-5) -> jax.Array:
    """BatchNorm without affine parameters: per feature (last axis), statistics over every other axis."""
    axes = tuple(range(x.ndim - 1))
    mu = jnp.mean(x, axis=axes, keepdims=True)
    var = jnp.var(x, axis=axes, keepdims=True)
    return (x - mu) / jnp.sqrt(var + eps)


def conv2d(x, w, stride: int = 1):
    """NHWC × HWIO convolution with PyTorch's symmetric padding k//2 (equal to SAME for stride 1, odd k)."""
    k = w.shape[0]
    return A.conv2d(x, w, stride, ((k // 2, k // 2), (k // 2, k // 2)))  # stride 1: the lab's scan-fast VJP


def upsample(x: jax.Array, r: int) -> jax.Array:
    """Nearest-neighbour ×r upsampling of NHWC maps (``nn.Upsample(scale_factor=r, mode='nearest')``)."""
    return jnp.repeat(jnp.repeat(x, r, axis=1), r, axis=2)


def conv(c_in: int, c_out: int, k: int, act: str, stride: int = 1, up: int = 1, bias: bool = False,
         bn: str = "none", init=None) -> A.Layer:
    """[×``up`` upsample →] k×k conv (stride ``stride``, padding k//2) [→ BN] → act, as one layer.

    ``bn``: none | pre (BN on the input) | post (BN on the conv output, before the activation).
    ``init(key, shape, fan_in)``: weight init (default PyTorch's U(±1/√fan_in)); biases start at zero.
    """
    f = activation(act)
    init = init or torch_uniform

    def init_fn(key):
        p = {"w": init(key, (k, k, c_in, c_out), k * k * c_in)}
        if bias:
            p["b"] = jnp.zeros((c_out,), jnp.float32)
        return p

    def apply_fn(p, x):
        if bn == "pre":
            x = batch_norm(x)
        if up > 1:
            x = upsample(x, up)
        pre = conv2d(x, p["w"], stride)
        if "b" in p:
            pre = pre + p["b"][None, None, None, :]
        if bn == "post":
            pre = batch_norm(pre)
        return pre, f(pre)

    meta = {"c_in": c_in, "c_out": c_out, "k": k, "stride": stride, "up": up, "act": act, "bn": bn}
    return A.Layer("conv", init_fn, apply_fn, f, meta)


def pre_bn_dense(d_in: int, d_out: int, act: str, bias: bool) -> A.Layer:
    """A dense layer with BatchNorm (no affine) on its input."""
    inner = dense(d_in, d_out, act, bias)
    return inner._replace(apply=lambda p, x: inner.apply(p, batch_norm(x)), meta={**inner.meta, "bn": "pre"})


@dataclasses.dataclass(frozen=True)
class Config:
    """CCL's CNN: [conv 3×3 → ELU → 2×2 max pool] or [3×3 stride-2 conv → ELU] blocks → flatten → linear."""

    channels: tuple[int, ...] = (128, 128, 256, 256, 512)
    """Output channels of each conv block (reference ``cnn_pool`` and ``cnn``)."""
    kernel: int = 3
    """Conv kernel size (reference: 3, padding 1)."""
    downsample: str = "pool"
    """pool: stride-1 conv then 2×2 max pool (``cnn_pool``) | stride: stride-2 conv (``cnn``)."""
    activation: str = "elu"
    """Activation of every conv block (reference ``act_F: elu``)."""
    bias: bool = False
    """Conv biases (reference: none in ``cnn_pool``; zero-initialised biases in the stride-2 ``cnn``)."""
    bn: str = "none"
    """none | pre (BN without affine on every layer input: the reference's BP baselines) | post (after each conv)."""


def build(cfg: Config, input_shape: tuple, out_dim: int) -> A.Arch:
    if cfg.downsample not in ("pool", "stride"):
        raise ValueError(f"arch.downsample={cfg.downsample!r}: choose pool or stride")
    if cfg.bn not in ("none", "pre", "post"):
        raise ValueError(f"arch.bn={cfg.bn!r}: choose none, pre or post")
    if len(input_shape) == 4:  # frames are stacked as channels
        f, h, w, c = input_shape
        c = f * c
    elif len(input_shape) == 3:
        h, w, c = input_shape
    else:
        raise ValueError(f"arch=ccl_cnn needs image input (H, W, C) or (F, H, W, C); this task's is {input_shape}")
    n = len(cfg.channels)
    if h % 2**n or w % 2**n:
        raise ValueError(f"arch=ccl_cnn with {n} blocks halves the input {n} times: {h}×{w} is not divisible by "
                         f"{2**n}; use task.canvas=true for 28×28 images (32×32) or fewer arch.channels")
    layers = [A.frames_to_channels()]
    for ch in cfg.channels:
        stride = 2 if cfg.downsample == "stride" else 1
        layers.append(conv(c, ch, cfg.kernel, cfg.activation, stride=stride, bias=cfg.bias, bn=cfg.bn))
        if cfg.downsample == "pool":
            layers.append(A.pool("max", 2))
        c, h, w = ch, h // 2, w // 2
    layers.append(A.flatten())
    d = h * w * c
    head = pre_bn_dense(d, out_dim, "linear", False) if cfg.bn == "pre" else dense(d, out_dim, "linear", False)
    layers.append(head)
    name = f"ccl_cnn_{cfg.downsample}_" + "-".join(map(str, cfg.channels))
    name += "" if cfg.bn == "none" else f"_bn{cfg.bn}"
    return A.Arch(tuple(layers), tuple(input_shape), out_dim, name)


ARCH = A.ArchSpec("ccl_cnn", Config, build, Config.__doc__)
