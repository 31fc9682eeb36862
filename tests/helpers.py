"""Shared builders for tests: a run config on the tiny procedural task and its built program."""

from __future__ import annotations

from localrules import cli
from localrules.config import RunConfig
from localrules.run import build


def tiny_config(*overrides: str, **kw) -> RunConfig:
    base = ["task=prototypes", "task.size=8", "task.test_size=200", "arch.hidden=[16,16]", "batch_size=8", "samples=64",
            "timing_steps=0", "progress=false", "checkpoint=false"]
    items = [cli.split_token(t) for t in base + list(overrides)]
    items += [(k, v) for k, v in kw.items()]
    return cli.apply_overrides(RunConfig(), items)


def tiny_build(*overrides: str):
    return build(tiny_config(*overrides))
