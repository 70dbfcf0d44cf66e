"""The one PCA of tokvec: principal components from a covariance matrix, in float64, sorted by eigenvalue
(descending), each component's largest-|value| entry made positive so the result does not depend on LAPACK's
signs. `extract --pca` accumulates the covariance of a large table chunk by chunk, `distill` and `plot_tokens`
pass the rows; all three get the same components from the same covariance.
"""

from __future__ import annotations

import numpy as np


def _fix_signs(evecs: np.ndarray) -> np.ndarray:
    pivot = np.argmax(np.abs(evecs), axis=0)
    signs = np.sign(evecs[pivot, np.arange(evecs.shape[1])])
    signs[signs == 0] = 1.0
    return evecs * signs


def components(cov: np.ndarray, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(eigenvalues descending [k], components as columns [d, k]) of a d x d covariance, float64."""
    cov = np.asarray(cov, dtype=np.float64)
    cov = (cov + cov.T) / 2  # exact for a symmetric matrix; removes rounding asymmetry otherwise
    evals, evecs = np.linalg.eigh(cov)
    order = np.argsort(evals)[::-1][:k]
    return evals[order], _fix_signs(evecs[:, order])


def pca_components(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean [d], eigenvalues descending [r], components as columns [d, r]) of the rows of x (n, d), in float64;
    r = d, or n when there are fewer rows than columns.

    With fewer rows than columns (a few tokens of a 4,096-d table) the components come from the n x n Gram matrix
    of the centred rows instead of the d x d covariance: the same nonzero eigenvalues, components ``X^T u /
    sqrt((n - 1) * eigenvalue)``, at a cost in n, not d."""
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(axis=0)
    xc = x - mean
    scale = max(1, x.shape[0] - 1)
    if x.shape[0] >= x.shape[1]:
        evals, comps = components(xc.T @ xc / scale)
        return mean, evals, comps
    evals, u = components(xc @ xc.T / scale)
    norms = np.sqrt(np.clip(evals, 0, None) * scale)
    comps = xc.T @ u / np.where(norms > 0, norms, 1.0)
    return mean, evals, _fix_signs(comps)
