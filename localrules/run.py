"""Run one configuration: build the pure program, train in jitted vmapped chunks, evaluate, checkpoint, log.

``execute(cfg, run_dir)`` is resumable: after every chunk it saves an orbax checkpoint of the vmapped
:class:`~localrules.train.TrainState` plus the history so far; started again on the same directory it restores the
latest checkpoint and continues, and since batches depend only on (seed, t) the result is identical to an
uninterrupted run. The returned record is what ``results.jsonl`` stores.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import inspect
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from localrules import core, cost, tb
from localrules import architectures
from localrules import rules as rules_registry
from localrules import tasks as tasks_registry
from localrules.config import RunConfig, make_optimizer
from localrules.train import make_program


class Built(NamedTuple):
    task: core.Task
    arch: Any
    rule: core.Rule
    opt: Any
    program: Any
    counted: Any
    """The program whose compiled step is counted (differs from ``program`` only if the rule has cost_config)."""
    total_steps: int
    chunk_steps: int
    rule_name: str
    task_name: str
    arch_name: str
    val: Any = None
    """The held-out validation split (a Batch the task's ``evaluate`` scores) when ``val_fraction > 0``, else None."""


SELECTIONS = ("last", "best_val")


def _check_selection(cfg: RunConfig, task_spec) -> None:
    """The validation-split options: values, their combination, and whether the task can hold out a split."""
    if cfg.selection not in SELECTIONS:
        raise ValueError(f"selection={cfg.selection!r}: choose last or best_val")
    f = cfg.val_fraction
    if f != 0 and not 0.0 < f <= 0.5:
        raise ValueError(f"val_fraction={f}: must be in (0, 0.5] (e.g. val_fraction=0.1), or 0 for no split")
    if cfg.selection == "best_val" and f == 0:
        raise ValueError("selection=best_val needs a validation split: add val_fraction=0.1 (or use selection=last)")
    if f == 0:
        return
    if task_spec.runner is not None:
        raise ValueError(f"val_fraction={f}: task {task_spec.name!r} is a curriculum (it runs its own stages and "
                         "tests), which has no validation split; drop val_fraction and selection")
    if getattr(task_spec, "validation", None) is None:
        from localrules.tasks import images

        raise ValueError(f"val_fraction={f}: task {task_spec.name!r} has no fixed training set to hold a split out "
                         f"of; use an image dataset task ({', '.join(images.HEADS)}) or drop val_fraction")


def build(cfg: RunConfig) -> Built:
    """Resolve a config into the pure program; every invalid value raises ValueError naming the fix."""
    if cfg.batch_size <= 0:
        raise ValueError(f"batch_size={cfg.batch_size}: must be a positive integer")
    if cfg.seeds <= 0:
        raise ValueError(f"seeds={cfg.seeds}: must be ≥ 1")
    for key, value, hint in (("epochs", cfg.epochs, "0 = train for samples=N"),
                             ("eval_every", cfg.eval_every, "0 = about 10 evaluations per run"),
                             ("timing_steps", cfg.timing_steps, "0 = skip timing")):
        if not value >= 0:
            raise ValueError(f"{key}={value}: must be ≥ 0 ({hint})")
    for key, ocfg in _optimizers(cfg):
        if not (math.isfinite(ocfg.lr) and ocfg.lr > 0):
            raise ValueError(f"{key}.lr={ocfg.lr}: the learning rate must be a finite number > 0, e.g. {key}.lr=1e-3")
    task_spec = tasks_registry.TASKS[tasks_registry.name_of(cfg.task)]
    _check_selection(cfg, task_spec)
    rule_spec = rules_registry.RULES[rules_registry.name_of(cfg.rule)]
    val = None
    if cfg.val_fraction:
        task, val = task_spec.validation(cfg.task, cfg.batch_size, cfg.val_fraction)
    else:
        task = task_spec.make(cfg.task, cfg.batch_size)
    arch = architectures.build(cfg.arch, task.input_shape, task.heads.total)
    if not any(layer.kind == "conv" for layer in arch.layers):
        for key, value in _conv_options(cfg.rule):
            shown = str(value).lower() if isinstance(value, bool) else value
            raise ValueError(f"{key}={shown}: rule options named conv_* act on conv layers only and {arch.name} has "
                             f"none; drop {key} or choose an architecture with conv layers (e.g. arch=cnn)")
    if arch.out_dim != task.heads.total and not (rule_spec.name == "counter_current" and cfg.rule.loss == "ae"):
        raise ValueError(f"arch={_arch_name(cfg.arch)} outputs {arch.out_dim} values, not the task's "
                         f"{task.heads.total} class scores (an image-to-image network); in the lab only "
                         "rule=counter_current rule.loss=ae trains it (backprop on reconstruction: python -m "
                         "localrules.sweeps.ccl_ae_fmnist_png)")
    if cfg.epochs > 0:
        if not task.steps_per_epoch:
            raise ValueError(f"epochs={cfg.epochs}: task {task.name!r} is a stream without epochs; use samples=N")
        total = int(round(cfg.epochs * task.steps_per_epoch))
    else:
        if cfg.samples < cfg.batch_size:
            raise ValueError(f"samples={cfg.samples} is less than one batch ({cfg.batch_size}); raise samples")
        total = cfg.samples // cfg.batch_size
    spe = task.steps_per_epoch
    def make_opt(ocfg=None):
        return make_optimizer(ocfg or cfg.optimizer, total, spe)

    make_opt.total_steps, make_opt.steps_per_epoch = total, spe  # for rules with their own schedules (FF ffcode)
    # a rule whose make() takes make_opt builds its own optimizers (CCL's feedback network) with the run's length
    rule_kw = {"make_opt": make_opt} if "make_opt" in inspect.signature(rule_spec.make).parameters else {}
    rule = rule_spec.make(cfg.rule, arch, task.heads, **rule_kw)
    opt = rule_spec.optimizer(cfg.rule, arch, make_opt) if rule_spec.optimizer else make_opt()
    chunk = cfg.eval_every if cfg.eval_every > 0 else max(1, -(-total // 10))
    if spe:
        chunk = min(chunk, spe)  # a chunk spans at most one epoch boundary (see Task.context)
    chunk = min(chunk, total)
    program = make_program(rule, opt, arch, task)
    counted = program
    if rule_spec.cost_config is not None:
        counted = make_program(rule_spec.make(rule_spec.cost_config(cfg.rule), arch, task.heads, **rule_kw), opt,
                               arch, task)
    return Built(task, arch, rule, opt, program, counted, total, chunk, rule_spec.name, task_spec.name, arch.name,
                 val)


def _conv_options(rule_cfg, prefix: str = "rule"):
    """The rule's ``conv_*`` options (a composition's parts included) that differ from their defaults."""
    for f in dataclasses.fields(rule_cfg):
        v = getattr(rule_cfg, f.name)
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            yield from _conv_options(v, f"{prefix}.{f.name}")
        elif f.name.startswith("conv_"):
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
            if v != default:
                yield f"{prefix}.{f.name}", v


def _optimizers(cfg, prefix: str = ""):
    """Every optimizer config inside ``cfg`` (the run's, a composition's parts, a rule's own) with its key."""
    from localrules.optim import OptimizerConfig

    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if isinstance(v, OptimizerConfig):
            yield prefix + f.name, v
        elif dataclasses.is_dataclass(v) and not isinstance(v, type):
            yield from _optimizers(v, prefix + f.name + ".")


def git_revision() -> str | None:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5)
        if rev.returncode == 0:
            return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return None


def config_dict(cfg) -> dict:
    """A JSON-ready view of a config, with the registry name of every rule/arch/task sub-config."""

    def conv(x):
        if dataclasses.is_dataclass(x) and not isinstance(x, type):
            d = {f.name: conv(getattr(x, f.name)) for f in dataclasses.fields(x)}
            for reg in (rules_registry.name_of, tasks_registry.name_of, _arch_name):
                try:
                    d = {"_name": reg(x), **d}
                    break
                except TypeError:
                    pass
            return d
        if isinstance(x, tuple):
            return [conv(v) for v in x]
        return x

    return conv(cfg)


def _arch_name(cfg) -> str:
    for s in architectures.ARCHS.values():
        if type(cfg) is s.config:
            return s.name
    raise TypeError


#: Config fields that do not change what a run computes (where it writes, what it prints); a run's identity
#: (its run id, the config its checkpoint must match) ignores them.
NON_IDENTITY = ("name", "out", "progress", "timing_steps", "checkpoint")


#: Config fields added after runs were recorded, with their defaults: at its default such a field is left out of
#: the identity, so the run ids and checkpoints of runs made before it existed stay valid.
LATER_DEFAULTS = {"val_fraction": 0.0, "selection": "last"}


def identity(config_json: dict) -> dict:
    """The part of a :func:`config_dict` that decides what a run computes."""
    return {k: v for k, v in config_json.items()
            if k not in NON_IDENTITY and not (k in LATER_DEFAULTS and v == LATER_DEFAULTS[k])}


class RunError(RuntimeError):
    """A run cannot go on for a reason the user can fix; the message is one line naming the problem and the fix."""


def _first_difference(a, b, key: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if a.get(k, "<unset>") != b.get(k, "<unset>"):
                return _first_difference(a.get(k, "<unset>"), b.get(k, "<unset>"), f"{key}.{k}" if key else str(k))
        return key or "?"
    return f"{key}: {a!r} there, {b!r} here"


def state_digest(state) -> str:
    """sha256 over every array of a (host) pytree: a checkpoint stores it and a restore must reproduce it, so a
    checkpoint whose bytes changed on disk (bit rot, a torn copy) is never loaded."""
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(jax.device_get(state)):
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


class Checkpointer:
    """orbax checkpoints of (vmapped TrainState, history) in ``<run_dir>/ckpt``.

    Writes are atomic (orbax writes to a temporary directory and renames; leftovers of a killed write are removed
    when the next process opens the directory). A restore checks the stored config against this run's (a
    checkpoint from another configuration is refused, :class:`RunError`) and the stored digest of the state
    against the restored arrays; an unreadable or altered checkpoint is deleted with a warning and the previous
    one is tried, so a corrupt checkpoint is never loaded (``None`` when none is left: the run starts over)."""

    def __init__(self, directory: str, config_json: dict, log=print):
        import orbax.checkpoint as ocp

        self.ocp = ocp
        self.log = log
        self.config_json = config_json
        self.directory = os.path.abspath(directory)
        self.mgr = ocp.CheckpointManager(self.directory,
                                         options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True,
                                                                              enable_async_checkpointing=False,
                                                                              cleanup_tmp_directories=True))

    def latest(self):
        return self.mgr.latest_step()

    def restore(self, template):
        """The newest readable checkpoint as ``(state, history)``, or None if every checkpoint was unreadable."""
        ocp = self.ocp
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
        for step in sorted(self.mgr.all_steps(), reverse=True):
            try:  # the small JSON first: a checkpoint of another config is named as such, whatever its shapes
                meta = self.mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
                stored, history = meta["config"], meta["history"]
            except Exception as e:  # noqa: BLE001 - any failure to read means the checkpoint is unusable
                self._discard(step, f"its metadata is unreadable ({type(e).__name__}: {_short(e)})")
                continue
            if identity(stored) != identity(self.config_json):
                raise RunError(f"the checkpoint in {self.directory} was written by another configuration "
                               f"({_first_difference(identity(stored), identity(self.config_json))}); delete "
                               f"{os.path.dirname(self.directory)} or use another name=... for this sweep")
            try:
                state = self.mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
                state = state["state"]
            except Exception as e:  # noqa: BLE001
                self._discard(step, f"its arrays are unreadable ({type(e).__name__}: {_short(e)})")
                continue
            if meta.get("digest") is not None and state_digest(state) != meta["digest"]:
                self._discard(step, "its arrays do not match the digest written with them")
                continue
            return state, history
        return None

    def _discard(self, step: int, why: str):
        self.log(f"  warning: checkpoint {step} in {self.directory} is corrupt: {why}; deleted it")
        try:
            self.mgr.delete(step)
        except Exception:  # noqa: BLE001 - delete by hand what orbax cannot
            shutil.rmtree(os.path.join(self.directory, str(step)), ignore_errors=True)
        self.mgr.reload()

    def save(self, step: int, state, history):
        ocp = self.ocp
        meta = {"config": self.config_json, "history": history, "digest": state_digest(state)}
        with fault_during("checkpoint", self.directory):
            self.mgr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                        meta=ocp.args.JsonSave(meta)), force=True)
            self.mgr.wait_until_finished()

    def close(self):
        self.mgr.close()


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0][:200] if text else "")


