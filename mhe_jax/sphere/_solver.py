r"""Minimum-energy points on the sphere ``S^{dim-1}``: a Riemannian L-BFGS over restarts.

The energy is the physics convention ``E(x) = Σ_{i<j} f_s(dist(x_i, x_j))`` of the core kernel
(``mhe_jax._kernels``, the only implementation of ``f_s``): :func:`physics_energy` is
:func:`mhe_jax.hyperspherical_energy` rescaled (``= mean over ordered pairs × n(n−1)/2``), and
the solver minimises the same kernel of the Gram matrix of its unit rows
(:func:`unit_rows_energy`; equal value and tangent gradient, tested; with ``s`` compiled in, as
in :func:`basin_hopping`, :func:`gram_energy` builds its gradient by hand and costs several
times less, ``benchmarks/RESULTS.md``).

Optimisation is on the product manifold ``(S^{dim-1})^n`` (rows of ``x``):

* Riemannian gradient: the Euclidean gradient with its radial part projected out,
  ``grad_i = (I − x_i x_iᵀ) ∇_i E``;
* retraction: ``R_x(v) = normalise_rows(x + v)``;
* L-BFGS two-loop recursion with the stored pairs ``(s_k, y_k)`` moved to the current tangent
  space by projection (vector transport by projection), pairs with ``⟨s, y⟩ ≤ 0`` skipped;
* line search along the retraction curve ``t ↦ R_x(t d)``: Armijo, or Hager–Zhang's approximate
  Wolfe test near the minimum where the energy no longer resolves Armijo's decrease; safeguarded
  quadratic backtracking;
* stop when ``‖grad‖ ≤ tol · max(|E|, 1)`` (or at round-off stagnation, or after ``steps``).

Restarts are ``jax.vmap``-ed inside one ``jax.jit``; each runs in a ``jax.lax.while_loop``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

import mhe_jax
from mhe_jax import _checks, _kernels

Array = jax.Array

__all__ = ["EnergyResult", "minimize_energy", "physics_energy"]

# Status codes of one restart.
RUNNING, CONVERGED, LINESEARCH_FAILED, STALLED, MAX_STEPS = 0, 1, 2, 3, 4
STATUS_NAMES = {
    RUNNING: "running",
    CONVERGED: "converged",
    LINESEARCH_FAILED: "line search failed (round-off)",
    STALLED: "stalled (round-off)",
    MAX_STEPS: "max steps",
}


# --------------------------------------------------------------------------------------------
# Manifold helpers (rows of x are points on the unit sphere).
# --------------------------------------------------------------------------------------------


def normalize_rows(x: Array) -> Array:
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def project(x: Array, v: Array) -> Array:
    """Tangent projection ``v_i − (v_i·x_i) x_i`` (broadcasts over leading axes of ``v``)."""
    return v - jnp.sum(v * x, axis=-1, keepdims=True) * x


def _inner(a: Array, b: Array) -> Array:
    return jnp.sum(a * b)


def _max_row_norm(v: Array) -> Array:
    return jnp.max(jnp.linalg.norm(v, axis=-1))


def compute_dtype():
    """float64 when ``jax_enable_x64`` is on, else float32."""
    return jnp.float64 if jax.config.read("jax_enable_x64") else jnp.float32


# --------------------------------------------------------------------------------------------
# The energy (core code, physics convention).
# --------------------------------------------------------------------------------------------


def physics_energy(
    x: Array, s: ArrayLike = 1.0, distance: str = "euclidean", eps: ArrayLike = 0.0
) -> Array:
    r"""``Σ_{i<j} f_s(dist(x̂_i, x̂_j))`` of the rows of ``x`` (pairs once, unnormalised).

    ``f_s(r) = r^{−s}`` (s > 0) or ``log(1/r)`` (s = 0); this is
    :func:`mhe_jax.hyperspherical_energy` (mean over ordered pairs) times ``n(n−1)/2``.
    """
    n = x.shape[0]
    mean = mhe_jax.hyperspherical_energy(x, neuron_axis=0, s=s, distance=distance, eps=eps)
    return mean * (n * (n - 1) / 2)


def unit_rows_energy(x: Array, s: ArrayLike, distance: str = "euclidean", eps: ArrayLike = 0.0
                     ) -> Array:
    r"""``Σ_{i<j} f_s(dist(x_i, x_j))`` of rows ``x`` that are already unit vectors.

    The solver's form of :func:`physics_energy`: the same kernel
    (``mhe_jax._kernels.pair_energy``, the core code) of the Gram matrix ``x xᵀ``, without the
    normalisation of the rows and its derivative, which the solver does not need (it evaluates
    at unit rows only and projects the gradient onto the tangent spaces, where the two
    gradients agree). With ``s`` traced a value and gradient cost about what
    :func:`physics_energy` costs; with ``s`` a Python number (compiled in), euclidean, the
    search uses :func:`gram_energy`, 3.3–5x cheaper for ``n`` = 122–470
    (``benchmarks/RESULTS.md``). The diagonal is evaluated at ``c = 0`` and masked, so it
    adds neither a value nor a gradient.
    """
    eye, c = _masked_gram(x)
    h = _kernels.pair_energy(c, s=s, distance=distance, eps=eps)
    return _half_sum_off_diagonal(h, eye)


def _masked_gram(x: Array) -> tuple[Array, Array]:
    """The diagonal mask and the Gram matrix ``x xᵀ`` of ``x`` with its diagonal set to 0 (the
    kernel is evaluated there at ``c = 0``, then masked)."""
    eye = jnp.eye(x.shape[0], dtype=bool)
    return eye, jnp.where(eye, 0.0, jnp.matmul(x, x.T, precision=lax.Precision.HIGHEST))


def _half_sum_off_diagonal(h: Array, eye: Array) -> Array:
    """``Σ_{i<j} h_ij`` of a symmetric ``h``."""
    return 0.5 * jnp.sum(jnp.where(eye, 0.0, h))


def _gram_energy_parts(x: Array, s: float, distance: str, eps: float):
    """Energy of unit rows ``x`` and the masked kernel derivative ``h'(c)`` of their Gram
    matrix, from one forward-mode pass over the pairs (the core kernel's ``jax.jvp``)."""
    eye, c = _masked_gram(x)

    def kernel(c):
        return _kernels.pair_energy(c, s=s, distance=distance, eps=eps)

    h, dh = jax.jvp(kernel, (c,), (jnp.ones_like(c),))
    return _half_sum_off_diagonal(h, eye), jnp.where(eye, 0.0, dh)


@partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def gram_energy(x: Array, s: float, distance: str, eps: float) -> Array:
    r""":func:`unit_rows_energy` with ``s`` a Python number and a hand-built gradient.

    ``E = ½ Σ_{i≠j} h(c_ij)`` with ``c = x xᵀ`` and the core kernel ``h``, so
    ``∇_{x_i} E = Σ_{j≠i} h'(c_ij) x_j``: one pass over the pairs gives ``h`` and ``h'``
    (forward mode), then one product ``h'(c) x``, where reverse-mode autodiff of the same
    function takes several passes (the value and gradient cost 1.3x less at N = 470). Equal to
    the autodiff gradient to round-off (tested).
    """
    return _gram_energy_parts(x, s, distance, eps)[0]


def _gram_energy_fwd(x, s, distance, eps):
    e, dh = _gram_energy_parts(x, s, distance, eps)
    return e, (x, dh)


def _gram_energy_bwd(s, distance, eps, res, ct):
    x, dh = res
    return (ct * jnp.matmul(dh, x, precision=lax.Precision.HIGHEST),)


gram_energy.defvjp(_gram_energy_fwd, _gram_energy_bwd)


def _solver_eps(distance: str, dtype, power: float | None = None) -> float:
    """Guard used while optimising, below floating-point resolution (the values are those of
    ``eps = 0``). Angular distance: ``ε_mach²`` keeps the arccos derivative finite at antipodal
    pairs (a relative change ``~1e-32``). Euclidean: 0 (exact) when ``s`` is traced; with ``s``
    compiled in (``power``), the smallest ``eps`` for which ``f_s`` cannot saturate, so that the
    kernel's saturation continuation (a log and an exp per pair) is left out of the program: its
    value and gradient then cost 2.5x less at s = 1 (N = 470, ``benchmarks/RESULTS.md``). That
    ``eps`` is ``exp(2 − 2L/s)`` (``L``: :func:`mhe_jax._kernels.saturation_log`), at least
    the smallest normal float, and used only when it is at most ``ε_mach²`` (float64: 2e-308 at
    s ≤ 1, 1e-294 at s = 2, 1e-117 at s = 5; float32 up to s = 3)."""
    eps2 = float(jnp.finfo(dtype).eps) ** 2
    if distance != "euclidean":
        return eps2
    if power is None or power == 0.0:
        return 0.0
    saturation = _kernels.saturation_log(power, dtype)
    eps = max(float(jnp.finfo(dtype).tiny), math.exp(min(2.0 - 2.0 * saturation / power, 0.0)))
    return eps if eps <= eps2 else 0.0


def compiled_objective(distance: str, s: float, dtype) -> SphereObjective:
    """The objective of a search that compiles ``s`` in (:func:`basin_hopping`): the Riesz
    energy with ``power = s`` and the guard of :func:`_solver_eps` for it; the log-energy
    form of large ``s`` (:func:`energy_params` mode 1) keeps ``s`` traced."""
    power = s if int(energy_params(s)["mode"]) == 0 else None
    return SphereObjective(distance, _solver_eps(distance, dtype, power), power)


# --------------------------------------------------------------------------------------------
# Riemannian L-BFGS on (S^{dim-1})^n, one start.
# --------------------------------------------------------------------------------------------


class _Options(NamedTuple):
    memory: int
    first_step: float  # largest point displacement of a steepest-descent step (chord length)
    max_step: float  # largest point displacement of any step
    max_linesearch: int
    patience: int  # stop after this many consecutive iterations without resolvable decrease


class _State(NamedTuple):
    x: Array
    f: Array
    g: Array
    S: Array  # (m, n, dim), newest last
    Y: Array
    valid: Array  # (m,) bool
    k: Array
    gnorm: Array
    status: Array
    stall: Array


def _two_loop(g, S, Y, valid, first_step):
    """``−H g`` by the L-BFGS two-loop recursion (all vectors already in T_x)."""
    m = S.shape[0]
    sy = jnp.sum(S * Y, axis=(1, 2))
    yy = jnp.sum(Y * Y, axis=(1, 2))
    rho = jnp.where(valid, 1.0 / jnp.where(valid, sy, 1.0), 0.0)

    def backward(q, i):
        a = rho[i] * _inner(S[i], q)
        return q - a * Y[i], a

    q, alphas = lax.scan(backward, g, jnp.arange(m - 1, -1, -1))
    alphas = alphas[::-1]
    newest = valid[m - 1]
    gamma = jnp.where(newest, sy[m - 1] / jnp.where(newest, yy[m - 1], 1.0), 0.0)
    # Without memory: steepest descent scaled so that the largest point moves by first_step.
    gamma0 = first_step / jnp.maximum(_max_row_norm(g), jnp.finfo(g.dtype).tiny)
    r = jnp.where(newest, gamma, gamma0) * q

    def forward(r, i):
        b = rho[i] * _inner(Y[i], r)
        return r + S[i] * (alphas[i] - b), None

    r, _ = lax.scan(forward, r, jnp.arange(m))
    return -r


def lbfgs_start(x0: Array, opts: _Options) -> _State:
    """The state of a new minimisation from ``x0`` (rows normalised). Its first iteration only
    evaluates ``x0`` (``f = +inf`` and ``g = 0`` give ``d = 0``, and the line search accepts
    its trial at ``x0``): one copy of the objective's graph in the program instead of two."""
    x0 = normalize_rows(x0)
    dtype = x0.dtype
    m = opts.memory
    return _State(
        x=x0,
        f=jnp.asarray(jnp.inf, dtype),
        g=jnp.zeros_like(x0),
        S=jnp.zeros((m,) + x0.shape, dtype),
        Y=jnp.zeros((m,) + x0.shape, dtype),
        valid=jnp.zeros((m,), bool),
        k=jnp.asarray(-1, jnp.int32),
        gnorm=jnp.asarray(jnp.inf, dtype),
        status=jnp.asarray(RUNNING, jnp.int32),
        stall=jnp.zeros((), jnp.int32),
    )


def lbfgs_iteration(fun: Callable, params, tol, steps, opts: _Options) -> Callable:
    """One Riemannian L-BFGS iteration ``_State -> _State`` for ``fun(x, params)`` over rows of
    ``x`` on the unit sphere; it sets ``status`` when the minimisation ends. ``tol`` and
    ``steps`` may be traced (no recompilation)."""
    value_and_grad = jax.value_and_grad(fun)

    def evaluate(x):
        f, g = value_and_grad(x, params)
        return f, project(x, g)

    def scale(f):
        return jnp.maximum(jnp.abs(f), 1.0)

    c1, delta = 1e-4, 0.1

    def body(st: _State) -> _State:
        x, f, g = st.x, st.f, st.g
        dtype = x.dtype
        eps_mach = float(jnp.finfo(dtype).eps)
        f_slack = 1e3 * eps_mach  # relative energy noise tolerated by the approximate Wolfe test
        # Vector transport by projection of the stored pairs; drop pairs that lost curvature.
        S = project(x, st.S)
        Y = project(x, st.Y)
        sy = jnp.sum(S * Y, axis=(1, 2))
        ss = jnp.sum(S * S, axis=(1, 2))
        yy = jnp.sum(Y * Y, axis=(1, 2))
        valid = st.valid & (sy > 1e-10 * jnp.sqrt(ss * yy))
        d = _two_loop(g, S, Y, valid, opts.first_step)
        gd = _inner(g, d)
        descent = (gd < 0) & jnp.isfinite(gd)
        # Reset to (scaled) steepest descent when the quasi-Newton direction is not a descent one.
        valid = valid & descent
        d_sd = -g * (opts.first_step / jnp.maximum(_max_row_norm(g), jnp.finfo(dtype).tiny))
        d = jnp.where(descent, d, d_sd)
        gd = jnp.where(descent, gd, _inner(g, d_sd))
        t0 = jnp.minimum(1.0, opts.max_step / jnp.maximum(_max_row_norm(d), jnp.finfo(dtype).tiny))

        # Backtracking along the retraction curve t ↦ R_x(t d).
        def ls_cond(c):
            t, j, ok, *_ = c
            return (~ok) & (j < opts.max_linesearch)

        def ls_body(c):
            t, j, ok, _, _, _ = c
            y = x + t * d
            xt = normalize_rows(y)
            ft, gt = evaluate(xt)
            dxt = project(xt, d) / jnp.linalg.norm(y, axis=-1, keepdims=True)
            dphi = _inner(gt, dxt)
            finite = jnp.isfinite(ft) & jnp.all(jnp.isfinite(gt))
            armijo = ft <= f + c1 * t * gd  # always true at the first (evaluation) pass
            approx_wolfe = (ft <= f + f_slack * jnp.abs(f)) & (dphi <= (2 * delta - 1) * gd)
            ok = finite & (armijo | approx_wolfe)
            # Quadratic interpolation of φ on [0, t], safeguarded to [0.1 t, 0.5 t].
            denom = 2.0 * (ft - f - gd * t)
            t_q = jnp.where(denom > 0, -gd * t * t / jnp.where(denom > 0, denom, 1.0), 0.5 * t)
            t_next = jnp.where(finite, jnp.clip(t_q, 0.1 * t, 0.5 * t), 0.1 * t)
            return (jnp.where(ok, t, t_next), j + 1, ok, xt, ft, gt)

        init = (t0, jnp.zeros((), jnp.int32), jnp.zeros((), bool), x, f, g)
        t, _, ok, xt, ft, gt = lax.while_loop(ls_cond, ls_body, init)

        # Curvature pair in T_{x_new}: transported step and gradient difference.
        s_new = project(xt, t * d)
        y_new = gt - project(xt, g)
        S_new = jnp.concatenate([S[1:], s_new[None]], axis=0)
        Y_new = jnp.concatenate([Y[1:], y_new[None]], axis=0)
        sy_new = _inner(s_new, y_new)
        good_pair = sy_new > 1e-10 * jnp.linalg.norm(s_new) * jnp.linalg.norm(y_new)
        valid_new = jnp.concatenate([valid[1:], good_pair[None]])

        gnorm = jnp.linalg.norm(gt)
        no_progress = jnp.isfinite(f) & (ft >= f - 4 * eps_mach * jnp.abs(f))
        stall = jnp.where(no_progress, st.stall + 1, 0)
        k = st.k + 1
        status = jnp.where(
            ~ok,
            LINESEARCH_FAILED,
            jnp.where(
                gnorm <= tol * scale(ft),
                CONVERGED,
                jnp.where(
                    stall >= opts.patience, STALLED, jnp.where(k >= steps, MAX_STEPS, RUNNING)
                ),
            ),
        ).astype(jnp.int32)
        new = _State(xt, ft, gt, S_new, Y_new, valid_new, k, gnorm, status, stall)
        # A failed line search keeps the previous point (and its gradient norm).
        kept = st._replace(k=k, status=status)
        return jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, kept)

    return body


