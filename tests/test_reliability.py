"""Reliability as a user meets it (issue #11): bad input gets one clear line, faults lose nothing, results are
reproducible and traceable, and two processes cannot corrupt one sweep.

Bad inputs go through ``localrules.sweep.main`` (the CLI's own entry point, in-process: they all fail before
anything compiles) and, for a few, through ``python -m localrules.sweep`` in a subprocess. Faults are real
signals delivered to real sweep processes at points chosen at random on every run of this file (the points are in
the failure messages): ``LOCALRULES_FAULT`` (``localrules/run.py``) makes a process signal itself exactly there —
after a chunk, while orbax is writing a checkpoint, or with half of a ``results.jsonl`` line on disk. Subprocesses
share one persistent XLA compilation cache, so only the first pays for compiling.

(``tests/test_cli.py`` holds the older one-line-error cases: unknown rule/key, typos, malformed sweep files, the
in-process lock and the unwritable-``out`` case; they are not repeated here.)
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from localrules import sweep
from localrules.cli import CLIError

TINY = ["task=prototypes", "task.size=8", "task.test_size=200", "arch.hidden=[16]", "batch_size=16",
        "timing_steps=0", "progress=false"]
NURSERY = ["task=nursery", "task.stages=[S1]", "task.budget=2048", "timing_steps=0", "progress=false"]

# The sweep every fault test runs: 2 runs (seeds 0-1 and 10-11) of 20 steps in 5 chunks each, so 10 chunks, 10
# checkpoint writes and 2 results lines in all; one compiled program serves both runs.
SWEEP_TOML = """
name = "rel"
[base]
task = "prototypes"
"task.size" = 8
"task.test_size" = 200
"arch.hidden" = [16]
batch_size = 16
timing_steps = 0
progress = false
samples = 320
eval_every = 4
seeds = 2
"optimizer.lr" = 0.01
[grid]
seed = [0, 10]
"""
CHUNKS_PER_RUN, RUNS = 5, 2


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory):
    env = {k: v for k, v in os.environ.items() if k != "LOCALRULES_FAULT"}
    env.update(JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1", LOCALRULES_OFFLINE="1",
               JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("xla_cache")),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    return env


@pytest.fixture(scope="module")
def sweep_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("sweep") / "rel.toml"
    p.write_text(SWEEP_TOML)
    return p


def _cmd(*args):
    return [sys.executable, "-m", "localrules.sweep", *args]


def _foreground_cmd(*args):
    """``python -m localrules.sweep *args`` with SIGINT handled as in a terminal's foreground process."""
    boot = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
            "sys.argv = ['localrules.sweep', *sys.argv[1:]]; "
            "runpy.run_module('localrules.sweep', run_name='__main__', alter_sys=True)")
    return [sys.executable, "-c", boot, *args]


def _run(env, *args, fault=None, timeout=600):
    e = dict(env, LOCALRULES_FAULT=fault) if fault else env
    return subprocess.run(_cmd(*args), capture_output=True, text=True, env=e, timeout=timeout)


