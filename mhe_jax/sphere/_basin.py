r"""Basin-hopping for global minima of the Riesz energy on ``S^{dim-1}`` (Wales & Doye 1997).

Each chain holds a local minimum ``x`` with energy ``E(x)``. One hop:

1. perturb ``x`` (:mod:`mhe_jax.sphere._moves`). The default move, ``move="relocate"``, takes
   one point chosen uniformly at random and puts it at a uniformly random position on the
   sphere (a vacancy–interstitial pair: the hole it leaves and the crowd it joins relax into a
   different arrangement of the defects). The alternative, ``move="cap"``, is local: pick a
   centre point (one of the points of highest local energy ``e_i = Σ_j f_s(‖x_i − x_j‖)`` with
   probability 1/2, else a random one), take its ``k ≤ cap`` nearest points (a spherical cap),
   and rotate the cap about its centre by a random orthogonal map of the tangent space and/or
   displace each of its points by a random tangent vector of length about ``step`` times the
   mean nearest-neighbour spacing;
2. minimise locally (the Riemannian L-BFGS of :func:`~mhe_jax.sphere.minimize_energy`) to
   ``x'``;
3. accept ``x'`` with the Metropolis probability ``min(1, exp(−(E(x') − E(x)) / T))``.

With one temperature per chain (a ladder ``T_0 < … < T_{c−1}``), the chains also exchange
temperatures (replica exchange, parallel tempering: Swendsen & Wang 1986, Geyer 1991): once in
every pass of the loop in which a hop ended, the chains at two neighbouring temperatures ``T_k <
T_{k+1}`` (``k`` uniform) swap them with probability ``min(1, exp((1/T_k − 1/T_{k+1})(E_a −
E_b)))``, ``E_a`` the current energy of the chain at ``T_k``. Only the temperatures move, so
no chain's running minimisation is interrupted. The hot chains cross between funnels, the cold
ones descend, and a low minimum found by a hot chain is handed down the ladder.

Measured for Thomson N = 200 from one local minimum (24 moves each, ``benchmarks/RESULTS.md``):
from a local minimum 1.1e-5 (relative) above the best known energy, a relocation reaches a
different minimum 88 % of the time, a cap move of step 0.4 only 4 % (the local solver falls
back into the same minimum), which is why relocation is the default.

The chains hop independently inside one jitted ``lax.while_loop``, ``jax.vmap``-ed over chains.
Each pass of the loop runs one L-BFGS iteration of every chain; a chain whose local
minimisation ends in that pass does its Metropolis step, its next move and the start of its
next minimisation at once, on the device. No chain waits for another: local minimisations
after a move take from tens to hundreds of iterations, and a lockstep hop (all chains
minimise, then all hop) would cost the slowest chain's iterations for every chain. The first
local minimisation of the starts (hop 0) and the final polish run together. The host only
checks the wall clock between jitted calls of ~0.1–0.4 s; the result does not depend on how the
loop is cut into calls. The search stops when every chain has made ``hops`` hops, after
``patience × chains`` hops (all chains together) without a new best energy, after
``time_limit`` seconds, or when ``target`` is reached; the best minimum of every chain is then
polished to the tight tolerance.
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Iterable, Sequence
from functools import partial
from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

from mhe_jax import _checks
from mhe_jax.sphere import _moves, _solver
from mhe_jax.sphere._solver import EnergyResult

__all__ = ["basin_hopping", "fibonacci_points"]

# Default temperatures, relative to |E| of the best first local minimum: one chain at 1e-6, or a
# geometric ladder from 2e-7 to 2.2e-6 over the chains (replica exchange; 4 chains: 2e-7, 4.5e-7,
# 9.9e-7, 2.2e-6). Thomson N = 470, 600 s, keys 0/1: 6.2e-7/1.4e-6 above the best known energy
# against 1.6e-6/1.9e-6 with every chain at 1e-6 (benchmarks/RESULTS.md).
DEFAULT_TEMPERATURE = 1e-6
DEFAULT_LADDER = (2e-7, 2.2e-6)
MOVES = ("relocate", "cap")
DEFAULT_MOVE = "relocate"
DEFAULT_STEP = 0.4  # move="cap": displacement, in units of the mean nearest-neighbour spacing
DEFAULT_CHAINS = 4
# A new best must beat the previous one by more than this (relative): a minimum found again
# differs from itself by round-off only (~1e-13).
IMPROVEMENT_RTOL = 1e-10
HOP_TOL = 1e-7  # gradient tolerance of the local minimisations during the hops (float64)
FIRST_BLOCK = 8  # loop iterations of the first jitted call of the search (then adapted)


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
        x = x / np.linalg.norm(x, axis=-1, keepdims=True)
        _solver.check_distinct(x, _solver.compute_dtype())
        return x
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


def _ladder(temperature: Any) -> np.ndarray:
    """``temperature`` (a number, or one per chain) as an ascending float64 array."""
    if isinstance(temperature, numbers.Real) and not isinstance(temperature, (bool, np.bool_)):
        values = [_check_nonneg_or_none(temperature, "temperature", positive=False)]
    elif isinstance(temperature, (str, bytes)):
        raise TypeError(f"temperature must be a real number or a sequence of them, got "
                        f"{temperature!r}")
    else:
        try:
            values = list(cast(Iterable[Any], temperature))
        except TypeError:
            raise TypeError(
                "temperature must be a real number, a sequence of them (one per chain) or "
                f"None, got {type(temperature).__name__}"
            ) from None
        if not values:
            raise ValueError("temperature must not be an empty sequence")
        values = [_check_nonneg_or_none(v, "temperature", positive=False) for v in values]
    return np.sort(np.asarray(values, np.float64))


def default_ladder(chains: int) -> np.ndarray:
    """Default temperatures relative to ``|E_0|``: ``DEFAULT_TEMPERATURE`` for one chain, else
    ``chains`` values spaced geometrically over ``DEFAULT_LADDER``."""
    if chains == 1:
        return np.asarray([DEFAULT_TEMPERATURE])
    return np.geomspace(*DEFAULT_LADDER, chains)


def default_hops(n: int) -> int:
    return max(200, 10 * n)


def default_patience(n: int) -> int:
    return max(100, 4 * n)


def _as_key(key) -> jax.Array:
    """A typed PRNG key from ``key`` (already validated by :func:`_rng_from_key`)."""
    if isinstance(key, numbers.Integral):
        return jax.random.key(int(key))
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    return jax.random.wrap_key_data(key)


class _Move(NamedTuple):
    """Static part of the hop move (a compile-time argument of :func:`_advance`)."""

    kind: str
    cap: int
    exchange: bool = False  # replica exchange between the chains' temperatures


class _Chain(NamedTuple):
    """One Markov chain (leading axis: chains)."""

    opt: _solver._State  # the running local minimisation
    x: jax.Array  # current local minimum and its energy
    e: jax.Array
    best_x: jax.Array  # best minimum of this chain, its energy, and the hop that found it
    best_e: jax.Array
    best_hop: jax.Array
    hops: jax.Array  # finished hops
    iters: jax.Array  # L-BFGS iterations of the finished hops
    active: jax.Array  # False once the chain has made its `hops` hops
    key: jax.Array  # raw PRNG key data
    level: jax.Array  # index of the chain's temperature in consts["ladder"] (ascending)


class _Search(NamedTuple):
    chains: _Chain
    total: jax.Array  # hops finished by all chains together
    overall: jax.Array  # best energy over the chains
    last_improvement: jax.Array  # `total` when `overall` last improved (by > IMPROVEMENT_RTOL)
    tick: jax.Array  # loop iterations run (one L-BFGS iteration of every chain each)
    tick_best: jax.Array  # `tick` at the last improvement
    key: jax.Array  # raw PRNG key data of the replica exchanges
    swaps: jax.Array  # accepted exchanges


def _move(moves: _Move, x, key, consts):
    if moves.kind == "cap":
        return _moves.cap_move(
            x, key, s=consts["s"], step=consts["step"], spacing=consts["spacing"], cap=moves.cap
        )
    return _moves.relocate(x, key)


def _start_chain(x, key, moves: _Move, consts, opts) -> tuple[jax.Array, _solver._State]:
    """Perturb ``x`` and start its local minimisation; returns (next key data, state)."""
    key, k_move = jax.random.split(jax.random.wrap_key_data(key))
    return jax.random.key_data(key), _solver.lbfgs_start(_move(moves, x, k_move, consts), opts)


@partial(jax.jit, static_argnames=("opts", "moves"))
def _initial_search(xs, es, keys, exchange_key, active, opts, moves, consts) -> _Search:
    """Chains at their first minima ``xs`` (energies ``es``), each starting its first hop."""
    chains = xs.shape[0]
    data, opt = jax.vmap(lambda x, k: _start_chain(x, k, moves, consts, opts))(
        xs, jax.random.key_data(keys)
    )
    zeros = jnp.zeros((chains,), jnp.int32)
    chain = _Chain(
        opt=opt, x=xs, e=es, best_x=xs, best_e=es, best_hop=zeros, hops=zeros, iters=zeros,
        active=jnp.full((chains,), active), key=data, level=jnp.arange(chains, dtype=jnp.int32),
    )
    zero = jnp.zeros((), jnp.int32)
    return _Search(
        chain, zero, jnp.min(es), zero, zero, zero, jax.random.key_data(exchange_key), zero
    )


def _energy(f, params):
    """Energy of the objective value ``f`` (``exp(β f)`` for the log-energy objective); +inf
    where it is not finite."""
    e = jnp.where(params["mode"] == 0, f, jnp.exp(params["beta"] * f))
    return jnp.where(jnp.isfinite(e), e, jnp.inf)


def _chain_tick(fun, opts, c: _Chain, consts) -> tuple[_Chain, jax.Array]:
    """One L-BFGS iteration of a running chain. A chain whose minimisation ends in it does its
    Metropolis step; returns the chain and whether it must start its next hop (then
    :func:`_next_hop`; so chains never wait for each other)."""
    iterate = _solver.lbfgs_iteration(fun, consts["params"], consts["tol"], consts["steps"], opts)
    running = c.active & (c.opt.status == _solver.RUNNING)
    stepped = iterate(c.opt)
    opt = jax.tree.map(lambda a, b: jnp.where(running, a, b), stepped, c.opt)
    ended = running & (opt.status != _solver.RUNNING)

    e_new = _energy(opt.f, consts["params"])
    key, k_u = jax.random.split(jax.random.wrap_key_data(c.key))
    u = jax.random.uniform(k_u, (), e_new.dtype)
    delta = e_new - c.e
    temperature = consts["ladder"][c.level]
    metropolis = u < jnp.exp(-jnp.maximum(delta, 0.0) / temperature)
    accept = ended & jnp.isfinite(e_new) & ((delta <= 0) | metropolis)
    hops = c.hops + ended.astype(jnp.int32)
    better = ended & (e_new < c.best_e)
    # The hop that first reached the chain's best (a minimum found again only differs by
    # round-off, which must not move it).
    first = better & (e_new < c.best_e - IMPROVEMENT_RTOL * jnp.abs(c.best_e))
    more = ended & (hops < consts["hops"])
    chain = _Chain(
        opt=opt,
        x=jnp.where(accept, opt.x, c.x),
        e=jnp.where(accept, e_new, c.e),
        best_x=jnp.where(better, opt.x, c.best_x),
        best_e=jnp.where(better, e_new, c.best_e),
        best_hop=jnp.where(first, hops, c.best_hop),
        hops=hops,
        iters=c.iters + jnp.where(ended, opt.k, 0),
        active=c.active & ~(ended & ~more),
        key=jnp.where(ended, jax.random.key_data(key), c.key),
        level=c.level,
    )
    return chain, more


def _next_hop(moves: _Move, opts, c: _Chain, more, consts) -> _Chain:
    """Where ``more``: the move from the chain's current minimum and a fresh minimisation."""
    data, fresh = _start_chain(c.x, c.key, moves, consts, opts)
    return c._replace(
        opt=jax.tree.map(lambda a, b: jnp.where(more, a, b), fresh, c.opt),
        key=jnp.where(more, data, c.key),
    )


