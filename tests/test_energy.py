"""Core energies against float64 brute force, invariances, known optima, degenerate input and
errors."""

import itertools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from jax.test_util import check_grads

import mhe_jax
from mhe_jax import hyperspherical_energy as energy
from tests import helpers

S_VALUES = (0.0, 0.5, 1.0, 2.0, 3.0)
DISTANCES = ("euclidean", "angular")
GRID = list(itertools.product(S_VALUES, DISTANCES, (False, True)))


def rand(shape, seed=0, dtype=np.float64):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# ------------------------------------------------------------------ exactness


@pytest.mark.parametrize("s,distance,half", GRID)
def test_matches_float64_reference(s, distance, half):
    for shape, axis in [((9, 6), -1), ((3, 3, 2, 5), -1), ((7, 4, 3), 0)]:
        w = rand(shape, seed=len(shape))
        got = energy(jnp.asarray(w), s=s, distance=distance, half_space=half, neuron_axis=axis)
        want = helpers.np_energy(w, s, distance, half, neuron_axis=axis)
        assert got.dtype == jnp.float64
        np.testing.assert_allclose(float(got), want, rtol=1e-9)


@pytest.mark.parametrize("s,distance,half", GRID)
def test_float32_matches_reference(s, distance, half):
    w = rand((16, 12), seed=3)
    got = energy(jnp.asarray(w, jnp.float32), s=s, distance=distance, half_space=half)
    assert got.dtype == jnp.float32
    want = helpers.np_energy(w, s, distance, half)
    np.testing.assert_allclose(float(got), want, rtol=1e-5, atol=1e-6)


@settings(max_examples=20, deadline=None)
@given(
    d=st.integers(2, 6), n=st.integers(2, 7), s=st.sampled_from(S_VALUES),
    distance=st.sampled_from(DISTANCES), half=st.booleans(), seed=st.integers(0, 2**16),
)
def test_reference_property(d, n, s, distance, half, seed):
    w = rand((d, n), seed)
    got = energy(jnp.asarray(w), s=s, distance=distance, half_space=half)
    want = helpers.np_energy(w, s, distance, half)
    # random points may nearly coincide: the eps guard perturbs r² by 1e-12 relative.
    np.testing.assert_allclose(float(got), want, rtol=1e-7)


def test_gaussian_energy_matches_reference():
    w = rand((8, 6), seed=5)
    for t, distance, half in itertools.product((0.5, 2.0), DISTANCES, (False, True)):
        got = mhe_jax.gaussian_energy(jnp.asarray(w), t=t, distance=distance, half_space=half)
        want = helpers.np_gaussian_energy(w, t, distance, half)
        np.testing.assert_allclose(float(got), want, rtol=1e-9)


@pytest.mark.parametrize("s,distance", list(itertools.product(S_VALUES, DISTANCES)))
def test_output_energy_matches_eq8(s, distance):
    w = rand((6, 10), seed=7)
    labels = np.array([3, 3, 0, 9, 5])
    got = mhe_jax.output_energy(jnp.asarray(w), jnp.asarray(labels), s=s, distance=distance)
    np.testing.assert_allclose(float(got), helpers.np_output_energy(w, labels, s, distance),
                               rtol=1e-9)


def test_output_energy_with_all_classes_once_is_full_energy():
    w = rand((6, 10), seed=8)
    got = mhe_jax.output_energy(jnp.asarray(w), jnp.arange(10), s=1.0)
    np.testing.assert_allclose(float(got), float(energy(jnp.asarray(w), s=1.0)), rtol=1e-12)


@pytest.mark.parametrize("power", ["0", "1", "2", "a0", "a1", "a2"])
@pytest.mark.parametrize("half", [False, True])
def test_official_energy_matches_tf_transcription(power, half):
    w = rand((3, 3, 4, 6), seed=11)
    got = mhe_jax.official_energy(jnp.asarray(w), power, half_space=half)
    np.testing.assert_allclose(float(got), helpers.np_official(w, power, half), rtol=1e-9)


