r"""Basin-hopping for global minima of the Riesz energy on ``S^{dim-1}`` (Wales & Doye 1997).

Each chain holds a local minimum ``x`` with energy ``E(x)``. One hop:

1. perturb ``x``. The default move, ``move="relocate"``, takes one point chosen uniformly at
   random and puts it at a uniformly random position on the sphere (a vacancy–interstitial
   pair: the hole it leaves and the crowd it joins relax into a different arrangement of the
   defects). The alternative, ``move="cap"``, is local: pick a centre point (one of the points
   of highest local energy ``e_i = Σ_j f_s(‖x_i − x_j‖)`` with probability 1/2, else a random
   one), take its ``k ≤ cap`` nearest points (a spherical cap), and rotate the cap about its
   centre by a random orthogonal map of the tangent space and/or displace each of its points
   by a random tangent vector of length about ``step`` times the mean nearest-neighbour
   spacing;
2. minimise locally (the Riemannian L-BFGS of :func:`~mhe_jax.sphere.minimize_energy`) to
   ``x'``;
3. accept ``x'`` with the Metropolis probability ``min(1, exp(−(E(x') − E(x)) / T))``.

Measured for Thomson N = 200 from one local minimum (24 moves each, ``benchmarks/RESULTS.md``):
from a local minimum 1.1e-5 (relative) above the best known energy, a relocation reaches a
different minimum 88 % of the time, a cap move of step 0.4 only 4 % (the local solver falls
back into the same minimum), which is why relocation is the default.

The chains run together: their local minimisations are one ``jax.vmap``-ed, jitted call per hop
(compiled once per ``(n, dim, chains)``). The search stops after ``hops`` hops, after
``patience`` hops without a new best energy, after ``time_limit`` seconds, or when ``target``
is reached; the best minimum of every chain is then polished to the tight tolerance.
"""

from __future__ import annotations

import math
import numbers
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from mhe_jax import _checks
from mhe_jax.sphere import _solver
from mhe_jax.sphere._solver import EnergyResult

__all__ = ["basin_hopping", "fibonacci_points"]

DEFAULT_TEMPERATURE = 1e-6  # relative to |E| of the first local minimum
MOVES = ("relocate", "cap")
DEFAULT_MOVE = "relocate"
DEFAULT_STEP = 0.4  # move="cap": displacement, in units of the mean nearest-neighbour spacing
DEFAULT_CHAINS = 4
# A new best must beat the previous one by more than this (relative): a minimum found again
# differs from itself by round-off only (~1e-13).
IMPROVEMENT_RTOL = 1e-10
HOP_TOL = 1e-7  # gradient tolerance of the local minimisations during the hops (float64)


def fibonacci_points(n: int) -> np.ndarray:
    r"""``n`` points of the Fibonacci (golden-angle) spiral on ``S²``, shape ``(n, 3)``.

    ``z_i = 1 − (2i + 1)/n``, ``φ_i = i·π(3 − √5)``, ``x_i = (√(1−z_i²) cos φ_i,
    √(1−z_i²) sin φ_i, z_i)`` for ``i = 0..n−1``: equal-area bands, a low-discrepancy point set
    whose energy is within ~1 % of the minimum.

    Examples:
      >>> from mhe_jax.sphere import fibonacci_points
      >>> x = fibonacci_points(100)
      >>> x.shape, bool(abs((x * x).sum(1) - 1).max() < 1e-12)
      ((100, 3), True)
    """
    n = _solver._check_int(n, "n", 1)
    i = np.arange(n, dtype=np.float64)
    z = 1.0 - (2.0 * i + 1.0) / n
    phi = i * math.pi * (3.0 - math.sqrt(5.0))
    r = np.sqrt(np.maximum(1.0 - z * z, 0.0))
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def _rng_from_key(key) -> np.random.Generator:
    if isinstance(key, (bool, np.bool_)):
        raise TypeError("key must be a jax PRNG key or an int seed, got bool")
    if isinstance(key, numbers.Integral):
        key = jax.random.key(int(key))
    try:
        bits = np.asarray(jax.random.key_data(key))
    except (TypeError, ValueError) as err:
        raise TypeError(f"key must be a jax PRNG key or an int seed, got {key!r}") from err
    return np.random.default_rng(bits.ravel().astype(np.uint64).tolist())


