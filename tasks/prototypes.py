"""``task=prototypes``: a small procedural classification stream that needs no download.

Each of ``classes`` classes has a fixed prototype image: smooth random blobs (a sum of ``blobs`` Gaussian bumps
with random centres, widths and signs, from a constant key so every run shares them). A sample is its class
prototype shifted by up to ``shift`` pixels, scaled by a random contrast in [0.6, 1.0] and corrupted by Gaussian
pixel noise of std ``noise``. Learnable by an MLP in a few thousand samples, not linearly trivial at high noise.
The test set (``test_size`` samples) comes from a constant key independent of the run seed.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from localrules import core


@dataclasses.dataclass(frozen=True)
class Config:
    """Procedural prototypes: class templates + shift + contrast + noise."""

    classes: int = 10
    """Number of classes (one head, ``class``)."""
    size: int = 16
    """Image side in pixels (single channel)."""
    blobs: int = 6
    """Gaussian bumps per prototype."""
    shift: int = 2
    """Maximum random translation in pixels (circular)."""
    noise: float = 0.35
    """Std of additive Gaussian pixel noise."""
    test_size: int = 2000
    """Held-out samples (constant key)."""


@functools.lru_cache(maxsize=8)
def prototypes(classes: int, size: int, blobs: int):
    with jax.ensure_compile_time_eval():  # cached: must be a concrete array even if first asked for inside a trace
        return _prototypes(classes, size, blobs)


def _prototypes(classes: int, size: int, blobs: int):
    k = jax.random.PRNGKey(424242)
    kc, ks, kw = jax.random.split(k, 3)
    centres = jax.random.uniform(kc, (classes, blobs, 2), minval=2.0, maxval=size - 2.0)
    signs = jnp.sign(jax.random.normal(ks, (classes, blobs)))
    widths = jax.random.uniform(kw, (classes, blobs), minval=1.5, maxval=3.5)
    yy, xx = jnp.mgrid[0:size, 0:size]
    d2 = (yy[None, None] - centres[..., 0, None, None]) ** 2 + (xx[None, None] - centres[..., 1, None, None]) ** 2
    img = jnp.sum(signs[..., None, None] * jnp.exp(-d2 / (2 * widths[..., None, None] ** 2)), axis=1)
    img = img / jnp.max(jnp.abs(img), axis=(1, 2), keepdims=True)
    return img  # (classes, size, size) in [-1, 1]


#: Largest table of shifted prototypes embedded as a constant (the default 10 classes × 25 shifts × 28² is 0.8 MB).
TABLE_LIMIT_BYTES = 32 * 2**20


@functools.lru_cache(maxsize=8)
def shifted_prototypes(classes: int, size: int, blobs: int, shift: int):
    """``table[(dy + shift)·(2·shift + 1) + (dx + shift), c]`` = prototype ``c`` rolled by (dy, dx) pixels."""
    with jax.ensure_compile_time_eval():  # a concrete constant even if first asked for inside a trace
        protos = prototypes(classes, size, blobs)
        shifts = [(dy, dx) for dy in range(-shift, shift + 1) for dx in range(-shift, shift + 1)]
        return jnp.stack([jnp.roll(protos, (dy, dx), axis=(1, 2)) for dy, dx in shifts])


def _draw(cfg: Config, key, n):
    ky, ks, kc, kn = jax.random.split(key, 4)
    y = jax.random.randint(ky, (n,), 0, cfg.classes)
    sh = jax.random.randint(ks, (n, 2), -cfg.shift, cfg.shift + 1)
    contrast = jax.random.uniform(kc, (n, 1, 1), minval=0.6, maxval=1.0)

    side = 2 * cfg.shift + 1
    if side * side * cfg.classes * cfg.size * cfg.size * 4 <= TABLE_LIMIT_BYTES:
        # Every circular shift of every prototype is a constant table, so a sample is one contiguous row gather:
        # the same values as rolling each image by its traced shift, which XLA:CPU lowers to a per-pixel gather
        # (1.3 ms of a 4.3 ms seeds-bench step for 100 images before this table).
        table = shifted_prototypes(cfg.classes, cfg.size, cfg.blobs, cfg.shift)
        x = table[(sh[:, 0] + cfg.shift) * side + (sh[:, 1] + cfg.shift), y]
    else:  # a table too large to embed as a constant: roll each image
        protos = prototypes(cfg.classes, cfg.size, cfg.blobs)
        x = jax.vmap(lambda img, s: jnp.roll(img, (s[0], s[1]), axis=(0, 1)))(protos[y], sh)
    x = x * contrast + cfg.noise * jax.random.normal(kn, (n, cfg.size, cfg.size))
    return core.Batch(x[..., None].astype(jnp.float32), y[:, None].astype(jnp.int32))


def make(cfg: Config, batch_size: int) -> core.Task:
    if cfg.classes < 2 or cfg.size < 4 or cfg.test_size < 1:
        raise ValueError("task=prototypes needs classes ≥ 2, size ≥ 4 and test_size ≥ 1")
    heads = core.single_head("class", cfg.classes)
    test = _draw(cfg, jax.random.PRNGKey(10000), cfg.test_size)

    def sample(data, ctx, key, t):
        return _draw(cfg, key, batch_size)

    return core.Task(f"prototypes{cfg.classes}_{cfg.size}px", heads, (cfg.size, cfg.size, 1), (), core.no_context,
                     sample, test, core.classification_eval(heads), None, 1.0 / cfg.classes)


TASK = core.TaskSpec("prototypes", Config, make, doc="procedural class prototypes + shift + noise (no download)")
