"""Equation tests for the meta-learned rule (spec meta_learned.md §5): every term and the hand rules it must
reproduce (DFA bit for bit, Hebb, Oja) computed by hand in NumPy; role sharing across depth and width; the
meta-trainer's gradient and ES estimators on a toy with a closed form; non-finite handling; Oja recovery."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from localrules import core, meta
from localrules.architectures import MLPConfig, build_mlp
from localrules.rules import direct_feedback_alignment as dfa
from localrules.rules import meta_learned as ml

HEADS = core.single_head("y", 3)


def _net(hidden=(4,), act="relu", n_in=5, seed=0, batch=4, k=3):
    arch = build_mlp(MLPConfig(hidden=hidden, activation=act, init="normal"), (n_in,), k)
    params = arch.init(jax.random.PRNGKey(seed))
    params = tuple({n: v + 0.1 * jax.random.normal(jax.random.PRNGKey(seed + 7 + i), v.shape) for n, v in p.items()}
                   for i, p in enumerate(params))  # nonzero biases
    kx, ky = jax.random.split(jax.random.PRNGKey(seed + 1))
    batch_ = core.Batch(jax.random.normal(kx, (batch, n_in)), jax.random.randint(ky, (batch, 1), 0, k))
    return arch, params, batch_


def _theta(role_terms: dict, loglr=0.0):
    c = np.zeros((2, len(ml.TERMS)), np.float32)
    for (role, term), v in role_terms.items():
        c[ml.ROLES.index(role), ml.TERMS.index(term)] = v
    return {"c": jnp.asarray(c), "loglr": jnp.full((2,), loglr, jnp.float32)}


def _update(theta, arch, params, batch, fan_in_scale=True, heads=HEADS, state=None, **kw):
    rule = ml.make_with_theta(ml.Config(fan_in_scale=fan_in_scale, **kw), arch, heads, theta)
    state = rule.init(jax.random.PRNGKey(3), params) if state is None else state
    g, _, _ = rule.update(params, state, batch, jax.random.PRNGKey(4))
    return g, state


def _np_signals(arch, params, batch, state, act=lambda a: np.maximum(a, 0), dact=lambda a: (a > 0) * 1.0):
    """Per dense layer (lab index): x, y, m (unscaled by B) in float64, from the 1-hidden-layer net."""
    P = [{n: np.asarray(v, np.float64) for n, v in p.items()} for p in params]
    x = np.asarray(batch.x, np.float64)
    a1 = x @ P[1]["w"] + P[1]["b"]
    h1 = act(a1)
    z = h1 @ P[2]["w"] + P[2]["b"]
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    e = p - np.eye(z.shape[1])[np.asarray(batch.y[:, 0])]
    F = np.asarray(state.F[1], np.float64)
    m1 = (e @ F) * dact(a1)
    assert (a1 < 0).any(), "choose a seed with a negative pre-activation so the ReLU gate is exercised"
    return P, {1: (x, h1, m1), 2: (h1, p, e)}


def _np_term(term, x, y, m, w):
    B = x.shape[0]
    return {"err": -(x.T @ m) / B, "hebb": x.T @ y / B, "pre": np.broadcast_to(x.mean(0)[:, None], w.shape),
            "post": np.broadcast_to(y.mean(0)[None, :], w.shape), "const": np.ones_like(w),
            "oja": -w * (y ** 2).mean(0)[None, :], "decay": -w}[term]


@pytest.mark.parametrize("term", ml.TERMS)
def test_every_term_fan_in_factor_modulator_and_bias_path_match_numpy(term):
    """One-hot θ (c_k = 1, λ = 0.3) per term and role: P_W = −e^λ s T_k with s = 64/n_in, P_b = −e^λ c_err mean m."""
    arch, params, batch = _net()
    for role, layer in (("hidden", 1), ("head", 2)):
        th = _theta({(role, term): 1.0}, loglr=0.3)
        g, state = _update(th, arch, params, batch)
        P, sig = _np_signals(arch, params, batch, state)
        x, y, m = sig[layer]
        s = 64.0 / x.shape[1]
        want = -math.exp(0.3) * s * _np_term(term, x, y, m, P[layer]["w"])
        np.testing.assert_allclose(np.asarray(g[layer]["w"]), want, rtol=1e-5, atol=1e-6)
        want_b = math.exp(0.3) * m.mean(0) if term == "err" else np.zeros_like(m[0])
        np.testing.assert_allclose(np.asarray(g[layer]["b"]), want_b, rtol=1e-5, atol=1e-6)
        other = 2 if layer == 1 else 1
        assert not np.any(np.asarray(g[other]["w"])), "the other role's row is zero, so its layer must not move"


def test_theta_dfa_reproduces_rules_dfa_bit_for_bit_and_scaled_by_lr_and_fan_in():
    arch, params, batch = _net()
    d = dfa.make(dfa.Config(), arch, HEADS)
    ds = d.init(jax.random.PRNGKey(5), params)
    g_dfa, _, _ = d.update(params, ds, batch, jax.random.PRNGKey(6))
    th = _theta({("hidden", "err"): 1.0, ("head", "err"): 1.0})
    g, _ = _update(th, arch, params, batch, fan_in_scale=False, state=ml.MetaState(ds.B))
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_dfa)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    g0, _ = _update(ml.init_theta(), arch, params, batch, state=ml.MetaState(ds.B))
    for layer, n_in in ((1, 5), (2, 4)):
        np.testing.assert_allclose(np.asarray(g0[layer]["w"]), 0.05 * 64 / n_in * np.asarray(g_dfa[layer]["w"]),
                                   rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(np.asarray(g0[layer]["b"]), 0.05 * np.asarray(g_dfa[layer]["b"]), rtol=1e-5,
                                   atol=1e-7)


def test_theta_hebb_is_plain_hebb_and_leaves_biases_alone():
    arch, params, batch = _net()
    th = _theta({("hidden", "hebb"): 1.0, ("head", "hebb"): 1.0}, loglr=math.log(0.1))
    g, state = _update(th, arch, params, batch)
    P, sig = _np_signals(arch, params, batch, state)
    for layer in (1, 2):
        x, y, _ = sig[layer]
        np.testing.assert_allclose(np.asarray(g[layer]["w"]), -0.1 * 64 / x.shape[1] * x.T @ y / 4, rtol=1e-5,
                                   atol=1e-6)
        np.testing.assert_array_equal(np.asarray(g[layer]["b"]), 0.0)


def test_theta_oja_is_ojas_rule_for_one_linear_unit_and_its_batch_form():
    """Hidden role, identity activation, one unit, n_ref = n_in: B = 1 gives Δw = η y (x − y w) exactly."""
    eta = 0.05
    th = _theta({("hidden", "hebb"): 1.0, ("hidden", "oja"): 1.0}, loglr=math.log(eta))
    for B in (1, 4):
        arch, params, batch = _net(hidden=(1,), act="linear", n_in=6, batch=B, seed=2)
        g, _ = _update(th, arch, params, batch, n_ref=6)
        x = np.asarray(batch.x, np.float64)
        w = np.asarray(params[1]["w"], np.float64)[:, 0]
        y = x @ w + float(params[1]["b"][0])
        if B == 1:
            want = eta * y[0] * (x[0] - y[0] * w)
        else:
            want = eta * (x.T @ y / B - (y ** 2).mean() * w)
        np.testing.assert_allclose(-np.asarray(g[1]["w"])[:, 0], want, rtol=1e-5, atol=1e-7)


def test_mlp_family_at_initialisation_equals_the_coefficient_family_bit_for_bit():
    arch, params, batch = _net(hidden=(4, 3))
    coef = ml.init_theta(None, "coef")
    coef["c"] = coef["c"] + 0.1 * jax.random.normal(jax.random.PRNGKey(9), coef["c"].shape)
    mlp = ml.init_theta(jax.random.PRNGKey(1), "mlp", 8)
    mlp["c"], mlp["loglr"] = coef["c"], coef["loglr"]
    g1, st = _update(coef, arch, params, batch)
    g2, _ = _update(mlp, arch, params, batch, state=st)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    mlp["mlp"]["w2"] = jnp.ones_like(mlp["mlp"]["w2"])  # a non-zero g_r changes the update
    g3, _ = _update(mlp, arch, params, batch, state=st)
    assert not np.allclose(np.asarray(g3[1]["w"]), np.asarray(g1[1]["w"]))


def test_every_hidden_layer_shares_the_hidden_row_and_one_theta_runs_at_two_widths():
    th = _theta({("hidden", "decay"): 1.0})
    for hidden in ((8, 8), (32, 32)):
        arch, params, batch = _net(hidden=hidden)
        g, _ = _update(th, arch, params, batch)
        assert jax.tree.structure(g) == jax.tree.structure(params)
        for layer in (1, 2):  # decay: P = e^0 s w at both hidden layers, with their own fan-in
            s = 64.0 / params[layer]["w"].shape[0]
            np.testing.assert_allclose(np.asarray(g[layer]["w"]), s * np.asarray(params[layer]["w"]), rtol=1e-6)
        assert not np.any(np.asarray(g[3]["w"]))


def test_fa_feedback_sends_the_error_down_layer_by_layer():
    arch, params, batch = _net(hidden=(4, 3))
    th = _theta({("hidden", "err"): 1.0, ("head", "err"): 1.0})
    g, st = _update(th, arch, params, batch, fan_in_scale=False, feedback="fa")
    P = [{n: np.asarray(v, np.float64) for n, v in p.items()} for p in params]
    x = np.asarray(batch.x, np.float64)
    a1 = x @ P[1]["w"] + P[1]["b"]
    a2 = np.maximum(a1, 0) @ P[2]["w"] + P[2]["b"]
    z = np.maximum(a2, 0) @ P[3]["w"] + P[3]["b"]
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    e = (p - np.eye(3)[np.asarray(batch.y[:, 0])]) / 4
    m2 = (e @ np.asarray(st.F[3], np.float64).T) * (a2 > 0)
    m1 = (m2 @ np.asarray(st.F[2], np.float64).T) * (a1 > 0)
    np.testing.assert_allclose(np.asarray(g[1]["w"]), x.T @ m1, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(g[2]["w"]), np.maximum(a1, 0).T @ m2, rtol=1e-5, atol=1e-7)


def test_theta_files_round_trip_and_bad_paths_or_conv_nets_fail_in_one_line(tmp_path):
    th = ml.init_theta(jax.random.PRNGKey(0), "mlp", 4)
    ml.save_theta(str(tmp_path / "t"), th, {"note": "test"})
    back, meta_ = ml.load_theta(str(tmp_path / "t"))
    for a, b in zip(jax.tree.leaves(th), jax.tree.leaves(back)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert meta_["note"] == "test"
    with pytest.raises(ValueError, match="no such θ directory"):
        ml.load_theta(str(tmp_path / "missing"))
    from localrules.architectures import CNNConfig, build_cnn
    with pytest.raises(ValueError, match="arch=mlp"):
        ml.make(ml.Config(), build_cnn(CNNConfig(channels=(2,)), (8, 8, 1), 3), HEADS)


def test_shipped_theta_trains_as_an_ordinary_rule_alone_and_inside_compose():
    """rule=meta_learned rule.theta=fmnist_mg through the lab's build: the shipped θ is loaded (its meta.json values),
    applied with sgd(1.0), and a few scanned steps move every layer; inside rule=compose it drives the hidden layers
    under backprop's head."""
    import json
    import os

    from tests.helpers import tiny_build

    shipped, meta_ = ml.load_theta("fmnist_mg")
    with open(os.path.join(ml.THETA_DIR, "fmnist_mg", "meta.json")) as f:
        np.testing.assert_array_equal(np.asarray(shipped["c"]), np.asarray(json.load(f)["theta_values"]["c"],
                                                                           np.float32))
    assert meta_["command"].startswith("python -m localrules.meta train")
    for tokens in (("rule=meta_learned", "rule.theta=fmnist_mg", "optimizer.name=adam"),
                   ("rule=compose", "rule.hidden_rule=meta_learned", "rule.hidden_rule.theta=fmnist_mg",
                    "rule.head_rule=backprop", "rule.hidden_optimizer.name=sgd", "rule.hidden_optimizer.lr=1")):
        b = tiny_build(*tokens, "arch.hidden=[8]")
        st = b.program.init(0)
        out, _ = jax.jit(b.program.chunk, static_argnums=3)(st, b.task.data, 0, 2)
        assert int(out.diverged_at) == -1
        for p0, p1 in zip(st.params, out.params):
            for n in p0:
                assert np.all(np.isfinite(np.asarray(p1[n]))) and not np.array_equal(np.asarray(p0[n]),
                                                                                      np.asarray(p1[n])), n
        if tokens[0] == "rule=meta_learned":  # the rule's own optimizer, sgd(1.0), whatever optimizer.* says
            g = jax.tree.map(jnp.ones_like, st.params)
            u, _ = b.opt.update(g, b.opt.init(g), g)
            assert all(np.all(np.asarray(a) == -1.0) for a in jax.tree.leaves(u))