def _one_error_line(err: str) -> str:
    """The user saw exactly one non-empty line on stderr, an ``error:`` line, and no traceback."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def _records(out: Path) -> list[dict]:
    return sweep.read_results(str(out / "rel" / "results.jsonl"))


def _strip(rec: dict) -> dict:
    return {k: rec[k] for k in ("run_id", "final", "history", "diverged_at", "steps", "status", "acc_mean")}


# ------------------------------------------------------------------------------------------------- bad input

BAD_INPUTS = [
    # unknown names
    pytest.param([*NURSERY, "task.stages=[S9]"], "unknown stage(s) ['S9']; choose from ['S1'", id="unknown-stage"),
    # a key of another choice than the chosen one, a group key given at top level
    pytest.param([*TINY, "arch.channels=[8]"], "for arch=mlp: it is a setting of architecture", id="cnn-key-on-mlp"),
    pytest.param([*NURSERY, "task.size=8"], "for task=nursery: it is a setting of task prototypes",
                 id="key-of-other-task"),
    pytest.param([*TINY, "rule.t_invert=0.3"], "it is a setting of rule softhebb; choose one with rule=<name>",
                 id="key-of-other-rule"),
    pytest.param([*TINY, "data_dir=/data"], "Did you mean 'task.data_dir'", id="top-level-data-dir"),
    # wrong type
    pytest.param([*TINY, "checkpoint=maybe"], "checkpoint='maybe': expected true or false", id="bool-type"),
    pytest.param([*TINY, "batch_size=2.5"], "batch_size='2.5': expected an integer", id="int-type"),
    # out of range
    pytest.param([*TINY, "optimizer.lr=inf"], "optimizer.lr=inf: the learning rate must be a finite number > 0",
                 id="lr-inf"),
    pytest.param([*TINY, "optimizer.lr=nan"], "optimizer.lr=nan: the learning rate must be a finite number",
                 id="lr-nan"),
    pytest.param([*TINY, "rule=compose", "rule.head_optimizer.lr=0"], "rule.head_optimizer.lr=0.0: the learning rate "
                 "must be a finite number > 0", id="part-lr-0"),
    pytest.param([*TINY, "batch_size=-3"], "batch_size=-3: must be a positive integer", id="negative-batch"),
    pytest.param([*TINY, "seeds=0"], "seeds=0: must be ≥ 1", id="zero-seeds"),
    pytest.param([*TINY, "epochs=-1"], "epochs=-1.0: must be ≥ 0", id="negative-epochs"),
    pytest.param([*TINY, "eval_every=-1"], "eval_every=-1: must be ≥ 0", id="negative-eval-every"),
    pytest.param([*TINY, "rule=ff", "arch=ff_mlp", "arch.hidden=[]"], "arch.hidden=[]: give at least one positive",
                 id="ff-without-hidden-layers"),
    pytest.param([*TINY, "rule=softhebb", "arch=softhebb_mlp", "arch.hidden=[]"], "arch.hidden=[]: give at least",
                 id="softhebb-without-hidden-layers"),
    # incompatible combinations
    pytest.param([*TINY, "rule=pepita", "arch=cnn", "rule.F_init=normal_product"], "needs dense layers",
                 id="dense-only-option-on-cnn"),
    pytest.param([*TINY, "rule=ccl", "rule.loss=ae"], "rule.loss=ae needs an image-to-image architecture",
                 id="autoencoder-loss-on-mlp"),
    pytest.param([*NURSERY, "rule=ff", "arch=mlp", "rule.embed=slots"],
                 "rule.embed=slots needs an architecture with 21 label units", id="curriculum-heads-vs-rule"),
    pytest.param(["task=nursery", "task.stages=[S6]", "task.frames=1"], "task.frames=1 cannot show S6's two-frame",
                 id="stage-needs-two-frames"),
]


@pytest.mark.parametrize("args, needle", BAD_INPUTS)
def test_bad_input_is_refused_with_one_line_before_anything_is_written(args, needle, tmp_path, capsys):
    assert sweep.main([*args, f"out={tmp_path / 'out'}"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert needle in line, line
    assert not (tmp_path / "out").exists()


def test_a_conv_only_rule_option_on_an_mlp_is_refused(tmp_path, capsys):
    """``conv_*`` rule options (PEPITA's reference-code conv variants) would silently do nothing on an MLP."""
    assert sweep.main([*TINY, "rule=pepita", "arch=mlp", "rule.conv_reference_sign=true", f"out={tmp_path}"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "rule.conv_reference_sign=true: rule options named conv_* act on conv layers only" in line, line
    cfgs, _ = sweep.parse(["task=prototypes", "task.size=8", "task.test_size=200", "rule=pepita", "arch=pepita_conv",
                           "rule.conv_reference_sign=true"])
    sweep.validate(cfgs)  # on a conv architecture the same option is fine


@pytest.mark.parametrize("text, needle", [
    ('runs = []\n[base]\nrule = "backprop"', "[[runs]] is empty, so the sweep has zero runs"),
    ('[base]\nbatch_size = "ten"', "batch_size='ten': expected an integer"),
    ('[base]\n"arch.hidden" = [16]\n[grid]\n"optimizer.lr" = [0.01, 0.1, -1]', "optimizer.lr=-1.0: the learning"),
], ids=["empty-runs", "wrong-type-in-file", "third-run-invalid"])
def test_sweep_files_with_zero_runs_or_a_bad_run_are_refused_before_any_run_trains(text, needle, tmp_path, capsys):
    """A bad value in the last run of a grid is found before the first run trains: nothing is written."""
    p = tmp_path / "s.toml"
    p.write_text(text)
    assert sweep.main([f"sweep={p}", *TINY, f"out={tmp_path / 'out'}"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert needle in line, line
    assert not (tmp_path / "out").exists()


def _idx(dims, data: bytes, code=0x08) -> bytes:
    return struct.pack(">HBB", 0, code, len(dims)) + struct.pack(f">{len(dims)}I", *dims) + data


def _mnist_dir(root: Path, images: bytes) -> Path:
    d = root / "mnist"
    d.mkdir(parents=True)
    (d / "train-images-idx3-ubyte.gz").write_bytes(images)
    (d / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx((10,), bytes(range(10)))))
    return root


_GOOD_IMAGES = _idx((10, 28, 28), random.Random(1).randbytes(10 * 28 * 28))


@pytest.mark.parametrize("images, needle", [
    (gzip.compress(_GOOD_IMAGES)[:300], "the gzip stream is truncated or corrupt"),
    (gzip.compress(_GOOD_IMAGES[:5000]), "truncated: the IDX header says shape (10, 28, 28)"),
    (b"\x42\x5a" + random.Random(0).randbytes(3000), "bad IDX magic number 0x425a"),
    (gzip.compress(b"<html><body>404 Not Found</body></html>"), "bad IDX magic number 0x3c68746d"),
    (gzip.compress(_idx((10, 5, 5), bytes(250))), "images are 5x5, MNIST has 28x28"),
], ids=["truncated-gzip", "truncated-idx", "corrupt-bytes", "html-page", "wrong-image-size"])
def test_a_data_directory_with_bad_files_names_the_file_and_the_fix(images, needle, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LOCALRULES_OFFLINE", "1")
    data = _mnist_dir(tmp_path / "data", images)
    assert sweep.main(["task=mnist", f"task.data_dir={data}", f"out={tmp_path / 'out'}"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert needle in line and "train-images-idx3-ubyte.gz" in line and "Delete it" in line, line


def test_a_dataset_missing_offline_gets_one_message_listing_where_it_looked_and_what_to_provide(tmp_path, capsys,
                                                                                                 monkeypatch):
    """The one multi-line message: the places searched and the files to put there."""
    monkeypatch.setenv("LOCALRULES_OFFLINE", "1")
    monkeypatch.setenv("LOCALRULES_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "empty").mkdir()
    assert sweep.main(["task=mnist", f"task.data_dir={tmp_path / 'empty'}", f"out={tmp_path / 'out'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: dataset 'mnist' (MNIST), split 'train', was not found") and "Traceback" not in err
    assert f"{tmp_path / 'empty'}" in err and "train-labels-idx1-ubyte.gz" in err and "task.data_dir=" in err


def test_the_real_command_line_prints_one_line_and_no_traceback(tmp_path, cli_env):
    """Three bad inputs through ``python -m localrules.sweep`` itself, in parallel: parse time, config validation
    (a curriculum stage) and data loading (a truncated file)."""
    data = _mnist_dir(tmp_path / "data", gzip.compress(_GOOD_IMAGES)[:300])
    cases = [(["rule=nonsense"], "unknown rule 'nonsense' in rule=nonsense."),
             ([*NURSERY, "task.stages=[S9]"], "unknown stage(s) ['S9']"),
             (["task=mnist", f"task.data_dir={data}"], "the gzip stream is truncated or corrupt")]
    procs = [subprocess.Popen(_cmd(*args, f"out={tmp_path / str(i)}"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=cli_env) for i, (args, _) in enumerate(cases)]
    for p, (args, needle) in zip(procs, cases):
        out, err = p.communicate(timeout=600)
        assert p.returncode == 2, (args, err)
        assert needle in _one_error_line(err), err


def test_no_space_left_on_device_is_one_line_with_the_fix(tmp_path, capsys, monkeypatch):
    """ENOSPC from any write of the sweep (simulated here on the first one; a real full disk is below)."""
    from localrules import tb

    def full(*a, **k):
        raise OSError(28, "No space left on device", str(tmp_path / "out" / "rel" / "events"))

    monkeypatch.setattr(tb, "write_experiment", full)
    assert sweep.main([*TINY, "name=rel", f"out={tmp_path / 'out'}"]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "no space left on the device holding" in line and "run the same command again" in line, line


# ------------------------------------------------------------------------------------------------------ faults


def _wait(pred, proc, timeout, what):
    t0 = time.time()
    while not pred():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended (rc {proc.returncode}) before {what}: {proc.stderr.read()}")
        if time.time() - t0 > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] in ("T", "t")


@pytest.fixture(scope="module")
def faulted(tmp_path_factory, cli_env, sweep_file):
    """The sweep in ``k``: stopped by Ctrl-C during training (while it holds the directory, a second process is
    refused), then SIGKILLed during training, during a checkpoint write and during the results write, and finally
    completed; beside the first SIGKILLed process, the same sweep runs uninterrupted in ``ref``. Returns what every
    step saw."""
    root = tmp_path_factory.mktemp("faults")
    ref, k = root / "ref", root / "k"
    seed = random.randrange(10**6)
    rng = random.Random(seed)
    # Ctrl-C after chunk n_int (of run 2: run 1 is finished); the next process resumes from the checkpoint of chunk
    # n_int - 1 and is SIGKILLed after its chunk n_kill (not yet checkpointed); the next one while it writes its
    # checkpoint n_ckpt; at least that chunk is left for the one killed while writing the results line.
    n_int = rng.randrange(CHUNKS_PER_RUN + 1, RUNS * CHUNKS_PER_RUN + 1)
    left = RUNS * CHUNKS_PER_RUN - n_int + 1
    n_kill = rng.randrange(1, left + 1)
    n_ckpt = rng.randrange(1, left - n_kill + 2)
    args = [f"sweep={sweep_file}"]
    seen: dict = {"seed": seed, "n_int": n_int, "n_kill": n_kill, "n_ckpt": n_ckpt, "ref_dir": ref, "k_dir": k}

    procs: list[subprocess.Popen] = []
    try:
        # 1. Ctrl-C during training: the process stops itself after chunk n_int (holding the sweep's lock) ...
        # (as a foreground command: Python's Ctrl-C handler installed even when this suite runs as a background
        # job, whose children a non-interactive shell starts with SIGINT ignored, which Python then keeps)
        p1 = subprocess.Popen(_foreground_cmd(*args, f"out={k}"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=dict(cli_env, LOCALRULES_FAULT=f"STOP@chunk:{n_int}"))
        procs.append(p1)
        _wait(lambda: _stopped(p1.pid), p1, 600, f"the sweep to reach chunk {n_int}")
        # 2. ... a second process (this one) on the same directory is refused meanwhile ...
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            seen["second"] = (sweep.main([*args, f"out={k}"]), err.getvalue())
        seen["p1_pid"] = p1.pid
        seen["after_stop"] = _records(k)
        # ... and the user presses Ctrl-C
        p1.send_signal(signal.SIGINT)
        p1.send_signal(signal.SIGCONT)
        seen["sigint"] = (p1.wait(timeout=600), p1.stdout.read(), p1.stderr.read())
        seen["after_sigint"] = _records(k)

        # 3. the uninterrupted reference starts together with the next faulty process: two sweeps at once
        a = subprocess.Popen(_cmd(*args, f"out={ref}"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=cli_env)
        procs.append(a)
        # 4. SIGKILL during training (a chunk trained, its checkpoint not written); 5. during a checkpoint write;
        # 6. with half of a results line on disk; 7. the same command once more, to the end
        seen["kill_chunk"] = _run(cli_env, *args, f"out={k}", fault=f"KILL@chunk:{n_kill}")
        seen["kill_ckpt"] = _run(cli_env, *args, f"out={k}", fault=f"KILL@checkpoint:{n_ckpt}")
        seen["tmp_after_ckpt_kill"] = sorted(p.name for p in k.glob("rel/*/ckpt/*.orbax-checkpoint-tmp*"))
        seen["kill_results"] = _run(cli_env, *args, f"out={k}", fault="KILL@results:1")
        seen["results_bytes_after_kill"] = (k / "rel" / "results.jsonl").read_bytes()
        # (with progress lines on: a setting that changes no result must not stop a resume)
        seen["final"] = _run(cli_env, *args, f"out={k}", "progress=true")
        a_out, a_err = a.communicate(timeout=600)
        seen["ref"] = (a.returncode, a_out, a_err)
    finally:  # a failed step must not leave a stopped or running sweep behind
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return seen


def _why(seen):
    return f"(fault points: seed {seen['seed']}, SIGINT after chunk {seen['n_int']}, SIGKILL after chunk " \
           f"{seen['n_kill']}, then during checkpoint write {seen['n_ckpt']})"


def test_ctrl_c_stops_cleanly_with_how_to_resume(faulted):
    rc, out, err = faulted["sigint"]
    assert rc == 130, (rc, err, _why(faulted))
    assert "Traceback" not in err and "interrupted (SIGINT)" in err, err
    assert "to resume, run the same command again: python -m localrules.sweep sweep=" in err
    # run 1 finished before the interrupt and is kept; run 2 is not recorded half-done
    assert len(faulted["after_stop"]) == len(faulted["after_sigint"]) == 1


def test_a_second_process_on_the_same_sweep_is_refused_with_a_clear_line(faulted):
    rc, err = faulted["second"]
    assert rc == 2
    line = _one_error_line(err)
    assert f"another process (pid {faulted['p1_pid']}) is running the sweep in" in line and "name=..." in line


def test_sigkill_during_training_checkpoint_write_and_results_write_then_resume_loses_nothing(faulted):
    why = _why(faulted)
    for step in ("kill_chunk", "kill_ckpt", "kill_results"):
        assert faulted[step].returncode == -signal.SIGKILL, (step, faulted[step].stderr, why)
    # the checkpoint kill landed inside orbax's write (its temporary directory was left behind) ...
    assert faulted["tmp_after_ckpt_kill"], why
    # ... and the results kill left half a line
    assert not faulted["results_bytes_after_kill"].endswith(b"\n"), why
    final = faulted["final"]
    assert final.returncode == 0, (final.stderr, why)
    assert "resuming" in final.stdout and "warning" not in final.stdout, final.stdout
    recs = _records(faulted["k_dir"])
    ids = [r["run_id"] for r in recs]
    assert len(ids) == RUNS == len(set(ids)), (ids, why)  # every finished run exactly once
    assert not list(faulted["k_dir"].glob("rel/*/ckpt/*.orbax-checkpoint-tmp*")), why  # partial writes removed
    ref = {r["run_id"]: _strip(r) for r in _records(faulted["ref_dir"])}
    assert {r["run_id"]: _strip(r) for r in recs} == ref, why  # identical to the uninterrupted sweep


def test_two_sweeps_at_once_in_two_directories_and_two_processes_give_identical_metrics(faulted):
    """The reference started together with a faulty process on another directory (same compilation cache) and
    finished cleanly; run 1 of the faulty sweep was trained start to end by another process, before the reference
    existed: the same config and seed give bit-identical metrics."""
    rc, out, err = faulted["ref"]
    assert rc == 0, err
    ref = _records(faulted["ref_dir"])
    assert len(ref) == RUNS and all(r["status"] == "ok" for r in ref)
    first = faulted["after_sigint"][0]
    assert first["resumed_from"] is None
    same = next(r for r in ref if r["run_id"] == first["run_id"])
    assert _strip(first) == _strip(same)
    assert len({json.dumps(r["final"]) for r in ref}) == RUNS  # the runs' seeds really differ
    assert not (faulted["ref_dir"] / "rel" / "error.log").exists()


def test_every_result_records_versions_backend_device_and_git_revision(faulted):
    for r in _records(faulted["ref_dir"]):
        v = r["versions"]
        assert all(v[p] for p in ("jax", "jaxlib", "numpy", "optax", "orbax-checkpoint", "python")), v
        assert r["platform"]["backend"] == "cpu" and r["platform"]["device"] and r["platform"]["n_devices"] >= 1
        assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", r["git"] or ""), r["git"]
        assert r["date"] and r["argv"] and r["config"]["seed"] in (0, 10)


def test_a_checkpoint_from_another_config_is_refused(tmp_path, capsys):
    """A run directory holding another config's checkpoint (a copied directory): refused, naming the difference,
    before anything of it is loaded."""
    import numpy as np

    from localrules import run

    args = [*TINY, "samples=64", "name=rel", f"out={tmp_path}"]
    (mine,), _ = sweep.parse([*args, "seed=10"])
    (other,), _ = sweep.parse([*args, "seed=0"])
    rid = sweep.run_id(mine)
    ck = run.Checkpointer(str(tmp_path / "rel" / rid / "ckpt"), run.config_dict(other))
    ck.save(2, {"w": np.zeros((3,), np.float32)}, [])
    ck.close()
    assert sweep.main([*args, "seed=10"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"run {rid}: the checkpoint in" in line and "was written by another configuration (seed: 0 there, " \
           "10 here)" in line and "delete" in line, line
    assert (tmp_path / "rel" / rid / "ckpt" / "2").is_dir()  # refused, not deleted


# A failed tensorstore read can leave a callback that fires after orbax closed its event loop ("Exception
# ignored in: None"); that is orbax's noise about the corrupt file this test planted, not a failure.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_corrupt_checkpoint_is_never_loaded(tmp_path):
    """Bytes changed on disk (orbax/tensorstore load them without complaint) and a truncated array file: each is
    detected, deleted with a warning, and the previous checkpoint is restored."""
    import numpy as np

    from localrules.run import Checkpointer

    logs = []
    ck = Checkpointer(str(tmp_path / "ckpt"), {"seed": 0}, log=logs.append)
    states = {s: {"w": np.full((64, 16), float(s), np.float32), "step": np.array(s, np.int32)} for s in (1, 2, 3)}
    for s, st in states.items():
        ck.save(s, st, [s])
    files = sorted(p for p in (tmp_path / "ckpt" / "3").rglob("d/*") if p.is_file())
    for p in files:  # flip one byte in the middle of every data file of the newest checkpoint
        b = bytearray(p.read_bytes())
        b[len(b) // 2] ^= 0xFF
        p.write_bytes(bytes(b))
    for p in (tmp_path / "ckpt" / "2").rglob("d/*"):
        if p.is_file():
            p.write_bytes(p.read_bytes()[:10])
    got = ck.restore(states[1])
    ck.close()
    # max_to_keep=2 kept 2 and 3: both corrupt, so nothing is left to load and the run starts over
    assert got is None
    assert len(logs) == 2 and "checkpoint 3" in logs[0] and "checkpoint 2" in logs[1], logs
    assert not (tmp_path / "ckpt" / "3").exists() and not (tmp_path / "ckpt" / "2").exists()
    ck = Checkpointer(str(tmp_path / "ckpt2"), {"seed": 0}, log=logs.append)
    ck.save(1, states[1], [1])
    ck.save(2, states[2], [2])
    for p in (tmp_path / "ckpt2" / "2").rglob("d/*"):
        if p.is_file():
            b = bytearray(p.read_bytes())
            b[len(b) // 2] ^= 0xFF
            p.write_bytes(bytes(b))
    state, history = ck.restore(states[1])
    ck.close()
    assert history == [1] and float(np.asarray(state["w"]).max()) == 1.0


def _can_mount_tmpfs(where: Path) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=100k", "tmpfs", str(where)], capture_output=True)
    return r.returncode == 0


def test_a_really_full_disk_stops_with_one_line_and_the_sweep_resumes_once_there_is_space(tmp_path, cli_env,
                                                                                          sweep_file, faulted):
    """A 100 KiB tmpfs (needs the right to mount: skipped elsewhere) fills up during the first checkpoints: one
    line, exit 1, orbax's own thread tracebacks kept off the terminal; grown to 8 MiB, the same command ends with
    the uninterrupted sweep's result (whatever partial checkpoint the full disk left is not loaded)."""
    mnt = tmp_path / "small"
    if not _can_mount_tmpfs(mnt):
        pytest.skip("cannot mount a tmpfs here (needs root); the simulated ENOSPC test above still runs")
    try:
        r = _run(cli_env, f"sweep={sweep_file}", f"out={mnt}", "seed=0")  # run 1 alone
        assert r.returncode == 1, r.stderr
        line = _one_error_line(r.stderr)
        assert "no space left on the device holding" in line and "run the same command again" in line, line
        subprocess.run(["mount", "-o", "remount,size=8m", str(mnt)], check=True)
        r = _run(cli_env, f"sweep={sweep_file}", f"out={mnt}", "seed=0")
        assert r.returncode == 0, r.stderr
        (got,) = _records(mnt)
        ref = {r["run_id"]: _strip(r) for r in _records(faulted["ref_dir"])}
        assert _strip(got) == ref[got["run_id"]]
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)
