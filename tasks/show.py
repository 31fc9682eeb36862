"""Picture grids of the nursery stages, for checking the generators by eye.

    python -m localrules.tasks.show stage=S3 [out=stage_S3.png n=64 seed=0 t=0 items=4 sigma=...]

Writes a PNG of ``n`` training samples of batch ``t`` of run ``seed`` (titles: the labels each sample trains; S6
clips show frame A | frame B side by side), and for S4/S5 extra rows of ``items`` 4AFC test items (4 candidate
images each; the utterance is the subplot title, the target's title is marked ``✓`` and framed in green; S5 shows
seen and held-out items). Other ``key=value`` pairs override :class:`localrules.tasks.nursery.StageConfig`
fields, e.g. ``sigma=0``.
"""

from __future__ import annotations

import sys

import numpy as np


def _label_text(y: np.ndarray, stage: str) -> str:
    from localrules.tasks import nursery as N

    parts = []
    if stage == "S4":
        return f"word: {N.NOUNS[y[N.NOUN]]}"
    if y[N.COLOUR] >= 0:
        parts.append(N.COLOURS[y[N.COLOUR]])
    if y[N.NOUN] >= 0:
        parts.append(N.NOUNS[y[N.NOUN]])
    if y[N.PLACE] >= 0:
        parts.append("@" + N.PLACES[y[N.PLACE]])
    return " ".join(parts)


def _utterance(u: np.ndarray) -> str:
    from localrules.tasks import nursery as N

    words = []
    if u[N.COLOUR] >= 0:
        words.append(N.COLOURS[u[N.COLOUR]])
    if u[N.NOUN] >= 0:
        words.append(N.NOUNS[u[N.NOUN]])
    return '"' + " ".join(words) + '"'


def _clip_image(x: np.ndarray, stage: str) -> np.ndarray:
    """(F, 32, 32, 3) → one picture: S6 frames side by side with a white separator, else frame 0."""
    if stage != "S6":
        return x[0]
    sep = np.ones((x.shape[1], 2, 3), x.dtype)
    return np.concatenate([x[0], sep, x[1]], axis=1)


def make_figure(stage: str, n: int = 64, seed: int = 0, t: int = 0, items: int = 4, **overrides):
    import jax
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from localrules.tasks import nursery as N

    cfg = N.stage_config(stage, **overrides)
    frames = 2
    key = jax.random.fold_in(N.stage_key(seed, stage), t)
    x, y, _ = jax.jit(lambda k: N.generate(stage, cfg, k, t, n, frames))(key)
    x, y = np.asarray(x), np.asarray(y)
    cols = 8
    rows = -(-n // cols)
    afc_rows = 0
    test = None
    if stage in ("S4", "S5"):
        test = {k: np.asarray(v) for k, v in N.test_set(stage, cfg).items()}
        afc_rows = items  # one row per item: 4 candidates (S5: half seen, half held-out)
    wide = 2.1 if stage == "S6" else 1.0
    fig_w = cols * 1.45 * wide if afc_rows == 0 else max(cols * 1.45 * wide, 4 * 1.9)
    fig_h = rows * 1.55 + afc_rows * 1.9 + 0.6
    fig = plt.figure(figsize=(fig_w, fig_h))
    info = N.STAGES[stage]
    fig.suptitle(
        f"nursery {stage} (train batch t={t}, seed={seed}; σ={cfg.sigma}, noise={cfg.noise}, "
        f"contrast={cfg.contrast}, bg={cfg.background}; trains {'+'.join(info.trains)})",
        fontsize=9,
    )
    total_rows = rows + afc_rows
    gs = fig.add_gridspec(total_rows, cols, height_ratios=[1.0] * rows + [1.25] * afc_rows)
    for i in range(n):
        ax = fig.add_subplot(gs[i // cols, i % cols])
        ax.imshow(_clip_image(x[i], stage), interpolation="nearest", vmin=0, vmax=1)
        ax.set_title(_label_text(y[i], stage), fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    if test is not None:
        nt = test["x"].shape[0]
        if stage == "S5":
            half = items // 2
            pick = list(range(half)) + list(range(nt // 2, nt // 2 + items - half))
        else:
            pick = list(range(items))
        for r, it in enumerate(pick):
            for j in range(4):
                ax = fig.add_subplot(gs[rows + r, j])
                ax.imshow(test["x"][it, j, 0], interpolation="nearest", vmin=0, vmax=1)
                is_t = j == int(test["target"][it])
                tag = ""
                if stage == "S5":
                    tag = " held-out" if test["heldout"][it] else " seen"
                lab = _label_text(test["labels"][it, j], "S5")
                ax.set_title(f"{_utterance(test['utter'][it])}{tag}{' ✓' if is_t else ''}\n(is: {lab})", fontsize=7)
                if is_t:
                    for s in ax.spines.values():
                        s.set_edgecolor("lime")
                        s.set_linewidth(3)
                ax.set_xticks([])
                ax.set_yticks([])
            ax = fig.add_subplot(gs[rows + r, 4:])
            ax.axis("off")
            msg = f"4AFC test item {it}: target at position {int(test['target'][it])}"
            ax.text(0, 0.5, msg, fontsize=8, va="center")
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    return fig


def main(argv: list[str]) -> None:
    kw = dict(a.split("=", 1) for a in argv if "=" in a)
    stage = kw.pop("stage", "S1")
    out = kw.pop("out", f"stage_{stage}.png")
    n = int(kw.pop("n", 64))
    seed = int(kw.pop("seed", 0))
    t = int(kw.pop("t", 0))
    items = int(kw.pop("items", 4))
    overrides = {}
    for k, v in kw.items():
        overrides[k] = tuple(float(a) for a in v.split(",")) if "," in v else float(v)
    fig = make_figure(stage, n=n, seed=seed, t=t, items=items, **overrides)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
