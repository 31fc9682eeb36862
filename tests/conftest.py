"""Strict test settings: CPU only, rank promotion raises (catches an implicit (B, K) + (K,) broadcast — a bug
that is silent in Hebbian outer products), explicit keys, float comparisons on whole pytrees."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("LOCALRULES_OFFLINE", "1")  # tests never download
# LLVM at -O0: the suite is compile-bound (tiny shapes, hundreds of distinct programs), and -O0 roughly halves
# XLA:CPU compile time. Semantics are unchanged (HLO-level passes, hence FLOP counts, are untouched); subprocesses
# started by the tests inherit it. Set LOCALRULES_TEST_XLA_OPT=1 to test with the default optimisation level.
if os.environ.get("LOCALRULES_TEST_XLA_OPT") != "1":
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def key():
    return jax.random.PRNGKey(0)


def tree_allclose(a, b, rtol=1e-6, atol=1e-6):
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    assert ta == tb, f"tree structures differ: {ta} vs {tb}"
    for x, y in zip(la, lb):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)
    return True


@pytest.fixture
def allclose():
    return tree_allclose
