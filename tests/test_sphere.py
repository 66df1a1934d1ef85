"""mhe_jax.sphere: Thomson / Riesz / log-energy minima and the Tammes problem against known values.

CI runs a handful of N (one compilation per N, shared by the energy and Tammes solvers); the full
reference tables (N = 2..64 Thomson, every proven Tammes N) are ``@pytest.mark.slow``.
"""

import math
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import mhe_jax  # noqa: E402
from mhe_jax.sphere import minimize_energy, physics_energy, tammes  # noqa: E402
from tests import helpers  # noqa: E402

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"

# Best known Thomson energies E(N) = Σ_{i<j} 1/‖x_i − x_j‖ (Wikipedia "Thomson problem" /
# Cambridge Cluster Database), copied from shared/reference/thomson_minima_N2-64.tsv.
THOMSON = {
    2: 0.500000000,
    3: 1.732050808,
    4: 3.674234614,
    5: 6.474691495,
    6: 9.985281374,
    12: 49.165253058,
    13: 58.853230612,
}
# Proven Tammes optima (minimum angle, degrees), from shared/reference/tammes_proven.tsv.
TAMMES = {3: 120.0, 4: 109.471220634, 5: 90.0, 6: 90.0, 12: 63.4349488229}

RESTARTS = 16  # one shape per N: every CI test below reuses the same compiled solver


def _read_tsv(name):
    path = REFERENCE / name
    if not path.exists():
        pytest.skip(f"{path} not available")
    rows = [line.split("\t") for line in path.read_text().splitlines()[1:] if line.strip()]
    return {int(r[0]): float(r[1]) for r in rows}


@pytest.fixture(scope="module")
def thomson_results():
    return {n: minimize_energy(n, restarts=RESTARTS) for n in THOMSON}


def _check_thomson(res, n, want, rtol=1e-8):
    assert res.points.shape == (n, 3)
    got = float(res.energy)
    assert abs(got - want) <= rtol * want, (n, got, want, (got - want) / want)
    # The reported energy is the physics energy of the returned points.
    np.testing.assert_allclose(helpers.np_point_energy(res.points), got, rtol=1e-12)


# ------------------------------------------------------------------------------ Thomson


@pytest.mark.parametrize("n", sorted(THOMSON))
def test_thomson_known_minima(thomson_results, n):
    _check_thomson(thomson_results[n], n, THOMSON[n])


def test_result_fields_and_sphere(thomson_results):
    for res in thomson_results.values():
        norms = np.linalg.norm(np.asarray(res.points), axis=1)
        np.testing.assert_allclose(norms, 1.0, rtol=0, atol=1e-12)
        assert res.points.dtype == jnp.float64
        assert res.energies.shape == res.iterations.shape == res.grad_norms.shape == (RESTARTS,)
        assert float(res.energy) == float(jnp.min(res.energies))
        assert res.best == int(jnp.argmin(res.energies))
        assert float(res.grad_norm) == float(res.grad_norms[res.best])
        # Converged: relative Riemannian gradient small, or round-off reached (status 1-3).
        assert float(res.grad_norm) <= 1e-6 * max(float(res.energy), 1.0)
        assert set(np.asarray(res.status).tolist()) <= {1, 2, 3}
        assert int(jnp.max(res.iterations)) < 2000


def test_energy_matches_core_convention(thomson_results):
    """E = hyperspherical_energy (mean over ordered pairs) × n(n−1)/2 = brute-force Σ_{i<j}."""
    x = thomson_results[5].points
    mean, phys = jax.jit(
        lambda x: (
            mhe_jax.hyperspherical_energy(x, s=1.0, neuron_axis=0, eps=0.0),
            physics_energy(x, 1.0),
        )
    )(x)
    brute = helpers.np_point_energy(x)
    np.testing.assert_allclose(float(mean) * 10, brute, rtol=1e-14)
    np.testing.assert_allclose(float(phys), brute, rtol=1e-14)
    np.testing.assert_allclose(float(thomson_results[5].energy), brute, rtol=1e-13)


def test_average_pair_energy_increases(thomson_results):
    ns = sorted(thomson_results)
    avg = [float(thomson_results[n].energy) / math.comb(n, 2) for n in ns]
    assert all(b > a for a, b in zip(avg, avg[1:], strict=False)), avg


