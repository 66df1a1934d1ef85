"""Classification losses of the official MHE code."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def official_cross_entropy(logits, labels, *, label_smoothing: float = 0.01, log_eps: float = 1e-4):
    r"""Mean label-smoothed softmax cross-entropy with ``log_eps`` inside the log (official code).

    ``−Σ_k ỹ_k log(softmax(z)_k + log_eps)`` with ``ỹ = (1 − ε)·onehot(y) + ε/K``.
    logits: (B, K); labels: (B,) integers. ``log_eps=0`` gives the usual loss.
    """
    logits = jnp.asarray(logits, jnp.float32)
    k = logits.shape[-1]
    target = jax.nn.one_hot(labels, k) * (1.0 - label_smoothing) + label_smoothing / k
    if log_eps == 0:
        logp = jax.nn.log_softmax(logits)
    else:
        logp = jnp.log(jax.nn.softmax(logits) + log_eps)
    return -jnp.mean(jnp.sum(target * logp, axis=-1))
