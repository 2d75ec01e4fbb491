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
    mean_pairwise_distance,
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


def test_kid_detects_a_shift():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(400, 8)), rng.normal(size=(400, 8))
    same, _ = kid(x, y, subsets=20)
    moved, _ = kid(x, y + 1.0, subsets=20)
    assert abs(same) < 0.05 and moved > 10 * abs(same) + 0.05


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