def test_official_relation_to_paper():
    # Large norms make the official 1e-4 negligible: "0" is twice the paper's log energy.
    w = 1e3 * rand((10, 7), seed=12)
    np.testing.assert_allclose(
        float(mhe_jax.official_energy(w, "0")), 2 * float(energy(w, s=0.0)), rtol=1e-8)
    np.testing.assert_allclose(float(mhe_jax.official_energy(w, "2")), float(energy(w, s=2.0)),
                               rtol=1e-8)
    assert mhe_jax.OFFICIAL_STRENGTHS["hidden"]["a1"] == 0.1


# ------------------------------------------------------------------ invariances


def random_rotation(d, seed):
    q, r = np.linalg.qr(rand((d, d), seed))
    return q * np.sign(np.diag(r))


@pytest.mark.parametrize("s,distance,half", GRID[::3])
def test_invariances(s, distance, half):
    w = rand((7, 9), seed=21)
    e = float(energy(w, s=s, distance=distance, half_space=half))
    q = random_rotation(7, 22)
    perm = np.random.default_rng(23).permutation(9)
    scale = np.exp(rand((9,), seed=24) * 3)
    for w2 in (q @ w, w[:, perm], w * scale):
        np.testing.assert_allclose(float(energy(w2, s=s, distance=distance, half_space=half)), e,
                                   rtol=1e-10)


# ------------------------------------------------------------------ known values


def f(r, s):
    return math.log(1 / r) if s == 0 else r ** -s


@pytest.mark.parametrize("s", S_VALUES)
def test_antipodal_pair(s):
    w = np.array([[1.0, -1.0], [0.0, 0.0], [0.0, 0.0]])
    np.testing.assert_allclose(float(energy(w, s=s)), f(2.0, s), rtol=1e-10)
    np.testing.assert_allclose(float(energy(w, s=s, distance="angular")), f(math.pi, s), rtol=1e-10)


def simplex(n, d):
    v = np.eye(n) - 1.0 / n
    basis = np.linalg.svd(v)[0][:, : n - 1]  # orthonormal basis of the hyperplane
    pts = basis.T @ v  # (n-1, n)
    return np.vstack([pts, np.zeros((d - (n - 1), n))])


@pytest.mark.parametrize("n,d", [(3, 2), (4, 3), (6, 5), (5, 8)])
@pytest.mark.parametrize("s", S_VALUES)
def test_regular_simplex(n, d, s):
    w = simplex(n, d)
    z = math.sqrt(2 + 2 / (n - 1))
    np.testing.assert_allclose(float(energy(w, s=s)), f(z, s), rtol=1e-10)
    theta = math.acos(-1 / (n - 1))
    np.testing.assert_allclose(float(energy(w, s=s, distance="angular")), f(theta, s), rtol=1e-9)
    np.testing.assert_allclose(float(mhe_jax.min_angle(w)), theta, rtol=1e-7)


@pytest.mark.parametrize("d", [2, 3, 5])
@pytest.mark.parametrize("s", S_VALUES)
def test_cross_polytope_and_half_space_of_orthonormal_basis(d, s):
    cross = np.hstack([np.eye(d), -np.eye(d)])
    m = 2 * d
    want = (f(2.0, s) + (m - 2) * f(math.sqrt(2), s)) / (m - 1)
    np.testing.assert_allclose(float(energy(cross, s=s)), want, rtol=1e-10)
    # half-space MHE of an orthonormal basis is the energy of the cross-polytope
    np.testing.assert_allclose(float(energy(np.eye(d), s=s, half_space=True)), want, rtol=1e-10)


def test_simplex_is_a_minimum_against_perturbations():
    w = simplex(4, 3)
    e0 = float(energy(w, s=1.0))
    for seed in range(5):
        assert float(energy(w + 1e-3 * rand(w.shape, seed), s=1.0)) > e0


# ------------------------------------------------------------------ degenerate input


def degenerate_cases():
    v = rand((5,), 31)
    return {
        "identical": np.stack([v, v, rand((5,), 32)], axis=1),
        "zero_neuron": np.stack([v, np.zeros(5), rand((5,), 33)], axis=1),
        "antipodal": np.stack([v, -v, rand((5,), 34)], axis=1),
        "huge_norm": np.stack([1e4 * v, rand((5,), 35)], axis=1),
        "tiny_norm": np.stack([1e-8 * v, rand((5,), 36)], axis=1),
        "single_neuron": v[:, None],
        "d_equals_1": np.array([[1.0, -2.0, 3.0, 0.5]]),
    }


