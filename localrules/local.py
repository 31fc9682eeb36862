"""Building blocks local rules share: per-layer parameter gradients from a local error, and feedback matrices.

Every helper works for any layer kind (dense or conv) because it goes through the layer's own ``apply``: the
parameter gradient of a layer given its local error δ = ∂L/∂pre is the VJP of ``pre(p, x)`` with respect to ``p``,
i.e. ``xᵀδ`` and ``Σδ`` for a dense layer and the corresponding correlation for a conv layer. The forward value
inside the VJP is unused, so XLA removes it (no hidden extra FLOPs).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def param_grad(layer, p, x, delta):
    """∂/∂p of Σ δ ⊙ pre(p, x) — the weight update a local error δ (shape of ``pre``) implies, descent sign."""
    _, vjp = jax.vjp(lambda q: layer.apply(q, x)[0], p)
    return vjp(delta)[0]


def input_grad(layer, p, x, g):
    """Gradient with respect to the layer's input of Σ g ⊙ pre(p, x): ``g wᵀ`` for dense; with feedback weights
    in ``p`` this is the feedback-alignment backward step."""
    _, vjp = jax.vjp(lambda z: layer.apply(p, z)[0], x)
    return vjp(g)[0]


def through(layer, x, g):
    """Backpropagate ``g`` through a parameter-free layer (pool, flatten, reshape) exactly."""
    _, vjp = jax.vjp(lambda z: layer.apply({}, z)[1], x)
    return vjp(g)[0]


def uniform_feedback(key, shape, fan, scale=1.0):
    """Fixed random feedback weights U(±scale/√fan)."""
    b = scale / jnp.sqrt(float(fan))
    return jax.random.uniform(key, shape, jnp.float32, -b, b)