def _exchange(chain: _Chain, key, consts) -> tuple[_Chain, jax.Array, jax.Array]:
    """One replica-exchange attempt: the chains at two neighbouring temperatures ``T_k <
    T_{k+1}`` (``k`` uniform) swap temperatures with probability ``min(1, exp((1/T_k −
    1/T_{k+1})(E_a − E_b)))``, ``E_a`` the current energy of the chain at ``T_k``. Only the
    temperatures move, so every running minimisation goes on. Returns the chain, the next key
    data and whether the swap was accepted."""
    ladder = consts["ladder"]
    key, k_pair, k_u = jax.random.split(jax.random.wrap_key_data(key), 3)
    k = jax.random.randint(k_pair, (), 0, ladder.shape[0] - 1, dtype=jnp.int32)
    a = jnp.argmax(chain.level == k)
    b = jnp.argmax(chain.level == k + 1)
    ea, eb = chain.e[a], chain.e[b]
    log_p = (1.0 / ladder[k] - 1.0 / ladder[k + 1]) * (ea - eb)
    u = jax.random.uniform(k_u, (), ea.dtype)
    accept = jnp.isfinite(ea) & jnp.isfinite(eb) & ((log_p >= 0) | (u < jnp.exp(log_p)))
    level = chain.level.at[a].set(jnp.where(accept, k + 1, k))
    level = level.at[b].set(jnp.where(accept, k, k + 1))
    return chain._replace(level=level), jax.random.key_data(key), accept


