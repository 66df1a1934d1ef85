"""mhe_jax.sphere.prototypes and mhe_jax.models.PrototypeHead (issue 28, part 3).

The simplex ETF against its closed form in float64; the solver path against the Thomson table;
the head's logits against NumPy, and its prototypes left alone by an nnx.Param optimizer.
"""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import mhe_jax
from mhe_jax import models, sphere
from tests import helpers

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"

# Best known Thomson energies Σ_{i<j} 1/‖x_i − x_j‖ on S² (shared/reference/
# thomson_minima_N2-64.tsv, the values tests/test_sphere.py copies).
THOMSON = {4: 3.674234614, 5: 6.474691495}


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


def _check_etf(p, k, d):
    p = np.asarray(p)
    assert p.shape == (d, k) and p.dtype == np.float64
    g = p.T @ p
    np.testing.assert_allclose(np.diag(g), 1.0, rtol=0, atol=1e-12)
    off = g[~np.eye(k, dtype=bool)]
    np.testing.assert_allclose(off, -1.0 / (k - 1), rtol=0, atol=1e-12)
    np.testing.assert_allclose(p.sum(axis=1), 0.0, atol=1e-12)


@pytest.mark.parametrize("k, d", [(2, 1), (2, 5), (3, 2), (4, 3), (5, 4), (4, 10), (10, 9),
                                  (10, 256)])
def test_simplex_etf_exact(k, d):
    _check_etf(sphere.prototypes(k, d), k, d)
    _check_etf(sphere.prototypes(k, d, key=jax.random.key(3)), k, d)  # rotated: same Gram


def test_etf_canonical_and_rotated():
    p = np.asarray(sphere.prototypes(4, 6))
    np.testing.assert_array_equal(p[3:], 0.0)  # canonical: the first K − 1 coordinates
    a, b = sphere.prototypes(4, 6, key=1), sphere.prototypes(4, 6, key=jax.random.key(1))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # deterministic per key
    c = sphere.prototypes(4, 6, key=2)
    assert not np.allclose(np.asarray(a), np.asarray(c))


def test_etf_is_the_thomson_minimum():
    # K = dim + 1 = 4 in R³: the regular tetrahedron, the known Thomson optimum
    p = np.asarray(sphere.prototypes(4, 3))
    np.testing.assert_allclose(helpers.np_point_energy(p.T, s=1.0), THOMSON[4], rtol=1e-9)


def _riemannian_grad_norm(x, s):
    g = jax.grad(lambda y: sphere.physics_energy(y, s))(jnp.asarray(x))
    g = np.asarray(g)
    return np.linalg.norm(g - np.sum(g * x, axis=1, keepdims=True) * x)


@pytest.mark.parametrize("k", [5])  # one solver shape (n, dim, restarts): one compilation
def test_solver_path_reaches_thomson_minimum(k):
    p = np.asarray(sphere.prototypes(k, 3, s=1.0, key=0, restarts=8))
    assert p.shape == (3, k)
    np.testing.assert_allclose(np.linalg.norm(p, axis=0), 1.0, atol=1e-12)
    energy = helpers.np_point_energy(p.T, s=1.0)
    assert abs(energy - THOMSON[k]) <= 1e-8 * THOMSON[k], (energy, THOMSON[k])
    assert _riemannian_grad_norm(p.T, 1.0) <= 1e-7 * energy  # a stationary point
    again = np.asarray(sphere.prototypes(k, 3, s=1.0, key=0, restarts=8))
    np.testing.assert_array_equal(p, again)


def test_solver_path_matches_reference_table():
    path = REFERENCE / "thomson_minima_N2-64.tsv"
    if not path.is_file():
        pytest.skip(f"{path} not available")
    rows = [line.split("\t") for line in path.read_text().splitlines()[1:] if line.strip()]
    table = {int(r[0]): float(r[1]) for r in rows}
    p = np.asarray(sphere.prototypes(5, 3, key=0, restarts=8))
    assert abs(helpers.np_point_energy(p.T) - table[5]) <= 1e-8 * table[5]


def test_solver_path_log_energy_is_stationary():
    # s is traced by the solver: the same compilation as the Thomson case above
    p = np.asarray(sphere.prototypes(5, 3, s=0.0, key=1, restarts=8))
    assert _riemannian_grad_norm(p.T, 0.0) <= 1e-7
    # Whyte's problem, N = 5: the triangular bipyramid, Σ_{i<j} log(1/‖x_i − x_j‖)
    r = np.sqrt([3.0] * 3 + [2.0] * 6 + [4.0])  # 3 equatorial, 6 pole–equator, 1 pole–pole
    np.testing.assert_allclose(helpers.np_point_energy(p.T, s=0.0), -np.sum(np.log(r)),
                               rtol=1e-9)


