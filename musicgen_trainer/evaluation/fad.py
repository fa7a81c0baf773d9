"""Fréchet distance between two sets of embeddings (the "FAD" of Fréchet Audio Distance).

Each set is summarised by a Gaussian (mean and covariance of its rows); the distance between
N(mu_a, S_a) and N(mu_b, S_b) is ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))``.

Small sets: the estimate is biased upward (the sample means and covariances carry noise that
only adds distance, so two small sets drawn from the same distribution have FAD > 0) and it
is noisy; compare figures computed on sets of the same sizes only, and read them with the
bootstrap interval of `fad_with_interval`.
"""
from __future__ import annotations

import numpy as np

# When scipy's sqrtm meets a singular product (non-finite result), both covariances get this
# much added to their diagonal (relative to their mean variance), the usual FAD/FID remedy.
SQRTM_EPS = 1e-6


def _check(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must be [N, D] embeddings, got shape {x.shape}")
    if x.shape[0] < 2:
        raise ValueError(f"{name} has {x.shape[0]} embedding(s): a Fréchet distance needs at least 2 per set")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} holds non-finite values (NaN or inf)")
    return x


def _trace_sqrt_product_from_data(ca: np.ndarray, cb: np.ndarray) -> float:
    """``tr((S_a S_b)^(1/2))`` from the centred data ``[N_a, D]``, ``[N_b, D]``.

    With ``S = C^T C / (N - 1)``, the eigenvalues of ``S_a S_b`` are the squared singular values
    of ``C_a C_b^T`` over ``(N_a - 1)(N_b - 1)``, so the trace of the root is the sum of those
    singular values: no square root of a (rank-deficient, when N <= D) matrix is ever taken,
    and FAD(X, X) comes out 0 to rounding.
    """
    singular = np.linalg.svd(ca @ cb.T, compute_uv=False)
    return float(singular.sum() / np.sqrt((ca.shape[0] - 1) * (cb.shape[0] - 1)))


def _trace_sqrt_product_from_cov(sa: np.ndarray, sb: np.ndarray) -> float:
    """``tr((S_a S_b)^(1/2))`` with scipy's ``sqrtm`` (sets larger than the dimension)."""
    from scipy import linalg

    root = linalg.sqrtm(sa @ sb)
    if not np.isfinite(root).all():
        eps = SQRTM_EPS * max(float(np.trace(sa) + np.trace(sb)) / (2 * sa.shape[0]), 1e-12)
        offset = eps * np.eye(sa.shape[0])
        root = linalg.sqrtm((sa + offset) @ (sb + offset))
    return float(np.real(np.trace(root)))  # imaginary parts are rounding noise


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to ``a`` ``[N, D]`` and ``b`` ``[M, D]``.

    N, M >= 2 (sample covariances, ``ddof=1``). Computed in float64; when either set has no more
    rows than dimensions (the usual case for a few generated clips) the trace term comes from the
    data's singular values (exact, no matrix square root of a singular covariance), otherwise from
    ``scipy.linalg.sqrtm`` of the covariance product, with a small diagonal offset if it is
    singular. Tiny negative results from rounding are clamped to 0, so ``frechet_distance(x, x)``
    is 0 to ~1e-12 relative to the sets' variance.

    Raises:
        ValueError: wrong shapes, fewer than 2 rows, different dimensions, non-finite values.
    """
    a, b = _check(a, "the first set"), _check(b, "the second set")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"the sets have different embedding sizes ({a.shape[1]} and {b.shape[1]})")
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    ca, cb = a - mu_a, b - mu_b
    trace_a = float((ca * ca).sum() / (a.shape[0] - 1))
    trace_b = float((cb * cb).sum() / (b.shape[0] - 1))
    if min(a.shape[0], b.shape[0]) <= a.shape[1]:
        cross = _trace_sqrt_product_from_data(ca, cb)
    else:
        sa = ca.T @ ca / (a.shape[0] - 1)
        sb = cb.T @ cb / (b.shape[0] - 1)
        cross = _trace_sqrt_product_from_cov(sa, sb)
    mean_term = float(((mu_a - mu_b) ** 2).sum())
    distance = mean_term + trace_a + trace_b - 2.0 * cross
    # Rounding can leave a tiny negative (e.g. identical sets): a distance is never below 0.
    return max(distance, 0.0)


def fad_with_interval(a: np.ndarray, b: np.ndarray, n_boot: int = 200, seed: int = 0,
                      level: float = 0.95) -> dict:
    """The Fréchet distance of ``a`` ``[N, D]`` and ``b`` ``[M, D]`` with a bootstrap interval.

    Each of ``n_boot`` replicates resamples both sets with replacement (same sizes) and computes the
    distance. Resampling repeats rows, which itself adds distance (a replicate of X against X is
    > 0), so the replicates are shifted back by their mean excess over the estimate (the bootstrap
    bias estimate) before the ``level`` percentile interval is read from them; the low end is
    clamped at 0. The interval shows how much the figure moves with the choice of clips; it does
    not remove the estimator's own upward bias on small sets (see the module doc): small sets are
    biased upward and noisy, so always report ``n_a`` and ``n_b`` with the figure.

    Returns:
        ``{"fad", "low", "high", "n_a", "n_b", "n_boot", "level"}`` (floats and ints, JSON-ready).
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1, got {level}")
    if n_boot < 2:
        raise ValueError(f"n_boot must be at least 2, got {n_boot}")
    a, b = _check(a, "the first set"), _check(b, "the second set")
    estimate = frechet_distance(a, b)
    rng = np.random.default_rng(seed)
    replicates = np.empty(n_boot)
    for i in range(n_boot):
        ia = rng.integers(0, a.shape[0], a.shape[0])
        ib = rng.integers(0, b.shape[0], b.shape[0])
        replicates[i] = frechet_distance(a[ia], b[ib])
    shifted = replicates - (replicates.mean() - estimate)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(shifted, [tail, 1.0 - tail])
    return {"fad": estimate, "low": max(float(low), 0.0), "high": max(float(high), 0.0),
            "n_a": int(a.shape[0]), "n_b": int(b.shape[0]), "n_boot": int(n_boot), "level": float(level)}
