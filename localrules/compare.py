"""``python -m localrules.compare [budget=smoke|reduced|full] [presets=[...]] [out=runs] [name=...] [key=value ...]``.

Every rule plus backprop on (a) the nursery curriculum and (b) Fashion-MNIST, each with one architecture family,
data order, sample budget and seeds: the sweep presets ``sweeps/compare_nursery.toml`` and
``sweeps/compare_fashion_mnist.toml`` (their descriptions say which rules need their own architecture and what
stands in). Writes ``<out>/<name>/report.md`` (default name ``compare-<budget>``) with final accuracy, accuracy at
fixed sample and FLOP budgets, FLOPs/sample, time/sample, peak memory, ACC/BWT/FWT, samples-to-graduate, and PNG
plots (accuracy against training FLOPs per rule; per-stage curves and R-matrix heatmaps per rule); the same report
and plots go to the TensorBoard run ``<out>/<name>/comparison`` beside every run's own curves
(``tensorboard --logdir <out>/<name>``).

Budgets: ``full`` = the presets as written (Fashion-MNIST 10 epochs × 3 seeds; nursery at the spec's 500,000
samples per stage × 5 seeds); ``reduced`` (CPU-affordable) = Fashion-MNIST 2 epochs × 3 seeds, nursery 65,536
samples per stage (S6 131,072) × 2 seeds; ``smoke`` = 4 batches of Fashion-MNIST and 1,024 samples of S1 and S2,
2 seeds (a mechanics check, not a result). Tokens ``key=value`` override every run (e.g. ``seeds=1``).
Started again, finished runs are skipped and unfinished ones resume from their checkpoints.
"""

from __future__ import annotations

import dataclasses
import os
import sys

from localrules.cli import CLIError, apply_overrides, split_token
from localrules.config import RunConfig

PRESETS = ("compare_fashion_mnist", "compare_nursery")

#: Overrides per preset and budget (``full`` = none: the preset as written).
BUDGETS: dict[str, dict[str, list[tuple[str, object]]]] = {
    "compare_fashion_mnist": {
        "reduced": [("epochs", 2.0), ("eval_every", 150)],
        "smoke": [("epochs", 0.0), ("samples", 400), ("eval_every", 1), ("seeds", 2), ("timing_steps", 2),
                  ("checkpoint", False)],
    },
    "compare_nursery": {
        "reduced": [("task.budget", 65_536), ("task.budget_s6", 131_072), ("seeds", 2)],
        "smoke": [("task.stages", ("S1", "S2")), ("task.budget", 1024), ("task.blur_robustness", False),
                  ("seeds", 2), ("timing_steps", 2), ("checkpoint", False)],
    },
}

#: Why a rule runs on another architecture than the rest of its preset (shown in the report).
ARCH_NOTES = {
    "forward_forward": "ff_mlp with the same hidden widths: Forward-Forward feeds the label as input, so the network "
                       "has label units before the image (the curriculum forbids writing labels into image pixels), "
                       "RMS-normalised layers and a read-out from hidden layer 2 (Hinton's ffcode)",
    "softhebb": "softhebb_mlp with the same hidden widths: bias-free Hebbian layers with the soft winner-take-all "
                "activation and a linear head (SoftHebb's own layer; its convolutional softhebb_cnn has no MLP twin)",
}
#: Other differences from the shared recipe that a reader must know.
RECIPE_NOTES = {
    "meta_learned": "uses the shipped θ fmnist_mg, whose learned plasticity sets its own step size (the rule's "
                    "optimizer, not Adam); θ was meta-trained on small 64-unit networks",
    "softhebb": "rule defaults: Hebbian layers and head learn together on every step (hebbian_steps=0), not the "
                "paper's layer-by-layer phases",
}


@dataclasses.dataclass(frozen=True)
class _Item:
    label: str
    preset: str


