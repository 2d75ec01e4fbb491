"""Sample-quality metrics computed on feature vectors.

Every function takes plain ``[N, D]`` feature arrays (numpy or torch), so the
same code serves any feature extractor; ``unclip.eval.features`` provides the
EfficientNet-Lite0 features we use in place of Inception (no Inception weights
can be had offline).

- FID: Fréchet distance between Gaussians fitted to two feature sets
  (Heusel et al. 2017, eq. 6): ‖μ₁−μ₂‖² + Tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^½).
- KID: unbiased MMD² with the cubic polynomial kernel k(x,y) = (xᵀy/d + 1)³,
  averaged over random subsets of at most half the smaller set (Bińkowski et al. 2018, §3).
- Precision / recall with k-NN manifolds (Kynkäänniemi et al. 2019, eq. 1–2).
- Density / coverage (Naeem et al. 2020, eq. 2–3).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = [
    "frechet_distance",
    "gaussian_stats",
    "fid",
    "kid",
    "kid_subset_size",
    "mmd2_unbiased",
    "precision_recall",
    "density_coverage",
    "mean_pairwise_distance",
]


def _as_f64(features) -> np.ndarray:
    if isinstance(features, torch.Tensor):
        features = features.detach().to("cpu", torch.float64).numpy()
    array = np.asarray(features, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] < 2:
        raise ValueError(f"expected features of shape [N>=2, D], got {array.shape}")
    return array


def gaussian_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[D]`` and unbiased covariance ``[D, D]`` of ``[N, D]`` features."""
    array = _as_f64(features)
    return array.mean(axis=0), np.cov(array, rowvar=False)


def _sqrtm_psd(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

    Tr((Σ₁Σ₂)^½) is computed as Tr((Σ₁^½ Σ₂ Σ₁^½)^½), which is symmetric PSD, so
    an eigendecomposition suffices and no complex parts appear.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    root1 = _sqrtm_psd(sigma1)
    cross = _sqrtm_psd(root1 @ sigma2 @ root1)
    diff = mu1 - mu2
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(cross)
    return float(max(value, 0.0))


def fid(real_features, fake_features) -> float:
    """FID between two ``[N, D]`` feature sets.

    With fewer samples than dimensions the D×D route is wasteful: writing
    Σᵢ = BᵢᵀBᵢ with Bᵢ the centred features over √(nᵢ−1), the non-zero
    eigenvalues of Σ₁Σ₂ are the squared singular values of B₁B₂ᵀ, so
    Tr((Σ₁Σ₂)^½) = ‖B₁B₂ᵀ‖_* (nuclear norm) and Tr(Σᵢ) = ‖Bᵢ‖²_F — exact, and
    only an n₁×n₂ SVD.
    """
    real, fake = _as_f64(real_features), _as_f64(fake_features)
    if max(len(real), len(fake)) >= real.shape[1]:
        return frechet_distance(*gaussian_stats(real), *gaussian_stats(fake))
    b1 = (real - real.mean(0)) / np.sqrt(len(real) - 1)
    b2 = (fake - fake.mean(0)) / np.sqrt(len(fake) - 1)
    diff = real.mean(0) - fake.mean(0)
    cross = np.linalg.svd(b1 @ b2.T, compute_uv=False).sum()
    value = diff @ diff + (b1 * b1).sum() + (b2 * b2).sum() - 2 * cross
    return float(max(value, 0.0))


def kid_subset_size(n_real: int, n_fake: int, subset_size: int = 100) -> int:
    """Subset size for ``kid``: ``subset_size``, but at most half of the smaller set (and at least 2).

    Bińkowski et al. (2018, §4) average the unbiased MMD² over random subsets; when a subset is the
    whole set every subset is the same and the std over subsets is 0, which says nothing. Half the
    smaller set keeps the subsets different, so the std measures the spread of the estimate.
    """
    return max(2, min(subset_size, min(n_real, n_fake) // 2))


def kid(real_features, fake_features, *, subsets: int = 50, subset_size: int = 100, seed: int = 0) -> tuple[float, float]:
    """KID (mean, std over subsets): unbiased MMD² with a cubic polynomial kernel (Bińkowski et al. 2018).

    Subsets hold ``kid_subset_size(len(real), len(fake), subset_size)`` rows of each set.
    """
    real, fake = _as_f64(real_features), _as_f64(fake_features)
    size = kid_subset_size(len(real), len(fake), subset_size)
    rng = np.random.default_rng(seed)
    values = [mmd2_unbiased(real[rng.choice(len(real), size, replace=False)],
                            fake[rng.choice(len(fake), size, replace=False)]) for _ in range(subsets)]
    return float(np.mean(values)), float(np.std(values))


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² of [m, d] and [n, d] arrays with k(a, b) = (aᵀb/d + 1)³ (Gretton et al. 2012, eq. 3):
    the within-set means leave out the diagonal k(a, a)."""
    dim = x.shape[1]
    k_xx, k_yy, k_xy = (x @ x.T / dim + 1) ** 3, (y @ y.T / dim + 1) ** 3, (x @ y.T / dim + 1) ** 3
    m, n = len(x), len(y)
    within_x = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    within_y = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
    return float(within_x + within_y - 2 * k_xy.mean())


def _pairwise(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.sqrt(np.clip(sq, 0, None))


def _knn_radii(features: np.ndarray, k: int) -> np.ndarray:
    """Distance of each point to its k-th nearest neighbour (itself excluded)."""
    dist = _pairwise(features, features)
    k = min(k, len(features) - 1)
    return np.sort(dist, axis=1)[:, k]  # column 0 is the point itself


def precision_recall(real_features, fake_features, *, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019)."""
    real, fake = _as_f64(real_features), _as_f64(fake_features)
    real_radii, fake_radii = _knn_radii(real, k), _knn_radii(fake, k)
    dist = _pairwise(fake, real)  # [N_fake, N_real]
    precision = (dist <= real_radii[None, :]).any(axis=1).mean()
    recall = (dist.T <= fake_radii[None, :]).any(axis=1).mean()
    return float(precision), float(recall)


def density_coverage(real_features, fake_features, *, k: int = 5) -> tuple[float, float]:
    """Density and coverage (Naeem et al. 2020)."""
    real, fake = _as_f64(real_features), _as_f64(fake_features)
    radii = _knn_radii(real, k)
    inside = _pairwise(fake, real) <= radii[None, :]  # [N_fake, N_real]
    density = inside.sum() / (k * len(fake))
    coverage = inside.any(axis=0).mean()
    return float(density), float(coverage)


def mean_pairwise_distance(features) -> float:
    """Mean L2 distance between distinct pairs: the diversity of one prompt's samples."""
    array = _as_f64(features)
    dist = _pairwise(array, array)
    n = len(array)
    return float(dist.sum() / (n * (n - 1)))