def _riemannian_lbfgs(
    fun: Callable, x0: Array, params, tol, steps, opts: _Options, checks: int = 0
):
    """Minimise ``fun(x, params)`` over rows of ``x`` on the unit sphere; returns (x, f, ‖grad‖,
    iterations, status). ``tol`` and ``steps`` are traced (no recompilation). ``checks > 0``:
    followed by the saddle check of :func:`_saddle_checked` (``checks`` is static)."""

    def minimise(st: _State, steps) -> _State:
        body = lbfgs_iteration(fun, params, tol, steps, opts)
        return lax.while_loop(lambda st: st.status == RUNNING, body, st)

    if checks == 0:
        st = minimise(lbfgs_start(x0, opts), steps)
        return st.x, st.f, st.gnorm, st.k, st.status
    return _saddle_checked(minimise, x0, tol, steps, opts, checks)


# Saddle check (issue #29): the perturbation's size relative to the typical spacing
# n^{-1/(dim-1)} and its floor in units of √ε_mach, the PRNG seed of its directions, the
# iteration cap of a check's re-minimisation, and the number of checks (minimize_energy's
# default).
SADDLE_KICK = 1e-3
SADDLE_KICK_FLOOR = 8.0
SADDLE_SEED = 29
SADDLE_CHECK_STEPS = 10
SADDLE_CHECKS = 3
# Statuses whose point is a stationary point to the tolerance or to round-off: checked.
_CHECKED = (CONVERGED, LINESEARCH_FAILED, STALLED)