def _done(search: _Search, consts):
    return (
        (search.overall <= consts["target"])
        | (search.total - search.last_improvement >= consts["patience"])
        | ~jnp.any(search.chains.active)
    )


def _finished(search: _Search, consts) -> bool:
    return bool(_done(search, consts))


@partial(jax.jit, static_argnames=("fun", "opts", "moves"))
def _advance(fun, opts, moves: _Move, search: _Search, consts, until) -> _Search:
    """Run the chains until tick ``until`` or until the search is done (target, patience, every
    chain out of hops)."""

    def body(st: _Search) -> _Search:
        chain, more = jax.vmap(lambda c: _chain_tick(fun, opts, c, consts))(st.chains)
        # Moves only in the (rare) passes where a chain needs one: a cap move costs about an
        # energy evaluation, and under vmap a per-chain branch would run every pass.
        chain = lax.cond(
            jnp.any(more),
            lambda ch: jax.vmap(lambda c, m: _next_hop(moves, opts, c, m, consts))(ch, more),
            lambda ch: ch,
            chain,
        )
        key, swaps = st.key, st.swaps
        if moves.exchange:  # one attempt per pass in which a hop ended
            chain, key, accepted = lax.cond(
                jnp.any(more),
                lambda ch, k: _exchange(ch, k, consts),
                lambda ch, k: (ch, k, jnp.zeros((), bool)),
                chain,
                key,
            )
            swaps = swaps + accepted.astype(jnp.int32)
        total = jnp.sum(chain.hops, dtype=jnp.int32)
        new_overall = jnp.min(chain.best_e)
        improved = new_overall < st.overall - IMPROVEMENT_RTOL * jnp.abs(st.overall)
        tick = st.tick + 1
        return _Search(
            chain,
            total,
            jnp.minimum(st.overall, new_overall),
            jnp.where(improved, total, st.last_improvement),
            tick,
            jnp.where(improved, tick, st.tick_best),
            key,
            swaps,
        )

    return lax.while_loop(lambda st: (st.tick < until) & ~_done(st, consts), body, search)


