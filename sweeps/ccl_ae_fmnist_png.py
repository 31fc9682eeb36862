"""Autoencoder figure of counter-current learning: input / backprop / CCL reconstructions of test images.

    python -m localrules.sweeps.ccl_ae_fmnist_png [preset=ccl_ae_fmnist] [out=runs/ccl_ae/reconstructions.png]
        [images=10] [samples=9600] [bp.<optimizer field>=...] [bp_warmup_steps=200] [<any run override>]

Both networks are the preset's ``arch=ccl_ae`` with the same initial weights (seed ``seed``), trained on the same
batches in the same order for the same number of samples (default 9,600 = 300 steps of 32; the preset's own budget
is the reference's 161,600 — ``samples=161600``):

- **CCL**: the preset's run (``rule=counter_current rule.loss=ae``) through the lab's engine (``build`` +
  ``Program.chunk``).
- **Backprop**: ``jax.grad`` of MSE(output, input) through the whole network, applied by the reference BP
  autoencoder's optimizer (``yaml/cnn_ae`` BP row, spec §3: SGD lr 0.03, momentum 0.5, weight decay 1e-5, cosine
  over the run, global-norm clip 0.2, loss warm-up 200 steps); change it with ``bp.lr=...`` etc. The lab's
  ``rule=backprop`` trains on the class heads' cross-entropy, so this objective lives here.

Both use the last step's parameters (no validation selection). Prints the test-set reconstruction MSE of each
(standardised inputs, the task's ``evaluate``) and writes the PNG (rows: input, backprop, CCL; each column shares
pixels in [0, 1]: reconstructions are mapped back from the standardised space and clipped) and a JSON of the
numbers beside it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from localrules import cli, core
from localrules.optim import OptimizerConfig, make_optimizer

BP_OPTIMIZER = OptimizerConfig(name="momentum", lr=0.03, momentum=0.5, weight_decay=1e-5, schedule="cosine",
                               clip_norm=0.2)
"""The reference BP autoencoder's optimizer (spec §3, ``bp_ae_stl10``)."""


class BPState(NamedTuple):
    step: jax.Array


def backprop_reconstruction(arch, warmup_steps: int) -> core.Rule:
    """Backprop on s·MSE(arch(x), x), s = (t+1)/warmup_steps for t < warmup_steps (the reference's loss warm-up)."""

    def loss(params, x):
        return jnp.mean((arch.apply(params, x) - x) ** 2)

    def init(key, params):
        return BPState(jnp.zeros((), jnp.int32))

    def update(params, state, batch, key):
        mse, g = jax.value_and_grad(loss)(params, batch.x)
        if warmup_steps > 0:
            s = jnp.where(state.step < warmup_steps, (state.step + 1) / warmup_steps, 1.0)
            g = jax.tree.map(lambda a: s * a, g)
        return g, BPState(state.step + 1), {"loss": mse}

    return core.Rule(init, update, lambda params, state, x: arch.apply(params, x))


def _parse(argv: list[str]):
    opts = {"preset": "ccl_ae_fmnist", "out": os.path.join("runs", "ccl_ae", "reconstructions.png"), "images": "10",
            "bp_warmup_steps": "200"}
    bp, run_tokens = [], []
    for tok in argv:
        k, v = cli.split_token(tok)
        if k in opts:
            opts[k] = v
        elif k.startswith("bp."):
            bp.append((k[3:], v))
        else:
            run_tokens.append(tok)
    if not any(cli.split_token(t)[0] == "samples" for t in run_tokens):
        run_tokens.append("samples=9600")
    return opts, bp, run_tokens


def sweep_config(run_tokens: list[str], preset: str = "ccl_ae_fmnist"):
    """The preset's run with the command line's run overrides; the figure trains straight through (selection=last)."""
    from localrules import sweep

    cfgs, _ = sweep.parse([f"preset={preset}", "selection=last", "epochs=0", *run_tokens])
    if len(cfgs) != 1:
        raise cli.CLIError(f"preset={preset} has {len(cfgs)} runs; the figure needs one CCL autoencoder run")
    return cfgs[0]