def saddle_kick(n: int, dim: int, dtype) -> float:
    """Size (chord, per point) of the saddle check's perturbation: ``1e-3`` of the typical
    spacing ``n^{−1/(dim−1)}``, at least ``8 √ε_mach`` (float32: 2.8e-3; float64: 1.2e-7)."""
    floor = SADDLE_KICK_FLOOR * math.sqrt(float(jnp.finfo(dtype).eps))
    return max(SADDLE_KICK * n ** (-1.0 / (dim - 1)), floor)


def _kick(x: Array, round_: Array) -> Array:
    """``x`` moved by the saddle check's deterministic tangent perturbation number ``round_``
    (key ``fold_in(key(SADDLE_SEED), round_)``: the same for every restart and call), rows of
    expected chord :func:`saddle_kick`."""
    n, dim = x.shape
    key = jax.random.fold_in(jax.random.key(SADDLE_SEED), round_)
    v = project(x, jax.random.normal(key, x.shape, x.dtype))
    v = v * (saddle_kick(n, dim, x.dtype) / math.sqrt(max(dim - 1, 1)))
    return normalize_rows(x + v)


def _saddle_checked(minimise: Callable, x0: Array, tol, steps, opts: _Options, checks: int):
    """Minimise from ``x0`` (``steps``), then check the point reached, at most ``checks`` times:
    move it by :func:`_kick` and minimise for at most ``SADDLE_CHECK_STEPS`` iterations (the
    L-BFGS memory kept). A check that ends lower than the checked point by more than
    ``max(tol, 64 ε_mach) · max(|f|, 1)`` found descent (a saddle): the search continues from
    there (full ``steps``) and its end is checked in turn; otherwise the checked result stands
    (its points, energy, status) and the check ends. Only statuses 1–3 are checked. One copy of
    the L-BFGS loop, in a ``while_loop`` over rounds; the iterations of all rounds are summed."""
    dtype = x0.dtype
    rel = jnp.maximum(tol, 64 * float(jnp.finfo(dtype).eps))
    inf = jnp.asarray(jnp.inf, dtype)
    check_steps = jnp.minimum(steps, SADDLE_CHECK_STEPS)

    def cond(c):
        return c[0].status == RUNNING

    def body(c):
        start, best, iters, done, is_check = c
        st = minimise(start, jnp.where(is_check, check_steps, steps))
        bf = best[1]
        dropped = st.f < bf - rel * jnp.maximum(jnp.abs(bf), 1.0)
        accept = ~is_check | dropped
        best = jax.tree.map(
            lambda a, b: jnp.where(accept, a, b), (st.x, st.f, st.gnorm, st.status), best
        )
        checked = jnp.isin(st.status, jnp.asarray(_CHECKED, jnp.int32))
        # After a full run: check it (if checks are left). After a check that found descent:
        # continue (no kick) unless the check already converged, then check that.
        resume = is_check & dropped & (st.status == MAX_STEPS)
        kick = accept & checked & (done < checks)
        go_on = resume | kick
        nxt = st._replace(
            x=jnp.where(kick, _kick(st.x, done), st.x),
            f=inf,
            g=jnp.zeros_like(st.g),
            k=jnp.asarray(-1, jnp.int32),
            gnorm=inf,
            status=jnp.where(go_on, RUNNING, st.status).astype(jnp.int32),
            stall=jnp.zeros((), jnp.int32),
        )
        return nxt, best, iters + jnp.maximum(st.k, 0), done + kick.astype(jnp.int32), kick

    start = lbfgs_start(x0, opts)
    best = (start.x, inf, inf, start.status)
    zero = jnp.zeros((), jnp.int32)
    init = (start, best, zero, zero, jnp.zeros((), bool))
    _, (x, f, gnorm, status), iters, _, _ = lax.while_loop(cond, body, init)
    return x, f, gnorm, iters, status


