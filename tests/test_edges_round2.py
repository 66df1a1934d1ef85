"""Trustworthy at the edges, round 2 (issues 29 and 26): the energy core.

Calibration sign for the log energy, non-finite weights never hidden, forward mode on bf16/f16,
NumPy-integer neuron axes, non-float leaves named, ``tree_get`` under ``inject_hyperparams``,
the unit of ``energies_as_floats`` and the all-ones gradient.
"""

import itertools
import math
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mhe_jax
from mhe_jax import EnergySpec
from mhe_jax._atan import atan2_builtin, atan2_nonneg
from tests import helpers

ROOT = Path(__file__).resolve().parents[1]
KEY = jax.random.key(0)
MESH1 = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("x",))


def rand(shape, seed=0, dtype=np.float32):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


# ------------------------------------------------------------------ 1. calibration sign


def _cosine(a, b):
    a, b = np.ravel(np.asarray(a, np.float64)), np.ravel(np.asarray(b, np.float64))
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize("d", [2, 3, 27, 512])
@pytest.mark.parametrize("s", [0.0, 1.0, 2.0])
def test_calibrated_gradient_points_along_the_energy_gradient(s, d):
    """Was: s = 0, d ≥ 3 gave cosine −1 (negative reference); d = 2 gave values ~1e10."""
    w = rand((d, 12), seed=d)
    params = {"a": {"kernel": w}}
    if s >= d - 1:  # the uniform reference diverges: rejected, naming s
        for call in (lambda: mhe_jax.hyperspherical_energy(w, spec=EnergySpec(s=s, calibrate=True)),
                     lambda: mhe_jax.layer_energies(params, s=s, calibrate=True),
                     lambda: mhe_jax.mhe_penalty(params, 1.0, s=s, calibrate=True)):
            with pytest.raises(ValueError, match=r"s >= d - 1 \(s="):
                call()
        return
    for half in (False, True):
        raw = lambda w, h=half: mhe_jax.hyperspherical_energy(w, s=s, half_space=h)  # noqa: E731
        cal = lambda w, h=half: mhe_jax.hyperspherical_energy(  # noqa: E731
            w, spec=EnergySpec(s=s, half_space=h, calibrate=True))
        value = float(cal(w))
        assert 0.0 < value < 10.0, (half, value)  # ≈ 1 for random neurons, never ~1e10
        assert _cosine(jax.grad(cal)(w), jax.grad(raw)(w)) > 0.999, half
    labels = jnp.array([0, 1, 1, 5])
    out_raw = lambda w: mhe_jax.output_energy(w, labels, s=s)  # noqa: E731
    out_cal = lambda w: mhe_jax.output_energy(w, labels, spec=EnergySpec(s=s, calibrate=True))  # noqa: E731
    assert float(out_cal(w)) > 0
    assert _cosine(jax.grad(out_cal)(w), jax.grad(out_raw)(w)) > 0.999
    pen_raw = jax.grad(lambda p: mhe_jax.mhe_penalty(p, 1.0, s=s))(params)
    pen_cal = jax.grad(lambda p: mhe_jax.mhe_penalty(p, 1.0, s=s, calibrate=True))(params)
    assert _cosine(pen_cal["a"]["kernel"], pen_raw["a"]["kernel"]) > 0.999
    st = mhe_jax.layer_energies(params, s=s, calibrate=True)["a/kernel"]
    full = mhe_jax.hyperspherical_energy(w, spec=EnergySpec(s=s, calibrate=True))
    assert float(st.energy) == pytest.approx(float(full), rel=1e-6)


