"""Typed, frozen run configuration and the optimizer factory.

Every field has an attribute docstring (shown by ``python -m localrules.sweep --help``). The ``rule``, ``arch`` and
``task`` fields hold one config dataclass chosen by name from the registries (``rule=softhebb``), so a rule's own
hyper-parameters live in its file and are reached as ``rule.<field>=...``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import optax

from localrules.architectures import MLPConfig
from localrules.rules import backprop
from localrules.tasks import prototypes


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


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """One run: a rule trained on a task with an architecture and an optimizer, for ``seeds`` vmapped seeds."""

    rule: Any = backprop.Config()
    """The learning rule (``rule=<name>``; its fields as ``rule.<field>=...``)."""
    arch: Any = MLPConfig()
    """The architecture (``arch=mlp|cnn|...``; fields as ``arch.<field>=...``)."""
    task: Any = prototypes.Config()
    """The task or curriculum (``task=<name>``; fields as ``task.<field>=...``)."""
    optimizer: OptimizerConfig = OptimizerConfig()
    """Optimizer applied to the rule's pseudo-gradients."""
    batch_size: int = 100
    """Training minibatch size."""
    samples: int = 60_000
    """Training length in samples (rounded down to whole steps); ignored when epochs > 0."""
    epochs: float = 0.0
    """Training length in passes over a finite dataset (0 = use samples)."""
    seeds: int = 1
    """Number of seeds, run as one vmapped program."""
    seed: int = 0
    """First seed; the run uses seeds seed … seed+seeds−1."""
    eval_every: int = 0
    """Evaluate and checkpoint every this many steps (0 = about 10 times per run, at most one epoch apart)."""
    name: str = "default"
    """Sweep name: outputs go to <out>/<name>/."""
    out: str = "runs"
    """Root output directory."""
    checkpoint: bool = True
    """Save an orbax checkpoint after every chunk, so a killed sweep resumes where it stopped."""
    timing_steps: int = 20
    """Timed repetitions of the compiled single update step (median is reported); 0 = skip timing."""
    progress: bool = True
    """Print one line per chunk with rate and ETA."""


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
