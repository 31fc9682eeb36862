"""``python -m localrules.bench`` end to end on a tiny configuration: the rule table, memory and generator sections
run, a rule that cannot train an architecture is listed as n/a with its reason, the per-rule tokens reach the built run, the README block is
written between its markers (and refused without them, before anything is measured), and the JSON holds the
numbers the table prints. Speed targets are the bench's business, not asserted here."""

import json

import pytest

from localrules import bench

# Each program with random-number draws compiles for seconds on a 2-core CPU, which is what this test's time is made
# of: one rule row, the memory and generator sections. The scaling and Hebbian-epoch sections are exercised by the
# bench itself (13–16 s more CPU each, measured), and a failure there is printed as "n/a: <error>", not hidden.
TINY = ["rules=backprop,meta_learned", "arch=cnn", "channels=2", "size=8", "batch=8", "repeats=2", "matmul_n=32",
        "memory=true", "memory_rules=", "memory_hidden=8,8", "memory_batch=8",
        "generator=true", "generator_stages=S6", "generator_batch=4", "generator_reps=1"]


def _readme(tmp_path, body="<!-- bench:begin -->\nold table\n<!-- bench:end -->\n"):
    p = tmp_path / "README.md"
    p.write_text("# title\n\nbefore\n\n" + body + "\nafter\n", encoding="utf-8")
    return p


def test_the_bench_runs_end_to_end_and_replaces_the_readme_block(tmp_path):
    readme, out = _readme(tmp_path), tmp_path / "bench.json"
    report = bench.run(TINY + [f"readme={readme}", f"json={out}"])

    rows = {r["rule"]: r for r in report["rules"]}
    bp, meta = rows["backprop"], rows["meta_learned"]
    assert bp["arch"] == "cnn_2" and bp["flops"] > 0 and bp["step_ms"] > 0 and bp["peak_bytes"] > 0
    assert bp["call_ms"] > 0 and len(bp["step_ms_all"]) == 2  # in-scan step time and the single call's, both kept
    assert bp["compile_ok"] == (bp["compile_s"] <= 10)
    # efficiency against the matmul timed interleaved with this row's own steps, not against the start's
    assert abs(bp["pct_peak"] - 100 * bp["gflops"] / bp["peak"]["gflops"]) < 1e-9 and bp["peak"]["n"] == 32
    assert bp["peak_ok"] == (bp["pct_peak"] >= 60)
    assert "dense layers only" in meta["na"]  # the rule's own error, not a silent drop
    assert "rule.theta=fmnist_mg" in meta["tokens"]  # the per-rule table reached the config
    mem = {m["rule"]: m for m in report["memory"]}
    assert set(mem) == {"backprop"}  # backprop is always the reference, even when not asked for
    m = mem["backprop"]
    assert m["ratio_vs_backprop"] == 1.0 and m["temp_bytes"] > 0
    # the new state overwrites the donated one: only the step's metrics are new output on top of state + temporaries
    assert 0 <= m["peak_bytes"] - (m["argument_bytes"] + m["temp_bytes"]) <= 1024
    assert [(g["stage"], g["frames"]) for g in report["generator"]] == [("S6", 2)]
    assert report["generator"][0]["fresh"] > 0

    text = readme.read_text(encoding="utf-8")
    assert text.startswith("# title\n\nbefore\n\n<!-- bench:begin -->\n")
    assert text.endswith("<!-- bench:end -->\n\nafter\n")
    assert "old table" not in text
    block = text.split("<!-- bench:begin -->")[1].split("<!-- bench:end -->")[0]
    for needle in ("Machine: cpu:", " cores", "jax ", "Command: `python -m localrules.bench rules=backprop",
                   "Matmul peak:", "| backprop | cnn_2 |", "| meta_learned | – | `rule.theta=fmnist_mg` | n/a: ",
                   "**Memory**", "| S6 | 2 |"):
        assert needle in block, needle
    assert json.loads(out.read_text(encoding="utf-8"))["rules"][0]["flops"] == bp["flops"]


def test_a_readme_without_the_bench_markers_is_refused_before_anything_is_measured(tmp_path, capsys):
    readme = _readme(tmp_path, body="no markers here\n")
    assert bench.main(["rules=backprop", f"readme={readme}"]) == 2
    err = capsys.readouterr()
    assert "<!-- bench:begin -->" in err.err and "add both markers" in err.err
    assert err.out == ""  # failed before the matmul peak was even measured
    assert "no markers here" in readme.read_text(encoding="utf-8")


@pytest.mark.parametrize("tok,needle", [
    ("rule_args=pepita rule.lr=1", "write <rule>:<key=value>"),
    ("rule_args=nosuchrule:rule.lr=1", "unknown rule 'nosuchrule'"),
    ("rule_args=pepita:rule.no_such_field=1", "no_such_field"),
    ("arch=nosucharch", "not a registered architecture"),
    ("scaling_seeds=1,x", "comma-separated integers"),
    ("batches=3", "unknown option 'batches'"),
    ("generator_stages=S9", "generator_stages='S9': choose from S1"),
])
def test_bad_options_fail_in_one_line_before_any_measurement(tok, needle, capsys):
    assert bench.main(["rules=pepita", tok]) == 2
    err = capsys.readouterr()
    assert needle in err.err and len(err.err.strip().splitlines()) == 1 and err.out == ""


def test_rules_that_need_their_own_architecture_get_it_and_rule_args_override_it():
    opts = dict(bench.DEFAULTS)
    toks, extra = bench.row_tokens("forward_forward", "mlp", opts, {})
    cfg = bench.make_config(toks)
    assert extra == ["arch=ff_mlp"] and type(cfg.arch).__module__.endswith("ff_mlp")
    assert tuple(cfg.arch.hidden) == (1000, 1000)
    user = bench.parse_rule_args("ff:arch=mlp arch.hidden=[64];*:task.noise=0.1")
    toks, extra = bench.row_tokens("forward_forward", "mlp", opts, user)
    cfg = bench.make_config(toks)
    assert type(cfg.arch).__name__ == "MLPConfig" and tuple(cfg.arch.hidden) == (64,) and cfg.task.noise == 0.1
    assert bench.make_config(bench.row_tokens("softhebb", "cnn", opts, {})[0]).arch.channels == (32, 64)


def test_the_seeds_ceiling_times_batched_matmuls_per_seed_step():
    rows = bench.matmul_seeds_scaling([6, 5, 3], batch=4, counts=[1, 3], steps=2, repeats=1)
    assert [r["seeds"] for r in rows] == [1, 3] and rows[0]["ratio_vs_1"] == 1.0
    assert all(r["ms_per_seed_step"] > 0 and r["gflops"] > 0 for r in rows)
    # forward + weight gradient everywhere, input gradient above the first layer: 2·B·(2·6·5 + 3·5·3) FLOPs
    assert abs(rows[0]["gflops"] * rows[0]["ms_per_seed_step"] * 1e6 - 2 * 4 * (2 * 30 + 3 * 15)) < 1e-3