def test_calibrated_log_energy_is_exp_of_the_difference_float64():
    """``exp(E − E_ref)`` against the float64 brute force, and positive/increasing in E."""
    for d, half, distance in itertools.product((2, 3, 10), (False, True),
                                               ("euclidean", "angular")):
        w = np.random.default_rng(d).standard_normal((d, 7))
        ref = mhe_jax.uniform_reference_energy(7, d, s=0.0, distance=distance, half_space=half)
        expected = math.exp(helpers.np_energy(w, 0.0, distance, half) - ref)
        got = mhe_jax.hyperspherical_energy(
            jnp.asarray(w), spec=EnergySpec(s=0.0, distance=distance, half_space=half,
                                            calibrate=True))
        assert float(got) == pytest.approx(expected, rel=1e-8)  # eps = 1e-12 in the energy


def test_log_reference_is_not_positive():
    """README: the log energy's reference is ≤ 0 for every d ≥ 2 (0 at d = 2, euclidean) —
    why a ratio cannot calibrate it."""
    for d in list(range(2, 40)) + [64, 512, 4096]:
        for distance in ("euclidean", "angular"):
            assert mhe_jax.uniform_reference_energy(5, d, s=0.0, distance=distance) <= 1e-9


# ------------------------------------------------------------------ 2. non-finite weights


def _energies():
    """Every energy path, as ``name -> w -> pytree of arrays``."""
    out = {}
    for s, distance, half in itertools.product((0.0, 1.0, 2.0), ("euclidean", "angular"),
                                               (False, True)):
        tag = f"s={s},{distance},half={half}"
        for block in (None, 3):
            out[f"energy {tag} block={block}"] = (
                lambda w, s=s, d=distance, h=half, b=block: mhe_jax.hyperspherical_energy(
                    w, s=s, distance=d, half_space=h, block_size=b))
        out[f"sharded {tag}"] = lambda w, s=s, d=distance, h=half: (
            mhe_jax.sharded_hyperspherical_energy(w, MESH1, "x", s=s, distance=d, half_space=h))
        out[f"min_distance {tag}"] = lambda w, s=s, d=distance, h=half: (
            mhe_jax.hyperspherical_energy(w, s=s, distance=d, half_space=h, min_distance=0.3))
        out[f"stats {tag}"] = lambda w, s=s, d=distance, h=half: mhe_jax.energy_stats(
            w, s=s, distance=d, half_space=h)
        out[f"compressive {tag}"] = lambda w, s=s, d=distance, h=half: (
            mhe_jax.compressive_energy(w, KEY, projections=2, dim=3, s=s, distance=d,
                                       half_space=h))
        out[f"gaussian {tag}"] = lambda w, d=distance, h=half: mhe_jax.gaussian_energy(
            w, distance=d, half_space=h)
        out[f"layer_energies {tag}"] = lambda w, s=s, d=distance, h=half: (
            mhe_jax.layer_energies({"a": {"kernel": w}, "head": {"kernel": w}}, s=s, distance=d,
                                   half_space=h, output="head"))
        out[f"penalty {tag}"] = lambda w, s=s, d=distance, h=half: mhe_jax.mhe_penalty(
            {"a": {"kernel": w}, "head": {"kernel": w}}, 1.0, 1.0, s=s, distance=d,
            half_space=h, output="head", labels=jnp.array([0, 2]))
        if not half:
            out[f"output {tag}"] = lambda w, s=s, d=distance: mhe_jax.output_energy(
                w, jnp.array([0, 2]), s=s, distance=d)
    for power, half in itertools.product(("0", "1", "2", "a0", "a1", "a2"), (False, True)):
        out[f"official {power} half={half}"] = lambda w, p=power, h=half: (
            mhe_jax.official_energy(w, p, half_space=h))
    out["min_angle"] = mhe_jax.min_angle
    out["mean_abs_cosine"] = mhe_jax.mean_abs_cosine
    out["uniformity"] = lambda w: mhe_jax.uniformity_loss(w.T)
    out["uniformity raw"] = lambda w: mhe_jax.uniformity_loss(w.T, normalize=False)
    out["orthogonality"] = mhe_jax.orthogonality_penalty
    out["orthonormal"] = mhe_jax.orthonormal_penalty
    return out


ENERGIES = _energies()


