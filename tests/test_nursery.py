"""Tests of the procedural nursery stages S1–S6 (localrules.tasks.nursery): renderer, noise, determinism,
label/foil logic per stage, test-set caching and forced-choice scoring. Small batches throughout (fast on 2 cores)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from localrules.core import Task
from localrules.tasks import nursery as N

NAMES = tuple(N.STAGES)


@functools.lru_cache(maxsize=None)
def _generate_fn(name, n, frames, overrides):
    cfg = N.stage_config(name, **dict(overrides))
    return jax.jit(lambda key, t: N.generate(name, cfg, key, t, n, frames))


def _batch(name, t=0, n=64, frames=2, seed=0, key=None, **overrides):
    """Batch t of run ``seed`` (or of ``key``) as numpy arrays, through a cached jitted generator."""
    key = jax.random.fold_in(N.stage_key(seed, name), t) if key is None else key
    x, y, aux = _generate_fn(name, n, frames, tuple(sorted(overrides.items())))(key, t)
    return np.asarray(x), np.asarray(y), {k: np.asarray(v) for k, v in aux.items()}


def _scene(name, key, n, **overrides):
    """The scene generator's raw output (slots, labels, aux, bg, contrast) as numpy."""
    cfg = N.stage_config(name, **overrides)
    slots, y, aux, bg, c = jax.jit(lambda k: N.GENERATORS[name](k, n, cfg))(key)
    as_np = lambda d: {k: np.array(v) for k, v in d.items()}
    return as_np(slots), np.asarray(y), as_np(aux), np.asarray(bg), np.asarray(c)


def _lookup_scorer(images: np.ndarray, scores: np.ndarray):
    """scores_fn that recognises each image of ``images`` (M, 32, 32, 3) and returns its row of ``scores`` (M, 21).

    Images are identified by 8 random projections of their pixels (nearest key), so the scorer is a pure function
    of x and works under jit/vmap like a rule's read-out."""
    m = images.shape[0]
    w = np.random.default_rng(0).standard_normal((32 * 32 * 3, 8)).astype(np.float32)
    keys = jnp.asarray(images.reshape(m, -1).astype(np.float64) @ w, jnp.float32)
    table = jnp.asarray(scores, jnp.float32)

    def scores_fn(x):  # x (n, F, 32, 32, 3): frame 0 identifies the sample
        k = x[:, 0].reshape(x.shape[0], -1) @ jnp.asarray(w)
        i = jnp.argmin(jnp.sum((k[:, None, :] - keys[None, :, :]) ** 2, axis=-1), axis=1)
        return table[i]

    return scores_fn


def _one_hot_scores(labels: np.ndarray, rng=None, random_heads=()) -> np.ndarray:
    """(M, H) labels → (M, 21) scores: 10 on the labelled unit of each head, 0 elsewhere; heads named in
    ``random_heads`` get random (untied) scores instead."""
    out = np.zeros((labels.shape[0], N.HEADS.total), np.float32)
    for i, (name, size) in enumerate(zip(N.HEADS.names, N.HEADS.sizes)):
        o = N.HEADS.offsets[i]
        if name in random_heads:
            out[:, o : o + size] = rng.standard_normal((labels.shape[0], size))
            continue
        valid = labels[:, i] >= 0
        out[np.where(valid)[0], o + labels[valid, i]] = 10.0
    return out


# --------------------------------------------------------------------------------------------- renderer, noise


def test_atlas_has_9_shapes_16_rotations_8_sizes_and_is_built_once():
    """The renderer reads one cached atlas per σ: (9·16·8, 64, 64, 3) uint8, same object on every call."""
    a = N.atlas(0.5)
    assert a.shape == (9 * 16 * 8, 64, 64, 3) and a.dtype == jnp.uint8
    assert N.atlas(0.5) is a
    assert np.allclose(N.SIZE_PX[[0, 1, 7]], [3.2, 4.754, 14.08], atol=1e-2)
    sharp = N.blurred(0.0).reshape(9, 16, 8, 64, 64)
    assert sharp.min() >= 0 and sharp.max() <= 1
    # every noun sprite fits inside the 64×64 pad with its blur (the screen is only used at size 5)
    for s in N.SIGMAS:
        b = N.blurred(s).reshape(9, 16, 8, 64, 64)[:8]
        assert np.all(b[..., :2, :] == 0) and np.all(b[..., -2:, :] == 0)
        assert np.all(b[..., :, :2] == 0) and np.all(b[..., :, -2:] == 0)


