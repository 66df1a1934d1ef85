"""Thomson problem benchmarks: the local solver and the global search (basin-hopping).

``local``: time to the best of R restarts with ``mhe_jax.sphere.minimize_energy`` (one warm-up
call; the compile time measured separately by ahead-of-time ``lower().compile()``), median of
``--runs`` timed calls.

``lbfgs``: ``optax.lbfgs`` on the unconstrained points against the Riemannian L-BFGS of
``minimize_energy``: time per batch of local minimisations, iterations, and accuracy.

``objective``: the cost of one value and gradient of the energy: the core ``physics_energy``
against the solver's Gram-form objective (``s`` traced or compiled in), ``vmap``-ed over 1 or 4
configurations.

``moves``: from one local minimum (the best of 4 random starts, key 0), each kind of hop move
(cap moves of several steps, all-point displacements, relocations) ``--trials`` times, each
followed by the local solver at the hop tolerance: how often it lands in the same minimum
(relative change ≤ 1e-9), in a lower one, and the L-BFGS iterations it costs.

``global``: for each N and key, the wall time until a method first reaches the best known energy
(relative gap ≤ 1e-9), within a wall-clock ``--budget`` per run. Each method is warmed up
once per N (its compilation, reported as ``warmup_s``, is not part of the budgets):

* ``bh``: ``mhe_jax.sphere.basin_hopping(N, key=k, target=E*(1+1e-9), time_limit=budget)``
  with its defaults;
* ``scipy``: ``scipy.optimize.basinhopping`` with L-BFGS-B (``jac=True``, ``ftol=1e-15``,
  ``gtol=1e-10``) on the same energy (``physics_energy``, the core ``hyperspherical_energy``,
  jitted value and gradient, float64) of the unconstrained ``3N`` coordinates, the same
  Metropolis temperature (1e-6 of the start's energy) and steps of half the mean
  nearest-neighbour spacing on every coordinate (adaptive step size, SciPy's default);
* ``multistart``: repeated ``minimize_energy(N, restarts=4, key=...)`` calls (4 = the chains of
  ``bh``) until the budget is spent.

    python benchmarks/thomson.py local                          # N = 100, 200, 470, 16 restarts
    python benchmarks/thomson.py lbfgs --sizes 100 200          # optax.lbfgs vs Riemannian
    python benchmarks/thomson.py objective                      # cost of one evaluation
    python benchmarks/thomson.py moves --n 200 --trials 24      # where single hops land
    python benchmarks/thomson.py global --sizes 72 100 --keys 5 --budget 120
    nice -n 10 python benchmarks/thomson.py global --sizes 282 470 --keys 5 --budget 1800 \\
        --methods bh                                            # the long runs

Writes ``benchmarks/thomson.json`` next to this script (``local`` and ``global`` parts; a run
replaces only the rows it measured, and the file is rewritten after every run).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

from mhe_jax.sphere import (  # noqa: E402
    STATUS_NAMES,
    _basin,  # noqa: E402
    _moves,  # noqa: E402
    _solver,  # noqa: E402
    basin_hopping,
    minimize_energy,
)

# Best known (putative global) minima E(N) = Σ_{i<j} 1/‖x_i − x_j‖: the Wikipedia "Thomson
# problem" table (energies from the Cambridge Cluster Database, Wales et al.; checked in the
# stored page, rows 72, 100, 122, 132, 150, 200, 282, 470). N = 282 also matches the energy of
# the Cambridge Cluster Database coordinates (282.xyz) quoted elsewhere, 37147.294418462254.
KNOWN = {
    72: 2255.001190975,
    100: 4448.350634331,
    122: 6698.374499261,
    132: 7875.045342797,
    150: 10236.196436701,
    200: 18438.842717530,
    282: 37147.294418462,
    470: 104822.886324279,
}
HIT_RTOL = 1e-9


def machine() -> dict:
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "cpu_count": os.cpu_count(),
    }
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        info["lscpu"] = [line.strip() for line in lscpu.splitlines()[:15]]
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def load_average() -> list[float]:
    try:
        return list(os.getloadavg())
    except OSError:
        return []


# ------------------------------------------------------------------------------------ local


def compile_seconds(n: int, restarts: int) -> float:
    """Ahead-of-time lowering + compilation of the solver minimize_energy runs for (n, restarts)."""
    dtype = _solver.compute_dtype()
    x0s = _solver.initial_points(n, 3, restarts, None, None, dtype)
    fun = _solver.SphereObjective("euclidean", 0.0)
    params = _solver._as_dtype(_solver.energy_params(1.0), dtype)
    solve = _solver._solve_batch_small if n <= _solver.SMALL_N else _solver._solve_batch
    opts = _solver.solver_options(n, 3)
    t = time.perf_counter()
    solve.lower(fun, x0s, params, np.asarray(1e-11, dtype), np.int32(100), opts).compile()
    return time.perf_counter() - t


def bench_local(n: int, restarts: int, runs: int, key: int) -> dict:
    compile_s = compile_seconds(n, restarts)

    def call():
        t = time.perf_counter()
        res = minimize_energy(n, restarts=restarts, key=key)
        jax.block_until_ready(res)
        return time.perf_counter() - t, res

    first_s, res = call()  # warm-up (the jit cache is per function object: it compiles again)
    times = []
    for _ in range(runs):
        dt, res = call()
        times.append(dt)
    energy = float(res.energy)
    known = KNOWN.get(n)
    energies = np.sort(np.asarray(res.energies))
    status = np.asarray(res.status)
    return {
        "n": n,
        "restarts": restarts,
        "runs": runs,
        "compile_s": compile_s,
        "first_call_s": first_s,
        "times_s": times,
        "median_s": statistics.median(times),
        "energy": energy,
        "known": known,
        "rel_gap": None if known is None else (energy - known) / known,
        "restarts_at_best": int(np.sum(energies <= energies[0] * (1 + 1e-10))),
        "energies": energies.tolist(),
        "iterations_median": float(np.median(np.asarray(res.iterations))),
        "iterations_max": int(np.max(np.asarray(res.iterations))),
        "grad_norm": float(res.grad_norm),
        "status": {STATUS_NAMES[int(s)]: int(np.sum(status == s)) for s in np.unique(status)},
    }


# ----------------------------------------------------------------------------------- lbfgs


def optax_lbfgs_batch(n: int, memory: int = 10, dtype=np.float64):
    """``optax.lbfgs`` (zoom line search) on the unconstrained points, the energy of the
    normalised rows (scale-invariant; the solver's Gram form with ``s = 1`` compiled in, as on
    the Riemannian side, so that only the optimisers differ), vmapped over restarts; the same
    stopping rules as the Riemannian solver (relative Riemannian gradient ``≤ tol``, 10
    iterations without decrease, ``steps``). Returns a jitted
    ``(x0s, tol, steps) -> (x, E, ‖grad‖, iterations)``."""
    import jax.numpy as jnp
    import optax
    from jax import lax

    objective = _solver.compiled_objective("euclidean", 1.0, dtype)
    params = _solver._as_dtype(_solver.energy_params(1.0), dtype)

    def f(x):
        return objective(_solver.normalize_rows(x), params)

    opt = optax.lbfgs(memory_size=memory)
    value_and_grad = optax.value_and_grad_from_state(f)

    def one(x0, tol, steps):
        def cond(c):
            _, _, k, stall, fprev, gnorm = c
            return (k < steps) & ((k == 0) | ((gnorm > tol * jnp.abs(fprev)) & (stall < 10)))

        def body(c):
            x, st, k, stall, fprev, _ = c
            v, g = value_and_grad(x, state=st)
            u, st = opt.update(g, st, x, value=v, grad=g, value_fn=f)
            x = optax.apply_updates(x, u)
            v_new = optax.tree_utils.tree_get(st, "value")
            g_new = optax.tree_utils.tree_get(st, "grad")
            norms = jnp.linalg.norm(x, axis=-1, keepdims=True)
            riemannian = _solver.project(x / norms, g_new * norms)
            stall = jnp.where(v_new >= fprev - 4e-16 * jnp.abs(fprev), stall + 1, 0)
            return x, st, k + 1, stall, v_new, jnp.linalg.norm(riemannian)

        init = (x0, opt.init(x0), 0, 0, jnp.asarray(jnp.inf), jnp.asarray(jnp.inf))
        x, _, k, _, v, gnorm = lax.while_loop(cond, body, init)
        return _solver.normalize_rows(x), v, gnorm, k

    return jax.jit(jax.vmap(one, in_axes=(0, None, None)))


def bench_lbfgs(n: int, restarts: int, reps: int, key: int) -> dict:
    """Time and accuracy per local minimisation: optax.lbfgs vs the Riemannian L-BFGS, the same
    random starts, alternating timed calls after a warm-up; the accuracy is the relative energy
    difference to the same point polished by the Riemannian solver."""
    import jax.numpy as jnp

    x0s = _solver.initial_points(n, 3, restarts, key, None, jnp.float64)
    tol, steps = 1e-11, _solver.default_steps(n)
    fun = _solver.compiled_objective("euclidean", 1.0, jnp.float64)  # what basin_hopping runs
    opts = _solver.solver_options(n, 3)
    params = _solver.energy_params(1.0)
    optax_run = optax_lbfgs_batch(n)

    def riemannian(x):
        return _solver.run_restarts(fun, x, params, steps=steps, tol=tol, opts=opts)

    jax.block_until_ready(optax_run(x0s, tol, 1))
    jax.block_until_ready(riemannian(x0s))
    t_optax, t_riem = [], []
    for _ in range(reps):
        t = time.perf_counter()
        xo, eo, _, ko = jax.block_until_ready(optax_run(x0s, tol, steps))
        t_optax.append(time.perf_counter() - t)
        t = time.perf_counter()
        xr, er, _, kr, _ = jax.block_until_ready(riemannian(x0s))
        t_riem.append(time.perf_counter() - t)
    eo_polished = np.asarray(riemannian(xo)[1])
    er_polished = np.asarray(riemannian(xr)[1])
    return {
        "n": n,
        "restarts": restarts,
        "optax_seconds": t_optax,
        "riemannian_seconds": t_riem,
        "optax_iterations": np.asarray(ko).tolist(),
        "riemannian_iterations": np.asarray(kr).tolist(),
        "optax_rel_error": (np.abs(np.asarray(eo) - eo_polished) / eo_polished).tolist(),
        "riemannian_rel_error": (np.abs(np.asarray(er) - er_polished) / er_polished).tolist(),
        "optax_energies": np.asarray(eo).tolist(),
        "riemannian_energies": np.asarray(er).tolist(),
        "load_average": load_average(),
    }


def main_lbfgs(args) -> None:
    data = _load(args.out)
    rows = {row["n"]: row for row in data.get("lbfgs", [])}
    for n in args.sizes:
        row = bench_lbfgs(n, args.restarts, args.reps, args.key)
        rows[n] = row
        print(
            f"N={n}: optax {min(row['optax_seconds']):.2f} s, Riemannian "
            f"{min(row['riemannian_seconds']):.2f} s (best of {args.reps}); iterations (median) "
            f"{np.median(row['optax_iterations']):.0f} / "
            f"{np.median(row['riemannian_iterations']):.0f}; max rel. error "
            f"{max(row['optax_rel_error']):.1e} / {max(row['riemannian_rel_error']):.1e}",
            flush=True,
        )
        data["lbfgs"] = [rows[k] for k in sorted(rows)]
        _save(args.out, data)


# ----------------------------------------------------------------------------------- objective


def bench_objective(n: int, batch: int, evals: int, reps: int) -> dict:
    """Cost of one value and gradient of the Thomson energy (s = 1) of ``batch`` configurations
    (``vmap``), in a jitted ``fori_loop`` of ``evals`` evaluations: the core
    ``physics_energy`` (normalises the rows; what the unconstrained SciPy and optax runs need)
    against the solver's objective (the core kernel of the Gram matrix of unit rows) with ``s``
    traced (``minimize_energy``) and compiled in (``basin_hopping``). Timed calls alternate
    between the variants; medians of ``reps`` after a warm-up."""
    import jax.numpy as jnp

    x = _solver.initial_points(n, 3, batch, 0, None, jnp.float64)
    params = _solver._as_dtype(_solver.riesz_params(1.0), np.float64)
    variants = {
        "physics_energy": lambda y, p: _solver.physics_energy(y, p["s"]),
        "objective, s traced": _solver.SphereObjective("euclidean", 0.0),
        "objective, s compiled in": _solver.compiled_objective("euclidean", 1.0, jnp.float64),
    }

    def loop(f):
        # Value and gradient, as the solver uses them (the value is carried, so that XLA cannot
        # drop it).
        value_and_grad = jax.vmap(jax.value_and_grad(f), in_axes=(0, None))

        def run(x, p):
            def step(i, carry):
                y, total = carry
                v, g = value_and_grad(y, p)
                return y + 1e-12 * g, total + v

            return jax.lax.fori_loop(0, evals, step, (x, jnp.zeros(x.shape[0], x.dtype)))

        return jax.jit(run)

    loops = {name: loop(f) for name, f in variants.items()}
    for run in loops.values():
        jax.block_until_ready(run(x, params))
    times: dict[str, list[float]] = {name: [] for name in loops}
    for _ in range(reps):
        for name, run in loops.items():
            t = time.perf_counter()
            jax.block_until_ready(run(x, params))
            times[name].append((time.perf_counter() - t) / evals)
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    return {
        "n": n,
        "batch": batch,
        "evals": evals,
        "microseconds": {name: 1e6 * m for name, m in medians.items()},
        "ratio_to_physics_energy": {
            name: m / medians["physics_energy"] for name, m in medians.items()
        },
        "load_average": load_average(),
    }


def main_objective(args) -> None:
    data = _load(args.out)
    rows = {(r["n"], r["batch"]): r for r in data.get("objective", [])}
    for n in args.sizes:
        for batch in args.batches:
            row = bench_objective(n, batch, args.evals, args.reps)
            rows[(n, batch)] = row
            cells = ", ".join(
                f"{name} {us:.0f} us ({row['ratio_to_physics_energy'][name]:.2f})"
                for name, us in row["microseconds"].items()
            )
            print(f"N={n} batch={batch}: {cells}", flush=True)
            data["objective"] = [rows[k] for k in sorted(rows)]
            _save(args.out, data)


# ----------------------------------------------------------------------------------- global


def run_bh(n: int, key: int, budget: float | None, target: float, **options) -> dict:
    res = basin_hopping(n, key=key, target=target, time_limit=budget, **options)
    energy = float(res.energy)
    hit = energy <= target
    chains = int(res.energies.shape[0])
    return {
        "energy": energy,
        "hit": hit,
        "seconds_to_hit": res.seconds_to_best if hit else None,
        "seconds": res.seconds,
        "hops": res.hops,
        "hops_to_hit": res.best_hop if hit else None,
        "local_minimisations": res.minimisations,
        "chains": chains,
    }


_SCIPY_VALUE_AND_GRAD: dict = {}


def scipy_value_and_grad(n: int):
    """Jitted value and gradient of the energy of ``3n`` unconstrained coordinates (cached per
    ``n``, so the warm-up call compiles it once)."""
    if n not in _SCIPY_VALUE_AND_GRAD:
        _SCIPY_VALUE_AND_GRAD[n] = jax.jit(
            jax.value_and_grad(lambda z: _solver.physics_energy(z.reshape(n, 3), 1.0))
        )
    return _SCIPY_VALUE_AND_GRAD[n]


def run_scipy(n: int, key: int, budget: float, target: float) -> dict:
    from scipy.optimize import basinhopping

    t0 = time.perf_counter()
    value_and_grad = scipy_value_and_grad(n)

    def fun(z):
        v, g = value_and_grad(z)
        return float(v), np.asarray(g, np.float64)

    rng = np.random.default_rng(key)
    x0 = rng.standard_normal((n, 3))
    x0 = (x0 / np.linalg.norm(x0, axis=1, keepdims=True)).ravel()
    temperature = 1e-6 * fun(x0)[0]
    spacing = math.sqrt(8 * math.pi / (math.sqrt(3) * n))
    # SciPy calls the callback once for the initial minimum (hop 0; its return value is
    # ignored there), then after every hop.
    state = {"best": math.inf, "hops": -1, "t_hit": None, "hop_hit": None}

    def callback(x, f, accept):
        state["hops"] += 1
        if f < state["best"]:
            state["best"] = float(f)
        if f <= target and state["t_hit"] is None:
            state["t_hit"] = time.perf_counter() - t0
            state["hop_hit"] = state["hops"]
        return state["t_hit"] is not None or time.perf_counter() - t0 >= budget

    minimizer = {
        "method": "L-BFGS-B",
        "jac": True,
        "options": {"maxiter": 40 * n + 2000, "ftol": 1e-15, "gtol": 1e-10},
    }
    res = basinhopping(
        fun,
        x0,
        niter=10**9,
        T=temperature,
        stepsize=0.5 * spacing,
        minimizer_kwargs=minimizer,
        callback=callback,
        seed=rng,
    )
    best = min(state["best"], float(res.fun))
    return {
        "energy": best,
        "hit": state["t_hit"] is not None,
        "seconds_to_hit": state["t_hit"],
        "seconds": time.perf_counter() - t0,
        "hops": state["hops"],  # after a hit in the initial minimum SciPy runs one more hop
        "hops_to_hit": state["hop_hit"],
        "local_minimisations": state["hops"] + 1,
    }


def run_multistart(n: int, key: int, budget: float, target: float, restarts: int = 4) -> dict:
    t0 = time.perf_counter()
    best, calls, t_hit = math.inf, 0, None
    while time.perf_counter() - t0 < budget:
        res = minimize_energy(n, restarts=restarts, key=key * 100_003 + calls)
        calls += 1
        best = min(best, float(res.energy))
        if best <= target:
            t_hit = time.perf_counter() - t0
            break
    return {
        "energy": best,
        "hit": t_hit is not None,
        "seconds_to_hit": t_hit,
        "seconds": time.perf_counter() - t0,
        "hops": None,
        "hops_to_hit": None,
        "local_minimisations": calls * restarts,
    }


def run_bh_one_temperature(
    n: int, key: int, budget: float | None, target: float, **options
) -> dict:
    """``basin_hopping`` with every chain at ``1e-6 |E|`` (no replica exchange; the default
    before the temperature ladder; ``|E|`` of the best known minimum instead of the first
    local minimum, which differs by < 0.1 %)."""
    temperature = _basin.DEFAULT_TEMPERATURE * KNOWN[n]
    return run_bh(n, key, budget, target, temperature=temperature, **options)


METHODS = {
    "bh": run_bh,
    "bh_one_temperature": run_bh_one_temperature,
    "scipy": run_scipy,
    "multistart": run_multistart,
}


def warm_up(n: int, method: str) -> float:
    """Compile what ``method`` runs for ``n`` (excluded from the timed budgets); seconds."""
    t = time.perf_counter()
    if method == "scipy":
        jax.block_until_ready(scipy_value_and_grad(n)(np.ones(3 * n)))
    elif method.startswith("bh"):  # one hop: the first minimisations, the search loop, polish
        METHODS[method](n, 0, None, -math.inf, hops=1)
    else:  # minimize_energy(restarts=4) compiles the solver of basin_hopping's first hop
        basin_hopping(n, key=0, hops=0, chains=4)
    return time.perf_counter() - t


def summarise(runs: list[dict]) -> dict:
    hits = [r for r in runs if r["hit"]]
    times = [r["seconds_to_hit"] for r in hits]
    return {
        "keys": len(runs),
        "hits": len(hits),
        "median_seconds_to_hit": statistics.median(times) if times else None,
        "max_seconds_to_hit": max(times) if times else None,
        "best_rel_gap_missed": min(
            ((r["energy"] - r["known"]) / r["known"] for r in runs if not r["hit"]),
            default=None,
        ),
    }


# ------------------------------------------------------------------------------------ main


def _load(path: Path) -> dict:
    if path.exists():
        try:
            data = json.loads(path.read_text())
            if isinstance(data, dict):
                return data
        except json.JSONDecodeError:
            pass
    return {}


def _save(path: Path, data: dict) -> None:
    data["machine"] = machine()
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def main_local(args) -> None:
    data = _load(args.out)
    if "results" in data and "local" not in data:  # the file's older layout
        data["local"] = data.pop("results")
    rows = {row["n"]: row for row in data.get("local", [])}
    restarts_for = {int(k): int(v) for k, v in (s.split("=") for s in args.restarts_for)}
    print(
        f"{'N':>5} {'restarts':>8} {'compile s':>10} {'median s':>9} {'energy':>20} "
        f"{'rel. gap':>10}"
    )
    for n in args.sizes:
        row = bench_local(n, restarts_for.get(n, args.restarts), args.runs, args.key)
        rows[n] = row
        gap = "" if row["rel_gap"] is None else f"{row['rel_gap']:.2e}"
        print(
            f"{n:>5} {row['restarts']:>8} {row['compile_s']:>10.2f} {row['median_s']:>9.2f} "
            f"{row['energy']:>20.9f} {gap:>10}",
            flush=True,
        )
        data["local"] = [rows[k] for k in sorted(rows)]
        _save(args.out, data)
    print(f"wrote {args.out}")


def main_global(args) -> None:
    data = _load(args.out)
    if "results" in data and "local" not in data:
        data["local"] = data.pop("results")
    table = data.setdefault("global", {})
    budget_for = {int(k): float(v) for k, v in (s.split("=") for s in args.budget_for)}
    print(
        f"{'N':>5} {'method':>10} {'key':>3} {'hit':>4} {'s to hit':>9} {'hops':>6} "
        f"{'local min.':>10} {'rel. gap':>10} {'load':>5}"
    )
    for n in args.sizes:
        known = KNOWN[n]
        target = known * (1 + HIT_RTOL)
        budget = budget_for.get(n, args.budget)
        for method in args.methods:
            warmup_s = warm_up(n, method)
            print(f"{n:>5} {method:>10} warm-up (compilation) {warmup_s:.1f} s", flush=True)
            runs = []
            for key in range(args.first_key, args.first_key + args.keys):
                row = METHODS[method](n, key, budget, target)
                row.update(
                    n=n,
                    method=method,
                    key=key,
                    budget_s=budget,
                    known=known,
                    rel_gap=(row["energy"] - known) / known,
                    load_average=load_average(),
                )
                runs.append(row)
                t = "" if row["seconds_to_hit"] is None else f"{row['seconds_to_hit']:.1f}"
                hops = "" if row["hops"] is None else str(row["hops"])
                print(
                    f"{n:>5} {method:>10} {key:>3} {str(row['hit']):>4} {t:>9} {hops:>6} "
                    f"{row['local_minimisations']:>10} {row['rel_gap']:>10.2e} "
                    f"{row['load_average'][0] if row['load_average'] else 0:>5.1f}",
                    flush=True,
                )
                entry = table.setdefault(str(n), {})
                entry[method] = {"runs": runs, "summary": summarise(runs), "warmup_s": warmup_s}
                _save(args.out, data)
    print(f"wrote {args.out}")


def _relocate_points(x, m: int, rng, from_top: bool = False):
    """``m`` points (random, or among the 12 of highest local energy) moved to random places."""
    y = x.copy()
    pool = np.argsort(np.asarray(_moves.local_energy(x, 1.0)))[-12:] if from_top else len(x)
    idx = rng.choice(pool, m, replace=False)
    z = rng.standard_normal((m, x.shape[1]))
    y[idx] = z / np.linalg.norm(z, axis=1, keepdims=True)
    return y


def _library_move(move, **options):
    """A move of ``mhe_jax.sphere._moves`` as a NumPy function, its key drawn from ``rng``."""
    jitted = jax.jit(lambda x, key: move(x, key, **options))

    def apply(x, rng):
        return np.asarray(jitted(jax.numpy.asarray(x), jax.random.key(int(rng.integers(2**31)))))

    return apply


def main_moves(args) -> None:
    n, chains = args.n, 4
    rng = np.random.default_rng(args.key)
    dtype = _solver.compute_dtype()
    fun = _solver.compiled_objective("euclidean", 1.0, dtype)
    params = _solver.energy_params(1.0)
    opts, steps = _solver.solver_options(n, 3), _solver.default_steps(n)

    def local(x):
        xs, f, _, it, _ = _solver.run_restarts(
            fun, jax.numpy.asarray(x, dtype), params, steps=steps, tol=_basin.HOP_TOL, opts=opts
        )
        return np.asarray(xs), _solver.objective_to_energy(f, params), np.asarray(it)

    x0 = rng.standard_normal((chains, n, 3))
    xs, es, _ = local(x0 / np.linalg.norm(x0, axis=-1, keepdims=True))
    x, e = xs[int(np.argmin(es))], float(np.min(es))
    sp = _basin._spacing(n, 3)

    def all_points(x, step):
        y = x + step * sp * rng.standard_normal(x.shape) / math.sqrt(2)
        return y / np.linalg.norm(y, axis=1, keepdims=True)

    def cap(step, points):
        return _library_move(_moves.cap_move, s=1.0, step=step, spacing=sp, cap=points)

    caps = {step: cap(step, 12) for step in (0.4, 0.8, 1.2)} | {1.6: cap(1.6, 24)}
    relocate = _library_move(_moves.relocate)
    moves = {
        "cap, step 0.4, <= 12 points": lambda x: caps[0.4](x, rng),
        "cap, step 0.8": lambda x: caps[0.8](x, rng),
        "cap, step 1.2": lambda x: caps[1.2](x, rng),
        "cap, step 1.6, <= 24 points": lambda x: caps[1.6](x, rng),
        "all points, 0.3 spacing": lambda x: all_points(x, 0.3),
        "all points, 0.6 spacing": lambda x: all_points(x, 0.6),
        "relocate 1 of the 12 highest-energy": lambda x: _relocate_points(x, 1, rng, True),
        "relocate 1 random (default)": lambda x: relocate(x, rng),
        "relocate 3 random": lambda x: _relocate_points(x, 3, rng),
    }
    known = KNOWN.get(n)
    gap = "" if known is None else f", {(e - known) / known:.2e} above the best known"
    print(f"N = {n}: start minimum E = {e:.9f}{gap}")
    rows = []
    for name, move in moves.items():
        d, its = [], []
        for _ in range(max(1, args.trials // chains)):
            _, f, it = local(np.stack([move(x) for _ in range(chains)]))
            d += list((f - e) / e)
            its += list(it)
        d = np.asarray(d)
        same = np.abs(d) <= HIT_RTOL
        row = {"move": name, "trials": len(d), "same": float(same.mean()),
               "lower": float((d < -HIT_RTOL).mean()), "lowest_rel": float(d.min()),
               "mean_iterations": float(np.mean(its))}
        rows.append(row)
        print(f"{name:38s} same {row['same']:.0%} lower {row['lower']:.0%} "
              f"lowest {row['lowest_rel']:.1e} iterations {row['mean_iterations']:.0f}",
              flush=True)
    data = _load(args.out)
    data["moves"] = {"n": n, "start_energy": e, "key": args.key, "rows": rows}
    _save(args.out, data)
    print(f"wrote {args.out}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    local = sub.add_parser("local", help="minimize_energy: time to the best of R restarts")
    local.add_argument("--sizes", type=int, nargs="+", default=[100, 200, 470])
    local.add_argument("--restarts", type=int, default=16)
    local.add_argument("--restarts-for", nargs="*", default=[], metavar="N=R")
    local.add_argument("--runs", type=int, default=3, help="timed runs after the warm-up")
    local.add_argument("--key", type=int, default=0)
    lbfgs = sub.add_parser("lbfgs", help="optax.lbfgs vs the Riemannian L-BFGS")
    lbfgs.add_argument("--sizes", type=int, nargs="+", default=[100, 200, 470])
    lbfgs.add_argument("--restarts", type=int, default=8)
    lbfgs.add_argument("--reps", type=int, default=3)
    lbfgs.add_argument("--key", type=int, default=1)
    glob = sub.add_parser("global", help="time to the best known minimum, 3 methods")
    glob.add_argument("--sizes", type=int, nargs="+", default=sorted(KNOWN), choices=sorted(KNOWN))
    glob.add_argument("--keys", type=int, default=5)
    glob.add_argument("--first-key", type=int, default=0)
    glob.add_argument("--budget", type=float, default=600.0, help="seconds per run")
    glob.add_argument("--budget-for", nargs="*", default=[], metavar="N=S")
    glob.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    objective = sub.add_parser("objective", help="cost of one energy value and gradient")
    objective.add_argument("--sizes", type=int, nargs="+", default=[122, 200, 470])
    objective.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    objective.add_argument("--evals", type=int, default=200)
    objective.add_argument("--reps", type=int, default=7)
    moves = sub.add_parser("moves", help="where single hop moves land, from one minimum")
    moves.add_argument("--n", type=int, default=200)
    moves.add_argument("--trials", type=int, default=24)
    moves.add_argument("--key", type=int, default=0)
    for p in (local, lbfgs, glob, objective, moves):
        p.add_argument("--out", type=Path, default=Path(__file__).with_name("thomson.json"))
    args = parser.parse_args(argv)
    modes = {
        "local": main_local,
        "lbfgs": main_lbfgs,
        "global": main_global,
        "objective": main_objective,
        "moves": main_moves,
    }
    modes[args.mode](args)


if __name__ == "__main__":
    main()
