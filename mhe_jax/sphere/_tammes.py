r"""Tammes problem: maximise the minimum angle between ``n`` points on ``S^{dim−1}``.

Three stages, all from the same restarts:

1. Riesz continuation: minimise the Riesz ``s``-energy (core code) for ``s`` in ``schedule``
   (default ``48 → 80``), each stage started from the previous minimiser (the Riesz minimisers
   tend to the Tammes optimum as ``s → ∞``). Starting at a large ``s`` matters: a continuation
   from ``s = 1`` (``1 → 6 → 12 → 24 → 48 → 80``) carries the restarts into the Thomson basins,
   which for ``n = 10, 13`` are not the Tammes ones (0 of 16 restarts reach the optimum of
   ``n = 13`` that way, about half from ``s = 48``);
2. max–min smoothing: minimise ``(1/β) log Σ_{i<j} ‖x_i − x_j‖^{−β}`` (log-sum-exp, stable for
   any ``β``; equal to ``log(E_β)/β``, so it continues stage 1) for ``β`` up to ``1e6``, which
   tends to ``−log`` of the minimum distance; both stages use the jitted, vmapped Riemannian
   L-BFGS of :mod:`mhe_jax.sphere._solver`;
3. active-set Newton polish (NumPy, float64, no LP): the pairs at (near) the minimum distance are
   taken as active, and Newton's method solves the KKT system of
   ``min c  s.t.  x_i·x_j = c  ((i, j) active),  ‖x_i‖ = 1``; several active-set thresholds are
   tried and the configuration with the largest true minimum angle is kept (never worse than
   stage 2). This removes the ``O(1/β)`` bias of stage 2 and gives the angle to ~1e-12 rad.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from mhe_jax.sphere import _solver

Array = jax.Array

__all__ = ["TammesResult", "tammes"]

DEFAULT_SCHEDULE = (48.0, 80.0)
DEFAULT_BETAS = (160.0, 640.0, 2560.0, 1e4, 4e4, 1.6e5, 1e6)


class TammesResult(NamedTuple):
    """Result of :func:`tammes`.

    Attributes:
      points: ``(n, dim)`` best configuration (unit rows, float64 NumPy array).
      min_angle: its minimum angle between two points, radians.
      min_angle_deg: the same in degrees.
      min_angles_deg: ``(restarts,)`` minimum angle (degrees) of every restart before the polish.
      active_pairs: ``(k, 2)`` index pairs at the minimum distance (the contact graph) used by the
        polish (empty if the polish was not used).
      kkt_residual: final residual norm of the polish's KKT system (``nan`` if not used).
      best: index of the restart the result comes from.
    """

    points: np.ndarray
    min_angle: float
    min_angle_deg: float
    min_angles_deg: np.ndarray
    active_pairs: np.ndarray
    kkt_residual: float
    best: int


def _max_cos(X: np.ndarray) -> float:
    n = X.shape[0]
    C = X @ X.T
    iu = np.triu_indices(n, 1)
    return float(np.max(C[iu]))


def _angle(max_cos: float) -> float:
    return math.acos(max(-1.0, min(1.0, max_cos)))


# --------------------------------------------------------------------------------------------
# Active-set Newton polish of the max–min problem (KKT system, least-squares Newton steps).
# --------------------------------------------------------------------------------------------


def _blocks(d: int, rows, cols):
    """Flat indices of the ``d × d`` identity-diagonal entries of blocks (rows[k], cols[k])."""
    r = (np.asarray(rows)[:, None] * d + np.arange(d)).ravel()
    c = (np.asarray(cols)[:, None] * d + np.arange(d)).ravel()
    return r, c


def _kkt(X, c, lam, mu, ii, jj):
    """Residual F and Jacobian of the KKT system of ``min c s.t. x_i·x_j = c (A), ‖x_i‖² = 1``.

    Unknowns ``z = (x (n·d), c, λ (|A|), μ (n))`` and Lagrangian
    ``L = c + Σ_A λ_k (x_i·x_j − c) + Σ_i μ_i (‖x_i‖² − 1)/2`` (the matrix is symmetric).
    """
    n, d = X.shape
    a = len(ii)
    nx = n * d
    N = nx + 1 + a + n
    G = mu[:, None] * X  # ∇_x L
    np.add.at(G, ii, lam[:, None] * X[jj])
    np.add.at(G, jj, lam[:, None] * X[ii])
    F = np.concatenate(
        [
            G.ravel(),
            [1.0 - lam.sum()],
            np.sum(X[ii] * X[jj], axis=1) - c,
            0.5 * (np.sum(X * X, axis=1) - 1.0),
        ]
    )
    Jm = np.zeros((N, N))
    # ∂(∇_x L)/∂x: λ_k I in blocks (i, j) and (j, i), μ_i I in block (i, i).
    lam_d = np.repeat(lam, d)
    r, cc = _blocks(d, ii, jj)
    np.add.at(Jm, (r, cc), lam_d)
    np.add.at(Jm, (cc, r), lam_d)
    diag = np.arange(nx)
    Jm[diag, diag] += np.repeat(mu, d)
    # ∂(∇_x L)/∂λ_k = ∂(x_i·x_j − c)/∂x (transposed): x_j in block i, x_i in block j.
    k_cols = nx + 1 + np.arange(a)
    rows_i = (ii[:, None] * d + np.arange(d)).ravel()
    rows_j = (jj[:, None] * d + np.arange(d)).ravel()
    kk = np.repeat(k_cols, d)
    Jm[rows_i, kk] = X[jj].ravel()
    Jm[rows_j, kk] = X[ii].ravel()
    Jm[kk, rows_i] = X[jj].ravel()
    Jm[kk, rows_j] = X[ii].ravel()
    Jm[k_cols, nx] = -1.0
    Jm[nx, k_cols] = -1.0
    # ∂(∇_x L)/∂μ_i = ∂h_i/∂x (transposed): x_i in block i.
    m_cols = np.repeat(nx + 1 + a + np.arange(n), d)
    Jm[diag, m_cols] = X.ravel()
    Jm[m_cols, diag] = X.ravel()
    return F, Jm


def _initial_multipliers(X, ii, jj):
    """Least-squares ``(λ, μ)`` of the stationarity equations at ``X`` (with ``Σλ = 1``)."""
    n, d = X.shape
    a = len(ii)
    A = np.zeros((n * d + 1, a + n))
    rows_i = (ii[:, None] * d + np.arange(d)).ravel()
    rows_j = (jj[:, None] * d + np.arange(d)).ravel()
    kk = np.repeat(np.arange(a), d)
    np.add.at(A, (rows_i, kk), X[jj].ravel())
    np.add.at(A, (rows_j, kk), X[ii].ravel())
    A[np.arange(n * d), a + np.repeat(np.arange(n), d)] = X.ravel()
    A[n * d, :a] = 1.0
    b = np.zeros(n * d + 1)
    b[n * d] = 1.0
    sol = np.linalg.lstsq(A, b, rcond=None)[0]
    return sol[:a], sol[a:]


def _newton_kkt(X, ii, jj, iters: int = 25):
    """Newton on the KKT system for the active pairs ``(ii, jj)``; returns (X, residual).

    Least-squares (minimum-norm) steps handle the singular directions (rotations, redundant
    multipliers); a step is halved until the residual decreases. Gives up early when the
    residual does not fall (a wrong active set).
    """
    n, d = X.shape
    nx = n * d
    a = len(ii)
    X = X / np.linalg.norm(X, axis=1, keepdims=True)
    c = float(np.mean(np.sum(X[ii] * X[jj], axis=1)))
    lam, mu = _initial_multipliers(X, ii, jj)
    F, Jm = _kkt(X, c, lam, mu, ii, jj)
    res = float(np.linalg.norm(F))
    for it in range(iters):
        if res < 1e-14 or (it >= 8 and res > 1e-6):
            break
        step = np.linalg.lstsq(Jm, -F, rcond=1e-12)[0]
        t = 1.0
        for _ in range(10):
            Xt = X + t * step[:nx].reshape(n, d)
            ct = c + t * step[nx]
            lt = lam + t * step[nx + 1 : nx + 1 + a]
            mt = mu + t * step[nx + 1 + a :]
            Ft, Jt = _kkt(Xt, ct, lt, mt, ii, jj)
            rt = float(np.linalg.norm(Ft))
            if rt < res or rt < 1e-14:
                break
            t *= 0.5
        else:
            break
        X, c, lam, mu, F, Jm, res = Xt, ct, lt, mt, Ft, Jt, rt
    X = X / np.linalg.norm(X, axis=1, keepdims=True)
    return X, res


def _candidate_active_sets(X, max_sets: int = 4):
    """Active pairs ``c_ij ≥ c_max − δ`` for δ at the largest gaps of the sorted top cosines."""
    n = X.shape[0]
    C = X @ X.T
    ii, jj = np.triu_indices(n, 1)
    cos = C[ii, jj]
    order = np.argsort(-cos)
    top = cos[order]
    limit = min(len(top), 3 * n * X.shape[1])  # a contact graph has O(n·dim) edges
    gaps = top[: limit - 1] - top[1:limit]
    # Relative gap: the gap compared with the spread of the pairs above it.
    spread = top[0] - top[: limit - 1] + 1e-12
    score = gaps / spread
    sets = []
    for k in np.argsort(-score)[: 2 * max_sets]:
        m = int(k) + 1
        if m not in sets:
            sets.append(m)
        if len(sets) >= max_sets:
            break
    if limit == len(top) and len(top) not in sets:
        sets.append(len(top))  # every pair active (e.g. regular simplex)
    return [(ii[order[:m]], jj[order[:m]]) for m in sorted(sets)]


def polish(X: np.ndarray):
    """Active-set Newton polish; returns (X, active pairs, residual), never worse than ``X``."""
    X = np.asarray(X, np.float64)
    X = X / np.linalg.norm(X, axis=1, keepdims=True)
    best = (X, np.zeros((0, 2), np.int64), float("nan"))
    best_cos = _max_cos(X)
    for ii, jj in _candidate_active_sets(X):
        try:
            Xp, res = _newton_kkt(X, ii, jj)
        except np.linalg.LinAlgError:
            continue
        if not np.all(np.isfinite(Xp)):
            continue
        mc = _max_cos(Xp)
        if res < 1e-9 and mc < best_cos:
            best_cos = mc
            best = (Xp, np.stack([ii, jj], axis=1), res)
    return best


# --------------------------------------------------------------------------------------------
# Public API.
# --------------------------------------------------------------------------------------------


def tammes(
    n: int,
    dim: int = 3,
    *,
    restarts: int | None = None,
    key: jax.Array | int | None = None,
    init: ArrayLike | None = None,
    schedule: Sequence[float] = DEFAULT_SCHEDULE,
    betas: Sequence[float] = DEFAULT_BETAS,
    polish_top: int = 3,
    steps: int | None = None,
    tol: float | None = None,
) -> TammesResult:
    r"""Tammes problem: ``n`` points on ``S^{dim−1}`` maximising their minimum angle.

    Riesz-energy continuation (``s`` in ``schedule``), then minimisation of the smooth max–min
    objective ``(1/β) log Σ_{i<j} ‖x_i − x_j‖^{−β}`` for ``β`` in ``betas``, over ``restarts``
    vmapped random starts; then an active-set Newton polish of the KKT system of the max–min
    problem on the ``polish_top`` best restarts (see the module docstring). Needs float64
    (``jax.config.update("jax_enable_x64", True)``) for ~1e-6-degree accuracy; in float32 the
    stages whose energies overflow are skipped.

    Like every global problem here, the result is the best local optimum found: hard cases
    (e.g. ``n = 13``) may need more ``restarts``.

    Args:
      n: number of points, ``>= 2``.
      dim: ambient dimension, ``>= 2``.
      restarts: random starts (default 16, or the number of starts in ``init``).
      key: PRNG key or int seed (default ``jax.random.key(0)``).
      init: optional starts, ``(n, dim)`` or ``(restarts, n, dim)``; coincident rows raise
        ``ValueError`` naming ``init``, as in :func:`minimize_energy`. Every stage ends with
        the saddle check of :func:`minimize_energy` (``saddle_checks`` = 3), so a symmetric
        start (e.g. ``n = 6`` on one great circle: 60°) leaves the saddle (the octahedron, 90°).
      schedule: increasing Riesz exponents of the continuation.
      betas: increasing sharpness values of the max–min smoothing (empty: skip the stage).
      polish_top: number of best restarts given to the Newton polish (0: no polish).
      steps: maximum L-BFGS iterations per stage (default ``max(2000, 40 n)``).
      tol: relative gradient tolerance of each stage (default 1e-10 in float64, 1e-5 in float32).

    Returns:
      :class:`TammesResult` with the points and their minimum angle in radians and degrees.

    Examples:
      >>> from mhe_jax import sphere
      >>> result = sphere.tammes(6, restarts=2)  # 6 points: the octahedron
      >>> result.points.shape
      (6, 3)
      >>> round(result.min_angle_deg, 4)
      90.0
    """
    n = _solver._check_int(n, "n", 2)
    dim = _solver._check_int(dim, "dim", 2)
    if restarts is not None:
        restarts = _solver._check_int(restarts, "restarts", 1)
    polish_top = _solver._check_int(polish_top, "polish_top", 0)
    schedule = tuple(_solver._check_s(s) for s in schedule)
    betas = tuple(_solver._check_positive(b, "betas") for b in betas)
    if not schedule and not betas:
        raise ValueError("schedule and betas cannot both be empty")
    dtype = _solver.compute_dtype()
    steps = _solver.default_steps(n) if steps is None else _solver._check_int(steps, "steps", 1)
    if tol is None:
        tol = 1e-10 if dtype == jnp.float64 else 1e-5
    tol = _solver._check_positive(tol, "tol")
    x = np.asarray(_solver.initial_points(n, dim, restarts, key, init, dtype))

    fun = _solver.SphereObjective("euclidean", 0.0)
    opts = _solver.solver_options(n, dim)
    stages = [_solver.riesz_params(s) for s in schedule]
    stages += [_solver.softmin_params(b) for b in betas]
    for k, params in enumerate(stages):
        # Intermediate stages only need to bring the restarts near the next stage's minimiser.
        stage_tol = tol if k == len(stages) - 1 else max(tol, 1e-6)
        # The saddle check of minimize_energy on every stage (one compilation for all): a
        # symmetric start (points on one great circle) otherwise keeps its symmetry throughout.
        xs, f, _, _, _ = _solver.run_restarts(
            fun, x, params, steps=steps, tol=stage_tol, opts=opts, checks=_solver.SADDLE_CHECKS
        )
        xs, f = np.asarray(xs), np.asarray(f)
        ok = np.isfinite(f)[:, None, None] & np.all(np.isfinite(xs), axis=(1, 2), keepdims=True)
        x = np.where(ok, xs, x)  # a stage that overflows (float32, large s) keeps the previous

    X = np.asarray(x, np.float64)
    X = X / np.linalg.norm(X, axis=-1, keepdims=True)
    C = X @ np.swapaxes(X, 1, 2)
    iu = np.triu_indices(n, 1)
    max_cos = np.max(C[:, iu[0], iu[1]], axis=1)
    angles_deg = np.degrees(np.arccos(np.clip(max_cos, -1.0, 1.0)))

    order = np.argsort(max_cos, kind="stable")
    best = int(order[0])
    points, best_cos = X[best], float(max_cos[best])
    active, residual = np.zeros((0, 2), np.int64), float("nan")
    polished: list[float] = []
    for r in order:
        if len(polished) >= polish_top:
            break
        if any(abs(max_cos[r] - m) < 1e-9 for m in polished):
            continue  # same configuration (up to symmetry) as one already polished
        polished.append(float(max_cos[r]))
        Xp, act, res = polish(X[r])
        mc = _max_cos(Xp)
        if mc < best_cos:
            best, points, best_cos, active, residual = int(r), Xp, mc, act, res
    angle = _angle(best_cos)
    return TammesResult(
        points=points,
        min_angle=angle,
        min_angle_deg=math.degrees(angle),
        min_angles_deg=angles_deg,
        active_pairs=active,
        kkt_residual=residual,
        best=best,
    )
