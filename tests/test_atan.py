"""The vectorisable atan2 behind the angular distance: accuracy to the last bits, exact
derivative."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from mhe_jax._atan import atan2_nonneg


def _cosine_grid():
    rng = np.random.default_rng(0)
    tail = np.logspace(-16, 0, 500)
    return np.concatenate([rng.uniform(-1, 1, 20000), 1 - tail, -1 + tail, [0.0, 1.0, -1.0]])


@pytest.mark.parametrize("dtype,max_ulp", [(np.float64, 4), (np.float32, 3)])
def test_matches_arctan2_to_a_few_ulp(dtype, max_ulp):
    c = _cosine_grid().astype(dtype)
    y = np.sqrt(np.maximum((1 - c) * (1 + c), 0) + dtype(1e-12))  # as in the angular energy
    got = np.asarray(jax.jit(atan2_nonneg)(jnp.asarray(y), jnp.asarray(c)))
    assert got.dtype == dtype
    ref = np.arctan2(y.astype(np.float64), c.astype(np.float64))
    ulp = np.abs(got - ref) / np.spacing(ref.astype(dtype)).astype(np.float64)
    assert ulp.max() <= max_ulp


def test_all_quadrants_of_the_upper_half_plane_and_zeros():
    rng = np.random.default_rng(1)
    y, x = rng.uniform(0, 5, 10**4), rng.uniform(-5, 5, 10**4)
    np.testing.assert_allclose(np.asarray(atan2_nonneg(y, x)), np.arctan2(y, x), rtol=1e-15, atol=0)
    assert float(atan2_nonneg(0.0, 0.0)) == 0.0
    assert float(atan2_nonneg(0.0, -2.0)) == np.pi
    assert float(atan2_nonneg(3.0, 0.0)) == np.pi / 2
    assert float(atan2_nonneg(1.0, 1.0)) == pytest.approx(np.pi / 4, rel=1e-16)


def test_derivative_is_atan2s():
    y, x = jnp.array([0.3, 2.0, 1e-9]), jnp.array([-0.7, 0.5, 1.0])
    dy, dx = jax.vmap(jax.grad(atan2_nonneg, (0, 1)))(y, x)
    r2 = x * x + y * y
    np.testing.assert_allclose(dy, x / r2, rtol=1e-14)
    np.testing.assert_allclose(dx, -y / r2, rtol=1e-14)
    check_grads(atan2_nonneg, (y, x), order=2, modes=("fwd", "rev"))
    grads = jax.grad(atan2_nonneg, (0, 1))(0.0, 0.0)
    assert all(np.isfinite(g) for g in grads)


# ------------------------------------------------------------------ per-backend selection


def test_platform_atan2_picks_chebyshev_on_cpu_and_builtin_elsewhere():
    from mhe_jax._atan import platform_atan2

    y, x = jnp.ones(4), jnp.linspace(-1.0, 1.0, 4)
    traced = jax.jit(platform_atan2).trace(y, x)
    assert "stablehlo.atan2" not in traced.lower().as_text()
    for platform in ("cuda", "tpu"):
        assert "stablehlo.atan2" in traced.lower(lowering_platforms=(platform,)).as_text()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_both_atan2_paths_agree_on_cpu(dtype):
    from mhe_jax._atan import atan2_builtin, platform_atan2

    c = _cosine_grid().astype(dtype)
    y = np.sqrt(np.maximum((1 - c) * (1 + c), 0) + dtype(1e-12))
    a = np.asarray(jax.jit(atan2_builtin)(y, c), np.float64)
    b = np.asarray(jax.jit(platform_atan2)(y, c), np.float64)
    ulp = np.spacing(np.abs(a).astype(dtype)).astype(np.float64)
    assert np.max(np.abs(a - b) / ulp) <= 4
    g = jax.grad(lambda y, x: jnp.sum(platform_atan2(y, x)), (0, 1))(jnp.asarray(y), jnp.asarray(c))
    h = jax.grad(lambda y, x: jnp.sum(atan2_builtin(y, x)), (0, 1))(jnp.asarray(y), jnp.asarray(c))
    for u, v in zip(g, h, strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-5 if dtype == np.float32 else 1e-12)
