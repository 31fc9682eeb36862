"""Compute accounting measured by the compiler, and honest timing.

``step_cost`` compiles **one** update step of one seed (rule update + optimizer, no data generation) ahead of time
and reads XLA's ``cost_analysis()`` (FLOPs, bytes accessed) and ``memory_analysis()``. XLA counts a loop body
once, so a scanned chunk must never be reported as its total: totals are ``flops_per_step × steps``. Rules with
inner loops (predictive coding's inference) must unroll them when counted, or declare a trip count.

Memory: :func:`memory_cost` compiles the step with its state donated (as the lab's training chunk runs it) and
reads the buffer assignment (see there why donation matters). Timing: ``lower()`` and ``compile()`` are timed
separately; the compiled step is run once to warm up and then
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
    """FLOPs, bytes accessed and memory of a compiled program.

    ``peak_bytes`` is the program's peak device memory: XLA's ``peak_memory_in_bytes`` where it accounts for the
    temporaries; on the CPU backend (jax 0.10) that field is only arguments + outputs, so there it is
    arguments + outputs + temporaries − aliased (an upper bound: not every temporary is live at once, but XLA's
    temp allocation is already packed by buffer assignment). ``xla_peak_bytes`` keeps XLA's own field.
    """
    ca = _first(compiled.cost_analysis())
    out = {"flops": float(ca.get("flops", 0.0)), "bytes": float(ca.get("bytes accessed", 0.0)),
           "transcendentals": float(ca.get("transcendentals", 0.0))}
    try:
        ma = compiled.memory_analysis()
    except Exception:  # some backends do not implement it
        ma = None
    if ma is not None:
        alias = getattr(ma, "alias_size_in_bytes", 0) or 0
        total = ma.argument_size_in_bytes + ma.output_size_in_bytes + ma.temp_size_in_bytes - alias
        xla_peak = getattr(ma, "peak_memory_in_bytes", 0) or 0
        # GPU/TPU: XLA's peak comes from a heap simulation over arguments, outputs and temporaries. The CPU
        # backend's field is arguments + outputs only (measured: jax 0.10.2), so there the sum stands in for it.
        args_out = ma.argument_size_in_bytes + ma.output_size_in_bytes - alias
        cpu_style = jax.default_backend() == "cpu" or abs(xla_peak - args_out) <= 1024
        peak = total if (cpu_style or not xla_peak) else xla_peak
        out["peak_bytes"] = float(peak)
        out["xla_peak_bytes"] = float(xla_peak)
        out["temp_bytes"] = float(ma.temp_size_in_bytes)
        out["argument_bytes"] = float(ma.argument_size_in_bytes)
        out["output_bytes"] = float(ma.output_size_in_bytes)
    return out


def step_args(program, seed: int, data) -> tuple:
    """The arguments of one update step of one seed: ``(params, opt_state, rule_state, batch, key)``."""
    # one jitted program: one compilation instead of one per eager random/elementwise op (seconds on a loaded CPU)
    state, batch = jax.jit(lambda d, s: (program.init(s), program.sample(d, s, jnp.zeros((), jnp.int32))))(data, seed)
    return state.params, state.opt_state, state.rule_state, batch, jax.random.PRNGKey(0)


def compile_step(program, args, compiler_options: dict | None = None):
    """``(compiled, lower_s, compile_s)`` of ``jax.jit(program.step)`` ahead of time for ``args``."""
    t0 = time.perf_counter()
    lowered = jax.jit(program.step).lower(*args)
    t1 = time.perf_counter()
    compiled = lowered.compile(compiler_options) if compiler_options else lowered.compile()
    return compiled, t1 - t0, time.perf_counter() - t1


#: Steps per timed call of the scanned step (timings and the bench).
SCAN_STEPS = 10


def compile_scanned_step(program, args, steps: int):
    """``jax.jit`` of ``steps`` update steps in one ``lax.scan`` on the batch of ``args`` (the step key folded with
    the step index), compiled ahead of time: the step in the context the lab trains it in (a training chunk is a
    scan). XLA:CPU compiles some ops differently inside a loop body — a conv's JAX-transposed kernel gradient ran
    ~50× slower there than in a single call (docs/compute.md, section 4) — so a single-call timing can hide what
    training costs."""

    def run(params, opt_state, rule_state, batch, key):
        def body(carry, t):
            p, o, r = carry
            p, o, r, _ = program.step(p, o, r, batch, jax.random.fold_in(key, t))
            return (p, o, r), None

        return jax.lax.scan(body, (params, opt_state, rule_state), jnp.arange(steps))[0]

    return jax.jit(run).lower(*args).compile()


def time_compiled(compiled, args, repeats: int) -> dict:
    """Median wall time of ``repeats`` calls after one warm-up call, each blocked on its whole output."""
    jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(repeats):
        s = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append((time.perf_counter() - s) * 1e3)
    return {"step_ms": statistics.median(times), "step_ms_all": times}


#: CPU compiler option that turns XLA's YNNPACK fusions off. Inside such a fusion (jax 0.10's default for dense
#: chains on CPU) the intermediates live in YNNPACK's own scratch, which ``memory_analysis()`` does not see: a
#: forward pass of three 2000×1000 layers reports 0 temporary bytes with them and 16 MB without.
CPU_PLAIN_BUFFERS = {"xla_cpu_experimental_ynn_fusion_type": ""}


def memory_cost(program, seed: int, data, args=None) -> dict:
    """Memory of one update step as the lab trains it, from XLA's buffer assignment.

    The step is compiled with its state donated (``params``, ``opt_state``, ``rule_state``: the new state
    overwrites the old, as in the lab's donated training chunk). Without donation XLA parks temporaries in the
    not-yet-written output buffers and the analysis hides them (a backprop step of an 8×2000 MLP at batch 2000:
    15 MB of temporaries reported, 260 MB with donation). On CPU it is also compiled with
    :data:`CPU_PLAIN_BUFFERS`, so that intermediates inside YNNPACK fusions are counted; where this jaxlib rejects
    that option, with the default options. Returns :func:`compiled_cost`'s memory fields (``peak_bytes`` =
    arguments + outputs + temporaries − aliased = state + batch + temporaries) plus ``memory_plan``.
    """
    args = step_args(program, seed, data) if args is None else args
    lowered = jax.jit(program.step, donate_argnums=(0, 1, 2)).lower(*args)
    compiled, plan = None, "state donated"
    if jax.default_backend() == "cpu":
        try:
            compiled = lowered.compile(CPU_PLAIN_BUFFERS)
            plan = "state donated, ynn fusions off"
        except Exception:  # a jaxlib without the option: keep the default plan
            compiled = None
    if compiled is None:
        compiled = lowered.compile()
    c = compiled_cost(compiled)
    out = {k: c[k] for k in ("peak_bytes", "xla_peak_bytes", "temp_bytes", "argument_bytes", "output_bytes") if k in c}
    out["memory_plan"] = plan
    return out


def step_cost(program, seed: int, data, repeats: int = 20) -> dict:
    """FLOPs/bytes/memory of one compiled update step of one seed, plus compile and median step time.

    Returns a dict with ``flops``, ``bytes``, ``peak_bytes``, ``lower_s``, ``compile_s`` and (when
    ``repeats > 0``) ``step_ms`` (median), ``step_ms_all`` (list) and ``gflops`` (achieved GFLOP/s). The time is
    of the step as training runs it, inside a ``lax.scan`` (:func:`compile_scanned_step`): ``repeats`` steps in
    calls of :data:`SCAN_STEPS`, each call's time per step one sample of the median.
    """
    args = step_args(program, seed, data)
    compiled, lower_s, compile_s = compile_step(program, args)
    out = compiled_cost(compiled)
    out.update(lower_s=lower_s, compile_s=compile_s)
    if repeats > 0:
        n = min(SCAN_STEPS, repeats)
        t = time_compiled(compile_scanned_step(program, args, n), args, max(3, -(-repeats // n)))
        out.update(step_ms=t["step_ms"] / n, step_ms_all=[x / n for x in t["step_ms_all"]], scan_steps=n)
        med = out["step_ms"]
        out["gflops"] = out["flops"] / (med * 1e-3) / 1e9 if med > 0 else 0.0
    return out


def matmul_program(n: int = 1024, dtype=jnp.float32):
    """``(f, args)``: the jitted n×n×n matmul whose rate is the machine's peak here (2n³ FLOPs a call)."""
    rng = np.random.default_rng(0)  # host draws: no random-number kernel to compile before the measurement
    a = jnp.asarray(rng.standard_normal((n, n)), dtype)
    b = jnp.asarray(rng.standard_normal((n, n)), dtype)
    f = jax.jit(lambda a, b: a @ b)
    jax.block_until_ready(f(a, b))
    return f, (a, b)


