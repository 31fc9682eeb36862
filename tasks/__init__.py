"""The task registry: every module ``tasks/<name>.py`` exporting ``TASK`` (or a list ``TASKS``) of
:class:`localrules.core.TaskSpec` is a task, reachable as ``task=<name>`` on the command line.

A task spec's ``make(cfg, batch_size) -> Task`` builds the pure sampler and the held-out test set.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil

from localrules.core import TaskSpec


def _discover() -> dict[str, TaskSpec]:
    reg: dict[str, TaskSpec] = {}
    for m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if m.name.startswith("_"):
            continue
        mod = importlib.import_module(f"{__name__}.{m.name}")
        specs = list(getattr(mod, "TASKS", ())) + ([mod.TASK] if hasattr(mod, "TASK") else [])
        for spec in specs:
            if spec.name in reg:
                raise RuntimeError(f"task {spec.name!r} registered twice")
            reg[spec.name] = spec
    return reg


TASKS: dict[str, TaskSpec] = _discover()
ALIASES: dict[str, str] = {a: s.name for s in TASKS.values() for a in s.aliases}


def resolve(name: str) -> TaskSpec:
    if name in TASKS:
        return TASKS[name]
    if name in ALIASES:
        return TASKS[ALIASES[name]]
    close = difflib.get_close_matches(name, sorted(TASKS) + sorted(ALIASES), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise KeyError(f"unknown task {name!r}.{hint} Known tasks: {', '.join(sorted(TASKS))}")


def name_of(cfg) -> str:
    for s in TASKS.values():
        if type(cfg) is s.config:
            return s.name
    raise TypeError(f"not a task config: {cfg!r}")