def plan_runs(presets, budget: str, out: str, name: str, extra: list) -> tuple[list, dict]:
    """(planned rows, combos by label) for every run of every preset at ``budget``."""
    from localrules.reproduce import Row, _last, plan
    from localrules.sweep import read_sweep, sweep_path

    if budget not in ("smoke", "reduced", "full"):
        raise CLIError(f"budget={budget!r}: choose smoke, reduced or full")
    combos, rows = {}, []
    for preset in presets:
        _, cs = read_sweep(sweep_path(preset))
        for c in cs:
            d = _last(c)
            rule = d.get("rule", "backprop")
            label = f"{preset}: {rule}" + (f"({d['rule.hidden_rule']}+{d['rule.head_rule']})"
                                           if "rule.hidden_rule" in d else "")
            items = list(c) + ([] if budget == "full" else list(BUDGETS.get(preset, {}).get(budget, [])))
            combos[label] = items
            rows.append(Row(label, preset, {}, None, None, None, "comparison", "", {}))

    def cfg_of(row):
        return apply_overrides(RunConfig(), combos[row.label] + list(extra) + [("name", name), ("out", out)])

    return plan(rows, cfg_of), combos


def notes_for(records: list[dict]) -> dict[str, str]:
    """Rule label → what differs from the shared recipe (own architecture, own optimizer)."""
    out = {}
    for r in records:
        base = (r.get("compare") or {}).get("base_arch")
        note = []
        if r["rule"] in ARCH_NOTES and base and not r.get("arch", "").startswith(base):
            note.append(ARCH_NOTES[r["rule"]])
        if r["rule"] in RECIPE_NOTES:
            note.append(RECIPE_NOTES[r["rule"]])
        if note:
            out[r.get("rule_label") or r["rule"]] = "; ".join(note)
    return out


def main(argv: list[str] | None = None) -> int:
    from localrules import report
    from localrules.reproduce import run_planned

    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help", "help") for a in argv):
        print(__doc__.strip())
        return 0
    opts, extra = {}, []
    try:
        for tok in argv:
            k, v = split_token(tok)
            if k in ("budget", "out", "name", "presets"):
                opts[k] = v
            else:
                extra.append((k, v))
        budget = opts.get("budget", "reduced")
        presets = PRESETS
        if "presets" in opts:
            presets = tuple(p for p in opts["presets"].strip("[]").split(",") if p.strip())
            if not presets:
                raise CLIError("presets=[] names no preset; e.g. presets=[compare_fashion_mnist]")
        out = opts.get("out", "runs")
        name = opts.get("name", f"compare-{budget}")
        planned, _ = plan_runs(presets, budget, out, name, extra)
    except CLIError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from localrules.run import config_dict

    sweep_dir = os.path.join(out, name)
    base_arch = {}  # the architecture of each preset's backprop run: the family's reference
    for p in planned:
        if p.cfg is not None and (p.row.label.endswith(": backprop") or p.row.preset not in base_arch):
            base_arch[p.row.preset] = config_dict(p.cfg)["arch"]["_name"]
    try:
        run_planned(planned, sweep_dir, "compare",
                    lambda p: {"budget": budget, "preset": p.row.preset, "run": p.row.label,
                               "base_arch": base_arch.get(p.row.preset)})
    except CLIError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished runs are in {sweep_dir}/results.jsonl; run the same command again to resume",
              file=sys.stderr)
        return 130
    records = [p.record for p in planned if p.record is not None]
    skipped = [f"{p.row.label}: {p.skipped or p.error}" for p in planned if p.record is None]
    if not records:
        print(f"error: no run finished in {sweep_dir}; nothing to report", file=sys.stderr)
        return 1
    cmd = "python -m localrules.compare " + " ".join(argv)
    preamble = [f"Budget **{budget}**" + (" (a mechanics check: these numbers are not results)"
                                          if budget == "smoke" else "") + f"; command: `{cmd.strip()}`; presets: "
                + ", ".join(f"`sweeps/{p}.toml`" for p in presets) + " (their descriptions give the shared recipe)."]
    path, pngs = report.compare_report(records, sweep_dir, title=f"Rule vs rule: {name}",
                                       notes=notes_for(records), preamble=preamble, skipped=skipped)
    with open(path, encoding="utf-8") as f:
        md = f.read()
    report.to_tensorboard(os.path.join(sweep_dir, "comparison"), md, pngs)
    print(f"\nreport: {path} ({len(records)} runs, {len(pngs)} plots); dashboard: tensorboard --logdir {sweep_dir}")
    return 1 if any(p.error for p in planned) else 0


if __name__ == "__main__":
    sys.exit(main())
