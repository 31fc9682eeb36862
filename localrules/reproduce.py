"""``python -m localrules.reproduce <table> [budget=smoke|reduced|full] [out=runs] [name=...] [key=value ...]``.

Runs the sweep presets behind one paper table and prints, per row, the paper's number, ours (mean ± sd over seeds)
and the difference, with training FLOPs, wall time and peak memory. Rows whose dataset is not on this machine are
listed as skipped with the loader's reason (never silently dropped). ``python -m localrules.reproduce`` alone lists
the tables.

**Table files** (``sweeps/tables/<table>.toml``) declare the rows in a machine-readable form::

    title = "PEPITA vs backprop, ICML 2022 Table 1"
    source = "Dellaferrera & Kreiman, ICML 2022, Table 1 [secondary: public transcription]"
    [budgets.reduced]              # overrides applied to every row at budget=reduced (CPU-affordable)
    epochs = 1
    seeds = 2
    [budgets.smoke]                # extra overrides at budget=smoke (on top of the built-in tiny budget)
    [[rows]]
    label = "FC 1x1024, MNIST: PEPITA"
    preset = "pepita_icml_fc_mnist" # a sweep preset in sweeps/
    select = { rule = "pepita" }    # which of the preset's runs (its [base] + one [[runs]] entry); omit if one
    dataset = "mnist"               # the data the row needs (checked against the preset's task by the tests)
    paper = 98.01                   # test accuracy in %, or paper_error = 1.36 (test error in %)
    paper_sd = 0.09
    note = "..."                    # provenance; rows without a number say why in paper_status
    [rows.reduced]                  # optional per-row overrides at one budget (also [rows.smoke], [rows.full])

Budgets: ``full`` runs the presets as written (the papers' budgets); ``reduced`` applies the table's
``[budgets.reduced]``; ``smoke`` trains 4 batches (``epochs=0 samples=4×batch``), at most 2 seeds, no
checkpoints, 2 timed steps, plus the table's ``[budgets.smoke]`` (a mechanics check, not a number to quote).

Outputs go to ``<out>/<name>/`` (default name ``<table>-<budget>``): ``results.jsonl`` (one record per run, with a
``reproduce`` field naming the table, row, budget and paper number), TensorBoard runs, checkpoints and
``table.md``. Started again, finished rows are skipped and unfinished ones resume from their checkpoints.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import sys
import time
from typing import Any

from localrules.cli import CLIError, apply_overrides, split_token
from localrules.config import RunConfig

TABLES_DIR = os.path.join(os.path.dirname(os.path.abspath(__import__("localrules.sweeps", fromlist=["_"]).__file__)),
                          "tables")
BUDGETS = ("smoke", "reduced", "full")
ROW_KEYS = {"label", "preset", "select", "dataset", "paper", "paper_sd", "paper_error", "paper_status", "note",
            "overrides", "smoke", "reduced", "full"}
TABLE_KEYS = {"title", "source", "description", "budgets", "rows", "arch_notes"}
SMOKE_BATCHES = 4
SMOKE_SEEDS = 2


@dataclasses.dataclass(frozen=True)
class Row:
    label: str
    preset: str
    select: dict
    dataset: str | None
    paper: float | None  # test accuracy, %
    paper_sd: float | None
    paper_status: str
    note: str
    overrides: dict  # budget name (or "all") -> {key: value}


@dataclasses.dataclass(frozen=True)
class Table:
    name: str
    path: str
    title: str
    source: str
    budgets: dict  # budget -> {key: value}
    rows: tuple
    arch_notes: dict


def table_names() -> list[str]:
    if not os.path.isdir(TABLES_DIR):
        return []
    return sorted(f[:-5] for f in os.listdir(TABLES_DIR) if f.endswith(".toml"))


def table_path(ref: str) -> str:
    for c in (ref, os.path.join(TABLES_DIR, ref), os.path.join(TABLES_DIR, ref + ".toml")):
        if os.path.isfile(c):
            return c
    names = table_names()
    close = difflib.get_close_matches(os.path.basename(ref).removesuffix(".toml"), names, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise CLIError(f"unknown table {ref!r} (looked in {TABLES_DIR}).{hint} Tables: {', '.join(names) or 'none'}")


def _flat(d: dict, where: str) -> dict:
    from localrules.sweep import _flatten

    if not isinstance(d, dict):
        raise CLIError(f"{where} must be a table of key = value overrides")
    return _flatten(d)


def load_table(ref: str) -> Table:
    """Parse and check a table file; every mistake is a one-line CLIError naming the file and the fix."""
    import tomllib

    path = table_path(ref)
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise CLIError(f"table file {path} is not valid TOML ({e}); fix the syntax") from None
    unknown = set(doc) - TABLE_KEYS
    if unknown:
        raise CLIError(f"table file {path}: unknown keys {sorted(unknown)}; use {', '.join(sorted(TABLE_KEYS))}")
    budgets = {}
    for b, over in (doc.get("budgets") or {}).items():
        if b not in BUDGETS:
            raise CLIError(f"table file {path}: [budgets.{b}] is not a budget; use smoke, reduced or full")
        budgets[b] = _flat(over, f"{path} [budgets.{b}]")
    rows = []
    raw_rows = doc.get("rows")
    if not isinstance(raw_rows, list) or not raw_rows:
        raise CLIError(f"table file {path} has no [[rows]]; add one per paper number")
    for i, r in enumerate(raw_rows, 1):
        where = f"table file {path}, row {i}"
        bad = set(r) - ROW_KEYS
        if bad:
            close = difflib.get_close_matches(sorted(bad)[0], sorted(ROW_KEYS), n=1)
            raise CLIError(f"{where}: unknown keys {sorted(bad)}" + (f" (did you mean {close[0]!r}?)" if close else "")
                           + f"; use {', '.join(sorted(ROW_KEYS))}")
        for k in ("label", "preset"):
            if not isinstance(r.get(k), str) or not r[k]:
                raise CLIError(f"{where}: needs {k} = \"...\"")
        if "paper" in r and "paper_error" in r:
            raise CLIError(f"{where} ({r['label']}): give paper (accuracy %) or paper_error (error %), not both")
        paper = r.get("paper")
        if "paper_error" in r:
            paper = 100.0 - float(r["paper_error"])
        for k in ("paper", "paper_error", "paper_sd"):
            if k in r and not (isinstance(r[k], (int, float)) and 0 <= r[k] <= 100):
                raise CLIError(f"{where} ({r['label']}): {k} = {r[k]!r} must be a percentage in [0, 100]")
        if paper is None and not r.get("paper_status"):
            raise CLIError(f"{where} ({r['label']}): no paper number; set paper = <accuracy %> or say why in "
                           "paper_status = \"...\"")
        over = {"all": _flat(r.get("overrides", {}), f"{where} overrides")}
        for b in BUDGETS:
            if b in r:
                over[b] = _flat(r[b], f"{where} [{b}]")
        sel = r.get("select", {})
        if not isinstance(sel, dict):
            raise CLIError(f"{where}: select must be a table, e.g. select = {{ rule = \"pepita\" }}")
        rows.append(Row(r["label"], r["preset"], _flat(sel, where), r.get("dataset"),
                        None if paper is None else float(paper), r.get("paper_sd"), r.get("paper_status", ""),
                        r.get("note", ""), over))
    labels = [r.label for r in rows]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise CLIError(f"table file {path}: duplicate row labels {dup}; every row needs its own label")
    name = os.path.basename(path).removesuffix(".toml")
    return Table(name, path, doc.get("title", name), doc.get("source", ""), budgets, tuple(rows),
                 dict(doc.get("arch_notes") or {}))


def _last(combo: list[tuple[str, Any]]) -> dict:
    out = {}
    for k, v in combo:
        out[k] = v
    return out


def select_combo(row: Row) -> list[tuple[str, Any]]:
    """The override list of the preset's run that ``row.select`` picks (exactly one must match)."""
    from localrules.sweep import read_sweep, sweep_path

    _, combos = read_sweep(sweep_path(row.preset))
    hits = [c for c in combos if all(_last(c).get(k, _MISSING) == v for k, v in row.select.items())]
    if len(hits) != 1:
        shown = "; ".join(", ".join(f"{k}={v}" for k, v in _last(c).items() if k.startswith("rule"))[:80]
                          for c in combos)
        raise CLIError(f"row {row.label!r}: select {row.select} matches {len(hits)} of the {len(combos)} runs of "
                       f"preset {row.preset} (runs: {shown}); make select name exactly one")
    return hits[0]