def basin_hopping(
    n: int,
    dim: int = 3,
    *,
    s: float = 1.0,
    distance: str = "euclidean",
    key: jax.Array | int,
    hops: int | None = None,
    time_limit: float | None = None,
    temperature: float | Sequence[float] | None = None,
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
    ``x'`` with probability ``min(1, exp(−(E(x') − E(x))/T))`` (Metropolis). The chains hop
    independently (one jitted loop; a chain starts its next hop as soon as its minimisation
    ends, without waiting for the others), each at its own temperature ``T`` of a ladder that
    they exchange by the replica-exchange rule (parallel tempering; module docstring).

    Stops once every chain has made ``hops`` hops, after ``patience × chains`` hops of all
    chains together without a new overall best (better by more than 1e-10 relative), after
    ``time_limit`` seconds, or once the best energy is ``≤ target``; then polishes the best
    minimum of every chain to the tolerance of :func:`minimize_energy` (without its saddle
    check: every hop perturbs the chain's minimum, which leaves a saddle; with ``hops=0`` a
    symmetric ``init`` can end at one, use :func:`minimize_energy`). The starts and moves
    are drawn from ``key`` (deterministic for a fixed key unless ``time_limit`` cuts the run).
    ``s`` is compiled into the search (one compilation per ``(n, dim, chains, s, distance,
    move)``). Use float64 (``jax_enable_x64``) for large ``n``:
    neighbouring minima differ by ~1e-6 relative (N = 200), near float32 resolution.

    Args:
      n: number of points, ``>= 2``.
      dim: ambient dimension, ``>= 2``.
      s: Riesz exponent ``>= 0`` (0: log energy; ``s ≥ 6`` is optimised as ``log(E_s)/s``).
      distance: ``"euclidean"`` or ``"angular"``.
      key: PRNG key or int seed (required).
      hops: maximum hops per chain; default ``max(200, 10 n)``.
      time_limit: wall-clock limit in seconds (checked every ~0.1–0.4 s; compilation
        counts); default none.
      temperature: Metropolis temperature ``T`` in energy units, or a sequence of one per
        chain (a ladder, in any order: replica exchange between neighbouring temperatures, as
        in the module docstring); default ``chains`` temperatures spaced geometrically from
        ``2e-7 |E_0|`` to ``2.2e-6 |E_0|`` (one chain: ``1e-6 |E_0|``), with ``E_0`` the best
        first local minimum: for Thomson N = 100–500 the gaps between neighbouring minima
        are 1e-7–1e-5 relative.
      step: ``move="cap"`` only: displacement of the moved points in units of the mean
        nearest-neighbour spacing; default 0.4.
      init: ``"random"`` (default: uniform random starts), ``"fibonacci"`` (the Fibonacci spiral
        :func:`fibonacci_points`, randomly rotated per chain; ``dim = 3``), or an array of shape
        ``(n, dim)`` or ``(chains, n, dim)`` (rows are normalised; coincident rows raise
        ``ValueError`` naming ``init``, as in :func:`minimize_energy`).
      chains: number of chains; default 4 (or the number of starts in a 3-d ``init``).
      patience: stop after ``patience × chains`` hops (all chains together) without a new
        best; default ``max(100, 4 n)``.
      target: stop as soon as the best energy is ``≤ target``; default none.
      cap: ``move="cap"`` only: largest number of points a move touches; default
        ``min(12, n)``.
      move: ``"relocate"`` (default) or ``"cap"``, the perturbation of a hop (above).

    Returns:
      The search as an :class:`EnergyResult`, with ``points``/``energy`` of the best minimum
        over all chains; ``energies``, ``iterations`` (L-BFGS iterations summed over the
        hops), ``grad_norms``, ``status`` per chain; ``hops`` (the most any chain ran),
        ``best_hop`` (the hop of its chain that first reached the returned minimum),
        ``minimisations`` (all chains, hop 0 included), ``seconds`` and ``seconds_to_best``
        (its time within the jitted call that found it is interpolated by loop iterations),
        ``swaps`` (accepted exchanges of temperature).

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
    temperatures = None if temperature is None else _ladder(temperature)
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
    if temperatures is not None and temperatures.shape[0] not in (1, chains):
        raise ValueError(
            f"temperature must be a number or one per chain ({chains}), got "
            f"{temperatures.shape[0]} values"
        )
    x0 = _starts(n, dim, chains, init, rng)

    dtype = _solver.compute_dtype()
    params = _solver.energy_params(s)
    # s compiled in (one compilation per s; a search runs for minutes): cheaper exact kernels.
    fun = _solver.compiled_objective(distance, s, dtype)
    opts = _solver.solver_options(n, dim)
    steps = _solver.default_steps(n)
    final_tol = 1e-11 if dtype == jnp.float64 else 1e-5
    # Hops stop at a looser gradient tolerance: the energy error is quadratic in the gradient
    # (≈ ‖g‖²/λ); measured for Thomson N = 200 after a cap move: ~1e-11 relative at 1e-7 with
    # 25 % fewer iterations than 1e-8 (1e-14), far below the gaps between minima (~1e-7).
    hop_tol = HOP_TOL if dtype == jnp.float64 else 1e-5
    spacing = _spacing(n, dim)

    # Hop 0: the first local minimisation of every start, together (lockstep).
    xs, f, _, it, _ = _solver.run_restarts(
        fun, jnp.asarray(x0, dtype), params, steps=steps, tol=hop_tol, opts=opts
    )
    e0 = _solver.objective_to_energy(f, params)
    e0 = np.where(np.isfinite(e0), e0, np.inf)
    overall = float(np.min(e0))
    if temperatures is None:
        scale = abs(overall) if math.isfinite(overall) else 1.0
        temperatures = scale * default_ladder(chains)
    ladder = np.broadcast_to(np.maximum(temperatures, 1e-300), (chains,))
    keys = jax.random.split(jax.random.fold_in(_as_key(key), 1), chains)
    consts = {
        "params": _solver._as_dtype(params, dtype),
        "tol": np.asarray(hop_tol, dtype),
        "steps": np.asarray(steps, np.int32),
        "ladder": np.asarray(ladder, dtype),
        "hops": np.asarray(hops, np.int32),
        "patience": np.asarray(min(patience * chains, 2**31 - 1), np.int32),
        "target": np.asarray(-np.inf if target is None else target, dtype),
        "step": np.asarray(step, dtype),
        "spacing": np.asarray(spacing, dtype),
        "s": np.asarray(s, dtype),
    }
    moves = _Move(move, cap, exchange=bool(chains > 1 and ladder[-1] > ladder[0]))
    exchange_key = jax.random.fold_in(_as_key(key), 2)
    search = _initial_search(
        xs, jnp.asarray(e0, dtype), keys, exchange_key, hops > 0, opts, moves, consts
    )
    seconds_to_best = time.perf_counter() - t_start
    block, tick = FIRST_BLOCK, 0
    while not _finished(search, consts):
        if time_limit is not None and time.perf_counter() - t_start >= time_limit:
            break
        t0 = time.perf_counter()
        search = _advance(fun, opts, moves, search, consts, np.asarray(tick + block, np.int32))
        tick_best, new_tick = int(search.tick_best), int(search.tick)
        t1 = time.perf_counter()
        if tick < tick_best <= new_tick:  # improved in this block: interpolate its time
            seconds_to_best = t0 - t_start + (t1 - t0) * (tick_best - tick) / (new_tick - tick)
        tick = new_tick
        # Blocks of about 0.1–0.4 s: the time limit is checked that often (block sizes do not
        # change the result, only when time_limit cuts it).
        block = block * 2 if t1 - t0 < 0.1 else max(1, block // 2) if t1 - t0 > 0.4 else block

    chain = search.chains
    best_x = chain.best_x
    iters = np.asarray(it).astype(np.int64) + np.asarray(chain.iters)
    total_hops = int(search.total)
    best = int(np.argmin(np.asarray(chain.best_e)))
    best_hop = int(np.asarray(chain.best_hop)[best])
    hop = int(np.max(np.asarray(chain.hops)))
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
        minimisations=chains + total_hops,
        seconds=time.perf_counter() - t_start,
        seconds_to_best=seconds_to_best,
        swaps=int(search.swaps),
    )
