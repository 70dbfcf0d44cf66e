"""k-means on your own vectors (`tokvec.kmeans`) and on texts (`Model.cluster`), in the Rust core.

k-means++ seeding, Lloyd iterations, several restarts keeping the lowest inertia; parallel, with the
GIL released, and deterministic for a seed whatever the number of threads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tokvec import _core
from tokvec._validate import int_at_least, matrix

__all__ = ["KMeansResult", "kmeans"]


@dataclass
class KMeansResult:
    """The result of `kmeans`.

    Attributes:
        labels: int64 (n,) cluster of each point, in 0..k-1.
        centroids: float32 (k, d) cluster centers.
        inertia: sum of squared Euclidean distances of the points to their centers.
        n_iter: Lloyd iterations of the best restart.
    """

    labels: np.ndarray
    centroids: np.ndarray
    inertia: float
    n_iter: int


def kmeans(
    x: Any,
    k: int,
    *,
    n_init: int = 3,
    max_iter: int = 100,
    tol: float = 1e-4,
    seed: int = 0,
    init: Any = None,
) -> KMeansResult:
    """k-means (Euclidean) with k-means++ seeding and restarts.

    Args:
        x: (n, d) float vectors.
        k: number of clusters, 1 <= k <= n.
        n_init: restarts with different seedings; the lowest inertia wins.
        max_iter: Lloyd iterations per restart.
        tol: stop when the squared center shift is <= tol x the data's mean variance per dimension
            (scikit-learn's rule); 0 runs until the labels stop changing.
        seed: the random seed (same seed, same result, on any number of threads).
        init: optional (k, d) initial centers; then one run without seeding.

    Returns:
        a `KMeansResult`.

    Raises:
        ValueError: k out of range, bad options, NaN/inf values, an init of the wrong shape.
        TypeError: x is not a float array.
    """
    X = matrix(x, "x")
    if X.dtype != np.float32:
        raise TypeError("kmeans takes float vectors, not packed bits")
    k = int_at_least(k, "k", 1)
    if k > X.shape[0]:
        raise ValueError(f"k={k} is larger than the number of points ({X.shape[0]})")
    n_init = int_at_least(n_init, "n_init", 1)
    max_iter = int_at_least(max_iter, "max_iter", 1)
    seed = int_at_least(seed, "seed", 0)
    if isinstance(tol, bool) or not isinstance(tol, (int, float, np.floating)) or not (0 <= tol < float("inf")):
        raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
    c = None
    if init is not None:
        c = matrix(init, "init")
        if c.shape != (k, X.shape[1]):
            raise ValueError(f"init must have shape ({k}, {X.shape[1]}), got {c.shape}")
    labels, centroids, inertia, n_iter = _core.kmeans(X, k, n_init, max_iter, float(tol), seed % 2**64, c)
    return KMeansResult(labels=labels, centroids=centroids, inertia=float(inertia), n_iter=int(n_iter))
