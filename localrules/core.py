"""The lab's core types: batches, named output heads, the Rule protocol and rule composition.

Everything here is a pure function or an immutable pytree; nothing here knows any particular rule.

**Batch.** ``Batch(x, y)``: ``x`` is the input (``(B, *input_shape)``), ``y`` is ``(B, H)`` int32, one column per
named head of the task (:class:`Heads`), ``-1`` where a sample carries no label for that head.

**Heads.** The network's output layer is the concatenation of every head's logits (``Heads.total`` units). A
head's meaning is fixed across tasks and stages (the curriculum's ``noun`` is always the same 8 units), so no task
identity is needed. The task loss is the sum over labelled heads of the softmax cross-entropy on that head's slice,
averaged over the batch; :func:`output_error` is its per-sample gradient with respect to the logits, the error
signal most local rules start from.

**Rule.** Like ``optax.GradientTransformation``, a rule is a pair of pure functions::

    init(key, params) -> state
    update(params, state, batch, key) -> (pseudo_grads, state, metrics)

``pseudo_grads`` has the structure of ``params`` and the **descent** sign: a Hebbian ``ΔW`` that a paper *adds* to
``W`` is returned as ``-ΔW``, so that any optax optimizer applies any rule (``optax.sgd(η)`` performs
``W ← W + η ΔW``). ``metrics`` is a dict of scalars with a fixed structure (it becomes a ``lax.scan`` output).
``predict(params, state, x) -> scores`` is how the rule reads out a class: scores per output unit, one slice per
head (for most rules the architecture's forward pass; Forward-Forward's goodness per candidate label). Scores are
compared within a head; the correct unit must be strictly largest (ties count as wrong).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

PyTree = Any
Metrics = dict


class Batch(NamedTuple):
    """A minibatch: ``x`` (B, ...) float32 input; ``y`` (B, H) int32 labels per head, -1 for none."""

    x: jax.Array
    y: jax.Array


class Heads(NamedTuple):
    """Named output heads: ``names[i]`` owns ``sizes[i]`` consecutive output units."""

    names: tuple[str, ...]
    sizes: tuple[int, ...]

    @property
    def total(self) -> int:
        return int(sum(self.sizes))

    @property
    def offsets(self) -> tuple[int, ...]:
        out, o = [], 0
        for s in self.sizes:
            out.append(o)
            o += s
        return tuple(out)

    def slice(self, logits: jax.Array, i: int) -> jax.Array:
        o = self.offsets[i]
        return logits[..., o : o + self.sizes[i]]

    def one_hot(self, y: jax.Array) -> jax.Array:
        """(B, H) labels → (B, total) concatenated one-hot codes; rows of unlabelled heads are zero."""
        parts = [jax.nn.one_hot(y[:, i], s) * (y[:, i : i + 1] >= 0) for i, s in enumerate(self.sizes)]
        return jnp.concatenate(parts, axis=-1)

    def index(self, name: str) -> int:
        if name not in self.names:
            raise ValueError(f"unknown head {name!r}; this task has heads {list(self.names)}")
        return self.names.index(name)


def single_head(name: str, n: int) -> Heads:
    return Heads((name,), (n,))


def per_sample_loss(logits: jax.Array, y: jax.Array, heads: Heads) -> jax.Array:
    """Σ over labelled heads of softmax cross-entropy, per sample: (B,)."""
    total = jnp.zeros(logits.shape[:1], logits.dtype)
    for i, _ in enumerate(heads.sizes):
        z = heads.slice(logits, i)
        valid = y[:, i] >= 0
        ce = optax.softmax_cross_entropy_with_integer_labels(z, jnp.maximum(y[:, i], 0))
        total = total + jnp.where(valid, ce, 0.0)
    return total


def loss(logits: jax.Array, y: jax.Array, heads: Heads) -> jax.Array:
    """The task loss every rule is compared on: batch mean of :func:`per_sample_loss`."""
    return jnp.mean(per_sample_loss(logits, y, heads))


def output_error(logits: jax.Array, y: jax.Array, heads: Heads) -> jax.Array:
    """Per-sample ∂(per-sample loss)/∂logits = softmax(z_h) − onehot(y_h) on each labelled head, 0 elsewhere.

    Shape (B, total). The gradient of :func:`loss` is this divided by B.
    """
    parts = []
    for i, s in enumerate(heads.sizes):
        z = heads.slice(logits, i)
        valid = (y[:, i : i + 1] >= 0).astype(logits.dtype)
        parts.append((jax.nn.softmax(z, axis=-1) - jax.nn.one_hot(y[:, i], s, dtype=logits.dtype)) * valid)
    return jnp.concatenate(parts, axis=-1)


def correct(scores: jax.Array, y: jax.Array, heads: Heads) -> tuple[jax.Array, jax.Array]:
    """Strict correctness per (sample, head): the labelled unit's score is strictly the largest in its head.

    Returns ``(correct, valid)``, both (B, H) bool. Ties count as wrong (curriculum §2).
    """
    cs, vs = [], []
    for i, s in enumerate(heads.sizes):
        z = heads.slice(scores, i)
        yi = jnp.maximum(y[:, i], 0)
        target = jnp.take_along_axis(z, yi[:, None], axis=-1)[:, 0]
        others = jnp.where(jax.nn.one_hot(yi, s, dtype=bool), -jnp.inf, z)
        cs.append(target > jnp.max(others, axis=-1))
        vs.append(y[:, i] >= 0)
    return jnp.stack(cs, -1), jnp.stack(vs, -1)


# --------------------------------------------------------------------------------------------- rules


class Rule(NamedTuple):
    """A learning rule: pure ``init``/``update`` (see module docstring) and a read-out ``predict``.

    ``token_scores`` (optional) is the rule's forced-choice scorer (curriculum §2): ``(params, state, x) -> (B,
    total)`` scores of every answer token for every image, comparable *across images* (the 4AFC tests pick the
    image whose score for the uttered tokens, summed over tokens, is strictly largest). ``None``: log-softmax of
    ``predict`` within each head, as for any classifier. Forward-Forward overrides it with its goodness of
    (image, label).
    """

    init: Callable[[jax.Array, PyTree], PyTree]
    update: Callable[[PyTree, PyTree, Batch, jax.Array], tuple[PyTree, PyTree, Metrics]]
    predict: Callable[[PyTree, PyTree, jax.Array], jax.Array]
    token_scores: Callable[[PyTree, PyTree, jax.Array], jax.Array] | None = None


class Scorer(NamedTuple):
    """What ``Task.evaluate`` receives: ``scorer(x)`` = read-out scores (argmax accuracy); ``scorer.tokens(x)`` =
    forced-choice token scores comparable across images (``None``: per-head log-softmax of the read-out)."""

    scores: Callable[[jax.Array], jax.Array]
    tokens: Callable[[jax.Array], jax.Array] | None = None

    def __call__(self, x):
        return self.scores(x)

    def token_scores(self, x, heads: "Heads"):
        if self.tokens is not None:
            return self.tokens(x)
        s = self.scores(x)
        return jnp.concatenate([jax.nn.log_softmax(heads.slice(s, i).astype(jnp.float32), axis=-1)
                                for i in range(len(heads.sizes))], axis=-1)

    def map_input(self, f: Callable) -> "Scorer":
        """The same scorer on transformed inputs (a task's adapter: centring, frame repetition)."""
        return Scorer(lambda x: self.scores(f(x)), None if self.tokens is None else (lambda x: self.tokens(f(x))))


def scorer(fn) -> Scorer:
    """``fn`` as a :class:`Scorer` (a plain ``x -> scores`` function gets the default token scores)."""
    return fn if isinstance(fn, Scorer) else Scorer(fn)


@dataclasses.dataclass(frozen=True)
class RuleSpec:
    """What a rule module exports as ``RULE``: its CLI name, its config class and its factory.

    Attributes:
      name: CLI name, equal to the module's name.
      config: frozen dataclass of the rule's hyper-parameters (paper defaults, attribute docstrings).
      make: ``make(cfg, arch, heads) -> Rule``.
      aliases: extra CLI names.
      doc: one line for ``--help``.
      optimizer: optional ``optimizer(cfg, arch, make_opt) -> optax.GradientTransformation`` for rules that need
        more than the run's optimizer (per-layer optimizers of a composition); ``make_opt(opt_cfg=None)`` builds
        an optimizer from an :class:`~localrules.config.OptimizerConfig` (``None`` = the run's).
      default_arch: optional; see the attribute.
      cost_config: optional ``cost_config(cfg) -> cfg`` giving the config whose compiled step is *counted* (e.g.
        predictive coding with its inference loop unrolled, since XLA counts a loop body once). The trained
        program is unchanged; both configs must compute the same update.
    """

    name: str
    config: type
    make: Callable[..., Rule]
    aliases: tuple[str, ...] = ()
    doc: str = ""
    optimizer: Callable | None = None
    cost_config: Callable | None = None
    default_arch: Callable | None = None
    """``default_arch() -> arch config`` used when a command line chooses this rule but names no ``arch=``
    (Forward-Forward's label-input MLP, SoftHebb's block CNN)."""


class ComposeState(NamedTuple):
    states: tuple


def compose(rules: Mapping[str, Rule], labels: Sequence[str]) -> Rule:
    """Per-layer composition, like ``optax.partition``: layer ``i`` takes the update of rule ``labels[i]``.

    Every sub-rule sees the whole network and the same batch; only the layers it is labelled with keep its
    pseudo-gradients (the others are zero). The work of the discarded updates is removed by XLA's dead-code
    elimination, so a composed step costs less than the sum of its parts (``tests/test_compose.py``).
    Read-out is the forward pass of the rule labelling the last layer.

    Args:
      rules: label → rule.
      labels: one label per layer of the architecture (parameter-free layers may take any label).
    """
    names = tuple(rules)
    unknown = sorted(set(labels) - set(names))
    if unknown:
        raise ValueError(f"compose: labels {unknown} have no rule; rules given: {list(names)}")
    labels = tuple(labels)

    def init_fn(key, params):
        if len(params) != len(labels):
            raise ValueError(f"compose: {len(labels)} labels for {len(params)} layers; give one label per layer")
        keys = jax.random.split(key, len(names))
        return ComposeState(tuple(rules[n].init(k, params) for n, k in zip(names, keys)))

    def update_fn(params, state, batch, key):
        keys = jax.random.split(key, len(names))
        grads, states, metrics = {}, [], {}
        for n, s, k in zip(names, state.states, keys):
            g, s2, m = rules[n].update(params, s, batch, k)
            grads[n] = g
            states.append(s2)
            metrics.update({f"{n}/{mk}": mv for mk, mv in m.items()})
        merged = tuple(
            grads[lab][i] if lab in grads else jax.tree.map(jnp.zeros_like, params[i]) for i, lab in enumerate(labels)
        )
        return merged, ComposeState(tuple(states)), metrics

    last = names.index(labels[-1])

    def predict_fn(params, state, x):
        return rules[labels[-1]].predict(params, state.states[last], x)

    top = rules[labels[-1]].token_scores  # the read-out's rule also answers the forced choice
    tokens = None if top is None else (lambda params, state, x: top(params, state.states[last], x))
    return Rule(init_fn, update_fn, predict_fn, tokens)


def layer_labels(params: Sequence[PyTree], labels: Sequence[str]) -> tuple:
    """Broadcast one label per layer onto every leaf of that layer: the ``param_labels`` of ``optax.partition``."""
    return tuple(jax.tree.map(lambda _: lab, p) for p, lab in zip(params, labels))


def tree_all_finite(tree: PyTree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


# --------------------------------------------------------------------------------------------- tasks


class Task(NamedTuple):
    """A data stream plus its held-out test, all pure so that sampling runs inside the jitted training scan.

    Attributes:
      name: self-describing name (``fashion_mnist``, ``nursery/S3``).
      heads: the output heads the task labels (see :class:`Heads`).
      input_shape: shape of one example, e.g. ``(28, 28, 1)`` or ``(1, 32, 32, 3)`` (frames first).
      data: pytree of arrays ``sample`` reads (a dataset's images); passed to the jitted chunk as an argument so
        it is never baked into the program as a constant. ``()`` for procedural tasks.
      context: ``context(data, key, t0) -> ctx``, computed once per chunk of steps starting at step ``t0`` (e.g.
        the epoch permutations a dataset task needs); ``None`` for procedural tasks.
      sample: ``sample(data, ctx, key, t) -> Batch`` for training step ``t``; ``key`` is
        ``fold_in(data_key, t)``. Must be deterministic in ``(key, t)``.
      test: the held-out set as a :class:`Batch` of arrays (or any pytree ``evaluate`` understands).
      evaluate: ``evaluate(scores_fn, test) -> dict`` of scalars, pure; ``scores_fn(x) -> scores`` (a
        :class:`Scorer` from the engine; forced-choice tasks read ``scorer(scores_fn).token_scores``). Must contain
        ``"acc"`` (the primary accuracy).
      steps_per_epoch: for finite datasets, steps in one pass; ``None`` for infinite streams.
      chance: accuracy of guessing, for κ = (acc − chance)/(1 − chance).
    """

    name: str
    heads: Heads
    input_shape: tuple
    data: PyTree
    context: Callable
    sample: Callable
    test: PyTree
    evaluate: Callable
    steps_per_epoch: int | None = None
    chance: float = 0.0


def no_context(data, key, t0):
    return ()


def classification_eval(heads: Heads, eval_batch: int = 1000) -> Callable:
    """Default ``evaluate``: strict accuracy over labelled (sample, head) pairs and the task loss.

    The test set is processed in slices of ``eval_batch`` examples with ``lax.map`` to bound memory.
    Returns ``acc`` (over all labelled pairs), ``loss`` and ``acc/<head>`` for each head.
    """

    def evaluate(scores_fn, test: Batch):
        n = test.x.shape[0]
        nb = max(1, -(-n // eval_batch))
        pad = nb * eval_batch - n
        xs = jnp.pad(test.x, [(0, pad)] + [(0, 0)] * (test.x.ndim - 1))
        ys = jnp.pad(test.y, [(0, pad), (0, 0)], constant_values=-1)
        xs = xs.reshape((nb, eval_batch) + test.x.shape[1:])
        ys = ys.reshape((nb, eval_batch) + test.y.shape[1:])

        def one(args):
            x, y = args
            s = scores_fn(x)
            c, v = correct(s, y, heads)
            lsum = jnp.sum(per_sample_loss(s, y, heads) * jnp.any(v, -1))
            return jnp.sum(c & v, 0), jnp.sum(v, 0), lsum

        c, v, l = jax.lax.map(one, (xs, ys))
        c, v = jnp.sum(c, 0), jnp.sum(v, 0)
        out = {"acc": jnp.sum(c) / jnp.maximum(jnp.sum(v), 1), "loss": jnp.sum(l) / n}
        for i, name in enumerate(heads.names):
            out[f"acc/{name}"] = c[i] / jnp.maximum(v[i], 1)
        return out

    return evaluate


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """What a task module exports as ``TASK``: CLI name, config class, ``make(cfg, batch_size) -> Task``."""

    name: str
    config: type
    make: Callable[..., Task]
    aliases: tuple[str, ...] = ()
    doc: str = ""
    runner: Callable | None = None
    """``runner(run_cfg, run_dir, run_id, log) -> record`` for tasks that are not one stream (curricula)."""
