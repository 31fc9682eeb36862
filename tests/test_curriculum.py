"""The curriculum runner end to end on fast stand-in stages (the procedural prototypes task): graduation on two
consecutive evaluations, budgets and on_fail, frozen graduated seeds, the R matrix with its random-init row, resume
after a kill with bit-identical results; and the nursery plan (orders, mixtures, input centring, validation)."""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from localrules import core
from localrules.curriculum import Stage, mixture, run_curriculum
from localrules.tasks import curriculum as C
from tests.helpers import tiny_build

BATCH = 64


def _stages(b, thetas=(0.0, 0.0), budget=2048):
    from localrules.tasks import prototypes

    tasks = [prototypes.make(prototypes.Config(size=8, test_size=200, noise=n), BATCH) for n in (0.3, 0.6)]
    return [Stage(f"P{i}", t, th, budget, 0.1) for i, (t, th) in enumerate(zip(tasks, thetas))]


def _run(b, stages, seeds=(0,), **kw):
    return run_curriculum(stages, rule=b.rule, opt=b.opt, arch=b.arch, seeds=jnp.asarray(seeds, jnp.int32),
                          batch_size=BATCH, flops_per_step=1e6, log=lambda *_: None, **kw)


SEEDS = (0, 1)


@pytest.fixture(scope="module")
def learner():
    return tiny_build("arch.hidden=[16]", f"batch_size={BATCH}")


@pytest.fixture(scope="module")
def two_stages(learner):
    """θ = 0 on P0 (every evaluation passes), θ = 2 on P1 (never passes); budget 4,096 samples; two seeds."""
    stages = _stages(learner, thetas=(0.0, 2.0), budget=4096)
    state, summary = _run(learner, stages, seeds=SEEDS)
    return stages, state, summary


def test_graduation_needs_two_consecutive_passes_and_counts_samples_at_the_first(two_stages):
    """P0 graduates at its 2nd evaluation (2,048 samples) with samples-to-graduate = 1,024 (the first of the two),
    for both seeds; P1 never graduates and trains its whole budget."""
    _, _, summary = two_stages
    s0, s1 = summary["per_stage"]
    assert s0["graduated"] == [True, True] and s0["samples_to_graduate"] == [1024, 1024]
    assert s0["samples_trained"] == 2048
    assert s0["flops_to_graduate"] == [1024 / BATCH * 1e6] * 2
    assert s1["graduated"] == [False, False] and s1["samples_to_graduate"] == [-1, -1]
    assert s1["samples_trained"] == 4096
    assert [c[0] for c in summary["curves"]["P1"]] == [1024, 2048, 4096]


def test_the_summary_has_r_with_its_init_row_gem_metrics_and_the_stability_gap(two_stages):
    _, _, summary = two_stages
    assert np.asarray(summary["R_per_seed"]).shape == (2, 2, 2)  # (after stage, scored stage, seed)
    assert np.asarray(summary["init_per_seed"]).shape == (2, 2)
    assert {"ACC", "BWT", "FWT", "forgetting", "ACC_kappa", "BWT_sd"} <= set(summary)
    R = np.asarray(summary["R_per_seed"])[:, :, 0]
    assert np.isclose(summary["ACC"], np.mean(np.asarray(summary["R_per_seed"])[-1], axis=0).mean())
    assert 0.0 <= R.min() and R.max() <= 1.0
    # old stage P0 watched every 512 samples during the first 8,192 of P1 (here: its whole 4,096)
    assert len(summary["old_curves"]["P1>P0"]) == 4096 // 512
    assert "P0" in summary["per_stage"][1]["stability_gap"]


def test_on_fail_stop_ends_the_curriculum_at_the_first_failed_stage(learner):
    stages = _stages(learner, thetas=(2.0, 0.0), budget=1024)
    _, summary = _run(learner, stages[:1] + stages[:1], on_fail="stop")
    assert summary["stopped_early"] and [p["stage"] for p in summary["per_stage"]] == ["P0"]


def test_pacing_by_samples_ignores_graduation(learner):
    stages = _stages(learner, thetas=(0.0, 0.0), budget=100_000)[:1]
    _, summary = _run(learner, stages, pacing="samples", samples_per_stage=3072)
    assert summary["per_stage"][0]["samples_trained"] == 3072


class _MemoryCheckpoint:
    """In-memory stand-in for the orbax checkpointer; ``kill_after`` simulates a SIGKILL after that many saves."""

    def __init__(self, kill_after=None):
        self.saved, self.count, self.kill_after = None, 0, kill_after

    def save(self, state, meta):
        self.saved = (jax.device_get(state), copy.deepcopy(meta))
        self.count += 1
        if self.kill_after is not None and self.count == self.kill_after:
            raise _Killed()

    def restore(self, template):
        if self.saved is None:
            return None
        state, meta = self.saved
        return jax.tree.map(jnp.asarray, state), copy.deepcopy(meta)


class _Killed(Exception):
    pass


def test_a_curriculum_killed_mid_stage_resumes_to_bit_identical_results(learner, two_stages):
    """Saves: P0 at 1,024 and 2,048 samples, P0's end, P1 at 1,024 — killed there, mid-P1, then resumed."""
    stages, state, clean = two_stages
    ck = _MemoryCheckpoint(kill_after=4)
    with pytest.raises(_Killed):
        _run(learner, stages, seeds=SEEDS, checkpoint=ck)
    assert ck.saved[1]["stage_index"] == 1 and ck.saved[1]["stage_step"] > 0
    ck.kill_after = None
    state2, resumed = _run(learner, stages, seeds=SEEDS, checkpoint=ck)
    for k in ("R_per_seed", "init_per_seed", "curves", "old_curves"):
        assert resumed[k] == clean[k], k
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(state2.params)))


