"""``python -m localrules.report <results.jsonl ...> [readme=README.md] [out=FILE]``: numbers from records, never by hand.

Reads the records that runs append to ``<out>/<sweep>/results.jsonl`` and writes Markdown: one table per sweep
with every run's score (test accuracy, or the curriculum's ACC/BWT/FWT), the backprop run of the same sweep beside
it (difference and FLOP ratio, stated in words where a local rule loses), FLOPs per sample, wall time, the machine,
the date and the command that produced the record (``record["argv"]``). With ``readme=README.md`` it replaces the
block between ``<!-- results:begin -->`` and ``<!-- results:end -->`` in that file and nothing else; with
``out=FILE`` it writes the block to a file; otherwise it prints it.

The module also holds the pieces :mod:`localrules.compare` and :mod:`localrules.reproduce` share: the PNG plots
(accuracy against training FLOPs per rule, R-matrix heatmaps, per-stage curriculum curves), the rule-vs-rule report
(``compare_report``) and the command a record was produced by (``command_of``).
"""

from __future__ import annotations

import math
import os
import shlex
import struct
import sys
from typing import Iterable

import numpy as np

BEGIN = "<!-- results:begin -->"
END = "<!-- results:end -->"
REFERENCE_RULE = "backprop"


class ReportError(ValueError):
    """Bad input to the report: the message is one line naming the problem and the fix."""


# ------------------------------------------------------------------------------------------------ records


def load_records(paths: Iterable[str]) -> list[dict]:
    """Every complete record of the given results.jsonl files (a torn last line is dropped), in file order."""
    from localrules.sweep import read_results

    out = []
    for p in paths:
        if os.path.isdir(p):
            p = os.path.join(p, "results.jsonl")
        if not os.path.isfile(p):
            raise ReportError(f"{p}: no such results file; pass <out>/<sweep>/results.jsonl files (or their folders)")
        try:
            recs = read_results(p)
        except OSError as e:
            raise ReportError(f"cannot read {p}: {e.strerror}") from None
        for r in recs:
            if not isinstance(r, dict) or "run_id" not in r or "rule" not in r:
                raise ReportError(f"{p} holds a line that is not a run record (no run_id/rule); pass results.jsonl "
                                  "files written by localrules.sweep, reproduce or compare")
            r.setdefault("_source", p)
        out.extend(recs)
    return out


def command_of(record: dict) -> str:
    """The shell command that produced a record, from its ``argv`` (``python -m localrules.<module> ...``)."""
    argv = list(record.get("argv") or [])
    if not argv:
        return "(command not recorded)"
    head = argv[0]
    base = os.path.basename(head)
    if base.endswith(".py") and os.path.basename(os.path.dirname(head)) == "localrules":
        return "python -m localrules." + base[:-3] + (" " + shlex.join(argv[1:]) if argv[1:] else "")
    if base in ("pytest", "py.test") or "pytest" in head:
        return "python -m pytest " + shlex.join(argv[1:])
    return shlex.join(argv)


def machine_of(record: dict) -> str:
    p = record.get("platform") or {}
    dev = p.get("device") or "?"
    backend = p.get("backend") or "?"
    n = p.get("n_devices") or 1
    return f"{backend}: {dev}" + (f" ×{n}" if n > 1 else "")


def is_curriculum(record: dict) -> bool:
    return isinstance(record.get("curriculum"), dict)


def score(record: dict) -> tuple[float, float]:
    """(mean, sd) over seeds of the record's headline score in [0, 1]: test accuracy, or the curriculum's ACC."""
    if is_curriculum(record):
        c = record["curriculum"]
        return float(c.get("ACC", record.get("acc_mean", float("nan")))), float(c.get("ACC_sd", record.get("acc_sd", 0.0)))
    return float(record.get("acc_mean", float("nan"))), float(record.get("acc_sd", 0.0))


def label_of(record: dict) -> str:
    from localrules.run import control_suffix

    label = record.get("rule_label") or record["rule"]
    suffix = control_suffix(((record.get("config") or {}).get("rule") or {}).get("plasticity"))
    return label if label.endswith(suffix) else label + suffix  # records written before rule_label knew it