def test_float32_by_default():
    with jax.enable_x64(False):
        assert sphere.prototypes(3, 4).dtype == jnp.float32


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(num_classes=1, dim=3), ValueError, "num_classes must be >= 2"),
    (dict(num_classes=3.0, dim=3), TypeError, "num_classes must be an int"),
    (dict(num_classes=True, dim=3), TypeError, "num_classes must be an int"),
    (dict(num_classes=3, dim=0), ValueError, "dim must be >= 1"),
    (dict(num_classes=3, dim=2.5), TypeError, "dim must be an int"),
    (dict(num_classes=3, dim=3, s=-1.0), ValueError, "s must be"),
    (dict(num_classes=3, dim=3, s=float("nan")), ValueError, "s must be"),
    (dict(num_classes=3, dim=3, s="1"), TypeError, "s must be"),
    (dict(num_classes=3, dim=1), ValueError, "dim=1 holds only 2"),
    (dict(num_classes=3, dim=3, key="seed"), TypeError, "key must be"),
    (dict(num_classes=8, dim=2, key="seed"), TypeError, "key must be"),
    (dict(num_classes=8, dim=2, restarts=0), ValueError, "restarts must be >= 1"),
])
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        sphere.prototypes(**kwargs)


# ------------------------------------------------------------------------------ the head


def test_head_logits_are_scaled_cosines():
    rng = np.random.default_rng(0)
    p = rng.standard_normal((5, 3))
    x = rng.standard_normal((4, 2, 5))
    head = models.PrototypeHead(p, scale=7.0)
    got = np.asarray(head(x))
    unit_p = p / np.linalg.norm(p, axis=0)
    want = 7.0 * (x / np.linalg.norm(x, axis=-1, keepdims=True)) @ unit_p
    assert got.shape == (4, 2, 3)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(head.kernel[...]), unit_p, rtol=1e-14)


def test_head_zero_features():
    head = models.PrototypeHead(sphere.prototypes(3, 2))
    x = jnp.zeros((2, 2))
    np.testing.assert_array_equal(np.asarray(head(x)), 0.0)
    g = jax.grad(lambda x: jnp.sum(head(x) ** 2))(x)
    assert np.all(np.isfinite(np.asarray(g)))


class _Net(nnx.Module):
    def __init__(self, head):
        self.body = nnx.Linear(3, 4, rngs=nnx.Rngs(0))
        self.classifier = head

    def __call__(self, x):
        return self.classifier(self.body(x))


@pytest.mark.parametrize("trainable", [False, True])
def test_fixed_head_is_not_trained(trainable):
    p = sphere.prototypes(3, 4)
    net = _Net(models.PrototypeHead(p, scale=5.0, trainable=trainable))
    params = nnx.state(net, nnx.Param)
    assert ("classifier" in params) == trainable
    assert isinstance(net.classifier.kernel, nnx.Param if trainable else models.Prototypes)
    optimizer = nnx.Optimizer(net, optax.chain(optax.add_decayed_weights(0.1), optax.sgd(0.5)),
                              wrt=nnx.Param)
    x, y = jnp.ones((6, 3)), jnp.arange(6) % 3
    before_body = np.asarray(net.body.kernel[...]).copy()
    before_head = np.asarray(net.classifier.kernel[...]).copy()

    def loss(net):
        return optax.softmax_cross_entropy_with_integer_labels(net(x), y).mean()

    grads = nnx.grad(loss)(net)
    optimizer.update(net, grads)
    kernel = np.asarray(net.classifier.kernel[...])
    assert not np.allclose(np.asarray(net.body.kernel[...]), before_body)
    np.testing.assert_allclose(before_head, np.asarray(p), rtol=0, atol=1e-15)
    if trainable:
        assert not np.allclose(kernel, before_head)
    else:
        np.testing.assert_array_equal(kernel, before_head)


@pytest.mark.parametrize("args, kwargs, error, match", [
    ((np.ones(3),), {}, ValueError, "prototypes must have shape"),
    ((np.ones((3, 1)),), {}, ValueError, "prototypes must have shape"),
    ((np.zeros((3, 2)),), {}, ValueError, "non-zero columns"),
    ((np.ones((3, 2), np.int32),), {}, TypeError, "prototypes must have a floating"),
    ((np.eye(3),), dict(scale=0.0), ValueError, "scale must be"),
    ((np.eye(3),), dict(scale="1"), TypeError, "scale must be"),
    ((np.eye(3),), dict(trainable=1), TypeError, "trainable must be a bool"),
])
def test_head_bad_arguments(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        models.PrototypeHead(*args, **kwargs)


def test_head_feature_size_mismatch():
    head = models.PrototypeHead(np.eye(3))
    with pytest.raises(ValueError, match="prototypes have d = 3"):
        head(jnp.ones((2, 4)))


def test_prototypes_feed_the_energy_diagnostics():
    # the (d, K) layout is the library's neuron layout: min_angle reads it directly
    p = sphere.prototypes(4, 3)
    np.testing.assert_allclose(float(mhe_jax.min_angle(p)), np.arccos(-1 / 3), rtol=1e-10)