def _solve_batch_impl(fun, x0s, params, tol, steps, opts: _Options, checks: int = 0):
    """``vmap`` of the Riemannian L-BFGS over restarts (leading axis of ``x0s``)."""
    return jax.vmap(lambda x0: _riemannian_lbfgs(fun, x0, params, tol, steps, opts, checks))(
        x0s
    )


_solve_batch = jax.jit(_solve_batch_impl, static_argnames=("fun", "opts", "checks"))
# Small problems run in milliseconds: compile them without LLVM optimisations (about half the
# compile time; a few times slower to run, which only matters for large n).
_solve_batch_small = jax.jit(
    _solve_batch_impl,
    static_argnames=("fun", "opts", "checks"),
    compiler_options={"xla_backend_optimization_level": 0},
)
SMALL_N = 32


# --------------------------------------------------------------------------------------------
# Arguments.
# --------------------------------------------------------------------------------------------


def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Integral,)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_s(s) -> float:
    if isinstance(s, (bool, np.bool_)) or not isinstance(s, numbers.Real):
        raise TypeError(f"s must be a real number, got {type(s).__name__}")
    s = float(s)
    if not math.isfinite(s) or s < 0:
        raise ValueError(f"s must be a finite real >= 0, got {s!r}")
    return s


def _check_positive(value, name: str) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite real > 0, got {value!r}")
    return value


