"""Precision policy of the Gram products (issue 16 §1): HIGHEST by default, named modes in the
program, the same values on CPU (which computes float32 products in full either way)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mhe_jax
from mhe_jax import EnergySpec


def _lowered(spec, block_size=None):
    w = jnp.zeros((8, 12), jnp.float32)
    spec = spec.replace(block_size=block_size)
    f = jax.value_and_grad(lambda w: mhe_jax.hyperspherical_energy(w, spec=spec))
    return jax.jit(f).lower(w).as_text()


@pytest.mark.parametrize("block_size", [None, 4])
def test_default_is_highest_everywhere(block_size):
    text = _lowered(EnergySpec(), block_size)
    assert "HIGHEST" in text
    assert "precision = [DEFAULT" not in text.replace("HIGHEST", "")


@pytest.mark.parametrize("name,tag", [("high", "HIGH"), ("default", None)])
def test_named_modes_reach_the_program(name, tag):
    text = _lowered(EnergySpec(precision=name))
    assert "HIGHEST" not in text
    if tag:
        assert tag in text


def test_modes_agree_on_cpu():
    w = jnp.asarray(np.random.default_rng(0).standard_normal((16, 9)), jnp.float32)
    ref = float(mhe_jax.hyperspherical_energy(w))
    for name in ("high", "default"):
        got = float(mhe_jax.hyperspherical_energy(w, spec=EnergySpec(precision=name)))
        np.testing.assert_allclose(got, ref, rtol=1e-5)
