"""``python -m localrules.bench``: every rule's speed, compile time and memory against the machine's own limits.

One process measures, in order:

1. **Per rule** (and backprop) on the standard MLP (``hidden=1000,1000``, batch 100) and on the lab's small CNN
   (``arch=cnn``, ``channels=32,64``), on 28×28 single-channel inputs (the procedural prototypes task; no files):
   compile time of one update step (trace + lower + XLA compile), median step time (``repeats`` blocked calls of
   a ``lax.scan`` of 10 steps on one batch — the context training runs the step in, where XLA:CPU can compile an op
   differently than in a single call — and, as "call ms", of the step called alone), FLOPs/step of the compiled single step (rules with inner loops are counted on their unrolled
   ``counted`` twin, marked †), achieved GFLOP/s, the ratio to a float32 n×n×n matmul timed in the same process
   (the "peak"), and the step's peak memory (:func:`localrules.cost.memory_cost`: XLA's buffer assignment of the
   step compiled with its state donated, as the lab trains; on CPU with YNNPACK fusions off, whose intermediates
   ``memory_analysis()`` cannot see). Step times are of the undonated step (repeated on the same arguments).
   Targets: compile ≤ ``compile_limit`` s and ≥ 60 % of the peak (the issue's, for matmul-dominated rules),
   PASS/FAIL per row. A rule that cannot train an
   architecture is listed as ``n/a: <its error>``. Rules that need their own architecture or settings get them
   from :data:`ARCH_TOKENS` / :data:`RULE_TOKENS` (printed with the table); ``rule_args=`` adds or overrides.
2. ``scaling=true``: seeds per program. A ``scaling_steps``-step training chunk (the lab's own ``lax.scan``, data
   generation included) with 1, 2, 4, 8, 16 vmapped seeds on the MLP ``scaling_hidden=256,256``; time per
   seed-step relative to 1 seed (= relative to running the seeds one after the other). Target: ≤ 0.5 at 8 seeds.
3. ``memory=true``: peak memory of one training step of FF, PEPITA and SoftHebb vs backprop on a deep MLP
   (``memory_hidden`` = 8×2000, ``memory_batch=2000``), from the compiled program (nothing is run).
4. ``hebbian=true``: one Hebbian epoch of SoftHebb's conv block (``rule=softhebb arch=softhebb_cnn
   arch.channels=[96] rule.hebbian_batch=10``) over ``hebbian_images=60000`` 28×28 images — uniform random
   pixels and labels, which is enough for timing (the rule's work does not depend on the values) — as one jitted
   ``lax.scan`` of the lab's training step: wall time, FLOPs (counted step × steps), GFLOP/s, % of the peak.
5. ``generator=true``: curriculum generator samples/s (``localrules.tasks.nursery.bench``: S1 single frames and
   two-frame copies, S6 clips), fresh output buffer and donated (in-place) buffer.

``readme=README.md`` replaces the block between ``<!-- bench:begin -->`` and ``<!-- bench:end -->`` in that file
with the printed report (machine, backend, versions, date and the command); ``json=FILE`` writes every number.

Usage::

    python -m localrules.bench                                    # every rule, MLP and CNN rows
    python -m localrules.bench rules=backprop,pepita arch=mlp repeats=30
    python -m localrules.bench scaling=true memory=true hebbian=true generator=true readme=README.md json=b.json
    python -m localrules.bench rules=ff,pepita rule_args="ff:rule.negatives=uniform;*:task.noise=0.1"

``rule_args``: ``rule:token token;rule2:token`` (tokens separated by spaces; ``*`` = every rule); a rule's own
``arch=`` there replaces its row's architecture and drops the row's ``arch.*`` tokens. ``arch=``: the rows to run,
``mlp`` and/or ``cnn`` (the standard ones above) or any registered architecture name (used for every rule);
``table=false`` skips the per-rule tables (e.g. ``table=false hebbian=true`` for the Hebbian epoch alone).
Timings are medians on whatever machine runs it: on a shared, loaded machine they are upper bounds.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import os
import shlex
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from localrules import cli, cost
from localrules import rules as registry

BEGIN = "<!-- bench:begin -->"
END = "<!-- bench:end -->"

DEFAULTS = {
    "rules": "", "arch": "mlp,cnn", "table": "true", "hidden": "1000,1000", "channels": "32,64", "size": "28",
    "batch": "100", "repeats": "20", "matmul_n": "1024", "rule_args": "", "compile_limit": "10",
    "scaling": "false", "scaling_hidden": "256,256", "scaling_rules": "", "scaling_seeds": "1,2,4,8,16",
    "scaling_steps": "10",
    "memory": "false", "memory_hidden": ",".join(["2000"] * 8), "memory_batch": "2000",
    "memory_rules": "forward_forward,pepita,softhebb",
    "hebbian": "false", "hebbian_images": "60000", "hebbian_batch": "10", "hebbian_channels": "96",
    "hebbian_lab_batch": "100",
    "generator": "false", "generator_batch": "16384", "generator_stages": "S1,S6", "generator_reps": "9",
    "json": "", "readme": "",
}

#: Architecture a rule needs on a standard row instead of the row's own (the row's ``arch.*`` tokens still apply).
ARCH_TOKENS = {
    "mlp": {"forward_forward": "ff_mlp",  # label units + per-layer normalisation (ffcode's network)
            "softhebb": "softhebb_mlp",  # Triangle/soft-WTA Hebbian layers; on a ReLU MLP the anti-Hebbian units die
            "counter_current": "ccl_mlp"},  # its default: bias-free ELU MLP (Kao & Hariharan)
    "cnn": {},  # every rule that can train a CNN trains the lab's small CNN itself
}
#: Settings a rule needs on every row (the lab's comparison presets use the same).
RULE_TOKENS = {
    "meta_learned": ("rule.theta=fmnist_mg",),  # the shipped meta-trained θ (θ₀ would be plain DFA)
    "compose": ("rule.hidden_rule=direct_feedback_alignment", "rule.head_rule=backprop"),  # DFA hidden + BP head
}
#: Tokens of every benched run: the procedural task (no files), no timing or checkpoints inside build.
COMMON = ("task=prototypes", "task.test_size=200", "timing_steps=0", "progress=false", "checkpoint=false")


class BenchError(ValueError):
    """A bad bench command line: one line naming the problem and the fix."""


# ------------------------------------------------------------------------------------------------ options


def _ints(opts: dict, key: str) -> list[int]:
    raw = opts[key].strip().strip("[]")
    try:
        vals = [int(v) for v in raw.split(",") if v.strip()]
    except ValueError:
        raise BenchError(f"{key}={opts[key]!r}: give comma-separated integers, e.g. {key}={DEFAULTS[key]}") from None
    if not vals or any(v <= 0 for v in vals):
        raise BenchError(f"{key}={opts[key]!r}: give positive integers, e.g. {key}={DEFAULTS[key]}")
    return vals


def _int(opts: dict, key: str) -> int:
    try:
        v = int(opts[key].strip())
    except ValueError:
        v = 0
    if v <= 0:
        raise BenchError(f"{key}={opts[key]!r}: give one positive integer, e.g. {key}={DEFAULTS[key]}")
    return v


def _bool(opts: dict, key: str) -> bool:
    v = opts[key].strip().lower()
    if v not in ("true", "false", "1", "0", "yes", "no"):
        raise BenchError(f"{key}={opts[key]!r}: write {key}=true or {key}=false")
    return v in ("true", "1", "yes")


def _canonical(name: str, key: str) -> str:
    try:
        return registry.resolve(name).name
    except KeyError as e:
        raise BenchError(f"{key}: {e.args[0]}") from None


def _rule_list(opts: dict, key: str, default: list[str]) -> list[str]:
    names = [r.strip() for r in opts[key].split(",") if r.strip()]
    return [_canonical(r, key) for r in names] if names else list(default)


def parse_rule_args(text: str) -> dict[str, list[str]]:
    """``"ff:rule.a=1 rule.b=2;*:task.noise=0.1"`` → ``{"forward_forward": [...], "*": [...]}``."""
    out: dict[str, list[str]] = {}
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        name, colon, toks = part.partition(":")
        if not colon or not name.strip():
            raise BenchError(f"rule_args part {part!r}: write <rule>:<key=value> ... (parts separated by ';'), e.g. "
                             "rule_args=\"pepita:rule.dropout=0;forward_forward:rule.negatives=uniform\"")
        name = name.strip()
        name = "*" if name == "*" else _canonical(name, "rule_args")
        for t in toks.split():
            if "=" not in t:
                raise BenchError(f"rule_args token {t!r} of {name}: write key=value, e.g. rule.lr=0.01")
        out.setdefault(name, []).extend(toks.split())
    return out


def row_tokens(rule: str, row: str, opts: dict, user: dict[str, list[str]], hidden: str | None = None,
               batch: int | None = None) -> tuple[list[str], list[str]]:
    """(all tokens of ``rule`` on ``row``, the per-rule extras shown in the table)."""
    batch = int(opts["batch"]) if batch is None else batch
    hidden = opts["hidden"] if hidden is None else hidden
    if row == "mlp":
        arch, fields = "mlp", [f"arch.hidden=[{hidden.strip('[]')}]"]
    elif row == "cnn":
        arch, fields = "cnn", [f"arch.channels=[{opts['channels'].strip('[]')}]"]
    else:
        arch, fields = row, []
    extra = []
    own = ARCH_TOKENS.get(row, {}).get(rule)
    if own:
        extra.append(f"arch={own}")
    extra += list(RULE_TOKENS.get(rule, ()))
    mine = user.get("*", []) + user.get(rule, [])
    if any(t.split("=", 1)[0] == "arch" for t in mine):  # the user's own architecture: the row's fields may not fit
        fields = []
        extra = [t for t in extra if not t.startswith("arch=")]
    extra += mine
    arch_tok = [] if any(t.startswith("arch=") for t in extra) else [f"arch={arch}"]
    base = [f"rule={rule}", *COMMON, f"task.size={opts['size']}", f"batch_size={batch}",
            f"samples={batch * 10}", *arch_tok, *fields]
    return base + extra, extra


def make_config(tokens: list[str]):
    from localrules.config import RunConfig

    return cli.apply_overrides(RunConfig(), [cli.split_token(t) for t in tokens])


def _first_line(e: BaseException, n: int = 140) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    msg = msg.replace("|", "/")
    return (msg[: n - 1] + "…") if len(msg) > n else msg


# ------------------------------------------------------------------------------------------------ measurements


def bench_rule(tokens: list[str], repeats: int, matmul_n: int = 1024) -> dict:
    """Compile, count, time and size one update step of the run ``tokens`` describe."""
    from localrules.run import build

    b = build(make_config(tokens))
    data = b.task.data
    args = cost.step_args(b.program, 0, data)
    compiled, lower_s, xla_s = cost.compile_step(b.program, args)
    c = cost.compiled_cost(compiled)
    counted = b.counted is not b.program
    if counted:  # inner loops unrolled: XLA counts a loop body once
        cc, _, _ = cost.compile_step(b.counted, cost.step_args(b.counted, 0, data))
        c = {**c, **{k: v for k, v in cost.compiled_cost(cc).items() if k in ("flops", "bytes", "transcendentals")}}
    scanned = (cost.compile_scanned_step(b.program, args, cost.SCAN_STEPS), cost.SCAN_STEPS)
    t = cost.time_against_peak(compiled, args, repeats, matmul_n, scanned=scanned)
    mem = cost.memory_cost(b.program, 0, data, args=args)
    gflops = c["flops"] / (t["scan_step_ms"] * 1e-3) / 1e9
    return {"arch": b.arch.name, "flops": c["flops"], "bytes": c["bytes"], "counted": counted,
            "compile_s": lower_s + xla_s, "lower_s": lower_s, "xla_compile_s": xla_s,
            "step_ms": t["scan_step_ms"], "step_ms_all": t["scan_step_ms_all"], "call_ms": t["step_ms"],
            "call_ms_all": t["step_ms_all"], "gflops": gflops, "peak": t["peak"],
            "pct_peak": 100 * gflops / t["peak"]["gflops"],
            "peak_bytes": mem.get("peak_bytes"), "temp_bytes": mem.get("temp_bytes"),
            "memory_plan": mem.get("memory_plan")}


def seeds_scaling(tokens: list[str], counts, steps: int, repeats: int) -> list[dict]:
    """Time per seed-step of a ``steps``-step training chunk with S vmapped seeds, relative to 1 seed.

    Every seed count's program is compiled and warmed up first; the timed calls then go round-robin over the
    counts, so a machine whose load drifts affects every count alike."""
    from localrules.run import build

    b = build(make_config(tokens))
    progs = []
    for s in counts:
        seeds = jnp.arange(s, dtype=jnp.int32)
        state = jax.jit(jax.vmap(b.program.init))(seeds)
        t0 = time.perf_counter()
        chunk = jax.jit(jax.vmap(b.program.chunk, in_axes=(0, None, 0, None)), static_argnums=3).lower(
            state, b.task.data, seeds, steps).compile()
        compile_s = time.perf_counter() - t0
        jax.block_until_ready(chunk(state, b.task.data, seeds))
        progs.append((s, chunk, (state, b.task.data, seeds), compile_s, []))
    for _ in range(max(3, repeats // 4)):
        for s, chunk, args, _, times in progs:
            t0 = time.perf_counter()
            jax.block_until_ready(chunk(*args))
            times.append(time.perf_counter() - t0)
    out = [{"seeds": s, "ms_per_seed_step": statistics.median(times) / (steps * s) * 1e3, "compile_s": c,
            "chunk_ms_all": [t * 1e3 for t in times]} for s, _, _, c, times in progs]
    base = out[0]["ms_per_seed_step"]
    for r in out:
        r["ratio_vs_1"] = r["ms_per_seed_step"] / base
    return out


def matmul_seeds_scaling(dims: list[int], batch: int, counts, steps: int, repeats: int) -> list[dict]:
    """The ceiling of the seeds table: time per seed-step of backprop's matmuls alone (per layer the forward
    ``x @ W``, the weight gradient ``xᵀ @ δ`` and, above the first layer, the input gradient ``δ @ Wᵀ``) on an MLP of
    widths ``dims`` at ``batch``, with S vmapped seeds (batched matmuls, one weight set per seed) in a ``steps``-step
    ``lax.scan``, relative to 1 seed. No rule's step can batch better than its matmuls do: the elementwise and
    optimizer work around them is memory-bound and scales with S."""
    def one_seed(ws, x):
        def body(c, _):
            h, acc = x + c, 0.0
            for i, w in enumerate(ws):
                y = h @ w
                acc = acc + jnp.sum(h.T @ y)  # weight-gradient shape (D_in, D_out)
                if i:
                    acc = acc + jnp.sum(y @ w.T)  # input-gradient shape (B, D_in)
                h = jnp.tanh(y) if i < len(ws) - 1 else y
            return c + 1e-30 * acc, None

        return jax.lax.scan(body, jnp.zeros((), jnp.float32), None, length=steps)[0]

    progs = []
    for s in counts:
        keys = jax.random.split(jax.random.PRNGKey(0), len(dims))
        ws = [jax.random.normal(k, (s, a, b)) / a ** 0.5 for k, a, b in zip(keys, dims[:-1], dims[1:])]
        x = jax.random.normal(keys[-1], (s, batch, dims[0]))
        f = jax.jit(jax.vmap(one_seed)).lower(ws, x).compile()
        jax.block_until_ready(f(ws, x))
        progs.append((s, f, (ws, x), []))
    for _ in range(max(3, repeats // 4)):
        for s, f, args, times in progs:
            t0 = time.perf_counter()
            jax.block_until_ready(f(*args))
            times.append(time.perf_counter() - t0)
    flops = sum(2 * batch * a * b * (3 if i else 2) for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])))
    out = [{"seeds": s, "ms_per_seed_step": statistics.median(t) / (steps * s) * 1e3} for s, _, _, t in progs]
    for r in out:
        r["ratio_vs_1"] = r["ms_per_seed_step"] / out[0]["ms_per_seed_step"]
        r["gflops"] = flops / (r["ms_per_seed_step"] * 1e-3) / 1e9
    return out


def hebbian_epoch(opts: dict, matmul_n: int = 1024) -> dict:
    """One Hebbian epoch of SoftHebb's conv block over random 28×28 images, as one jitted scan of training steps."""
    from localrules.rules.softhebb import micro_batch
    from localrules.run import build

    images, lab_batch = _int(opts, "hebbian_images"), _int(opts, "hebbian_lab_batch")
    steps = images // lab_batch
    if steps < 1:
        raise BenchError(f"hebbian_images={images} is less than one lab batch (hebbian_lab_batch={lab_batch})")
    toks = ["rule=softhebb", "arch=softhebb_cnn", f"arch.channels=[{_int(opts, 'hebbian_channels')}]",
            f"rule.hebbian_batch={_int(opts, 'hebbian_batch')}", f"rule.hebbian_steps={steps}",
            *COMMON, f"task.size={opts['size']}", f"batch_size={lab_batch}", f"samples={steps * lab_batch}"]
    b = build(make_config(toks))
    p = b.program
    state = jax.jit(p.init)(0)
    ex = jax.eval_shape(p.sample, b.task.data, 0, jnp.zeros((), jnp.int32))
    rng = np.random.default_rng(1234)  # host draws: nothing to compile, and the values do not matter for timing
    xs = jnp.asarray(rng.random((steps, *ex.x.shape), np.float32), ex.x.dtype)
    ys = jnp.asarray(rng.integers(0, int(b.task.heads.sizes[0]), (steps, *ex.y.shape)), ex.y.dtype)
    from localrules.core import Batch

    def epoch(params, opt_state, rule_state, xs, ys):
        def body(carry, inp):
            x, y, t = inp
            params, opt_state, rule_state, _ = p.step(*carry, Batch(x, y), jax.random.fold_in(jax.random.PRNGKey(0), t))
            return (params, opt_state, rule_state), None

        carry, _ = jax.lax.scan(body, (params, opt_state, rule_state), (xs, ys, jnp.arange(steps)))
        return carry

    args = (state.params, state.opt_state, state.rule_state, xs, ys)
    t0 = time.perf_counter()
    compiled = jax.jit(epoch).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    peak_before = cost.matmul_peak(matmul_n, 10)
    t0 = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    wall = time.perf_counter() - t0
    peak_after = cost.matmul_peak(matmul_n, 10)
    if not all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(out[0])):
        raise RuntimeError("the Hebbian epoch produced non-finite weights")
    cc, _, _ = cost.compile_step(b.counted, cost.step_args(b.counted, 0, b.task.data))
    flops_step = cost.compiled_cost(cc)["flops"]
    return {"tokens": toks, "arch": b.arch.name, "images": steps * lab_batch, "steps": steps,
            "lab_batch": lab_batch, "micro_batch": micro_batch(_int(opts, "hebbian_batch"), lab_batch),
            "compile_s": compile_s, "wall_s": wall, "flops_per_step": flops_step, "flops": flops_step * steps,
            "gflops": flops_step * steps / wall / 1e9, "images_per_s": steps * lab_batch / wall,
            "peak_before": peak_before, "peak_after": peak_after,
            "pct_peak": 100 * flops_step * steps / wall / 1e9 / ((peak_before["gflops"] + peak_after["gflops"]) / 2)}