def initial_points(n: int, dim: int, restarts: int | None, key, init, dtype):
    """Starts of shape (restarts, n, dim): ``init`` if given, else uniform random on the sphere."""
    if init is not None:
        x0 = jnp.asarray(init)
        if x0.ndim == 2:
            x0 = x0[None]
        if x0.ndim != 3 or x0.shape[1:] != (n, dim):
            raise ValueError(
                f"init must have shape (n, dim) = ({n}, {dim}) or (restarts, {n}, {dim}), "
                f"got shape {tuple(jnp.shape(init))}"
            )
        if restarts is not None and x0.shape[0] != restarts:
            raise ValueError(
                f"init holds {x0.shape[0]} start(s) but restarts={restarts}; pass restarts=None "
                "or a matching number"
            )
        if not jnp.issubdtype(x0.dtype, jnp.floating) and not jnp.issubdtype(
            x0.dtype, jnp.integer
        ):
            raise TypeError(f"init must be a real array, got dtype {x0.dtype}")
        x0 = np.asarray(x0, np.float64)
        norms = np.linalg.norm(x0, axis=-1, keepdims=True)
        if not np.all(np.isfinite(x0)) or not np.all(norms > 0):
            raise ValueError("init must be finite with non-zero rows (points on the sphere)")
        x0 = x0 / norms
        check_distinct(x0, dtype)
        return jnp.asarray(x0, dtype)
    restarts = 16 if restarts is None else restarts
    if key is None:
        key = jax.random.key(0)
    elif isinstance(key, numbers.Integral) and not isinstance(key, bool):
        key = jax.random.key(int(key))
    # NumPy generator seeded by the key's bits: deterministic per key, nothing to compile.
    seed = np.asarray(jax.random.key_data(key)).ravel().astype(np.uint64).tolist()
    x0 = np.random.default_rng(seed).standard_normal((restarts, n, dim))
    return jnp.asarray(x0 / np.linalg.norm(x0, axis=-1, keepdims=True), dtype)


def min_chord(dtype) -> float:
    """Smallest chord between two start points that the solver resolves in ``dtype``:
    ``2 √ε_mach`` (float32: 6.9e-4, float64: 3.0e-8). Closer points have a Gram distance
    ``2 − 2 x_i·x_j`` of at most 4 ulps; below about half of this it rounds to 0 (measured:
    chord 2e-4 in float32), where the energy is singular and its gradient vanishes by symmetry."""
    return 2.0 * math.sqrt(float(jnp.finfo(dtype).eps))


def check_distinct(x0s: np.ndarray, dtype, name: str = "init") -> None:
    """Raise ``ValueError`` naming ``name`` when two rows of a start in ``x0s`` (``(starts, n,
    dim)``, unit rows, float64) are closer than :func:`min_chord`: coincident points are a
    singular, symmetric start (equal rows stay equal under the solver's updates, and the energy
    there is infinite, or saturated with a zero gradient), not a configuration to minimise."""
    limit = min_chord(dtype)
    n = x0s.shape[1]
    for r, x in enumerate(x0s):
        # Chord² = ‖x_i − x_j‖² = 2 − 2 x_i·x_j for unit rows (float64: error ~4e-16, below
        # the float64 limit 9e-16), in blocks of rows to bound the memory.
        for lo in range(0, n, 1024):
            d2 = 2.0 - 2.0 * (x[lo:lo + 1024] @ x.T)
            rows = np.arange(lo, min(lo + 1024, n))
            d2[rows[:, None] >= np.arange(n)[None, :]] = np.inf
            k = int(np.argmin(d2))
            i, j = divmod(k, n)
            if d2[i, j] < limit * limit:
                where = f"start {r}: " if x0s.shape[0] > 1 else ""
                raise ValueError(
                    f"{name} has coincident points: {where}rows {lo + i} and {j} are "
                    f"{math.sqrt(max(float(d2[i, j]), 0.0)):.3g} apart (chord, after "
                    f"normalisation), closer than the {limit:.2g} the "
                    f"{jnp.dtype(dtype).name} solver resolves; the energy is singular there "
                    "and the symmetric start cannot separate them. Pass distinct points "
                    f"(perturb the duplicates), or leave {name} out for random starts"
                )


def default_steps(n: int) -> int:
    return max(2000, 40 * n)


# --------------------------------------------------------------------------------------------
# Public API.
# --------------------------------------------------------------------------------------------


