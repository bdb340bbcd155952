"""Adaptive multi-source balancing (SAIL-Embedding, METHODS §9.2): sampling weights from embeddings.

For every training set, k-means centroids of (a sample of) its embeddings; for every validation set,
the same. The similarity of a training set to a validation set is ``sum(P * C)``, where ``C`` is the
centroid cosine matrix and ``P`` the entropic optimal-transport (Sinkhorn) plan for the cost
``1 - C`` with uniform marginals. A training set's score is its mean similarity over the validation
sets; the weights are ``softmax(score / temperature)``, ready for ``data.weights``.

:func:`balance` does it for a configuration: the sampling groups of ``data.train`` (merged
classification is one group) against the evaluation sets of ``eval.root``, embedded with
``model``: a seeded sample of each group's queries and first positives, and of each evaluation
set's queries and candidates (``omniret balance`` writes the result as a config file).

Choices where the paper is silent (all configurable): k (16), the Sinkhorn regularisation eps
(0.05, in cost units), uniform marginals over centroids, and the softmax temperature (1.0, the plain
softmax the paper names; smaller values separate the sets more). k-means and Sinkhorn are a few
lines of numpy here: neither scikit-learn nor POT is a dependency, and both would bring scipy for
these two loops.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def kmeans(x: np.ndarray, k: int, *, iters: int = 50, seed: int = 0) -> np.ndarray:
    """(k, D) centroids of the rows of ``x`` by Lloyd's algorithm from a k-means++ start (seeded).

    ``k`` larger than the number of distinct rows gives those rows. An emptied cluster keeps its centroid.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or not len(x):
        raise ValueError(f"k-means needs a non-empty (N, D) array, got shape {x.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    distinct = np.unique(x, axis=0)
    if k >= len(distinct):
        return distinct
    rng = np.random.default_rng(seed)
    centroids = [x[rng.integers(len(x))]]
    for _ in range(1, k):  # k-means++: the next start far from the chosen ones
        d2 = np.min(((x[:, None] - np.array(centroids)[None]) ** 2).sum(-1), axis=1)
        centroids.append(x[rng.choice(len(x), p=d2 / d2.sum())])
    c = np.array(centroids)
    for _ in range(iters):
        labels = ((x[:, None] - c[None]) ** 2).sum(-1).argmin(1)
        moved = np.array([x[labels == j].mean(0) if (labels == j).any() else c[j] for j in range(k)])
        if np.allclose(moved, c):
            break
        c = moved
    return c


def sinkhorn(cost: np.ndarray, eps: float = 0.05, *, a: np.ndarray | None = None, b: np.ndarray | None = None,
             iters: int = 2000, tol: float = 1e-10) -> np.ndarray:
    """Entropic OT plan ``P`` (n, m) for ``cost`` with marginals ``a``, ``b`` (uniform by default).

    ``P = diag(u) exp(-cost / eps) diag(v)`` with ``P 1 = a`` and ``P^T 1 = b``, found by alternating
    scaling in the log domain (stable for small eps).
    """
    cost = np.asarray(cost, dtype=np.float64)
    if cost.ndim != 2 or 0 in cost.shape or not np.isfinite(cost).all():
        raise ValueError(f"cost must be a finite, non-empty (n, m) matrix, got shape {cost.shape}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    n, m = cost.shape
    a = np.full(n, 1.0 / n) if a is None else np.asarray(a, dtype=np.float64)
    b = np.full(m, 1.0 / m) if b is None else np.asarray(b, dtype=np.float64)
    if a.shape != (n,) or b.shape != (m,) or not np.isclose(a.sum(), b.sum()):
        raise ValueError("marginals must match the cost's shape and have the same total")
    log_k, log_a, log_b = -cost / eps, np.log(a), np.log(b)
    f, g = np.zeros(n), np.zeros(m)
    for _ in range(iters):
        f = log_a - _logsumexp(log_k + g[None, :], axis=1)
        g = log_b - _logsumexp(log_k + f[:, None], axis=0)
        if np.abs(np.exp(_logsumexp(log_k + f[:, None] + g[None, :], axis=1)) - a).max() < tol:
            break
    return np.exp(log_k + f[:, None] + g[None, :])


def _logsumexp(x: np.ndarray, axis: int) -> np.ndarray:
    top = x.max(axis=axis, keepdims=True)
    return (top + np.log(np.exp(x - top).sum(axis=axis, keepdims=True))).squeeze(axis)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def set_similarity(train_centroids: np.ndarray, val_centroids: np.ndarray, eps: float = 0.05) -> float:
    """``sum(P * C)``: C the centroid cosines, P the Sinkhorn plan for the cost ``1 - C``."""
    c = _unit(np.asarray(train_centroids, dtype=np.float64)) @ _unit(np.asarray(val_centroids, dtype=np.float64)).T
    return float((sinkhorn(1.0 - c, eps) * c).sum())


def balance_weights(train: Mapping[str, np.ndarray], val: Mapping[str, np.ndarray], *, k: int = 16,
                    eps: float = 0.05, temperature: float = 1.0, seed: int = 0) -> dict[str, dict[str, float]]:
    """Per training set: ``score`` (mean Sinkhorn similarity to the validation sets) and ``weight``
    (softmax of score / temperature over the training sets; the weights sum to 1)."""
    if not train or not val:
        raise ValueError("balancing needs at least one training set and one validation set")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    val_c = [kmeans(v, k, seed=seed) for v in val.values()]
    scores = {name: float(np.mean([set_similarity(kmeans(x, k, seed=seed), c, eps) for c in val_c]))
              for name, x in train.items()}
    z = np.array(list(scores.values())) / temperature
    w = np.exp(z - z.max())
    w /= w.sum()
    return {name: {"score": scores[name], "weight": float(wi)} for name, wi in zip(scores, w, strict=True)}


def balance(cfg: Any, *, samples: int = 256, k: int = 16, eps: float = 0.05, temperature: float = 1.0,
            embedder: Any = None) -> dict[str, dict[str, float]]:
    """:func:`balance_weights` for ``cfg`` (an :class:`~omniret.config.OmniretConfig`); see the module docstring."""
    from omniret.data.mixing import load_mixture
    from omniret.eval.embedding import embed_sides
    from omniret.eval.mmeb import load_datasets
    from omniret.models.embedder import Embedder

    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    mixture, _ = load_mixture(cfg.data)
    datasets, _ = load_datasets(cfg.eval)
    if not mixture.groups or not datasets:
        raise ValueError("balancing needs training pairs (data.train) and evaluation sets (eval.root)")
    embedder = embedder or Embedder.from_config(cfg)
    seed = cfg.data.seed

    def vectors(name: str, sides: list) -> np.ndarray:
        chosen = random.Random(f"{seed}/balance/{name}").sample(sides, min(samples, len(sides)))
        embedded = embed_sides(embedder, chosen, [f"{name} sample {i}" for i in range(len(chosen))])
        if not embedded.ok.any():
            raise ValueError(f"no item of {name} could be embedded")
        return embedded.vectors[embedded.ok]

    train = {group: vectors(group, [s for p in pairs for s in (p.query, p.positives[0])])
             for group, pairs in mixture.groups.items() if pairs}
    val = {ds.name: vectors(ds.name, [*ds.queries, *ds.candidates]) for ds in datasets}
    return balance_weights(train, val, k=k, eps=eps, temperature=temperature, seed=seed)
