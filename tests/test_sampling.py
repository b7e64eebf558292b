"""Token sampling without sorts: thresholds against the reference's sort-based filters, the
inverse-CDF draw against its distribution, and the confidences the reference uses."""
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from magnet_jax.decode.sampling import inverse_cdf_draw, sample_tokens, top_k_threshold, top_p_threshold
from tests.reference import audiocraft_lm, require


def _rows(seed=0, n=64, v=2048):
    """Softmax rows from flat to peaked (as temperatures 3 ... 0.1 give)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, v)).astype(np.float32) * np.geomspace(0.3, 30.0, n, dtype=np.float32)[:, None]
    return np.asarray(jax.nn.softmax(jnp.asarray(logits), axis=-1))


@pytest.mark.parametrize("top_p", [0.1, 0.5, 0.9, 0.99])
def test_top_p_keeps_what_the_reference_sort_keeps(top_p, monkeypatch):
    """What audiocraft's own `sample_top_p` keeps (read off the distribution it hands its sampler)."""
    torch = require("torch")
    audiocraft_lm.load_audiocraft()  # bare audiocraft packages, stubs for flashy & co (unused here)
    utils = importlib.import_module("audiocraft.utils.utils")
    probs = _rows()
    handed = []
    monkeypatch.setattr(utils, "multinomial", lambda p, num_samples: handed.append(p.clone()) or p.argmax(-1, True))
    utils.sample_top_p(torch.from_numpy(probs.copy()), top_p)
    order = torch.sort(torch.from_numpy(probs), dim=-1, descending=True).indices.numpy()  # the same sort as theirs
    expect = np.zeros(probs.shape, bool)
    np.put_along_axis(expect, order, handed[0].numpy() > 0, -1)
    got = np.asarray(probs >= np.asarray(top_p_threshold(jnp.asarray(probs), top_p))[:, None])
    # Only an entry whose preceding mass is within float32 rounding of p may differ (and an entry of
    # probability 0, which their renormalised distribution cannot show as kept, and no sampler draws).
    sorted_p = np.take_along_axis(probs, order, -1)
    before = np.cumsum(sorted_p, axis=-1, dtype=np.float32) - sorted_p
    ambiguous = np.zeros(probs.shape, bool)
    np.put_along_axis(ambiguous, order, np.abs(before - top_p) < 1e-5, -1)
    assert not (got != expect)[~ambiguous & (probs > 0)].any()
    assert expect.sum() > probs.shape[0] and got.any(-1).all()  # the most probable entry is always kept


def test_top_k_keeps_the_k_largest_and_their_ties():
    probs = _rows(seed=1)
    for k in (1, 7, 250, 2048):
        kept = np.asarray(probs >= np.asarray(top_k_threshold(jnp.asarray(probs), k))[:, None])
        kth = -np.sort(-probs, axis=-1)[:, k - 1:k]
        np.testing.assert_array_equal(kept, probs >= kth)  # the reference's own `probs >= min_value_top_k`
    tied = jnp.asarray([[0.4, 0.2, 0.2, 0.1, 0.1]])
    np.testing.assert_array_equal(np.asarray(tied >= top_k_threshold(tied, 2)[:, None]), [[1, 1, 1, 0, 0]])


@pytest.mark.parametrize("v", [5, 100, 2048])
def test_inverse_cdf_draw_follows_the_weights(v):
    rng = np.random.default_rng(v)
    w = rng.exponential(size=v).astype(np.float32) * (rng.random(v) < 0.6)
    w[-1] = 0.3  # mass in the last (padded) block too
    n = 40_000
    tokens = np.asarray(inverse_cdf_draw(jax.random.key(0), jnp.broadcast_to(jnp.asarray(w), (n, v))))
    assert (w[tokens] > 0).all()  # never an entry of weight 0
    freq = np.bincount(tokens, minlength=v) / n
    expect = w / w.sum()
    tolerance = 5 * np.sqrt(expect * (1 - expect) / n) + 1e-9  # 5 standard deviations per entry
    assert (np.abs(freq - expect) <= tolerance).all(), np.abs(freq - expect).max()


def test_inverse_cdf_draw_edge_rows():
    v = 300
    rows = np.zeros((4, v), np.float32)
    rows[0, 0] = 1.0  # all mass on the first entry
    rows[1, -1] = 1e-30  # one tiny entry at the end
    rows[2, [63, 64]] = [1.0, 1e-8]  # both sides of a block boundary
    rows[3] = 1.0
    keys = jax.random.split(jax.random.key(3), 2000)
    draws = np.asarray(jax.vmap(lambda k: inverse_cdf_draw(k, jnp.asarray(rows)))(keys))
    assert (draws[:, 0] == 0).all() and (draws[:, 1] == v - 1).all()
    assert set(np.unique(draws[:, 2])) <= {63, 64}
    assert len(np.unique(draws[:, 3])) > 250


def test_sample_tokens_filters_and_confidences():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]] * 4000))
    keys = jax.random.key(0)
    tok, conf = sample_tokens(keys, logits, 1.0, use_sampling=True, top_k=0, top_p=0.6)
    counts = np.bincount(np.asarray(tok), minlength=4) / 4000
    assert counts[2] == 0 and counts[3] == 0  # 0.5 + 0.3 reaches p; later tokens are cut
    assert abs(counts[0] - 0.5 / 0.8) < 0.03
    np.testing.assert_allclose(np.asarray(conf)[np.asarray(tok) == 0], 0.5, rtol=1e-5)  # unrenormalised
    tok, conf = sample_tokens(keys, logits, 1.0, use_sampling=True, top_k=2, top_p=0.0)
    assert set(np.unique(np.asarray(tok))) <= {0, 1}
    np.testing.assert_allclose(np.asarray(conf)[np.asarray(tok) == 0], 0.5 / 0.8, rtol=1e-5)  # renormalised
    # top-p wins over top-k, as in the reference
    tok, conf = sample_tokens(keys, logits, 1.0, use_sampling=True, top_k=1, top_p=0.6)
    assert set(np.unique(np.asarray(tok))) == {0, 1}
    np.testing.assert_allclose(np.asarray(conf)[np.asarray(tok) == 1], 0.3, rtol=1e-5)
    tok, conf = sample_tokens(keys, logits, 1.0, use_sampling=True, top_k=0, top_p=0.0)
    counts = np.bincount(np.asarray(tok), minlength=4) / 4000
    np.testing.assert_allclose(counts, [0.5, 0.3, 0.15, 0.05], atol=0.03)
    # greedy: the argmax; its confidence is the plain softmax even with top-k (the reference
    # renormalises only inside its top-k sampling)
    tok, conf = sample_tokens(keys, logits, 1.0, use_sampling=False, top_k=2, top_p=0.0)
    assert (np.asarray(tok) == 0).all()
    np.testing.assert_allclose(np.asarray(conf), 0.5, rtol=1e-5)
    # A floored temperature gives a near one-hot distribution.
    _, conf = sample_tokens(keys, logits[:1], 0.0, use_sampling=False, top_k=0, top_p=0.0)
    assert float(conf[0]) > 0.999