class EnergyResult(NamedTuple):
    """Result of :func:`minimize_energy`.

    Attributes:
      points: ``(n, dim)`` best configuration, unit rows.
      energy: its energy ``Σ_{i<j} f_s(dist(x_i, x_j))`` (physics convention, no guard).
      energies: ``(restarts,)`` final energy of every restart.
      iterations: ``(restarts,)`` L-BFGS iterations of every restart (those of the saddle check
        of :func:`minimize_energy` included).
      grad_norm: final Riemannian gradient norm (Frobenius over all points) of the best restart.
      grad_norms: ``(restarts,)`` the same for every restart.
      status: ``(restarts,)`` stop reason, see :data:`STATUS_NAMES` (1: gradient tolerance,
        2/3: round-off limit reached, 4: ``steps`` exhausted).
      best: index of the best restart.
      hops: :func:`~mhe_jax.sphere.basin_hopping` only: the most hops any chain ran (chains
        hop independently; ``None`` for :func:`minimize_energy`).
      best_hop: :func:`~mhe_jax.sphere.basin_hopping` only: the hop of its chain at which the
        returned minimum was first reached (0: the initial local minimisation).
      minimisations: :func:`~mhe_jax.sphere.basin_hopping` only: local minimisations run by
        all chains together, the initial ones included.
      seconds: :func:`~mhe_jax.sphere.basin_hopping` only: wall-clock seconds of the search
        (compilation included); ``seconds_to_best``: until ``best_hop``.
      swaps: :func:`~mhe_jax.sphere.basin_hopping` only: accepted replica exchanges of
        temperature between chains (0 when every chain has the same temperature).
    """

    points: Array
    energy: Array
    energies: Array
    iterations: Array
    grad_norm: Array
    grad_norms: Array
    status: Array
    best: int
    hops: int | None = None
    best_hop: int | None = None
    minimisations: int | None = None
    seconds: float | None = None
    seconds_to_best: float | None = None
    swaps: int | None = None


def softmin_objective(x: Array, beta, distance: str = "euclidean") -> Array:
    r"""``(1/β) log Σ_{i<j} dist(x_i, x_j)^{−β}`` computed stably (log-sum-exp over pairs).

    Equal to ``log(E_β)/β`` (same minimisers as the Riesz β-energy, finite for every β and
    configuration with distinct points: no overflow of ``r^{−β}``) and, as ``β → ∞``, to
    ``−log min_{i<j} dist(x_i, x_j)``: the smooth max–min objective of the Tammes problem.
    ``dist`` is the chord ``‖x_i − x_j‖`` or the angle ``atan2(‖x_i × x_j‖, x_i·x_j)``; rows of
    ``x`` must be unit vectors.
    """
    n = x.shape[0]
    eye = jnp.eye(n, dtype=bool)
    c = jnp.matmul(x, x.T, precision=lax.Precision.HIGHEST)
    tiny = jnp.finfo(x.dtype).tiny
    if distance == "euclidean":
        log_r2 = jnp.log(jnp.where(eye, 1.0, jnp.maximum(2.0 - 2.0 * c, tiny)))
    else:
        # ‖x_i × x_j‖² = 1 − c² for unit rows; the guard keeps atan2's derivative finite.
        sin = jnp.sqrt(jnp.maximum((1.0 - c) * (1.0 + c), 0.0) + tiny)
        theta = jnp.arctan2(sin, c)
        log_r2 = 2.0 * jnp.log(jnp.where(eye, 1.0, jnp.maximum(theta, tiny)))
    v = jnp.where(eye, -jnp.inf, -0.5 * beta * log_r2)
    m = lax.stop_gradient(jnp.max(v))
    # Σ over ordered pairs i ≠ j counts each pair twice: subtract log 2.
    return (m + jnp.log(jnp.sum(jnp.exp(v - m))) - math.log(2.0)) / beta


class SphereObjective(NamedTuple):
    """The solver's objective; hashable, a static argument of the jitted solver.

    ``params["mode"] == 0``: the Riesz energy ``Σ_{i<j} f_s(dist(x_i, x_j))`` of unit rows
    (:func:`unit_rows_energy`, the core kernel) with ``s = params["s"]``, or with the static
    ``power`` when it is set (compiled in: the cheaper exact forms of ``f_s`` for s = 0, 1, 2
    and no traced ``pow``; one compilation per ``s``; the objective is then this energy only,
    for ``mode == 0`` parameters, which :func:`check_power` asserts; euclidean: through
    :func:`gram_energy`, whose gradient is built by hand); ``mode == 1``:
    :func:`softmin_objective` with ``β = params["beta"]`` (``log(E_β)/β``, for the same
    distance). ``s``, ``beta`` and ``mode`` are traced, so one compilation per shape serves the
    Thomson/Riesz problems and every stage of the Tammes continuation.
    """

    distance: str
    eps: float
    power: float | None = None

    def __call__(self, x, params):
        if self.power is not None and self.distance == "euclidean":
            return gram_energy(x, self.power, self.distance, self.eps)
        if self.power is not None:
            # Angular: autodiff, whose rounding at antipodal pairs (θ'(c) ~ 1/sin θ) lets the
            # solver resolve the octahedron to ~1e-7 (test_every_s_and_distance).
            return unit_rows_energy(x, s=self.power, distance=self.distance, eps=self.eps)

        def riesz(x):
            return unit_rows_energy(x, s=params["s"], distance=self.distance, eps=self.eps)

        def soft(x):
            return softmin_objective(x, params["beta"], self.distance)

        return lax.cond(params["mode"] == 0, riesz, soft, x)


def check_power(fun: SphereObjective, params) -> None:
    """A static ``power`` is only valid with the Riesz parameters of that exponent."""
    if fun.power is not None and (
        int(params["mode"]) != 0 or float(params["s"]) != float(fun.power)
    ):
        raise ValueError(f"objective with power={fun.power} got parameters {params}")


def riesz_params(s) -> dict:
    return {"s": s, "beta": 1.0, "mode": 0}


def softmin_params(beta) -> dict:
    return {"s": 1.0, "beta": beta, "mode": 1}


# Above this exponent the solver minimises log(E_s)/s instead of E_s (same minimisers).
LOG_OBJECTIVE_MIN_S = 6.0


