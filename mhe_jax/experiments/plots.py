"""Plots of model internals: 2-D features with the classifier neurons (Fig. 4 of the paper).

Training curves of finished runs are in :mod:`mhe_jax.experiments.report`.
"""

from __future__ import annotations

import numpy as np

__all__ = ["plot_features_2d"]


def plot_features_2d(features, labels, classifier_kernel, ax=None, title=None, *,
                     num_classes=None, max_points=None, point_size=2.0, seed=0):
    """Scatter 2-D features coloured by class, with the normalised classifier neurons as arrows.

    Args:
      features: (n, 2) features (e.g. ``MNIST2D.features(x)``).
      labels: (n,) integer class labels.
      classifier_kernel: (2, C) classifier kernel; each column (neuron) is drawn, normalised to
        unit length and scaled to the data radius, as a red arrow from the origin.
      ax: matplotlib Axes to draw into; a new ``Figure`` (no pyplot, Agg-friendly) if None.
      title: optional axes title.
      num_classes: number of colours (default: max(C, max label + 1)).
      max_points: plot at most this many (randomly chosen, ``seed``) points.

    Returns:
      The matplotlib ``Figure``.
    """
    import matplotlib as mpl  # lazy: matplotlib is an optional dependency
    from matplotlib.figure import Figure

    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels).astype(int).reshape(-1)
    w = np.asarray(classifier_kernel, dtype=np.float64)
    if f.ndim != 2 or f.shape[1] != 2:
        raise ValueError(f"features must have shape (n, 2), got {f.shape}")
    if y.shape[0] != f.shape[0]:
        raise ValueError(f"labels must have shape ({f.shape[0]},), got {y.shape}")
    if w.ndim != 2 or w.shape[0] != 2:
        raise ValueError(f"classifier_kernel must have shape (2, C), got {w.shape}")
    if num_classes is not None:
        n_cls = int(num_classes)
    else:
        n_cls = max(w.shape[1], int(y.max(initial=-1)) + 1)
    if max_points is not None and f.shape[0] > max_points:
        idx = np.random.default_rng(seed).choice(f.shape[0], int(max_points), replace=False)
        f, y = f[idx], y[idx]

    if ax is None:
        fig = Figure(figsize=(5.0, 5.0))
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    cmap = mpl.colormaps["tab10" if n_cls <= 10 else "tab20"]
    for c in range(n_cls):
        m = y == c
        if np.any(m):
            ax.scatter(f[m, 0], f[m, 1], s=point_size, color=cmap(c % cmap.N), label=str(c),
                       alpha=0.6, linewidths=0)
    radius = float(np.percentile(np.linalg.norm(f, axis=1), 95)) if f.shape[0] else 1.0
    radius = radius if radius > 0 else 1.0
    wn = w / np.maximum(np.linalg.norm(w, axis=0, keepdims=True), 1e-12)
    for c in range(w.shape[1]):
        dx, dy = radius * wn[:, c]
        ax.annotate("", xy=(dx, dy), xytext=(0.0, 0.0),
                    arrowprops=dict(arrowstyle="->", color="red", lw=1.5))
        ax.text(1.08 * dx, 1.08 * dy, str(c), color="red", ha="center", va="center", fontsize=8)
    lim = 1.15 * max(radius, float(np.abs(f).max()) if f.size else radius)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.axhline(0.0, color="0.85", lw=0.5, zorder=0)
    ax.axvline(0.0, color="0.85", lw=0.5, zorder=0)
    ax.legend(loc="upper right", fontsize=6, markerscale=3, ncol=2)
    if title is not None:
        ax.set_title(title)
    return fig
