"""User-defined pair potentials (issue 28 §1), float64 against a NumPy brute force.

A user ``potential=f`` goes through the same custom-JVP pair sum as the built-in kernels: a user
``f`` equal to Riesz s = 2 must give the built-in's value and gradient to rounding on every path
(dense, tiled, sampled, sharded ring); other potentials (a Gaussian, a log-barrier, one that is
only defined with ``min_distance``) are checked against ``tests/pair_reference.py``.
The sharded checks of this file and of tests/test_groups.py run in one child process with 8 host
devices (``tests/_pairs_sharding_child.py``).
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mhe_jax
from mhe_jax import EnergySpec
from tests import helpers, pair_reference as ref

ROOT = Path(__file__).resolve().parents[1]
CHILD = Path(__file__).with_name("_pairs_sharding_child.py")


def riesz2(r):
    return r ** -2


def log_barrier(r):
    return -jnp.log(r)


def gaussian(r):
    return jnp.exp(-1.5 * r ** 2)


def root_barrier(r):
    """Only defined above r = 0.25 (NaN below, infinite at 0.25)."""
    return (r - 0.25) ** -0.5


def rand(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def value_and_grad(fn, w):
    return jax.jit(jax.value_and_grad(fn))(jnp.asarray(w))


def assert_same(a, b, rtol=1e-12):
    (va, ga), (vb, gb) = a, b
    np.testing.assert_allclose(float(va), float(vb), rtol=rtol)
    np.testing.assert_allclose(np.asarray(ga), np.asarray(gb), rtol=rtol * 100,
                               atol=rtol * float(jnp.max(jnp.abs(gb))))


def check_against_reference(fn, np_fn, w, rtol=1e-9, grad_rtol=1e-6):
    """Value against the brute force, gradient against its central differences."""
    v, g = value_and_grad(fn, w)
    np.testing.assert_allclose(float(v), np_fn(w), rtol=rtol)
    dirs = ref.directions(w.shape, seed=3)
    want = ref.fd_directional(np_fn, w, dirs)
    got = np.array([float(jnp.sum(g * d)) for d in dirs])
    np.testing.assert_allclose(got, want, rtol=grad_rtol, atol=grad_rtol * np.abs(want).max())
    return float(v)


# ------------------------------------------------------------------ Riesz s = 2 as a user f


@pytest.mark.parametrize("distance", ["euclidean", "angular"])
def test_riesz2_potential_matches_builtin_dense_tiled_sampled(distance):
    w = rand((5, 11), 1)
    key = jax.random.key(4)
    # dense, full and half space; tiled (11 neurons in blocks of 3: padding, odd and even
    # windows) and sampled, half-space for euclidean
    half = distance == "euclidean"
    cases = [dict(half_space=False), dict(half_space=True), dict(half_space=half, block_size=3),
             dict(half_space=half, sample_size=6, key=key)]

    @jax.jit
    def run(w):
        return [[jax.value_and_grad(lambda w: mhe_jax.hyperspherical_energy(
            w, distance=distance, **kernel, **kw))(w)
            for kernel in (dict(s=2.0), dict(potential=riesz2))] for kw in cases]

    results = run(jnp.asarray(w))
    for builtin, user in results:
        assert_same(user, builtin)
    for half_space, (builtin, _) in zip((False, True), results, strict=False):
        np.testing.assert_allclose(float(builtin[0]), ref.np_mean_potential(
            w, lambda r: r ** -2, distance=distance, half_space=half_space), rtol=1e-9)


def test_value_and_grad_stay_two_gram_sized_products():
    d, n = 16, 40
    w = jnp.zeros((d, n))
    for kw in (dict(), dict(half_space=True, min_distance=0.3)):
        jaxpr = jax.make_jaxpr(jax.value_and_grad(
            lambda w: mhe_jax.hyperspherical_energy(w, potential=gaussian, **kw)))(w)
        # the Gram product, the force product and the tangent projection's (1, N) column sums
        # (as the built-in kernel: test_perf_paths.test_reverse_mode_is_two_matmuls)
        want = [(n, n), (d, n), (1, n)]
        assert sorted(helpers.jaxpr_shapes(jaxpr.jaxpr, "dot_general")) == sorted(want)
    jaxpr = jax.make_jaxpr(jax.value_and_grad(
        lambda w: mhe_jax.hyperspherical_energy(w, potential=gaussian, block_size=8)))(w)
    shapes = helpers.jaxpr_shapes(jaxpr.jaxpr, "dot_general")
    assert len(shapes) == 3 and all(n not in s for s in shapes), shapes


# ------------------------------------------------------------------ other potentials


def test_gaussian_potential_against_brute_force_and_gaussian_energy():
    w = rand((4, 8), 2)
    for distance, half in (("euclidean", False), ("angular", True)):
        kw = dict(distance=distance, half_space=half)
        v = check_against_reference(
            lambda w: mhe_jax.hyperspherical_energy(w, potential=gaussian, **kw),
            lambda w: ref.np_mean_potential(w, lambda r: math.exp(-1.5 * r * r), **kw), w)
        np.testing.assert_allclose(
            v, math.exp(float(mhe_jax.gaussian_energy(w, t=1.5, **kw))), rtol=1e-11)


def test_log_barrier_potential_against_brute_force_and_log_energy():
    w = rand((3, 7), 5)

    def fn(w):
        return mhe_jax.hyperspherical_energy(w, potential=log_barrier, half_space=True)

    check_against_reference(
        fn, lambda w: ref.np_mean_potential(w, lambda r: -math.log(r), half_space=True), w)
    assert_same(value_and_grad(fn, w), value_and_grad(
        lambda w: mhe_jax.hyperspherical_energy(w, s=0.0, half_space=True), w), rtol=1e-11)


def test_potential_only_defined_with_min_distance():
    with pytest.raises(ValueError, match=r"^potential must be finite.*min_distance="):
        EnergySpec(potential=root_barrier)
    # two neurons 0.2 apart in chord (below the bound 0.4 and the pole 0.25): continued linearly
    rng = np.random.default_rng(7)
    w = rng.standard_normal((4, 6))
    w[:, 1] = w[:, 0] / np.linalg.norm(w[:, 0]) + 0.1 * rng.standard_normal(4) / 2
    md = 0.4
    f = lambda r: (r - 0.25) ** -0.5  # noqa: E731
    df = lambda r: -0.5 * (r - 0.25) ** -1.5  # noqa: E731
    for distance in ("euclidean", "angular"):
        kw = dict(distance=distance, min_distance=md)
        check_against_reference(
            lambda w: mhe_jax.hyperspherical_energy(w, potential=root_barrier, **kw),
            lambda w: ref.np_mean_potential(w, f, df=df, **kw), w)
    u = ref.unit(w)
    assert np.linalg.norm(u[:, 0] - u[:, 1]) < md  # the continuation is exercised


def test_potential_in_regularizer_penalty_and_layer_energies():
    params = {"a": {"kernel": jnp.asarray(rand((6, 5), 8))},
              "head": {"kernel": jnp.asarray(rand((5, 4), 9))}}
    labels = jnp.array([0, 3, 3])
    common = dict(output="head", half_space=True)
    tx = mhe_jax.mhe_regularizer(0.7, 0.2, potential=gaussian, **common)
    # inject_hyperparams takes a callable for a schedule: the potential goes in static_args
    injected = optax.inject_hyperparams(mhe_jax.mhe_regularizer, static_args=("potential",))(
        0.7, 0.2, potential=gaussian, **common)

    @jax.jit
    def run(params):
        penalty = mhe_jax.mhe_penalty
        pair = [penalty(params, 0.7, 0.2, labels=labels, **common, **kernel)
                for kernel in (dict(s=2.0), dict(potential=riesz2))]
        grads = jax.grad(lambda p: penalty(p, 0.7, 0.2, potential=gaussian, **common))(params)
        zeros = jax.tree.map(jnp.zeros_like, params)
        updates = [t.update(zeros, t.init(params), params)[0] for t in (tx, injected)]
        stats = [mhe_jax.layer_energies(params, **common, **kernel)
                 for kernel in (dict(s=2.0), dict(potential=riesz2))]
        return pair, grads, updates, stats

    (want, got), grads, updates, (plain, stats) = run(params)
    np.testing.assert_allclose(float(got), float(want), rtol=1e-12)
    for update in updates:
        for path in ("a", "head"):
            np.testing.assert_allclose(update[path]["kernel"], grads[path]["kernel"], rtol=1e-12)
    for path, st in stats.items():
        np.testing.assert_allclose(float(st.energy), float(plain[path].energy), rtol=1e-12)
        np.testing.assert_allclose(float(st.pair_variance), float(plain[path].pair_variance),
                                   rtol=1e-10)


# ------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(potential=3.0), TypeError, "^potential must be a callable"),
        (dict(potential=lambda r: jnp.stack([r, r])), TypeError, "^potential must return a float"),
        (dict(potential=lambda r: 1), TypeError, "^potential must return a float"),
        (dict(potential=lambda r: jnp.asarray(r, int)), TypeError, "^potential must"),
        (dict(potential=lambda r, k: r), TypeError, "^potential must be a JAX-traceable"),
        (dict(potential=lambda r: float(r) ** -2 if r > 0.5 else 0.0), TypeError,
         "^potential must be"),
        (dict(potential=lambda r: 1 / (r - 1)), ValueError, r"^potential must be finite.*\(0, 2\]"),
        (dict(potential=lambda r: jnp.sqrt(3.0 - r), distance="angular"), ValueError,
         r"^potential must be finite.*\(0, 3.142\]"),
        (dict(potential=riesz2, s=1.0), ValueError, "^potential and s"),
        (dict(potential=riesz2, kernel="gaussian"), ValueError, "^potential replaces"),
        (dict(potential=riesz2, calibrate=True), ValueError, "^calibrate"),
    ],
)
def test_spec_validates_the_potential(kwargs, error, match):
    with pytest.raises(error, match=match):
        EnergySpec(**kwargs)


def test_potential_is_a_static_hashable_option():
    spec = EnergySpec(potential=gaussian, min_distance=0.1)
    assert spec == EnergySpec(potential=gaussian, min_distance=0.1)
    assert hash(spec) == hash(EnergySpec(potential=gaussian, min_distance=0.1))
    assert spec != EnergySpec(potential=riesz2, min_distance=0.1)
    w = jnp.asarray(rand((4, 5), 3))
    with pytest.raises(ValueError, match="potential and s"):
        mhe_jax.hyperspherical_energy(w, s=3.0, potential=gaussian)
    # a spec built under a trace validates eagerly; a traced s (inject_hyperparams) is ignored
    @jax.jit
    def f(w, s, md):
        return mhe_jax.hyperspherical_energy(
            w, spec=EnergySpec(s=s, potential=root_barrier, min_distance=md))

    np.testing.assert_allclose(
        float(f(w, 2.0, 0.4)),
        float(mhe_jax.hyperspherical_energy(w, potential=root_barrier, min_distance=0.4)),
        rtol=1e-12)


# ------------------------------------------------------------------ sharded ring (8 devices)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    return helpers.once_per_session(tmp_path_factory, "pairs_sharding", _run_sharded_child)


def _run_sharded_child() -> dict:
    env = helpers.eight_cpu_devices_env()
    proc = subprocess.run([sys.executable, str(CHILD)], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_sharded_ring_potential(sharded):
    """A user Riesz s = 2 on the ring equals the built-in on the ring and on one device (value
    and gradient, rounding); a Gaussian potential on the ring equals one device."""
    assert sharded["riesz2_vs_builtin"] < 1e-13, sharded
    assert sharded["riesz2_vs_single"] < 1e-12, sharded
    assert sharded["gaussian_vs_single"] < 1e-12, sharded
    assert sharded["riesz2_ref"] < 1e-9, sharded


def test_sharded_ring_groups(sharded):
    """Grouped pairs on the ring (ids sharded with the neurons, odd ring with padding, half-space,
    sampling with and without padding, row blocks) equal one device, and the brute force; the
    regularizer's ``groups="heads"`` with ``mesh_axis=`` (an attention kernel sharded along its
    heads) equals one device and keeps the kernel's sharding."""
    assert sharded["groups_vs_single"] < 1e-12, sharded
    assert sharded["heads_regularizer_vs_single"] < 1e-12, sharded
    assert sharded["heads_regularizer_moved"] > 0, sharded
    assert sharded["heads_regularizer_sharding"] == "P(None, 'x', None)", sharded
    assert sharded["groups_ref"] < 1e-9, sharded
    assert sharded["groups_empty"] == [0.0, 0.0], sharded