_MISSING = object()


def row_config(table: Table, row: Row, budget: str, out: str, name: str, extra: list[tuple[str, Any]]) -> RunConfig:
    """The run config of one row at one budget (preset run + budget overrides + command-line tokens)."""
    if budget not in BUDGETS:
        raise CLIError(f"budget={budget!r}: choose smoke, reduced or full")
    items = list(select_combo(row)) + list(row.overrides.get("all", {}).items())
    if budget != "full":
        items += list(table.budgets.get(budget, {}).items())
    items += list(row.overrides.get(budget, {}).items())
    items += list(extra)
    cfg = apply_overrides(RunConfig(), items + [("name", name), ("out", out)])
    if budget == "smoke":
        cfg = dataclasses.replace(cfg, epochs=0.0, samples=SMOKE_BATCHES * cfg.batch_size,
                                  seeds=min(cfg.seeds, SMOKE_SEEDS), eval_every=0, checkpoint=False,
                                  timing_steps=min(cfg.timing_steps, 2))
        cfg = apply_overrides(cfg, list(table.budgets.get("smoke", {}).items()) +
                              list(row.overrides.get("smoke", {}).items()) + list(extra))
    return cfg


# ------------------------------------------------------------------------------------------------ running


@dataclasses.dataclass
class Planned:
    row: Row
    cfg: RunConfig | None = None
    run_id: str | None = None
    skipped: str | None = None  # reason the data is missing
    error: str | None = None  # any other reason it cannot run
    record: dict | None = None