# The paths that hid a NaN (angular distances, the official a* presets, the angle statistics).
HID_NAN = [n for n in ENERGIES if "angular" in n or "official a" in n or n == "min_angle"]


@pytest.mark.parametrize("bad,paths", [  # suite time (issue 26): the fast set checks NaN on the
    (np.nan, "hid"),                    # paths that hid it; every path and the infinities: slow
    pytest.param(np.nan, "all", marks=pytest.mark.slow),
    pytest.param(np.inf, "all", marks=pytest.mark.slow),
    pytest.param(-np.inf, "all", marks=pytest.mark.slow)])
def test_non_finite_weight_gives_non_finite_energy_on_every_path(bad, paths):
    """Was: the angular energies (and Eq. 8, the official a* presets, layer_energies) hid a NaN
    or Inf weight behind a finite value such as 4e5."""
    w = np.array(rand((6, 9), seed=3))
    w[2, 4] = bad
    w = jnp.asarray(w)
    hidden = []
    for name, fn in ENERGIES.items():
        if paths == "hid" and name not in HID_NAN:
            continue
        leaves = [np.asarray(x, np.float64) for x in jax.tree.leaves(fn(w))]
        if any(np.all(np.isfinite(x)) for x in leaves):  # every reported number is non-finite
            hidden.append(name)
    assert not hidden, hidden


@pytest.mark.parametrize("name", HID_NAN[:: 5])
def test_non_finite_weight_gives_non_finite_gradient(name):
    w = np.array(rand((6, 9), seed=4))
    w[1, 1] = np.nan
    g = jax.grad(lambda w: sum(jnp.sum(x) for x in jax.tree.leaves(ENERGIES[name](w))))(
        jnp.asarray(w))
    assert not np.all(np.isfinite(np.asarray(g))), name


def test_atan2_propagates_nan_on_every_backend_form():
    nan = jnp.float32(jnp.nan)
    for fn in (atan2_nonneg, atan2_builtin):
        for y, x in ((nan, 0.5), (0.5, nan), (nan, nan)):
            value, tangent = jax.jvp(fn, (jnp.float32(y), jnp.float32(x)),
                                     (jnp.float32(1.0), jnp.float32(1.0)))
            assert np.isnan(float(value)) and np.isnan(float(tangent)), (fn, y, x)
    # ordinary values are unchanged, zero included
    assert float(atan2_nonneg(jnp.float32(0.0), jnp.float32(0.0))) == 0.0
    assert float(atan2_nonneg(jnp.float32(0.0), jnp.float32(-1.0))) == pytest.approx(math.pi)


# ------------------------------------------------------------------ 3. forward mode, bf16/f16


# float16 in the slow set (suite time, issue 26): both take the same promotion path as bfloat16
@pytest.mark.parametrize("dtype", [jnp.bfloat16, pytest.param(jnp.float16, marks=pytest.mark.slow)])
def test_jvp_and_hessian_on_low_precision(dtype):
    """Was: "can't apply forward-mode autodiff to a custom_vjp function" (bf16/f16 only)."""
    w32 = rand((5, 4), seed=5)
    w = w32.astype(dtype)
    for distance in ("euclidean", "angular"):
        f = lambda w, d=distance: mhe_jax.hyperspherical_energy(w, s=2.0, distance=d)  # noqa: E731
        value, tangent = jax.jvp(f, (w,), (jnp.ones_like(w),))
        g = jax.grad(f)(w)
        assert g.dtype == dtype
        assert float(tangent) == pytest.approx(float(jnp.sum(g.astype(jnp.float32))), rel=2e-2)
        hess = jax.hessian(f)(w)
        hess32 = jax.hessian(f)(w.astype(jnp.float32))  # the same (rounded) neurons in float32
        assert hess.dtype == dtype and hess.shape == (5, 4, 5, 4)
        np.testing.assert_allclose(np.asarray(hess, np.float32), hess32, rtol=3e-2,
                                   atol=3e-2 * float(jnp.max(jnp.abs(hess32))))
        np.testing.assert_array_equal(jax.jit(jax.hessian(f))(w), hess)
        batched = jax.vmap(jax.grad(f))(jnp.stack([w, w]))
        np.testing.assert_array_equal(batched[1], g)