def _pct(x: float) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{100 * x:.2f}"


def _pm(m: float, s: float) -> str:
    return "—" if not math.isfinite(m) else f"{100 * m:.2f} ± {100 * s:.2f}"


def _mflop(record: dict) -> float | None:
    f = (record.get("compute") or {}).get("flops_per_sample")
    return None if f is None else f / 1e6


def _fmt(x, spec: str, none: str = "—") -> str:
    return none if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def _date(record: dict) -> str:
    return (record.get("date") or "?")[:10]


def _md_escape(s: str) -> str:
    return s.replace("|", "\\|")


def _reference(records: list[dict], r: dict) -> dict | None:
    """The backprop record ``r`` is compared with: the latest one of the same sweep and task on the same
    architecture (a comparison run by ``localrules.compare`` accepts the family's own: its rules may need their own
    variant of the architecture)."""
    if r["rule"] == REFERENCE_RULE:
        return None
    task = r.get("task_instance", r.get("task"))
    refs = [x for x in records if x["rule"] == REFERENCE_RULE and x.get("sweep") == r.get("sweep")
            and x.get("task_instance", x.get("task")) == task]
    same = [x for x in refs if x.get("arch") == r.get("arch")]
    if same:
        return same[-1]
    return refs[-1] if refs and "compare" in r else None


def _paper_cell(r: dict) -> str:
    rep = r.get("reproduce") or {}
    if rep.get("paper") is None:
        return "— (" + (rep.get("paper_status") or "no number").split(":")[0] + ")" if rep else "—"
    m, _ = score(r)
    sd = f" ± {rep['paper_sd']:.2f}" if rep.get("paper_sd") is not None else ""
    return f"{rep['paper']:.2f}{sd} (ours {100 * m - rep['paper']:+.2f})"


def _graduated(c: dict) -> str:
    """'k/T': stages every seed graduated from; '—' for curricula without graduation (every θ > 1)."""
    per = c.get("per_stage", [])
    if per and all((ps.get("threshold") or 0) > 1 for ps in per):
        return "— (no θ)"
    return f"{sum(all(ps.get('graduated', [])) for ps in per)}/{len(c.get('stages', []))}"


def _budget(record: dict) -> str:
    tag = (record.get("reproduce") or record.get("compare") or {}).get("budget")
    return _samples(record) + (f" (budget={tag})" if tag else "")


def _samples(record: dict) -> str:
    seeds = len(record.get("seeds") or [])
    if is_curriculum(record):
        trained = sum(ps.get("samples_trained", 0) for ps in record["curriculum"].get("per_stage", []))
        return f"{trained:,} samples (all stages) × {seeds} seed{'s' if seeds != 1 else ''}"
    return f"{record.get('samples', 0):,} samples × {seeds} seed{'s' if seeds != 1 else ''}"


