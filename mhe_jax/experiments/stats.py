"""Statistics of a seeds × methods study: paired t-tests and t-intervals, Holm across arms.

A study pairs each method with the baseline by seed (same init and data order), so everything
here works on the per-seed differences ``d_i = method_i − baseline_i``:

* :func:`paired_t_test`: ``t = mean(d) / (std(d)/√n)``, two-sided p with ``n − 1`` degrees of
  freedom (Student's t from :mod:`scipy.stats`);
* :func:`paired_t_interval`: ``mean(d) ± t_{n−1, 1−α/2} · std(d)/√n``;
* :func:`holm`: Holm's step-down adjustment across the arms compared with one baseline. The
  intervals use the same levels (:func:`holm_intervals`): the comparison with the k-th smallest
  p-value (k = 1..m) gets confidence ``1 − α/(m − k + 1)``, so the first is Bonferroni's and
  the last the plain ``1 − α``;
* :func:`bootstrap_interval`: a percentile bootstrap, only for ``n >= 10`` pairs. With n pairs
  the bootstrap mean takes at most ``C(2n−1, n)`` values (10 for n = 3) and its interval is never
  wider than the range of the differences, so for a handful of seeds it is far too narrow.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["mean_std", "student_t_sf2", "t_quantile", "paired_t_test", "paired_t_interval",
           "holm", "holm_intervals", "bootstrap_interval", "BOOTSTRAP_MIN_PAIRS"]

#: The fewest pairs for which :func:`bootstrap_interval` is computed at all.
BOOTSTRAP_MIN_PAIRS = 10


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1; 0 for a single value, NaN for none).

    Examples:
        >>> mean_std([1.0, 2.0, 3.0])
        (2.0, 1.0)
    """
    v = [float(x) for x in values]
    if not v:
        return math.nan, math.nan
    return statistics.fmean(v), (statistics.stdev(v) if len(v) > 1 else 0.0)


def student_t_sf2(t: float, dof: float) -> float:
    """Two-sided tail ``P(|T| ≥ |t|)`` of Student's t with ``dof`` degrees of freedom.

    Examples:
        >>> round(student_t_sf2(2.0, 2), 4)
        0.1835
        >>> student_t_sf2(0.0, 5)
        1.0
    """
    from scipy import stats

    if not dof > 0:
        raise ValueError(f"dof must be > 0, got {dof!r}")
    if math.isnan(t):
        return math.nan
    return float(min(1.0, 2.0 * stats.t.sf(abs(t), dof)))


def t_quantile(q: float, dof: float) -> float:
    """The ``q`` quantile of Student's t with ``dof`` degrees of freedom.

    Examples:
        >>> round(t_quantile(0.975, 2), 3)  # the 95 % two-sided critical value for 3 pairs
        4.303
    """
    from scipy import stats

    if not 0 < q < 1:
        raise ValueError(f"q must be in (0, 1), got {q!r}")
    if not dof > 0:
        raise ValueError(f"dof must be > 0, got {dof!r}")
    return float(stats.t.ppf(q, dof))


def paired_t_test(differences: Sequence[float]) -> tuple[float, float]:
    """``(t, two-sided p)`` of the paired t-test that the mean of ``differences`` is 0.

    NaN for fewer than two pairs. All differences equal: ``p = 0`` if they are non-zero (no
    spread, a sure difference under the test's model), 1 if they are all 0.

    Examples:
        >>> t, p = paired_t_test([0.2, 0.4, 0.6])
        >>> round(t, 3), round(p, 3)
        (3.464, 0.074)
    """
    d = np.asarray(differences, np.float64)
    n = d.size
    if n < 2:
        return math.nan, math.nan
    sd = float(d.std(ddof=1))
    mean = float(d.mean())
    if sd == 0.0:
        return (math.copysign(math.inf, mean), 0.0) if mean != 0.0 else (0.0, 1.0)
    t = mean / (sd / math.sqrt(n))
    return t, student_t_sf2(t, n - 1)