def test_float16_gradient_still_saturates():
    """The float32 repulsion of a close pair exceeds float16's range: the gradient saturates at
    ±65504, where a plain cast gives inf."""
    w = jnp.asarray([[1.0, 1.0, 0.0], [0.0, 1e-3, 1.0], [0.3, 0.3, 0.0]], jnp.float16)
    f = lambda w: 1e3 * mhe_jax.hyperspherical_energy(w, s=4.0)  # noqa: E731
    g = jax.grad(f)(w)
    assert np.all(np.isfinite(np.asarray(g, np.float32)))
    assert float(jnp.max(jnp.abs(g))) == float(jnp.finfo(jnp.float16).max)
    plain = jax.grad(lambda w: f(w.astype(jnp.float32)))(w)
    assert not np.all(np.isfinite(np.asarray(plain, np.float32)))


# ------------------------------------------------------------------ 4. NumPy integer axes


def _params():
    return {"a": {"kernel": rand((4, 3), seed=6)}, "b": {"kernel": rand((5, 4), seed=7)}}


@pytest.mark.parametrize("axis", [np.int64(-1), np.int32(1), (np.int64(1),), [np.int32(1)],
                                  np.array(1), np.array(-1, np.int64)])
def test_numpy_integer_neuron_axes_are_accepted(axis):
    params = _params()
    expected = mhe_jax.layer_energies(params, neuron_axis=-1)
    got = mhe_jax.layer_energies(params, neuron_axis=axis)
    for path in expected:
        assert float(got[path].energy) == float(expected[path].energy)
    assert float(mhe_jax.mhe_penalty(params, 1.0, neuron_axis=axis)) == float(
        mhe_jax.mhe_penalty(params, 1.0, neuron_axis=-1))
    tx = mhe_jax.mhe_regularizer(1.0, neuron_axis=axis)
    updates, _ = tx.update(params, tx.init(params), params)
    assert set(mhe_jax.selected_layers(params, neuron_axis=axis)) == {"a/kernel", "b/kernel"}
    assert float(mhe_jax.hyperspherical_energy(params["a"]["kernel"], neuron_axis=axis if
                                               np.ndim(axis) == 0 else axis[0])) == float(
        expected["a/kernel"].energy)


@pytest.mark.parametrize("axis", [True, np.bool_(True), 1.0, np.float32(1.0), (1.0,), (True,),
                                  (0, 1.5)])
def test_bool_and_float_neuron_axes_are_refused_by_name(axis):
    params = _params()
    with pytest.raises(TypeError, match="neuron_axis for 'a/kernel' must be an int"):
        mhe_jax.layer_energies(params, neuron_axis=axis)
    with pytest.raises(TypeError, match="neuron_axis"):
        mhe_jax.mhe_regularizer(1.0, neuron_axis=axis).init(params)


# ------------------------------------------------------------------ 5. non-float leaves


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.complex64, jnp.bool_, np.uint8])
def test_non_float_layer_leaf_is_named(dtype):
    """Was: JAX's generic grad error, or "w must have a floating dtype" without the path."""
    params = {"a": {"kernel": jnp.ones((4, 3), dtype)}, "b": {"kernel": rand((5, 4))}}
    match = r"leaf 'a/kernel' \(shape \(4, 3\), dtype .*\) was selected as a layer"
    calls = [lambda: mhe_jax.layer_energies(params),
             lambda: mhe_jax.mhe_penalty(params, 1.0),
             lambda: mhe_jax.selected_layers(params),
             lambda: mhe_jax.mhe_regularizer(1.0).init(params),  # at init, not at the update
             lambda: mhe_jax.orthogonality_regularizer(1.0).init(params)]
    for call in calls:
        with pytest.raises(TypeError, match=match):
            call()
    mask = {"a": {"kernel": False}, "b": {"kernel": True}}  # masked out: fine
    assert set(mhe_jax.layer_energies(params, mask=mask)) == {"b/kernel"}


