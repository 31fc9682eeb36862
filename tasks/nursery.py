"""The developmental "nursery" curriculum, procedural stages S1–S6, as pure JAX (spec: curriculum.md §2–§5).

Every stage is a :class:`localrules.core.Task` whose ``sample`` renders a fresh batch inside the jitted training
scan, deterministically from ``(key, t)`` with ``key = fold_in(stage_key, t)`` and
``stage_key = fold_in(fold_in(PRNGKey(run_seed), STAGE_ID), 0)`` (:func:`stage_key`).

**Renderer** (§3). A sprite atlas of 9 shapes (the 8 nouns + the occluding "screen") × 16 rotations × 8 sizes is
rasterised once at 4× super-sampling, box-filtered to 1×, blurred per acuity σ (separable Gaussian cut at 3σ) and
zero-padded to 64×64 (:func:`atlas`, cached per σ). An object at integer canvas centre ``(y, x)`` (``0 ≤ y, x ≤ 32``,
continuous coordinates, so 16 is the middle of the 32-px canvas) is the 32×32 window at ``(32 − y, 32 − x)`` of its
padded sprite: one ``lax.dynamic_slice`` vmapped over batch and object slots, i.e. one gather. Objects are painted
in slot order (distractors → target → screen) with ``img += mask·(rgb − img)`` on a grey background, then contrast
``0.5 + c·(img − 0.5)``, additive noise ``σₙ·z`` with ``z`` from a counter-based integer hash (lowbias32) of
``(noise_seed, counter, pixel index)`` (no RNG state, no ``jax.random.normal``), clipped to [0, 1].

**Data format**, identical for every stage so that one compiled program serves them all: ``x`` float32
``(B, F, 32, 32, 3)`` (static stages render one frame and repeat it F times; S6 needs F = 2) and ``y`` int32
``(B, 4)`` over the global heads :data:`HEADS` = noun 8, colour 8, place 3, size 2, ``-1`` where a stage does not
train that head.

**Tests** are generated once per process (``functools.lru_cache``) from the constant key
``fold_in(PRNGKey(10000), STAGE_ID)`` with their own noise seed, identical for every rule and seed. Static test
images are stored with one frame and repeated to F inside ``evaluate`` (halves the memory). S4/S5 are 4-way forced
choice: ``score = Σ over the utterance's tokens of log_softmax(head)[token]``; correct iff the target's score is
strictly the largest (ties are wrong); target position uniform.

Usage::

    from localrules.tasks import nursery
    task = nursery.make_stage("S3", batch_size=128)           # a localrules.core.Task
    batch = task.sample((), (), jax.random.fold_in(nursery.stage_key(0, "S3"), t), t)
    metrics = task.evaluate(scores_fn, task.test)               # {"acc": ..., ...}

``python -m localrules.tasks.nursery bench`` prints the generator throughput per stage.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from localrules.core import Batch, Heads, Task, correct, no_context, per_sample_loss

# --------------------------------------------------------------------------------------------- vocabulary

NOUNS = ("ball", "block", "tent", "stick", "ring", "cross", "moon", "cup")
COLOURS = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "white")
PLACES = ("left", "middle", "right")
SIZE_WORDS = ("small", "big")
#: The global output heads, fixed across stages (no task identity).
HEADS = Heads(("noun", "colour", "place", "size"), (8, 8, 3, 2))
NOUN, COLOUR, PLACE, SIZE = 0, 1, 2, 3
VOCAB = {"noun": NOUNS, "colour": COLOURS, "place": PLACES, "size": SIZE_WORDS}

PALETTE = np.array(
    [
        (0.90, 0.15, 0.15),  # red
        (0.95, 0.55, 0.10),  # orange
        (0.95, 0.90, 0.15),  # yellow
        (0.20, 0.75, 0.25),  # green
        (0.15, 0.85, 0.90),  # cyan
        (0.20, 0.30, 0.95),  # blue
        (0.60, 0.25, 0.85),  # purple
        (0.95, 0.95, 0.95),  # white
    ],
    np.float32,
)
GREY = np.array((0.85, 0.85, 0.85), np.float32)  # S1's colourless objects
BROWN = np.array((0.45, 0.30, 0.15), np.float32)  # the screen

# --------------------------------------------------------------------------------------------- atlas

CANVAS = 32
PAD = 64  # padded sprite side
SUPER = 4  # super-sampling factor
N_SHAPES, N_ROT, N_SIZE = 9, 16, 8
SCREEN = 8  # shape index of the occluder
SIGMAS = (0.0, 0.5, 1.5, 3.0)  # the acuity levels of the curriculum (any σ ≥ 0 works)
#: half-extent s of size index i in px: linspace(0.10, 0.44, 8) × 32 = 3.2 … 14.1
SIZE_PX = np.linspace(0.10, 0.44, N_SIZE) * CANVAS
SHAPE_NAMES = NOUNS + ("screen",)


def _shape_masks(u: jax.Array, v: jax.Array) -> list[jax.Array]:
    """Indicator of each shape in its own frame: (u, v) in units of the half-extent s, v pointing down."""
    r2 = u * u + v * v
    au, av = jnp.abs(u), jnp.abs(v)
    return [
        r2 <= 1.0,  # ball: disk
        jnp.maximum(au, av) <= 0.85,  # block: square, half-side 0.85 s
        (v <= 0.5) & (au * np.sqrt(3.0) <= v + 1.0),  # tent: equilateral triangle, circumradius s, apex up
        (av <= 1.0) & (au <= 0.3),  # stick: upright bar, half-thickness 0.3 s
        (r2 <= 1.0) & (r2 >= 0.36),  # ring: annulus, inner radius 0.6 s
        ((au <= 0.28) & (av <= 1.0)) | ((av <= 0.28) & (au <= 1.0)),  # cross: plus, arm half-width 0.28 s
        (r2 <= 1.0) & ((u - 0.45) ** 2 + v * v > 0.85**2),  # moon: crescent opening to the right
        (au <= 0.85) & (av <= 0.85) & ~((au <= 0.5) & (v <= 0.5)),  # cup: U, open at the top
        (au <= 0.55) & (av <= 1.6),  # screen: half-width 0.55 s, half-height 1.6 s
    ]


@jax.jit
def _coverage_jit() -> jax.Array:
    n = PAD * SUPER
    c = (jnp.arange(n, dtype=jnp.float32) + 0.5) / SUPER - PAD / 2  # sample positions, px from the sprite centre
    yy, xx = c[:, None], c[None, :]
    th = jnp.arange(N_ROT, dtype=jnp.float32) * (2 * np.pi / N_ROT)
    co, si = jnp.cos(th)[:, None, None, None], jnp.sin(th)[:, None, None, None]
    s = jnp.asarray(SIZE_PX, jnp.float32)[None, :, None, None]
    u = (co * xx + si * yy) / s
    v = (-si * xx + co * yy) / s
    out = [
        m.astype(jnp.float32).reshape(N_ROT, N_SIZE, PAD, SUPER, PAD, SUPER).mean((3, 5))
        for m in _shape_masks(u, v)
    ]
    return jnp.stack(out)  # (9, 16, 8, 64, 64)


@functools.lru_cache(maxsize=None)
def coverage() -> np.ndarray:
    """Anti-aliased (4× super-sampled) sharp sprites, (9, 16, 8, 64, 64) float32, built once per process."""
    return np.asarray(_coverage_jit())


def gaussian_matrix(sigma: float, n: int = PAD) -> np.ndarray:
    """(n, n) matrix of a 1-D Gaussian blur with zero padding, kernel cut at 3σ and normalised; identity at σ=0."""
    if sigma <= 0:
        return np.eye(n, dtype=np.float32)
    r = int(np.floor(3 * sigma))
    d = np.arange(-r, r + 1)
    k = np.exp(-0.5 * (d / sigma) ** 2)
    k /= k.sum()
    g = np.zeros((n, n), np.float64)
    for off, w in zip(d, k):
        g += w * np.eye(n, k=int(off))
    return g.astype(np.float32)


@functools.lru_cache(maxsize=None)
def atlas(sigma: float) -> jax.Array:
    """Pre-blurred atlas for acuity σ px: (9·16·8, 64, 64) float32, sprite index (shape·16 + rot)·8 + size."""
    g = gaussian_matrix(float(sigma))
    a = coverage().reshape(-1, PAD, PAD)
    a = np.einsum("ij,njk,lk->nil", g, a, g, optimize=True).astype(np.float32)
    return jnp.asarray(a)


def sprite_index(shape, rot, size):
    return (shape * N_ROT + rot % N_ROT) * N_SIZE + size


# --------------------------------------------------------------------------------------------- noise


def lowbias32(x: jax.Array) -> jax.Array:
    """Chris Wellons' lowbias32 integer hash on uint32."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    x = x ^ (x >> 16)
    return x