def _first_lines(e: BaseException, n: int = 1) -> str:
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return " ".join(lines[:n]) if lines else type(e).__name__


def _data_reason(e: BaseException) -> str:
    """The loader's message in one line: what is missing and how to provide it."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    provide = next((ln for ln in lines if ln.startswith("To provide")), "")
    head = lines[0] if lines else type(e).__name__
    return head + (f" {provide.rstrip(':')}" if provide and provide != head else "")


def plan(rows, cfg_of, log=print) -> list[Planned]:
    """Build every row's config before anything trains: missing data → skipped, a bad config → error."""
    from localrules.run import build
    from localrules.sweep import run_id
    from localrules.tasks.datasets import DatasetError

    out = []
    for row in rows:
        p = Planned(row)
        try:
            p.cfg = cfg_of(row)
            p.run_id = run_id(p.cfg)
            build(p.cfg)
        except DatasetError as e:
            p.skipped = _data_reason(e)
        except CLIError as e:
            p.error = str(e)
        except (ValueError, KeyError, TypeError) as e:
            p.error = _first_lines(e)
        out.append(p)
    return out


def run_planned(planned: list[Planned], sweep_dir: str, field: str, tag_of, log=print) -> list[Planned]:
    """Train every runnable row (skipping finished ones, resuming unfinished ones from their checkpoints) and attach
    its record; ``record[field] = tag_of(planned_row)`` says which table row / comparison produced it."""
    from localrules import tb
    from localrules.run import config_dict, execute, rule_label
    from localrules.sweep import SweepLock, append_result, read_results, repair_results
    from localrules.tasks.datasets import DatasetError

    os.makedirs(sweep_dir, exist_ok=True)
    results = os.path.join(sweep_dir, "results.jsonl")
    runnable = [p for p in planned if p.cfg is not None and not p.skipped and not p.error]
    with SweepLock(sweep_dir):
        repair_results(results)
        if runnable:
            hp: dict[str, list] = {"rule": [], "task": [], "arch": [], "lr": [], "batch_size": [], "seed": []}
            for p in runnable:
                d = config_dict(p.cfg)
                hp["rule"].append(rule_label(p.cfg.rule))
                hp["task"].append(d["task"]["_name"])
                hp["arch"].append(d["arch"]["_name"])
                hp["lr"].append(p.cfg.optimizer.lr)
                hp["batch_size"].append(p.cfg.batch_size)
                hp["seed"].extend(range(p.cfg.seed, p.cfg.seed + p.cfg.seeds))
            tb.write_experiment(sweep_dir, hp)
        by_id = {r["run_id"]: r for r in read_results(results)}
        todo = [p for p in runnable if p.run_id not in by_id]
        log(f"{sweep_dir}: {len(runnable)} runs, {len(runnable) - len(todo)} already finished, {len(todo)} to run")
        ran: set[str] = set()
        for k, p in enumerate(todo, 1):
            if p.run_id in ran:
                continue
            log(f"[{k}/{len(todo)}] {p.row.label}: {p.run_id}")
            t0 = time.time()
            try:
                record = execute(p.cfg, os.path.join(sweep_dir, p.run_id), p.run_id, log=log)
            except DatasetError as e:
                p.skipped = _data_reason(e)
                continue
            except Exception as e:  # noqa: BLE001 - one failed row must not stop the table; traceback to a file
                import traceback

                with open(os.path.join(sweep_dir, "error.log"), "a", encoding="utf-8") as f:
                    f.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {p.row.label} ({p.run_id})\n"
                            f"{traceback.format_exc()}\n")
                p.error = f"{type(e).__name__}: {_first_lines(e)[:300]} (traceback in {sweep_dir}/error.log)"
                log(f"  failed: {p.error}")
                continue
            record[field] = tag_of(p)
            append_result(results, record)
            ran.add(p.run_id)
            by_id[p.run_id] = record
            log(f"  done in {time.time() - t0:.1f} s: {record['acc_mean']:.4f} ± {record['acc_sd']:.4f} "
                f"({record['status']})")
        for p in runnable:
            p.record = by_id.get(p.run_id)
    return planned


def tag_row(row: Row) -> dict:
    return {"row": row.label, "preset": row.preset, "paper": row.paper, "paper_sd": row.paper_sd,
            "paper_status": row.paper_status}