def test_deterministic_for_fixed_key():
    a = minimize_energy(5, restarts=RESTARTS, key=jax.random.key(3))
    b = minimize_energy(5, restarts=RESTARTS, key=jax.random.key(3))
    np.testing.assert_array_equal(np.asarray(a.points), np.asarray(b.points))
    np.testing.assert_array_equal(np.asarray(a.energies), np.asarray(b.energies))
    c = minimize_energy(5, restarts=RESTARTS, key=jax.random.key(4))
    assert not np.array_equal(np.asarray(a.points), np.asarray(c.points))
    np.testing.assert_allclose(float(c.energy), THOMSON[5], rtol=1e-8)


def test_init_is_used():
    init = np.random.default_rng(0).standard_normal((RESTARTS, 6, 3)) * 3.0
    res = minimize_energy(6, init=init)
    np.testing.assert_allclose(float(res.energy), THOMSON[6], rtol=1e-8)
    # An optimum as init (every restart): converged at once, energy unchanged.
    again = minimize_energy(6, init=np.broadcast_to(np.asarray(res.points), (RESTARTS, 6, 3)))
    np.testing.assert_allclose(np.asarray(again.energies), float(res.energy), rtol=1e-14)
    # (plus at most SADDLE_CHECK_STEPS iterations of the saddle check)
    assert int(jnp.max(again.iterations)) <= 5 + 10


# ------------------------------------------------------- log energy (Whyte), angular, dims


def _simplex_energy(n, s, distance):
    c = -1.0 / (n - 1)
    r = math.sqrt(2 - 2 * c) if distance == "euclidean" else math.acos(c)
    return math.comb(n, 2) * (math.log(1 / r) if s == 0 else r ** (-s))


@pytest.mark.parametrize(
    "n,want",
    [
        (4, -3 * math.log(8 / 3)),  # tetrahedron
        (5, -4 * math.log(2) - 1.5 * math.log(3)),  # triangular bipyramid (Dragnev et al. 2002)
        (6, -9 * math.log(2)),  # octahedron
    ],
)
def test_log_energy_whyte(n, want):
    res = minimize_energy(n, s=0.0, restarts=RESTARTS)
    np.testing.assert_allclose(float(res.energy), want, rtol=1e-10)
    np.testing.assert_allclose(helpers.np_point_energy(res.points, s=0.0), want, rtol=1e-10)


@pytest.mark.parametrize("s", [1.0, 2.0])
def test_angular_simplex(s):
    res = minimize_energy(4, s=s, distance="angular", restarts=RESTARTS)
    want = _simplex_energy(4, s, "angular")
    np.testing.assert_allclose(float(res.energy), want, rtol=1e-10)
    np.testing.assert_allclose(helpers.np_point_energy(res.points, s, "angular"), want, rtol=1e-10)
    cos = np.asarray(res.points) @ np.asarray(res.points).T
    np.testing.assert_allclose(cos[np.triu_indices(4, 1)], -1 / 3, atol=1e-6)


def test_angular_log_energy_prefers_the_square():
    """Σ log(1/θ_ij) is not convex in the cosine: for n = 4 the square on a great circle
    (4 pairs at π/2, 2 at π) beats the tetrahedron, and the solver finds it."""
    res = minimize_energy(4, s=0.0, distance="angular", restarts=RESTARTS)
    square = -4 * math.log(math.pi / 2) - 2 * math.log(math.pi)
    assert square < _simplex_energy(4, 0.0, "angular")
    np.testing.assert_allclose(float(res.energy), square, rtol=1e-10)
    # θ from a cosine near −1 is only good to ~sqrt(ε_mach) (antipodal pairs): a loose check.
    np.testing.assert_allclose(helpers.np_point_energy(res.points, 0.0, "angular"), square,
                               rtol=1e-7)


def test_regular_simplex_in_dim_4():
    for s in (0.0, 1.0, 3.5):
        res = minimize_energy(5, dim=4, s=s, restarts=4)
        assert res.points.shape == (5, 4)
        np.testing.assert_allclose(
            float(res.energy), _simplex_energy(5, s, "euclidean"), rtol=1e-10
        )


def test_regular_polygon_in_dim_2():
    n = 7
    want = n / 2 * sum(1 / (2 * math.sin(math.pi * k / n)) for k in range(1, n))
    res = minimize_energy(n, dim=2, restarts=4)
    np.testing.assert_allclose(float(res.energy), want, rtol=1e-10)


# ------------------------------------------------------------------------------ Tammes


@pytest.mark.parametrize("n", sorted(TAMMES))
def test_tammes_proven(n):
    res = tammes(n, restarts=RESTARTS)
    assert abs(res.min_angle_deg - TAMMES[n]) <= 1e-6, (n, res.min_angle_deg)
    assert math.isclose(math.degrees(res.min_angle), res.min_angle_deg, rel_tol=1e-15)
    x = np.asarray(res.points)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-12)
    core = jax.jit(lambda x: mhe_jax.min_angle(x, neuron_axis=0))(x)  # one small compile
    np.testing.assert_allclose(res.min_angle, float(core), rtol=0, atol=1e-9)


