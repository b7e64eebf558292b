"""Fréchet distance (magnet_jax.metrics.frechet) against the scipy `sqrtm` formula of google-research's FAD."""
import numpy as np
import pytest
from scipy import linalg

from magnet_jax.metrics.frechet import embedding_statistics, fad_from_embeddings, frechet_distance


def _scipy_frechet(mu1, sigma1, mu2, sigma2, eps=1e-6):
    """||mu1 - mu2||^2 + tr(s1 + s2 - 2 sqrtm(s1 s2)), real part, with the usual eps * I fallback."""
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean.real))


def _embeddings(n, d, seed, shift=0.0):
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    return rng.normal(size=(n, d)) @ mix + shift + rng.normal(size=d) * 0.1


def test_statistics_match_numpy():
    emb = _embeddings(50, 8, 0)
    mu, sigma = embedding_statistics(emb.astype(np.float32))
    assert mu.dtype == sigma.dtype == np.float64
    np.testing.assert_allclose(mu, emb.mean(0), rtol=1e-6)
    np.testing.assert_allclose(sigma, np.cov(emb, rowvar=False), rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(sigma, sigma.T)


@pytest.mark.parametrize("n_a, n_b, d", [(300, 400, 16), (400, 300, 64)])  # scipy sqrtm: ~1 s CPU at d=128
def test_matches_scipy_sqrtm_formula(n_a, n_b, d):
    a, b = _embeddings(n_a, d, 1), _embeddings(n_b, d, 2, shift=0.3)
    stats_a, stats_b = embedding_statistics(a), embedding_statistics(b)
    expected = _scipy_frechet(*stats_a, *stats_b)
    assert expected > 0.1
    assert frechet_distance(*stats_a, *stats_b) == pytest.approx(expected, rel=1e-6)
    assert fad_from_embeddings(a, b) == pytest.approx(expected, rel=1e-6)


def test_near_singular_covariances():
    """Fewer embeddings than dimensions (rank-deficient covariance) and a covariance with eigenvalues spanning
    ten decades: still the scipy value, and finite."""
    d = 32
    low_rank_a, low_rank_b = _embeddings(20, d, 3), _embeddings(24, d, 4, shift=0.2)
    stats_a, stats_b = embedding_statistics(low_rank_a), embedding_statistics(low_rank_b)
    assert np.linalg.matrix_rank(stats_a[1]) < d
    got = frechet_distance(*stats_a, *stats_b)
    assert np.isfinite(got)
    assert got == pytest.approx(_scipy_frechet(*stats_a, *stats_b), rel=1e-6)

    rng = np.random.default_rng(5)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    ill = (q * np.logspace(-10, 0, d)) @ q.T
    q2, _ = np.linalg.qr(rng.normal(size=(d, d)))
    other = (q2 * rng.uniform(0.5, 2.0, d)) @ q2.T
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    got = frechet_distance(mu1, ill, mu2, other)
    assert got == pytest.approx(_scipy_frechet(mu1, ill, mu2, other), rel=1e-6)
    # a singular covariance against itself: zero up to the sqrt(rounding) of its null eigenvalues (~1e-8
    # relative; scipy's sqrtm formula does no better here)
    assert abs(frechet_distance(*stats_a, *stats_a)) < 1e-7 * np.trace(stats_a[1])


def test_symmetric_and_zero_on_identical_stats():
    a, b = _embeddings(200, 24, 6), _embeddings(150, 24, 7, shift=-0.5)
    sa, sb = embedding_statistics(a), embedding_statistics(b)
    assert frechet_distance(*sa, *sb) == pytest.approx(frechet_distance(*sb, *sa), rel=1e-10)
    assert fad_from_embeddings(a, b) == pytest.approx(fad_from_embeddings(b, a), rel=1e-10)
    assert abs(frechet_distance(*sa, *sa)) < 1e-10 * np.trace(sa[1])
    assert abs(fad_from_embeddings(a, a.copy())) < 1e-10 * np.trace(sa[1])
    # the mean term alone when covariances are equal
    assert frechet_distance(sa[0] + 1.0, sa[1], sa[0], sa[1]) == pytest.approx(24.0, rel=1e-8)


def test_clear_errors():
    a = _embeddings(10, 8, 8)
    with pytest.raises(ValueError, match="at least 2 embeddings"):
        embedding_statistics(a[:1])
    with pytest.raises(ValueError, match="at least 2 embeddings"):
        fad_from_embeddings(a, a[:1])
    with pytest.raises(ValueError, match="2-D"):
        embedding_statistics(a[0])
    with pytest.raises(ValueError, match="different dimensions: 8 and 6"):
        fad_from_embeddings(a, a[:, :6])
    mu, sigma = embedding_statistics(a)
    with pytest.raises(ValueError, match="different dimensions"):
        frechet_distance(mu, sigma, mu[:6], sigma[:6, :6])
    with pytest.raises(ValueError, match="sigma1 must be"):
        frechet_distance(mu, sigma[:6, :6], mu, sigma)
    with pytest.raises(ValueError, match="NaN"):
        embedding_statistics(np.where(a > 1, np.nan, a))