def results_block(records: list[dict], invocation: str) -> str:
    """The README's generated Results block (without the markers)."""
    if not records:
        raise ReportError("no records to report: pass results.jsonl files that hold finished runs")
    lines = [f"<!-- generated by `{invocation}` from results.jsonl records; edit the records' runs, not this block -->",
             ""]
    groups: dict[tuple, list[dict]] = {}
    for r in records:  # one table per sweep and task (a comparison sweep holds a curriculum and a dataset)
        groups.setdefault((r.get("sweep") or "?", r.get("task", "?"), is_curriculum(r)), []).append(r)
    statements = []
    for (name, _, curriculum), recs in groups.items():
        instances = sorted({r.get("task_instance", r["task"]) for r in recs})
        lines.append(f"**{name}** ({', '.join(instances)})")
        lines.append("")
        if curriculum:
            head = ["rule", "arch", "budget", "ACC (%)", "BWT", "FWT", "graduated stages", "vs backprop (ACC)",
                    "MFLOP/sample (rule / BP)", "wall s", "machine", "date", "command"]
        else:
            head = ["rule", "arch", "budget", "test acc. (%)", "vs backprop", "MFLOP/sample (rule / BP)", "wall s",
                    "machine", "date", "command"]
        papers = any("reproduce" in r for r in recs)
        if papers:
            head.insert(3, "paper (%)")
        several = len(instances) > 1
        if several:
            head.insert(1, "task")
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        for r in recs:
            m, s = score(r)
            ref = _reference(records, r)
            mf = _mflop(r)
            if ref is not None:
                rm, rs = score(ref)
                gap = 100 * (m - rm)
                vs = f"{_pm(rm, rs)} (gap {gap:+.2f})"
                rmf = _mflop(ref)
                flops = f"{_fmt(mf, '.3g')} / {_fmt(rmf, '.3g')}"
                if math.isfinite(gap):
                    ratio = f"{mf / rmf:.2f}×" if mf and rmf else "?"
                    what = "ACC" if is_curriculum(r) else "test accuracy"
                    verdict = ("loses to" if gap < 0 else "matches" if gap == 0 else "beats")
                    statements.append(f"- {name}: **{label_of(r)} {verdict} backprop** by {abs(gap):.2f} points of "
                                      f"{what} ({_pct(m)} vs {_pct(rm)} %) at {ratio} backprop's FLOPs per sample.")
            else:
                vs = "(reference)" if r["rule"] == REFERENCE_RULE else "no backprop run on this architecture"
                flops = _fmt(mf, ".3g")
            cmd = f"`{_md_escape(command_of(r))}`"
            rowname = (r.get("reproduce") or {}).get("row")
            row = [label_of(r) + (f" ({rowname})" if rowname else "")] + \
                ([r.get("task_instance", r["task"])] if several else []) + [r.get("arch", "?"), _budget(r)]
            if papers:
                row.append(_paper_cell(r))
            if curriculum:
                c = r.get("curriculum") or {}
                row += [_pm(m, s), _fmt(c.get("BWT"), "+.3f"), _fmt(c.get("FWT"), "+.3f"), _graduated(c), vs]
            else:
                row += [_pm(m, s) + ("" if r.get("status", "ok") == "ok" else f" ({r['status']})"), vs]
            row += [flops, _fmt(r.get("wall_s"), ".0f"), machine_of(r), _date(r), cmd]
            lines.append("| " + " | ".join(_md_escape(x) if i < len(row) - 1 else x for i, x in enumerate(row)) + " |")
        from localrules.run import control_suffix

        for r in recs:  # a learned rule against its own random-frozen-features control in the same sweep
            control = next((x for x in recs if label_of(x) == label_of(r) + control_suffix("none")
                            and x.get("arch") == r.get("arch")), None)
            if control is not None:
                (m, _), (cm, _) = score(r), score(control)
                if math.isfinite(m) and math.isfinite(cm):
                    verdict = "beats" if m > cm else "does not beat"
                    statements.append(f"- {name}: **{label_of(r)} {verdict} its random frozen features** "
                                      f"({label_of(control)}) by {abs(100 * (m - cm)):.2f} points "
                                      f"({_pct(m)} vs {_pct(cm)} %).")
        lines.append("")
    if statements:
        lines.append("Local rules against backprop (same sweep: same architecture family, data order, sample budget "
                     "and seeds):")
        lines.append("")
        lines.extend(statements)
        lines.append("")
    lines.append("Scores are mean ± sd over seeds (curriculum: ACC = mean final accuracy over the stages, GEM's BWT "
                 "and FWT); FLOPs are the compiler's count of one update step, optimizer included; wall times on "
                 "shared machines are upper bounds.")
    return "\n".join(lines)