def _random_rotation(dim: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
    return q * np.sign(np.diag(r))


def _starts(n: int, dim: int, chains: int, init, rng: np.random.Generator) -> np.ndarray:
    """Initial configurations ``(chains, n, dim)`` (float64, unit rows)."""
    if init is None or (isinstance(init, str) and init == "random"):
        x = rng.standard_normal((chains, n, dim))
    elif isinstance(init, str):
        if init != "fibonacci":
            raise ValueError(f"init must be 'random', 'fibonacci' or an array, got {init!r}")
        if dim != 3:
            raise ValueError(f"init='fibonacci' needs dim=3, got dim={dim}")
        # One spiral, randomly rotated per chain (chain 0 unrotated): the same energy, chains
        # that differ from the first hop on.
        base = fibonacci_points(n)
        rots = [np.eye(3)] + [_random_rotation(3, rng) for _ in range(chains - 1)]
        x = np.stack([base @ q.T for q in rots])
    else:
        arr = np.asarray(init)
        if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            raise TypeError(f"init must be a real array, got dtype {arr.dtype}")
        if arr.ndim == 2:
            arr = np.broadcast_to(arr, (chains,) + arr.shape)
        if arr.shape != (chains, n, dim):
            raise ValueError(
                f"init must have shape (n, dim) = ({n}, {dim}) or (chains, n, dim) = "
                f"({chains}, {n}, {dim}), got shape {np.shape(init)}"
            )
        x = np.asarray(arr, np.float64)
        if not np.all(np.isfinite(x)) or not np.all(np.linalg.norm(x, axis=-1) > 0):
            raise ValueError("init must be finite with non-zero rows (points on the sphere)")
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _spacing(n: int, dim: int) -> float:
    """Mean nearest-neighbour chord of ``n`` well-spread points on ``S^{dim−1}``: on ``S²`` the
    triangular lattice of area ``4π/n`` per point, ``√(8π/(√3 n))``; ``2π/n`` on the circle;
    ``n^{−1/(dim−1)}`` times a constant of order 1 above."""
    if dim == 2:
        return 2.0 * math.pi / n
    if dim == 3:
        return math.sqrt(8.0 * math.pi / (math.sqrt(3.0) * n))
    return 2.0 * n ** (-1.0 / (dim - 1))


def _local_energy(x: np.ndarray, s: float) -> np.ndarray:
    """Heuristic move weight: ``Σ_j f_s(‖x_i − x_j‖)`` per point (chord, NumPy)."""
    c = np.clip(x @ x.T, -1.0, 1.0)
    r = np.sqrt(np.maximum(2.0 - 2.0 * c, 1e-300))
    np.fill_diagonal(r, np.inf)
    return -np.log(r).sum(1, where=np.isfinite(r)) if s == 0 else (r ** (-s)).sum(1)


def _cap_move(
    x: np.ndarray, s: float, step: float, spacing: float, cap: int, rng: np.random.Generator
) -> np.ndarray:
    """One cap move of configuration ``x`` (float64, ``(n, dim)``); see the module docstring."""
    n, dim = x.shape
    if rng.random() < 0.5:
        top = np.argsort(_local_energy(x, s))[-max(1, min(n, 6)) :]
        j = int(rng.choice(top))
    else:
        j = int(rng.integers(n))
    centre = x[j]
    k = int(rng.integers(min(2, n), min(cap, n) + 1))
    idx = np.argsort(np.sum((x - centre) ** 2, axis=1))[:k]
    y = x.copy()
    pts = y[idx]
    normal = pts @ centre
    tangent = pts - normal[:, None] * centre
    if dim > 2 and rng.random() < 0.5:
        # Random orthogonal map of the tangent space at the centre (fixes the centre).
        basis = np.linalg.svd(np.eye(dim) - np.outer(centre, centre))[0][:, : dim - 1]
        q = basis @ _random_rotation(dim - 1, rng) @ basis.T
        pts = normal[:, None] * centre + tangent @ q.T
    noise = rng.standard_normal(pts.shape)
    noise -= np.sum(noise * pts, axis=1, keepdims=True) * pts
    pts = pts + step * spacing * noise / math.sqrt(max(dim - 1, 1))
    y[idx] = pts / np.linalg.norm(pts, axis=1, keepdims=True)
    return y


def _relocate_move(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One point of ``x`` (uniformly chosen) moved to a uniformly random point of the sphere."""
    y = x.copy()
    z = rng.standard_normal(x.shape[1])
    y[int(rng.integers(x.shape[0]))] = z / np.linalg.norm(z)
    return y


def _check_nonneg_or_none(value, name: str, positive: bool = True):
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number or None, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{name} must be a finite real {bound}, got {value!r}")
    return value


def default_hops(n: int) -> int:
    return max(200, 10 * n)


def default_patience(n: int) -> int:
    return max(100, 4 * n)


def basin_hopping(
    n: int,
    dim: int = 3,
    *,
    s: float = 1.0,
    distance: str = "euclidean",
    key: jax.Array | int,
    hops: int | None = None,
    time_limit: float | None = None,
    temperature: float | None = None,
    step: float | None = None,
    init: str | ArrayLike | None = None,
    chains: int | None = None,
    patience: int | None = None,
    target: float | None = None,
    cap: int | None = None,
    move: str = DEFAULT_MOVE,
) -> EnergyResult:
    r"""Putative global minimum of the Riesz energy of ``n`` points on ``S^{dim−1}``.

    Minimises ``E(x) = Σ_{i<j} f_s(dist(x_i, x_j))`` (``f_s(r) = r^{−s}``, ``f_0(r) =
    log(1/r)``; euclidean or angular ``dist``, as in :func:`minimize_energy`) by basin-hopping:
    ``chains`` independent Markov chains on the local minima. Each hop perturbs the chain's
    current minimum — by default (``move="relocate"``) one random point is moved to a uniformly
    random position; with ``move="cap"`` the ``k ≤ cap`` points nearest to a centre point (one
    of the 6 of highest local energy, or a random one) are rotated about the centre by a random
    angle and/or displaced by random tangent vectors of length ``≈ step`` times the mean
    nearest-neighbour spacing ``√(8π/(√3 n))`` — then runs the local solver (Riemannian
    L-BFGS, ``jax.vmap``-ed over the chains in one jitted call) and accepts the new minimum
    ``x'`` with probability ``min(1, exp(−(E(x') − E(x))/T))`` (Metropolis).

    Stops after ``hops`` hops per chain, after ``patience`` hops without a new overall best
    (better by more than 1e-10 relative), after ``time_limit`` seconds, or once the best energy
    is ``≤ target``; then polishes the best minimum of every chain to the tolerance of
    :func:`minimize_energy`. The random moves are drawn from ``key`` (deterministic for a fixed
    key unless ``time_limit`` cuts the run). Use float64 (``jax_enable_x64``) for large ``n``:
    neighbouring minima differ by ~1e-6 relative (N = 200), near float32 resolution.

    Args:
      n: number of points, ``>= 2``.
      dim: ambient dimension, ``>= 2``.
      s: Riesz exponent ``>= 0`` (0: log energy; ``s ≥ 6`` is optimised as ``log(E_s)/s``).
      distance: ``"euclidean"`` or ``"angular"``.
      key: PRNG key or int seed (required).
      hops: maximum hops per chain; default ``max(200, 10 n)``.
      time_limit: wall-clock limit in seconds (checked between hops; compilation counts);
        default none.
      temperature: Metropolis temperature ``T`` in energy units; default ``1e-6 |E_0|`` with
        ``E_0`` the best first local minimum (for Thomson N = 100–500, comparable to the gaps
        between neighbouring minima, 1e-7–1e-5 relative).
      step: ``move="cap"`` only: displacement of the moved points in units of the mean
        nearest-neighbour spacing; default 0.4.
      init: ``"random"`` (default: uniform random starts), ``"fibonacci"`` (the Fibonacci spiral
        :func:`fibonacci_points`, randomly rotated per chain; ``dim = 3``), or an array of shape
        ``(n, dim)`` or ``(chains, n, dim)`` (rows are normalised).
      chains: number of chains; default 4 (or the number of starts in a 3-d ``init``).
      patience: stop after this many hops without a new best; default ``max(100, 4 n)``.
      target: stop as soon as the best energy is ``≤ target``; default none.
      cap: ``move="cap"`` only: largest number of points a move touches; default
        ``min(12, n)``.
      move: ``"relocate"`` (default) or ``"cap"``, the perturbation of a hop (above).

    Returns:
      :class:`EnergyResult`: ``points``/``energy`` of the best minimum over all chains;
      ``energies``, ``iterations`` (L-BFGS iterations summed over the hops), ``grad_norms``,
      ``status`` per chain; ``hops`` run, ``best_hop`` (the hop that first reached the returned
      minimum), ``seconds`` and ``seconds_to_best``.

    Examples:
      >>> import jax
      >>> from mhe_jax.sphere import basin_hopping
      >>> res = basin_hopping(12, key=jax.random.key(0), hops=5, chains=2)
      >>> round(float(res.energy), 3)  # the icosahedron, E = 49.165253058
      49.165
      >>> res.points.shape, res.hops <= 5
      ((12, 3), True)
    """
    t_start = time.perf_counter()
    n = _solver._check_int(n, "n", 2)
    dim = _solver._check_int(dim, "dim", 2)
    s = _solver._check_s(s)
    _checks.check_distance(distance)
    if not isinstance(move, str) or move not in MOVES:
        raise ValueError(f"move must be one of {MOVES}, got {move!r}")
    if move != "cap" and (step is not None or cap is not None):
        raise ValueError(
            f"step= and cap= apply to move='cap' only, got move={move!r} with "
            f"step={step!r}, cap={cap!r}"
        )
    rng = _rng_from_key(key)
    hops = default_hops(n) if hops is None else _solver._check_int(hops, "hops", 0)
    time_limit = _check_nonneg_or_none(time_limit, "time_limit")
    temperature = _check_nonneg_or_none(temperature, "temperature", positive=False)
    step = DEFAULT_STEP if step is None else _solver._check_positive(step, "step")
    patience = (
        default_patience(n) if patience is None else _solver._check_int(patience, "patience", 1)
    )
    cap = min(12, n) if cap is None else _solver._check_int(cap, "cap", 1)
    if target is not None:
        if isinstance(target, (bool, np.bool_)) or not isinstance(target, numbers.Real):
            raise TypeError(f"target must be a real number or None, got {type(target).__name__}")
        if math.isnan(float(target)):
            raise ValueError("target must not be NaN")
        target = float(target)
    if chains is None:
        arr_chains = None
        if init is not None and not isinstance(init, str) and np.ndim(init) == 3:
            arr_chains = int(np.shape(init)[0])
        chains = DEFAULT_CHAINS if arr_chains is None else arr_chains
    chains = _solver._check_int(chains, "chains", 1)
    x0 = _starts(n, dim, chains, init, rng)

    dtype = _solver.compute_dtype()
    fun = _solver.SphereObjective(distance, _solver._solver_eps(distance, dtype))
    params = _solver.energy_params(s)
    opts = _solver.solver_options(n, dim)
    steps = _solver.default_steps(n)
    final_tol = 1e-11 if dtype == jnp.float64 else 1e-5
    # Hops stop at a looser gradient tolerance: the energy error is quadratic in the gradient
    # (≈ ‖g‖²/λ); measured for Thomson N = 200 after a cap move: ~1e-11 relative at 1e-7 with
    # 25 % fewer iterations than 1e-8 (1e-14), far below the gaps between minima (~1e-7).
    hop_tol = HOP_TOL if dtype == jnp.float64 else 1e-5
    spacing = _spacing(n, dim)

    def local(x):
        xs, f, g, it, st = _solver.run_restarts(
            fun, jnp.asarray(x, dtype), params, steps=steps, tol=hop_tol, opts=opts
        )
        e = _solver.objective_to_energy(f, params)
        return np.asarray(xs, np.float64), np.where(np.isfinite(e), e, np.inf), np.asarray(it)

    cur_x, cur_e, iters = local(x0)
    iters = iters.astype(np.int64)
    best_x, best_e = cur_x.copy(), cur_e.copy()
    overall = float(np.min(best_e))
    if temperature is None:
        temperature = DEFAULT_TEMPERATURE * abs(overall) if math.isfinite(overall) else 1.0
    best_hop, last_improvement = 0, 0
    seconds_to_best = time.perf_counter() - t_start
    hop = 0
    while hop < hops:
        if target is not None and overall <= target:
            break
        if hop - last_improvement >= patience:
            break
        if time_limit is not None and time.perf_counter() - t_start >= time_limit:
            break
        hop += 1
        if move == "cap":
            trial = np.stack([_cap_move(x, s, step, spacing, cap, rng) for x in cur_x])
        else:
            trial = np.stack([_relocate_move(x, rng) for x in cur_x])
        new_x, new_e, it = local(trial)
        iters += it
        u = rng.random(chains)
        with np.errstate(over="ignore", invalid="ignore"):
            delta = new_e - cur_e
            accept = np.isfinite(new_e) & (
                (delta <= 0) | (u < np.exp(-delta / max(temperature, 1e-300)))
            )
        cur_x = np.where(accept[:, None, None], new_x, cur_x)
        cur_e = np.where(accept, new_e, cur_e)
        better = new_e < best_e
        best_x = np.where(better[:, None, None], new_x, best_x)
        best_e = np.where(better, new_e, best_e)
        new_overall = float(np.min(best_e))
        if new_overall < overall - IMPROVEMENT_RTOL * abs(overall):
            best_hop, last_improvement = hop, hop
            seconds_to_best = time.perf_counter() - t_start
        overall = min(overall, new_overall)

    xs, f, g, it, st = _solver.run_restarts(
        fun, jnp.asarray(best_x, dtype), params, steps=steps, tol=final_tol, opts=opts
    )
    iters += np.asarray(it)
    return _solver.energy_result(
        xs,
        f,
        g,
        iters,
        st,
        params,
        distance,
        hops=hop,
        best_hop=best_hop,
        seconds=time.perf_counter() - t_start,
        seconds_to_best=seconds_to_best,
    )