def test_a_theta_refuses_rule_settings_other_than_those_it_was_meta_trained_under(tmp_path):
    from tests.helpers import tiny_build

    ml.save_theta(str(tmp_path / "fa"), ml.init_theta(), {"family": {"feedback": "fa", "fan_in_scale": False}})
    with pytest.raises(ValueError, match="add rule.feedback=fa rule.fan_in_scale=false"):
        tiny_build("rule=meta_learned", f"rule.theta={tmp_path / 'fa'}")
    b = tiny_build("rule=meta_learned", f"rule.theta={tmp_path / 'fa'}", "rule.feedback=fa", "rule.fan_in_scale=false")
    assert b.rule_name == "meta_learned"


# ------------------------------------------------------------------------------------------ meta-trainer


def _toy_loss(theta, wstar):
    """w_{t+1} = w_t − η(w_t − w*) − λ w_t, w_0 = 0, T = 10 (lax.scan); L = mean (w_T − w*)²."""
    eta, lam = jnp.exp(theta[0]), jnp.exp(theta[1])

    def body(w, _):
        return w - eta * (w - wstar) - lam * w, None

    w, _ = jax.lax.scan(body, jnp.zeros_like(wstar), None, length=10)
    return jnp.mean((w - wstar) ** 2), jnp.mean(w)