# --------------------------------------------------------------------------------------- fault injection (tests)
#
# ``LOCALRULES_FAULT=<SIGNAL>@<site>:<n>`` (e.g. ``KILL@checkpoint:3``, ``INT@chunk:2``; several separated by
# commas) delivers SIGNAL to this process the n-th time it reaches ``site``: ``chunk`` (a chunk was trained, its
# checkpoint not yet written), ``checkpoint`` (while orbax writes a checkpoint: as soon as an item of its temporary
# directory holds a file) and ``results`` (half of a results.jsonl line is on disk). The reliability tests use it
# to kill a sweep at exact points; unset, it costs one environment lookup per site.

_FAULT_HITS: dict[str, int] = {}


def _fault_signal(site: str):
    spec = os.environ.get("LOCALRULES_FAULT", "")
    if not spec:
        return None
    _FAULT_HITS[site] = _FAULT_HITS.get(site, 0) + 1
    for item in spec.split(","):
        sig, _, rest = item.strip().partition("@")
        where, _, n = rest.partition(":")
        if where == site and int(n or 1) == _FAULT_HITS[site]:
            return getattr(signal, "SIG" + sig.upper())
    return None


def fault_point(site: str):
    sig = _fault_signal(site)
    if sig is not None:
        os.kill(os.getpid(), sig)


