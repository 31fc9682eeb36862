"""No recompilation between chunks, nor between curriculum stages of the same shape (issue 10).

The counters are JAX's own monitoring events: a jit cache miss traces the function
(``/jax/core/compile/jaxpr_trace_duration``) and every new executable is compiled by the backend
(``/jax/core/compile/backend_compile_duration``); both carry the function's name. A recompilation is seconds of a
2-core CPU per chunk or stage, so a counter that grows during training is a performance bug even when every number
the run reports is right. ``tests/test_engine.py`` checks the bare engine (a hand-jitted chunk traced once);
``tests/test_curriculum.py`` checks that one stage's segments share one compiled chunk. Here: the real run path
(``localrules.run.execute``, counters read at every chunk's progress line) and stages that share one stream.
"""

import collections
import contextlib

import jax
import jax.numpy as jnp
import pytest

from localrules import run
from localrules.curriculum import Stage, run_curriculum
from tests.helpers import tiny_build, tiny_config

TRACE = "/jax/core/compile/jaxpr_trace_duration"
COMPILE = "/jax/core/compile/backend_compile_duration"


@contextlib.contextmanager
def compile_counters():
    """``(traces, compiles)``: Counters of jit cache misses and backend compilations by function name."""
    traces, compiles = collections.Counter(), collections.Counter()

    def listen(name, duration, **kw):
        if name == TRACE:
            traces[kw.get("fun_name", "?")] += 1
        elif name == COMPILE:
            compiles[kw.get("fun_name", "?")] += 1

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        yield traces, compiles
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)


def test_a_run_compiles_nothing_after_its_first_chunk(tmp_path):
    """12 steps in 6 chunks of 2 through ``run.execute``: the counters read at chunk 1's progress line (training
    chunk, evaluator, checkpoint-free bookkeeping all compiled by then) must not move through chunks 2–6 — the
    step counter and the data are traced arguments, not constants baked into the program."""
    cfg = tiny_config("samples=96", "eval_every=2", "progress=true", "seeds=2")
    snapshots = []
    with compile_counters() as (traces, compiles):
        def log(line):
            if " step " in line:
                snapshots.append((sum(traces.values()), sum(compiles.values()), dict(compiles)))

        record = run.execute(cfg, str(tmp_path / "run"), "recompile", log=log)
    assert record["status"] == "ok"
    assert len(snapshots) == 6, snapshots
    first = snapshots[0]
    for i, snap in enumerate(snapshots[1:], start=2):
        assert snap[:2] == first[:2], (f"chunk {i} traced/compiled again", set(snap[2].items()) - set(first[2].items()))
    assert first[2].get("jit(chunk)") == 1, first[2]


def _prototype_task(noise: float, batch: int):
    from localrules.tasks import prototypes

    return prototypes.make(prototypes.Config(size=8, test_size=64, noise=noise), batch)


def test_curriculum_stages_that_share_a_stream_share_one_compiled_chunk():
    """A stage revisited (the same stream again, here under another name and with another test set) has the
    shape and the program of the first: the training chunk must be compiled once for the whole curriculum.

    Known defect: ``localrules.curriculum.run_curriculum`` builds ``make_program`` and two ``jax.jit`` wrappers
    per stage, so every stage recompiles its chunk even when its stream is the same function. Fix (in
    run_curriculum): key the jitted chunk pair by the stage stream's ``(task.context, task.sample)`` and reuse it
    for every stage with the same pair (the chunk reads nothing else of the task)."""
    batch = 16
    b = tiny_build("arch.hidden=[8]", f"batch_size={batch}")
    task = _prototype_task(0.3, batch)
    other_test = _prototype_task(0.6, batch).test
    stages = [Stage("P0", task, 2.0, 512, 0.1),
              Stage("P0-again", task._replace(name="P0-again", test=other_test), 2.0, 512, 0.1)]
    with compile_counters() as (traces, compiles):
        _, summary = run_curriculum(stages, rule=b.rule, opt=b.opt, arch=b.arch, seeds=jnp.asarray([0], jnp.int32),
                                    batch_size=batch, flops_per_step=1.0, log=lambda *_: None)
    assert [p["samples_trained"] for p in summary["per_stage"]] == [512, 512]
    assert compiles["jit(chunk)"] == 1, dict(compiles)
    assert traces["chunk"] == 1, dict(traces)