def hash_base(seed, counter) -> jax.Array:
    """Per-(seed, counter) offset added to the pixel index before the per-pixel hash."""
    seed = jnp.asarray(seed).astype(jnp.uint32)
    counter = jnp.asarray(counter).astype(jnp.uint32)
    return lowbias32(lowbias32(seed) ^ (counter * jnp.uint32(0x9E3779B9)))


def hash_normal(base: jax.Array, index: jax.Array) -> jax.Array:
    """≈N(0,1) from the 4 bytes of lowbias32(index + base): (byte sum − 510)/147.8 (mean 510, sd 147.8)."""
    h = lowbias32(index.astype(jnp.uint32) + base)
    s = (h & jnp.uint32(0x00FF00FF)) + ((h >> 8) & jnp.uint32(0x00FF00FF))  # two 16-bit lanes, each ≤ 510
    s = (s & jnp.uint32(0xFFFF)) + (s >> 16)
    return (s.astype(jnp.int32) - 510).astype(jnp.float32) * (1.0 / 147.8)


# --------------------------------------------------------------------------------------------- renderer


class Scene(NamedTuple):
    """Object slots of N images, painted in slot order. Leading dims (N, K); rgb (N, K, 3); bg, contrast (N,)."""

    shape: jax.Array
    rot: jax.Array
    size: jax.Array
    y: jax.Array
    x: jax.Array
    rgb: jax.Array
    on: jax.Array
    bg: jax.Array
    contrast: jax.Array