def paired_t_interval(differences: Sequence[float], *, level: float = 0.95
                      ) -> tuple[float, float]:
    """Two-sided ``level`` t-interval of the mean of ``differences``.

    ``mean ± t_{n−1, (1+level)/2} · std/√n`` (std with ddof = 1). NaN for fewer than two pairs;
    a point interval when every difference is equal.

    Examples:
        >>> lo, hi = paired_t_interval([0.2, 0.4, 0.6])
        >>> round(lo, 3), round(hi, 3)
        (-0.097, 0.897)
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    d = np.asarray(differences, np.float64)
    n = d.size
    if n < 2:
        return math.nan, math.nan
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    half = t_quantile((1 + level) / 2, n - 1) * sd / math.sqrt(n)
    return mean - half, mean + half


def holm(p_values: Mapping[str, float]) -> dict[str, float]:
    """Holm-adjusted p-values: ``max_{j ≤ k} min(1, (m − j + 1) p_(j))`` for the k-th smallest.

    NaN p-values are left out of ``m`` and stay NaN.

    Examples:
        >>> holm({"a": 0.01, "b": 0.04, "c": 0.03})
        {'a': 0.03, 'b': 0.06, 'c': 0.06}
    """
    valid = sorted((p, k) for k, p in p_values.items() if not math.isnan(p))
    m = len(valid)
    out = {k: math.nan for k in p_values}
    running = 0.0
    for j, (p, k) in enumerate(valid):
        running = max(running, min(1.0, (m - j) * p))
        out[k] = running
    return out


def holm_intervals(differences: Mapping[str, Sequence[float]], *, level: float = 0.95
                   ) -> dict[str, dict[str, float | tuple[float, float]]]:
    """Paired t-intervals across arms at Holm's step-down levels, with the adjusted p-values.

    The arms are ordered by their paired t-test p-value; the k-th (k = 1..m, m the arms with at
    least two pairs) gets the interval at confidence ``1 − α/(m − k + 1)``, ``α = 1 − level``.
    Returns ``{arm: {"interval": (lo, hi), "level": confidence used, "t": paired t,
    "p": raw p, "p_holm": adjusted p}}``.

    Examples:
        >>> out = holm_intervals({"a": [0.2, 0.4, 0.6], "b": [0.1, -0.1, 0.3]})
        >>> round(out["a"]["level"], 3), round(out["b"]["level"], 3)
        (0.975, 0.95)
    """
    alpha = 1 - level
    tests = {k: paired_t_test(d) for k, d in differences.items()}
    p = {k: tp[1] for k, tp in tests.items()}
    adjusted = holm(p)
    order = sorted((v, k) for k, v in p.items() if not math.isnan(v))
    m = len(order)
    out: dict[str, dict[str, float | tuple[float, float]]] = {}
    for rank, (_, k) in enumerate(order):
        conf = 1 - alpha / (m - rank)
        out[k] = {"interval": paired_t_interval(differences[k], level=conf), "level": conf,
                  "t": tests[k][0], "p": p[k], "p_holm": adjusted[k]}
    for k in differences:
        out.setdefault(k, {"interval": (math.nan, math.nan), "level": math.nan,
                           "t": tests[k][0], "p": p[k], "p_holm": adjusted[k]})
    return out


def bootstrap_interval(
    differences: Sequence[float], *, level: float = 0.95, resamples: int = 10_000, seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``differences`` (resampling pairs).

    Only for ``n >= BOOTSTRAP_MIN_PAIRS`` (10) pairs: below that the bootstrap is far too narrow
    (never wider than the differences' range), and this returns ``(nan, nan)``.

    Examples:
        >>> bootstrap_interval([0.1, 0.2, 0.3])
        (nan, nan)
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    d = np.asarray(differences, np.float64)
    if d.size < BOOTSTRAP_MIN_PAIRS:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(resamples, d.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)
