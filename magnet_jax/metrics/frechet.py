"""The Fréchet distance between Gaussians fitted to two embedding sets (FAD with VGGish embeddings).

    d^2 = ||mu1 - mu2||^2 + tr(s1) + tr(s2) - 2 tr(sqrtm(s1 s2))      (Dowson & Landau 1982)

tr(sqrtm(s1 s2)) is computed in float64 without a general (Schur) matrix square root: for covariances
(symmetric positive semi-definite) s1 s2 is similar to the symmetric PSD matrix
M = sqrt(s1) s2 sqrt(s1), whose eigenvalues are those of s1 s2, so tr(sqrtm(s1 s2)) = sum(sqrt(eig(M))).
Both square roots come from `eigh`, tiny negative eigenvalues from rounding are clipped to zero, and a
singular or near-singular covariance (fewer embeddings than dimensions) needs no eps * I fallback. On
well-conditioned data this agrees with google-research's `scipy.linalg.sqrtm` formula to float64
rounding; where that formula's sqrtm is itself inaccurate (near-singular products) this is the better
estimate of the same quantity.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np


def embedding_statistics(embeddings) -> Tuple[np.ndarray, np.ndarray]:
    """Embeddings [N, D] -> (mean [D], covariance [D, D]) in float64; the covariance with ddof=1 (np.cov)."""
    e = np.asarray(embeddings, np.float64)
    if e.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D array [N, D], got shape {e.shape}")
    if e.shape[0] < 2:
        raise ValueError(f"need at least 2 embeddings to estimate a covariance, got {e.shape[0]}")
    if not np.isfinite(e).all():
        raise ValueError("embeddings contain NaN or inf")
    mu = e.mean(axis=0)
    centered = e - mu
    sigma = centered.T @ centered / (e.shape[0] - 1)
    return mu, (sigma + sigma.T) / 2


def _check_stats(mu, sigma, which: str) -> Tuple[np.ndarray, np.ndarray]:
    mu = np.asarray(mu, np.float64)
    sigma = np.asarray(sigma, np.float64)
    if mu.ndim != 1:
        raise ValueError(f"mu{which} must be 1-D [D], got shape {mu.shape}")
    if sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"sigma{which} must be [D, D] = {(mu.shape[0],) * 2} to match mu{which}, got {sigma.shape}")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f"mu{which} / sigma{which} contain NaN or inf")
    return mu, sigma


def _psd_sqrt(sym: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eigh((sym + sym.T) / 2)
    return (vecs * np.sqrt(np.clip(vals, 0.0, None))) @ vecs.T


def trace_sqrt_product(sigma1, sigma2) -> float:
    """tr(sqrtm(sigma1 @ sigma2)) for symmetric PSD sigma1, sigma2 (float64)."""
    root1 = _psd_sqrt(np.asarray(sigma1, np.float64))
    inner = root1 @ np.asarray(sigma2, np.float64) @ root1
    vals = np.linalg.eigvalsh((inner + inner.T) / 2)
    return float(np.sqrt(np.clip(vals, 0.0, None)).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (float64; >= 0 up to rounding)."""
    mu1, sigma1 = _check_stats(mu1, sigma1, "1")
    mu2, sigma2 = _check_stats(mu2, sigma2, "2")
    if mu1.shape != mu2.shape:
        raise ValueError(f"the two Gaussians have different dimensions: {mu1.shape[0]} and {mu2.shape[0]}")
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2))


def fad_from_embeddings(embeddings_a, embeddings_b) -> float:
    """Fréchet distance between the Gaussians fitted to two embedding sets [Na, D] and [Nb, D]
    (e.g. VGGish embeddings of generated and of reference audio: the FAD)."""
    mu_a, sigma_a = embedding_statistics(embeddings_a)
    mu_b, sigma_b = embedding_statistics(embeddings_b)
    if mu_a.shape != mu_b.shape:
        raise ValueError(f"the embedding sets have different dimensions: {mu_a.shape[0]} and {mu_b.shape[0]}")
    return frechet_distance(mu_a, sigma_a, mu_b, sigma_b)