def _toy_closed_form_grad(theta, wstar):
    def L(th):
        eta, lam = jnp.exp(th[0]), jnp.exp(th[1])
        wT = wstar * eta / (eta + lam) * (1 - (1 - eta - lam) ** 10)
        return jnp.mean((wT - wstar) ** 2)

    return jax.grad(L)(theta)


def test_meta_gradient_matches_the_closed_form_and_es_agrees_in_sign():
    theta = jnp.log(jnp.asarray([0.1, 0.05], jnp.float32))
    wstar = jax.random.uniform(jax.random.PRNGKey(0), (16,), minval=0.5, maxval=1.5)
    _, _, g, norm = meta.meta_gradient(_toy_loss, theta, wstar)
    exact = _toy_closed_form_grad(theta, wstar)
    assert float(norm) < 1.0  # so clipping does not act and the comparison is of the raw gradient
    np.testing.assert_allclose(np.asarray(g), np.asarray(exact), rtol=1e-5)
    assert g[0] < 0 < g[1]
    es = jax.jit(lambda k: meta.es_gradient(_toy_loss, theta, k, wstar, sigma=0.01, pairs=1024)[2])
    for s in range(5):
        ge = es(jax.random.PRNGKey(s))
        assert np.all(np.sign(np.asarray(ge)) == np.sign(np.asarray(g)))
        cos = float(jnp.dot(ge, g) / (jnp.linalg.norm(ge) * jnp.linalg.norm(g)))
        assert cos >= 0.98, f"seed {s}: cosine {cos:.3f}"


