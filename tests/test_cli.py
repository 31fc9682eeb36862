"""The command line as a user meets it: one-line errors that name the fix, --help, sweep files, the lock, the torn
results line. Faults (Ctrl-C, SIGKILL during training, checkpoint and results writes), corrupt and foreign
checkpoints, full disks and more bad inputs are in tests/test_reliability.py."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from localrules import sweep
from localrules.cli import CLIError

TINY = ["task=prototypes", "task.size=8", "task.test_size=200", "arch.hidden=[16]", "batch_size=16", "timing_steps=0"]


def _cli(*args, cwd=None, timeout=600):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "localrules.sweep", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=cwd)


@pytest.mark.parametrize("args, needle", [
    (["rule=nonsense"], "unknown rule 'nonsense'"),
    (["rule=softheb"], "Known rules:"),
    (["optimizer.lrr=3"], "Did you mean 'optimizer.lr'?"),
    (["batch_sise=3"], "Did you mean 'batch_size'?"),
    (["arch.hidden=[a]"], "expected an integer"),
    (["optimizer.lr=fast"], "expected a number"),
    (["arch=transformer"], "unknown architecture 'transformer'"),
    (["task=imagenet"], "unknown task 'imagenet'"),
    (["rule"], "write overrides as key=value"),
    (["optimizer=adam"], "optimizer is a group of settings"),
    (["sweep=does_not_exist"], "sweep file 'does_not_exist' not found"),
])
def test_bad_command_lines_fail_with_one_line_naming_the_problem(args, needle, capsys):
    """Every mistake gets exit code 2 and one line on stderr — never a traceback."""
    assert sweep.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("args, needle", [
    (["optimizer.lr=-1"], "optimizer.lr=-1.0: the learning rate must be a finite number > 0"),
    (["batch_size=0"], "batch_size=0: must be a positive integer"),
    (["arch.hidden=[0]"], "every width must be a positive integer"),
    (["samples=1", "batch_size=8"], "less than one batch"),
])
def test_out_of_range_values_are_refused_before_training_starts(args, needle, tmp_path, capsys):
    """Values with the right type but an impossible meaning are refused with the fix, not trained on."""
    assert sweep.main([*args, f"out={tmp_path}", "progress=false"]) == 2
    err = capsys.readouterr().err
    assert needle in err, err
    assert not os.path.exists(tmp_path / "default" / "results.jsonl")


def test_help_lists_every_field_with_its_documentation_and_every_rule(capsys):
    """--help is the reference: every top-level key, each rule's own fields, the registries."""
    assert sweep.main(["--help"]) == 0
    out = capsys.readouterr().out
    for needle in ("optimizer.lr=0.001", "Peak learning rate", "batch_size=100", "rule.feedback_scale",
                   "feedback_alignment", "Tasks (task=<name>)", "arch.hidden=[256, 256]"):
        assert needle in out, needle


@pytest.mark.parametrize("text, needle", [
    ("[grid\nrule = 1", "is not valid TOML"),
    ("", "defines no runs"),
    ('[grid]\nrule = []', "zero runs"),
    ('[grid]\nrule = "backprop"', "must be a list"),
    ('bogus = 1\n[base]\nrule = "backprop"', "unknown top-level keys"),
    ('[base]\n"optimizer.lrr" = 1', "Did you mean 'optimizer.lr'?"),
])
def test_malformed_or_empty_sweep_files_are_refused_with_one_line(text, needle, tmp_path, capsys):
    p = tmp_path / "s.toml"
    p.write_text(text)
    assert sweep.main([f"sweep={p}", f"out={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err


def test_a_grid_sweep_expands_the_cartesian_product_and_command_line_tokens_override_it(tmp_path):
    p = tmp_path / "g.toml"
    p.write_text('name = "g"\n[base]\nsamples = 64\n[grid]\nrule = ["backprop", "fa"]\n"optimizer.lr" = [0.1, 0.01]\n')
    cfgs, _ = sweep.parse([f"sweep={p}"])
    assert len(cfgs) == 4 and {c.name for c in cfgs} == {"g"}
    cfgs, _ = sweep.parse([f"sweep={p}", "optimizer.lr=0.5"])
    assert len(cfgs) == 2 and {c.optimizer.lr for c in cfgs} == {0.5}


def test_a_second_process_on_the_same_sweep_directory_is_refused(tmp_path):
    """Two writers on one results.jsonl would corrupt it; the lock refuses the second with a clear line."""
    os.makedirs(tmp_path / "default")
    with sweep.SweepLock(str(tmp_path / "default")):
        r = _cli(f"out={tmp_path}", *TINY, "samples=64")
    assert r.returncode == 2
    assert "another process" in r.stderr and "is running the sweep" in r.stderr


def test_an_unwritable_output_directory_is_reported_with_the_fix(tmp_path, capsys):
    """out= pointing below a regular file cannot be created (also as root): one line with the fix."""
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert sweep.main([f"out={blocker}/runs", *TINY]) == 2
    err = capsys.readouterr().err
    assert "cannot write to output directory" in err and "writable out=" in err


def test_a_diverging_run_is_recorded_as_diverged_and_the_sweep_goes_on(tmp_path):
    """lr = 1e6 with SGD blows up; the run must be recorded with status 'diverged' and the step, and the next
    run of the sweep must still run."""
    p = tmp_path / "d.toml"
    p.write_text('[base]\nsamples = 320\n"optimizer.name" = "sgd"\n[grid]\n"optimizer.lr" = [1e12, 0.01]\n')
    assert sweep.main([f"sweep={p}", f"out={tmp_path}", *TINY, "progress=false", "checkpoint=false"]) == 0
    recs = sweep.read_results(str(tmp_path / "default" / "results.jsonl"))
    by_lr = {r["config"]["optimizer"]["lr"]: r for r in recs}
    assert by_lr[1e12]["status"] == "diverged" and by_lr[1e12]["diverged_at"][0] >= 0
    assert by_lr[0.01]["status"] == "ok"


def test_a_torn_last_line_of_results_is_dropped_and_repaired(tmp_path):
    """A kill during the results write leaves half a line: readers skip it and the next append starts clean."""
    p = tmp_path / "results.jsonl"
    p.write_text(json.dumps({"run_id": "a"}) + "\n" + '{"run_id": "b", "fin')
    assert [r["run_id"] for r in sweep.read_results(str(p))] == ["a"]
    sweep.repair_results(str(p))
    sweep.append_result(str(p), {"run_id": "c"})
    assert [r["run_id"] for r in sweep.read_results(str(p))] == ["a", "c"]


def test_the_default_job_runs_from_the_command_line_and_prints_a_table(tmp_path):
    """The README's first command, on a tiny budget."""
    r = _cli(f"out={tmp_path}", *TINY, "samples=320", "rule=backprop")
    assert r.returncode == 0, r.stderr
    assert "test acc" in r.stdout and "backprop" in r.stdout
    recs = sweep.read_results(str(tmp_path / "default" / "results.jsonl"))
    rec = recs[0]
    for k in ("versions", "platform", "git", "config", "compute", "date"):
        assert k in rec
    assert rec["compute"]["flops_per_step"] > 0
