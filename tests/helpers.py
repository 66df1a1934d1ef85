"""Float64 NumPy brute-force references, written from the paper's formulas (one pair at a time)."""

from __future__ import annotations

import math

import numpy as np


def neuron_matrix(w, neuron_axis=-1):
    w = np.moveaxis(np.asarray(w, np.float64), neuron_axis, -1)
    return w.reshape(-1, w.shape[-1])


def unit(W):
    return W / np.linalg.norm(W, axis=0, keepdims=True)


def riesz(r, s):
    return math.log(1.0 / r) if s == 0 else r ** (-s)


def distance(a, b, kind):
    if kind == "euclidean":
        return float(np.linalg.norm(a - b))
    return math.acos(max(-1.0, min(1.0, float(a @ b))))


def np_energy(w, s=2.0, kind="euclidean", half_space=False, neuron_axis=-1):
    """(1/(M(M−1))) Σ_{i≠j} f_s(dist(ŵ_i, ŵ_j)) over the M = N (or 2N) neurons."""
    W = unit(neuron_matrix(w, neuron_axis))
    if half_space:
        W = np.concatenate([W, -W], axis=1)
    m = W.shape[1]
    if m < 2:
        return 0.0
    total = sum(
        riesz(distance(W[:, i], W[:, j], kind), s) for i in range(m) for j in range(m) if i != j
    )
    return total / (m * (m - 1))


def np_gaussian_energy(w, t=2.0, kind="euclidean", half_space=False, neuron_axis=-1):
    W = unit(neuron_matrix(w, neuron_axis))
    if half_space:
        W = np.concatenate([W, -W], axis=1)
    m = W.shape[1]
    vals = [
        math.exp(-t * distance(W[:, i], W[:, j], kind) ** 2)
        for i in range(m) for j in range(m) if i != j
    ]
    return math.log(sum(vals) / len(vals))


def np_output_energy(w, labels, s=2.0, kind="euclidean", neuron_axis=-1):
    """Eq. 8: (1/(m(N−1))) Σ_i Σ_{j≠y_i} f_s(dist(ŵ_{y_i}, ŵ_j))."""
    W = unit(neuron_matrix(w, neuron_axis))
    n = W.shape[1]
    total = sum(
        riesz(distance(W[:, y], W[:, j], kind), s) for y in labels for j in range(n) if j != y
    )
    return total / (len(labels) * (n - 1))


def np_official(w, power, half_space=False):
    """Line-by-line NumPy transcription of _add_thomson_constraint (github wy1iu/MHE)."""
    filt = neuron_matrix(w)
    n = filt.shape[1]
    if half_space:
        filt = np.concatenate([filt, -filt], axis=1)
        n *= 2
    norm = np.sqrt(np.sum(filt * filt, axis=0, keepdims=True) + 1e-4)
    inner = (filt.T @ filt) / (norm.T @ norm)
    if power in ("0", "1", "2"):
        cross = 2.0 - 2.0 * inner + np.eye(n)
        final = -np.log(cross) if power == "0" else cross ** (-float(power) / 2)
    else:
        acos = np.arccos(inner) / np.pi + 1e-4
        final = -np.log(acos) if power == "a0" else acos ** (-float(power[1]))
    final = np.triu(final, 1)
    return final.sum() / (n * (n - 1) / 2.0)


def np_point_energy(x, s=1.0, distance="euclidean"):
    """Brute-force Σ_{i<j} f_s(dist(x_i, x_j)) of points x (rows, n × d) in float64 NumPy
    (the sphere solver's physics convention: a sum over unordered pairs, not a mean)."""
    x = np.asarray(x, np.float64)
    i, j = np.triu_indices(len(x), 1)
    if distance == "euclidean":
        r = np.linalg.norm(x[i] - x[j], axis=1)
    else:
        r = np.arccos(np.clip(np.sum(x[i] * x[j], axis=1), -1, 1))
    return float(np.sum(-np.log(r) if s == 0 else r ** (-s)))