# float16 in the slow set (suite time, issue 26): the same promotion path as bfloat16
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64, jnp.bfloat16,
                                   pytest.param(jnp.float16, marks=pytest.mark.slow)])
@pytest.mark.parametrize("case", list(degenerate_cases()))
def test_finite_value_and_gradient(case, dtype):
    w = jnp.asarray(degenerate_cases()[case], dtype)
    for s, distance, half in GRID:
        fn = lambda w: energy(w, s=s, distance=distance, half_space=half)  # noqa: E731
        value, grad = jax.value_and_grad(fn)(w)
        assert np.isfinite(float(value)), (case, s, distance, half)
        assert grad.dtype == w.dtype
        assert np.all(np.isfinite(np.asarray(grad, np.float64))), (case, s, distance, half)
        if dtype in (jnp.bfloat16, jnp.float16):
            assert value.dtype == jnp.float32


def test_single_neuron_energy_is_zero():
    assert float(energy(np.ones((4, 1)))) == 0.0


def test_cosine_rounding_to_one_in_float32_is_finite():
    v = jnp.asarray(rand((64,), 40), jnp.float32)
    w = jnp.stack([v, v * (1 + 1e-7), -v], axis=1)  # c rounds to exactly ±1
    for s, distance, half in GRID:
        value, grad = jax.value_and_grad(
            lambda w: energy(w, s=s, distance=distance, half_space=half))(w)
        assert np.isfinite(float(value)) and np.all(np.isfinite(grad))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("s,distance", list(itertools.product((0.0, 1.0, 2.0), DISTANCES)))
def test_near_duplicates_keep_a_repulsive_gradient(dtype, s, distance):
    """Gradient descent must push two nearly coincident neurons apart."""
    for angle in (1e-2, 1e-3, 1e-5):
        w = jnp.asarray([[1.0, math.cos(angle)], [0.0, math.sin(angle)], [0.0, 0.0]], dtype)
        g = jax.grad(lambda w: energy(w, s=s, distance=distance))(w)
        stepped = w - 1e-6 / (float(jnp.max(jnp.abs(g))) + 1e-30) * g
        assert float(jnp.max(jnp.abs(g))) > 0, angle
        a0 = float(mhe_jax.min_angle(w.astype(jnp.float64)))
        a1 = float(mhe_jax.min_angle(stepped.astype(jnp.float64)))
        assert a1 > a0, (angle, a0, a1)


# every fourth grid point in the fast set, the other half of GRID[::2] in the slow set (issue 26)
@pytest.mark.parametrize("s,distance,half", [
    g if i % 2 == 0 else pytest.param(*g, marks=pytest.mark.slow) for i, g in enumerate(GRID[::2])])
def test_check_grads(s, distance, half):
    w = jnp.asarray(rand((5, 6), 50))
    check_grads(lambda w: energy(w, s=s, distance=distance, half_space=half), (w,), order=2)
    labels = jnp.array([0, 2, 2, 5])
    check_grads(lambda w: mhe_jax.output_energy(w, labels, s=s, distance=distance), (w,), order=1)


def test_traced_s_equals_static_s():
    w = jnp.asarray(rand((6, 5), 51))
    for s, distance, half in GRID:
        traced = jax.jit(lambda w, s: energy(w, s=s, distance=distance, half_space=half))(w, s)
        np.testing.assert_allclose(
            float(traced), float(energy(w, s=s, distance=distance, half_space=half)), rtol=1e-12)
        g1 = jax.grad(lambda w: energy(w, s=jnp.asarray(s), distance=distance, half_space=half))(w)
        g2 = jax.grad(lambda w: energy(w, s=s, distance=distance, half_space=half))(w)
        np.testing.assert_allclose(g1, g2, rtol=1e-10)