def test_diverging_tasks_hit_the_cap_and_the_masked_clipped_update_is_finite():
    def loss(theta, x):
        w = jax.lax.scan(lambda w, _: (w * (1 + jnp.exp(theta["loglr"][0])), None), x, None, length=200)[0]
        return meta.cap_loss(jnp.mean(w ** 2)), 0.0

    theta = {"c": jnp.zeros((2, 7)), "loglr": jnp.full((2,), math.log(1e3))}
    L, _, g, _ = meta.meta_gradient(loss, theta, jnp.ones(3))
    assert float(L) == 10.0
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree.leaves(g))
    assert float(optax.tree.norm(g)) <= 1.0 + 1e-6
    opt = optax.adam(1e-2)
    u, _ = opt.update(g, opt.init(theta), theta)
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree.leaves(u))
    Le, _, ge, _ = meta.es_gradient(loss, theta, jax.random.PRNGKey(0), jnp.ones(3), pairs=4)
    assert float(Le) == 10.0 and all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree.leaves(ge))


def test_a_meta_step_keeps_theta_structure_does_not_retrace_and_es_vmap_equals_member_by_member():
    theta = {"c": jnp.zeros((2, 7)), "loglr": jnp.log(jnp.asarray([0.1, 0.05]))}
    wstar = jnp.linspace(0.5, 1.5, 8)

    def loss(th, w):
        return _toy_loss(jnp.stack([th["loglr"][0], th["loglr"][1]]) + jnp.sum(th["c"]), w)

    opt = optax.adam(1e-2)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(th, s):
        _, _, g, _ = meta.meta_gradient(loss, th, wstar)
        u, s = opt.update(g, s, th)
        return optax.apply_updates(th, u), s

    s = opt.init(theta)
    th1, s = step(theta, s)
    th2, s = step(th1, s)
    assert jax.tree.structure(th2) == jax.tree.structure(theta)
    assert all(a.shape == b.shape for a, b in zip(jax.tree.leaves(th2), jax.tree.leaves(theta)))
    chex.clear_trace_counter()
    # ES: one vmapped evaluation of all members equals evaluating them one by one; same key, same estimate.
    members = jax.tree.map(lambda a: jnp.stack([a, a + 0.1, a - 0.1]), theta)
    batched = jax.jit(jax.vmap(lambda th: loss(th, wstar)[0]))(members)
    single = [float(loss(jax.tree.map(lambda a: a[i], members), wstar)[0]) for i in range(3)]
    np.testing.assert_allclose(np.asarray(batched), single, rtol=1e-6)
    e1 = meta.es_gradient(loss, theta, jax.random.PRNGKey(1), wstar, pairs=8)[2]
    e2 = meta.es_gradient(loss, theta, jax.random.PRNGKey(1), wstar, pairs=8)[2]
    for a, b in zip(jax.tree.leaves(e1), jax.tree.leaves(e2)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_learn_freezes_the_other_coefficients_and_bad_meta_options_fail_in_one_line(capsys):
    """learn=[err,oja]: a meta-step (grad and ES) moves only those columns of c (and loglr); the rest stay at θ₀."""
    def task_fn(theta, key, data):
        return jnp.sum((theta["c"] - 2.0) ** 2) + jnp.sum(theta["loglr"] ** 2), 0.0

    theta = ml.init_theta()
    for method in ("grad", "es"):
        mc = meta.MetaConfig(method=method, learn=("err", "oja"), tasks=2, pairs=4)
        opt = optax.adam(0.1)
        th, _, _, _, _ = jax.jit(meta._make_meta_step(task_fn, opt, mc))(theta, opt.init(theta),
                                                                         jax.random.PRNGKey(0), None)
        moved = np.asarray(th["c"]) != np.asarray(theta["c"])
        want = np.asarray([[t in ("err", "oja") for t in ml.TERMS]] * 2)
        np.testing.assert_array_equal(moved, want)
        assert np.all(np.asarray(th["loglr"]) != np.asarray(theta["loglr"]))
    for args, msg in ((["learn=[err,hebbb]"], "unknown term"),
                      (["validate_tasks=8", "validate_steps=100"], "choose one way")):
        assert meta.main(["train", *args, "out=/nonexistent/x"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and msg in err[0], err


@pytest.mark.slow
def test_a_curriculum_stage_bucket_trains_the_inner_net_on_the_stage_stream():
    """dist.stages: the S1 stream rendered inside the inner scan, 21 curriculum head units, query from the generator
    (slow only because the renderer takes ~30 s to compile on the loaded CPU; its meta-gradient is the same
    task_meta_gradient path as the Fashion-MNIST buckets'). The learned step must change the query loss relative to
    a zero step; stages scored by forced choice are refused in one line."""
    dist = meta.Dist(stages=("S1",), widths=(8,), horizons=(4,), batch=8, query=32, stage_frames=1)
    (b,) = [b for b in meta.buckets(dist) if isinstance(b[0], str)]
    assert b == ("S1", 3072, 8, 4)
    fn = meta.make_stage_task_fn(ml.Config(), dist, b, segment=2)
    assert fn.heads.total == 21 and fn.arch.layers[fn.arch.param_layers[0]].kind == "dense"
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    run = jax.jit(jax.vmap(fn, in_axes=(None, 0, None)))
    ce, acc = run(ml.init_theta(lr=0.5), keys, fn.data())
    ce0, acc0 = run(ml.init_theta(lr=1e-12), keys, fn.data())  # no learning: the initial net's query loss
    assert np.all(np.isfinite(np.asarray(ce))) and np.all((0 <= np.asarray(acc)) & (np.asarray(acc) <= 1))
    assert np.all(np.asarray(ce) < np.asarray(ce0)), (ce, ce0)
    with pytest.raises(ValueError, match="forced choice"):
        meta.make_stage_task_fn(ml.Config(), dist, ("S4", 3072, 8, 4))


@pytest.mark.slow
def test_meta_training_on_a_task_where_ojas_rule_is_optimal_recovers_ojas_coefficients():
    """Spec §4.2: one linear neuron, 27-term polynomial rule, 1,500 meta-steps through the inner scan (the
    meta-trainer's per-task masked, clipped gradient path, :func:`localrules.meta.task_meta_gradient`); the two largest coefficients are θ_xy > 0 and θ_{y²w} < 0 with
    ratio in [0.8, 1.25], every other below half the smaller of them."""
    theta, _, (losses, _) = meta.oja_recovery(seed=0)
    th = np.asarray(theta).reshape(3, 3, 3)  # (a, b, c): x^a y^b w^c
    xy, y2w = th[1, 1, 0], th[0, 2, 1]
    assert xy > 0 > y2w, th
    assert 0.8 <= xy / -y2w <= 1.25, (xy, y2w)
    rest = np.abs(th).ravel().tolist()
    rest.remove(abs(xy))
    rest.remove(abs(y2w))
    assert max(rest) < 0.5 * min(abs(xy), abs(y2w)), th
    assert float(np.mean(losses[-100:])) < 0.5 * float(np.mean(losses[:100]))
