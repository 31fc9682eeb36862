"""Per-layer composition of two rules: ``hidden_rule`` for the hidden layers, ``head_rule`` for the top layers.

``rule=compose rule.hidden_rule=softhebb rule.head_rule=backprop`` is SoftHebb's paper protocol (Hebbian hidden
layers, a linear head trained by backprop on the frozen features). The last ``head_layers`` layers with
parameters take ``head_rule``'s pseudo-gradients; every other layer takes ``hidden_rule``'s
(:func:`localrules.core.compose`, like ``optax.partition``). Each part has its own optimizer
(``rule.hidden_optimizer.*`` / ``rule.head_optimizer.*``; unset = the run's ``optimizer.*``), built with
``optax.partition`` over the same labels.

Phases: with ``hidden_steps = N > 0`` the hidden part is trained for steps ``[0, N)`` and the head for steps
``[N, end)`` (each part's optimizer is gated, so the head's optimizer state starts fresh at step N); with 0 both
train together on every step.

Compute: both sub-rules run on every step and XLA removes the work whose results are discarded (backprop's
gradients for hidden layers, the hidden rule's update of the head), so the composed step's FLOPs are less than the
sum of the two rules' (``tests/test_compose.py``). In the phased mode both parts are still computed every step
(the gating is inside the optimizer), so the counted FLOPs are those of the simultaneous step: an upper bound.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import optax

from localrules import core
from localrules.optim import OptimizerConfig, gated
from localrules.rules import backprop


@dataclasses.dataclass(frozen=True)
class Config:
    hidden_rule: Any = backprop.Config()
    """Rule of the hidden layers (``rule.hidden_rule=<name>``; its fields as ``rule.hidden_rule.<field>=...``)."""
    head_rule: Any = backprop.Config()
    """Rule of the top ``head_layers`` layers (``rule.head_rule=<name>``)."""
    head_layers: int = 1
    """How many parameter layers, counted from the output, the head rule owns."""
    hidden_optimizer: Optional[OptimizerConfig] = None
    """Optimizer of the hidden part (unset = the run's ``optimizer``); e.g. ``rule.hidden_optimizer.lr=0.01``."""
    head_optimizer: Optional[OptimizerConfig] = None
    """Optimizer of the head (unset = the run's ``optimizer``)."""
    hidden_steps: int = 0
    """0: both parts train on every step. N > 0: hidden layers train for the first N steps, then the head."""


def labels_for(cfg: Config, arch) -> tuple[str, ...]:
    pl = arch.param_layers
    if not 1 <= cfg.head_layers < len(pl) + 1:
        raise ValueError(f"rule.head_layers={cfg.head_layers}: the architecture has {len(pl)} layers with "
                         f"parameters; choose 1..{len(pl)}")
    head = set(pl[len(pl) - cfg.head_layers:])
    return tuple("head" if i in head else "hidden" for i in range(len(arch.layers)))


def _sub(cfg_part):
    from localrules import rules as registry

    return registry.RULES[registry.name_of(cfg_part)]


def make(cfg: Config, arch, heads: core.Heads) -> core.Rule:
    if isinstance(cfg.hidden_rule, Config) or isinstance(cfg.head_rule, Config):
        raise ValueError("rule=compose cannot nest another compose; compose two ordinary rules")
    rules = {"hidden": _sub(cfg.hidden_rule).make(cfg.hidden_rule, arch, heads),
             "head": _sub(cfg.head_rule).make(cfg.head_rule, arch, heads)}
    return core.compose(rules, labels_for(cfg, arch))


def optimizer(cfg: Config, arch, make_opt) -> optax.GradientTransformation:
    labels = labels_for(cfg, arch)
    hid, head = make_opt(cfg.hidden_optimizer), make_opt(cfg.head_optimizer)
    if cfg.hidden_steps > 0:
        hid, head = gated(hid, 0, cfg.hidden_steps), gated(head, cfg.hidden_steps, None)
    return optax.partition({"hidden": hid, "head": head}, lambda params: core.layer_labels(params, labels))


RULE = core.RuleSpec("compose", Config, make, doc="per-layer composition: hidden_rule below, head_rule on top",
                     optimizer=optimizer)