def _generator_stages(opts: dict) -> tuple[str, ...]:
    from localrules.tasks import nursery

    stages = tuple(s.strip() for s in opts["generator_stages"].split(",") if s.strip())
    unknown = [s for s in stages if s not in nursery.STAGES]
    if unknown or not stages:
        raise BenchError(f"generator_stages={opts['generator_stages']!r}: choose from {', '.join(nursery.STAGES)}, "
                         "e.g. generator_stages=S1,S6")
    return stages


def generator_rates(opts: dict) -> list[dict]:
    """Curriculum generator throughput (``nursery.bench``: fresh and donated output buffers)."""
    from localrules.tasks import nursery

    stages = _generator_stages(opts)
    with contextlib.redirect_stdout(io.StringIO()):
        return nursery.bench(_int(opts, "generator_batch"), _int(opts, "generator_reps"), stages, inplace=True)


# ------------------------------------------------------------------------------------------------ report


class Out:
    """Printed lines, kept for the README block."""

    def __init__(self):
        self.lines: list[str] = []

    def __call__(self, line: str = ""):
        print(line, flush=True)
        self.lines.append(line)


def _mb(x) -> str:
    return "–" if x is None else f"{x / 2**20:,.1f}"


def check_readme(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise BenchError(f"readme={path}: cannot read it ({e.strerror})") from None
    b, e = text.find(BEGIN), text.find(END)
    if b < 0 or e < 0 or e < b:
        raise BenchError(f"readme={path} has no '{BEGIN}' … '{END}' block: add both markers, each on its own line, "
                         "where the bench table should go")
    if text.count(BEGIN) != 1 or text.count(END) != 1:
        raise BenchError(f"readme={path} has more than one bench block; keep exactly one pair of markers")
    return text


def replace_block(text: str, block: str) -> str:
    from localrules import report

    return report.replace_block(text, block, begin=BEGIN, end=END, what="bench")


def _validate(opts: dict):
    for k in ("batch", "repeats", "matmul_n", "size", "memory_batch", "scaling_steps", "hebbian_images",
              "hebbian_batch", "hebbian_channels", "hebbian_lab_batch", "generator_batch", "generator_reps"):
        _int(opts, k)
    for k in ("hidden", "channels", "scaling_hidden", "scaling_seeds", "memory_hidden"):
        _ints(opts, k)
    for k in ("table", "scaling", "memory", "hebbian", "generator"):
        _bool(opts, k)
    _generator_stages(opts)
    try:
        if float(opts["compile_limit"]) <= 0:
            raise ValueError
    except ValueError:
        raise BenchError(f"compile_limit={opts['compile_limit']!r}: give seconds > 0, e.g. compile_limit=10") from None


def run(argv: list[str]) -> dict:
    opts = dict(DEFAULTS)
    for tok in argv:
        k, v = cli.split_token(tok)
        if k not in opts:
            raise BenchError(f"unknown option {k!r}; options: {', '.join(DEFAULTS)}")
        opts[k] = v
    _validate(opts)
    if opts["readme"]:
        check_readme(opts["readme"])  # a bad readme= fails now, before the measurements
    all_rules = ["backprop"] + [r for r in sorted(registry.RULES) if r != "backprop"]
    rules = _rule_list(opts, "rules", all_rules)
    user = parse_rule_args(opts["rule_args"])
    rows = [a.strip() for a in opts["arch"].split(",") if a.strip()] if _bool(opts, "table") else []
    from localrules import architectures

    for a in rows:
        if a not in architectures.ARCHS:
            raise BenchError(f"arch={a!r}: not a registered architecture; choose from {', '.join(architectures.ARCHS)}")
    batch, repeats, limit = _int(opts, "batch"), _int(opts, "repeats"), float(opts["compile_limit"])
    # every configuration is checked before anything is compiled: a typo fails in a second, not after an hour
    plan = []
    for row in rows:
        for r in rules:
            toks, extra = row_tokens(r, row, opts, user)
            make_config(toks)
            plan.append((row, r, toks, extra))
    sections = {k: _bool(opts, k) for k in ("scaling", "memory", "hebbian", "generator")}
    scaling_rules = _rule_list(opts, "scaling_rules", rules)
    memory_rules = ["backprop"] + [r for r in _rule_list(opts, "memory_rules", []) if r != "backprop"]
    for r in (scaling_rules if sections["scaling"] else []):
        make_config(row_tokens(r, "mlp", opts, user, hidden=opts["scaling_hidden"])[0])
    for r in (memory_rules if sections["memory"] else []):
        make_config(row_tokens(r, "mlp", opts, user, hidden=opts["memory_hidden"],
                               batch=_int(opts, "memory_batch"))[0])

    t_start = time.perf_counter()
    out = Out()
    command = "python -m localrules.bench" + ("" if not argv else " " + shlex.join(argv))
    plat = cost.platform()
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    peak = cost.matmul_peak(_int(opts, "matmul_n"), repeats)
    report = {"command": command, "date": date, "platform": plat, "versions": cost.versions(), "options": opts,
              "load_avg_start": os.getloadavg()[0], "matmul_peak": peak, "rules": [], "scaling": {}, "memory": [],
              "hebbian": None, "generator": []}
    out(f"<!-- generated by `{command}`; edit the bench, not this block -->")
    out(f"Machine: {plat['backend']}: {plat['device']} (host CPU {plat['cpu_model']}, {plat['cpu_cores']} cores); "
        f"jax {jax.__version__}, jaxlib {report['versions'].get('jaxlib')}; {date}; load average "
        f"{report['load_avg_start']:.2f} at start.")
    out(f"Command: `{command}`")
    out(f"Matmul peak: {peak['gflops']:.1f} GFLOP/s at the start (float32 {peak['n']}³, median of {repeats}, same "
        "process); each row's % peak is against the matmul timed interleaved with its own steps (matmul GFLOP/s), "
        "so a changing load affects both alike.")
    out()
    for row in rows:
        desc = {"mlp": f"standard MLP {opts['hidden']}", "cnn": f"small CNN arch=cnn channels={opts['channels']}"}
        out(f"**{desc.get(row, 'arch=' + row)}**, batch {batch}, {opts['size']}×{opts['size']} inputs: one update "
            f"step (rule + optimizer). step ms: per step of a {cost.SCAN_STEPS}-step `lax.scan` of the step on one "
            "batch, as training runs it (GFLOP/s and % peak use it); call ms: one jitted call of the step alone. "
            "† FLOPs counted on the rule's `counted` program (inner loops unrolled).")
        out()
        out("| rule | arch | extra tokens | compile s | ≤ %g s | step ms | call ms | MFLOP/step | GFLOP/s "
            "| matmul GFLOP/s | %% peak | ≥ 60 %% | peak MB |" % limit)
        out("|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---|---:|")
        for prow, r, toks, extra in plan:
            if prow != row:
                continue
            shown = " ".join(f"`{t}`" for t in extra) or "–"
            try:
                res = bench_rule(toks, repeats, _int(opts, "matmul_n"))
            except Exception as e:  # a rule that cannot train this architecture is listed with its reason
                report["rules"].append({"rule": r, "row": row, "tokens": toks, "na": _first_line(e)})
                out(f"| {r} | – | {shown} | n/a: {_first_line(e)} | | | | | | | | | |")
                continue
            res.update(rule=r, row=row, tokens=toks, compile_ok=res["compile_s"] <= limit)
            res["peak_ok"] = res["pct_peak"] >= 60.0
            report["rules"].append(res)
            out(f"| {r} | {res['arch']} | {shown} | {res['compile_s']:.2f} | {'PASS' if res['compile_ok'] else 'FAIL'} "
                f"| {res['step_ms']:.2f} | {res['call_ms']:.2f} | {res['flops'] / 1e6:,.1f}{' †' if res['counted'] else ''} "
                f"| {res['gflops']:.1f} | {res['peak']['gflops']:.1f} | {res['pct_peak']:.1f} "
                f"| {'PASS' if res['peak_ok'] else 'FAIL'} "
                f"| {_mb(res['peak_bytes'])} |")
        out()
    plans = {r.get("memory_plan") for r in report["rules"] if r.get("memory_plan")}
    if plans:
        out(f"Peak MB: one compiled training step as the lab runs it ({', '.join(sorted(plans))}): parameters, "
            "optimizer and rule state, batch and temporaries (activations, pseudo-gradients, workspaces).")
        out()

    if sections["scaling"]:
        counts, steps = _ints(opts, "scaling_seeds"), _int(opts, "scaling_steps")
        target = 8 if 8 in counts else max(counts)
        out(f"**Seeds per program**: MLP {opts['scaling_hidden']}, batch {batch}, a {steps}-step training chunk "
            f"with S vmapped seeds; time per seed-step relative to 1 seed (= S sequential runs). Target: ≤ 0.5 "
            f"at {target} seeds.")
        out()
        out("| rule | " + " | ".join(f"{s}" for s in counts) + f" | ms/seed-step at 1 | ≤ 0.5 at {target} |")
        out("|---|" + "---:|" * len(counts) + "---:|---|")
        for r in scaling_rules:
            toks, _ = row_tokens(r, "mlp", opts, user, hidden=opts["scaling_hidden"])
            try:
                rs = seeds_scaling(toks, counts, steps, repeats)
            except Exception as e:
                report["scaling"][r] = {"na": _first_line(e)}
                out(f"| {r} | n/a: {_first_line(e)} |" + " |" * (len(counts) + 1))
                continue
            at = next(x for x in rs if x["seeds"] == target)["ratio_vs_1"]
            report["scaling"][r] = {"tokens": toks, "rows": rs, "ok": at <= 0.5}
            out(f"| {r} | " + " | ".join(f"{x['ratio_vs_1']:.2f}" for x in rs) +
                f" | {rs[0]['ms_per_seed_step']:.3f} | {'PASS' if at <= 0.5 else 'FAIL'} |")
        dims = [int(opts["size"]) ** 2, *_ints(opts, "scaling_hidden"), 10]
        rs = matmul_seeds_scaling(dims, batch, counts, steps, repeats)
        report["scaling"]["_matmuls_only"] = {"dims": dims, "rows": rs}
        out("| *ceiling: backprop's matmuls alone* | " + " | ".join(f"{x['ratio_vs_1']:.2f}" for x in rs) +
            f" | {rs[0]['ms_per_seed_step']:.3f} | – |")
        out()
        peak_now = cost.matmul_peak(_int(opts, "matmul_n"), repeats)["gflops"]
        out("The ceiling row times only the matmuls of a backprop step on the same widths and batch (forward, weight "
            "and input gradients; one weight set per seed, so S seeds are S-batched matmuls): how much cheaper per "
            f"seed the machine's matmul kernels get when batched. At 1 seed they already run at {rs[0]['gflops']:.0f} "
            f"GFLOP/s ({100 * rs[0]['gflops'] / peak_now:.0f} % of the {peak_now:.0f} GFLOP/s matmul peak measured "
            f"right after), at {target} seeds at {next(x for x in rs if x['seeds'] == target)['gflops']:.0f}. A "
            "ratio of 0.5 would need batched kernels twice as fast per seed as single ones. A rule's step can do "
            "somewhat better than this row only through the per-op dispatch it amortises; its elementwise and "
            "optimizer work is memory-bound and scales with S.")
        out()

    if sections["memory"]:
        mb = _int(opts, "memory_batch")
        out(f"**Memory**: peak of one compiled training step, MLP {opts['memory_hidden']}, batch {mb} (compiled, "
            "not run; state donated as in the lab's training chunk). State = parameters, optimizer and rule state "
            "and the batch; temporaries = activations kept for the update, pseudo-gradients, workspaces.")
        out()
        out("| rule | arch | peak MB | state MB | temporaries MB | vs backprop |")
        out("|---|---|---:|---:|---:|---:|")
        bp_peak = None
        from localrules.run import build

        for r in memory_rules:
            toks, _ = row_tokens(r, "mlp", opts, user, hidden=opts["memory_hidden"], batch=mb)
            try:
                b = build(make_config(toks))
                m = cost.memory_cost(b.program, 0, b.task.data)
            except Exception as e:
                report["memory"].append({"rule": r, "na": _first_line(e)})
                out(f"| {r} | – | n/a: {_first_line(e)} | | | |")
                continue
            if r == "backprop":
                bp_peak = m["peak_bytes"]
            ratio = m["peak_bytes"] / bp_peak if bp_peak else None
            report["memory"].append({"rule": r, "arch": b.arch.name, "tokens": toks, **m, "ratio_vs_backprop": ratio})
            out(f"| {r} | {b.arch.name} | {_mb(m['peak_bytes'])} | {_mb(m.get('argument_bytes'))} | "
                f"{_mb(m.get('temp_bytes'))} | "
                f"{'–' if ratio is None else f'{ratio:.2f}×'} |")
        out()

    if sections["hebbian"]:
        try:
            h = hebbian_epoch(opts, _int(opts, "matmul_n"))
        except BenchError:
            raise
        except Exception as e:
            report["hebbian"] = {"na": _first_line(e)}
            out(f"**Hebbian epoch**: n/a: {_first_line(e)}")
        else:
            report["hebbian"] = h
            steps = f"{h['steps']} training step" + ("s" if h["steps"] != 1 else "")
            side = f"{opts['size']}×{opts['size']}"
            out(f"**Hebbian epoch** (SoftHebb conv block, {h['arch']}, `{' '.join(h['tokens'][:5])}`): "
                f"{h['images']:,} random {side} images (uniform pixels and labels: timing only), lab batch "
                f"{h['lab_batch']} = {h['lab_batch'] // h['micro_batch']} Hebbian micro-steps of {h['micro_batch']}, "
                f"one jitted scan of {steps}: **{h['wall_s']:.2f} s** ({h['images_per_s']:,.0f} images/s; "
                f"compile {h['compile_s']:.1f} s), {h['flops'] / 1e9:,.2f} GFLOP ({h['flops_per_step'] / 1e6:,.1f} "
                f"MFLOP/step × {h['steps']}, micro-steps unrolled when counted), {h['gflops']:.1f} GFLOP/s = "
                f"{h['pct_peak']:.1f} % of the matmul peak measured just before and after it "
                f"({h['peak_before']['gflops']:.1f} / {h['peak_after']['gflops']:.1f} GFLOP/s).")
        out()

    if sections["generator"]:
        try:
            rows_g = generator_rates(opts)
        except BenchError:
            raise
        except Exception as e:  # the tables above are kept
            rows_g = []
            out(f"**Curriculum generator**: n/a: {_first_line(e)}")
        report["generator"] = rows_g
        if rows_g:
            out(f"**Curriculum generator** (`localrules.tasks.nursery`, B = {opts['generator_batch']}, median of "
                f"{opts['generator_reps']} jitted calls): samples/s with a fresh output buffer and with the previous "
                "batch's buffer donated (as inside the training scan).")
            out()
            out("| stage | frames | fresh samples/s | in-place samples/s |")
            out("|---|---:|---:|---:|")
            for g in rows_g:
                ip = f"{g['inplace']:,.0f}" if "inplace" in g else "–"
                out(f"| {g['stage']} | {g['frames']} | {g['fresh']:,.0f} | {ip} |")
            out()

    peak_end = cost.matmul_peak(_int(opts, "matmul_n"), repeats)
    report["matmul_peak_end"] = peak_end
    report["load_avg_end"] = os.getloadavg()[0]
    report["wall_s"] = time.perf_counter() - t_start
    out(f"Matmul peak again at the end: {peak_end['gflops']:.1f} GFLOP/s (load average {report['load_avg_end']:.2f}); "
        f"bench wall time {report['wall_s']:.0f} s.")
    if opts["json"]:
        with open(opts["json"], "w", encoding="utf-8") as f:
            json.dump(cost.to_builtin(report), f, indent=1)
    if opts["readme"]:
        # read again: the file may have been edited during the bench (checked at the start so that a bad readme=
        # fails before the measurements, not after)
        readme_text = check_readme(opts["readme"])
        with open(opts["readme"], "w", encoding="utf-8") as f:
            f.write(replace_block(readme_text, "\n".join(out.lines)))
        print(f"{opts['readme']}: bench block regenerated")
    return report


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help", "help") for a in argv):
        print(__doc__)
        print("options (defaults): " + " ".join(f"{k}={v}" for k, v in DEFAULTS.items()))
        return 0
    try:
        run(argv)
    except (BenchError, cli.CLIError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
