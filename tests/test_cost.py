"""Compute accounting: the compiler's FLOP count of one update step must match a hand count, and a composed
rule must cost less than its two parts together (XLA removes the discarded work)."""

import numpy as np

from localrules import cost
from tests.helpers import tiny_build


def test_compiled_flops_of_an_mlp_backprop_step_match_the_hand_count_within_two_percent():
    """784-1000-1000-10 at batch 100 with SGD: forward, weight-gradient and input-gradient matmuls are
    2·B·Σ D_in·D_out each (the first layer has no input gradient); elementwise work is < 1 % of it."""
    # the Fashion-MNIST files are not needed for a FLOP count: use the procedural task at 28×28
    b = tiny_build("rule=backprop", "task.size=28", "arch.hidden=[1000,1000]", "batch_size=100", "samples=1000",
                   "optimizer.name=sgd", "optimizer.lr=0.1")
    c = cost.step_cost(b.program, 0, b.task.data, repeats=0)
    hand = cost.mlp_backprop_flops([784, 1000, 1000, 10], 100)
    assert abs(c["flops"] - hand) / hand < 0.02, (c["flops"], hand)


def test_a_scanned_chunk_is_not_reported_as_its_total():
    """XLA counts a loop body once: a 10-step chunk's cost analysis is about one step's, which is why the lab
    reports flops_per_step × steps and never the chunk's own count."""
    import jax
    import jax.numpy as jnp

    b = tiny_build("rule=backprop")
    one = cost.step_cost(b.program, 0, b.task.data, repeats=0)["flops"]
    state = b.program.init(0)
    compiled = jax.jit(b.program.chunk, static_argnums=3).lower(state, b.task.data, jnp.int32(0), 10).compile()
    chunk = cost.compiled_cost(compiled)["flops"]
    assert chunk < 3 * one


def test_composed_flops_are_less_than_the_sum_of_both_rules():
    """compose(hidden=FA, head=backprop) runs both sub-rules, but XLA drops the discarded updates, so the
    composed step must cost clearly less than FA's step plus backprop's step."""
    fa = cost.step_cost(tiny_build("rule=feedback_alignment", "arch.hidden=[64,64]").program, 0, (), 0)["flops"]
    bp = cost.step_cost(tiny_build("rule=backprop", "arch.hidden=[64,64]").program, 0, (), 0)["flops"]
    comp = cost.step_cost(tiny_build("rule=compose", "rule.hidden_rule=feedback_alignment",
                                     "arch.hidden=[64,64]").program, 0, (), 0)["flops"]
    assert comp < 0.8 * (fa + bp), (comp, fa, bp)
    assert comp <= max(fa, bp) * 1.1


def test_matmul_peak_is_a_positive_measured_rate():
    """The peak used for efficiency ratios is measured, not assumed."""
    p = cost.matmul_peak(n=128, repeats=3)
    assert p["gflops"] > 0 and np.isfinite(p["gflops"])