def test_tammes_other_dimensions():
    """Regular polygon on S¹ (360°/n) and the regular simplex on S³ (arccos(−1/4)); the shapes
    are those of the dim = 2 and dim = 4 energy tests (same compiled solver)."""
    polygon = tammes(7, dim=2, restarts=4)
    assert abs(polygon.min_angle_deg - 360 / 7) <= 1e-6
    simplex = tammes(5, dim=4, restarts=4)
    assert simplex.points.shape == (5, 4)
    assert abs(simplex.min_angle - math.acos(-0.25)) <= 1e-9


# ------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        *helpers.SPHERE_BAD_ARGUMENTS,
        (dict(n=4, restarts=0), ValueError, "restarts must be >= 1"),
        (dict(n=4, init=np.ones((5, 3))), ValueError, "init must have shape"),
        (dict(n=4, init=np.ones((2, 4, 2))), ValueError, "init must have shape"),
        (dict(n=4, init=np.ones((2, 4, 3)), restarts=3), ValueError, "restarts=3"),
        (dict(n=4, init=np.zeros((4, 3))), ValueError, "init must be finite with non-zero"),
        (dict(n=4, tol=0.0), ValueError, "tol must be"),
        (dict(n=4, steps=0), ValueError, "steps must be >= 1"),
    ],
)
def test_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        minimize_energy(**kwargs)


def _octahedron():
    return np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], float)


def _coincident_starts():
    """Starts with two (or all) points at one place: a saddle of the energy, never a minimum."""
    rng = np.random.default_rng(0)
    pair = rng.standard_normal((6, 3))
    pair[1] = pair[0]
    near = _octahedron()
    near[1] = near[0] + np.array([0.0, 1e-9, 0.0])  # below what float64 resolves (3e-8)
    scaled = _octahedron()
    scaled[3] = 5.0 * scaled[2]  # equal after normalisation
    restarts = np.stack([_octahedron(), pair])  # the second of two starts
    return {"pair": (pair, "rows 0 and 1"), "all equal": (np.ones((6, 3)), "rows 0 and 1"),
            "1e-9 apart": (near, "rows 0 and 1"), "a multiple": (scaled, "rows 2 and 3"),
            "in start 1": (restarts, "start 1: rows 0 and 1")}


@pytest.mark.parametrize("case", sorted(_coincident_starts()))
@pytest.mark.parametrize("solver", ["minimize_energy", "tammes"])
def test_coincident_init_is_refused_naming_init(case, solver):
    """Two coincident points: the energy is singular there and the symmetric start cannot
    separate them (it stalled at E = inf, or ended 'converged' at E = 2905 for the octahedron's
    9.985, or at a Tammes angle of 8.5e-7°): refused, naming init and the rows."""
    init, rows = _coincident_starts()[case]
    fn = minimize_energy if solver == "minimize_energy" else tammes
    with pytest.raises(ValueError, match=rf"init has coincident points: {rows} are .* apart"):
        fn(6, init=init)


@pytest.mark.parametrize("s", [0.0, 1.0, 50.0])
def test_distinct_close_init_converges_to_the_minimum(s):
    """Just above the resolution limit the points separate: the octahedron, truly converged."""
    init = _octahedron()
    init[1] = init[0] + np.array([0.0, 1e-6, 0.0])
    res = minimize_energy(6, init=init, s=s)
    assert int(res.status[0]) == 1
    best = minimize_energy(6, init=_octahedron(), s=s)
    assert float(res.energy) == pytest.approx(float(best.energy), rel=1e-9)


def test_coincidence_limit_is_the_solver_resolution():
    from mhe_jax.sphere import _solver

    assert _solver.min_chord(np.float32) == pytest.approx(6.9e-4, rel=0.01)
    assert _solver.min_chord(np.float64) == pytest.approx(3.0e-8, rel=0.01)
    x = _octahedron()
    x[1] = x[0] + np.array([0.0, 2e-4, 0.0])  # float32: the Gram distance rounds to 0
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    with pytest.raises(ValueError, match="float32 solver"):
        _solver.check_distinct(x[None], np.float32)
    _solver.check_distinct(x[None], np.float64)  # resolved in float64


def _great_circle(n):
    t = 2 * np.pi * np.arange(n) / n
    return np.stack([np.cos(t), np.sin(t), np.zeros(n)], axis=1)