# ------------------------------------------------------------------ 6. tree_get


def test_readme_tree_get_under_inject_hyperparams():
    """README: ``optax.tree_utils.tree_get(opt_state, "hidden_strength")`` under
    ``inject_hyperparams`` (was: KeyError, the key was in the state twice)."""
    readme = (ROOT / "README.md").read_text()
    assert ('`optax.inject_hyperparams(mhe_jax.mhe_regularizer)(1.0, 10.0, output="Dense_1")`'
            in readme.replace("\n", " "))
    assert '`optax.tree_utils.tree_get(opt_state, "hidden_strength")`' in readme
    assert '`tree_get(opt_state, "last_hidden_strength")`' in readme
    params = {"Dense_0": {"kernel": rand((4, 5))}, "Dense_1": {"kernel": rand((5, 3), 1)}}
    tx = optax.chain(optax.inject_hyperparams(mhe_jax.mhe_regularizer)(1.0, 10.0,
                                                                      output="Dense_1"),
                     optax.sgd(0.1))
    opt_state = tx.init(params)
    assert float(optax.tree_utils.tree_get(opt_state, "hidden_strength")) == 1.0
    _, opt_state = tx.update(params, opt_state, params)
    assert float(optax.tree_utils.tree_get(opt_state, "hidden_strength")) == 1.0
    assert float(optax.tree_utils.tree_get(opt_state, "output_strength")) == 10.0
    assert float(optax.tree_utils.tree_get(opt_state, "last_hidden_strength")) == 1.0
    opt_state = optax.tree_utils.tree_set(opt_state, hidden_strength=0.5)
    _, opt_state = tx.update(params, opt_state, params)
    assert float(optax.tree_utils.tree_get(opt_state, "last_hidden_strength")) == 0.5
    assert float(opt_state[0].inner_state.hidden_strength) == 0.5  # attribute access kept
    base = optax.inject_hyperparams(mhe_jax.orthogonality_regularizer)(0.3)
    assert float(optax.tree_utils.tree_get(base.init(params), "strength")) == pytest.approx(0.3)


# ------------------------------------------------------------------ 7. energies_as_floats


def test_energies_as_floats_never_converts_degrees_twice():
    """Was: a jitted ``layer_energies(degrees=True)`` through ``energies_as_floats`` gave
    ``min_angle_deg: 3769.06`` (converted again)."""
    params = {"Dense_0": {"kernel": jnp.eye(3)}}
    for fn in (lambda p: mhe_jax.layer_energies(p, degrees=True),
               jax.jit(lambda p: mhe_jax.layer_energies(p, degrees=True))):
        stats = fn(params)
        st = stats["Dense_0/kernel"]
        assert isinstance(st, mhe_jax.EnergyStatsDegrees)
        assert float(st.min_angle_deg) == pytest.approx(90.0)
        assert mhe_jax.energies_as_floats(stats)["Dense_0/kernel"]["min_angle_deg"] == (
            pytest.approx(90.0))
        radians = mhe_jax.energies_as_floats(stats, degrees=False)["Dense_0/kernel"]
        assert radians["min_angle"] == pytest.approx(math.pi / 2)
    rad = jax.jit(mhe_jax.layer_energies)(params)
    assert mhe_jax.energies_as_floats(rad)["Dense_0/kernel"]["min_angle_deg"] == (
        pytest.approx(90.0))
    with pytest.raises(TypeError, match="EnergyStats"):
        mhe_jax.energies_as_floats({"x": (1.0, 2.0, 3.0)})


# ------------------------------------------------------------------ 8. all-ones gradient


