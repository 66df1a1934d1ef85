"""Neural-collapse metrics (issue 28, part 4): known answers and a float64 NumPy brute force."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mhe_jax
from mhe_jax import sphere


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


def np_collapse(h, y, k, W=None):
    """The definitions of mhe_jax._collapse, written directly (d × d covariances, loops)."""
    h = np.asarray(h, np.float64)
    n, d = h.shape
    mu = np.stack([h[y == c].mean(axis=0) for c in range(k)])  # (K, d)
    mu_g = mu.mean(axis=0)
    mt = mu - mu_g
    sw = sum(np.outer(h[i] - mu[y[i]], h[i] - mu[y[i]]) for i in range(n)) / n
    sb = sum(np.outer(mt[c], mt[c]) for c in range(k)) / k
    nc1 = np.trace(sw @ np.linalg.pinv(sb, rcond=1e-10, hermitian=True)) / k
    var = [np.mean(np.sum((h[y == c] - mu[c]) ** 2, axis=1)) for c in range(k)]
    cdnv = np.mean([(var[a] + var[b]) / (2 * np.sum((mu[a] - mu[b]) ** 2))
                    for a, b in itertools.combinations(range(k), 2)])
    g = mt @ mt.T
    etf = (np.eye(k) - 1.0 / k) / math.sqrt(k - 1)
    nc2 = np.linalg.norm(g / np.linalg.norm(g) - etf)
    norms = np.linalg.norm(mt, axis=1)
    equinorm = np.std(norms) / np.mean(norms)
    cos = [mt[a] @ mt[b] / (norms[a] * norms[b]) for a, b in itertools.combinations(range(k), 2)]
    out = [nc1, cdnv, nc2, equinorm, np.std(cos)]
    if W is not None:
        out.append(np.sum((W / np.linalg.norm(W) - mt.T / np.linalg.norm(mt)) ** 2))
    return out


def _values(stats):
    return [float(v) for v in stats if v is not None]


@pytest.mark.parametrize("k, d, scale", [(2, 1, 1.0), (3, 2, 5.0), (4, 7, 0.01), (10, 9, 3.0),
                                         (5, 12, 1.0)])
def test_exact_etf_collapse_is_zero(k, d, scale):
    etf = np.asarray(sphere.prototypes(k, d, key=k))  # a random rotation
    shift = np.linspace(-1.0, 2.0, d)  # the global mean does not matter
    counts = np.arange(k) % 3 + 1  # imbalanced, a class of one sample included
    labels = np.repeat(np.arange(k), counts)
    features = scale * etf.T[labels] + shift
    stats = mhe_jax.collapse_stats(features, labels, k, classifier=2.0 * etf)
    np.testing.assert_allclose(_values(stats), 0.0, atol=1e-12)


@pytest.mark.parametrize("k, sigma", [(3, 0.1), (5, 0.7)])
def test_known_within_class_spread(k, sigma):
    # two samples per class at μ_c ± σ μ_c (μ_c: the ETF of K classes in R^{K−1}):
    # Σ_W = (σ²/K) Σ_c μ_c μ_cᵀ, Σ_B = (1/K) Σ_c μ_c μ_cᵀ ⇒ NC1 = σ²(K−1)/K; V_c = σ² and
    # ‖μ_c − μ_c'‖² = 2K/(K−1) ⇒ CDNV = σ²(K−1)/(2K)
    etf = np.asarray(sphere.prototypes(k, k - 1))
    features = np.concatenate([(1 + sigma) * etf.T, (1 - sigma) * etf.T])
    labels = np.tile(np.arange(k), 2)
    stats = mhe_jax.collapse_stats(features, labels, k, classifier=etf)
    np.testing.assert_allclose(float(stats.nc1), sigma ** 2 * (k - 1) / k, rtol=1e-12)
    np.testing.assert_allclose(float(stats.cdnv), sigma ** 2 * (k - 1) / (2 * k), rtol=1e-12)
    np.testing.assert_allclose([float(stats.nc2), float(stats.nc3)], 0.0, atol=1e-12)


def test_spread_outside_the_means_span_is_not_nc1():
    # NC1 uses Σ_B^†: spread orthogonal to the span of the centred means does not count
    k, sigma = 3, 0.5
    etf = np.asarray(sphere.prototypes(k, 3))  # in the first 2 coordinates
    e3 = np.array([0.0, 0.0, 1.0])
    features = np.concatenate([etf.T + sigma * e3, etf.T - sigma * e3])
    labels = np.tile(np.arange(k), 2)
    stats = mhe_jax.collapse_stats(features, labels, k)
    assert abs(float(stats.nc1)) < 1e-12
    np.testing.assert_allclose(float(stats.cdnv), sigma ** 2 * (k - 1) / (2 * k), rtol=1e-12)
    assert stats.nc3 is None


@pytest.mark.parametrize("k, d, seed", [(3, 5, 0), (4, 2, 1), (6, 8, 2)])
def test_matches_brute_force_on_random_data(k, d, seed):
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.arange(k), rng.integers(0, k, 20)])  # imbalanced
    features = rng.standard_normal((len(labels), d)) + 3.0 * rng.standard_normal((k, d))[labels]
    W = rng.standard_normal((d, k))
    got = _values(mhe_jax.collapse_stats(features, labels, k, classifier=W))
    np.testing.assert_allclose(got, np_collapse(features, labels, k, W), rtol=1e-10,
                               atol=1e-13)


def test_nc3_extremes_and_nc2_invariances():
    rng = np.random.default_rng(3)
    k, d = 4, 6
    labels = np.repeat(np.arange(k), 3)
    features = rng.standard_normal((len(labels), d))
    means = np.stack([features[labels == c].mean(0) for c in range(k)])
    centred = (means - means.mean(0)).T  # (d, K)
    s = mhe_jax.collapse_stats(features, labels, k, classifier=5.0 * centred)
    assert abs(float(s.nc3)) < 1e-12
    s = mhe_jax.collapse_stats(features, labels, k, classifier=-centred)
    np.testing.assert_allclose(float(s.nc3), 4.0, rtol=1e-12)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    base = _values(mhe_jax.collapse_stats(features, labels, k))
    moved = _values(mhe_jax.collapse_stats(3.0 * features @ q + 1.0, labels, k))
    np.testing.assert_allclose(moved[1:], base[1:], rtol=1e-10)  # CDNV, NC2: scale-free
    np.testing.assert_allclose(moved[0], base[0], rtol=1e-10)  # NC1 too (ratio of spreads)


def test_coinciding_means_are_finite_or_inf_never_nan():
    features = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    labels = np.array([0, 0, 1, 1])  # both class means at the origin
    s = mhe_jax.collapse_stats(features, labels, 2, classifier=np.eye(2))
    assert float(s.cdnv) == math.inf
    assert float(s.nc1) == 0.0  # Σ_B = 0: its pseudo-inverse is 0 (documented)
    np.testing.assert_allclose(float(s.nc2), 1.0, rtol=1e-14)
    assert float(s.equinorm) == 0.0 and float(s.equiangularity) == 0.0
    np.testing.assert_allclose(float(s.nc3), 1.0, rtol=1e-14)  # ‖W/‖W‖_F − 0‖²
    assert not any(math.isnan(v) for v in _values(s))


def test_one_sample_per_class():
    etf = np.asarray(sphere.prototypes(5, 4))
    s = mhe_jax.collapse_stats(etf.T, np.arange(5), 5, classifier=etf)
    np.testing.assert_allclose(_values(s), 0.0, atol=1e-12)


def test_jit_with_static_num_classes_and_float32():
    rng = np.random.default_rng(4)
    labels = np.arange(12) % 3
    features = rng.standard_normal((12, 4))
    f = jax.jit(mhe_jax.collapse_stats, static_argnums=2)
    got = _values(f(features, labels, 3, classifier=np.eye(4)[:, :3]))
    np.testing.assert_allclose(got, np_collapse(features, labels, 3, np.eye(4)[:, :3]),
                               rtol=1e-10)
    with jax.enable_x64(False):
        s = mhe_jax.collapse_stats(features.astype(np.float32), labels, 3)
        assert s.nc1.dtype == jnp.float32
        np.testing.assert_allclose(_values(s), np_collapse(features, labels, 3), rtol=2e-4,
                                   atol=1e-5)


@pytest.mark.parametrize("args, kwargs, error, match", [
    ((np.ones((4, 2)), np.array([0, 1, 2, 0]), 2), {}, ValueError, r"labels must be in \[0"),
    ((np.ones((4, 2)), np.array([0, 1, -1, 0]), 2), {}, ValueError, r"labels must be in \[0"),
    ((np.ones((4, 2)), np.array([0, 0, 2, 2]), 3), {}, ValueError, r"missing: \[1\]"),
    ((np.ones((4, 2)), np.array([0, 1, 0]), 2), {}, ValueError, "labels must have shape"),
    ((np.ones((4, 2)), np.array([[0, 1, 0, 1]]), 2), {}, ValueError, "labels must have shape"),
    ((np.ones((4, 2)), np.array([0.0, 1.0, 0.0, 1.0]), 2), {}, TypeError, "labels must be int"),
    ((np.ones(4), np.array([0, 1, 0, 1]), 2), {}, ValueError, "features must have shape"),
    ((np.ones((4, 2), np.int32), np.array([0, 1, 0, 1]), 2), {}, TypeError,
     "features must have a floating"),
    ((np.ones((4, 2)), np.array([0, 0, 0, 0]), 1), {}, ValueError, "num_classes must be >= 2"),
    ((np.ones((4, 2)), np.array([0, 1, 0, 1]), 2.0), {}, TypeError, "num_classes must be an int"),
    ((np.ones((4, 2)), np.array([0, 1, 0, 1]), 2), dict(classifier=np.ones((2, 3))), ValueError,
     "classifier must have shape"),
    ((np.ones((4, 2)), np.array([0, 1, 0, 1]), 2), dict(classifier=np.ones((2,))), ValueError,
     "classifier must have shape"),
])
def test_bad_arguments(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        mhe_jax.collapse_stats(*args, **kwargs)
