"""Backpropagation as an ordinary rule: the exact gradient of the task loss.

Pseudo-gradient: ``∇_θ L(θ)`` with ``L`` = :func:`localrules.core.loss` (batch-mean softmax cross-entropy summed
over labelled heads) of the architecture's forward pass. Applied by the run's optax optimizer exactly as a
hand-written ``jax.grad`` + optax loop would (``tests/test_backprop.py`` checks equality).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax

from localrules import core


@dataclasses.dataclass(frozen=True)
class Config:
    """Backprop has no hyper-parameters of its own: the optimizer config sets lr, momentum, decay, schedule."""


class BackpropState(NamedTuple):
    pass


def make(cfg: Config, arch, heads: core.Heads) -> core.Rule:
    def loss_fn(params, batch):
        return core.loss(arch.apply(params, batch.x), batch.y, heads)

    def init_fn(key, params):
        return BackpropState()

    def update_fn(params, state, batch, key):
        l, g = jax.value_and_grad(loss_fn)(params, batch)
        return g, state, {"loss": l}

    def predict_fn(params, state, x):
        return arch.apply(params, x)

    return core.Rule(init_fn, update_fn, predict_fn)


RULE = core.RuleSpec("backprop", Config, make, aliases=("bp",), doc="exact gradient of the task loss")