def test_screen_at_size_5_is_about_6_px_wide_and_full_height():
    """§3: screen half-width 0.55 s, half-height 1.6 s; at size 5 ≈ 6 px half-width and the full 32-px height."""
    sharp = N.blurred(0.0)
    scr = sharp[N.sprite_index(N.SCREEN, 0, 5)]
    cols = np.where(scr[32] > 0.5)[0]
    rows = np.where(scr[:, 32] > 0.5)[0]
    assert 11 <= len(cols) <= 13  # 2 × 6 px
    assert len(rows) >= 34  # covers the whole canvas when centred at y = 16


def test_noise_hash_is_approximately_standard_normal():
    """z = (byte sum of lowbias32 − 510)/147.8 must be ≈N(0,1) (mean 0, sd 1, bounded by ±3.45)."""
    z = np.asarray(N.hash_normal(N.hash_base(123, 7), jnp.arange(1 << 20, dtype=jnp.uint32)))
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1.0) < 0.01
    assert z.min() >= -510 / 147.8 and z.max() <= 510 / 147.8
    assert abs(np.mean(np.abs(z) > 1.96) - 0.05) < 0.005  # the tails are Gaussian-like, too
    # different counters give unrelated noise
    z2 = np.asarray(N.hash_normal(N.hash_base(123, 8), jnp.arange(1 << 20, dtype=jnp.uint32)))
    assert abs(np.corrcoef(z, z2)[0, 1]) < 0.01


@pytest.mark.parametrize("name", NAMES)
def test_batches_have_the_fixed_format_and_values_in_unit_interval(name):
    """Every stage emits x float32 (B, 2, 32, 32, 3) in [0, 1] and y int32 (B, 4) so one program serves all."""
    x, y, _ = _batch(name, n=32)
    assert x.shape == (32, 2, 32, 32, 3) and x.dtype == np.float32
    assert y.shape == (32, 4) and y.dtype == np.int32
    assert x.min() >= 0.0 and x.max() <= 1.0
    assert np.all(y < np.array(N.HEADS.sizes)) and np.all(y >= -1)
    trained = [N.HEADS.index(h) for h in N.STAGES[name].trains]
    untrained = [i for i in range(4) if i not in trained]
    assert np.all(y[:, trained] >= 0) and np.all(y[:, untrained] == -1)
    if name != "S6":
        assert np.array_equal(x[:, 0], x[:, 1])  # static stages repeat their frame
    if name == "S3":  # single-frame format (curricula without S6): the same batch, one frame
        x1, y1, _ = _batch(name, n=32, frames=1)
        assert x1.shape == (32, 1, 32, 32, 3) and np.array_equal(x1[:, 0], x[:, 0]) and np.array_equal(y1, y)


# --------------------------------------------------------------------------------------------- determinism


def test_same_key_and_step_give_bit_identical_batches_and_other_steps_differ():
    """Batch t is a pure function of (key, t); another t gives another batch."""
    sample = jax.jit(N.make_sampler("S3", batch_size=16))
    sk = N.stage_key(7, "S3")
    a = sample((), (), jax.random.fold_in(sk, 5), 5)
    b = sample((), (), jax.random.fold_in(sk, 5), 5)
    c = sample((), (), jax.random.fold_in(sk, 6), 6)
    assert np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y)
    assert not np.array_equal(a.x, c.x)


