"""The one-reduction tangent projection of :mod:`mhe_jax._neurons` (issue 29, "keep the speed").

``project_gradient`` is what reverse mode runs on a gradient (the dense energy calls it directly);
``tangent_projection`` is the forward-mode map that ``scale_free`` uses, written so that JAX's
transpose of it is ``project_gradient`` operation by operation. These tests pin that equality bit
for bit, the exact zero on ``±2^k`` columns that replaced the second projection pass, and the
radial residual of one projection against the float64 projection.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mhe_jax._neurons import column_scales, project_gradient, tangent_projection


def _columns(d, n, seed, dtype=jnp.float32):
    """Scaled columns (largest entry in [1, 2)), with a ±1 column, a zero column and a column whose
    first entry is small (the first step is skipped there)."""
    r = np.random.default_rng(seed)
    w = r.standard_normal((d, n))
    w[:, 1] = np.where(r.random(d) < 0.5, -1.0, 1.0) * 8.0  # ±2^3: scaled to ±1
    w[:, 2] = 0.0
    w[0, 3] = 1e-3 * np.max(np.abs(w[:, 3]))
    W = jnp.asarray(w, dtype)
    Ws = W * column_scales(W)
    return Ws, jnp.sum(Ws * Ws, axis=0, keepdims=True)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("d", [9, 2304])
def test_forward_map_transposes_to_the_reverse_formula_bit_for_bit(dtype, d):
    """Jitted, as the energies run; the gradient has a large radial part (the subtractions
    round)."""
    Ws, sq = _columns(d, 6, 0, dtype)
    r = np.random.default_rng(1)
    g = jnp.asarray(r.standard_normal(Ws.shape) + 1e3 * np.asarray(Ws) * r.standard_normal(6),
                    dtype)
    reverse = jax.jit(lambda g: jax.vjp(lambda t: tangent_projection(t, Ws, sq), g)[1](g)[0])
    np.testing.assert_array_equal(np.asarray(reverse(g)),
                                  np.asarray(jax.jit(project_gradient)(g, Ws, sq)))


def test_parallel_gradient_on_power_of_two_columns_is_exactly_zero():
    """The all-ones guarantee: a gradient parallel to a ±2^k column (any factor) projects to
    exactly 0, though ``⟨g, w⟩`` summed in rounding is not ``d·x`` exactly (one plain
    projection leaves ulps: checked, so this test can fail)."""
    Ws, sq = _columns(37, 6, 2)
    r = np.random.default_rng(3)
    plain_left_some = False
    for _ in range(20):
        g = jnp.asarray(r.standard_normal((1, 6)) * 10.0 ** r.uniform(-20, 20), jnp.float32) * Ws
        for by_matmul in (True, False):
            projected = project_gradient(g, Ws, sq, by_matmul)
            assert float(jnp.max(jnp.abs(projected[:, 1]))) == 0.0
        plain = g - jnp.sum(g * Ws, axis=0, keepdims=True) / sq * Ws
        plain_left_some |= float(jnp.max(jnp.abs(plain[:, 1]))) > 0.0
    assert plain_left_some


def test_radial_residual_is_rounding_and_the_tangent_part_is_kept():
    """Against the float64 projection: the radial residual is ``O(u ‖g‖ ‖w‖)`` and the result
    matches to float32 rounding, for generic gradients and nearly radial ones (radial part 1e4
    times the tangent part); zero columns keep their gradient."""
    d, n = 300, 6
    Ws, sq = _columns(d, n, 4)
    w64 = np.asarray(Ws, np.float64)
    r = np.random.default_rng(5)
    for radial_weight, by_matmul in [(0.0, True), (1.0, True), (1e4, True), (1e4, False)]:
        g64 = r.standard_normal((d, n)) + radial_weight * w64 * r.standard_normal(n)
        g = jnp.asarray(g64, jnp.float32)
        got = np.asarray(project_gradient(g, Ws, sq, by_matmul), np.float64)
        g64 = np.asarray(g, np.float64)
        sq64 = np.sum(w64 * w64, axis=0)
        coef = np.divide(np.sum(g64 * w64, axis=0), sq64, out=np.zeros(n), where=sq64 > 0)
        want = g64 - coef * w64
        scale = np.linalg.norm(g64, axis=0) * np.linalg.norm(w64, axis=0)
        radial = np.abs(np.sum(got * w64, axis=0))
        assert np.all(radial <= 4 * np.finfo(np.float32).eps * scale), (radial_weight, radial)
        err = np.linalg.norm(got - want, axis=0)
        assert np.all(err <= 8 * np.finfo(np.float32).eps * np.linalg.norm(g64, axis=0)), err
        np.testing.assert_array_equal(got[:, 2], g64[:, 2])  # zero column: unchanged
