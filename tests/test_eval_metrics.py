"""Feature-space metrics checked against closed forms and hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from unclip.eval.metrics import (
    density_coverage,
    fid,
    frechet_distance,
    kid,
    kid_subset_size,
    mean_pairwise_distance,
    mmd2_unbiased,
    precision_recall,
)


def test_frechet_distance_matches_scipy_reference():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    s1, s2 = a @ a.T + np.eye(6), b @ b.T + np.eye(6)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    reference = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(reference, rel=1e-8)


def test_fid_closed_form_for_shifted_scaled_gaussians():
    # N(0, I) vs N(m, 4I) in d dims: |m|^2 + d (1 + 4 - 2*2) = |m|^2 + d.
    d, shift = 4, np.array([1.0, 2.0, 0.0, -1.0])
    assert frechet_distance(np.zeros(d), np.eye(d), shift, 4 * np.eye(d)) == pytest.approx(6 + d)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40000, d))
    y = shift + 2 * rng.normal(size=(40000, d))
    assert fid(x, y) == pytest.approx(6 + d, rel=0.03)


def test_low_rank_fid_equals_the_covariance_route():
    from unclip.eval.metrics import gaussian_stats

    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(20, 64)), rng.normal(loc=0.3, size=(30, 64)) @ rng.normal(size=(64, 64)) / 8
    assert fid(x, y) == pytest.approx(frechet_distance(*gaussian_stats(x), *gaussian_stats(y)), rel=1e-7)


def test_fid_of_a_set_with_itself_is_zero():
    x = np.random.default_rng(2).normal(size=(300, 8))
    assert fid(x, x) == pytest.approx(0.0, abs=1e-6)


def _expected_kernel(a_dot_b: float, norms: float, d: int) -> float:
    """E[(xᵀy/d + 1)³] for independent x ~ N(a, I), y ~ N(b, I) in d dims; ``norms`` = |a|² + |b|².

    With s = xᵀy: E[s] = aᵀb, E[s²] = (aᵀb)² + |a|² + |b|² + d, E[s³] = (aᵀb)³ + 3aᵀb(|a|² + |b|² + d) + 6aᵀb.
    """
    s1, s2 = a_dot_b, a_dot_b**2 + norms + d
    s3 = a_dot_b**3 + 3 * a_dot_b * (norms + d) + 6 * a_dot_b
    return s3 / d**3 + 3 * s2 / d**2 + 3 * s1 / d + 1


def test_kid_matches_the_closed_form_for_shifted_gaussians():
    # N(0, I) vs N(0.5·1, I) in 64 dims: MMD² = E k(x,x') + E k(y,y') - 2 E k(x,y) = 0.9711
    d, shift = 64, 0.5
    m2 = d * shift**2  # |m|²
    expected = _expected_kernel(0, 0, d) + _expected_kernel(m2, 2 * m2, d) - 2 * _expected_kernel(0, m2, d)
    assert expected == pytest.approx(0.97107, abs=1e-5)
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(400, d)), rng.normal(size=(400, d))
    moved, spread = kid(x, y + shift, subsets=20)
    assert moved == pytest.approx(expected, rel=0.1)  # seeds 0-9 spread 3% around it; a biased estimate is +20%
    same, same_spread = kid(x, y, subsets=20)
    assert abs(same) < 0.05 and abs(same) < 3 * same_spread and spread > 0


def test_mmd2_unbiased_by_hand():
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=(4, 3)), rng.normal(loc=0.5, size=(5, 3))
    k = lambda a, b: (a @ b / 3 + 1) ** 3  # noqa: E731
    within_x = sum(k(x[i], x[j]) for i in range(4) for j in range(4) if i != j) / (4 * 3)
    within_y = sum(k(y[i], y[j]) for i in range(5) for j in range(5) if i != j) / (5 * 4)
    cross = sum(k(a, b) for a in x for b in y) / (4 * 5)
    assert mmd2_unbiased(x, y) == pytest.approx(within_x + within_y - 2 * cross, rel=1e-12)


def test_kid_subsets_differ_even_at_100_samples():
    # subset_size=min(100, n) made every subset the whole set at n = 100: std 0 and one estimate
    assert kid_subset_size(100, 100) == 50 and kid_subset_size(400, 250) == 100 and kid_subset_size(3, 9) == 2
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(100, 16)), rng.normal(loc=0.3, size=(100, 16))
    mean, std = kid(x, y, subsets=20)
    assert std > 0.05 * abs(mean) and mean == pytest.approx(mmd2_unbiased(x, y), rel=0.25)
    with pytest.raises(ValueError, match="N>=2"):
        kid(x[:1], y)


def test_precision_recall_density_coverage():
    rng = np.random.default_rng(4)
    real = rng.normal(size=(500, 2))
    assert precision_recall(real, real, k=3) == (1.0, 1.0)
    # Fakes collapsed on one mode: precise but with poor recall and coverage.
    collapsed = rng.normal(scale=0.05, size=(500, 2))
    precision, recall = precision_recall(real, collapsed, k=3)
    assert precision > 0.9 and recall < 0.2
    density, coverage = density_coverage(real, collapsed, k=5)
    assert coverage < 0.2 and density > 1.0
    far = real + 10.0
    assert precision_recall(real, far) == (0.0, 0.0)
    assert density_coverage(real, far) == (0.0, 0.0)


def test_mean_pairwise_distance_by_hand():
    points = np.array([[0.0, 0.0], [3.0, 4.0], [0.0, 4.0]])
    # pairs: 5, 4, 3 -> mean 4
    assert mean_pairwise_distance(points) == pytest.approx(4.0)
    with pytest.raises(ValueError):
        mean_pairwise_distance(points[:1])


def test_clip_score_and_r_precision_by_hand():
    import torch

    from unclip.eval.clip_metrics import clip_score, r_precision

    texts = torch.eye(4)  # four orthogonal captions
    captions = ["a", "b", "c", "d"]
    assert clip_score(texts, texts) == pytest.approx(100.0)
    assert clip_score(texts, torch.roll(texts, 1, 0)) == pytest.approx(0.0)
    # Images 0 and 1 point at their own caption, image 2 at caption 3's.
    images = torch.stack([texts[0], texts[1] + 0.1 * texts[2], texts[3]])
    assert r_precision(images, ["a", "b", "c"], captions, texts, pool=4) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="not in the caption pool"):
        r_precision(images, ["a", "b", "zzz"], captions, texts)


def test_r_precision_samples_distractors_breaks_ties_against_and_records_small_pools():
    import torch

    from unclip.eval.clip_metrics import r_precision, r_precision_pool

    texts = torch.eye(10)
    captions = [f"c{i}" for i in range(10)]
    # Each image leans to c5 more than to its prompt c0, so it is a hit only when c5 is not drawn among
    # the pool - 1 distractors out of 9: P(hit) = 1 - (pool - 1) / 9.
    images = (0.6 * texts[0] + texts[5]).repeat(900, 1)
    prompts = ["c0"] * 900
    for pool, expected in ((2, 8 / 9), (5, 5 / 9), (10, 0.0)):
        score = r_precision(images, prompts, captions, texts, pool=pool, seed=1)
        assert score == pytest.approx(expected, abs=0.04), pool  # binomial sd <= 0.017 at 900 draws
    assert r_precision(images[:1], ["c0"], captions, texts, pool=1) == 1.0  # no distractors: a hit
    # Distractors are drawn afresh for every image, reproducibly by seed.
    assert r_precision(images, prompts, captions, texts, pool=2, seed=2) != r_precision(
        images, prompts, captions, texts, pool=2, seed=1)
    assert r_precision(images, prompts, captions, texts, pool=2, seed=2) == r_precision(
        images, prompts, captions, texts, pool=2, seed=2)
    # A tie with a distractor is a miss.
    tied = (texts[0] + texts[3])[None]
    assert r_precision(tied, ["c0"], captions, texts, pool=10) == 0.0
    # Fewer captions than the pool asks for: each image is ranked among all of them, and the size is recorded.
    assert r_precision_pool(captions[:4], 100) == 4 and r_precision_pool(captions, 5) == 5
    assert r_precision_pool(captions + captions, 100) == 10  # distinct captions
    small = torch.stack([texts[0] + 0.5 * texts[1], texts[2] + 2.0 * texts[1]])
    assert r_precision(small, ["c0", "c2"], captions[:4], texts[:4], pool=100) == 0.5