def test_mixture_draws_each_sample_from_a_component_with_the_given_weights():
    def const(v):
        def sample(data, ctx, key, t):
            return core.Batch(jnp.full((512, 1), v, jnp.float32), jnp.full((512, 1), int(v), jnp.int32))
        return core.Task(f"c{v}", core.Heads(("h",), (2,)), (1,), (), core.no_context, sample, None, None, None, 0.5)

    m = mixture([const(0.0), const(1.0)], lambda t: jnp.array([0.75, 0.25]), 512, "m")
    b = m.sample(m.data, m.context(m.data, jax.random.PRNGKey(0), 0), jax.random.PRNGKey(1), 0)
    frac = float(jnp.mean(b.x))
    assert 0.18 < frac < 0.32
    assert np.array_equal(np.asarray(b.x[:, 0]).astype(int), np.asarray(b.y[:, 0]))  # x and y from the same draw


@pytest.mark.parametrize("order,expected", [
    ("developmental", ["S1", "S2", "S3", "S4", "S5", "S6"]),
    ("reverse", ["S6", "S5", "S4", "S3", "S2", "S1"]),
    ("joint", ["S1", "S2", "S3", "S4", "S5", "S6"]),
])
def test_stage_orders(order, expected):
    assert C.stage_order(C.Config(order=order)) == expected


def test_random_orders_are_seeded_permutations():
    a = C.stage_order(C.Config(order="random", order_seed=1))
    assert sorted(a) == ["S1", "S2", "S3", "S4", "S5", "S6"]
    assert a == C.stage_order(C.Config(order="growing_random", order_seed=1))
    assert any(C.stage_order(C.Config(order="random", order_seed=s)) != a for s in range(2, 6))


@pytest.mark.parametrize("bad,msg", [
    (dict(stages=("S9",)), "unknown stage"),
    (dict(order="sideways"), "task.order"),
    (dict(acuity="fuzzy"), "task.acuity"),
    (dict(input="raw"), "task.input"),
    (dict(replay=1.5), "task.replay"),
    (dict(thresholds=(0.9,)), "thresholds"),
    (dict(frames=1), "frames=1"),
])
def test_bad_curriculum_configs_name_the_field_and_the_choices(bad, msg):
    with pytest.raises(ValueError, match=msg):
        C.plan(C.Config(**bad), 8)


def test_centred_input_shifts_the_stream_and_the_tests_by_one_half():
    """input=centred (default) shows the learner canvas − 0.5 in training and in evaluation; unit shows the canvas."""
    cfg = dict(stages=("S1",), blur_robustness=False)
    (st_c,), _, _ = C.plan(C.Config(**cfg), 8)
    (st_u,), _, _ = C.plan(C.Config(input="unit", **cfg), 8)
    key = jax.random.PRNGKey(3)
    xc = st_c.task.sample((), (), key, 5).x
    xu = st_u.task.sample((), (), key, 5).x
    np.testing.assert_allclose(np.asarray(xc), np.asarray(xu) - 0.5, atol=1e-7)
    assert float(xu.min()) >= 0.0

    def scores(x):  # noun "ball" scores −min(pixel): strictly positive only if the learner sees negative pixels
        z = jnp.zeros((x.shape[0], sum(st_c.task.heads.sizes)))
        return z.at[:, 0].set(-jnp.min(x.reshape(x.shape[0], -1), axis=1))

    acc_c = float(st_c.tester.evaluate(scores, st_c.tester.test)["acc"])
    acc_u = float(st_u.tester.evaluate(scores, st_u.tester.test)["acc"])
    assert 0.15 < acc_c < 0.35 and acc_u == 0.0  # centred test images: every "ball" is right; unit: none


def test_forced_choice_uses_a_rules_own_token_scorer_instead_of_the_head_softmax():
    """Every noun gets the same read-out score v(image) = mean pixel: per-head log-softmax makes all four candidates
    tie (ties are wrong → 0), while a rule's own token scorer (FF's goodness) compares v across images (→ about
    chance, 0.25)."""
    from localrules.tasks import nursery

    task = nursery.make_stage("S4", 8, 1)

    def flat(x):
        v = jnp.mean(x.reshape(x.shape[0], -1), axis=1, keepdims=True)
        return jnp.broadcast_to(v, (x.shape[0], sum(nursery.HEADS.sizes)))

    acc_softmax = float(task.evaluate(core.Scorer(flat), task.test)["acc"])
    acc_tokens = float(task.evaluate(core.Scorer(flat, flat), task.test)["acc"])
    assert acc_softmax == 0.0
    assert 0.15 < acc_tokens < 0.35


def test_a_stage_compiles_one_training_program_whatever_its_budget(learner):
    """24,576 samples = the 8,192-sample window of small chunks + two big segments, each run as repeated calls of
    the same compiled chunk: exactly one compilation of the training chunk for the stage."""
    compiled = []

    def listen(name, dur, **kw):
        if name == "/jax/core/compile/backend_compile_duration" and "chunk" in kw.get("fun_name", ""):
            compiled.append(kw["fun_name"])

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        stages = _stages(learner, thetas=(2.0,), budget=24_576)[:1]
        _, summary = _run(learner, stages)
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    assert summary["per_stage"][0]["samples_trained"] == 24_576
    assert len(compiled) == 1, compiled


def test_fixed_budget_accuracy_is_the_first_evaluation_at_or_after_the_budget():
    from localrules.curriculum import fixed_budget_acc

    curve = [[58_800, [0.5]], [67_200, [0.6]], [75_600, [0.7]]]
    assert fixed_budget_acc(curve, (65_536, 67_200, 262_144)) == {"65536": [0.6], "67200": [0.6], "262144": None}
