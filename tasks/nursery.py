"""The developmental "nursery" curriculum, procedural stages S1–S6, as pure JAX (spec: curriculum.md §2–§5).

Every stage is a :class:`localrules.core.Task` whose ``sample(data, ctx, key, t)`` renders a fresh batch inside the
jitted training scan, deterministically from ``(key, t)`` alone, with ``key = fold_in(stage_key, t)`` and
``stage_key = fold_in(fold_in(PRNGKey(run_seed), STAGE_ID), 0)`` (:func:`stage_key`).

**Renderer** (§3). A sprite atlas of 9 shapes (the 8 nouns + the occluding "screen") × 16 rotations × 8 sizes is
rasterised once at 4× super-sampling, box-filtered to 1×, blurred per acuity σ (separable Gaussian cut at 3σ) and
zero-padded to 64×64 (:func:`blurred`, float32; :func:`atlas`, the renderer's uint8 copy; both cached per σ). An
object at integer canvas centre ``(y, x)`` (``0 ≤ y, x ≤ 32`` in continuous coordinates: 16 is the middle of the
canvas) is the 32×32 window at ``(32 − y, 32 − x)`` of its padded sprite: ``lax.dynamic_slice`` vmapped over batch,
frames and object slots, i.e. a gather. Objects are painted in slot order (distractors → target → screen) with
``img += mask·(rgb − img)`` on a grey background, then contrast ``0.5 + c·(img − 0.5)``, additive noise
``σₙ·z`` with ``z`` from a counter-based integer hash (lowbias32) of ``(noise_seed, counter, pixel index)`` (no
RNG state, no ``jax.random.normal``), clipped to [0, 1]. The whole image is one fused XLA loop (see :func:`render`).

**Data format**, identical for every stage so that one compiled program serves them all: ``x`` float32
``(B, F, 32, 32, 3)`` (static stages render one frame and repeat it: the F frames are bit-identical; S6 needs
F = 2) and ``y`` int32 ``(B, 4)`` over the global heads :data:`HEADS` = noun 8, colour 8, place 3, size 2, ``-1``
where a stage does not train that head. S1–S3 train ``noun``; S4 the uttered noun (the utterance is the label);
S5 ``colour`` + ``noun`` of the named object; S6 ``noun`` + ``place`` of the hidden toy.

**Tests** are generated once per process (``functools.lru_cache``) from the constant key
``fold_in(PRNGKey(10000), STAGE_ID)`` with their own noise seed, identical for every rule and seed. Static test
images are stored with one frame and repeated to F inside ``evaluate`` (halves the memory). S4/S5 are 4-way forced
choice: ``score = Σ over the utterance's tokens of log_softmax(head)[token]``; correct iff the target's score is
strictly the largest (ties are wrong); target position uniform. ``evaluate`` is pure (jit/vmap over seeds).

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
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from localrules import core
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
    yy, xx = c[None, None, :, None], c[None, None, None, :]
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
    # an AOT-compiled call runs immediately even when first reached while tracing a sampler
    return np.asarray(_coverage_jit.lower().compile()())


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
def blurred(sigma: float) -> np.ndarray:
    """Pre-blurred sprites for acuity σ px: (9·16·8, 64, 64) float32 in [0, 1], index (shape·16 + rot)·8 + size."""
    g = gaussian_matrix(float(sigma))
    a = coverage().reshape(-1, PAD, PAD)
    return np.clip(np.einsum("ij,njk,lk->nil", g, a, g, optimize=True), 0.0, 1.0).astype(np.float32)


ATLAS_SCALE = 1.0 / 255.0


@functools.lru_cache(maxsize=None)
def atlas(sigma: float) -> jax.Array:
    """The renderer's atlas for acuity σ: (9·16·8, 64, 64, 3) uint8, coverage × 255 repeated over RGB (14 MB).

    Stored as uint8 (quantisation ≤ 1/510 of a colour step, far below the pixel noise) and with the mask repeated
    over the 3 channels, so that XLA fuses the placement gather into the single loop that writes the image: no
    (N, K, 32, 32) temporary, and a cache-resident atlas. Measured on the 2-core CPU this is ~3× faster than a
    float32 (…, 64, 64) atlas (see ``bench``). Mask = atlas · :data:`ATLAS_SCALE`.
    """
    a = np.round(blurred(float(sigma)) * 255.0).astype(np.uint8)
    a = np.ascontiguousarray(np.repeat(a[..., None], 3, axis=-1))
    with jax.ensure_compile_time_eval():  # may be first called while tracing a sampler
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


def _window(sprites, i, y, x):
    """The 32×32×3 window of sprite ``i`` at integer canvas centre (y, x): ``dynamic_slice`` at (32−y, 32−x)."""
    return lax.dynamic_slice(sprites, (i, PAD // 2 - y, PAD // 2 - x, 0), (1, CANVAS, CANVAS, 3))[0]


def render(
    sprites: jax.Array, scene: Scene, noise: float, bases, frames: int = 1, reveal_last: bool = False
) -> jax.Array:
    """Render N images or clips, (N, F, 32, 32, 3) float32 in [0, 1], as ONE fused XLA loop over the output.

    ``sprites``: :func:`atlas`. ``bases``: uint32 noise-hash offsets, one for all frames (static stages: the F frames
    are bit-identical) or one per frame (S6); value ``i = (row·32 + col)·3 + channel`` of image ``b`` gets
    ``z(lowbias32(b·3072 + i + base))``. With ``reveal_last`` (S6) frame 0 omits the last slot and frame 1 shows it.

    Performance notes (2-core CPU): the placement gather is indexed per (sample, frame, slot) so that each gathered
    value is used exactly once and XLA fuses it into the output loop (no (N, K, 32, 32) temporaries, whose fresh
    allocation costs more than the arithmetic); compositing is written ``img·(1 − m) + m·rgb`` so that ``img``
    occurs once per slot (fused elemental code re-emits repeated operands: two uses per slot would cost 2^K).
    """
    n, k = scene.shape.shape
    f = 2 if reveal_last else frames
    shp = (n, f, CANVAS, CANVAS, 3)
    idx = sprite_index(scene.shape, scene.rot, scene.size)
    y = jnp.clip(scene.y, 0, CANVAS)
    x = jnp.clip(scene.x, 0, CANVAS)
    shown = np.ones((f, k), np.float32)  # slot j visible in frame
    if reveal_last:
        shown[0, k - 1] = 0.0
    on = scene.on.astype(jnp.float32)[:, None, :] * jnp.asarray(shown)[None]  # (n, F, K)
    per_frame = lambda a: jnp.broadcast_to(a[:, None], (n, f))
    img = jnp.broadcast_to(scene.bg[:, None, None, None, None], shp)
    for j in range(k):  # painter's order: img += m·(rgb − img)
        window = jax.vmap(jax.vmap(functools.partial(_window, sprites)))
        m = window(per_frame(idx[:, j]), per_frame(y[:, j]), per_frame(x[:, j]))
        m = m.astype(jnp.float32) * (ATLAS_SCALE * on[:, :, j])[:, :, None, None, None]
        img = img * (1.0 - m) + m * scene.rgb[:, j, None, None, None, :]
    img = 0.5 + scene.contrast[:, None, None, None, None] * (img - 0.5)
    if noise > 0:
        iota = lambda d: lax.broadcasted_iota(jnp.uint32, shp, d)
        pix = iota(0) * jnp.uint32(CANVAS * CANVAS * 3) + iota(2) * jnp.uint32(CANVAS * 3)
        pix = pix + iota(3) * jnp.uint32(3) + iota(4)
        bases = [jnp.asarray(b).astype(jnp.uint32) for b in bases]
        base = bases[0]
        for i in range(1, len(bases)):
            base = jnp.where(lax.broadcasted_iota(jnp.int32, shp, 1) == i, bases[i], base)
        img = img + noise * hash_normal(base, pix)
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


test_key.__test__ = False  # not a pytest test when imported into a test module


class _Draw:
    """Every random number of a batch from ONE threefry call: an (n, cols) uniform array handed out column by column.

    (One call instead of ~20 keeps the sampler's XLA program small: it compiles in a fraction of the time.)
    """

    def __init__(self, key, n: int, cols: int):
        self.u = jax.random.uniform(key, (n, cols), jnp.float32)
        self.n, self.cols, self.i = n, cols, 0

    def uniform(self, lo=0.0, hi=1.0, k: int | None = None):
        w = 1 if k is None else k
        if self.i + w > self.cols:
            raise ValueError(f"_Draw: {self.cols} columns are not enough")
        u = self.u[:, self.i : self.i + w]
        self.i += w
        u = lo + (hi - lo) * u
        return u[:, 0] if k is None else u

    def randint(self, lo: int, hi: int, k: int | None = None):
        """Uniform integers in [lo, hi] inclusive."""
        u = self.uniform(0.0, 1.0, k)
        return lo + jnp.minimum(jnp.floor(u * (hi - lo + 1)).astype(jnp.int32), hi - lo)

    def other(self, base, m: int, k: int | None = None):
        """Uniform over {0..m−1} \\ {base} (base broadcast against the k columns)."""
        return (base + self.randint(1, m - 1, k)) % m

    def offset(self, r: float, k: int | None = None):
        """Integer pixel offset: U(−r, r) rounded."""
        return jnp.round(self.uniform(-r, r, k)).astype(jnp.int32)


def _scene_stats(d: _Draw, cfg: StageConfig):
    return d.uniform(*cfg.background), d.uniform(*cfg.contrast)


def _stack_slots(*slots):
    """slots: dicts of per-slot (N,) fields (rgb (N, 3)) → stacked (N, K) fields."""
    return {f: jnp.stack([s[f] for s in slots], axis=1) for f in ("shape", "rot", "size", "y", "x", "rgb", "on")}


def _slot(shape, rot, size, y, x, rgb, on=None):
    n = shape.shape[0]
    return dict(
        shape=jnp.asarray(shape).astype(jnp.int32),
        rot=jnp.broadcast_to(rot, (n,)).astype(jnp.int32),
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


def _quadrant_object(d: _Draw, q, noun, colour):
    """An object of size 2–4, any rotation, centred in quadrant q ± 2 px (the S4/S5 placement)."""
    yx = jnp.asarray(QUAD_CENTRES)[q]
    y, x = yx[:, 0] + d.randint(-2, 2), yx[:, 1] + d.randint(-2, 2)
    return _slot(noun, d.randint(0, N_ROT - 1), d.randint(2, 4), y, x, jnp.asarray(PALETTE)[colour])


# Scene generators: (key, n, cfg) -> (slots dict of (N, K) fields, labels (N, H), aux dict, bg (N,), contrast (N,))


def _gen_s1(key, n, cfg):
    d = _Draw(key, n, 6)
    noun = d.randint(0, 3)
    obj = _slot(noun, 0, d.randint(5, 7), 16 + d.offset(1.3), 16 + d.offset(1.3), jnp.asarray(GREY))
    return _stack_slots(obj), _labels(n, noun=noun), {}, *_scene_stats(d, cfg)


def _gen_s2(key, n, cfg):
    d = _Draw(key, n, 8)
    noun, colour = d.randint(0, 7), d.randint(0, 7)
    rot = d.randint(-2, 2) % N_ROT
    obj = _slot(noun, rot, d.randint(3, 6), 16 + d.offset(4.8), 16 + d.offset(4.8), jnp.asarray(PALETTE)[colour])
    return _stack_slots(obj), _labels(n, noun=noun), {"colour": colour}, *_scene_stats(d, cfg)


def _gen_s3(key, n, cfg):
    d = _Draw(key, n, 24)
    pal = jnp.asarray(PALETTE)
    noun, colour = d.randint(0, 7), d.randint(0, 7)
    tx = 16 + d.offset(3.8)
    target = _slot(noun, d.randint(0, N_ROT - 1), d.randint(3, 5), 16 + d.offset(3.8), tx, pal[colour])
    n_obj = d.randint(1, 3)
    dn = d.other(noun[:, None], 8, 2)  # distractor nouns ≠ target
    dpos = jnp.round(d.uniform(4.0, 28.0, 4)).astype(jnp.int32)
    drot, dsize, dcol = d.randint(0, N_ROT - 1, 2), d.randint(1, 3, 2), d.randint(0, 7, 2)
    dist = [
        _slot(dn[:, j], drot[:, j], dsize[:, j], dpos[:, 2 * j], dpos[:, 2 * j + 1], pal[dcol[:, j]], on=j < n_obj - 1)
        for j in range(2)
    ]
    screen_on = d.uniform() < cfg.screen_p
    side = jnp.where(d.uniform() < 0.5, 1, -1)
    sx = tx + side * jnp.round(d.uniform(9.0, 13.0)).astype(jnp.int32)
    screen = _slot(jnp.full((n,), SCREEN), 0, 5, 16, sx, jnp.asarray(BROWN), on=screen_on)
    aux = {"colour": colour, "n_obj": n_obj, "screen": screen_on}
    return _stack_slots(dist[0], dist[1], target, screen), _labels(n, noun=noun), aux, *_scene_stats(d, cfg)


def _gen_s4(key, n, cfg):
    d = _Draw(key, n, 17)
    n0 = d.randint(0, 7)
    n1 = d.other(n0, 8)
    c = d.randint(0, 7, 2)
    q0 = d.randint(0, 3)
    q1 = d.other(q0, 4)
    a, b = _quadrant_object(d, q0, n0, c[:, 0]), _quadrant_object(d, q1, n1, c[:, 1])
    which = d.randint(0, 1)
    word = jnp.where(which == 0, n0, n1)
    aux = {"nouns": jnp.stack([n0, n1], 1), "colours": c, "which": which}
    return _stack_slots(a, b), _labels(n, noun=word), aux, *_scene_stats(d, cfg)


def _gen_s5(key, n, cfg):
    """Slots: the un-named object (drawn first, present with p = 1/2), then the named object."""
    d = _Draw(key, n, 16)
    pair = jnp.asarray(SEEN_PAIRS)[d.randint(0, len(SEEN_PAIRS) - 1)]
    c, nn = pair[:, 0], pair[:, 1]
    other = d.randint(0, 7, 2)  # the un-named object's (colour, noun): unconstrained
    two = d.randint(1, 2) == 2
    q0 = d.randint(0, 3)
    q1 = d.other(q0, 4)
    unnamed, named = _quadrant_object(d, q0, other[:, 1], other[:, 0]), _quadrant_object(d, q1, nn, c)
    unnamed["on"] = two
    aux = {"n_obj": jnp.where(two, 2, 1), "other": other}
    return _stack_slots(unnamed, named), _labels(n, noun=nn, colour=c), aux, *_scene_stats(d, cfg)


def _gen_s6(key, n, cfg):
    """Slots toy0, toy1, screen; frame A omits the screen (render(..., reveal_last=True))."""
    d = _Draw(key, n, 15)
    n0 = d.randint(0, 7)
    n1 = d.other(n0, 8)
    p0 = d.randint(0, 2)
    p1 = d.other(p0, 3)
    ys = 16 + d.randint(-3, 3, 2)
    rot, size, col = d.randint(0, N_ROT - 1, 2), d.randint(0, 1, 2), d.randint(0, 7, 2)
    hidden = d.randint(0, 1)
    pal, px = jnp.asarray(PALETTE), jnp.asarray(PLACE_X)
    t0 = _slot(n0, rot[:, 0], size[:, 0], ys[:, 0], px[p0], pal[col[:, 0]])
    t1 = _slot(n1, rot[:, 1], size[:, 1], ys[:, 1], px[p1], pal[col[:, 1]])
    hp = jnp.where(hidden == 0, p0, p1)
    hn = jnp.where(hidden == 0, n0, n1)
    screen = _slot(jnp.full((n,), SCREEN), 0, 5, 16, px[hp], jnp.asarray(BROWN))
    aux = {"nouns": jnp.stack([n0, n1], 1), "places": jnp.stack([p0, p1], 1), "hidden": hidden, "colours": col}
    return _stack_slots(t0, t1, screen), _labels(n, noun=hn, place=hp), aux, *_scene_stats(d, cfg)


GENERATORS = {"S1": _gen_s1, "S2": _gen_s2, "S3": _gen_s3, "S4": _gen_s4, "S5": _gen_s5, "S6": _gen_s6}


def _scene(slots, bg, contrast) -> Scene:
    return Scene(*(slots[f] for f in ("shape", "rot", "size", "y", "x", "rgb", "on")), bg, contrast)


def _noise_seed(key, tag):
    return jax.random.bits(jax.random.fold_in(key, tag), (), jnp.uint32)


def generate(name: str, cfg: StageConfig, key: jax.Array, t, n: int, frames: int, noise_seed=None, sprites=None):
    """Batch of stage ``name``: ``(x (n, F, 32, 32, 3), y (n, H), aux)``; deterministic in ``(key, t)``.

    Noise: ``noise_seed`` (default: drawn from ``key``) hashed with counter ``t`` (static stages) or ``2t``/``2t+1``
    (S6's frames A/B) and the pixel index. ``sprites``: the atlas (default :func:`atlas` ``(cfg.sigma)``, baked
    into the program as a constant; pass it as an argument to share one compiled program across σ).
    """
    if noise_seed is None:
        noise_seed = _noise_seed(key, NOISE_TAG)
    if sprites is None:
        sprites = atlas(cfg.sigma)
    slots, y, aux, bg, c = GENERATORS[name](key, n, cfg)
    t = jnp.asarray(t).astype(jnp.uint32)
    if name == "S6":
        if frames != 2:
            raise ValueError("S6 consists of 2-frame clips: use frames=2")
        bases = [hash_base(noise_seed, 2 * t), hash_base(noise_seed, 2 * t + 1)]
        return render(sprites, _scene(slots, bg, c), cfg.noise, bases, 2, reveal_last=True), y, aux
    return render(sprites, _scene(slots, bg, c), cfg.noise, [hash_base(noise_seed, t)], frames), y, aux


# --------------------------------------------------------------------------------------------- test sets


def _afc_items(name, cfg, key, noise_seed, sprites):
    """4AFC test: x (N, 4, 1, 32, 32, 3), utter (N, H), target (N,), labels (N, 4, H), heldout (N,) bool."""
    n = cfg.n_test
    k_item, k_img = jax.random.split(key)
    d = _Draw(k_item, n, 17)
    if name == "S4":
        w = d.randint(0, 7)
        # w and 3 other distinct nouns: the 3 smallest of 8 uniforms, w's set above them
        u = jnp.where(jax.nn.one_hot(w, 8, dtype=bool), 2.0, d.uniform(0.0, 1.0, 8))
        others = jnp.argsort(u, axis=1)[:, :3].astype(jnp.int32)
        nouns = jnp.concatenate([w[:, None], others], axis=1)  # candidate 0 is the target
        colours = d.randint(0, 7, 4)
        utter = _labels(n, noun=w)
        heldout = jnp.zeros((n,), bool)
        lab = _labels(4 * n, noun=nouns.reshape(-1)).reshape(n, 4, -1)
    else:  # S5: first half seen pairs, second half held-out pairs
        ns = n // 2
        first = jnp.arange(n) < ns
        u = d.uniform()
        pick = lambda tab: jnp.asarray(tab)[jnp.minimum(jnp.floor(u * len(tab)).astype(jnp.int32), len(tab) - 1)]
        seen, held = pick(SEEN_PAIRS), pick(HELDOUT_PAIRS)
        pair = jnp.where(first[:, None], seen, held)
        c, nn = pair[:, 0], pair[:, 1]
        c2, n2 = d.other(c, 8), d.other(nn, 8)
        colours = jnp.stack([c, c2, c, c2], 1)  # (c,n) (c',n) (c,n') (c',n')
        nouns = jnp.stack([nn, nn, n2, n2], 1)
        utter = _labels(n, noun=nn, colour=c)
        heldout = ~first
        lab = _labels(4 * n, noun=nouns.reshape(-1), colour=colours.reshape(-1)).reshape(n, 4, -1)
    perm = jnp.argsort(d.uniform(0.0, 1.0, 4), axis=1).astype(jnp.int32)  # position j shows candidate perm[:, j]
    nouns = jnp.take_along_axis(nouns, perm, 1)
    colours = jnp.take_along_axis(colours, perm, 1)
    lab = jnp.take_along_axis(lab, perm[:, :, None], 1)
    target = jnp.argmin(perm, axis=1).astype(jnp.int32)  # where candidate 0 went
    di = _Draw(k_img, 4 * n, 8)
    obj = _quadrant_object(di, di.randint(0, 3), nouns.reshape(-1), colours.reshape(-1))
    bg, con = _scene_stats(di, cfg)
    img = render(sprites, _scene(_stack_slots(obj), bg, con), cfg.noise, [hash_base(noise_seed, 0)])
    x = img.reshape(n, 4, 1, CANVAS, CANVAS, 3)
    return {"x": x, "utter": utter, "target": target, "labels": lab, "heldout": heldout}


@functools.lru_cache(maxsize=None)
def _test_generator(name: str, cfg: StageConfig) -> Callable:
    """Jitted test-set generator ``(sprites, key, noise_seed) -> dict``; one compile serves every σ."""
    if name in ("S4", "S5"):
        return jax.jit(lambda sprites, k, s: _afc_items(name, cfg, k, s, sprites))
    frames = 2 if name == "S6" else 1

    def gen(sprites, k, s):
        x, y, aux = generate(name, cfg, k, 0, cfg.n_test, frames, noise_seed=s, sprites=sprites)
        return {"x": x, "y": y, **{f"aux/{a}": v for a, v in aux.items()}}

    return jax.jit(gen)


@functools.lru_cache(maxsize=None)
def test_set(name: str, cfg: StageConfig) -> dict:
    """The cached test set of a stage (a dict of arrays), identical for every rule and run seed.

    Key ``fold_in(PRNGKey(10000), STAGE_ID)``, its own noise seed. Classification stages: ``x`` (N, F0, 32, 32, 3)
    with F0 = 1 (static; repeated to F in ``evaluate``) or 2 (S6), ``y`` (N, H), ``aux/*`` (scene facts).
    4AFC stages: ``x`` (N, 4, 1, 32, 32, 3), ``utter`` (N, H), ``target`` (N,), ``labels`` (N, 4, H),
    ``heldout`` (N,).
    """
    key = test_key(name)
    noise_seed = _noise_seed(key, TEST_NOISE_TAG)
    out = _test_generator(name, dataclasses.replace(cfg, sigma=0.0))(atlas(cfg.sigma), key, noise_seed)
    return jax.tree.map(lambda a: jax.device_put(np.asarray(a)), out)


test_set.__test__ = False


# --------------------------------------------------------------------------------------------- evaluation


def _to_frames(x, frames):
    return x if x.shape[1] == frames else jnp.broadcast_to(x[:, :1], (x.shape[0], frames) + x.shape[2:])


def _map_chunks(fn, arrays, chunk: int):
    """``fn`` over slices of ``chunk`` rows of ``arrays`` (same leading size n) with ``lax.map``; the last slice is
    zero-padded; the outputs' leading (chunk-count, chunk) dims are flattened and trimmed back to n rows."""
    n = arrays[0].shape[0]
    c = min(chunk, n)
    nb = -(-n // c)
    pad = nb * c - n
    xs = tuple(jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1)).reshape((nb, c) + a.shape[1:]) for a in arrays)
    out = lax.map(lambda args: fn(*args), xs)
    return jax.tree.map(lambda o: o.reshape((nb * c,) + o.shape[2:])[:n], out)


def classify_eval(frames: int, primary: str, trained: tuple[str, ...], extra: dict | None = None, chunk: int = 500):
    """``evaluate`` of a classification stage: strict accuracy per trained head (ties wrong); ``acc`` = the
    primary head's; ``loss`` = mean task loss; ``acc/all`` = every trained head right (S6: noun and place)."""
    idx = {h: HEADS.index(h) for h in trained}

    def evaluate(scores_fn, test):
        def one(xb, yb):
            s = scores_fn(_to_frames(xb, frames))
            ok, _ = correct(s, yb, HEADS)
            return ok, per_sample_loss(s, yb, HEADS)

        ok, loss = _map_chunks(one, (test["x"], test["y"]), chunk)
        ok = ok.astype(jnp.float32)
        out = {"acc": jnp.mean(ok[:, idx[primary]]), "loss": jnp.mean(loss)}
        for h, i in idx.items():
            out[f"acc/{h}"] = jnp.mean(ok[:, i])
        if len(idx) > 1:
            out["acc/all"] = jnp.mean(jnp.prod(ok[:, list(idx.values())], axis=1))
        for k, v in (extra or {}).items():
            out[k] = jnp.asarray(v, jnp.float32)
        return out

    return evaluate


def afc_scores(scores: jax.Array, utter: jax.Array, normalise: bool = True) -> jax.Array:
    """Forced-choice score per candidate: Σ over the utterance's tokens of the token's score — by default
    log_softmax(head)[token] of read-out scores; ``normalise=False`` for token scores that are already comparable
    across images (a rule's own forced-choice scorer, e.g. Forward-Forward's goodness).

    ``scores`` (..., 21) of the candidate images, ``utter`` (..., H) broadcastable, -1 = no token in that head.
    """
    total = jnp.zeros(scores.shape[:-1], jnp.float32)
    for i, _ in enumerate(HEADS.sizes):
        lp = HEADS.slice(scores, i).astype(jnp.float32)
        lp = jax.nn.log_softmax(lp, axis=-1) if normalise else lp
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
        def one(xb, ub, tb):
            c = xb.shape[0]
            s = core.scorer(scores_fn).token_scores(_to_frames(xb.reshape((c * 4,) + xb.shape[2:]), frames), HEADS)
            return afc_correct(afc_scores(s.reshape(c, 4, -1), ub[:, None, :], normalise=False), tb)

        ok = _map_chunks(one, (test["x"], test["utter"], test["target"]), chunk).astype(jnp.float32)
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
    as_pair = lambda v: tuple(float(a) for a in v)
    cfg = dataclasses.replace(cfg, contrast=as_pair(cfg.contrast), background=as_pair(cfg.background))
    return dataclasses.replace(cfg, sigma=float(cfg.sigma), n_test=int(cfg.n_test))


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
        ceilings = {"ceiling/b_only": S6_CEILING_B_ONLY, "ceiling/a_only": S6_CEILING_A_ONLY}
        evaluate = classify_eval(frames, "noun", ("noun", "place"), ceilings)
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


def _timed(fn, args_fn, reps):
    """Median wall and CPU (user+sys, all threads) seconds and minor page faults per call."""
    import resource

    walls, cpus, faults = [], [], []
    for i in range(reps):
        args = args_fn(i)
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        walls.append(time.perf_counter() - t0)
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        cpus.append(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime)
        faults.append(r1.ru_minflt - r0.ru_minflt)
    return float(np.median(walls)), float(np.median(cpus)), int(np.median(faults))


def bench(batch_size: int = 16384, reps: int = 9, stages=tuple(STAGES), inplace: bool = True) -> list[dict]:
    """Generator throughput per stage and frame count: median of ``reps`` jitted calls after a warm-up call.

    ``fresh``: each call returns a newly allocated batch (the spec's measurement); ``inplace``: the previous batch's
    buffer is donated and reused for the output, which removes the page faults of the fresh ~200 MB allocation
    (inside the training scan the batch is a small reused temporary, so this is the relevant cost there).
    """
    rows = []
    print(f"B = {batch_size}, median of {reps} calls; samples/s = B / median wall; cpu = user+sys of all threads")
    for name in stages:
        for frames in ((2,) if name == "S6" else (1, 2)):
            sample = make_sampler(name, batch_size, frames)
            k0 = stage_key(0, name)
            fresh = jax.jit(lambda t: sample((), (), jax.random.fold_in(k0, t), t))
            jax.block_until_ready(fresh(0))
            w, c, f = _timed(fresh, lambda i: (i + 1,), reps)
            row = dict(stage=name, frames=frames, fresh=batch_size / w, fresh_ms=w * 1e3, fresh_cpu_ms=c * 1e3)
            line = f"{name}  F={frames}  fresh {batch_size / w:>9,.0f}/s ({w * 1e3:6.1f} ms, cpu {c * 1e3:6.1f} ms"
            line += f", {f:6d} faults)"
            if inplace:
                buf = {"x": fresh(0).x}

                def step(t, old):
                    return sample((), (), jax.random.fold_in(k0, t), t).x

                donated = jax.jit(step, donate_argnums=1, keep_unused=True)
                buf["x"] = donated(0, buf["x"])

                def run(t):
                    buf["x"] = donated(t, buf["x"])
                    return buf["x"]

                w2, c2, f2 = _timed(run, lambda i: (i + 1,), reps)
                row.update(inplace=batch_size / w2, inplace_ms=w2 * 1e3, inplace_cpu_ms=c2 * 1e3)
                line += f"   in-place {batch_size / w2:>9,.0f}/s ({w2 * 1e3:6.1f} ms, cpu {c2 * 1e3:6.1f} ms"
                line += f", {f2:5d} faults)"
            print(line, flush=True)
            rows.append(row)
    return rows


def main(argv: list[str]) -> None:
    """``bench [B=16384 reps=9 stages=S1,...,S6 inplace=1 hugepages=0]``.

    ``hugepages=1`` re-runs the process with ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` (transparent huge pages for
    large allocations): on this VM a fresh 200–400 MB output costs one ~2 µs page fault per 4 KiB, which is most of
    the time of a B = 16,384 call; huge pages remove ~99 % of those faults.
    """
    import os

    if argv[:1] != ["bench"]:
        print("usage: python -m localrules.tasks.nursery bench [B=16384 reps=9 stages=S1,S6 inplace=1 hugepages=0]")
        return
    kw = dict(a.split("=", 1) for a in argv[1:])
    if kw.get("hugepages", "0") == "1" and "hugetlb" not in os.environ.get("GLIBC_TUNABLES", ""):
        env = dict(os.environ, GLIBC_TUNABLES="glibc.malloc.hugetlb=1")
        os.execve(sys.executable, [sys.executable, "-m", "localrules.tasks.nursery", *argv], env)
    stages = tuple(kw["stages"].split(",")) if "stages" in kw else tuple(STAGES)
    t0, c0 = time.perf_counter(), time.process_time()
    for sg in SIGMAS:
        atlas(sg)
    print(f"atlas build (4 σ): {time.perf_counter() - t0:.2f} s wall, {time.process_time() - c0:.2f} s cpu; "
          f"{jax.devices()}; {os.cpu_count()} cpus; load {os.getloadavg()[0]:.2f}; "
          f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r}")
    rows = bench(int(kw.get("B", 16384)), int(kw.get("reps", 9)), stages, kw.get("inplace", "1") == "1")
    print(f"\nload after: {os.getloadavg()[0]:.2f}")
    print("| stage | F | fresh samples/s | fresh ms (cpu ms) | in-place samples/s | in-place ms (cpu ms) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        ip = f"{r['inplace']:,.0f} | {r['inplace_ms']:.1f} ({r['inplace_cpu_ms']:.1f})" if "inplace" in r else "– | –"
        fresh = f"{r['fresh']:,.0f} | {r['fresh_ms']:.1f} ({r['fresh_cpu_ms']:.1f})"
        print(f"| {r['stage']} | {r['frames']} | {fresh} | {ip} |")


if __name__ == "__main__":
    # run the registry-imported module (localrules.tasks imports every task module), not a second copy of it
    from localrules.tasks import nursery as _nursery

    _nursery.main(sys.argv[1:])