def test_resumed_stream_reproduces_batch_t_bit_for_bit():
    """A run resumed at step t sees the same batch t as an uninterrupted run (batches 0..t−1 leave no state)."""
    sample = N.make_sampler("S6", batch_size=8)
    sk = N.stage_key(3, "S6")

    def body(carry, t):
        b = sample((), (), jax.random.fold_in(sk, t), t)
        return carry, (b.x, b.y)

    stream = jax.jit(lambda ts: jax.lax.scan(body, 0, ts)[1])
    xs, ys = stream(jnp.arange(4))  # steps 0, 1, 2, 3 in one uninterrupted scan
    xr, yr = stream(jnp.asarray([3, 0, 1, 2]))  # "resumed" at step 3: batch 3 is generated first
    assert np.array_equal(xs[3], xr[0]) and np.array_equal(ys[3], yr[0])
    assert not np.array_equal(xs[2], xs[3])


def test_stage_key_follows_the_curriculum_convention():
    """stage_key = fold_in(fold_in(PRNGKey(seed), STAGE_ID), 0); test key = fold_in(PRNGKey(10000), STAGE_ID)."""
    k = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(5), 4), 0)
    assert np.array_equal(jax.random.key_data(N.stage_key(5, "S4")), jax.random.key_data(k))
    kt = jax.random.fold_in(jax.random.PRNGKey(10000), 6)
    assert np.array_equal(jax.random.key_data(N.test_key("S6")), jax.random.key_data(kt))


def test_test_sets_are_cached_identical_and_independent_of_run_seed():
    """Tests are generated once per process, regenerate bit-identically and never depend on the run seed."""
    t1 = N.make_stage("S2", batch_size=4, n_test=64)
    t2 = N.make_stage("S2", batch_size=4, n_test=64)
    assert t1.test is t2.test
    again = N.test_set.__wrapped__("S2", N.stage_config("S2", n_test=64))
    assert np.array_equal(t1.test["x"], again["x"]) and np.array_equal(t1.test["y"], again["y"])
    # training streams of two run seeds differ; nothing in the test depends on them
    sample = jax.jit(t1.sample)
    a = sample((), (), jax.random.fold_in(N.stage_key(0, "S2"), 0), 0)
    b = sample((), (), jax.random.fold_in(N.stage_key(1, "S2"), 0), 0)
    assert not np.array_equal(a.x, b.x)
    # the test is not batch 0 of a stream: it has its own key and noise seed
    assert not np.any(np.all(np.asarray(a.x)[:, 0] == np.asarray(t1.test["x"])[:4, 0], axis=(1, 2, 3)))


def test_make_stage_returns_a_task_with_global_heads_and_blur_variants():
    """make_stage gives a core Task (heads, input shape, chance); sigma= re-renders stream and test at that acuity."""
    t = N.make_stage("S1", batch_size=8, n_test=32)
    assert isinstance(t, Task) and t.heads == N.HEADS and t.input_shape == (2, 32, 32, 3) and t.data == ()
    assert t.chance == 0.25 and t.name == "nursery/S1[n_test=32]"
    assert N.STAGES["S6"].budget == 1_000_000 and N.STAGES["S5"].theta == 0.85
    sharp = N.make_stage("S1", batch_size=8, n_test=32, sigma=0.0)
    assert np.array_equal(sharp.test["y"], t.test["y"])  # same scenes…
    assert not np.array_equal(sharp.test["x"], t.test["x"])  # …rendered at another acuity
    # sharper images have more high-frequency energy
    hf = lambda x: float(np.mean(np.abs(np.diff(np.asarray(x)[:, 0], axis=1))))
    clean = lambda s: N.make_stage("S1", batch_size=8, n_test=32, sigma=s, noise=0.0).test["x"]
    assert hf(clean(0.0)) > hf(clean(1.5)) > hf(clean(3.0))
    with pytest.raises(ValueError):
        N.make_stage("S6", batch_size=8, frames=1)


# --------------------------------------------------------------------------------------------- stage logic


