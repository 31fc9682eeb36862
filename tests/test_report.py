"""The comparison tooling: paper tables (sweeps/tables) and ``localrules.reproduce``, the rule-vs-rule report with its
PNG plots (``localrules.report.compare_report``) and the README Results block generated from records.

Records are built by hand here (their numbers are chosen so every derived number can be checked), except one tiny
end-to-end ``reproduce`` run on the procedural task."""

import json
import os
import struct
import zlib

import numpy as np
import pytest

from localrules import report, reproduce
from localrules.cli import CLIError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------------------------------------ hand-made records


def plain(rule, accs, *, flops_per_sample=1e6, batch=100, evals=(0, 200, 400), sweep="s", task="fashion_mnist",
          arch="mlp_784-256-10", argv=None, status="ok", wall=12.0):
    """A plain-run record whose evaluation k has accuracy accs[k] (list per seed)."""
    hist = [{"step": s // batch, "samples": s, "train_flops": s * flops_per_sample, "test/acc": list(a)}
            for s, a in zip(evals, accs)]
    final = np.asarray(accs[-1], float)
    return {"run_id": f"{rule}-{task}-x", "sweep": sweep, "rule": rule, "rule_label": rule, "task": task,
            "task_instance": task, "arch": arch, "seeds": list(range(len(final))), "status": status,
            "acc_mean": float(final.mean()), "acc_sd": float(final.std(ddof=1)) if final.size > 1 else 0.0,
            "samples": evals[-1],
            "history": hist, "wall_s": wall,
            "compute": {"flops_per_step": flops_per_sample * batch, "flops_per_sample": flops_per_sample,
                        "train_flops": flops_per_sample * evals[-1], "step_ms_median": 2.0,
                        "peak_bytes_step": 3 * 2**20},
            "platform": {"backend": "cpu", "device": "cpu", "n_devices": 1}, "date": "2026-12-03T07:00:00+00:00",
            "argv": argv or ["/x/localrules/sweep.py", "sweep=foundation_rules"]}


def curriculum_rec(rule, R_mean, init, *, sweep="c", graduated=(True, False), argv=None):
    T = len(R_mean)
    stages = [f"S{i + 1}" for i in range(T)]
    R = np.asarray(R_mean)
    from localrules.curriculum import gem_metrics

    m = gem_metrics(R, np.asarray(init))
    per_stage = [{"stage": s, "threshold": 0.9, "graduated": [g, g], "samples_to_graduate": [1024, 2048] if g else
                  [-1, -1], "flops_to_graduate": [1024e6, 2048e6] if g else [None, None], "samples_trained": 4096,
                  "fixed_budget_acc": {"65536": None, "262144": None}, "final": {"acc": [R[i, i]] * 2},
                  "curve_area": 0.5} for i, (s, g) in enumerate(zip(stages, graduated))]
    curves = {s: [[1024, [0.3, 0.4]], [2048, [0.6, 0.7]], [4096, [R[i, i]] * 2]] for i, s in enumerate(stages)}
    cur = {"stages": stages, "test_stages": stages, "R_mean": R.tolist(), "R_sd": np.zeros_like(R).tolist(),
           "init_mean": list(init), "per_stage": per_stage, "curves": curves, **m, "ACC_sd": 0.01, "BWT_sd": 0.02,
           "FWT_sd": 0.03}
    rec = plain(rule, [[m["ACC"], m["ACC"]]], sweep=sweep, task="nursery", arch="mlp_6144-256-19",
                argv=argv or ["/x/localrules/compare.py", "budget=smoke"])
    rec.update({"task_instance": "nursery/developmental", "curriculum": cur, "acc_mean": m["ACC"], "acc_sd": 0.01})
    rec.pop("history")
    return rec


def _png_pixels(path):
    """(width, height, first pixel rows decoded) of a PNG written by matplotlib (8-bit RGBA, no interlace)."""
    data = open(path, "rb").read()
    w, h = report.png_size(data)
    pos, idat = 8, b""
    while pos < len(data):
        n = struct.unpack(">I", data[pos:pos + 4])[0]
        kind = data[pos + 4:pos + 8]
        if kind == b"IDAT":
            idat += data[pos + 8:pos + 8 + n]
        pos += 12 + n
    raw = zlib.decompress(idat)
    return w, h, raw


# ------------------------------------------------------------------------------------------------ tables


@pytest.mark.parametrize("name", reproduce.table_names())
def test_every_table_row_names_one_run_of_an_existing_preset_on_its_declared_dataset(name):
    from localrules.run import config_dict

    table = reproduce.load_table(name)
    assert table.rows
    for row in table.rows:
        cfg = reproduce.row_config(table, row, "full", "/nonexistent", "n", [])
        assert config_dict(cfg)["task"]["_name"] == row.dataset, row.label
        assert (row.paper is not None) or row.paper_status, row.label
        smoke = reproduce.row_config(table, row, "smoke", "/nonexistent", "n", [])
        assert smoke.epochs == 0 and smoke.samples == 4 * smoke.batch_size and smoke.seeds <= 2


def test_the_table_numbers_are_the_presets_numbers():
    """A spot check of the transcription: FF's 1.36 % test error is 98.64 % accuracy; PEPITA's FC MNIST row."""
    ff = {r.label: r for r in reproduce.load_table("ff_mnist").rows}
    assert ff["FF supervised, 4x2000, goodness (paper 3.3)"].paper == pytest.approx(98.64)
    pep = {r.label: r for r in reproduce.load_table("pepita_table1").rows}
    assert (pep["FC 1x1024, MNIST: PEPITA"].paper, pep["FC 1x1024, MNIST: PEPITA"].paper_sd) == (98.01, 0.09)
    assert pep["FC 1x1024, MNIST: BP"].select == {"rule": "backprop"}


def _write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return str(path)


TINY_PRESET = """
name = "tiny"
[base]
task = "prototypes"
"task.size" = 8
"task.test_size" = 200
"arch.hidden" = [16]
batch_size = 8
timing_steps = 0
progress = false
[[runs]]
rule = "backprop"
[[runs]]
rule = "feedback_alignment"
"""


@pytest.mark.parametrize("body, msg", [
    ('[[rows]]\nlabel = "a"\npreset = "P"\npaper = 50\nbogus = 1\n', "unknown keys ['bogus']"),
    ('[[rows]]\nlabel = "a"\npreset = "P"\n', "no paper number"),
    ('[[rows]]\nlabel = "a"\npreset = "P"\npaper = 150\n', "must be a percentage"),
    ('title = "t"\n', "has no [[rows]]"),
    ('[budgets.huge]\n[[rows]]\nlabel = "a"\npreset = "P"\npaper = 5\n', "not a budget"),
])
def test_bad_table_files_fail_with_one_line_naming_the_fix(tmp_path, body, msg):
    preset = _write(tmp_path / "p.toml", TINY_PRESET)
    path = _write(tmp_path / "t.toml", body.replace('"P"', json.dumps(preset)))
    with pytest.raises(CLIError, match=msg.replace("[", r"\[").replace("]", r"\]")) as e:
        reproduce.load_table(path)
    assert "\n" not in str(e.value)


def test_a_select_that_matches_two_runs_is_refused(tmp_path):
    preset = _write(tmp_path / "p.toml", TINY_PRESET)
    table = reproduce.load_table(_write(tmp_path / "t.toml",
                                        f'[[rows]]\nlabel = "a"\npreset = {json.dumps(preset)}\npaper = 5\n'))
    with pytest.raises(CLIError, match="matches 2 of the 2 runs"):
        reproduce.row_config(table, table.rows[0], "full", str(tmp_path), "n", [])


def test_reproduce_runs_a_table_prints_paper_ours_difference_and_lists_missing_data_as_skipped(tmp_path, capsys):
    preset = _write(tmp_path / "p.toml", TINY_PRESET)
    mnist = _write(tmp_path / "m.toml", TINY_PRESET.replace('task = "prototypes"\n"task.size" = 8\n"task.test_size" = 200',
                                                          'task = "mnist"'))
    table = _write(tmp_path / "t.toml", f"""
title = "Tiny table"
[budgets.smoke]
seeds = 2
[[rows]]
label = "tiny BP"
preset = {json.dumps(preset)}
select = {{ rule = "backprop" }}
dataset = "prototypes"
paper = 60.0
paper_sd = 1.5
[[rows]]
label = "needs MNIST"
preset = {json.dumps(mnist)}
select = {{ rule = "backprop" }}
dataset = "mnist"
paper_status = "unverified: check the PDF"
""")
    out = str(tmp_path / "runs")
    assert reproduce.main([table, "budget=smoke", f"out={out}"]) == 0
    text = capsys.readouterr().out
    recs = [json.loads(ln) for ln in open(os.path.join(out, "t-smoke", "results.jsonl"))]
    assert len(recs) == 1
    rec = recs[0]
    assert rec["reproduce"]["row"] == "tiny BP" and rec["reproduce"]["paper"] == 60.0
    assert rec["samples"] == 32 and len(rec["seeds"]) == 2
    line = next(ln for ln in text.splitlines() if ln.startswith("tiny BP"))
    ours = f"{100 * rec['acc_mean']:.2f} ± {100 * rec['acc_sd']:.2f} (n=2)"
    assert "60.00 ± 1.50" in line and ours in line and f"{100 * rec['acc_mean'] - 60:+.2f}" in line
    assert f"{rec['compute']['train_flops']:.3g}" in line
    skipped = next(ln for ln in text.splitlines() if ln.strip().startswith("skipped needs MNIST"))
    assert "mnist" in skipped and "LOCALRULES_OFFLINE" in skipped
    # the same command again trains nothing and prints the same numbers
    assert reproduce.main([table, "budget=smoke", f"out={out}"]) == 0
    assert "0 to run" in capsys.readouterr().out
    assert len(open(os.path.join(out, "t-smoke", "results.jsonl")).read().splitlines()) == 1


@pytest.mark.parametrize("argv, msg", [
    (["pepita_tabel1"], "Did you mean 'pepita_table1'"),
    (["pepita_table1", "budget=huge"], "choose smoke, reduced or full"),
    (["budget=smoke"], "no table given"),
])
def test_reproduce_command_line_mistakes_are_one_line(capsys, argv, msg):
    assert reproduce.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and msg in err and "\n" not in err


# ------------------------------------------------------------------------------------------------ README block


def test_command_of_turns_a_module_path_into_a_python_m_command():
    assert report.command_of({"argv": ["/w/localrules/reproduce.py", "ccl_mlp", "budget=reduced"]}) == \
        "python -m localrules.reproduce ccl_mlp budget=reduced"
    assert report.command_of({"argv": ["/w/localrules/sweep.py", "arch.hidden=[1, 2]"]}) == \
        "python -m localrules.sweep 'arch.hidden=[1, 2]'"
    assert report.command_of({}) == "(command not recorded)"


def test_results_block_states_numbers_commands_machine_date_and_where_a_local_rule_loses():
    bp = plain("backprop", [[0.1, 0.1], [0.5, 0.6], [0.80, 0.82]], flops_per_sample=2e6)
    fa = plain("feedback_alignment", [[0.1, 0.1], [0.4, 0.5], [0.70, 0.74]], flops_per_sample=3e6,
               argv=["/x/localrules/reproduce.py", "t", "budget=reduced"])
    block = report.results_block([bp, fa], "python -m localrules.report x")
    assert "81.00 ± 1.41" in block and "72.00 ± 2.83" in block
    assert "(gap -9.00)" in block
    assert "feedback_alignment loses to backprop** by 9.00 points" in block and "at 1.50× backprop's FLOPs" in block
    assert "`python -m localrules.reproduce t budget=reduced`" in block and "cpu: cpu" in block
    assert "2026-12-03" in block and "3 / 2" in block


def test_a_hebbian_rule_is_stated_against_its_random_frozen_features_control():
    bp = plain("backprop", [[0.1, 0.1], [0.80, 0.82]], evals=(0, 200))
    sh = plain("softhebb", [[0.1, 0.1], [0.86, 0.88]], evals=(0, 200))
    rnd = plain("softhebb", [[0.1, 0.1], [0.78, 0.79]], evals=(0, 200))
    rnd["config"] = {"rule": {"_name": "softhebb", "plasticity": "none"}}  # a record written before the label knew
    block = report.results_block([bp, sh, rnd], "python -m localrules.report x")
    assert "| softhebb(plasticity=none) |" in block
    assert "**softhebb beats its random frozen features** (softhebb(plasticity=none)) by 8.50 points" in block
    rnd["acc_mean"] = 0.9
    assert "**softhebb does not beat its random frozen features**" in report.results_block([bp, sh, rnd], "x")


def test_reproduced_rows_show_the_paper_number_and_pair_with_backprop_on_the_same_architecture():
    fc_bp = plain("backprop", [[0.1, 0.1], [0.5, 0.5], [0.98, 0.98]], arch="mlp_784-1024-10")
    conv_bp = plain("backprop", [[0.1, 0.1], [0.5, 0.5], [0.99, 0.99]], arch="pepita_conv_32")
    fc = plain("pepita", [[0.1, 0.1], [0.5, 0.5], [0.97, 0.97]], arch="mlp_784-1024-10")
    for r, (row, paper) in zip((fc_bp, conv_bp, fc), (("FC: BP", 98.63), ("Conv: BP", 98.86), ("FC: PEPITA", 98.01))):
        r["reproduce"] = {"table": "pepita_table1", "row": row, "paper": paper, "paper_sd": 0.1, "budget": "full"}
    block = report.results_block([fc_bp, conv_bp, fc], "cmd")
    line = next(ln for ln in block.splitlines() if ln.startswith("| pepita (FC: PEPITA)"))
    assert "98.01 ± 0.10 (ours -1.01)" in line and "(gap -1.00)" in line  # vs the FC backprop, not the conv one


def test_curriculum_records_report_acc_bwt_fwt_and_graduated_stages():
    R = [[0.9, 0.3], [0.8, 0.7]]
    bp = curriculum_rec("backprop", R, [0.25, 0.2], graduated=(True, True))
    fa = curriculum_rec("feedback_alignment", [[0.9, 0.2], [0.5, 0.6]], [0.25, 0.2])
    block = report.results_block([bp, fa], "cmd")
    acc_bp, acc_fa = np.mean(R[1]), np.mean([0.5, 0.6])
    assert f"{100 * acc_bp:.2f} ± 1.00" in block
    assert f"-0.100" in block  # BP's BWT = 0.8 - 0.9
    assert "| 2/2 |" in block and "| 1/2 |" in block
    assert f"loses to backprop** by {100 * (acc_bp - acc_fa):.2f} points of ACC" in block


def test_readme_regeneration_changes_only_the_marked_block(tmp_path, capsys):
    readme = _write(tmp_path / "README.md", f"# t\nintro\n## Results\n{report.BEGIN}\nold numbers\n{report.END}\n"
                                            "## After\nkept\n")
    res = tmp_path / "runs" / "s"
    os.makedirs(res)
    with open(res / "results.jsonl", "w") as f:
        f.write(json.dumps(plain("backprop", [[0.1], [0.5], [0.9]])) + "\n")
    assert report.main([str(res / "results.jsonl"), f"readme={readme}"]) == 0
    text = open(readme).read()
    assert text.startswith("# t\nintro\n## Results\n" + report.BEGIN + "\n") and text.endswith(
        report.END + "\n## After\nkept\n")
    assert "old numbers" not in text and "90.00 ± 0.00" in text
    once = text
    assert report.main([str(res / "results.jsonl"), f"readme={readme}"]) == 0  # idempotent
    assert open(readme).read() == once
    assert report.main([str(res), f"readme={readme}"]) == 0  # a sweep folder works too
    assert "90.00 ± 0.00" in open(readme).read()


@pytest.mark.parametrize("readme_text, msg", [("no markers\n", "no '<!-- results:begin -->'"),
                                              (f"{report.BEGIN}\n{report.END}\n{report.BEGIN}\n{report.END}\n",
                                               "more than one results block")])
def test_readme_without_exactly_one_marker_pair_is_refused_and_left_alone(tmp_path, capsys, readme_text, msg):
    readme = _write(tmp_path / "README.md", readme_text)
    res = _write(tmp_path / "results.jsonl", json.dumps(plain("backprop", [[0.1], [0.5], [0.9]])) + "\n")
    assert report.main([res, f"readme={readme}"]) == 2
    err = capsys.readouterr().err.strip()
    assert msg in err and "\n" not in err
    assert open(readme).read() == readme_text


def test_report_without_records_is_refused(tmp_path, capsys):
    empty = _write(tmp_path / "results.jsonl", "")
    assert report.main([empty]) == 2
    assert "no records" in capsys.readouterr().err
    assert report.main([str(tmp_path / "missing.jsonl")]) == 2
    assert "no such results file" in capsys.readouterr().err


def test_the_repository_readme_has_one_results_block():
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    assert text.count(report.BEGIN) == 1 and text.count(report.END) == 1
    assert text.index(report.BEGIN) < text.index(report.END)


# ------------------------------------------------------------------------------------------------ compare report


def test_compare_report_has_fixed_budget_accuracies_costs_and_plots_that_match_the_table(tmp_path):
    evals = (0, 200, 400, 800)
    bp = plain("backprop", [[0.1, 0.1], [0.5, 0.5], [0.7, 0.7], [0.9, 0.9]], flops_per_sample=1e6, evals=evals)
    ff = plain("forward_forward", [[0.1, 0.1], [0.3, 0.3], [0.4, 0.4], [0.6, 0.6]], flops_per_sample=4e6,
               evals=evals, arch="ff_mlp_794-256-10")
    path, pngs = report.compare_report([bp, ff], str(tmp_path), title="T", notes={"forward_forward": "label units"})
    md = open(path).read()
    # fixed samples: the common evaluation nearest half the shortest run (400); fixed FLOPs: the cheapest run's
    # total (backprop: 800 samples × 1e6 = 8e8) — FF's last evaluation within it is at 200 samples (8e8 FLOPs)
    assert "**400 samples**" in md and "**8e+08 training FLOPs**" in md
    bp_row = next(ln for ln in md.splitlines() if ln.startswith("| backprop |"))
    ff_row = next(ln for ln in md.splitlines() if ln.startswith("| forward_forward |"))
    assert "90.00 ± 0.00" in bp_row and "70.00 ± 0.00" in bp_row and "(reference)" in bp_row
    assert "-30.00 points" in ff_row and "40.00 ± 0.00" in ff_row and "30.00 ± 0.00 @ 8e+08" in ff_row
    assert "ff_mlp_794-256-10 †" in ff_row and "- **forward_forward**: label units" in md
    assert "| 4.000 |" in ff_row and "| 20.0 |" in ff_row and "| 3.0 |" in ff_row  # MFLOP, µs/sample, MB
    assert [os.path.basename(p) for p in pngs] == ["acc_vs_flops_fashion_mnist.png"]
    w, h, raw = _png_pixels(pngs[0])
    assert (w, h) == (1100, 500) and len(raw) > w * h  # decodes: a real image, not an empty file
    assert "![accuracy against training FLOPs" in md


def test_accuracy_vs_flops_plot_draws_one_line_per_rule_at_the_recorded_points(tmp_path):
    """The plot's data are the records': matplotlib's line objects hold each rule's (FLOPs, mean accuracy)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bp = plain("backprop", [[0.1, 0.1], [0.5, 0.7], [0.8, 0.9]], flops_per_sample=1e6)
    fa = plain("feedback_alignment", [[0.1, 0.1], [0.4, 0.4], [0.6, 0.6]], flops_per_sample=2e6)
    captured = {}
    real_save = report._save

    def keep(fig, p):
        captured["lines"] = [(ln.get_label(), ln.get_xdata().tolist(), ln.get_ydata().tolist())
                             for ln in fig.axes[0].get_lines()]
        return real_save(fig, p)

    report._save = keep
    try:
        report.plot_accuracy_vs_flops([bp, fa], str(tmp_path / "a.png"), "t")
    finally:
        report._save = real_save
    plt.close("all")
    (l1, x1, y1), (l2, x2, y2) = captured["lines"]
    assert l1.startswith("backprop") and x1 == [2e8, 4e8] and y1 == pytest.approx([0.6, 0.85])
    assert l2.startswith("feedback_alignment") and x2 == [4e8, 8e8] and y2 == pytest.approx([0.4, 0.6])


def test_compare_report_for_a_curriculum_has_r_summaries_graduation_and_heatmaps(tmp_path):
    bp = curriculum_rec("backprop", [[0.95, 0.3], [0.9, 0.8]], [0.25, 0.2], graduated=(True, True))
    pc = curriculum_rec("predictive_coding", [[0.9, 0.2], [0.5, 0.6]], [0.25, 0.2])
    path, pngs = report.compare_report([bp, pc], str(tmp_path), title="T")
    md = open(path).read()
    bp_row = next(ln for ln in md.splitlines() if ln.startswith("| backprop | mlp"))
    assert "85.00 ± 1.00" in bp_row and "-0.050 ± 0.020" in bp_row and "2/2" in bp_row
    pc_grad = next(ln for ln in md.splitlines() if ln.startswith("| predictive_coding | 1,536 (2/2)"))
    assert "— (0/2)" in pc_grad
    names = sorted(os.path.basename(p) for p in pngs)
    assert names == ["R_nursery_developmental_backprop.png", "R_nursery_developmental_predictive_coding.png",
                     "stage_acc_vs_flops_nursery_developmental.png"]
    for p in pngs:
        w, h, _ = _png_pixels(p)
        assert w > 100 and h > 100


def test_report_goes_to_tensorboard_as_text_and_images(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    bp = plain("backprop", [[0.1], [0.5], [0.9]])
    path, pngs = report.compare_report([bp], str(tmp_path), title="T")
    md = open(path).read()
    report.to_tensorboard(str(tmp_path / "comparison"), md, pngs)
    acc = EventAccumulator(str(tmp_path / "comparison"), size_guidance={"tensors": 0})
    acc.Reload()
    tags = acc.Tags()["tensors"]
    assert "comparison/report" in tags and "comparison/acc_vs_flops_fashion_mnist" in tags
    assert acc.SummaryMetadata("comparison/acc_vs_flops_fashion_mnist").plugin_data.plugin_name == "images"
    w, h, png = tensor_util.make_ndarray(acc.Tensors("comparison/acc_vs_flops_fashion_mnist")[0].tensor_proto)
    assert png == open(pngs[0], "rb").read() and (int(w), int(h)) == report.png_size(png)
    text = tensor_util.make_ndarray(acc.Tensors("comparison/report")[0].tensor_proto).reshape(-1)[0].decode()
    assert text == md


def test_report_cli_builds_the_rule_vs_rule_report_from_existing_records(tmp_path, capsys):
    res = tmp_path / "runs" / "c"
    os.makedirs(res)
    with open(res / "results.jsonl", "w") as f:
        for rec in (curriculum_rec("backprop", [[0.95, 0.3], [0.9, 0.8]], [0.25, 0.2], graduated=(True, True)),
                    curriculum_rec("pepita", [[0.9, 0.2], [0.5, 0.6]], [0.25, 0.2])):
            f.write(json.dumps(rec) + "\n")
    out = tmp_path / "cmp"
    assert report.main([str(res / "results.jsonl"), f"compare={out}", f"out={tmp_path / 'block.md'}"]) == 0
    md = open(out / "report.md").read()
    assert "| pepita | mlp" in md and "compare=" in md  # the command that built it is stated
    assert sorted(p.name for p in out.glob("*.png")) == ["R_nursery_developmental_backprop.png",
                                                         "R_nursery_developmental_pepita.png",
                                                         "stage_acc_vs_flops_nursery_developmental.png"]
    assert any((out / "comparison").iterdir())  # the TensorBoard run