# Bad values of the arguments every mhe_jax.sphere solver checks alike (n, dim, s, distance):
# (kwargs, exception type, message) rows, shared by test_sphere's and test_basin's
# test_bad_arguments. Tests must not mutate the dicts (copy them: {**kwargs, ...}).
SPHERE_BAD_ARGUMENTS = [
    (dict(n=1), ValueError, "n must be >= 2"),
    (dict(n=2.5), TypeError, "n must be an int"),
    (dict(n=4, dim=1), ValueError, "dim must be >= 2"),
    (dict(n=4, s=-1.0), ValueError, "s must be"),
    (dict(n=4, s=float("nan")), ValueError, "s must be"),
    (dict(n=4, distance="cosine"), ValueError, "distance must be one of"),
]


def child_xla_flags(*extra: str) -> str:
    """XLA_FLAGS for a subprocess that sets its own flags (e.g. a host device count): ``extra``
    plus the suite's optimisation level (conftest: LLVM -O0), and nothing else of the parent's."""
    import os

    level = [f for f in os.environ.get("XLA_FLAGS", "").split()
             if f.startswith("--xla_backend_optimization_level")]
    return " ".join([*level, *extra])


def eight_cpu_devices_env() -> dict:
    """The environment of a child process that checks sharding on 8 host CPU devices: this
    checkout first on its path, and the suite's XLA flags (:func:`child_xla_flags`)."""
    import os
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[1])
    return {**os.environ, "JAX_PLATFORMS": "cpu",
            "XLA_FLAGS": child_xla_flags("--xla_force_host_platform_device_count=8"),
            "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}


def jaxpr_shapes(jaxpr, primitive: str | None = None) -> list[tuple[int, ...]]:
    """Output shapes of the equations of ``jaxpr`` (of the ``primitive`` ones, e.g.
    ``"dot_general"``, when given), inside scans and other sub-jaxprs too."""
    import jax.extend

    shapes: list[tuple[int, ...]] = []
    for eqn in jaxpr.eqns:
        if primitive is None or eqn.primitive.name == primitive:
            shapes += [tuple(v.aval.shape) for v in eqn.outvars if hasattr(v.aval, "shape")]
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            shapes += jaxpr_shapes(sub, primitive)
    return shapes


def once_per_session(tmp_path_factory, name: str, compute):
    """``compute()`` (a JSON-able value) once per test session, also under pytest-xdist: the
    first worker to ask computes it under a file lock in the session's shared temporary
    directory and the others read its result, so a fixture that runs child processes for a
    minute does not run once per worker. Without xdist it is simply ``compute()``. (xdist's
    ``xdist_group`` would do this by scheduling, but does not group under pytest 9.)"""
    import fcntl
    import json
    import os

    if "PYTEST_XDIST_WORKER" not in os.environ:
        return compute()
    shared = tmp_path_factory.getbasetemp().parent  # this session's, common to the workers
    result = shared / f"{name}.json"
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if result.exists():
            return json.loads(result.read_text())
        value = compute()
        result.write_text(json.dumps(value))
        return value


def wait_or_kill(procs: dict, timeout: float) -> dict:
    """Wait for the ``subprocess.Popen`` values of ``procs`` with one deadline for them all:
    ``{name: (return code, stdout or None, end time)}``. Past the deadline, the processes still
    running (only these, started by the caller) are SIGKILLed by pid and reaped, and
    ``subprocess.TimeoutExpired`` is raised for the caller to report."""
    import os
    import signal
    import subprocess
    import time

    deadline = time.monotonic() + timeout
    out = {}
    try:
        for name, p in procs.items():
            stdout, _ = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            out[name] = (p.returncode, stdout, time.time())
    except subprocess.TimeoutExpired:
        for p in procs.values():
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
                p.communicate()
        raise
    return out