ONES_SHAPES = list(itertools.product((2, 3, 5, 16, 33, 100, 512),
                                     (2, 3, 4, 5, 16, 31, 64, 257, 1025, 1100)))
ONES_VARIANTS = list(itertools.product((0.0, 1.0, 2.0), ("euclidean", "angular"), (False, True)))
ONES_DTYPES = (jnp.float32, jnp.float64, jnp.bfloat16, jnp.float16)


@pytest.mark.slow  # ~2 min; fast twin: test_all_ones_gradient_every_variant_at_small_shapes
def test_all_ones_gradient_is_exactly_zero_for_every_shape():
    """README (Reliability): an all-ones kernel (or ``2^k·ones``) gets an exactly zero
    gradient for every shape: 70 shapes, dense and tiled (N > 1024), each with one of the 12
    (s, distance, half-space) variants and one dtype in turn. Was 0.00195 at (3, 4)."""
    assert len(ONES_SHAPES) == 70
    nonzero = []
    for i, (d, n) in enumerate(ONES_SHAPES):
        s, distance, half = ONES_VARIANTS[i % len(ONES_VARIANTS)]
        dtype = ONES_DTYPES[i % len(ONES_DTYPES)]
        w = jnp.full((d, n), 2.0 ** (i % 5 - 2), dtype)
        g = jax.grad(lambda w: mhe_jax.hyperspherical_energy(w, s=s, distance=distance,
                                                             half_space=half))(w)
        if float(jnp.max(jnp.abs(g.astype(jnp.float32)))) != 0.0:
            nonzero.append((d, n, s, distance, half, dtype.__name__))
    assert not nonzero, nonzero


def test_all_ones_gradient_every_variant_at_small_shapes():
    for (d, n), (s, distance, half) in itertools.product([(3, 4), (16, 16), (7, 5)],
                                                         ONES_VARIANTS):
        w = jnp.ones((d, n), jnp.float32)
        g = jax.grad(lambda w: mhe_jax.hyperspherical_energy(w, s=s, distance=distance,
                                                             half_space=half))(w)
        assert float(jnp.max(jnp.abs(g))) == 0.0, (d, n, s, distance, half)


def test_readme_states_the_all_ones_claim_as_tested():
    text = re.sub(r"\s+", " ", (ROOT / "README.md").read_text())
    assert "(an all-ones kernel, `2^k·ones`) and d = 1 get an exactly zero gradient" in text
    assert "tested over 70 shapes" in text


def test_impossible_calibration_raises_at_init_naming_the_layer():
    """calibrate=True with s ≥ d − 1 has no uniform reference: init names the layer (it used to
    raise only inside the first jitted update)."""
    params = {"conv": {"kernel": jnp.ones((3, 3, 1, 4))},  # d = 9: s = 8 diverges
              "head": {"kernel": jnp.ones((9, 10))}}
    tx = mhe_jax.mhe_regularizer(1.0, s=8.0, calibrate=True)
    with pytest.raises(ValueError, match=r"cannot calibrate layer 'conv/kernel'.*d=9"):
        tx.init(params)
    with pytest.raises(ValueError, match="calibrate=True cannot calibrate layer"):
        tx.init(jax.eval_shape(lambda: params))  # abstract shapes too
    # s = 2 with d = 3 (s ≥ d − 1) on the output layer only: named when the output is regularized
    small = {"body": {"kernel": jnp.ones((9, 4))}, "head": {"kernel": jnp.ones((3, 10))}}
    tx = mhe_jax.mhe_regularizer(1.0, 1.0, output="head", s=2.0, calibrate=True)
    with pytest.raises(ValueError, match=r"layer 'head/kernel' \(d=3"):
        tx.init(small)
    mhe_jax.mhe_regularizer(1.0, None, output="head", s=2.0, calibrate=True).init(small)
    mhe_jax.mhe_regularizer(0.0, 1.0, output="head", s=0.0, calibrate=True).init(small)