def _icosahedron():
    p = (1 + math.sqrt(5)) / 2
    v = [(0, a, b) for a in (-1, 1) for b in (-p, p)]
    v = [r for a, b, c in v for r in ((a, b, c), (b, c, a), (c, a, b))]
    return np.asarray(v, float)


def _tetrahedron():
    return np.asarray([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], float)


_POLYHEDRA = {4: _tetrahedron, 6: _octahedron, 12: _icosahedron}


@pytest.mark.parametrize("x64", [True, pytest.param(False, marks=pytest.mark.slow)])  # issue 26
@pytest.mark.parametrize("s", [0.0, 1.0, 2.0])
@pytest.mark.parametrize("n", [4, 6, 12])
def test_symmetric_start_leaves_the_saddle(n, s, x64):
    """Issue #29: n points on one great circle (the regular polygon, a saddle of the energy whose
    symmetry the updates keep exactly) ended there 'converged' (n = 6, s = 1: the hexagon,
    E = 10.96, for the octahedron's 9.985). The saddle check leaves it for the minimum, the
    tetrahedron, octahedron, icosahedron (optimal for every s), in float32 and float64."""
    want = float(physics_energy(jnp.asarray(_POLYHEDRA[n]()), s))
    with jax.enable_x64(x64):
        res = minimize_energy(n, init=_great_circle(n), s=s)
        saddle = minimize_energy(n, init=_great_circle(n), s=s, saddle_checks=0)
    assert int(res.status[0]) in (1, 2, 3)
    assert float(res.energy) == pytest.approx(want, rel=1e-9 if x64 else 1e-5, abs=1e-6)
    assert float(saddle.energy) > want + 0.1  # without the check: the polygon
    assert int(saddle.iterations[0]) == 0


@pytest.mark.parametrize("x64", [True, False])
def test_saddle_check_keeps_a_minimum(x64):
    """A start near the minimum: the check's perturbed run does not go lower, so the result of
    the unchecked run is returned unchanged (points, energy, status), at the cost of at most
    SADDLE_CHECK_STEPS iterations; deterministic."""
    from mhe_jax.sphere import _solver

    init = _octahedron() + 1e-3 * np.random.default_rng(1).standard_normal((6, 3))
    with jax.enable_x64(x64):
        res = minimize_energy(6, init=init)
        again = minimize_energy(6, init=init)
        plain = minimize_energy(6, init=init, saddle_checks=0)
    np.testing.assert_array_equal(np.asarray(res.points), np.asarray(plain.points))
    np.testing.assert_array_equal(np.asarray(res.points), np.asarray(again.points))
    assert float(res.energy) == float(plain.energy)
    assert float(res.energy) == pytest.approx(THOMSON[6], rel=1e-9 if x64 else 1e-6)
    np.testing.assert_array_equal(np.asarray(res.status), np.asarray(plain.status))
    extra = int(res.iterations[0]) - int(plain.iterations[0])
    assert 0 < extra <= _solver.SADDLE_CHECK_STEPS


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(n=1), "n must be >= 2"),
        (dict(n=4, dim=0), "dim must be >= 2"),
        (dict(n=4, restarts=0), "restarts must be >= 1"),
        (dict(n=4, init=np.ones((4, 2))), "init must have shape"),
        (dict(n=4, schedule=(-1.0,)), "s must be"),
        (dict(n=4, schedule=(), betas=()), "cannot both be empty"),
    ],
)
def test_tammes_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tammes(**kwargs)


# ------------------------------------------------------------------------------ slow


@pytest.mark.slow
def test_thomson_all_n_2_to_64():
    """Every N = 2..64 to 1e-8 relative. With key 0, 16 restarts reach the best known minimum for
    N < 35 (all 16 in most cases); above, some N are hard (N = 46: 4 of 64 restarts, N = 56: 8 of
    64), so 64 restarts are used."""
    table = _read_tsv("thomson_minima_N2-64.tsv")
    energies, failures = {}, []
    for n, want in sorted(table.items()):
        res = minimize_energy(n, restarts=RESTARTS if n < 35 else 64)
        try:
            _check_thomson(res, n, want)
        except AssertionError as err:
            failures.append(str(err))
        energies[n] = float(res.energy)
    assert not failures, failures
    avg = [energies[n] / math.comb(n, 2) for n in sorted(energies)]
    assert all(b > a for a, b in zip(avg, avg[1:], strict=False))


@pytest.mark.slow
def test_tammes_all_proven():
    table = _read_tsv("tammes_proven.tsv")
    for n, want in sorted(table.items()):
        res = tammes(n, restarts=32)
        assert abs(res.min_angle_deg - want) <= 1e-6, (n, res.min_angle_deg, want)