def replace_block(text: str, block: str, path: str = "README.md", *, begin: str = BEGIN, end: str = END,
                  what: str = "results") -> str:
    """``text`` with the part between the ``begin``/``end`` markers replaced by ``block``; refuses without exactly one
    pair of markers (the bench writes its own block with its own markers through this too)."""
    b, e = text.find(begin), text.find(end)
    if b < 0 or e < 0 or e < b:
        raise ReportError(f"{path} has no '{begin}' … '{end}' block; add both markers (on their own lines) around "
                          f"the generated {what} section")
    if text.count(begin) != 1 or text.count(end) != 1:
        raise ReportError(f"{path} has more than one {what} block; keep exactly one pair of markers")
    return text[: b + len(begin)] + "\n" + block.rstrip("\n") + "\n" + text[e:]


# ------------------------------------------------------------------------------------------------ plots


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    if png[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    return struct.unpack(">II", png[16:24])


def _save(fig, path: str) -> str:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, format="png", dpi=100)
    _plt().close(fig)
    return path


def _seed_mean_sd(values) -> tuple[float, float]:
    a = np.asarray(values, dtype=float).reshape(-1)
    a = a[np.isfinite(a)]
    if not a.size:
        return float("nan"), 0.0
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def curve_of(record: dict) -> list[tuple[float, int, float, float]]:
    """(training FLOPs, samples, mean acc, sd acc) at every evaluation of a plain run (the init point included)."""
    out = []
    for h in record.get("history") or []:
        acc = h.get("test/acc")
        if acc is None:
            continue
        m, s = _seed_mean_sd(acc)
        out.append((float(h.get("train_flops", 0.0)), int(h.get("samples", 0)), m, s))
    return out


