"""``python -m localrules.bench``: per-rule speed against the machine's own measured matmul peak.

For each rule (and backprop) on the standard MLP (default 784-1000-1000-10, batch 100): compile time of one
update step, its FLOPs and bytes (compiled cost analysis), median step time (≥ 20 blocked runs after a warm-up),
achieved GFLOP/s, and the efficiency ratio against an n×n×n float32 matmul timed in the same process. Optional
sections: seeds-per-program scaling (time per seed-step with 1, 2, 4, 8, 16 vmapped seeds vs 1) and peak memory
of a large-batch deep MLP (local rules without a backward pass should need less than backprop).

Usage::

    python -m localrules.bench                                   # every registered rule, standard MLP
    python -m localrules.bench rules=backprop,fa hidden=1000,1000 batch=100 repeats=30
    python -m localrules.bench scaling=true memory=true           # + vmapped-seed scaling and memory
    python -m localrules.bench json=bench.json                    # also write the numbers as JSON

Timings are medians on whatever machine runs it; the report prints the machine, backend and versions.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import jax
import jax.numpy as jnp

from localrules import cli, cost
from localrules import rules as registry
from localrules.config import RunConfig
from localrules.run import build

DEFAULTS = {"rules": "", "hidden": "1000,1000", "batch": "100", "repeats": "20", "matmul_n": "1024",
            "scaling": "false", "scaling_hidden": "256,256", "memory": "false", "memory_hidden": "2000," * 7 + "2000",
            "memory_batch": "2000", "json": "", "rule_args": ""}


def _cfg(rule: str, hidden: str, batch: int, extra: list[str] = ()) -> RunConfig:
    toks = [f"rule={rule}", "task=prototypes", "task.size=28", "task.test_size=100", f"arch.hidden=[{hidden}]",
            f"batch_size={batch}", f"samples={batch * 10}", "timing_steps=0", *extra]
    cfg = cli.apply_overrides(RunConfig(), [cli.split_token(t) for t in toks])
    return cfg


def bench_rule(rule: str, hidden: str, batch: int, repeats: int, extra=()) -> dict:
    b = build(_cfg(rule, hidden, batch, extra))
    c = cost.step_cost(b.counted if b.counted is not b.program else b.program, 0, b.task.data, repeats=0)
    t = cost.step_cost(b.program, 0, b.task.data, repeats=repeats)
    return {"rule": rule, "arch": b.arch.name, "batch": batch, "flops": c["flops"], "bytes": c["bytes"],
            "peak_bytes": c.get("peak_bytes"), "lower_s": c["lower_s"], "compile_s": c["compile_s"],
            "step_ms": t["step_ms"], "gflops": c["flops"] / (t["step_ms"] * 1e-3) / 1e9}


def seeds_scaling(rule: str, hidden: str, batch: int, repeats: int, counts=(1, 2, 4, 8, 16)) -> list[dict]:
    """Time per seed-step of a 10-step chunk with S vmapped seeds, relative to 1 seed."""
    b = build(_cfg(rule, hidden, batch))
    chunk = jax.jit(jax.vmap(b.program.chunk, in_axes=(0, None, 0, None)), static_argnums=3)
    out = []
    for s in counts:
        seeds = jnp.arange(s, dtype=jnp.int32)
        state = jax.vmap(b.program.init)(seeds)
        jax.block_until_ready(chunk(state, b.task.data, seeds, 10))
        times = []
        for _ in range(max(3, repeats // 4)):
            t0 = time.perf_counter()
            jax.block_until_ready(chunk(state, b.task.data, seeds, 10))
            times.append(time.perf_counter() - t0)
        out.append({"seeds": s, "ms_per_seed_step": statistics.median(times) / (10 * s) * 1e3})
    base = out[0]["ms_per_seed_step"]
    for r in out:
        r["ratio_vs_1"] = r["ms_per_seed_step"] / base
    return out


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    opts = dict(DEFAULTS)
    for tok in argv:
        k, v = cli.split_token(tok)
        if k not in opts:
            print(f"error: unknown option {k!r}; options: {', '.join(DEFAULTS)}", file=sys.stderr)
            return 2
        opts[k] = v
    rules = [r for r in opts["rules"].split(",") if r] or [r for r in sorted(registry.RULES) if r != "compose"]
    for r in rules:
        try:
            registry.resolve(r)
        except KeyError as e:
            print(f"error: {e.args[0]}", file=sys.stderr)
            return 2
    batch, repeats = int(opts["batch"]), int(opts["repeats"])
    plat = cost.platform()
    peak = cost.matmul_peak(int(opts["matmul_n"]), repeats)
    print(f"machine: {plat['backend']} / {plat['device']}; jax {jax.__version__}")
    print(f"matmul peak (float32 {peak['n']}³, median of {repeats}): {peak['gflops']:.1f} GFLOP/s")
    report = {"platform": plat, "versions": cost.versions(), "matmul_peak": peak, "rules": [], "scaling": {},
              "memory": []}
    print(f"\nstandard MLP {opts['hidden']} batch {batch}")
    print(f"{'rule':28s} {'arch':26s} {'MFLOP/step':>11s} {'compile s':>9s} {'step ms':>8s} {'GFLOP/s':>8s} "
          f"{'% peak':>7s} {'peak MB':>8s}")
    for r in rules:
        try:
            row = bench_rule(r, opts["hidden"], batch, repeats)
        except Exception as e:  # one rule's failure must not hide the others' numbers
            print(f"{r:28s} failed: {type(e).__name__}: {str(e).splitlines()[0][:100]}")
            continue
        row["pct_peak"] = 100 * row["gflops"] / peak["gflops"]
        report["rules"].append(row)
        print(f"{r:28s} {row['arch'][:26]:26s} {row['flops'] / 1e6:11.1f} {row['compile_s']:9.2f} "
              f"{row['step_ms']:8.2f} {row['gflops']:8.1f} {row['pct_peak']:6.1f}% "
              f"{(row['peak_bytes'] or 0) / 2**20:8.1f}")
    if opts["scaling"] == "true":
        print(f"\nvmapped seeds, MLP {opts['scaling_hidden']} batch {batch}: time per seed-step relative to 1 seed")
        for r in rules:
            try:
                rows = seeds_scaling(r, opts["scaling_hidden"], batch, repeats)
            except Exception as e:
                print(f"  {r}: failed: {type(e).__name__}")
                continue
            report["scaling"][r] = rows
            print(f"  {r:28s} " + "  ".join(f"{x['seeds']}:{x['ratio_vs_1']:.2f}" for x in rows))
    if opts["memory"] == "true":
        mb = int(opts["memory_batch"])
        print(f"\npeak memory of one compiled step, MLP {opts['memory_hidden']} batch {mb}")
        for r in rules:
            try:
                b = build(_cfg(r, opts["memory_hidden"], mb))
                c = cost.step_cost(b.program, 0, b.task.data, repeats=0)
            except Exception as e:
                print(f"  {r}: failed: {type(e).__name__}")
                continue
            report["memory"].append({"rule": r, "peak_bytes": c.get("peak_bytes"), "temp_bytes": c.get("temp_bytes")})
            print(f"  {r:28s} peak {c.get('peak_bytes', 0) / 2**20:9.1f} MB   temp {c.get('temp_bytes', 0) / 2**20:9.1f} MB")
    if opts["json"]:
        with open(opts["json"], "w") as f:
            json.dump(cost.to_builtin(report), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