@contextlib.contextmanager
def fault_during(site: str, directory: str):
    """Deliver the site's signal while the body writes into ``directory`` (a temporary orbax directory with data
    in it), or at its end if the write was too quick to be caught."""
    sig = _fault_signal(site)
    if sig is None:
        yield
        return
    done, fired = threading.Event(), threading.Event()

    def watch():
        while not done.is_set():
            for root, _, files in os.walk(directory):
                # inside an item of the temporary directory: the arrays or the metadata are being written
                if ".orbax-checkpoint-tmp" in os.path.dirname(root) and files:
                    fired.set()
                    os.kill(os.getpid(), sig)
                    return
            time.sleep(0.0005)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    try:
        yield
    finally:
        done.set()
        t.join()
    if not fired.is_set():
        os.kill(os.getpid(), sig)


def _fmt_eta(s: float) -> str:
    s = int(max(0, s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class Selected(NamedTuple):
    """Per seed (leading axis), the parameters and rule state of the evaluation with the lowest validation loss
    so far (``selection=best_val``); checkpointed with the training state, so a resumed run keeps them."""

    params: tuple
    rule_state: Any
    val_loss: jax.Array
    """(S,) validation cross-entropy at the selected evaluation; +inf before the first one."""
    step: jax.Array
    """(S,) int32 step of the selected evaluation; 0 (the initial parameters) before the first one."""


def selection_start(state) -> "Selected":
    """Nothing selected yet: copies of the initial parameters (the training chunk donates ``state``'s buffers)."""
    copy = lambda t: jax.tree.map(jnp.copy, t)  # noqa: E731
    n = state.step.shape[0]
    return Selected(copy(state.params), copy(state.rule_state), jnp.full((n,), jnp.inf, jnp.float32),
                    jnp.zeros((n,), jnp.int32))


def select_best(best: Selected, state, val_loss: jax.Array) -> Selected:
    """Per seed, keep ``state``'s parameters where ``val_loss`` is strictly below the best so far (a tie keeps the
    earlier evaluation; a non-finite loss is never selected). Pure; vmapped seeds on the leading axis."""
    better = val_loss < best.val_loss

    def pick(old, new):
        return jnp.where(better.reshape(better.shape + (1,) * (old.ndim - 1)), new, old)

    return Selected(jax.tree.map(pick, best.params, state.params),
                    jax.tree.map(pick, best.rule_state, state.rule_state),
                    jnp.where(better, val_loss.astype(best.val_loss.dtype), best.val_loss),
                    jnp.where(better, state.step, best.step))


def execute(cfg: RunConfig, run_dir: str, run_id: str, log=print) -> dict:
    """Train ``cfg`` (all seeds at once) in ``run_dir``; resume from its checkpoint if one exists.

    With ``val_fraction`` the held-out split is scored at every evaluation (history ``val/*``); with
    ``selection=best_val`` the record's final test metrics are those of each seed's parameters at its evaluation
    of lowest validation loss (steps > 0), and ``record["selection"]`` names the step and keeps the last step's."""
    spec = tasks_registry.TASKS[tasks_registry.name_of(cfg.task)]
    if spec.runner is not None:
        _check_selection(cfg, spec)
        return spec.runner(cfg, run_dir, run_id, log)
    t_start = time.time()
    b = build(cfg)
    cfg_json = config_dict(cfg)
    seeds = jnp.arange(cfg.seed, cfg.seed + cfg.seeds, dtype=jnp.int32)
    data = b.task.data
    test = b.task.test
    init = jax.jit(jax.vmap(b.program.init))
    chunk_fn = jax.jit(jax.vmap(b.program.chunk, in_axes=(0, None, 0, None)), static_argnums=3, donate_argnums=0)
    eval_fn = jax.jit(jax.vmap(b.program.evaluate, in_axes=(0, None)))
    val = b.val
    select_fn = jax.jit(select_best)

    state = init(seeds)
    best = selection_start(state) if cfg.selection == "best_val" else None
    history: list[dict] = []
    ckpt = Checkpointer(os.path.join(run_dir, "ckpt"), cfg_json, log=log) if cfg.checkpoint else None
    resumed_from = None
    if ckpt is not None and ckpt.latest() is not None:
        got = ckpt.restore(state if best is None else (state, best))
        if got is None:
            log(f"  no readable checkpoint of {run_id} is left: starting it over")
        else:
            state, history = got
            if best is not None:
                state, best = state
            resumed_from = int(np.asarray(state.step)[0])
            log(f"  resuming {run_id} from step {resumed_from}")

    writers = [tb.Writer(os.path.join(run_dir, f"seed{int(s)}")) for s in np.asarray(seeds)]
    hp_values = _hparams(cfg, b)
    for w, s in zip(writers, np.asarray(seeds)):
        if resumed_from is None:
            tb.session_start(w, {**hp_values, "seed": int(s)}, trial_id=f"{run_id}/seed{int(s)}")
        else:
            w.purge_after(resumed_from)

    # Compute accounting first (one seed, one step, compiled ahead of time): FLOPs feed the curves.
    c = cost.step_cost(b.program, int(cfg.seed), data, repeats=cfg.timing_steps)
    if b.counted is not b.program:  # the counted twin (unrolled inner loops) supplies FLOPs, bytes, memory
        counted = cost.step_cost(b.counted, int(cfg.seed), data, repeats=0)
        c.update({k: counted[k] for k in ("flops", "bytes", "peak_bytes") if k in counted})
        c["gflops"] = c["flops"] / (c["step_ms"] * 1e-3) / 1e9 if c.get("step_ms") else None
    flops_per_step = c["flops"]

    def evaluate_all(state):
        ev = jax.device_get(eval_fn(state, test))
        if val is not None:
            ev.update({f"val/{k}": v for k, v in jax.device_get(eval_fn(state, val)).items()})
        return ev

    if resumed_from is None:
        ev = evaluate_all(state)
        history.append(_history_row(0, 0, ev, {}, flops_per_step))
        _log_tb(writers, history[-1], ev, {}, 0, flops_per_step, b.task)

    step = int(np.asarray(state.step)[0])
    t_loop = time.time()
    done_at_start = step
    compile_chunk_s = None
    while step < b.total_steps:
        n = min(b.chunk_steps, b.total_steps - step)
        s0 = time.time()
        state, metrics = chunk_fn(state, data, seeds, n)
        ev = evaluate_all(state)
        if best is not None:
            best = select_fn(best, state, jnp.asarray(ev["val/loss"]))
        metrics = jax.device_get(metrics)
        if compile_chunk_s is None:
            compile_chunk_s = time.time() - s0
        step += n
        history.append(_history_row(step, step * cfg.batch_size, ev, metrics, flops_per_step))
        _log_tb(writers, history[-1], ev, metrics, step, flops_per_step, b.task)
        fault_point("chunk")
        if ckpt is not None:
            ckpt.save(step, state if best is None else (state, best), history)
        if cfg.progress:
            el = time.time() - t_loop
            rate = (step - done_at_start) * cfg.batch_size * cfg.seeds / max(el, 1e-9)
            eta = (b.total_steps - step) * cfg.batch_size * cfg.seeds / max(rate, 1e-9)
            score = "mse" if "mse" in ev else "acc"
            vl = f"  val loss {np.asarray(ev['val/loss']).mean():.4f}" if val is not None else ""
            log(f"  {run_id}  step {step}/{b.total_steps}  test {score} {np.asarray(ev[score]).mean():.4f}{vl}"
                f"  {rate:,.0f} samples/s  ETA {_fmt_eta(eta)}")
    if ckpt is not None:
        ckpt.close()

    final = jax.device_get(eval_fn(state, test))
    selection = {"mode": cfg.selection, "val_fraction": cfg.val_fraction}
    if val is not None:
        selection["val_examples"] = int(val.y.shape[0])
        last_val = jax.device_get(eval_fn(state, val))
        if best is None:
            selection.update(step=[b.total_steps] * cfg.seeds, val_loss=np.asarray(last_val["loss"]).tolist())
        else:
            sel_step = np.asarray(best.step).tolist()
            last_acc = np.asarray(final["acc"], dtype=float)
            selection.update(step=sel_step, samples=[s * cfg.batch_size for s in sel_step],
                             val_loss=np.asarray(best.val_loss).tolist(),
                             last={"step": b.total_steps,
                                   "final": {k: np.asarray(v, dtype=float).tolist() for k, v in final.items()},
                                   "val_loss": np.asarray(last_val["loss"]).tolist(),
                                   "acc_mean": float(last_acc.mean())})
            last_score = {k: float(np.mean(v)) for k, v in final.items()}
            final = jax.device_get(eval_fn(state._replace(params=best.params, rule_state=best.rule_state), test))
            key = "mse" if "mse" in final else "acc"
            log(f"  {run_id}  selection=best_val (val_fraction={cfg.val_fraction}): selected steps {sel_step}, "
                f"test {key} {np.asarray(final[key]).mean():.4f} (last step {b.total_steps}: {last_score[key]:.4f})")
    diverged_at = np.asarray(state.diverged_at).tolist()
    n_div = sum(d >= 0 for d in diverged_at)
    status = "ok" if n_div == 0 else ("diverged" if n_div == len(diverged_at) else "partly_diverged")
    for w in writers:
        end = {"time/step_ms": c.get("step_ms") or 0.0, "mem/peak_mb": (c.get("peak_bytes") or 0.0) / 2**20,
               "compute/gflop_per_step": flops_per_step / 1e9}
        w.scalars(end, b.total_steps)
        tb.session_end(w, "ok" if status == "ok" else "diverged")
        w.close()

    acc = np.asarray(final["acc"], dtype=float)
    ok = np.asarray(diverged_at) < 0
    record = {
        "run_id": run_id,
        "sweep": cfg.name,
        "rule": b.rule_name,
        "rule_label": rule_label(cfg.rule),
        "task": b.task_name,
        "task_instance": b.task.name,
        "arch": b.arch_name,
        "seeds": np.asarray(seeds).tolist(),
        "status": status,
        "diverged_at": diverged_at,
        "final": {k: np.asarray(v, dtype=float).tolist() for k, v in final.items()},
        "acc_mean": float(acc[ok].mean()) if ok.any() else float("nan"),
        "acc_sd": float(acc[ok].std(ddof=1)) if ok.sum() > 1 else 0.0,
        "selection": selection,
        **({"mse_mean": float(np.mean(final["mse"])), "mse_sd": float(np.std(final["mse"], ddof=1)) if cfg.seeds > 1
            else 0.0} if "mse" in final else {}),
        "steps": b.total_steps,
        "samples": b.total_steps * cfg.batch_size,
        "compute": {
            "flops_per_step": flops_per_step,
            "flops_per_sample": flops_per_step / cfg.batch_size,
            "train_flops": flops_per_step * b.total_steps,
            "bytes_per_step": c["bytes"],
            "peak_bytes_step": c.get("peak_bytes"),
            "compile_step_s": c["compile_s"],
            "compile_chunk_s": compile_chunk_s,
            "step_ms_median": c.get("step_ms"),
            "gflops_achieved": c.get("gflops"),
        },
        "wall_s": time.time() - t_start,
        "resumed_from": resumed_from,
        "history": history,
        "config": cfg_json,
        "platform": cost.platform(),
        "versions": cost.versions(),
        "git": git_revision(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "argv": sys.argv,
    }
    return cost.to_builtin(record)


def rule_label(rule_cfg) -> str:
    """``backprop``; for compositions ``compose(<hidden>+<head>)``, so tables say what was composed."""
    name = rules_registry.name_of(rule_cfg)
    if name == "compose":
        return f"compose({rules_registry.name_of(rule_cfg.hidden_rule)}+{rules_registry.name_of(rule_cfg.head_rule)})"
    return name + control_suffix(getattr(rule_cfg, "plasticity", None))


def control_suffix(plasticity) -> str:
    """``(plasticity=none)`` for a rule run with its plasticity off (SoftHebb's random-frozen-features control),
    else ``""``: the label part that keeps the control apart from the rule in tables (also for records' dicts)."""
    return "(plasticity=none)" if plasticity == "none" else ""


def _hparams(cfg: RunConfig, b: Built) -> dict:
    o = cfg.optimizer
    return {"rule": rule_label(cfg.rule), "task": b.task_name, "arch": b.arch_name, "optimizer": o.name, "lr": o.lr,
            "batch_size": cfg.batch_size}


def _history_row(step, samples, ev, metrics, flops_per_step) -> dict:
    row = {"step": int(step), "samples": int(samples), "train_flops": float(flops_per_step * step)}
    row.update({(k if k.startswith("val/") else f"test/{k}"): np.asarray(v, dtype=float).tolist()
                for k, v in ev.items()})
    row.update({f"train/{k}": np.asarray(v, dtype=float).tolist() for k, v in metrics.items()})
    return row


def _log_tb(writers, row, ev, metrics, step, flops_per_step, task):
    for i, w in enumerate(writers):
        vals = {}
        for k, v in ev.items():
            v = np.asarray(v)
            tag = {"acc": "test/accuracy", "val/acc": "val/accuracy"}.get(k, k if k.startswith("val/") else f"test/{k}")
            vals[tag] = float(v[i] if v.ndim else v)
        for k, v in metrics.items():
            v = np.asarray(v)
            vals[f"train/{k}"] = float(v[i] if v.ndim else v)
        vals["compute/gflop_per_step"] = flops_per_step / 1e9
        vals["compute/train_gflop"] = flops_per_step * step / 1e9
        w.scalars(vals, step)
        # accuracy against compute: x axis = training MFLOP (TensorBoard steps are integers)
        w.scalar("test/accuracy_vs_mflop", vals["test/accuracy"], int(flops_per_step * step / 1e6))
        w.flush()
