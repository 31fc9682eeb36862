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


def test_peak_memory_counts_the_activations_a_backward_pass_keeps():
    """Gradient of a 3-layer tanh MLP at batch 512 keeps two 512×256 hidden activations (0.5 MB each) for the
    backward pass. On CPU XLA's own ``peak_memory_in_bytes`` is arguments + outputs only, and YNNPACK fusions hide
    their intermediates, so the lab's peak is arguments + outputs + temporaries of the plain-buffer compilation:
    it must exceed arguments + outputs by at least those activations, and grow with the batch."""
    import jax
    import jax.numpy as jnp

    def loss(ws, x):
        h = x
        for w in ws:
            h = jnp.tanh(h @ w)
        return jnp.sum(h)

    ws = tuple(jnp.ones((256, 256), jnp.float32) * 0.01 for _ in range(3))
    peaks = {}
    for batch in (512, 1024):
        x = jnp.ones((batch, 256), jnp.float32)
        lowered = jax.jit(jax.grad(loss)).lower(ws, x)
        opts = cost.CPU_PLAIN_BUFFERS if jax.default_backend() == "cpu" else None
        c = cost.compiled_cost(lowered.compile(opts) if opts else lowered.compile())
        acts = 2 * batch * 256 * 4
        assert c["peak_bytes"] >= c["argument_bytes"] + c["output_bytes"] + acts - 1024, c
        peaks[batch] = c["peak_bytes"]
    assert peaks[1024] - peaks[512] >= 2 * 512 * 256 * 4, peaks
    if jax.default_backend() == "cpu":  # a forward chain inside one YNNPACK fusion: its intermediates show only
        plain = jax.jit(loss).lower(ws, x).compile(cost.CPU_PLAIN_BUFFERS)  # without the fusion
        assert cost.compiled_cost(plain)["temp_bytes"] >= 1024 * 256 * 4


def test_platform_names_the_cpu_model_and_core_count():
    """Records said "cpu: cpu"; a CPU number is only comparable with the CPU it was measured on."""
    import os

    p = cost.platform()
    assert p["cpu_model"] and p["cpu_cores"] >= 1 and p["cpu_cores"] <= (os.cpu_count() or 1)
    if p["backend"] == "cpu":
        assert p["device"] == f"{p['cpu_model']}, {p['cpu_cores']} cores"
