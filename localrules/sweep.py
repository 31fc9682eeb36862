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

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import itertools
import json
import logging
import os
import shlex
import signal
import sys
import threading
import time
import traceback
from typing import Any

from localrules.cli import CLIError, apply_overrides, render_help, split_token
from localrules.config import RunConfig

SWEEPS_DIR = os.path.dirname(os.path.abspath(__import__("localrules.sweeps", fromlist=["_"]).__file__))


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
    from localrules.run import config_dict, identity

    d = config_dict(cfg)
    ident = identity(d)
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
    """Append one record as one line, fsynced (a kill mid-write leaves a torn last line that
    :func:`repair_results` removes)."""
    from localrules.run import fault_point

    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    with open(path, "ab") as f:
        if os.environ.get("LOCALRULES_FAULT"):  # fault-injection tests: half a line on disk, then the signal
            f.write(line[: len(line) // 2])
            f.flush()
            os.fsync(f.fileno())
            fault_point("results")
            line = line[len(line) // 2:]
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


def validate(cfgs: list[RunConfig]) -> list[str]:
    """Build every run before anything is written (a bad value in the 5th run of a grid is refused before the
    1st trains); returns the run ids. Errors are one-line CLIErrors naming the run when there are several."""
    from localrules.run import build
    from localrules.tasks.datasets import DatasetError

    ids = []
    for cfg in cfgs:
        rid = run_id(cfg)
        try:
            build(cfg)
        except (ValueError, KeyError, TypeError, DatasetError) as e:
            msg = str(e.args[0]) if e.args else type(e).__name__
            raise CLIError((f"run {rid}: " if len(cfgs) > 1 else "") + msg) from None
        ids.append(rid)
    return ids


def _disk_problem(e: BaseException, where: str) -> str | None:
    """One line for a failed write (disk full, no permission, read-only), or None if ``e`` is not one."""
    no = getattr(e, "errno", None)
    text = str(e)
    path = getattr(e, "filename", None) or where
    if no in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in text or "Disk quota exceeded" in text:
        return (f"no space left on the device holding {path}; free some space (or choose another out=...) and run "
                "the same command again: finished runs and checkpoints are kept")
    if no in (errno.EACCES, errno.EPERM, errno.EROFS) or "Read-only file system" in text:
        return f"cannot write {path} ({getattr(e, 'strerror', None) or text}); choose a writable out=..."
    return None


def main(argv: list[str] | None = None) -> int:
    """The command line: exit 0 when every run finished, 2 for a bad command line or config, 1 when a run failed
    (disk full, an unexpected error: its traceback goes to ``<sweep>/error.log``), 130/143 after Ctrl-C/SIGTERM;
    never a traceback on the terminal."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help", "help") for a in argv):
        print(render_help(RunConfig(), __doc__.strip().splitlines()[0]))
        return 0
    try:
        cfgs, _ = parse(argv)
        if not cfgs:
            raise CLIError("the sweep produced zero runs; check its [grid] and [[runs]]")
        if len({c.name for c in cfgs}) != 1 or len({c.out for c in cfgs}) != 1:
            raise CLIError("all runs of one sweep must share name= and out=; set them in [base] or on the command line")
        validate(cfgs)
    except CLIError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted before the sweep started; nothing was written", file=sys.stderr)
        return 130
    sweep_dir = os.path.join(cfgs[0].out, cfgs[0].name)
    try:
        os.makedirs(sweep_dir, exist_ok=True)
        probe = os.path.join(sweep_dir, ".write_test")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        why = _disk_problem(e, sweep_dir)
        print(f"error: cannot write to output directory {sweep_dir}: {why}" if why else
              f"error: cannot write to output directory {sweep_dir} ({e.strerror}); choose a writable out=... or "
              "free disk space", file=sys.stderr)
        return 2
    current: dict[str, Any] = {"run": None}
    resume = "python -m localrules.sweep " + shlex.join(argv)
    previous = _on_sigterm_raise_interrupt()
    try:
        with SweepLock(sweep_dir), _library_errors_to(os.path.join(sweep_dir, "error.log")):
            return _run_all(cfgs, sweep_dir, current)
    except CLIError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        sig = getattr(e, "signum", signal.SIGINT)
        kept = ("unfinished runs resume from their last checkpoint" if all(c.checkpoint for c in cfgs)
                else "runs with checkpoint=false start over")
        print(f"\ninterrupted ({signal.Signals(sig).name}): finished runs are in {sweep_dir}/results.jsonl and "
              f"{kept}; to resume, run the same command again: {resume}", file=sys.stderr)
        return 128 + int(sig)
    except Exception as e:  # noqa: BLE001 - the last line of defence: one line on the terminal, traceback in a file
        from localrules.run import RunError

        where = f"run {current['run']}: " if current["run"] else ""
        if isinstance(e, RunError):
            print(f"error: {where}{e}", file=sys.stderr)
            return 2
        disk = _disk_problem(e, sweep_dir)
        if disk is not None:
            print(f"error: {where}{disk}", file=sys.stderr)
            return 1
        log = os.path.join(sweep_dir, "error.log")
        try:
            with open(log, "a", encoding="utf-8") as f:
                f.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {resume}\n{traceback.format_exc()}\n")
            saved = f"its traceback is in {log}"
        except OSError:
            saved = "its traceback could not be saved"
        print(f"error: {where}stopped by an unexpected {type(e).__name__}: {_first_line(e)} ({saved}); finished runs "
              f"are kept, and the same command resumes the rest once the cause is fixed", file=sys.stderr)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


class _QuietFileHandler(logging.FileHandler):
    def handleError(self, record):  # a full disk must not turn a log line into a traceback on the terminal
        pass


class _TracebacksTo:
    """A stderr that passes lines through but diverts traceback blocks (``Traceback (most recent call last):`` up
    to the exception line) to a file: C extensions (tensorstore's I/O threads) print them with ``PyErr_Print``."""

    _STARTS = ("Traceback (most recent call last):", "During handling of the above exception",
               "The above exception was the direct cause")

    def __init__(self, real, path: str):
        self.real, self.path, self.buf, self.block = real, path, "", None

    def write(self, text: str) -> int:
        self.buf += text
        while "\n" in self.buf:
            line, self.buf = self.buf.split("\n", 1)
            self._line(line + "\n")
        return len(text)

    def _line(self, line: str):
        if self.block is None and line.startswith(self._STARTS):
            self.block = []
        if self.block is None:
            self.real.write(line)
            return
        self.block.append(line)
        if line.strip() and not line.startswith((" ", "\t")) and not line.startswith(self._STARTS):
            self.close_block()  # the exception line ends the block

    def close_block(self):
        if self.block:
            try:
                with open(self.path, "a", encoding="utf-8") as f:
                    f.writelines(self.block)
            except OSError:
                pass
        self.block = None

    def flush(self):
        if self.buf and self.block is None:
            self.real.write(self.buf)
            self.buf = ""
        self.real.flush()

    def __getattr__(self, name):
        return getattr(self.real, name)


@contextlib.contextmanager
def _library_errors_to(path: str):
    """Errors that libraries report from their own threads (orbax's writer threads log a traceback per failed
    write, e.g. on a full disk; tensorstore's print one) go to ``path`` instead of the terminal, where the sweep
    prints one line."""
    absl = logging.getLogger("absl")
    handler = _QuietFileHandler(path, delay=True, encoding="utf-8")
    handler.setLevel(logging.ERROR)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    saved = absl.propagate, threading.excepthook

    def hook(args):
        if args.exc_type is SystemExit:
            return
        try:
            with open(path, "a", encoding="utf-8") as f:
                traceback.print_exception(args.exc_type, args.exc_value, args.exc_traceback, file=f)
        except OSError:
            pass

    absl.addHandler(handler)
    absl.propagate = False
    threading.excepthook = hook
    real_stderr = sys.stderr
    sys.stderr = _TracebacksTo(real_stderr, path)
    try:
        yield
    finally:
        diverted, sys.stderr = sys.stderr, real_stderr
        diverted.flush()
        diverted.close_block()
        absl.removeHandler(handler)
        handler.close()
        absl.propagate, threading.excepthook = saved


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0][:300] if lines else "(no message)"


class _Terminated(KeyboardInterrupt):
    signum = signal.SIGTERM


def _on_sigterm_raise_interrupt():
    """SIGTERM (a scheduler's or ``docker stop``'s polite kill) stops a sweep as cleanly as Ctrl-C."""

    def handler(signum, frame):
        raise _Terminated()

    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (main() called from a worker thread): leave signals alone
        return None


def _run_all(cfgs: list[RunConfig], sweep_dir: str, current: dict | None = None) -> int:
    from localrules import tb
    from localrules.run import config_dict, execute, rule_label

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
        if current is not None:
            current["run"] = rid
        t0 = time.time()
        record = execute(cfg, os.path.join(sweep_dir, rid), rid)
        append_result(results_path, record)
        print(f"  done in {time.time() - t0:.1f} s: test acc {record['acc_mean']:.4f} ± {record['acc_sd']:.4f}"
              f" ({record['status']})")
    if current is not None:
        current["run"] = None
    records = [r for r in read_results(results_path) if r["run_id"] in set(ids)]
    print()
    print(table(records))
    print(f"\nresults: {results_path}\ndashboard: tensorboard --logdir {sweep_dir}")
    return 0


if __name__ == "__main__":
    code = main()
    if code == 1:  # a failed run (a full disk) can leave library threads that would report again on the way out
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
