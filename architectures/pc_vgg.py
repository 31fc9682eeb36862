"""The PCX benchmark's VGG-style CNNs (Pinchetti et al., ICLR 2025; ``liukidar/pcx`` v0.6.1-public,
``examples/s4_1_discriminative_mode/VGG{5,7}/*/PC_*.py``, ``ConvNet``): ``arch=pc_vgg``.

Each block is conv 3×3 (stride 1) → activation → optional 2×2 max-pool, exactly PCX's ``feature_layers``; then
flatten → one linear layer over all heads. Predictive coding puts one value node after every block (the blocks of
:mod:`localrules.rules.predictive_coding` coincide with these).

* ``vgg5``: channels 128, 256, 512, 512, padding 1, a pool after every conv; the linear layer reads 512·2·2 on 32×32
  input (512·3·3 on Tiny ImageNet's 56×56 crops — derived from the input shape).
* ``vgg7``: channels 128, 128, 256, 256, 512, 512; paddings 1, 1, 1, 0, 1, 0; pools after convs 1, 3, 5; value
  nodes (128,16,16), (128,16,16), (256,8,8), (256,6,6), (512,3,3), (512,1,1); linear 512 → C.

NHWC instead of PCX's NCHW (same maths). Weights and biases U(±1/√fan_in) (equinox/PyTorch defaults, as in PCX).
Frames (B, F, H, W, C) are stacked as channels, as the lab's ``cnn`` does.

**Speed.** The convs are the lab's ``conv`` layers, whose stride-1 VJP (:func:`localrules.architectures.conv2d`)
XLA:CPU runs fast inside a ``lax.scan`` body — predictive coding's inference — where JAX's own transpose rule ran
about 5× slower for input gradients and far slower for kernel gradients (measured: ``docs/compute.md``).
"""

from __future__ import annotations

import dataclasses

from localrules.architectures import Arch, ArchSpec, conv, dense, flatten, frames_to_channels, pool
from localrules.architectures.pc_mlp import pc_activation, torch_init, with_activation

# layout → per conv: (out channels, padding 1?, pool after?)
LAYOUTS = {
    "vgg5": ((128, True, True), (256, True, True), (512, True, True), (512, True, True)),
    "vgg7": ((128, True, True), (128, True, False), (256, True, True), (256, False, False), (512, True, True),
             (512, False, False)),
}


def conv3x3(c_in: int, c_out: int, padding: str):
    """The lab's linear 3×3 stride-1 ``conv`` layer with PCX's padding (1 → SAME, 0 → VALID)."""
    return conv(c_in, c_out, 3, "linear", padding=padding, init="he_uniform")


@dataclasses.dataclass(frozen=True)
class Config:
    """PCX VGG: [conv 3×3 → activation → (max-pool 2)] blocks → flatten → linear output over all heads."""

    layout: str = "vgg5"
    """vgg5 | vgg7 (PCX's ConvNet layouts)."""
    activation: str = "gelu"
    """Activation after every conv (PCX ``hp/act_fn``): gelu | hard_tanh | leaky_relu | relu | tanh | ..."""
    width: float = 1.0
    """Channel multiplier (1 = PCX; < 1 for quick checks only)."""
    init: str = "torch"
    """torch: weights and biases U(±1/√fan_in) (PCX) | he_uniform (lab default, zero biases)."""


def build(cfg: Config, input_shape: tuple, out_dim: int) -> Arch:
    if cfg.layout not in LAYOUTS:
        raise ValueError(f"arch.layout={cfg.layout!r}; choose one of {sorted(LAYOUTS)}")
    if cfg.init not in ("torch", "he_uniform"):
        raise ValueError(f"arch.init={cfg.init!r}; choose torch or he_uniform")
    if not cfg.width > 0:
        raise ValueError(f"arch.width={cfg.width}: must be > 0")
    pc_activation(cfg.activation)
    if len(input_shape) == 4:
        f, h, w, c = input_shape
        c = f * c
    elif len(input_shape) == 3:
        h, w, c = input_shape
    else:
        raise ValueError(f"arch=pc_vgg needs image input (H, W, C) or (F, H, W, C); this task's is {input_shape}")
    layers = [frames_to_channels()]
    for ch, pad, pooled in LAYOUTS[cfg.layout]:
        ch = max(1, int(round(ch * cfg.width)))
        layer = with_activation(conv3x3(c, ch, "SAME" if pad else "VALID"), cfg.activation)
        layers.append(torch_init(layer, 9 * c) if cfg.init == "torch" else layer)
        if not pad:
            h, w = h - 2, w - 2
        if pooled:
            layers.append(pool("max", 2))
            h, w = h // 2, w // 2
        c = ch
        if h < 1 or w < 1:
            raise ValueError(f"arch.layout={cfg.layout} is too deep for a {input_shape} input")
    layers.append(flatten())
    d = h * w * c
    head = dense(d, out_dim, "linear", True, "he_uniform")
    layers.append(torch_init(head, d) if cfg.init == "torch" else head)
    name = f"pc_{cfg.layout}_{cfg.activation}" + (f"_w{cfg.width:g}" if cfg.width != 1 else "")
    return Arch(tuple(layers), tuple(input_shape), out_dim, name)


ARCH = ArchSpec("pc_vgg", Config, build, Config.__doc__)