def _fmt(x, spec, none="—"):
    return none if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def format_table(table: Table, planned: list[Planned], budget: str) -> str:
    """The printed table: paper / ours / difference, FLOPs, wall time, peak memory; skipped rows with reasons."""
    head = ["row", "paper (%)", "ours (%) mean ± sd", "diff", "train FLOPs", "MFLOP/sample", "wall s", "peak MB",
            "status"]
    rows = []
    notes = []
    for p in planned:
        r = p.row
        paper = (f"{r.paper:.2f}" + (f" ± {r.paper_sd:.2f}" if r.paper_sd is not None else "")) if r.paper is not None \
            else "— (" + (r.paper_status.split(":")[0] or "none") + ")"
        if p.record is not None:
            rec = p.record
            m, s = rec.get("acc_mean", float("nan")), rec.get("acc_sd", 0.0)
            ours = f"{100 * m:.2f} ± {100 * s:.2f} (n={len(rec.get('seeds', []))})"
            diff = _fmt(None if r.paper is None else 100 * m - r.paper, "+.2f")
            c = rec.get("compute") or {}
            cells = [_fmt(c.get("train_flops"), ".3g"), _fmt((c.get("flops_per_sample") or 0) / 1e6, ".3f"),
                     _fmt(rec.get("wall_s"), ".0f"),
                     _fmt(None if c.get("peak_bytes_step") is None else c["peak_bytes_step"] / 2**20, ".1f"),
                     rec.get("status", "?")]
        else:
            ours, diff = "—", "—"
            status = "skipped" if p.skipped else "error" if p.error else "not run"
            cells = ["—", "—", "—", "—", status]
            if p.skipped:
                notes.append(f"  skipped {r.label}: {p.skipped}")
            elif p.error:
                notes.append(f"  error   {r.label}: {p.error}")
        rows.append([r.label, paper, ours, diff, *cells])
    w = [max(len(h), *(len(x[i]) for x in rows)) for i, h in enumerate(head)]
    fmt = lambda row: "  ".join(x.ljust(w[i]) for i, x in enumerate(row))  # noqa: E731
    lines = [f"{table.title}  [budget={budget}]", f"source: {table.source}" if table.source else "",
             fmt(head), fmt(["-" * n for n in w])] + [fmt(x) for x in rows]
    lines = [ln for ln in lines if ln]
    if budget != "full":
        lines.append(f"(budget={budget}: not the papers' budgets; differences are not reproductions)")
    if notes:
        lines.append("not run:")
        lines += notes
    return "\n".join(lines)


def _tokens(argv: list[str]) -> tuple[str | None, dict, list]:
    opts, extra, table = {}, [], None
    for tok in argv:
        if "=" not in tok:
            if table is not None:
                raise CLIError(f"two table names ({table!r}, {tok!r}); give one table and key=value options")
            table = tok
            continue
        k, v = split_token(tok)
        if k in ("budget", "out", "name"):
            opts[k] = v
        elif k in ("sweep", "preset"):
            raise CLIError(f"{k}= is not an option of reproduce: the table names its presets; run one preset with "
                           f"python -m localrules.sweep {k}={v}")
        else:
            extra.append((k, v))
    return table, opts, extra


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or any(a in ("-h", "--help", "help") for a in argv):
        print(__doc__.strip().split("\n\n")[0])
        print("\ntables: " + ", ".join(table_names()))
        return 0
    try:
        ref, opts, extra = _tokens(argv)
        if ref is None:
            raise CLIError("no table given; e.g. python -m localrules.reproduce pepita_table1 budget=smoke "
                           f"(tables: {', '.join(table_names())})")
        budget = opts.get("budget", "reduced")
        if budget not in BUDGETS:
            raise CLIError(f"budget={budget!r}: choose smoke, reduced or full")
        table = load_table(ref)
        out = opts.get("out", "runs")
        name = opts.get("name", f"{table.name}-{budget}")
        planned = plan(table.rows, lambda row: row_config(table, row, budget, out, name, extra))
    except CLIError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    sweep_dir = os.path.join(out, name)
    try:
        run_planned(planned, sweep_dir, "reproduce",
                    lambda p: {"table": table.name, "budget": budget, **tag_row(p.row)})
    except CLIError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished rows are in {sweep_dir}/results.jsonl; run the same command again to resume",
              file=sys.stderr)
        return 130
    text = format_table(table, planned, budget)
    print()
    print(text)
    with open(os.path.join(sweep_dir, "table.md"), "w", encoding="utf-8") as f:
        f.write("```\n" + text + "\n```\n")
    print(f"\nresults: {sweep_dir}/results.jsonl; table: {sweep_dir}/table.md")
    failed = [p for p in planned if p.error]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
