"""Direct feedback alignment (Nøkland 2016, NeurIPS): the output error projected straight to every hidden layer.

Notation: hidden layer ℓ with pre-activation a_ℓ (B, d_ℓ) (conv layers: flattened), output a_L, per-sample output
error e = softmax(a_L) − onehot(y), batch-mean loss so the output delta is e / B; B_ℓ (n_out, d_ℓ) fixed random.

    δ_L = e / B
    δ_ℓ = ((e / B) B_ℓ) ⊙ f'(a_ℓ)     for every hidden layer ℓ < L (no dependence on the layers above)
    ∂W_ℓ = h_{ℓ−1}ᵀ δ_ℓ,  ∂b_ℓ = Σ_n δ_ℓ   (pseudo-gradients, descent sign)

B_ℓ ~ U(±``feedback_scale``/√n_out), drawn once in ``init``. Parameter-free layers receive no update.
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
    """Scale of the fixed feedback matrices B_ℓ ~ U(±scale/√n_out)."""


class DFAState(NamedTuple):
    B: tuple
    """Per hidden layer with weights: (n_out, d_ℓ) feedback matrix; ``None``-free: ``()`` elsewhere."""


def make(cfg: Config, arch, heads: core.Heads) -> core.Rule:
    n_out = heads.total
    last = arch.param_layers[-1]

    def init_fn(key, params):
        # Shapes of every pre-activation, from an abstract forward pass (no FLOPs spent).
        x = jax.ShapeDtypeStruct((1,) + tuple(arch.input_shape), jax.numpy.float32)
        ios = jax.eval_shape(lambda p, x: arch.trace(p, x)[1], params, x)
        keys = jax.random.split(key, len(params))
        B = []
        for i, (k, io) in enumerate(zip(keys, ios)):
            if i in arch.param_layers and i != last:
                d = math.prod(io.pre.shape[1:])
                B.append(local.uniform_feedback(k, (n_out, d), n_out, cfg.feedback_scale))
            else:
                B.append(())
        return DFAState(tuple(B))

    def update_fn(params, state, batch, key):
        out, ios = arch.trace(params, batch.x)
        e = core.output_error(out, batch.y, heads) / batch.x.shape[0]  # (B, n_out)
        grads = []
        for i, (layer, io) in enumerate(zip(arch.layers, ios)):
            if i == last:
                grads.append(local.param_grad(layer, params[i], io.x, e))
            elif i in arch.param_layers:
                delta = (e @ state.B[i]).reshape(io.pre.shape) * act_derivative(layer.act, io.pre)
                grads.append(local.param_grad(layer, params[i], io.x, delta))
            else:
                grads.append({})
        return tuple(grads), state, {"loss": core.loss(out, batch.y, heads)}

    def predict_fn(params, state, x):
        return arch.apply(params, x)

    return core.Rule(init_fn, update_fn, predict_fn)


RULE = core.RuleSpec("direct_feedback_alignment", Config, make, aliases=("dfa",),
                     doc="output error sent to each hidden layer by fixed random matrices (Nøkland 2016)")