def render(sprites: jax.Array, scene: Scene, noise: float, base: jax.Array) -> jax.Array:
    """Render N images (N, 32, 32, 3) in [0, 1]. ``base`` (N,) uint32: per-image noise-hash offset."""
    n, k = scene.shape.shape
    idx = sprite_index(scene.shape, scene.rot, scene.size)
    y = jnp.clip(scene.y, 0, CANVAS)
    x = jnp.clip(scene.x, 0, CANVAS)

    def window(i, yy, xx):
        return lax.dynamic_slice(sprites, (i, PAD // 2 - yy, PAD // 2 - xx), (1, CANVAS, CANVAS))[0]

    masks = jax.vmap(jax.vmap(window))(idx, y, x)  # (N, K, 32, 32): one gather
    masks = masks * scene.on[:, :, None, None].astype(masks.dtype)
    img = jnp.broadcast_to(scene.bg[:, None, None, None], (n, CANVAS, CANVAS, 3))
    for j in range(k):
        m = masks[:, j, :, :, None]
        img = img + m * (scene.rgb[:, j, None, None, :] - img)
    c = scene.contrast[:, None, None, None]
    img = 0.5 + c * (img - 0.5)
    if noise > 0:
        pix = lax.broadcasted_iota(jnp.uint32, (n, CANVAS, CANVAS, 3), 0) * jnp.uint32(CANVAS * CANVAS * 3)
        pix = pix + (
            lax.broadcasted_iota(jnp.uint32, (n, CANVAS, CANVAS, 3), 1) * jnp.uint32(CANVAS * 3)
            + lax.broadcasted_iota(jnp.uint32, (n, CANVAS, CANVAS, 3), 2) * jnp.uint32(3)
            + lax.broadcasted_iota(jnp.uint32, (n, CANVAS, CANVAS, 3), 3)
        )
        img = img + noise * hash_normal(base[:, None, None, None], pix)
    return jnp.clip(img, 0.0, 1.0)


# --------------------------------------------------------------------------------------------- stages


@dataclasses.dataclass(frozen=True)
class StageInfo:
    """Per-stage metadata (curriculum §4/§5)."""

    stage_id: int
    theta: float  # graduation threshold on ``acc``
    budget: int  # samples
    chance: float
    trains: tuple[str, ...]  # heads labelled in training
    test: str  # description of the test


STAGES: dict[str, StageInfo] = {
    "S1": StageInfo(1, 0.90, 500_000, 0.25, ("noun",), "2000 images, noun"),
    "S2": StageInfo(2, 0.90, 500_000, 0.125, ("noun",), "2000 images, noun"),
    "S3": StageInfo(3, 0.75, 500_000, 0.125, ("noun",), "2000 images, noun of the attended object"),
    "S4": StageInfo(4, 0.75, 500_000, 0.25, ("noun",), "1000 4AFC (word + 4 single-object images)"),
    "S5": StageInfo(5, 0.85, 500_000, 0.25, ("colour", "noun"), "500 seen + 500 held-out (colour, noun) 4AFC"),
    "S6": StageInfo(6, 0.65, 1_000_000, 0.125, ("noun", "place"), "2000 clips, noun of the hidden toy"),
}


@dataclasses.dataclass(frozen=True)
class StageConfig:
    """Rendering statistics of a stage; any field may be overridden in :func:`make_stage` (e.g. ``sigma=0.0``)."""

    sigma: float = 0.5
    contrast: tuple[float, float] = (0.6, 1.0)
    noise: float = 0.05
    background: tuple[float, float] = (0.35, 0.55)
    screen_p: float = 0.3  # S3: probability of the occluding screen
    n_test: int = 2000  # test images / clips, or 4AFC items (S4, S5: half seen, half held-out)


DEFAULTS: dict[str, StageConfig] = {
    "S1": StageConfig(sigma=3.0, contrast=(0.35, 0.6), noise=0.03),
    "S2": StageConfig(sigma=1.5, contrast=(0.5, 0.9), noise=0.04),
    "S3": StageConfig(),
    "S4": StageConfig(n_test=1000),
    "S5": StageConfig(n_test=1000),
    "S6": StageConfig(contrast=(0.9, 0.9), background=(0.45, 0.60)),
}

QUAD_CENTRES = np.array([(8, 8), (8, 24), (24, 8), (24, 24)], np.int32)  # (y, x) of the 4 quadrants
PLACE_X = np.array([6, 16, 26], np.int32)
#: S5: (colour, noun) pairs never named in training: (colour + noun) mod 8 == 0
HELDOUT_PAIRS = np.array([(c, n) for c in range(8) for n in range(8) if (c + n) % 8 == 0], np.int32)
SEEN_PAIRS = np.array([(c, n) for c in range(8) for n in range(8) if (c + n) % 8 != 0], np.int32)
S6_CEILING_B_ONLY = 1.0 / 7.0
S6_CEILING_A_ONLY = 0.5
NOISE_TAG = 0x6E6F6973  # fold_in tag of the training noise seed
TEST_NOISE_TAG = 0x74657374  # fold_in tag of the test noise seed
TEST_KEY_SEED = 10000


def stage_key(run_seed: int, name: str) -> jax.Array:
    """``fold_in(fold_in(PRNGKey(run_seed), STAGE_ID), 0)``; batch t uses ``fold_in(stage_key, t)``."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(run_seed), STAGES[name].stage_id), 0)


def test_key(name: str) -> jax.Array:
    """The constant, run-seed-independent key of a stage's test set: ``fold_in(PRNGKey(10000), STAGE_ID)``."""
    return jax.random.fold_in(jax.random.PRNGKey(TEST_KEY_SEED), STAGES[name].stage_id)


def _rint(x):
    return jnp.round(x).astype(jnp.int32)


def _randint(key, shape, lo, hi):
    """Uniform integers in [lo, hi] inclusive."""
    return jax.random.randint(key, shape, lo, hi + 1, dtype=jnp.int32)


def _other(key, base, n, shape=None):
    """Uniform over {0..n−1} \\ {base}."""
    return (base + _randint(key, base.shape if shape is None else shape, 1, n - 1)) % n


def _scene_stats(key, n, cfg: StageConfig):
    kb, kc = jax.random.split(key)
    bg = jax.random.uniform(kb, (n,), minval=cfg.background[0], maxval=cfg.background[1])
    c = jax.random.uniform(kc, (n,), minval=cfg.contrast[0], maxval=cfg.contrast[1])
    return bg, c


def _stack_slots(*slots):
    """slots: dicts of per-slot (N,) fields (rgb (N, 3)) → stacked (N, K) fields."""
    return {f: jnp.stack([s[f] for s in slots], axis=1) for f in ("shape", "rot", "size", "y", "x", "rgb", "on")}


def _slot(shape, rot, size, y, x, rgb, on=None):
    n = shape.shape[0]
    return dict(
        shape=shape.astype(jnp.int32),
        rot=rot.astype(jnp.int32),
        size=jnp.broadcast_to(size, (n,)).astype(jnp.int32),
        y=jnp.broadcast_to(y, (n,)).astype(jnp.int32),
        x=jnp.broadcast_to(x, (n,)).astype(jnp.int32),
        rgb=jnp.broadcast_to(rgb, (n, 3)).astype(jnp.float32),
        on=jnp.ones((n,), bool) if on is None else on,
    )


def _labels(n, **heads):
    y = jnp.full((n, len(HEADS.names)), -1, jnp.int32)
    for name, v in heads.items():
        y = y.at[:, HEADS.index(name)].set(v.astype(jnp.int32))
    return y


def _quadrant_pos(key, q):
    kj = jax.random.split(key)
    yx = jnp.asarray(QUAD_CENTRES)[q]
    return yx[:, 0] + _randint(kj[0], q.shape, -2, 2), yx[:, 1] + _randint(kj[1], q.shape, -2, 2)


def _single_objects(key, noun, colour, cfg: StageConfig):
    """Single-object images at a random quadrant (the S4/S5 test items): one slot, size 2–4, any rotation."""
    n = noun.shape[0]
    k = jax.random.split(key, 4)
    y, x = _quadrant_pos(k[0], _randint(k[1], (n,), 0, 3))
    obj = _slot(noun, _randint(k[2], (n,), 0, N_ROT - 1), _randint(k[3], (n,), 2, 4), y, x, jnp.asarray(PALETTE)[colour])
    return _stack_slots(obj)


# Each scene generator: (key, n, cfg) -> (slots dict (N, K, ...), labels (N, H), aux dict)


def _gen_s1(key, n, cfg):
    k = jax.random.split(key, 4)
    noun = _randint(k[0], (n,), 0, 3)
    y = 16 + _rint(jax.random.uniform(k[1], (n,), minval=-1.3, maxval=1.3))
    x = 16 + _rint(jax.random.uniform(k[2], (n,), minval=-1.3, maxval=1.3))
    size = _randint(k[3], (n,), 5, 7)
    obj = _slot(noun, jnp.zeros((n,), jnp.int32), size, y, x, jnp.asarray(GREY))
    return _stack_slots(obj), _labels(n, noun=noun), {}


def _gen_s2(key, n, cfg):
    k = jax.random.split(key, 6)
    noun = _randint(k[0], (n,), 0, 7)
    colour = _randint(k[1], (n,), 0, 7)
    y = 16 + _rint(jax.random.uniform(k[2], (n,), minval=-4.8, maxval=4.8))
    x = 16 + _rint(jax.random.uniform(k[3], (n,), minval=-4.8, maxval=4.8))
    rot = _randint(k[4], (n,), -2, 2) % N_ROT
    size = _randint(k[5], (n,), 3, 6)
    obj = _slot(noun, rot, size, y, x, jnp.asarray(PALETTE)[colour])
    return _stack_slots(obj), _labels(n, noun=noun), {"colour": colour}


def _gen_s3(key, n, cfg):
    k = jax.random.split(key, 12)
    pal = jnp.asarray(PALETTE)
    noun = _randint(k[0], (n,), 0, 7)
    colour = _randint(k[1], (n,), 0, 7)
    ty = 16 + _rint(jax.random.uniform(k[2], (n,), minval=-3.8, maxval=3.8))
    tx = 16 + _rint(jax.random.uniform(k[3], (n,), minval=-3.8, maxval=3.8))
    target = _slot(noun, _randint(k[4], (n,), 0, N_ROT - 1), _randint(k[5], (n,), 3, 5), ty, tx, pal[colour])
    n_obj = _randint(k[6], (n,), 1, 3)
    kd = jax.random.split(k[7], 5)
    dn = _other(kd[0], noun[:, None], 8, (n, 2))  # distractor nouns ≠ target
    dpos = _rint(jax.random.uniform(kd[1], (n, 2, 2), minval=4.0, maxval=28.0))
    drot = _randint(kd[2], (n, 2), 0, N_ROT - 1)
    dsize = _randint(kd[3], (n, 2), 1, 3)
    dcol = _randint(kd[4], (n, 2), 0, 7)
    dist = [_slot(dn[:, j], drot[:, j], dsize[:, j], dpos[:, j, 0], dpos[:, j, 1], pal[dcol[:, j]], on=j < n_obj - 1) for j in range(2)]
    screen_on = jax.random.uniform(k[8], (n,)) < cfg.screen_p
    side = jnp.where(jax.random.bernoulli(k[9], 0.5, (n,)), 1, -1)
    sx = tx + side * _rint(jax.random.uniform(k[10], (n,), minval=9.0, maxval=13.0))
    screen = _slot(jnp.full((n,), SCREEN), jnp.zeros((n,), jnp.int32), 5, 16, sx, jnp.asarray(BROWN), on=screen_on)
    aux = {"colour": colour, "n_obj": n_obj, "screen": screen_on}
    return _stack_slots(dist[0], dist[1], target, screen), _labels(n, noun=noun), aux


def _two_objects_quadrants(key, n, pal_colour0, pal_colour1, noun0, noun1):
    k = jax.random.split(key, 6)
    q0 = _randint(k[0], (n,), 0, 3)
    q1 = _other(k[1], q0, 4)
    y0, x0 = _quadrant_pos(k[2], q0)
    y1, x1 = _quadrant_pos(k[3], q1)
    rot = _randint(k[4], (n, 2), 0, N_ROT - 1)
    size = _randint(k[5], (n, 2), 2, 4)
    pal = jnp.asarray(PALETTE)
    a = _slot(noun0, rot[:, 0], size[:, 0], y0, x0, pal[pal_colour0])
    b = _slot(noun1, rot[:, 1], size[:, 1], y1, x1, pal[pal_colour1])
    return a, b


def _gen_s4(key, n, cfg):
    k = jax.random.split(key, 5)
    n0 = _randint(k[0], (n,), 0, 7)
    n1 = _other(k[1], n0, 8)
    c = _randint(k[2], (n, 2), 0, 7)
    a, b = _two_objects_quadrants(k[3], n, c[:, 0], c[:, 1], n0, n1)
    which = _randint(k[4], (n,), 0, 1)
    word = jnp.where(which == 0, n0, n1)
    return _stack_slots(a, b), _labels(n, noun=word), {"nouns": jnp.stack([n0, n1], 1), "colours": c, "which": which}


def _gen_s5(key, n, cfg):
    k = jax.random.split(key, 5)
    pair = jnp.asarray(SEEN_PAIRS)[_randint(k[0], (n,), 0, len(SEEN_PAIRS) - 1)]
    c, nn = pair[:, 0], pair[:, 1]
    other = _randint(k[1], (n, 2), 0, 7)  # the un-named object's (colour, noun): unconstrained
    two = _randint(k[2], (n,), 1, 2) == 2
    first_unnamed, named = _two_objects_quadrants(k[3], n, other[:, 0], c, other[:, 1], nn)
    first_unnamed["on"] = two
    aux = {"n_obj": jnp.where(two, 2, 1), "other": other}
    return _stack_slots(first_unnamed, named), _labels(n, noun=nn, colour=c), aux


def _gen_s6(key, n, cfg):
    """Slots toy0, toy1, screen; the screen is on only in frame B (see _frames_s6)."""
    k = jax.random.split(key, 9)
    n0 = _randint(k[0], (n,), 0, 7)
    n1 = _other(k[1], n0, 8)
    p0 = _randint(k[2], (n,), 0, 2)
    p1 = _other(k[3], p0, 3)
    ys = 16 + _randint(k[4], (n, 2), -3, 3)
    rot = _randint(k[5], (n, 2), 0, N_ROT - 1)
    size = _randint(k[6], (n, 2), 0, 1)
    col = _randint(k[7], (n, 2), 0, 7)
    hidden = _randint(k[8], (n,), 0, 1)
    pal, px = jnp.asarray(PALETTE), jnp.asarray(PLACE_X)
    t0 = _slot(n0, rot[:, 0], size[:, 0], ys[:, 0], px[p0], pal[col[:, 0]])
    t1 = _slot(n1, rot[:, 1], size[:, 1], ys[:, 1], px[p1], pal[col[:, 1]])
    hp = jnp.where(hidden == 0, p0, p1)
    hn = jnp.where(hidden == 0, n0, n1)
    screen = _slot(jnp.full((n,), SCREEN), jnp.zeros((n,), jnp.int32), 5, 16, px[hp], jnp.asarray(BROWN))
    aux = {"nouns": jnp.stack([n0, n1], 1), "places": jnp.stack([p0, p1], 1), "hidden": hidden, "colours": col}
    return _stack_slots(t0, t1, screen), _labels(n, noun=hn, place=hp), aux


GENERATORS = {"S1": _gen_s1, "S2": _gen_s2, "S3": _gen_s3, "S4": _gen_s4, "S5": _gen_s5, "S6": _gen_s6}


def _scene(slots, bg, contrast) -> Scene:
    return Scene(slots["shape"], slots["rot"], slots["size"], slots["y"], slots["x"], slots["rgb"], slots["on"], bg, contrast)


def _render_static(name, cfg, key, n, noise_seed, counter):
    """One frame per sample: (N, 32, 32, 3), labels (N, H), aux."""
    kg, ks = jax.random.split(key)
    slots, y, aux = GENERATORS[name](kg, n, cfg)
    bg, c = _scene_stats(ks, n, cfg)
    base = jnp.broadcast_to(hash_base(noise_seed, counter), (n,))
    img = render(atlas(cfg.sigma), _scene(slots, bg, c), cfg.noise, base)
    return img, y, aux


def _render_s6(cfg, key, n, noise_seed, t):
    """Frames A (no screen) and B (screen over the hidden toy): (N, 2, 32, 32, 3); noise counters 2t, 2t+1."""
    kg, ks = jax.random.split(key)
    slots, y, aux = _gen_s6(kg, n, cfg)
    bg, c = _scene_stats(ks, n, cfg)
    on_a = slots["on"].at[:, 2].set(False)
    both = {f: jnp.concatenate([v, v]) for f, v in slots.items()}
    both["on"] = jnp.concatenate([on_a, slots["on"]])
    t = jnp.asarray(t).astype(jnp.uint32)
    base = jnp.concatenate(
        [jnp.broadcast_to(hash_base(noise_seed, 2 * t), (n,)), jnp.broadcast_to(hash_base(noise_seed, 2 * t + 1), (n,))]
    )
    img = render(atlas(cfg.sigma), _scene(both, jnp.concatenate([bg, bg]), jnp.concatenate([c, c])), cfg.noise, base)
    return jnp.stack([img[:n], img[n:]], axis=1), y, aux


def _noise_seed(key, tag):
    return jax.random.bits(jax.random.fold_in(key, tag), (), jnp.uint32)


def generate(name: str, cfg: StageConfig, key: jax.Array, t, n: int, frames: int, noise_seed=None):
    """Batch of stage ``name``: ``(x (n, F, 32, 32, 3), y (n, H), aux)``; deterministic in ``(key, t)``."""
    if noise_seed is None:
        noise_seed = _noise_seed(key, NOISE_TAG)
    if name == "S6":
        if frames != 2:
            raise ValueError("S6 consists of 2-frame clips: use frames=2")
        return _render_s6(cfg, key, n, noise_seed, t)
    img, y, aux = _render_static(name, cfg, key, n, noise_seed, t)
    return jnp.broadcast_to(img[:, None], (n, frames) + img.shape[1:]), y, aux


# --------------------------------------------------------------------------------------------- test sets


def _perm4(key, n):
    """(n, 4) random permutations of 0..3 (order of the 4AFC items: value 0 = target)."""
    return jnp.argsort(jax.random.uniform(key, (n, 4)), axis=1).astype(jnp.int32)


def _afc_items(name, cfg, key, noise_seed):
    """4AFC test: x (N, 4, 1, 32, 32, 3), utter (N, H), target (N,), labels (N, 4, H), heldout (N,) bool."""
    n = cfg.n_test
    k = jax.random.split(key, 6)
    if name == "S4":
        w = _randint(k[0], (n,), 0, 7)
        # w and 3 other distinct nouns: the 3 smallest uniforms among the 7 other nouns
        u = jax.random.uniform(k[1], (n, 8)).at[jnp.arange(n), w].set(2.0)
        others = jnp.argsort(u, axis=1)[:, :3].astype(jnp.int32)
        nouns = jnp.concatenate([w[:, None], others], axis=1)  # candidate 0 is the target
        colours = _randint(k[2], (n, 4), 0, 7)
        utter = _labels(n, noun=w)
        heldout = jnp.zeros((n,), bool)
        lab = _labels(4 * n, noun=nouns.reshape(-1)).reshape(n, 4, -1)
    else:  # S5: first half seen pairs, second half held-out pairs
        ns = n // 2
        seen = jnp.asarray(SEEN_PAIRS)[_randint(k[0], (ns,), 0, len(SEEN_PAIRS) - 1)]
        held = jnp.asarray(HELDOUT_PAIRS)[_randint(k[1], (n - ns,), 0, len(HELDOUT_PAIRS) - 1)]
        pair = jnp.concatenate([seen, held])
        c, nn = pair[:, 0], pair[:, 1]
        c2 = _other(k[2], c, 8)
        n2 = _other(jax.random.fold_in(k[2], 1), nn, 8)
        colours = jnp.stack([c, c2, c, c2], 1)  # (c,n) (c',n) (c,n') (c',n')
        nouns = jnp.stack([nn, nn, n2, n2], 1)
        utter = _labels(n, noun=nn, colour=c)
        heldout = jnp.arange(n) >= ns
        lab = _labels(4 * n, noun=nouns.reshape(-1), colour=colours.reshape(-1)).reshape(n, 4, -1)
    perm = _perm4(k[3], n)  # position j shows candidate perm[:, j]
    nouns = jnp.take_along_axis(nouns, perm, 1)
    colours = jnp.take_along_axis(colours, perm, 1)
    lab = jnp.take_along_axis(lab, perm[:, :, None], 1)
    target = jnp.argmin(perm, axis=1).astype(jnp.int32)
    slots = _single_objects(k[4], nouns.reshape(-1), colours.reshape(-1), cfg)
    bg, con = _scene_stats(k[5], 4 * n, cfg)
    base = jnp.broadcast_to(hash_base(noise_seed, 0), (4 * n,))
    img = render(atlas(cfg.sigma), _scene(slots, bg, con), cfg.noise, base)
    x = img.reshape(n, 4, 1, CANVAS, CANVAS, 3)
    return {"x": x, "utter": utter, "target": target, "labels": lab, "heldout": heldout}


@functools.lru_cache(maxsize=None)
def test_set(name: str, cfg: StageConfig) -> dict:
    """The cached test set of a stage (a dict of arrays), identical for every rule and run seed.

    Classification stages: ``x`` (N, F0, 32, 32, 3) with F0 = 1 (static; repeated to F in ``evaluate``) or 2 (S6),
    ``y`` (N, H). 4AFC stages: see :func:`_afc_items`.
    """
    key = test_key(name)
    noise_seed = _noise_seed(key, TEST_NOISE_TAG)
    if name in ("S4", "S5"):
        out = jax.jit(lambda k, s: _afc_items(name, cfg, k, s))(key, noise_seed)
    else:
        f = 2 if name == "S6" else 1

        def gen(k, s):
            x, y, aux = generate(name, cfg, k, 0, cfg.n_test, f, noise_seed=s)
            return {"x": x, "y": y, **{f"aux/{a}": v for a, v in aux.items()}}

        out = jax.jit(gen)(key, noise_seed)
    return jax.tree.map(lambda a: jax.device_put(np.asarray(a)), out)


# --------------------------------------------------------------------------------------------- evaluation


def _to_frames(x, frames):
    return x if x.shape[1] == frames else jnp.broadcast_to(x[:, :1], (x.shape[0], frames) + x.shape[2:])


def _chunks(n, chunk):
    c = min(chunk, n)
    while n % c:
        c -= 1
    return c


def classify_eval(frames: int, primary: str, trained: tuple[str, ...], extra: dict | None = None, chunk: int = 500):
    """``evaluate`` of a classification stage: strict accuracy per trained head; ``acc`` = the primary head's."""
    idx = {h: HEADS.index(h) for h in trained}

    def evaluate(scores_fn, test):
        x, y = test["x"], test["y"]
        n = x.shape[0]
        c = _chunks(n, chunk)
        xs = x.reshape((n // c, c) + x.shape[1:])
        ys = y.reshape((n // c, c) + y.shape[1:])

        def one(args):
            xb, yb = args
            s = scores_fn(_to_frames(xb, frames))
            ok, v = correct(s, yb, HEADS)
            return ok, jnp.sum(per_sample_loss(s, yb, HEADS))

        ok, ls = lax.map(one, (xs, ys))
        ok = ok.reshape(n, -1)
        out = {"acc": jnp.mean(ok[:, idx[primary]].astype(jnp.float32)), "loss": jnp.sum(ls) / n}
        for h, i in idx.items():
            out[f"acc/{h}"] = jnp.mean(ok[:, i].astype(jnp.float32))
        if len(idx) > 1:
            out["acc/all"] = jnp.mean(jnp.all(ok[:, list(idx.values())], axis=1).astype(jnp.float32))
        for k, v in (extra or {}).items():
            out[k] = jnp.asarray(v, jnp.float32)
        return out

    return evaluate


def afc_scores(scores: jax.Array, utter: jax.Array) -> jax.Array:
    """Forced-choice score per candidate: Σ over the utterance's tokens of log_softmax(head)[token].

    ``scores`` (..., 21) of the candidate images, ``utter`` (..., H) broadcastable, -1 = no token in that head.
    """
    total = jnp.zeros(scores.shape[:-1], jnp.float32)
    for i, _ in enumerate(HEADS.sizes):
        lp = jax.nn.log_softmax(HEADS.slice(scores, i).astype(jnp.float32), axis=-1)
        tok = jnp.broadcast_to(utter[..., i], lp.shape[:-1])
        v = jnp.take_along_axis(lp, jnp.maximum(tok, 0)[..., None], axis=-1)[..., 0]
        total = total + jnp.where(tok >= 0, v, 0.0)
    return total


def afc_correct(cand: jax.Array, target: jax.Array) -> jax.Array:
    """(N, 4) candidate scores, (N,) target position → correct iff the target's score is strictly largest."""
    tgt = jnp.take_along_axis(cand, target[:, None], axis=1)[:, 0]
    others = jnp.where(jax.nn.one_hot(target, cand.shape[1], dtype=bool), -jnp.inf, cand)
    return tgt > jnp.max(others, axis=1)


def afc_eval(frames: int, split: bool, chunk: int = 250):
    """``evaluate`` of a 4AFC stage; with ``split`` (S5), ``acc`` = seen pairs, plus ``acc/heldout`` and ``gap``."""

    def evaluate(scores_fn, test):
        x, utter, target = test["x"], test["utter"], test["target"]
        n = x.shape[0]
        c = _chunks(n, chunk)

        def one(args):
            xb, ub, tb = args
            s = scores_fn(_to_frames(xb.reshape((c * 4,) + xb.shape[2:]), frames))
            cand = afc_scores(s.reshape(c, 4, -1), ub[:, None, :])
            return afc_correct(cand, tb)

        ok = lax.map(
            one, (x.reshape((n // c, c) + x.shape[1:]), utter.reshape(n // c, c, -1), target.reshape(n // c, c))
        ).reshape(n).astype(jnp.float32)
        if not split:
            return {"acc": jnp.mean(ok)}
        h = test["heldout"].astype(jnp.float32)
        seen = jnp.sum(ok * (1 - h)) / jnp.maximum(jnp.sum(1 - h), 1)
        held = jnp.sum(ok * h) / jnp.maximum(jnp.sum(h), 1)
        return {"acc": seen, "acc/seen": seen, "acc/heldout": held, "gap": held - seen, "acc/all": jnp.mean(ok)}

    return evaluate


# --------------------------------------------------------------------------------------------- tasks


def stage_config(name: str, **overrides) -> StageConfig:
    if name not in DEFAULTS:
        raise ValueError(f"unknown nursery stage {name!r}; stages are {list(DEFAULTS)}")
    cfg = dataclasses.replace(DEFAULTS[name], **overrides)
    return dataclasses.replace(cfg, contrast=tuple(map(float, cfg.contrast)), background=tuple(map(float, cfg.background)), sigma=float(cfg.sigma))


def make_sampler(name: str, batch_size: int, frames: int = 2, cfg: StageConfig | None = None) -> Callable:
    """``sample(data, ctx, key, t) -> Batch`` of stage ``name`` (pure; uses only ``key`` and ``t``)."""
    cfg = stage_config(name) if cfg is None else cfg
    atlas(cfg.sigma)  # build the atlas now, not while tracing

    def sample(data, ctx, key, t):
        x, y, _ = generate(name, cfg, key, t, batch_size, frames)
        return Batch(x, y)

    return sample


def make_stage(name: str, batch_size: int, frames: int = 2, **overrides) -> Task:
    """Stage ``name`` ("S1".."S6") as a :class:`localrules.core.Task`.

    ``overrides`` replace :class:`StageConfig` fields for both training stream and test, e.g. ``sigma=0.0`` for the
    blur-robustness variants of S1/S2 (σ ∈ {0, 0.5, 1.5, 3}).
    """
    cfg = stage_config(name, **overrides)
    if frames not in (1, 2):
        raise ValueError("frames must be 1 or 2")
    if name == "S6" and frames != 2:
        raise ValueError("S6 needs frames=2 (two-frame clips)")
    info = STAGES[name]
    if name in ("S4", "S5"):
        evaluate = afc_eval(frames, split=name == "S5")
    elif name == "S6":
        evaluate = classify_eval(frames, "noun", ("noun", "place"), {"ceiling/b_only": S6_CEILING_B_ONLY, "ceiling/a_only": S6_CEILING_A_ONLY})
    else:
        evaluate = classify_eval(frames, "noun", ("noun",))
    tag = "".join(f",{k}={v}" for k, v in sorted(overrides.items()))
    return Task(
        name=f"nursery/{name}" + (f"[{tag[1:]}]" if tag else ""),
        heads=HEADS,
        input_shape=(frames, CANVAS, CANVAS, 3),
        data=(),
        context=no_context,
        sample=make_sampler(name, batch_size, frames, cfg),
        test=test_set(name, cfg),
        evaluate=evaluate,
        steps_per_epoch=None,
        chance=info.chance,
    )


# --------------------------------------------------------------------------------------------- benchmark


def bench(batch_size: int = 16384, reps: int = 9, stages=tuple(STAGES)) -> list[tuple[str, int, float]]:
    """Samples/s of ``sample`` per stage and frame count: median of ``reps`` jitted calls after warm-up."""
    rows = []
    for name in stages:
        for frames in ((2,) if name == "S6" else (1, 2)):
            sample = make_sampler(name, batch_size, frames)
            k0 = stage_key(0, name)
            fn = jax.jit(lambda t: sample((), (), jax.random.fold_in(k0, t), t))
            jax.block_until_ready(fn(0))
            ts = []
            for i in range(reps):
                t0 = time.perf_counter()
                jax.block_until_ready(fn(i + 1))
                ts.append(time.perf_counter() - t0)
            rate = batch_size / float(np.median(ts))
            rows.append((name, frames, rate))
            print(f"{name}  F={frames}  {rate:>10,.0f} samples/s  ({float(np.median(ts)) * 1e3:.1f} ms / {batch_size})", flush=True)
    return rows


def main(argv: list[str]) -> None:
    if argv[:1] == ["bench"]:
        kw = dict(a.split("=", 1) for a in argv[1:])
        stages = tuple(kw["stages"].split(",")) if "stages" in kw else tuple(STAGES)
        t0 = time.perf_counter()
        for s in SIGMAS:
            atlas(s)
        print(f"atlas build (4 σ): {time.perf_counter() - t0:.2f} s; devices {jax.devices()}")
        bench(int(kw.get("B", 16384)), int(kw.get("reps", 9)), stages)
    else:
        print("usage: python -m localrules.tasks.nursery bench [B=16384 reps=9 stages=S1,S6]")


if __name__ == "__main__":
    main(sys.argv[1:])
