"""EnergySpec: validated once, frozen, and the same energies through keywords or spec=."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mhe_jax
from mhe_jax import EnergySpec
from mhe_jax._energy import energy_from_spec
from mhe_jax._spec import ProjectionSpec


def rand(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


@pytest.mark.parametrize(
    "kwargs,error,name",
    [
        ({"s": -1.0}, ValueError, "s"),
        ({"s": "2"}, TypeError, "s"),
        ({"s": True}, TypeError, "s"),
        ({"distance": "cosine"}, ValueError, "distance"),
        ({"distance": 0}, TypeError, "distance"),
        ({"half_space": 1}, TypeError, "half_space"),
        ({"half_space": "hidden"}, TypeError, "half_space"),
        ({"eps": -1e-3}, ValueError, "eps"),
        ({"eps": float("nan")}, ValueError, "eps"),
        ({"min_distance": -0.1}, ValueError, "min_distance"),
        ({"sample_size": 1}, ValueError, "sample_size"),
        ({"sample_size": 2.5}, TypeError, "sample_size"),
        ({"block_size": 0}, ValueError, "block_size"),
        ({"block_size": True}, TypeError, "block_size"),
        ({"calibrate": 1}, TypeError, "calibrate"),
        ({"precision": "fast"}, ValueError, "precision"),
        ({"kernel": "laplace"}, ValueError, "kernel"),
        ({"t": -2.0}, ValueError, "t"),
        ({"projection": {"dim": 0}}, ValueError, "projection dim"),
        ({"projection": {"dims": 4}}, ValueError, "projection"),
        ({"projection": {"kind": "sparse"}}, ValueError, "projection kind"),
        ({"projection": 3}, TypeError, "projection"),
        ({"kernel": "gaussian", "min_distance": 0.1}, ValueError, "min_distance"),
    ],
)
def test_validation_names_the_argument(kwargs, error, name):
    with pytest.raises(error, match=f"^{name}"):
        EnergySpec(**kwargs)


def test_frozen_hashable_and_replace_validates():
    spec = EnergySpec(s=1, projection={"dim": 8})
    assert spec.s == 1.0 and isinstance(spec.s, float)
    assert spec.projection == ProjectionSpec(20, 8, "gaussian")
    assert hash(spec) == hash(EnergySpec(s=1.0, projection=ProjectionSpec(dim=8)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.s = 2.0
    assert spec.replace(s=0.0).s == 0.0
    with pytest.raises(ValueError, match="^distance"):
        spec.replace(distance="l1")
    assert spec.lax_precision == jax.lax.Precision.HIGHEST


def test_structural_fields_are_never_traceable_numbers():
    spec = EnergySpec()
    for name in ("distance", "precision", "kernel"):
        assert isinstance(getattr(spec, name), str)
    for name in ("half_space", "calibrate"):
        assert isinstance(getattr(spec, name), bool)


def test_traced_numbers_are_kept():
    w = jnp.asarray(rand((4, 5), 1))

    @jax.jit
    def f(w, s):
        return mhe_jax.hyperspherical_energy(w, spec=EnergySpec(s=s, distance="angular"))

    np.testing.assert_allclose(float(f(w, 1.5)),
                               float(mhe_jax.hyperspherical_energy(w, s=1.5, distance="angular")),
                               rtol=1e-12)


def test_keywords_and_spec_give_the_same_energies():
    w = jnp.asarray(rand((5, 7), 2))
    key = jax.random.key(0)
    pairs = [
        (mhe_jax.hyperspherical_energy(w, s=1.0, distance="angular", half_space=True, eps=1e-9,
                                       min_distance=0.2, block_size=3),
         mhe_jax.hyperspherical_energy(w, spec=EnergySpec(
             s=1.0, distance="angular", half_space=True, eps=1e-9, min_distance=0.2,
             block_size=3))),
        (mhe_jax.hyperspherical_energy(w, sample_size=4, key=key),
         energy_from_spec(w, EnergySpec(sample_size=4), key=key)),
        (mhe_jax.gaussian_energy(w, t=0.5, half_space=True),
         mhe_jax.gaussian_energy(w, spec=EnergySpec(kernel="gaussian", t=0.5, half_space=True))),
        (mhe_jax.gaussian_energy(w, t=0.5),
         energy_from_spec(w, EnergySpec(kernel="gaussian", t=0.5))),
        (mhe_jax.output_energy(w, jnp.array([1, 2]), s=0.0),
         mhe_jax.output_energy(w, jnp.array([1, 2]), spec=EnergySpec(s=0.0))),
        (mhe_jax.energy_stats(w, s=3.0).energy,
         mhe_jax.energy_stats(w, spec=EnergySpec(s=3.0)).energy),
        (mhe_jax.compressive_energy(w, key, projections=3, dim=2),
         energy_from_spec(w, EnergySpec(projection={"projections": 3, "dim": 2}), key=key)),
        (mhe_jax.hyperspherical_energy(w, s=1.0) / mhe_jax.uniform_reference_energy(7, 5, s=1.0),
         energy_from_spec(w, EnergySpec(s=1.0, calibrate=True))),
    ]
    for a, b in pairs:
        np.testing.assert_allclose(float(a), float(b), rtol=1e-12)


def test_spec_and_keywords_together_raise():
    w = jnp.ones((3, 4))
    with pytest.raises(TypeError, match="not both"):
        mhe_jax.hyperspherical_energy(w, s=1.0, spec=EnergySpec())
    with pytest.raises(TypeError, match="not both"):  # was silently ignored by energy_stats
        mhe_jax.energy_stats(w, distance="angular", spec=EnergySpec())
    with pytest.raises(TypeError, match="spec must be an EnergySpec"):
        mhe_jax.hyperspherical_energy(w, spec={"s": 1.0})
    with pytest.raises(ValueError, match="kernel"):
        mhe_jax.hyperspherical_energy(w, spec=EnergySpec(kernel="gaussian"))
    with pytest.raises(ValueError, match="half_space"):
        mhe_jax.output_energy(w, jnp.array([0]), spec=EnergySpec(half_space=True))
    with pytest.raises(ValueError, match="key"):
        energy_from_spec(w, EnergySpec(projection={"dim": 2}))
    with pytest.raises(ValueError, match="concrete s"):
        jax.jit(lambda s: energy_from_spec(w, EnergySpec(s=s, calibrate=True)))(1.0)
