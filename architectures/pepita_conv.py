"""PEPITA's convolutional network (Dellaferrera & Kreiman, ICML 2022, Table 1 "Conv"): one conv layer, one FC layer.

    x (H, W, C) → conv k×k, ``channels`` maps, stride 1, VALID padding, no bias → ReLU → max-pool 2×2
      → flatten → dense to the output units (linear; the rule applies the softmax), no bias

The reference models ``Net1conv1fcXL`` / ``Net1conv1fcXL_cif`` (``GiorgiaD/PEPITA@3fe03d80b642/models.py``) use 32
maps of 5×5 and a 4608-input (MNIST, 28 → 24 → 12) or 6272-input (CIFAR, 32 → 28 → 14) FC layer, i.e. stride 1 and
no padding. ``arch=cnn`` cannot express this (its convolutions are SAME-padded, which gives 6272 inputs on MNIST),
hence this module. Frame stacks ``(F, H, W, C)`` are stacked as channels, as ``arch=cnn`` does.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from localrules.architectures import (Arch, ArchSpec, conv, dense, flatten, frames_to_channels, pool)


@dataclasses.dataclass(frozen=True)
class PepitaConvConfig:
    """PEPITA's 1-conv + 1-FC network: conv (VALID) → ReLU → max-pool → flatten → linear output, no biases."""

    channels: int = 32
    """Conv output maps (32 in the reference ``Net1conv1fcXL``)."""
    kernel: int = 5
    """Conv kernel size (5 in the reference)."""
    padding: Literal["VALID", "SAME"] = "VALID"
    """Conv padding; VALID reproduces the reference's 4608 (MNIST) / 6272 (CIFAR) FC inputs."""
    pool_window: int = 2
    """Max-pool window = stride (2 in the reference)."""
    bias: bool = False
    """Biases in the conv and FC layers (the reference has none; PEPITA's update is defined for W only)."""
    init: str = "he_uniform"
    """Weight init: he_uniform U(±√(6/fan_in)) as in the reference (``--w_init he_uniform``)."""


def build(cfg: PepitaConvConfig, input_shape: tuple, out_dim: int) -> Arch:
    if len(input_shape) == 4:
        f, h, w, c = input_shape
        c = f * c
    elif len(input_shape) == 3:
        h, w, c = input_shape
    else:
        raise ValueError(f"arch=pepita_conv needs image input (H, W, C) or (F, H, W, C); got {input_shape}")
    if cfg.channels <= 0 or cfg.kernel <= 0 or cfg.pool_window <= 0:
        raise ValueError("arch.channels, arch.kernel and arch.pool_window must be positive integers")
    if cfg.padding == "VALID":
        h, w = h - cfg.kernel + 1, w - cfg.kernel + 1
    h, w = h // cfg.pool_window, w // cfg.pool_window
    if h < 1 or w < 1:
        raise ValueError(f"arch.kernel={cfg.kernel} with pool {cfg.pool_window} leaves no output on a "
                         f"{input_shape} input")
    layers = (
        frames_to_channels(),
        conv(c, cfg.channels, cfg.kernel, "relu", stride=1, padding=cfg.padding, bias=cfg.bias, init=cfg.init),
        pool("max", cfg.pool_window),
        flatten(),
        dense(h * w * cfg.channels, out_dim, "linear", cfg.bias, cfg.init),
    )
    name = f"pepita_conv{cfg.channels}k{cfg.kernel}_fc{h * w * cfg.channels}-{out_dim}"
    return Arch(layers, tuple(input_shape), out_dim, name)


ARCH = ArchSpec("pepita_conv", PepitaConvConfig, build, PepitaConvConfig.__doc__)
