"""A meta-learned local plasticity rule rule(θ): learned by the lab (``python -m localrules.meta train``), then used
like any rule (``rule=meta_learned rule.theta=<file or shipped name>``). Spec: ``shared/specs/meta_learned.md``.

Every synapse of a dense layer ℓ (lab orientation: ``w`` (n_in, n_out), input x (B, n_in), pre-activation a,
output y) changes by a function of signals local to it — pre- and post-synaptic activity, a modulator m that is the
output error at the head and a fixed random projection of it at hidden layers, and the weight itself:

    head:    y = softmax(z) per head,  m = e = softmax(z) − onehot(y*)                   (delta rule)
    hidden:  y = f(a),                 m = (e F_ℓ) ⊙ f′(a),  F_ℓ (K, n_out) ~ N(0, 1/K)  (feedback="dfa")
             or layer-wise            m_ℓ = (m_{ℓ+1} G_{ℓ+1}ᵀ) ⊙ f′(a_ℓ), G of w_{ℓ+1}'s shape (feedback="fa")

    terms (added-to-w form, (n_in, n_out)):  err −xᵀm/B · hebb xᵀy/B · pre x̄1ᵀ · post 1ȳᵀ · const 11ᵀ ·
                                              oja −w diag(mean_b y²) · decay −w
    Δw_ℓ = e^{λ_r} [ s_ℓ Σ_k c_{r,k} T_k + g_r(s_ℓ T, w) ],   s_ℓ = n_ref / n_in(ℓ)  (fan-in scaling)
    Δb_ℓ = −e^{λ_r} c_{r,err} mean_b(m)                        (error term only, not fan-in scaled)

r is the layer's role: every hidden layer shares row ``hidden`` of θ, the output layer uses row ``head``, so one θ
runs at any depth and width. θ = ``{"c": (2, 7), "loglr": (2,)}`` (coefficient family, 16 scalars) plus, for the MLP
family, ``"mlp"``: per role a tanh MLP g_r 8 → H → 1 over the 7 scaled terms and w of each synapse, last layer
initialised to zero (so the MLP family starts equal to the coefficient family). The features are batch averages,
so the rule stays batch-level. Pseudo-gradients are returned with the descent sign, P = −Δ.

**θ₀** (:func:`init_theta`): c_err = 1, every other c = 0, λ = log 0.05 — DFA at the hidden layers and the delta
rule at the head, step 0.05·s_ℓ. With ``fan_in_scale=False`` and λ = 0 the pseudo-gradients are bit-for-bit those
of ``rules/direct_feedback_alignment`` for the same F (``tests/test_meta_learned.py``); c_hebb = 1 is plain Hebb,
c_hebb = c_oja = 1 is Oja's rule.

**Optimizer.** θ was meta-trained under ``optax.sgd(1.0)`` (the learning rate lives in θ), so this rule brings
that optimizer itself: the run's ``optimizer.*`` settings do not apply to it (any other optimizer makes it a
different rule). Inside ``rule=compose`` give its part ``rule.hidden_optimizer.name=sgd
rule.hidden_optimizer.lr=1`` (or ``head_optimizer``) yourself.

**θ files.** :func:`save_theta` writes a directory: ``theta/`` (orbax checkpoint of the θ pytree) and
``meta.json`` (family config, task distribution, meta-trainer config, meta-training seconds and FLOPs, command).
``rule.theta`` takes such a directory, or the name of one shipped in ``rules/theta/`` (e.g. ``fmnist_mg``). A θ is
tied to the rule settings it was meta-trained under (``feedback``, ``fan_in_scale``, ``n_ref``, from its meta.json):
a run that sets others fails in one line naming the settings to add.

**Shipped θ.** ``fmnist_mg``: made by ``python -m localrules.meta train preset=meta_cpu10min`` (meta-gradients,
Fashion-MNIST tasks without classes 8/9 and without curriculum stages, horizons 100/250/500, 8 min 11 s wall on the
shared 2-core CPU); its plug-in and meta-test comparisons with DFA, random features + linear head and BP-SGD are in
``sweeps/meta_cpu10min.toml``.

**Curriculum** (reduced budget: 65,536 samples per stage, 131,072 for S6, one seed, MLP 6144-256-256-21, θ =
``fmnist_mg``; ``python -m localrules.sweep sweep=nursery_rules out=/work/runs timing_steps=5``, 649 s): no stage
graduated; ACC 0.211, BWT −0.190, FWT +0.037; R (row = after stage, columns S1..S6) diagonal 0.716 0.237 0.250
0.352 0.532 0.126, last row 0.342 0.154 0.160 0.251 0.232 0.126 (backprop in the same sweep: ACC 0.373).

Dense layers only (any MLP architecture); convolutional layers raise a ValueError naming the fix. FLOPs: the terms
cost two batch outer products per layer (one when c_hebb's y and m are fused, as here) plus O(n_in·n_out) for the
rank-one and weight terms; the MLP family adds O(n_in·n_out·H). All are counted by the lab's compiled-step count.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from localrules import core, local
from localrules.architectures import act_derivative

TERMS = ("err", "hebb", "pre", "post", "const", "oja", "decay")
ROLES = ("hidden", "head")
HIDDEN, HEAD = 0, 1
THETA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "theta")


@dataclasses.dataclass(frozen=True)
class Config:
    theta: str = ""
    """θ to use: a directory written by `python -m localrules.meta train` (or localrules.meta.save_theta), the
    name of a shipped θ in rules/theta/ (e.g. fmnist_mg), or '' for θ₀ = DFA + delta rule, lr 0.05."""
    family: str = "coef"
    """θ₀'s family when theta='': coef (16 shared coefficients) | mlp (coefficients + a tiny MLP per role)."""
    mlp_hidden: int = 8
    """Hidden units H of the MLP family's per-role network g_r (8 → H → 1)."""
    feedback: str = "dfa"
    """Modulator at hidden layers: dfa (output error through fixed random F_ℓ) | fa (layer-wise random feedback)."""
    fan_in_scale: bool = True
    """Scale weight updates by n_ref / fan_in so that one θ works at any width (off: the raw outer products — the
    equation tests and the Shervani-Tabar comparator protocol, sweeps/meta_shervani_tabar_fmnist.toml)."""
    n_ref: int = 64
    """Reference fan-in of the scaling s_ℓ = n_ref / n_in(ℓ)."""