def main(argv: list[str]) -> dict:
    from localrules import rules as rules_registry
    from localrules.run import build
    from localrules.tasks import images
    from localrules.train import make_program

    opts, bp_items, run_tokens = _parse(argv)
    cfg = sweep_config(run_tokens, opts["preset"])
    if rules_registry.name_of(cfg.rule) != "counter_current" or cfg.rule.loss != "ae":
        raise cli.CLIError(f"preset={opts['preset']} is not a CCL autoencoder (rule=counter_current rule.loss=ae)")
    n_img, bp_warm = int(opts["images"]), int(opts["bp_warmup_steps"])
    from localrules.config import RunConfig

    bp_items = [("optimizer." + k, v) for k, v in bp_items]  # parsed and checked as the run's optimizer fields
    bp_cfg = cli.apply_overrides(RunConfig(optimizer=BP_OPTIMIZER), bp_items).optimizer
    b = build(cfg)
    bp_rule = backprop_reconstruction(b.arch, bp_warm)
    bp_program = make_program(bp_rule, make_optimizer(bp_cfg, b.total_steps, b.task.steps_per_epoch), b.arch, b.task)
    seed = int(cfg.seed)
    out = {"command": "python -m localrules.sweeps.ccl_ae_fmnist_png " + " ".join(argv), "preset": opts["preset"],
           "steps": b.total_steps, "samples": b.total_steps * cfg.batch_size, "arch": b.arch.name,
           "task": b.task.name, "bp_optimizer": dataclasses.asdict(bp_cfg), "bp_warmup_steps": bp_warm}
    trained = {}
    for name, program in (("backprop", bp_program), ("ccl", b.program)):
        t0 = time.time()
        chunk = jax.jit(program.chunk, static_argnums=3)
        state = program.init(seed)
        step = 0
        while step < b.total_steps:
            n = min(b.chunk_steps, b.total_steps - step)
            state, metrics = chunk(state, b.task.data, seed, n)
            step += n
            print(f"  {name}: step {step}/{b.total_steps}  train MSE {float(metrics['loss']):.4f}", flush=True)
        ev = jax.jit(program.evaluate)(state, b.task.test)
        secs = time.time() - t0
        out[name] = {"test_mse": float(ev["mse"]), "diverged_at": int(state.diverged_at), "wall_s": round(secs, 1)}
        trained[name] = (program, state)
        print(f"{name}: test reconstruction MSE {float(ev['mse']):.4f} ({secs:.0f} s)", flush=True)

    # reconstructions of the first test images (predicted within a batch of up to 1000, as the evaluation does)
    mean, std = images.normalisation(cfg.task.normalize, b.task.data[0])
    x_raw = b.task.test.x[: min(1000, b.task.test.x.shape[0])]
    x = images.prepare(x_raw, mean, std)
    rows = [np.asarray(x_raw[:n_img], np.float32) / 255.0]
    for name in ("backprop", "ccl"):
        rule_program, state = trained[name]
        pred = b.rule.predict if name == "ccl" else bp_rule.predict
        r = jax.jit(pred)(state.params, state.rule_state, x)[:n_img]
        rows.append(np.clip(np.asarray(r) * np.asarray(std) + np.asarray(mean), 0.0, 1.0))
    labels = ["input", f"backprop (test MSE {out['backprop']['test_mse']:.3f})",
              f"CCL (test MSE {out['ccl']['test_mse']:.3f})"]
    write_png(opts["out"], rows, labels, f"{b.arch.name} on {b.task.name}, {out['samples']:,} training samples")
    with open(os.path.splitext(opts["out"])[0] + ".json", "w") as f:
        json.dump(out, f, indent=1)
    print(f"wrote {opts['out']}")
    return out


def write_png(path: str, rows: list[np.ndarray], labels: list[str], title: str) -> None:
    """A grid: one row per entry of ``rows`` (N, H, W, C) in [0, 1], one column per image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = rows[0].shape[0]
    fig, axes = plt.subplots(len(rows), n, figsize=(1.1 * n + 1.6, 1.25 * len(rows) + 0.5), dpi=100, squeeze=False)
    for i, (imgs, label) in enumerate(zip(rows, labels)):
        for j in range(n):
            ax = axes[i][j]
            img = imgs[j]
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0.0, vmax=1.0,
                      interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[i][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (cli.CLIError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
