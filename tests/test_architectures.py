"""Architecture building blocks: the lab's convolution and pooling layers differentiate exactly like JAX's own rules
(their VJPs are hand-written or reformulated for speed on XLA:CPU: docs/compute.md, section 4)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest



@pytest.mark.parametrize("k,padding,c_in", [(3, "SAME", 1), (3, "VALID", 3), (5, "SAME", 2), (2, "SAME", 2),
                                            (3, ((2, 0), (1, 1)), 2)])
def test_the_lab_conv_vjp_equals_jax_rule(k, padding, c_in):
    """conv2d's hand-written stride-1 VJP (fast inside scans on XLA:CPU) against JAX's own transpose rule: odd and
    even kernels, SAME / VALID / explicit asymmetric padding, a non-square image."""
    from localrules.architectures import conv2d

    kx, kw, kg = jax.random.split(jax.random.PRNGKey(k + c_in), 3)
    x, w = jax.random.normal(kx, (2, 6, 7, c_in)), jax.random.normal(kw, (k, k, c_in, 3))
    ref = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    (y, vj), (yr, vjr) = jax.vjp(lambda x, w: conv2d(x, w, 1, padding), x, w), jax.vjp(ref, x, w)
    g = jax.random.normal(kg, y.shape)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(yr))
    for u, v in zip(vj(g), vjr(g)):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("window,stride,size", [(2, 2, 8), (2, 2, 7), (3, 3, 7), (3, 2, 7)])
def test_pool_values_and_gradients_equal_reduce_window(kind, window, stride, size):
    """Non-overlapping pools are a reshape + reduction (an elementwise-mask gradient instead of XLA:CPU's scatters);
    overlapping ones keep reduce_window. Both match reduce_window (continuous inputs: no ties)."""
    from localrules.architectures import pool

    x = jax.random.normal(jax.random.PRNGKey(0), (2, size, size, 3))
    init, op = (-jnp.inf, jax.lax.max) if kind == "max" else (0.0, jax.lax.add)
    scale = 1.0 if kind == "max" else 1.0 / window**2
    ref = lambda x: jax.lax.reduce_window(x, init, op, (1, window, window, 1), (1, stride, stride, 1), "VALID") * scale
    (y, vj), (yr, vjr) = jax.vjp(lambda x: pool(kind, window, stride).apply({}, x)[1], x), jax.vjp(ref, x)
    g = jax.random.normal(jax.random.PRNGKey(1), y.shape)
    np.testing.assert_allclose(np.asarray(y), np.asarray(yr), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.asarray(vj(g)[0]), np.asarray(vjr(g)[0]), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("k,stride,padding", [(3, 1, "SAME"), (5, 1, "VALID"), (2, 1, "SAME"), (3, 2, "SAME")])
def test_conv_patches_times_the_kernel_is_the_convolution(k, stride, padding):
    """The unfolded patches a Hebbian rule reads (slices for stride 1, XLA's patches op otherwise), in HWIO order."""
    from localrules.architectures import conv_patches

    x = jax.random.normal(jax.random.PRNGKey(0), (2, 7, 6, 3))
    w = jax.random.normal(jax.random.PRNGKey(1), (k, k, 3, 4))
    want = jax.lax.conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    got = conv_patches(x, k, stride, padding) @ w.reshape(-1, 4)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