class MetaState(NamedTuple):
    F: tuple
    """Per layer: fixed feedback matrix — dfa: (K, n_out) for hidden dense layers; fa: (n_in, n_out) for every
    dense layer above the first (the transpose route of w); ``()`` elsewhere."""


# --------------------------------------------------------------------------------------------- θ


def init_theta(key=None, family: str = "coef", mlp_hidden: int = 8, lr: float = 0.05) -> dict:
    """θ₀: c_err = 1 for both roles, all other coefficients 0, λ = log lr; MLP family: g_r's last layer zero."""
    if family not in ("coef", "mlp"):
        raise ValueError(f"rule.family={family!r}: choose coef or mlp")
    c = np.zeros((2, len(TERMS)), np.float32)
    c[:, TERMS.index("err")] = 1.0
    theta = {"c": jnp.asarray(c), "loglr": jnp.full((2,), math.log(lr), jnp.float32)}
    if family == "mlp":
        if mlp_hidden < 1:
            raise ValueError(f"rule.mlp_hidden={mlp_hidden}: must be ≥ 1")
        key = jax.random.PRNGKey(0) if key is None else key
        n_feat = len(TERMS) + 1
        theta["mlp"] = {
            "w1": jax.random.normal(key, (2, n_feat, mlp_hidden), jnp.float32) / math.sqrt(n_feat),
            "b1": jnp.zeros((2, mlp_hidden), jnp.float32),
            "w2": jnp.zeros((2, mlp_hidden), jnp.float32),
            "b2": jnp.zeros((2,), jnp.float32),
        }
    return theta


def theta_family(theta) -> str:
    return "mlp" if "mlp" in theta else "coef"


def check_theta(theta, where: str = "θ") -> dict:
    """Validate a θ pytree's keys and shapes; returns it with float32 jnp leaves."""
    if not isinstance(theta, dict) or "c" not in theta or "loglr" not in theta:
        raise ValueError(f"{where}: not a meta_learned θ (needs keys 'c' (2, {len(TERMS)}) and 'loglr' (2,))")
    if tuple(np.shape(theta["c"])) != (2, len(TERMS)) or tuple(np.shape(theta["loglr"])) != (2,):
        raise ValueError(f"{where}: c has shape {np.shape(theta['c'])} and loglr {np.shape(theta['loglr'])}; "
                         f"expected (2, {len(TERMS)}) and (2,) — terms {TERMS}, roles {ROLES}")
    if "mlp" in theta:
        m = theta["mlp"]
        if set(m) != {"w1", "b1", "w2", "b2"} or np.shape(m["w1"])[:2] != (2, len(TERMS) + 1):
            raise ValueError(f"{where}: the mlp part needs w1 (2, {len(TERMS) + 1}, H), b1 (2, H), w2 (2, H), b2 (2,)")
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), dict(theta))


