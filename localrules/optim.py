"""The optimizer configuration shared by every rule, and its optax factory.

Kept apart from :mod:`localrules.config` because rule modules (e.g. ``compose``) import it while the rule registry
is being built.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """The optax optimizer that applies the rule's pseudo-gradients (the same for every rule in a comparison)."""

    name: str = "adam"
    """sgd | momentum | nesterov | adam | adamw | rmsprop."""
    lr: float = 1e-3
    """Peak learning rate."""
    momentum: float = 0.9
    """Momentum for momentum/nesterov/rmsprop."""
    b1: float = 0.9
    """Adam β1."""
    b2: float = 0.999
    """Adam β2."""
    eps: float = 1e-8
    """Adam/RMSprop ε."""
    weight_decay: float = 0.0
    """Decoupled weight decay (adamw) or L2 added to the pseudo-gradient (others)."""
    schedule: str = "constant"
    """constant | cosine | step | warmup_cosine."""
    warmup_steps: int = 0
    """Linear warm-up steps (warmup_cosine)."""
    milestones: tuple[float, ...] = ()
    """Epochs (or, for streams, fractions of training when < 1) at which a step schedule multiplies lr by decay."""
    decay: float = 0.1
    """Multiplicative factor of the step schedule."""
    clip_norm: float = 0.0
    """Clip pseudo-gradients to this global norm (0 = off)."""


def make_optimizer(cfg: OptimizerConfig, total_steps: int, steps_per_epoch: Optional[int]) -> optax.GradientTransformation:
    """Build the optax optimizer; raises ValueError with the fix for out-of-range values."""
    if not cfg.lr > 0:
        raise ValueError(f"optimizer.lr={cfg.lr}: the learning rate must be > 0")
    if cfg.weight_decay < 0:
        raise ValueError(f"optimizer.weight_decay={cfg.weight_decay}: must be ≥ 0")
    total_steps = max(1, total_steps)
    if cfg.schedule == "constant":
        lr = cfg.lr
    elif cfg.schedule == "cosine":
        lr = optax.cosine_decay_schedule(cfg.lr, total_steps)
    elif cfg.schedule == "warmup_cosine":
        lr = optax.warmup_cosine_decay_schedule(0.0, cfg.lr, max(1, cfg.warmup_steps), total_steps)
    elif cfg.schedule == "step":
        bounds = {}
        for m in cfg.milestones:
            step = int(m * total_steps) if m < 1 else int(m * (steps_per_epoch or 1))
            bounds[step] = bounds.get(step, 1.0) * cfg.decay
        lr = optax.piecewise_constant_schedule(cfg.lr, bounds)
    else:
        raise ValueError(f"optimizer.schedule={cfg.schedule!r}: choose constant, cosine, step or warmup_cosine")
    wd = cfg.weight_decay
    if cfg.name == "sgd":
        opt = optax.sgd(lr)
    elif cfg.name == "momentum":
        opt = optax.sgd(lr, momentum=cfg.momentum)
    elif cfg.name == "nesterov":
        opt = optax.sgd(lr, momentum=cfg.momentum, nesterov=True)
    elif cfg.name == "adam":
        opt = optax.adam(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
    elif cfg.name == "adamw":
        opt, wd = optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay), 0.0
    elif cfg.name == "rmsprop":
        opt = optax.rmsprop(lr, eps=cfg.eps, momentum=cfg.momentum)
    else:
        raise ValueError(f"optimizer.name={cfg.name!r}: choose sgd, momentum, nesterov, adam, adamw or rmsprop")
    parts = []
    if cfg.clip_norm > 0:
        parts.append(optax.clip_by_global_norm(cfg.clip_norm))
    if wd > 0:
        parts.append(optax.add_decayed_weights(wd))
    return optax.chain(*parts, opt) if parts else opt


class GatedState(NamedTuple):
    count: jax.Array
    inner: optax.OptState


def gated(inner: optax.GradientTransformation, start: int = 0, stop: int | None = None) -> optax.GradientTransformation:
    """Apply ``inner`` only for steps ``start <= t < stop``; outside that window the updates are zero and
    ``inner``'s state is frozen (so an Adam head that starts at step ``start`` starts with fresh moments)."""

    def init_fn(params):
        return GatedState(jnp.zeros((), jnp.int32), inner.init(params))

    def update_fn(updates, state, params=None):
        active = state.count >= start
        if stop is not None:
            active = active & (state.count < stop)
        new_u, new_inner = inner.update(updates, state.inner, params)
        u = jax.tree.map(lambda a: jnp.where(active, a, jnp.zeros_like(a)), new_u)
        kept = jax.tree.map(lambda a, b: jnp.where(active, a, b), new_inner, state.inner)
        return u, GatedState(state.count + 1, kept)

    return optax.GradientTransformation(init_fn, update_fn)
