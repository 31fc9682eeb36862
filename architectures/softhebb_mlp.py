"""``arch=softhebb_mlp``: the fully connected SoftHebb network (Moraitis et al. 2022; Journé et al. 2023 MLP).

``flatten → [BN(no affine) → dense (no bias) → activation] × L → dense`` (the linear head). Activation: Triangle^p
(the ICLR 2023 blocks) or ``softmax(t·u)`` over the units (the 2022 ``2SoftMlpMNIST`` preset, t = 5). The block
layout, BN handling and initialisation are those of :mod:`localrules.architectures.softhebb_cnn`; the layer
meta's ``patches`` is the identity (the competition instances are the samples).

Reference: NeuromorphicComputing/SoftHebb@f4252307633b, ``hebblinear.py``, ``layer.py``, ``presets.json``
(``2SoftMlpMNIST``: 784 → 2000 → 10, no BN, softmax t = 5, r = 35).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from localrules.architectures import Arch, ArchSpec, dense, flatten
from localrules.architectures.softhebb_cnn import BN_MODES, hebbian_dense, per_layer


@dataclasses.dataclass(frozen=True)
class Config:
    """SoftHebb MLP: flatten → [BN(no affine) → dense (no bias) → Triangle^p | softmax] × L → linear head.

    Defaults: the 2022 ``2SoftMlpMNIST`` preset (784 → 2000 → 10, softmax t = 5, no BN, r = 35).
    """

    hidden: tuple[int, ...] = (2000,)
    """Hidden widths (reference 2SoftMlpMNIST: 2000)."""
    activation: str = "softmax"
    """Forward activation of the Hebbian layers: softmax (2022 MLP preset) | triangle (ICLR 2023 blocks)."""
    powers: tuple[float, ...] = (1.0,)
    """Triangle power p per layer (activation=triangle)."""
    softmax_t: float = 5.0
    """Inverse temperature of the forward softmax (2SoftMlpMNIST: 5)."""
    radius: tuple[float, ...] = (35.0,)
    """Initial weight-vector norm per layer (2SoftMlpMNIST `r35`; reference MLP default 10)."""
    bn: str = "none"
    """Input BatchNorm of every layer: running | batch | none (2SoftMlpMNIST: none)."""
    bn_eps: float = 1e-5
    """BatchNorm ε (PyTorch default)."""


def build(cfg: Config, input_shape: tuple, out_dim: int) -> Arch:
    if cfg.bn not in BN_MODES:
        raise ValueError(f"arch.bn={cfg.bn!r}: choose one of {', '.join(BN_MODES)}")
    n = len(cfg.hidden)
    if n < 1 or any(int(h) <= 0 for h in cfg.hidden):
        raise ValueError(f"arch.hidden={list(cfg.hidden)}: give at least one positive width, e.g. [2000]")
    pows, rads = per_layer("powers", cfg.powers, n), per_layer("radius", cfg.radius, n)
    d = int(np.prod(input_shape))
    layers = [flatten()]
    for i, h in enumerate(cfg.hidden):
        layers.append(hebbian_dense(d, int(h), cfg.activation, float(pows[i]), cfg.softmax_t, float(rads[i]),
                                    cfg.bn, cfg.bn_eps))
        d = int(h)
    layers.append(dense(d, out_dim, "linear", True, "torch_default"))
    name = "softhebb_mlp_" + "-".join(map(str, (int(np.prod(input_shape)), *cfg.hidden, out_dim)))
    return Arch(tuple(layers), tuple(input_shape), out_dim, name)


ARCH = ArchSpec("softhebb_mlp", Config, build, Config.__doc__)
