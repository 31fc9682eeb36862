"""``python -m localrules.sweep [key=value ...] [sweep=<file or preset>] [--help]``: run one config or a grid.

With no arguments it runs the embedded default (backprop on the default task). A sweep file (TOML, in
``sweeps/`` or any path) has an optional ``name``, a ``[base]`` table of overrides, a ``[grid]`` table whose list
values form a cartesian product and/or ``[[runs]]`` tables of explicit overrides; tokens on the command line
override every run::

    name = "fa_vs_bp"
    [base]
    task = "prototypes"
    samples = 20000
    [grid]
    rule = ["backprop", "feedback_alignment", "direct_feedback_alignment"]
    "optimizer.lr" = [1e-3, 3e-3]

Outputs, in ``<out>/<name>/``: ``results.jsonl`` (one complete JSON record per finished run), one directory per
run with TensorBoard event files per seed and orbax checkpoints, and the HParams experiment + comparison layout at
the root (``tensorboard --logdir <out>/<name>``). A killed sweep, started again with the same command, skips the
runs already in ``results.jsonl`` and resumes unfinished ones from their last checkpoint. Two processes on the same
sweep directory are refused (a lock file).
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import hashlib
import itertools
import json
import os
import sys
import time
from typing import Any

from localrules.cli import CLIError, apply_overrides, render_help, split_token
from localrules.config import RunConfig

SWEEPS_DIR = os.path.dirname(os.path.abspath(__import__("localrules.sweeps", fromlist=["_"]).__file__))
_NON_IDENTITY = ("name", "out", "progress", "timing_steps", "checkpoint")


def sweep_path(ref: str) -> str:
    """A sweep file from a path, or a preset name looked up in the installed ``sweeps/``."""
    cands = [ref, os.path.join(SWEEPS_DIR, ref), os.path.join(SWEEPS_DIR, ref + ".toml")]
    for c in cands:
        if os.path.isfile(c):
            return c
    names = sorted(f[:-5] for f in os.listdir(SWEEPS_DIR) if f.endswith(".toml")) if os.path.isdir(SWEEPS_DIR) else []
    import difflib

    close = difflib.get_close_matches(os.path.basename(ref).removesuffix(".toml"), names, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise CLIError(f"sweep file {ref!r} not found (looked at {ref} and in {SWEEPS_DIR}).{hint} "
                   f"Presets: {', '.join(names) or 'none'}")


def read_sweep(path: str) -> tuple[str | None, list[list[tuple[str, Any]]]]:
    """Parse a sweep file into (name, list of override lists). Errors are one-line CLIErrors."""
    import tomllib

    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise CLIError(f"sweep file {path} is not valid TOML ({e}); fix the syntax") from None
    except OSError as e:
        raise CLIError(f"cannot read sweep file {path}: {e.strerror}") from None
    unknown = set(doc) - {"name", "base", "grid", "runs", "description", "paper", "expected", "runtime"}
    if unknown:
        raise CLIError(f"sweep file {path}: unknown top-level keys {sorted(unknown)}; "
                       "use name, description, [base], [grid] and [[runs]]")
    if not any(k in doc for k in ("base", "grid", "runs")):
        raise CLIError(f"sweep file {path} defines no runs: add a [base] table, a [grid] table or [[runs]] entries")
    base = list(_flatten(doc.get("base", {})).items())
    grid = _flatten(doc.get("grid", {}))
    for k, v in grid.items():
        if not isinstance(v, list):
            raise CLIError(f"sweep file {path}: grid value {k} must be a list, e.g. {k} = [{v!r}]")
        if not v:
            raise CLIError(f"sweep file {path}: grid value {k} is an empty list, so the sweep has zero runs")
    combos = [list(zip(grid, vals)) for vals in itertools.product(*grid.values())] if grid else [[]]
    explicit = doc.get("runs")
    if explicit is not None:
        if not isinstance(explicit, list) or not explicit:
            raise CLIError(f"sweep file {path}: [[runs]] is empty, so the sweep has zero runs")
        combos = [c + list(_flatten(r).items()) for r in explicit for c in combos]
    return doc.get("name"), [base + c for c in combos]


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def parse(argv: list[str]) -> tuple[list[RunConfig], str | None]:
    """Command-line tokens → list of run configs (one unless a sweep file makes a grid)."""
    items, sweep_ref = [], None
    for tok in argv:
        k, v = split_token(tok)
        if k in ("sweep", "preset"):
            sweep_ref = v
        else:
            items.append((k, v))
    name, combos = (None, [[]])
    if sweep_ref:
        name, combos = read_sweep(sweep_path(sweep_ref))
    cfgs = []
    for combo in combos:
        over = list(combo) + items
        if name and not any(k == "name" for k, _ in over):
            over = [("name", name)] + over
        cfgs.append(apply_overrides(RunConfig(), over))
    # identical configs in a grid (e.g. an overridden axis) run once
    seen, unique = set(), []
    for c in cfgs:
        rid = run_id(c)
        if rid not in seen:
            seen.add(rid)
            unique.append(c)
    return unique, sweep_ref


def run_id(cfg: RunConfig) -> str:
    from localrules.run import config_dict

    d = config_dict(cfg)
    ident = {k: v for k, v in d.items() if k not in _NON_IDENTITY}
    h = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:10]
    return f"{d['rule']['_name']}-{d['task']['_name']}-{d['arch']['_name']}-{h}"


class SweepLock:
    """An exclusive ``flock`` on ``<sweep_dir>/.lock``: a second process on the same sweep is refused."""

    def __init__(self, sweep_dir: str):
        self.path = os.path.join(sweep_dir, ".lock")
        self.fd = None

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                try:
                    other = os.read(self.fd, 64).decode().strip()
                except OSError:
                    other = "?"
                os.close(self.fd)
                raise CLIError(f"another process (pid {other or '?'}) is running the sweep in "
                               f"{os.path.dirname(self.path)}; wait for it or choose another name=...") from None
            raise
        os.ftruncate(self.fd, 0)
        os.write(self.fd, str(os.getpid()).encode())
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def read_results(path: str) -> list[dict]:
    """Complete records of ``results.jsonl``; a torn last line (a kill during the write) is dropped."""
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        raw = f.read()
    out, good = [], 0
    for line in raw.split(b"\n"):
        if not line.strip():
            good += len(line) + 1
            continue
        try:
            out.append(json.loads(line))
            good += len(line) + 1
        except json.JSONDecodeError:
            break
    return out


def repair_results(path: str):
    """Truncate a torn trailing line so the next append starts on a clean line (called under the lock)."""
    if not os.path.exists(path):
        return
    with open(path, "rb+") as f:
        raw = f.read()
        end = raw.rfind(b"\n") + 1
        tail = raw[end:]
        if tail.strip():
            try:
                json.loads(tail)
                f.write(b"\n")
            except json.JSONDecodeError:
                f.truncate(end)


def append_result(path: str, record: dict):
    line = json.dumps(record, sort_keys=True) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def table(records: list[dict]) -> str:
    """The comparison table printed at the end of a sweep."""
    if not records:
        return "(no finished runs)"
    head = ["rule", "task", "arch", "seeds", "test acc", "status", "MFLOP/sample", "step ms", "GFLOP/s", "wall s"]
    rows = []
    for r in records:
        c = r.get("compute", {})
        acc = r.get("acc_mean", float("nan"))
        sd = r.get("acc_sd", 0.0)
        rows.append([r.get("rule_label", r["rule"]), r.get("task_instance", r["task"]), r["arch"], str(len(r["seeds"])),
                     f"{acc:.4f} ± {sd:.4f}", r["status"] + (f"@{min(d for d in r['diverged_at'] if d >= 0)}"
                                                              if r["status"] != "ok" and r.get("diverged_at") else ""),
                     f"{c.get('flops_per_sample', 0) / 1e6:.3f}",
                     f"{c['step_ms_median']:.2f}" if c.get("step_ms_median") else "-",
                     f"{c['gflops_achieved']:.1f}" if c.get("gflops_achieved") else "-",
                     f"{r.get('wall_s', 0):.1f}"])
    w = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    fmt = lambda row: "  ".join(x.ljust(w[i]) for i, x in enumerate(row))  # noqa: E731
    return "\n".join([fmt(head), fmt(["-" * n for n in w])] + [fmt(r) for r in rows])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help", "help") for a in argv):
        print(render_help(RunConfig(), __doc__.strip().splitlines()[0]))
        return 0
    try:
        cfgs, _ = parse(argv)
    except CLIError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not cfgs:
        print("error: the sweep produced zero runs; check its [grid] and [[runs]]", file=sys.stderr)
        return 2
    names = {c.name for c in cfgs}
    outs = {c.out for c in cfgs}
    if len(names) != 1 or len(outs) != 1:
        print("error: all runs of one sweep must share name= and out=", file=sys.stderr)
        return 2
    sweep_dir = os.path.join(outs.pop(), names.pop())
    try:
        os.makedirs(sweep_dir, exist_ok=True)
        probe = os.path.join(sweep_dir, ".write_test")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        print(f"error: cannot write to output directory {sweep_dir} ({e.strerror}); "
              "choose a writable out=... or free disk space", file=sys.stderr)
        return 2
    try:
        with SweepLock(sweep_dir):
            return _run_all(cfgs, sweep_dir)
    except CLIError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished runs are in {sweep_dir}/results.jsonl and unfinished ones have checkpoints; "
              "run the same command again to resume", file=sys.stderr)
        return 130


def _run_all(cfgs: list[RunConfig], sweep_dir: str) -> int:
    from localrules import tb
    from localrules.run import build, config_dict, execute, rule_label

    results_path = os.path.join(sweep_dir, "results.jsonl")
    repair_results(results_path)
    done = {r["run_id"] for r in read_results(results_path)}
    ids = [run_id(c) for c in cfgs]

    # the HParams experiment: every key that varies across the sweep, plus rule/task/arch/lr
    hp_values: dict[str, list] = {"rule": [], "task": [], "arch": [], "lr": [], "optimizer": [], "batch_size": [],
                                  "seed": []}
    for c in cfgs:
        d = config_dict(c)
        hp_values["rule"].append(rule_label(c.rule))
        hp_values["task"].append(d["task"]["_name"])
        hp_values["arch"].append(d["arch"]["_name"])
        hp_values["lr"].append(c.optimizer.lr)
        hp_values["optimizer"].append(c.optimizer.name)
        hp_values["batch_size"].append(c.batch_size)
        hp_values["seed"].extend(range(c.seed, c.seed + c.seeds))
    tb.write_experiment(sweep_dir, hp_values)

    todo = [(c, i) for c, i in zip(cfgs, ids) if i not in done]
    print(f"sweep {sweep_dir}: {len(cfgs)} runs, {len(cfgs) - len(todo)} already finished, {len(todo)} to run")
    for k, (cfg, rid) in enumerate(todo, 1):
        print(f"[{k}/{len(todo)}] {rid}")
        try:
            build(cfg)  # validate (cheap) before any output is written
        except (ValueError, KeyError, TypeError) as e:
            msg = e.args[0] if e.args else str(e)
            raise CLIError(f"run {rid}: {msg}") from None
        t0 = time.time()
        record = execute(cfg, os.path.join(sweep_dir, rid), rid)
        append_result(results_path, record)
        print(f"  done in {time.time() - t0:.1f} s: test acc {record['acc_mean']:.4f} ± {record['acc_sd']:.4f}"
              f" ({record['status']})")
    records = [r for r in read_results(results_path) if r["run_id"] in set(ids)]
    print()
    print(table(records))
    print(f"\nresults: {results_path}\ndashboard: tensorboard --logdir {sweep_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