def matmul_peak(n: int = 1024, repeats: int = 20, dtype=jnp.float32) -> dict:
    """The machine's measured matmul throughput: median GFLOP/s of an n×n×n jitted matmul (2n³ FLOPs)."""
    f, args = matmul_program(n, dtype)
    times = []
    for _ in range(repeats):
        s = time.perf_counter()
        jax.block_until_ready(f(*args))
        times.append(time.perf_counter() - s)
    med = statistics.median(times)
    return {"n": n, "ms": med * 1e3, "gflops": 2 * n**3 / med / 1e9}


def time_against_peak(compiled, args, repeats: int, n: int = 1024, scanned=None) -> dict:
    """Median step time and the matmul peak measured *interleaved* with it (step, matmul, step, matmul, ...), so
    that on a machine whose load changes both medians see the same conditions and their ratio stays meaningful.
    ``scanned=(program, steps)`` (from :func:`compile_scanned_step`) is timed in the same round robin.

    Returns ``step_ms``, ``step_ms_all``, ``peak`` (as :func:`matmul_peak`) and, with ``scanned``,
    ``scan_step_ms`` (median scan time / steps) and ``scan_step_ms_all``."""
    f, mm_args = matmul_program(n)
    jax.block_until_ready(compiled(*args))
    if scanned is not None:
        jax.block_until_ready(scanned[0](*args))
    steps, scans, mms = [], [], []
    for _ in range(repeats):
        s = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        steps.append((time.perf_counter() - s) * 1e3)
        if scanned is not None:
            s = time.perf_counter()
            jax.block_until_ready(scanned[0](*args))
            scans.append((time.perf_counter() - s) * 1e3 / scanned[1])
        s = time.perf_counter()
        jax.block_until_ready(f(*mm_args))
        mms.append(time.perf_counter() - s)
    med = statistics.median(mms)
    out = {"step_ms": statistics.median(steps), "step_ms_all": steps,
           "peak": {"n": n, "ms": med * 1e3, "gflops": 2 * n**3 / med / 1e9}}
    if scanned is not None:
        out.update(scan_step_ms=statistics.median(scans), scan_step_ms_all=scans)
    return out


