"""Typed, frozen run configuration and the optimizer factory.

Every field has an attribute docstring (shown by ``python -m localrules.sweep --help``). The ``rule``, ``arch`` and
``task`` fields hold one config dataclass chosen by name from the registries (``rule=softhebb``), so a rule's own
hyper-parameters live in its file and are reached as ``rule.<field>=...``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from localrules.architectures import MLPConfig
from localrules.optim import OptimizerConfig, make_optimizer  # noqa: F401  (re-exported)
from localrules.rules import backprop
from localrules.tasks import curriculum as nursery


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """One run: a rule trained on a task with an architecture and an optimizer, for ``seeds`` vmapped seeds."""

    rule: Any = backprop.Config()
    """The learning rule (``rule=<name>``; its fields as ``rule.<field>=...``)."""
    arch: Any = MLPConfig()
    """The architecture (``arch=mlp|cnn|...``; fields as ``arch.<field>=...``)."""
    task: Any = nursery.Config()
    """The task or curriculum (``task=<name>``; fields as ``task.<field>=...``); default: the nursery curriculum."""
    optimizer: OptimizerConfig = OptimizerConfig()
    """Optimizer applied to the rule's pseudo-gradients."""
    batch_size: int = 100
    """Training minibatch size."""
    samples: int = 60_000
    """Training length in samples (rounded down to whole steps); ignored when epochs > 0."""
    epochs: float = 0.0
    """Training length in passes over a finite dataset (0 = use samples)."""
    val_fraction: float = 0.0
    """Hold out this fraction of the training set, in (0, 0.5], as a validation split that training never sees
    (a fixed seeded draw, the same for every seed and rule); its loss and accuracy are recorded at every
    evaluation. 0 = no split. Image-dataset tasks only (task=fashion_mnist, mnist, ...)."""
    selection: str = "last"
    """Which parameters give the run's final numbers: last (the last step) | best_val (per seed, the evaluation
    with the lowest validation cross-entropy; needs val_fraction > 0; the selected step is recorded)."""
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