def energy_params(s: float) -> dict:
    r"""Solver parameters for the Riesz ``s``-energy: ``E_s`` itself for ``s <
    LOG_OBJECTIVE_MIN_S``, else the log-energy ``log(E_s)/s`` (:func:`softmin_objective`).

    Both have the same minimisers. For large ``s`` the energy is dominated by the closest pairs:
    ``E_s`` spans hundreds of orders of magnitude between a random start and the minimum
    (``0.4^{−50} ≈ 1e20``), overflows float32 (``r^{−s} > 3e38`` for ``r < 0.17`` at ``s = 50``)
    and is so badly conditioned that L-BFGS stalls far from the minimum; ``log(E_s)/s`` is
    computed by log-sum-exp (finite for distinct points) and its gradient is the softmax-
    weighted mean pair force, bounded for any ``s``.
    """
    return softmin_params(s) if s >= LOG_OBJECTIVE_MIN_S else riesz_params(s)


def objective_to_energy(f, params) -> np.ndarray:
    """Map solver objective values back to energies ``E_s`` (float64 NumPy): identity for the
    energy, ``exp(s f)`` for the log-energy."""
    f = np.asarray(f, np.float64)
    if int(params["mode"]) == 1:
        with np.errstate(over="ignore"):
            return np.exp(float(params["beta"]) * f)
    return f


def solver_options(n: int, dim: int, memory: int = 10) -> _Options:
    # First (steepest-descent) step: a fraction of the typical spacing n^{-1/(dim-1)}.
    first_step = min(0.2 * n ** (-1.0 / (dim - 1)), 0.5)
    return _Options(
        memory=memory, first_step=first_step, max_step=0.5, max_linesearch=40, patience=10
    )


def _as_dtype(params, dtype):
    # NumPy scalars: no device conversion (and no tiny compilations) per call.
    return {k: np.asarray(v, np.int32 if k == "mode" else dtype) for k, v in params.items()}


def run_restarts(
    fun, x0s, params, *, steps: int, tol: float, opts: _Options, checks: int = 0
):
    """Run the jitted, vmapped solver; returns (points, f, grad norms, iterations, status).
    ``checks``: re-minimisations of the saddle check (0: none; see :func:`minimize_energy`)."""
    check_power(fun, params)
    dtype = x0s.dtype
    solve = _solve_batch_small if x0s.shape[1] <= SMALL_N else _solve_batch
    tol_array, steps_array = np.asarray(tol, dtype), np.asarray(steps, np.int32)
    return solve(fun, x0s, _as_dtype(params, dtype), tol_array, steps_array, opts, checks)


