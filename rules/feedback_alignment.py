"""Feedback alignment (Lillicrap, Cownden, Tweed & Akerman 2016, Nat. Commun. 7:13276).

The backward pass of backprop with each layer's transposed forward weights replaced by a fixed random matrix of
the same shape. Notation for a dense layer ℓ: input h_{ℓ−1} (B, D), a_ℓ = h_{ℓ−1} W_ℓ + b_ℓ, h_ℓ = f(a_ℓ), output
error e = softmax(a_L) − onehot(y) (per sample), batch-mean loss so δ_L = e / B.

    δ_ℓ = (δ_{ℓ+1} B_{ℓ+1}ᵀ) ⊙ f'(a_ℓ)        (backprop has W_{ℓ+1}ᵀ here; B_{ℓ+1} has W_{ℓ+1}'s shape)
    ∂W_ℓ = h_{ℓ−1}ᵀ δ_ℓ,   ∂b_ℓ = Σ_n δ_ℓ      (returned as pseudo-gradients, descent sign)

Pooling, flatten and activations are passed exactly (as in the paper's convolutional experiments, only weights are
replaced). For conv layers B is a random kernel of the forward kernel's shape, used in the transposed convolution.
B is drawn once in ``init`` (U(±``feedback_scale``·√(6/fan_in)), the forward init's scale) and never changes.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax

from localrules import core, local
from localrules.architectures import act_derivative


@dataclasses.dataclass(frozen=True)
class Config:
    feedback_scale: float = 1.0
    """Scale of the fixed feedback weights relative to He-uniform bounds √(6/fan_in) of the forward weights."""


class FAState(NamedTuple):
    B: tuple
    """Per layer: ``{"w": fixed feedback weights}`` for layers with weights, ``{}`` otherwise."""


def backward(arch, params, feedback, ios, delta_out):
    """Feedback-alignment backward pass from δ_L = ∂L/∂a_L; returns pseudo-gradients for every layer."""
    grads = [None] * len(arch.layers)
    g = delta_out  # gradient w.r.t. the current layer's output y (for the last layer: a_L, linear output)
    for i in reversed(range(len(arch.layers))):
        layer, io = arch.layers[i], ios[i]
        if layer.kind in ("dense", "conv"):
            delta = g * act_derivative(layer.act, io.pre)
            grads[i] = local.param_grad(layer, params[i], io.x, delta)
            if i > 0:
                g = local.input_grad(layer, feedback[i], io.x, delta)
        else:
            grads[i] = {}
            if i > 0:
                g = local.through(layer, io.x, g)
    return tuple(grads)




def make(cfg: Config, arch, heads: core.Heads) -> core.Rule:
    def init_fn(key, params):
        keys = jax.random.split(key, len(params))
        B = []
        for k, p, layer in zip(keys, params, arch.layers):
            if "w" in p:
                w = p["w"]
                fan_in = math.prod(w.shape[:-1])
                B.append({"w": local.uniform_feedback(k, w.shape, fan_in, cfg.feedback_scale * math.sqrt(6.0))})
            else:
                B.append({})
        return FAState(tuple(B))

    def update_fn(params, state, batch, key):
        out, ios = arch.trace(params, batch.x)
        e = core.output_error(out, batch.y, heads) / batch.x.shape[0]
        grads = backward(arch, params, state.B, ios, e)
        return grads, state, {"loss": core.loss(out, batch.y, heads)}

    def predict_fn(params, state, x):
        return arch.apply(params, x)

    return core.Rule(init_fn, update_fn, predict_fn)


RULE = core.RuleSpec("feedback_alignment", Config, make, aliases=("fa",),
                     doc="backprop with fixed random feedback weights (Lillicrap et al. 2016)")