def save_theta(path: str, theta, meta: dict) -> str:
    """Write θ (orbax) and ``meta.json`` into directory ``path``; returns the absolute path."""
    import orbax.checkpoint as ocp

    path = os.path.abspath(path)
    os.makedirs(path, exist_ok=True)
    ck = ocp.StandardCheckpointer()
    ck.save(os.path.join(path, "theta"), jax.tree.map(np.asarray, theta), force=True)
    ck.wait_until_finished()
    meta = dict(meta)
    meta["theta_values"] = jax.tree.map(lambda a: np.asarray(a).tolist(), theta)
    meta["terms"], meta["roles"] = list(TERMS), list(ROLES)
    with open(os.path.join(path, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1, default=str)
    return path


def resolve_theta_path(spec: str) -> str:
    if os.path.isdir(spec):
        return os.path.abspath(spec)
    shipped = os.path.join(THETA_DIR, spec)
    if os.path.isdir(shipped):
        return shipped
    names = sorted(n for n in os.listdir(THETA_DIR) if os.path.isdir(os.path.join(THETA_DIR, n))) \
        if os.path.isdir(THETA_DIR) else []
    raise ValueError(f"rule.theta={spec!r}: no such θ directory; give a directory written by "
                     f"`python -m localrules.meta train` or a shipped name: {', '.join(names) or '(none)'}")


def load_theta(spec: str) -> tuple[dict, dict]:
    """θ and its metadata from a directory written by :func:`save_theta` (or a shipped name)."""
    import orbax.checkpoint as ocp

    path = resolve_theta_path(spec)
    if not os.path.isdir(os.path.join(path, "theta")):
        raise ValueError(f"rule.theta={spec!r}: {path} has no theta/ checkpoint; write it with localrules.meta")
    theta = ocp.StandardCheckpointer().restore(os.path.join(path, "theta"))
    meta = {}
    if os.path.exists(os.path.join(path, "meta.json")):
        with open(os.path.join(path, "meta.json")) as f:
            meta = json.load(f)
    return check_theta(theta, f"rule.theta={spec!r}"), meta


# --------------------------------------------------------------------------------------------- the rule


def _dense_layers(arch):
    bad = [i for i in arch.param_layers if arch.layers[i].kind != "dense"]
    if bad:
        raise ValueError(f"rule=meta_learned updates dense layers only; {arch.name} has {arch.layers[bad[0]].kind} "
                         "layers: use an MLP architecture (arch=mlp)")
    return arch.param_layers


def head_softmax(z, heads: core.Heads):
    return jnp.concatenate([jax.nn.softmax(heads.slice(z, i), axis=-1) for i in range(len(heads.sizes))], axis=-1)


def layer_update(theta, role: int, p, x, y, mB, s, layer, B: int):
    """Pseudo-gradients (descent sign) of one dense layer given its local signals.

    ``x`` (B, n_in) pre-synaptic, ``y`` (B, n_out) post-synaptic, ``mB`` (B, n_out) modulator already divided by
    B (the order DFA computes it in, so that θ_DFA reproduces it bit for bit), ``s`` fan-in factor.
    """
    c, lr = theta["c"][role], jnp.exp(theta["loglr"][role])
    k = {n: c[i] for i, n in enumerate(TERMS)}
    w = p["w"]
    # err and hebb fused into one outer product: xᵀ(c_err m − c_hebb y)/B is −(c_err T_err + c_hebb T_hebb).
    delta = k["err"] * mB - k["hebb"] * (y / B)
    pw = local.param_grad(layer, {"w": w}, x, delta)["w"]
    xbar, ybar, y2 = jnp.mean(x, 0), jnp.mean(y, 0), jnp.mean(y * y, 0)
    rank1 = k["pre"] * xbar[:, None] + k["post"] * ybar[None, :] + k["const"]
    pw = pw - rank1 + w * (k["oja"] * y2[None, :] + k["decay"])
    pw = lr * (s * pw)
    if "mlp" in theta:
        mp = jax.tree.map(lambda a: a[role], theta["mlp"])
        T = jnp.stack([-(x.T @ mB), (x.T @ y) / B, jnp.broadcast_to(xbar[:, None], w.shape),
                       jnp.broadcast_to(ybar[None, :], w.shape), jnp.ones_like(w), -w * y2[None, :], -w], -1)
        phi = jnp.concatenate([s * T, w[..., None]], -1)
        g = jnp.tanh(phi @ mp["w1"] + mp["b1"][None, None, :]) @ mp["w2"] + mp["b2"]
        pw = pw - lr * g
    out = {"w": pw}
    if "b" in p:
        out["b"] = lr * (k["err"] * jnp.sum(mB, 0))
    return out


def make_with_theta(cfg: Config, arch, heads: core.Heads, theta) -> core.Rule:
    """``rule(θ)``: the Rule for a (possibly traced) θ — what meta-training differentiates and vmaps through."""
    if cfg.feedback not in ("dfa", "fa"):
        raise ValueError(f"rule.feedback={cfg.feedback!r}: choose dfa or fa")
    if cfg.n_ref < 1:
        raise ValueError(f"rule.n_ref={cfg.n_ref}: must be ≥ 1")
    dense = _dense_layers(arch)
    last = dense[-1]
    K = heads.total

    def init_fn(key, params):
        keys = jax.random.split(key, len(params))
        F = []
        for i, (k, p) in enumerate(zip(keys, params)):
            if cfg.feedback == "dfa" and i in dense and i != last:
                n_out = p["w"].shape[1]
                F.append(jax.random.normal(k, (K, n_out), jnp.float32) / math.sqrt(K))
            elif cfg.feedback == "fa" and i in dense and i != dense[0]:
                F.append(jax.random.normal(k, p["w"].shape, jnp.float32) / math.sqrt(p["w"].shape[1]))
            else:
                F.append(())
        return MetaState(tuple(F))

    def modulators(params, state, ios, e):
        m = {last: e}
        if cfg.feedback == "dfa":
            for i in dense[:-1]:
                m[i] = (e @ state.F[i]) * act_derivative(arch.layers[i].act, ios[i].pre)
        else:
            for j, i in zip(reversed(dense[1:]), reversed(dense[:-1])):
                m[i] = (m[j] @ state.F[j].T) * act_derivative(arch.layers[i].act, ios[i].pre)
        return m

    def update_fn(params, state, batch, key):
        out, ios = arch.trace(params, batch.x)
        B = batch.x.shape[0]
        e = core.output_error(out, batch.y, heads) / B
        m = modulators(params, state, ios, e)
        grads = []
        for i, (layer, io) in enumerate(zip(arch.layers, ios)):
            if i not in dense:
                grads.append({})
                continue
            x = io.x.reshape(B, -1)
            role = HEAD if i == last else HIDDEN
            y = head_softmax(io.pre, heads) if i == last else io.y
            s = cfg.n_ref / x.shape[1] if cfg.fan_in_scale else 1.0
            grads.append(layer_update(theta, role, params[i], x, y, m[i], s, layer, B))
        return tuple(grads), state, {"loss": core.loss(out, batch.y, heads)}

    def predict_fn(params, state, x):
        return arch.apply(params, x)

    return core.Rule(init_fn, update_fn, predict_fn)


SETTINGS = ("feedback", "fan_in_scale", "n_ref")
"""Rule settings a θ is tied to: it was meta-trained under them, and under others it is a different rule."""


def rule_settings(meta: dict) -> Config:
    """The rule Config a θ was meta-trained under (``meta.json``'s ``family``; defaults where absent)."""
    fam = meta.get("family", {}) if meta else {}
    return Config(**{k: fam[k] for k in SETTINGS if k in fam})


def theta_of(cfg: Config) -> dict:
    if cfg.theta:
        theta, meta = load_theta(cfg.theta)
        want = rule_settings(meta)
        diff = [k for k in SETTINGS if getattr(want, k) != getattr(cfg, k)]
        if diff:
            fix = " ".join(f"rule.{k}={str(getattr(want, k)).lower()}" for k in diff)
            raise ValueError(f"rule.theta={cfg.theta!r} was meta-trained with {fix.replace('rule.', '')}, this run "
                             f"sets {' '.join(f'{k}={str(getattr(cfg, k)).lower()}' for k in diff)}: add {fix} "
                             "(under other settings θ is a different rule)")
        return theta
    return init_theta(None, cfg.family, cfg.mlp_hidden)


def make(cfg: Config, arch, heads: core.Heads) -> core.Rule:
    return make_with_theta(cfg, arch, heads, theta_of(cfg))


def optimizer(cfg: Config, arch, make_opt) -> optax.GradientTransformation:
    """θ's learning rates were meta-trained under plain SGD with step 1; the rule applies its updates that way."""
    return optax.sgd(1.0)


RULE = core.RuleSpec("meta_learned", Config, make, aliases=("meta",), optimizer=optimizer,
                     doc="meta-learned local plasticity rule θ (shared coefficients / tiny MLP; localrules.meta)")