def minimize_energy(
    n: int,
    dim: int = 3,
    *,
    s: float = 1.0,
    distance: str = "euclidean",
    restarts: int | None = None,
    key: jax.Array | int | None = None,
    init: ArrayLike | None = None,
    steps: int | None = None,
    tol: float | None = None,
    memory: int = 10,
    saddle_checks: int = SADDLE_CHECKS,
) -> EnergyResult:
    r"""Minimum-energy configuration of ``n`` points on the unit sphere ``S^{dim−1} ⊂ R^dim``.

    Minimises the Riesz ``s``-energy in the physics convention (each pair once, unnormalised)

        E(x) = Σ_{i<j} f_s(dist(x_i, x_j)),
        f_s(r) = r^{−s} (s > 0),   f_0(r) = log(1/r) (s = 0),

    with ``dist`` the euclidean (chordal) distance ``‖x_i − x_j‖`` or the angular distance
    ``arccos(x_i·x_j)`` (radians). ``s = 1``, ``dim = 3`` is the Thomson problem; ``s = 0`` is
    Whyte's problem (maximise ``Π_{i<j} ‖x_i − x_j‖``, i.e. minimise the log energy; Smale's 7th
    problem); large ``s`` approaches the Tammes problem (see :func:`tammes`). The energy is
    that of :func:`mhe_jax.hyperspherical_energy` (mean over ordered pairs) times
    ``n(n−1)/2``, computed from the Gram matrix of the unit rows by the same kernel.

    Method: Riemannian L-BFGS on ``(S^{dim−1})^n`` (projected gradient, retraction by
    normalisation, vector transport by projection, Armijo / approximate-Wolfe backtracking),
    ``restarts`` random starts ``jax.vmap``-ed in one ``jax.jit`` call (each a
    ``lax.while_loop``), best kept. It finds local minima; for large ``n`` the global minimum
    needs many restarts (the number of local minima grows exponentially). Every restart that
    ends at a stationary point is then checked for a saddle (``saddle_checks``). One
    compilation per ``(n, dim, restarts, distance, memory, saddle_checks)``: ``s``, ``tol`` and
    ``steps`` are traced values.

    Precision: computes in float64 when ``jax.config.update("jax_enable_x64", True)`` is set —
    needed for ~1e-10 relative energies — and in float32 otherwise (about 1e-6 relative). For
    ``n`` beyond a few tens the gradient tolerance is below round-off, and restarts end with
    status 3 ("stalled (round-off)") at a converged local minimum. The angular distance is
    computed from cosines, so pairs at (near) antipodes carry ~1e-8 absolute angle errors.

    Large ``s``: for ``s ≥ 6`` (``LOG_OBJECTIVE_MIN_S``) the solver minimises ``log(E_s)/s``
    (log-sum-exp over pairs; same minimisers) instead of ``E_s``, which overflows float32 and is
    too badly conditioned for L-BFGS from a random start (``r^{−50}`` spans ~20 orders of
    magnitude between a random start and the minimum); ``tol`` then applies to that objective,
    and the returned energies are recomputed exactly from the points
    (``minimize_energy(6, s=50)`` gives the octahedron in float32 and float64).

    Args:
      n: number of points, ``>= 2``.
      dim: ambient dimension, ``>= 2`` (points on ``S^{dim−1}``).
      s: Riesz exponent ``>= 0`` (0: log energy).
      distance: ``"euclidean"`` or ``"angular"``.
      restarts: number of random starts (default 16, or the number of starts in ``init``).
      key: PRNG key (or int seed) for the random starts; default ``jax.random.key(0)``.
        Results are deterministic for a fixed key.
      init: optional starts, shape ``(n, dim)`` or ``(restarts, n, dim)`` (rows are normalised).
        Two rows of a start closer than the solver resolves (chord ``2 √ε_mach`` after
        normalisation: 6.9e-4 in float32, 3.0e-8 in float64), such as duplicates, raise
        ``ValueError`` naming ``init`` and the rows: the energy is singular there and the
        symmetric start cannot separate them. A start with an exact symmetry (e.g. every
        point on one great circle) keeps it under the updates and ends at a saddle of the full
        problem; the saddle check (``saddle_checks``) leaves it.
      steps: maximum L-BFGS iterations per restart (default ``max(2000, 40 n)``).
      tol: stop when the Riemannian gradient norm ``≤ tol · max(|E|, 1)``; default 1e-11 in
        float64, 1e-5 in float32. Restarts also stop when round-off stalls the decrease.
      memory: L-BFGS memory (number of stored pairs).
      saddle_checks: deterministic saddle check, at most this many times per restart (0:
        none). A restart that ends at a stationary point (status 1–3) is moved by a fixed
        tangent perturbation (key ``SADDLE_SEED``, the same for every restart and call; chord
        ``max(1e-3 n^{−1/(dim−1)}, 8 √ε_mach)`` per point: float32 2.8e-3, float64 1e-4 at
        ``n`` = 100) and minimised again for at most ``SADDLE_CHECK_STEPS`` = 10 iterations,
        the L-BFGS memory kept. If that ends lower by more than ``max(tol, 64 ε_mach) ·
        max(|E|, 1)``, the point was a saddle: the minimisation continues from there (a fresh
        ``steps``) and its end is checked again; otherwise the checked result is returned
        unchanged (points, energy and status; the perturbed run is discarded even when it is
        lower by less than that). It guarantees escape from saddles whose descent lowers the
        energy by that much within 10 iterations — every great-circle start of ``n`` = 4, 6,
        12 at ``s`` = 0, 1, 2 in float32 and float64 (tested; 5 iterations were not enough for
        one of them in float32) — not from arbitrarily flat ones. Cost: about 10 iterations per
        restart, a few per cent for random starts (``benchmarks/RESULTS.md``).

    Returns:
      The best points and energy, and per restart the energies, iterations, gradient norms
        and stop status, as an :class:`EnergyResult`.

    Examples:
      >>> from mhe_jax import sphere
      >>> result = sphere.minimize_energy(4, 3, s=1.0, restarts=2)  # Thomson problem, N = 4
      >>> result.points.shape
      (4, 3)
      >>> round(float(result.energy), 4)  # the regular tetrahedron: 6 / √(8/3)
      3.6742
    """
    n = _check_int(n, "n", 2)
    dim = _check_int(dim, "dim", 2)
    s = _check_s(s)
    _checks.check_distance(distance)
    if restarts is not None:
        restarts = _check_int(restarts, "restarts", 1)
    memory = _check_int(memory, "memory", 1)
    saddle_checks = _check_int(saddle_checks, "saddle_checks", 0)
    dtype = compute_dtype()
    steps = default_steps(n) if steps is None else _check_int(steps, "steps", 1)
    if tol is None:
        tol = 1e-11 if dtype == jnp.float64 else 1e-5
    tol = _check_positive(tol, "tol")
    x0s = initial_points(n, dim, restarts, key, init, dtype)

    fun = SphereObjective(distance, _solver_eps(distance, dtype))
    params = energy_params(s)
    xs, f, gnorms, iters, status = run_restarts(
        fun,
        x0s,
        params,
        steps=steps,
        tol=tol,
        opts=solver_options(n, dim, memory),
        checks=saddle_checks,
    )
    return energy_result(xs, f, gnorms, iters, status, params, distance)


def _batch_energy(xs: Array, s, distance: str) -> Array:
    return jax.vmap(lambda x: physics_energy(x, s, distance, 0.0))(xs)


_batch_energy_jit = jax.jit(_batch_energy, static_argnames=("distance",))


def energy_result(xs, f, gnorms, iters, status, params, distance: str, **extra) -> EnergyResult:
    """:class:`EnergyResult` from the solver's outputs for restarts ``xs`` (objective values
    ``f``, Riemannian gradient norms of the objective ``gnorms``).

    For the energy objective its values are the energies (exact: ``eps = 0`` for euclidean,
    ``ε_mach²`` for angular, which leaves every value unchanged in floating point). For the
    log-energy objective the energies are recomputed by :func:`physics_energy` (``eps = 0``)
    and the gradient norms converted, ``‖∇E‖ = s E ‖∇ log(E)/s‖``.
    """
    xs, f, gnorms = np.asarray(xs), np.asarray(f), np.asarray(gnorms)
    if int(params["mode"]) == 1:
        s = float(params["beta"])
        energies = np.asarray(
            _batch_energy_jit(jnp.asarray(xs), np.asarray(s, xs.dtype), distance)
        )
        gnorms = (s * np.abs(energies.astype(np.float64)) * gnorms).astype(xs.dtype)
    else:
        energies = f
    best = int(np.argmin(np.where(np.isnan(energies), np.inf, energies)))
    return EnergyResult(
        points=jnp.asarray(xs[best]),
        energy=jnp.asarray(energies[best]),
        energies=jnp.asarray(energies),
        iterations=jnp.asarray(iters),
        grad_norm=jnp.asarray(gnorms[best]),
        grad_norms=jnp.asarray(gnorms),
        status=jnp.asarray(status),
        best=best,
        **extra,
    )