def plot_accuracy_vs_flops(records: list[dict], path: str, title: str) -> str:
    """Test accuracy (mean over seeds, ±sd band) against training FLOPs, one line per rule (log x axis)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(11, 5))
    for r in records:
        pts = [p for p in curve_of(r) if p[0] > 0]
        if not pts:
            continue
        x = np.asarray([p[0] for p in pts])
        m = np.asarray([p[2] for p in pts])
        s = np.asarray([p[3] for p in pts])
        (line,) = ax.plot(x, m, marker="o", ms=3, label=f"{label_of(r)} ({r.get('arch', '?')})")
        ax.fill_between(x, m - s, m + s, color=line.get_color(), alpha=0.15)
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs (compiled update step × steps)")
    ax.set_ylabel("test accuracy (mean over seeds, ±sd)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    return _save(fig, path)


def plot_stage_curves(records: list[dict], path: str, title: str) -> str:
    """Curriculum: one panel per stage, the stage's test accuracy against the FLOPs spent in it, one line per rule,
    the graduation threshold θ dashed."""
    plt = _plt()
    stages = []
    for r in records:
        for s in r["curriculum"].get("stages", []):
            if s not in stages:
                stages.append(s)
    n = max(1, len(stages))
    cols = min(3, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    colors = {}
    for k, st in enumerate(stages):
        ax = axes[k // cols][k % cols]
        theta = None
        for r in records:
            c = r["curriculum"]
            fps = (r.get("compute") or {}).get("flops_per_sample") or 0.0
            pts = c.get("curves", {}).get(st) or []
            ps = next((p for p in c.get("per_stage", []) if p.get("stage") == st), None)
            if ps is not None:
                theta = ps.get("threshold", theta)
            if not pts:
                continue
            x = np.asarray([p[0] * fps for p in pts])
            ms = [_seed_mean_sd(p[1]) for p in pts]
            m = np.asarray([a for a, _ in ms])
            lab = label_of(r)
            kw = {"color": colors[lab]} if lab in colors else {}
            (line,) = ax.plot(x, m, marker="o", ms=2.5, label=lab, **kw)
            colors.setdefault(lab, line.get_color())
        if theta is not None and theta <= 1:
            ax.axhline(theta, ls="--", color="k", lw=0.8)
        ax.set_title(f"{st}" + (f" (θ = {theta:.2f})" if theta is not None and theta <= 1 else ""), fontsize=9)
        ax.set_xscale("log")
        ax.set_ylim(0, 1.02)
        ax.grid(True, which="both", alpha=0.3)
        ax.set_xlabel("training FLOPs in the stage", fontsize=8)
        ax.set_ylabel("stage test accuracy", fontsize=8)
        ax.tick_params(labelsize=7)
    for k in range(n, rows * cols):
        axes[k // cols][k % cols].axis("off")
    handles, labels = [], []
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    ncol = 3
    legend_rows = -(-len(labels) // ncol)
    legend_h = 0.22 * legend_rows + 0.2 if handles else 0.0
    fig.set_size_inches(4.2 * cols, 3.2 * rows + legend_h)
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, legend_h / (3.2 * rows + legend_h), 1, 0.95))
    return _save(fig, path)


def r_matrix_png(record: dict) -> tuple[bytes, int, int]:
    """The R matrix (mean over seeds) with its random-init row on top, as an annotated heatmap PNG."""
    import io

    plt = _plt()
    c = record["curriculum"]
    cols = c.get("test_stages", c.get("stages", []))
    R = np.asarray(c.get("R_mean") or np.zeros((0, len(cols))), dtype=float)
    init = np.asarray(c.get("init_mean") or [], dtype=float)
    m = np.vstack([init[None, :], R]) if init.size else R
    rows = (["init"] if init.size else []) + [f"after {s}" for s in c.get("stages", [])][: R.shape[0]]
    seeds = len(record.get("seeds") or [])
    fig, ax = plt.subplots(figsize=(max(4.5, 2.2 + 0.75 * m.shape[1]), max(3.0, 1.3 + 0.45 * m.shape[0])), dpi=100)
    im = ax.imshow(m, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xticks(range(m.shape[1]), cols)
    ax.set_yticks(range(m.shape[0]), rows)
    ax.set_xlabel("test of stage")
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", color="w" if m[i, j] < 0.6 else "k", fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.05, pad=0.03)
    ax.set_title(f"R of {label_of(record)}\n(mean of {seeds} seed{'s' if seeds != 1 else ''})", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    data = buf.getvalue()
    return (data, *png_size(data))


# ------------------------------------------------------------------------------------------------ compare report


def _acc_at(curve, key: int, limit: float) -> tuple[float, float, float] | None:
    """(mean, sd, x) at the last evaluation with x ≤ limit (key 0: FLOPs, 1: samples)."""
    best = None
    for p in curve:
        if p[key] <= limit * (1 + 1e-9):
            best = (p[2], p[3], p[key])
    return best


def _fixed_samples(records: list[dict]) -> int | None:
    """A sample budget at which every run was evaluated: the common evaluation point nearest half the shortest run."""
    sets = [{p[1] for p in curve_of(r) if p[1] > 0} for r in records]
    if not sets or any(not s for s in sets):
        return None
    common = set.intersection(*sets)
    if not common:
        return None
    half = min(max(s) for s in sets) / 2
    return min(common, key=lambda x: (abs(x - half), x))


def _mb(x) -> str:
    return _fmt(None if x is None else x / 2**20, ".1f")


def _us_per_sample(r: dict) -> str:
    c = r.get("compute") or {}
    ms = c.get("step_ms_median")
    fps, fpst = c.get("flops_per_sample"), c.get("flops_per_step")
    if not ms or not fps or not fpst:
        return "—"
    batch = fpst / fps
    return f"{1000 * ms / batch:.1f}"


def plain_section(records: list[dict], notes: dict[str, str], out_dir: str, key: str) -> tuple[list[str], list[str]]:
    """Markdown lines and written PNGs for plain (non-curriculum) runs of a rule-vs-rule comparison."""
    lines, pngs = [], []
    task = ", ".join(sorted({r.get("task_instance", r["task"]) for r in records}))
    ref = next((r for r in records if r["rule"] == REFERENCE_RULE), None)
    fixed_s = _fixed_samples(records)
    finals = [curve_of(r)[-1][0] for r in records if curve_of(r)]
    fixed_f = min(finals) if finals else None
    lines += [f"### {task}", ""]
    lines.append(f"Fixed budgets: **{_fmt(fixed_s, ',')} samples** (an evaluation point every run shares) and "
                 f"**{_fmt(fixed_f, '.3g')} training FLOPs** (the cheapest run's whole budget; each rule at its last "
                 "evaluation within it).")
    lines.append("")
    head = ["rule", "architecture", "final test acc. (%)", "vs backprop", f"acc. at {_fmt(fixed_s, ',')} samples",
            f"acc. at ≤ {_fmt(fixed_f, '.3g')} FLOPs", "MFLOP/sample", "µs/sample (step)", "peak MB (step)",
            "train FLOPs", "wall s", "status"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for r in records:
        cur = curve_of(r)
        m, s = score(r)
        vs = "(reference)" if r is ref else "—"
        if ref is not None and r is not ref:
            rm, _ = score(ref)
            vs = f"{100 * (m - rm):+.2f} points"
        at_s = _acc_at(cur, 1, fixed_s) if fixed_s else None
        at_f = _acc_at(cur, 0, fixed_f) if fixed_f else None
        c = r.get("compute") or {}
        arch = r.get("arch", "?") + (" †" if label_of(r) in notes else "")
        row = [label_of(r), arch, _pm(m, s), vs,
               _pm(at_s[0], at_s[1]) if at_s else "—",
               (_pm(at_f[0], at_f[1]) + f" @ {at_f[2]:.3g}") if at_f and at_f[2] > 0 else "— (none within)",
               _fmt(_mflop(r), ".3f"), _us_per_sample(r), _mb(c.get("peak_bytes_step")),
               _fmt(c.get("train_flops"), ".3g"), _fmt(r.get("wall_s"), ".0f"), r.get("status", "?")]
        lines.append("| " + " | ".join(_md_escape(str(x)) for x in row) + " |")
    lines.append("")
    png = os.path.join(out_dir, f"acc_vs_flops_{key}.png")
    plot_accuracy_vs_flops(records, png, f"{task}: test accuracy against training FLOPs")
    pngs.append(png)
    lines += [f"![accuracy against training FLOPs, {task}]({os.path.basename(png)})", ""]
    return lines, pngs


def curriculum_section(records: list[dict], notes: dict[str, str], out_dir: str, key: str
                       ) -> tuple[list[str], list[str]]:
    """Markdown lines and PNGs for curriculum runs: R summaries, samples-to-graduate, fixed-budget accuracy."""
    lines, pngs = [], []
    task = ", ".join(sorted({r.get("task_instance", r["task"]) for r in records}))
    ref = next((r for r in records if r["rule"] == REFERENCE_RULE), None)
    lines += [f"### {task}", ""]
    head = ["rule", "architecture", "ACC (%)", "vs backprop", "BWT", "FWT", "forgetting", "graduated stages",
            "MFLOP/sample", "µs/sample (step)", "peak MB (step)", "train FLOPs", "wall s", "status"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for r in records:
        c = r["curriculum"]
        m, s = score(r)
        vs = "(reference)" if r is ref else "—"
        if ref is not None and r is not ref:
            vs = f"{100 * (m - score(ref)[0]):+.2f} points"
        co = r.get("compute") or {}
        arch = r.get("arch", "?") + (" †" if label_of(r) in notes else "")

        def pm(k):
            return "—" if c.get(k) is None else f"{c[k]:+.3f} ± {c.get(k + '_sd', 0.0):.3f}"

        row = [label_of(r), arch, _pm(m, s), vs, pm("BWT"), pm("FWT"), _fmt(c.get("forgetting"), ".3f"),
               _graduated(c), _fmt(_mflop(r), ".3f"), _us_per_sample(r),
               _mb(co.get("peak_bytes_step")), _fmt(co.get("train_flops"), ".3g"), _fmt(r.get("wall_s"), ".0f"),
               r.get("status", "?")]
        lines.append("| " + " | ".join(_md_escape(str(x)) for x in row) + " |")
    lines.append("")
    stages = []
    for r in records:
        for st in r["curriculum"].get("stages", []):
            if st not in stages:
                stages.append(st)
    lines.append("Samples to graduate (mean over the seeds that graduated, n graduated / seeds; — = none within the "
                 "budget), FLOPs to graduate, and stage accuracy at the fixed budgets of 65,536 / 262,144 samples "
                 "(— where the stage ended before that budget):")
    lines.append("")
    head = ["rule"] + stages
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for r in records:
        cells = []
        per = {ps["stage"]: ps for ps in r["curriculum"].get("per_stage", [])}
        for st in stages:
            ps = per.get(st)
            if ps is None:
                cells.append("not reached")
                continue
            g = [x for x in ps.get("samples_to_graduate", []) if x is not None and x >= 0]
            f = [x for x in ps.get("flops_to_graduate", []) if x is not None]
            n = len(ps.get("samples_to_graduate", []))
            fb = ps.get("fixed_budget_acc") or {}
            fixed = " / ".join("—" if fb.get(k) is None else f"{100 * _seed_mean_sd(fb[k])[0]:.1f}"
                               for k in ("65536", "262144"))
            sg = f"{np.mean(g):,.0f} ({len(g)}/{n})" if g else f"— (0/{n})"
            fg = f"{np.mean(f):.2g} FLOPs" if f else ""
            cells.append(f"{sg}<br>{fg}<br>acc {fixed}" if fg else f"{sg}<br>acc {fixed}")
        lines.append("| " + " | ".join([label_of(r)] + cells) + " |")
    lines.append("")
    png = os.path.join(out_dir, f"stage_acc_vs_flops_{key}.png")
    plot_stage_curves(records, png, f"{task}: stage test accuracy against training FLOPs (θ dashed)")
    pngs.append(png)
    lines += [f"![stage accuracy against training FLOPs]({os.path.basename(png)})", ""]
    lines += ["R matrices (rows: random init, then after each stage; columns: test of each stage; mean over seeds):",
              ""]
    for r in records:
        if not r["curriculum"].get("R_mean"):
            lines.append(f"- {label_of(r)}: no finished stage, no R matrix")
            continue
        png_bytes, _, _ = r_matrix_png(r)
        name = f"R_{key}_{_slug(label_of(r))}.png"
        with open(os.path.join(out_dir, name), "wb") as fh:
            fh.write(png_bytes)
        pngs.append(os.path.join(out_dir, name))
        lines.append(f"![R matrix of {label_of(r)}]({name})")
    lines.append("")
    return lines, pngs


def _slug(s: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in s)


def compare_report(records: list[dict], out_dir: str, *, title: str, notes: dict[str, str] | None = None,
                   preamble: Iterable[str] = (), skipped: Iterable[str] = ()) -> tuple[str, list[str]]:
    """Write ``out_dir/report.md`` (and its PNGs) for a rule-vs-rule comparison; returns (path, PNG paths).

    Args:
      records: run records (plain runs and/or curriculum runs); grouped by task.
      notes: rule label → why it runs on another architecture than the rest (said in the tables).
      preamble: Markdown lines under the title (budget, command).
      skipped: one line per run that could not run (with the reason).
    """
    notes = notes or {}
    os.makedirs(out_dir, exist_ok=True)
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(r.get("task_instance", r["task"]), []).append(r)
    lines = [f"# {title}", "", *preamble, ""]
    pngs: list[str] = []
    for k, (task, recs) in enumerate(groups.items()):
        key = _slug(task)
        if any(is_curriculum(r) for r in recs):
            sec, p = curriculum_section([r for r in recs if is_curriculum(r)], notes, out_dir, key)
        else:
            sec, p = plain_section(recs, notes, out_dir, key)
        lines += sec
        pngs += p
    if notes:
        lines += ["† Where a rule departs from the shared recipe (every rule runs on the same architecture family; "
                  "a rule whose mechanism needs its own variant gets the closest equivalent):", ""]
        lines += [f"- **{k}**: {v}" for k, v in notes.items()]
        lines.append("")
    skipped = list(skipped)
    if skipped:
        lines += ["Not run:", ""] + [f"- {s}" for s in skipped] + [""]
    ms = sorted({machine_of(r) for r in records})
    dates = sorted({_date(r) for r in records})
    cmds = sorted({command_of(r) for r in records})
    lines += [f"Machine: {', '.join(ms) or '?'}; dates: {', '.join(dates) or '?'}; produced by: "
              + "; ".join(f"`{c}`" for c in cmds), ""]
    lines.append("µs/sample is the median compiled update step's time divided by the batch; peak MB is the compiled "
                 "step's peak memory (XLA memory analysis); FLOPs are XLA's count of one update step × steps "
                 "(learner updates only: evaluation and data generation are not counted).")
    path = os.path.join(out_dir, "report.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path, pngs


def to_tensorboard(logdir: str, report_md: str, pngs: list[str]):
    """Put the report and its plots in a TensorBoard run (``<logdir>``): the comparison dashboard's Text and Images."""
    from localrules import tb

    w = tb.Writer(logdir)
    w.text("comparison/report", report_md, 0)
    for p in pngs:
        with open(p, "rb") as f:
            data = f.read()
        wd, ht = png_size(data)
        w.image(f"comparison/{os.path.splitext(os.path.basename(p))[0]}", data, wd, ht, 0)
    w.close()


