"""``arch=ccl_ae``: the convolutional autoencoder of counter-current learning (Kao & Hariharan, NeurIPS 2024).

Reference: IandRover/CCL-NeurIPS24, ``models/models_cnn_ae_legacy.py`` (``C2Model_ConvAutoEncoder_Legacy``).

- Encoder: ``len(channels)`` 3×3 stride-2 convs (padding 1, bias), each → BN → act; reference 3 → 128 → 256 →
  1024 → 2048, 96² → 6².
- Decoder: the mirror widths, each layer ×2 nearest upsample → 3×3 conv (stride 1, bias) → BN → act, except the
  last (linear, no BN), which outputs an image of the input's shape.
- Init: every conv weight orthogonal; decoder weights ×``decoder_gain`` (0.001) and the output layer's
  ×``output_gain`` (0). BN has no affine parameters (the reference's affine parameters are never optimised, so
  they stay at γ = 1, β = 0); batch statistics are used at test time too (see ``ccl_cnn``).

The output is a reconstruction, not class scores: ``out_dim`` is the number of input values. Only a rule with a
reconstruction objective (``rule=counter_current rule.loss=ae``) trains it in the lab; the image tasks score it by
the test reconstruction MSE (``test/mse``). Backprop on MSE(output, input) and the reconstruction figure:
``python -m localrules.sweeps.ccl_ae_fmnist_png``.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from localrules import architectures as A
from localrules.architectures.ccl_cnn import conv


def orthogonal(gain: float):
    """Orthogonal init of a (k, k, C_in, C_out) kernel seen as a (k·k·C_in, C_out) matrix, times ``gain``."""
    ortho = jax.nn.initializers.orthogonal()

    def init(key, shape, fan_in):
        return gain * ortho(key, shape, jnp.float32)

    return init


@dataclasses.dataclass(frozen=True)
class Config:
    """CCL's conv autoencoder: stride-2 conv encoder, upsample+conv decoder, BN (no affine) + act between."""

    channels: tuple[int, ...] = (128, 256, 1024, 2048)
    """Encoder widths; the decoder mirrors them (reference legacy model)."""
    kernel: int = 3
    """Kernel of every conv (reference: 3, padding 1)."""
    activation: str = "relu"
    """Activation after each BN (reference yaml ``act_F: relu``)."""
    bn: bool = True
    """BatchNorm (no affine) after every conv except the output (reference legacy model)."""
    decoder_gain: float = 0.001
    """Multiplier on the decoder's orthogonal init (reference ``dec_layer.forward_layer.weight.data *= 0.001``)."""
    output_gain: float = 0.0
    """Extra multiplier on the output layer's init (reference ``self.dec1.forward_layer.weight.data *= 0``)."""


def build(cfg: Config, input_shape: tuple, out_dim: int) -> A.Arch:
    if len(input_shape) == 4:
        f, h, w, c = input_shape
        c_img = f * c
    elif len(input_shape) == 3:
        h, w, c_img = input_shape
    else:
        raise ValueError(f"arch=ccl_ae needs image input (H, W, C) or (F, H, W, C); this task's is {input_shape}")
    n = len(cfg.channels)
    if h % 2**n or w % 2**n:
        raise ValueError(f"arch=ccl_ae halves the input {n} times: {h}×{w} is not divisible by {2**n}; "
                         "use task.canvas=true for 28×28 images or fewer arch.channels")
    bn = "post" if cfg.bn else "none"
    k, act = cfg.kernel, cfg.activation
    layers = [A.frames_to_channels()]
    widths = [c_img, *cfg.channels]
    for i in range(n):
        layers.append(conv(widths[i], widths[i + 1], k, act, stride=2, bias=True, bn=bn, init=orthogonal(1.0)))
    for i in reversed(range(n)):
        last = i == 0
        gain = cfg.decoder_gain * (cfg.output_gain if last else 1.0)
        layers.append(conv(widths[i + 1], widths[i], k, "linear" if last else act, up=2, bias=True,
                           bn="none" if last else bn, init=orthogonal(gain)))
    name = "ccl_ae_" + "-".join(map(str, cfg.channels))
    return A.Arch(tuple(layers), tuple(input_shape), math.prod((h, w, c_img)), name)


ARCH = A.ArchSpec("ccl_ae", Config, build, Config.__doc__)
