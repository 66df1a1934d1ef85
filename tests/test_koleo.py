"""KoLeo (issue 28, part 4) against a float64 NumPy brute force, duplicates included."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mhe_jax
from mhe_jax._koleo import DEFAULT_EPS


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


def np_koleo(x, eps=DEFAULT_EPS):
    """−(1/N) Σ_i ½ log(min_{j≠i} ‖x̂_i − x̂_j‖² + ε²) over the rows of x, one pair at a time."""
    x = np.asarray(x, np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    u = np.where(norms > 0, x / np.where(norms > 0, norms, 1.0), 0.0)
    n = len(u)
    total = 0.0
    for i in range(n):
        rho2 = min(float(np.sum((u[i] - u[j]) ** 2)) for j in range(n) if j != i)
        total += 0.5 * math.log(rho2 + eps * eps)
    return -total / n


def np_dinov2_koleo(x, eps=1e-8):
    """Transcription of dinov2/loss/koleo_loss.py (KoLeoLoss.forward) in NumPy."""
    x = np.asarray(x, np.float64)
    u = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)  # F.normalize
    dots = u @ u.T
    np.fill_diagonal(dots, -1)
    nearest = np.argmax(dots, axis=1)
    distances = np.linalg.norm(u - u[nearest] + eps, axis=1)  # nn.PairwiseDistance(2, eps)
    return -np.mean(np.log(distances + eps))


def test_matches_brute_force_random():
    x = np.random.default_rng(0).standard_normal((9, 4))
    np.testing.assert_allclose(float(mhe_jax.koleo_loss(x)), np_koleo(x), rtol=1e-13)
    np.testing.assert_allclose(float(mhe_jax.koleo_energy(x.T)), np_koleo(x), rtol=1e-13)
    np.testing.assert_allclose(float(mhe_jax.koleo_energy(x, neuron_axis=0)), np_koleo(x),
                               rtol=1e-13)


def test_neuron_axis_of_a_conv_kernel():
    w = np.random.default_rng(1).standard_normal((3, 3, 2, 6))  # 6 neurons of 18 entries
    want = np_koleo(w.reshape(-1, 6).T)
    np.testing.assert_allclose(float(mhe_jax.koleo_energy(w)), want, rtol=1e-13)
    w0 = np.moveaxis(w, -1, 0)
    np.testing.assert_allclose(float(mhe_jax.koleo_energy(w0, neuron_axis=0)), want, rtol=1e-13)


@pytest.mark.parametrize("eps", [1e-8, 1e-3])
def test_duplicates_are_finite_and_exact(eps):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((6, 3))
    x[3] = x[1]  # an exact duplicate
    x[5] = 2.5 * x[1]  # the same direction, another norm
    got = float(mhe_jax.koleo_loss(x, eps=eps))
    np.testing.assert_allclose(got, np_koleo(x, eps), rtol=1e-13)
    g = np.asarray(jax.grad(lambda y: mhe_jax.koleo_loss(y, eps=eps))(jnp.asarray(x)))
    assert np.all(np.isfinite(g))


def test_all_identical_value_and_zero_gradient():
    x = jnp.ones((4, 3))
    np.testing.assert_allclose(float(mhe_jax.koleo_loss(x)), -math.log(DEFAULT_EPS), rtol=1e-14)
    np.testing.assert_array_equal(np.asarray(jax.grad(mhe_jax.koleo_loss)(x)), 0.0)


@pytest.mark.parametrize("theta", [1e-6, 0.3, 2.0, math.pi])
def test_two_points_closed_form(theta):
    x = np.array([[1.0, 0.0], [math.cos(theta), math.sin(theta)]]) * np.array([[3.0], [0.5]])
    rho = 2 * math.sin(theta / 2)
    want = -0.5 * math.log(rho * rho + DEFAULT_EPS ** 2)
    np.testing.assert_allclose(float(mhe_jax.koleo_loss(x)), want, rtol=1e-12)
    np.testing.assert_allclose(np_koleo(x), want, rtol=1e-12)


def test_near_duplicates_keep_their_digits():
    # 2 − 2cos loses everything at 1e-9 rad; the difference form does not
    t = 1e-9
    x = np.array([[1.0, 0.0, 0.0], [math.cos(t), math.sin(t), 0.0], [0.0, 0.0, 1.0]])
    np.testing.assert_allclose(float(mhe_jax.koleo_loss(x, eps=1e-12)), np_koleo(x, 1e-12),
                               rtol=1e-9)


def test_zero_row():
    x = np.array([[0.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])  # zero row: distance 1 to both
    np.testing.assert_allclose(float(mhe_jax.koleo_loss(x)), np_koleo(x), rtol=1e-13)
    np.testing.assert_allclose(np_koleo(x), 0.0, atol=1e-15)  # every neighbour at distance 1
    g = np.asarray(jax.grad(mhe_jax.koleo_loss)(jnp.asarray(x)))
    assert np.all(np.isfinite(g))


def test_gradient_matches_finite_differences():
    x = np.random.default_rng(3).standard_normal((7, 3))
    g = np.asarray(jax.grad(mhe_jax.koleo_loss)(jnp.asarray(x)))
    h = 1e-6
    num = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[idx] = h
        num[idx] = (np_koleo(x + e) - np_koleo(x - e)) / (2 * h)
    np.testing.assert_allclose(g, num, rtol=1e-6, atol=1e-8)


def test_invariances():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((8, 5))
    base = float(mhe_jax.koleo_loss(x))
    scales = rng.uniform(0.1, 10.0, (8, 1))
    q, _ = np.linalg.qr(rng.standard_normal((5, 5)))
    np.testing.assert_allclose(float(mhe_jax.koleo_loss(x * scales)), base, rtol=1e-13)
    np.testing.assert_allclose(float(mhe_jax.koleo_loss(x @ q)), base, rtol=1e-12)
    np.testing.assert_allclose(float(mhe_jax.koleo_loss(x[rng.permutation(8)])), base,
                               rtol=1e-13)


def test_agrees_with_dinov2_away_from_duplicates():
    x = np.random.default_rng(5).standard_normal((16, 8))
    np.testing.assert_allclose(float(mhe_jax.koleo_loss(x)), np_dinov2_koleo(x), rtol=1e-6)


def test_spread_points_have_lower_koleo():
    tetra = np.asarray(mhe_jax.sphere.prototypes(4, 3)).T
    bunched = tetra + np.array([[0.0, 0.0, 3.0]])
    assert float(mhe_jax.koleo_loss(tetra)) < float(mhe_jax.koleo_loss(bunched))


def test_jit_and_float32():
    x = np.random.default_rng(6).standard_normal((5, 3))
    np.testing.assert_allclose(float(jax.jit(mhe_jax.koleo_loss)(x)), np_koleo(x), rtol=1e-13)
    with jax.enable_x64(False):
        v = mhe_jax.koleo_loss(np.asarray(x, np.float32))
        assert v.dtype == jnp.float32
        np.testing.assert_allclose(float(v), np_koleo(x), rtol=1e-5)


def test_regularizer_adds_strength_times_gradient():
    rng = np.random.default_rng(7)
    params = {"dense": {"kernel": jnp.asarray(rng.standard_normal((4, 5)))},
              "out": {"kernel": jnp.asarray(rng.standard_normal((5, 3)))}}
    tx = mhe_jax.koleo_regularizer(0.3)
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, state = tx.update(zeros, tx.init(params), params)
    for name in params:
        want = 0.3 * np.asarray(jax.grad(mhe_jax.koleo_energy)(params[name]["kernel"]))
        np.testing.assert_allclose(np.asarray(updates[name]["kernel"]), want, rtol=1e-12,
                                   atol=1e-15)
    chained = optax.chain(mhe_jax.koleo_regularizer(0.1), optax.sgd(0.1))
    chained.update(zeros, chained.init(params), params)  # runs inside a chain


@pytest.mark.parametrize("call, error, match", [
    (lambda: mhe_jax.koleo_loss(np.ones((1, 3))), ValueError, "at least 2 rows"),
    (lambda: mhe_jax.koleo_loss(np.ones(3)), ValueError, "x must have shape"),
    (lambda: mhe_jax.koleo_loss(np.ones((2, 2, 2))), ValueError, "x must have shape"),
    (lambda: mhe_jax.koleo_loss(np.ones((3, 2)), eps=0.0), ValueError, "eps must be > 0"),
    (lambda: mhe_jax.koleo_loss(np.ones((3, 2)), eps=-1.0), ValueError, "eps must be"),
    (lambda: mhe_jax.koleo_loss(np.ones((3, 2)), eps=float("nan")), ValueError, "eps must be"),
    (lambda: mhe_jax.koleo_energy(np.ones((3, 1))), ValueError, "at least 2 neurons"),
    (lambda: mhe_jax.koleo_energy(np.ones(3)), ValueError, "w must have ndim >= 2"),
    (lambda: mhe_jax.koleo_energy(np.ones((3, 2), np.int32)), TypeError, "floating"),
    (lambda: mhe_jax.koleo_regularizer(-1.0), ValueError, "strength"),
    (lambda: mhe_jax.koleo_regularizer(1.0, eps=0.0), ValueError, "eps must be > 0"),
])
def test_bad_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_regularizer_rejects_a_one_neuron_layer():
    params = {"out": {"kernel": jnp.ones((3, 1))}}
    tx = mhe_jax.koleo_regularizer(1.0)
    with pytest.raises(ValueError, match="KoLeo needs at least 2"):
        tx.update(params, tx.init(params), params)