def test_s1_shows_one_of_four_grey_nouns():
    """S1: nouns ball/block/tent/stick only, grey objects (R = G = B without noise), noun head only."""
    x, y, _ = _batch("S1", n=256, noise=0.0)
    assert set(np.unique(y[:, N.NOUN])) <= {0, 1, 2, 3} and len(np.unique(y[:, N.NOUN])) == 4
    assert np.allclose(x[..., 0], x[..., 1]) and np.allclose(x[..., 1], x[..., 2])
    slots, _, _, _, _ = _scene("S1", jax.random.PRNGKey(0), 512)
    assert set(np.unique(slots["size"])) == {5, 6, 7} and np.all(slots["rot"] == 0)
    assert np.all(np.abs(np.asarray(slots["y"]) - 16) <= 1) and np.all(np.abs(np.asarray(slots["x"]) - 16) <= 1)


def test_s2_uses_all_nouns_and_colours_and_trains_only_the_noun():
    """S2: 8 nouns × 8 colours, size 3–6, rotation within ±2 steps; the colour is shown but not labelled."""
    slots, y, aux, _, _ = _scene("S2", jax.random.PRNGKey(1), 2048)
    assert len(np.unique(y[:, N.NOUN])) == 8 and len(np.unique(aux["colour"])) == 8
    assert np.all(y[:, N.COLOUR] == -1)
    assert set(np.unique(slots["size"])) == {3, 4, 5, 6}
    assert set(np.unique(slots["rot"])) == {14, 15, 0, 1, 2}


def test_s3_distractors_differ_from_the_target_and_the_screen_is_beside_it():
    """S3: 1–3 objects, distractor nouns ≠ target noun, drawn behind it; screen (p≈.3) at target x ± 9–13 px."""
    n = 4096
    slots, y, aux, _, _ = _scene("S3", jax.random.PRNGKey(2), n)
    shape, on = np.asarray(slots["shape"]), np.asarray(slots["on"])
    target = y[:, N.NOUN]
    assert np.array_equal(shape[:, 2], target)  # painter's order: distractors, target, screen
    assert np.all(shape[:, :2] != target[:, None])
    assert np.array_equal(on[:, :2].sum(1) + 1, aux["n_obj"]) and set(np.unique(aux["n_obj"])) == {1, 2, 3}
    assert abs(on[:, 3].mean() - 0.3) < 0.03 and np.all(shape[:, 3] == N.SCREEN)
    dx = np.abs(np.asarray(slots["x"])[:, 3] - np.asarray(slots["x"])[:, 2])
    assert np.all((dx >= 9) & (dx <= 13)) and np.all(np.asarray(slots["size"])[:, 2] >= 3)


def test_s4_utterance_names_one_of_two_distinct_objects_in_distinct_quadrants():
    """S4: two objects with distinct nouns in distinct quadrants; the label is the uttered noun, one of the two."""
    slots, y, aux, _, _ = _scene("S4", jax.random.PRNGKey(3), 2048)
    nouns = aux["nouns"]
    assert np.all(nouns[:, 0] != nouns[:, 1])
    word = y[:, N.NOUN]
    assert np.all((word == nouns[:, 0]) | (word == nouns[:, 1]))
    assert abs(np.mean(word == nouns[:, 0]) - 0.5) < 0.05
    qy, qx = np.asarray(slots["y"]) >= 16, np.asarray(slots["x"]) >= 16
    assert np.all((qy[:, 0] != qy[:, 1]) | (qx[:, 0] != qx[:, 1]))
    assert set(np.unique(slots["size"])) == {2, 3, 4}


def test_s4_test_items_are_the_word_and_three_other_distinct_nouns():
    """S4 4AFC: the target shows the word, the 3 foils show 3 other distinct nouns; target position is uniform."""
    test = {k: np.asarray(v) for k, v in N.test_set("S4", N.stage_config("S4")).items()}
    lab, utt, tgt = test["labels"], test["utter"], test["target"]
    nouns = lab[:, :, N.NOUN]
    assert np.all([len(set(r)) == 4 for r in nouns])
    assert np.array_equal(nouns[np.arange(len(tgt)), tgt], utt[:, N.NOUN])
    assert np.all(utt[:, 1:] == -1)
    assert np.all(np.abs(np.bincount(tgt, minlength=4) / len(tgt) - 0.25) < 0.05)