def mlp_backprop_flops(dims: list[int], batch: int) -> float:
    """Hand count of the matmul FLOPs of one backprop step of a dense MLP (2 FLOPs per multiply-add):
    forward Σ 2BDᵢDᵢ₊₁, weight gradients Σ 2BDᵢDᵢ₊₁, input gradients for every layer but the first."""
    pairs = list(zip(dims[:-1], dims[1:]))
    fwd = sum(2 * batch * a * b for a, b in pairs)
    wgrad = fwd
    xgrad = sum(2 * batch * a * b for a, b in pairs[1:])
    return float(fwd + wgrad + xgrad)


def cpu_model() -> str:
    """The host CPU's model name (``/proc/cpuinfo``, else ``platform.processor()``), or ``"unknown CPU"``."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")) and ":" in line:
                    name = line.split(":", 1)[1].strip()
                    if name:
                        return " ".join(name.split())
    except OSError:
        pass
    import platform as _platform

    return _platform.processor() or _platform.machine() or "unknown CPU"


def cpu_cores() -> int:
    """Cores this process may run on (its affinity mask), else ``os.cpu_count()``."""
    import os

    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def platform() -> dict:
    """Where a number was measured. On CPU backends ``device`` names the CPU model and core count (XLA's own
    device kind is just "cpu"); ``cpu_model`` and ``cpu_cores`` are recorded for every backend (the host)."""
    d = jax.devices()[0]
    backend = jax.default_backend()
    model, cores = cpu_model(), cpu_cores()
    device = getattr(d, "device_kind", str(d))
    if backend == "cpu":
        device = f"{model}, {cores} cores"
    return {"backend": backend, "device": device, "n_devices": jax.device_count(), "cpu_model": model,
            "cpu_cores": cores}


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
