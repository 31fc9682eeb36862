"""Compute accounting measured by the compiler, and honest timing.

``step_cost`` compiles **one** update step of one seed (rule update + optimizer, no data generation) ahead of time
and reads XLA's ``cost_analysis()`` (FLOPs, bytes accessed) and ``memory_analysis()``. XLA counts a loop body
once, so a scanned chunk must never be reported as its total: totals are ``flops_per_step × steps``. Rules with
inner loops (predictive coding's inference) must unroll them when counted, or declare a trip count.

Timing: ``lower()`` and ``compile()`` are timed separately; the compiled step is run once to warm up and then
``repeats`` times, each ended by ``jax.block_until_ready`` on the whole output; the median is reported.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np


def _first(x):
    # cost_analysis() is a dict in current jax, a one-element list in older releases.
    if isinstance(x, (list, tuple)):
        return x[0] if x else {}
    return x or {}


def compiled_cost(compiled) -> dict:
    ca = _first(compiled.cost_analysis())
    out = {"flops": float(ca.get("flops", 0.0)), "bytes": float(ca.get("bytes accessed", 0.0)),
           "transcendentals": float(ca.get("transcendentals", 0.0))}
    try:
        ma = compiled.memory_analysis()
    except Exception:  # some backends do not implement it
        ma = None
    if ma is not None:
        peak = getattr(ma, "peak_memory_in_bytes", 0) or 0
        if not peak:
            peak = (ma.argument_size_in_bytes + ma.output_size_in_bytes + ma.temp_size_in_bytes
                    - getattr(ma, "alias_size_in_bytes", 0))
        out["peak_bytes"] = float(peak)
        out["temp_bytes"] = float(ma.temp_size_in_bytes)
    return out


def step_cost(program, seed: int, data, repeats: int = 20) -> dict:
    """FLOPs/bytes/memory of one compiled update step of one seed, plus compile and median step time.

    Returns a dict with ``flops``, ``bytes``, ``peak_bytes``, ``lower_s``, ``compile_s`` and (when
    ``repeats > 0``) ``step_ms`` (median), ``step_ms_all`` (list) and ``gflops`` (achieved GFLOP/s).
    """
    state = program.init(seed)
    batch = program.sample(data, seed, jnp.zeros((), jnp.int32))
    key = jax.random.PRNGKey(0)
    args = (state.params, state.opt_state, state.rule_state, batch, key)
    t0 = time.perf_counter()
    lowered = jax.jit(program.step).lower(*args)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    out = compiled_cost(compiled)
    out.update(lower_s=t1 - t0, compile_s=t2 - t1)
    if repeats > 0:
        jax.block_until_ready(compiled(*args))
        times = []
        for _ in range(repeats):
            s = time.perf_counter()
            jax.block_until_ready(compiled(*args))
            times.append((time.perf_counter() - s) * 1e3)
        med = statistics.median(times)
        out.update(step_ms=med, step_ms_all=times, gflops=out["flops"] / (med * 1e-3) / 1e9 if med > 0 else 0.0)
    return out


def matmul_peak(n: int = 1024, repeats: int = 20, dtype=jnp.float32) -> dict:
    """The machine's measured matmul throughput: median GFLOP/s of an n×n×n jitted matmul (2n³ FLOPs)."""
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    a = jax.random.normal(k1, (n, n), dtype)
    b = jax.random.normal(k2, (n, n), dtype)
    f = jax.jit(lambda a, b: a @ b)
    jax.block_until_ready(f(a, b))
    times = []
    for _ in range(repeats):
        s = time.perf_counter()
        jax.block_until_ready(f(a, b))
        times.append(time.perf_counter() - s)
    med = statistics.median(times)
    return {"n": n, "ms": med * 1e3, "gflops": 2 * n**3 / med / 1e9}


def mlp_backprop_flops(dims: list[int], batch: int) -> float:
    """Hand count of the matmul FLOPs of one backprop step of a dense MLP (2 FLOPs per multiply-add):
    forward Σ 2BDᵢDᵢ₊₁, weight gradients Σ 2BDᵢDᵢ₊₁, input gradients for every layer but the first."""
    pairs = list(zip(dims[:-1], dims[1:]))
    fwd = sum(2 * batch * a * b for a, b in pairs)
    wgrad = fwd
    xgrad = sum(2 * batch * a * b for a, b in pairs[1:])
    return float(fwd + wgrad + xgrad)


def platform() -> dict:
    d = jax.devices()[0]
    return {"backend": jax.default_backend(), "device": getattr(d, "device_kind", str(d)),
            "n_devices": jax.device_count()}


def versions() -> dict:
    import importlib.metadata as md

    out = {}
    for p in ("jax", "jaxlib", "optax", "flax", "chex", "numpy", "orbax-checkpoint", "tensorboard", "localrules"):
        try:
            out[p] = md.version(p)
        except md.PackageNotFoundError:
            out[p] = None
    import sys

    out["python"] = sys.version.split()[0]
    return out


def to_builtin(x):
    """Recursively convert numpy/jax scalars and arrays into JSON-ready Python values."""
    if isinstance(x, dict):
        return {str(k): to_builtin(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_builtin(v) for v in x]
    if isinstance(x, (np.ndarray, jax.Array)):
        return to_builtin(np.asarray(x).tolist())
    if isinstance(x, (np.floating, np.integer, np.bool_)):
        return x.item()
    return x