def test_s5_never_names_held_out_pairs_in_training():
    """S5: (colour + noun) mod 8 == 0 pairs are never training labels; the other 56 all occur."""
    _, y, _, _, _ = _scene("S5", jax.random.PRNGKey(5), 4096)
    c, n = y[:, N.COLOUR], y[:, N.NOUN]
    assert np.all((c + n) % 8 != 0)
    assert len(set(zip(c.tolist(), n.tolist()))) == 56


def test_s5_test_foils_are_exactly_the_three_recombinations():
    """S5 4AFC for target (c, n): foils (c′, n), (c, n′), (c′, n′), c′ ≠ c, n′ ≠ n; half seen, half held-out."""
    test = {k: np.asarray(v) for k, v in N.test_set("S5", N.stage_config("S5")).items()}
    lab, utt, tgt, held = test["labels"], test["utter"], test["target"], test["heldout"]
    m = len(tgt)
    c, n = utt[:, N.COLOUR], utt[:, N.NOUN]
    assert np.array_equal(held, np.arange(m) >= m // 2)
    assert np.all(((c + n) % 8 == 0) == held)
    for i in range(m):
        pairs = {(int(a), int(b)) for a, b in lab[i][:, [N.COLOUR, N.NOUN]]}
        assert len(pairs) == 4
        t = (int(c[i]), int(n[i]))
        assert tuple(lab[i, tgt[i], [N.COLOUR, N.NOUN]]) == t
        cs = {p[0] for p in pairs} - {t[0]}
        ns = {p[1] for p in pairs} - {t[1]}
        assert len(cs) == 1 and len(ns) == 1
        c2, n2 = cs.pop(), ns.pop()
        assert pairs == {t, (c2, t[1]), (t[0], n2), (c2, n2)}


def test_s6_hidden_toy_is_the_one_under_the_screen_in_frame_b_and_frame_a_has_no_screen():
    """S6: labels = noun and place of the toy the screen covers in frame B; frame A shows both toys, no screen."""
    key, n = jax.random.PRNGKey(4), 256
    x, y, aux = _batch("S6", n=n, key=key, noise=0.0)
    slots, _, _, bg, con = _scene("S6", key, n, noise=0.0)
    hidden, nouns, places = aux["hidden"], aux["nouns"], aux["places"]
    r = np.arange(n)
    assert np.array_equal(y[:, N.NOUN], nouns[r, hidden]) and np.array_equal(y[:, N.PLACE], places[r, hidden])
    assert np.all(nouns[:, 0] != nouns[:, 1]) and np.all(places[:, 0] != places[:, 1])
    assert np.array_equal(slots["x"][:, 2], N.PLACE_X[y[:, N.PLACE]]) and np.all(slots["shape"][:, 2] == N.SCREEN)
    col = N.PLACE_X[y[:, N.PLACE]]
    a_top, b_top = x[r, 0, 2, col], x[r, 1, 2, col]  # row 2, above every toy, at the screen's x
    brown = 0.5 + con[:, None] * (N.BROWN[None] - 0.5)
    np.testing.assert_allclose(b_top, brown, atol=1e-5)  # frame B: the screen
    np.testing.assert_allclose(a_top, np.repeat((0.5 + con * (bg - 0.5))[:, None], 3, 1), atol=1e-5)  # A: background
    # the hidden toy is invisible in frame B (up to its blurred rim: < 0.02, below the 0.05 pixel noise)
    slots["on"][r, hidden] = False
    sc = N._scene({k: jnp.asarray(v) for k, v in slots.items()}, jnp.asarray(bg), jnp.asarray(con))
    without = np.asarray(jax.jit(lambda s: N.render(N.atlas(0.5), s, 0.0, [0, 0], 2, True))(sc))
    assert np.abs(without[:, 1] - x[:, 1]).max() < 0.02
    # while frame A still shows it
    assert np.all(np.abs(without[:, 0] - x[:, 0]).max(axis=(1, 2, 3)) > 0.1)


def test_s6_noise_differs_between_frames():
    """S6 frames get independent noise (counters 2t and 2t+1): static stages repeat one frame, S6 must not."""
    x, _, _ = _batch("S6", n=32)
    d = x[:, 0] - x[:, 1]
    assert np.mean(np.abs(d[:, :4]) > 1e-4) > 0.9  # the top rows are background in both frames: noise only


# --------------------------------------------------------------------------------------------- evaluation


def _afc_scorer(test, **kw):
    imgs = np.asarray(test["x"])[:, :, 0].reshape(-1, 32, 32, 3)
    labels = np.asarray(test["labels"]).reshape(-1, test["labels"].shape[-1])
    return _lookup_scorer(imgs, _one_hot_scores(labels, **kw))


@pytest.mark.parametrize("name", ["S4", "S5"])
def test_forced_choice_perfect_scorer_scores_one_and_constant_scorer_zero(name):
    """A scorer that knows every image is always right; a constant scorer ties everywhere and ties are wrong."""
    task = N.make_stage(name, batch_size=4)
    ev = jax.jit(task.evaluate, static_argnums=0)
    perfect = ev(_afc_scorer(task.test), task.test)
    assert float(perfect["acc"]) == 1.0
    const = ev(lambda x: jnp.zeros((x.shape[0], N.HEADS.total)), task.test)
    assert float(const["acc"]) == 0.0
    if name == "S5":
        assert float(perfect["acc/heldout"]) == 1.0 and float(perfect["gap"]) == 0.0


def test_noun_only_scorer_is_capped_at_one_half_on_s5():
    """S5's foils share the noun with one candidate: knowing nouns but not colours gives 0.5 (± sampling error)."""
    task = N.make_stage("S5", batch_size=4)
    scorer = _afc_scorer(task.test, rng=np.random.default_rng(1), random_heads=("colour",))
    out = jax.jit(task.evaluate, static_argnums=0)(scorer, task.test)
    assert abs(float(out["acc"]) - 0.5) < 0.08 and abs(float(out["acc/heldout"]) - 0.5) < 0.08  # SE 0.022


def test_afc_score_sums_log_softmax_of_the_uttered_tokens():
    """score = Σ over the utterance's tokens of log_softmax(head)[token]; -1 tokens contribute nothing."""
    s = jnp.asarray(np.random.default_rng(0).standard_normal((3, N.HEADS.total)), jnp.float32)
    u = np.asarray([[2, 5, -1, -1], [7, -1, -1, -1], [-1, -1, 1, -1]])
    got = np.asarray(jax.jit(N.afc_scores)(s, u))
    for i in range(3):
        want = 0.0
        for h in range(4):
            if u[i, h] >= 0:
                z = np.asarray(N.HEADS.slice(s[i], h), np.float64)
                want += float(z[u[i, h]] - np.log(np.sum(np.exp(z))))
        assert abs(got[i] - want) < 1e-5
    cand = jnp.asarray([[1.0, 1.0, 0.0, 0.0], [2.0, 1.0, 0.0, 0.0]])
    assert np.array_equal(jax.jit(N.afc_correct)(cand, jnp.asarray([0, 0])), [False, True])  # ties are wrong


@pytest.mark.parametrize("name", ["S1", "S6"])
def test_classification_eval_is_jittable_and_vmappable_over_seeds(name):
    """evaluate runs inside jit(vmap(...)) over per-seed parameters; a perfect scorer gets 1.0 (S6: noun, place)."""
    task = N.make_stage(name, batch_size=4, n_test=200)
    base = _lookup_scorer(np.asarray(task.test["x"])[:, 0], _one_hot_scores(np.asarray(task.test["y"])))
    scale = jnp.asarray([1.0, -1.0])  # seed 1's "network" inverts every score

    out = jax.jit(jax.vmap(lambda s: task.evaluate(lambda x: s * base(x), task.test)))(scale)
    assert out["acc"].shape == (2,)
    assert float(out["acc"][0]) == 1.0 and float(out["acc"][1]) == 0.0
    if name == "S6":
        assert float(out["acc/place"][0]) == 1.0
        assert abs(float(out["ceiling/b_only"][0]) - 1 / 7) < 1e-7 and float(out["ceiling/a_only"][0]) == 0.5