def test_gradient_wrt_s_raises():
    w = jnp.asarray(rand((4, 3), 52))
    with pytest.raises(NotImplementedError, match="s, t or eps"):
        jax.grad(lambda s: energy(w, s=s))(1.0)


# ------------------------------------------------------------------ sampling (Sec. 3.6)


@pytest.mark.parametrize("half", [False, True])
def test_sampled_energy_is_unbiased(half):
    w = jnp.asarray(rand((4, 8), 60))
    full_v, full_g = jax.value_and_grad(lambda w: energy(w, s=1.0, half_space=half))(w)
    keys = jax.random.split(jax.random.key(0), 4000)
    vs, gs = jax.vmap(
        lambda k: jax.value_and_grad(
            lambda w: energy(w, s=1.0, half_space=half, sample_size=3, key=k))(w)
    )(keys)
    se = np.std(vs) / math.sqrt(len(vs))
    assert abs(float(np.mean(vs)) - float(full_v)) < 4 * se
    g_se = np.std(gs, axis=0) / math.sqrt(len(vs))
    z = np.abs(np.mean(gs, axis=0) - full_g) / (g_se + 1e-12)
    assert np.mean(z < 4) > 0.97 and np.max(z) < 6
    # a full-size sample is the exact energy
    np.testing.assert_allclose(
        float(energy(w, s=1.0, half_space=half, sample_size=8, key=keys[0])), float(full_v),
        rtol=1e-12)


# ------------------------------------------------------------------ diagnostics


def test_stats_match_numpy():
    w = rand((6, 7), 70)
    u = helpers.unit(w)
    c = u.T @ u
    off = ~np.eye(7, dtype=bool)
    stats = mhe_jax.energy_stats(w, s=2.0)
    np.testing.assert_allclose(float(stats.energy), float(energy(w)), rtol=1e-12)
    np.testing.assert_allclose(float(stats.min_angle), np.arccos(c[off].max()), rtol=1e-9)
    np.testing.assert_allclose(float(stats.mean_abs_cosine), np.abs(c[off]).mean(), rtol=1e-12)
    assert float(mhe_jax.mean_abs_cosine(np.eye(4))) == 0.0


# ------------------------------------------------------------------ errors and tracing


@pytest.mark.parametrize(
    "kwargs,arg",
    [
        ({"s": -1.0}, "s"),
        ({"distance": "cosine"}, "distance"),
        ({"neuron_axis": 2}, "neuron_axis"),
        ({"sample_size": 9, "key": jax.random.key(0)}, "sample_size"),
        ({"sample_size": 3}, "key"),
        ({"eps": -1.0}, "eps"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, arg):
    with pytest.raises((ValueError, TypeError), match=arg):
        energy(jnp.ones((3, 4)), **kwargs)


def test_bad_weights_and_labels():
    with pytest.raises(ValueError, match="ndim"):
        energy(jnp.ones(5))
    with pytest.raises(TypeError, match="floating"):
        energy(jnp.ones((3, 4), jnp.int32))
    with pytest.raises(ValueError, match="labels"):
        mhe_jax.output_energy(jnp.ones((3, 4)), jnp.zeros((2, 2), jnp.int32))
    with pytest.raises(TypeError, match="labels"):
        mhe_jax.output_energy(jnp.ones((3, 4)), jnp.zeros((2,)))
    with pytest.raises(ValueError, match="power"):
        mhe_jax.official_energy(jnp.ones((3, 4)), "3")
    with pytest.raises(ValueError, match="t"):
        mhe_jax.gaussian_energy(jnp.ones((3, 4)), t=-2.0)


def test_no_retracing():
    @jax.jit
    @chex.assert_max_traces(n=1)
    def fn(w):
        return jax.value_and_grad(lambda w: energy(w, s=2.0, half_space=True))(w)

    for seed in range(4):
        fn(jnp.asarray(rand((5, 6), seed), jnp.float32))


def test_vmap_over_layers():
    ws = jnp.asarray(rand((3, 5, 6), 80))
    got = jax.vmap(lambda w: energy(w, s=1.0))(ws)
    np.testing.assert_allclose(got, [helpers.np_energy(w, 1.0) for w in np.asarray(ws)], rtol=1e-9)