# ------------------------------------------------------------------------------------------------ CLI


USAGE = ("usage: python -m localrules.report <results.jsonl or sweep folder> ... [readme=README.md] [out=FILE] "
         "[compare=DIR]\n"
         "Writes the generated Results block (every number with its command, machine and date) into README.md "
         "between the results markers, into FILE, or to stdout; compare=DIR also writes the rule-vs-rule report "
         "DIR/report.md with its PNG plots (accuracy vs FLOPs, R-matrix heatmaps) and a TensorBoard run "
         "DIR/comparison from the same records.")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or any(a in ("-h", "--help", "help") for a in argv):
        print(USAGE)
        return 0 if argv else 2
    paths, readme, out, compare_dir = [], None, None, None
    for a in argv:
        k, eq, v = a.partition("=")
        if eq and k == "readme":
            readme = v
        elif eq and k == "compare":
            compare_dir = v
        elif eq and k == "out":
            out = v
        elif eq and not os.path.exists(a):
            print(f"error: unknown option {k!r}; use readme=README.md, out=FILE or compare=DIR (and results.jsonl "
                  "paths)",
                  file=sys.stderr)
            return 2
        else:
            paths.append(a)
    try:
        if not paths:
            raise ReportError("no results files given; pass <out>/<sweep>/results.jsonl files, e.g. runs/*/results.jsonl")
        records = load_records(paths)
        block = results_block(records, "python -m localrules.report " + shlex.join(argv))
        if compare_dir:
            from localrules.compare import notes_for

            cmds = sorted({command_of(r) for r in records})
            path, pngs = compare_report(
                records, compare_dir, title="Rule vs rule: " + ", ".join(sorted({r.get("sweep") or r["task"]
                                                                                for r in records})),
                notes=notes_for(records),
                preamble=["Built by `python -m localrules.report " + shlex.join(argv) + "` from the records of: "
                          + "; ".join(f"`{c}`" for c in cmds) + "."])
            with open(path, encoding="utf-8") as f:
                to_tensorboard(os.path.join(compare_dir, "comparison"), f.read(), pngs)
            print(f"{path}: {len(records)} records, {len(pngs)} plots; dashboard: tensorboard --logdir {compare_dir}")
        if readme:
            try:
                with open(readme, encoding="utf-8") as f:
                    text = f.read()
            except OSError as e:
                raise ReportError(f"cannot read {readme}: {e.strerror}") from None
            new = replace_block(text, block, readme)
            with open(readme, "w", encoding="utf-8") as f:
                f.write(new)
            print(f"{readme}: results block regenerated from {len(records)} records")
        elif out:
            with open(out, "w", encoding="utf-8") as f:
                f.write(block + "\n")
            print(f"{out}: {len(records)} records")
        else:
            print(block)
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
