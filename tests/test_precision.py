"""Precision policy of the Gram products (issue 16 §1): HIGHEST by default, named modes in the
program, the same values on CPU (which computes float32 products in full either way)."""

import jax
import jax.extend
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


def _dot_precisions(spec, block_size=None) -> dict[tuple[int, ...], set]:
    """``{output shape: {precision of each dot_general with it}}`` in value_and_grad's jaxpr
    (scans included) for a (8, 12) float32 layer."""
    w = jnp.zeros((8, 12), jnp.float32)
    spec = spec.replace(block_size=block_size)
    jaxpr = jax.make_jaxpr(jax.value_and_grad(
        lambda w: mhe_jax.hyperspherical_energy(w, spec=spec)))(w)
    out: dict[tuple[int, ...], set] = {}

    def walk(jx):
        for eqn in jx.eqns:
            if eqn.primitive.name == "dot_general":
                p = eqn.params["precision"]
                p = p[0] if isinstance(p, tuple) else p
                out.setdefault(tuple(eqn.outvars[0].aval.shape), set()).add(
                    None if p is None else p.name)
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                walk(sub)

    walk(jaxpr.jaxpr)
    return out


@pytest.mark.parametrize("block_size", [None, 4])
@pytest.mark.parametrize("name,tag", [("high", "HIGH"), ("default", "DEFAULT")])
def test_named_modes_reach_the_program(name, tag, block_size):
    """The named precision reaches every Gram-sized product (the Gram matrix or its tiles and
    the force products); the dense path's tangent projection sums its columns as a (1, N)
    product with ones, a reduction kept at HIGHEST (a bf16 pass would undo the projection)."""
    dots = _dot_precisions(EnergySpec(precision=name), block_size)
    gram_sized = {shape: p for shape, p in dots.items() if shape != (1, 12)}
    assert gram_sized and all(p == {tag} for p in gram_sized.values()), dots
    assert dots.get((1, 12), {"HIGHEST"}) == {"HIGHEST"}, dots


def test_modes_agree_on_cpu():
    w = jnp.asarray(np.random.default_rng(0).standard_normal((16, 9)), jnp.float32)
    ref = float(mhe_jax.hyperspherical_energy(w))
    for name in ("high", "default"):
        got = float(mhe_jax.hyperspherical_energy(w, spec=EnergySpec(precision=name)))
        np.testing.assert_allclose(got, ref, rtol=1e-5)
