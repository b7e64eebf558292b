"""The embedded synthetic dataset: deterministic, structured as specified, per-host slicing."""
import math

import numpy as np
import pytest

from magnet_jax.config import ConditionerConfig, DataConfig, LMConfig
from magnet_jax.data.synthetic import GENRES, INSTRUMENTS, TEMPOS, VOCAB, SyntheticMusicTokens, encode_captions

DATA = SyntheticMusicTokens(card=64, n_q=4, num_frames=48, noise=0.1, seed=3, max_text_len=8)


def test_examples_are_deterministic_and_order_independent():
    a = DATA.examples([5, 9, 100])
    b = DATA.examples([100, 5])
    np.testing.assert_array_equal(a["codes"][0], b["codes"][1])
    np.testing.assert_array_equal(a["codes"][2], b["codes"][0])
    other = SyntheticMusicTokens(card=64, n_q=4, num_frames=48, noise=0.1, seed=4, max_text_len=8)
    assert (other.examples([5])["codes"] != a["codes"][:1]).any()
    assert a["codes"].dtype == np.int32 and a["codes"].min() >= 0 and a["codes"].max() < 64


def test_process_slices_tile_the_global_batch():
    whole = DATA.batch(7, 8)
    parts = [DATA.batch(7, 8, process_index=i, process_count=2) for i in range(2)]
    for k in whole:
        np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), whole[k])
    assert set(whole) == {"codes", "text_ids", "text_mask", "padding_mask"}
    with pytest.raises(ValueError, match="not divisible"):
        DATA.batch(0, 9, process_count=2)
    held_out = DATA.eval_batch(0, 8)["codes"]
    assert not any((held_out[:, None] == DATA.batch(s, 8)["codes"][None]).all(axis=(2, 3)).any() for s in range(4))


def test_structure_noise_and_captions():
    clean = SyntheticMusicTokens(card=64, n_q=4, num_frames=48, noise=0.0, seed=0, max_text_len=8)
    ex = clean.examples(range(64))
    for codes, caption in zip(ex["codes"], ex["captions"]):
        period = TEMPOS[caption.split()[0]]
        np.testing.assert_array_equal(codes[0, period:], codes[0, :-period])  # stage 0 repeats its motif
        for k in range(1, 4):  # stage k is a fixed permutation of stage k - 1
            np.testing.assert_array_equal(codes[k], clean.permutations[k - 1][codes[k - 1]])
        words = caption.split()
        assert words[1] in GENRES and words[3] in INSTRUMENTS
    noisy = SyntheticMusicTokens(card=64, n_q=4, num_frames=48, noise=0.2, seed=0, max_text_len=8)
    n = noisy.examples(range(400))["codes"]
    agree = (n[:, 1] == noisy.permutations[0][n[:, 0]]).mean()
    assert abs(agree - (0.8 + 0.2 / 64)) < 0.02


def test_reference_losses():
    e, v = 0.1, 64
    p = 1 - e + e / v
    expect = -p * math.log(p) - (v - 1) * (e / v) * math.log(e / v)
    assert DATA.noise_floor_nats() == pytest.approx(expect)
    uni = DATA.unigram_entropy_nats()
    assert uni.shape == (4,) and (uni > DATA.noise_floor_nats() + 2.5).all() and (uni <= math.log(64) + 1e-9).all()


def test_bayes_optimal_predictor_reaches_the_floor_and_nothing_beats_it():
    """The floor is what the generator's Bayes-optimal predictor scores on held-out data (the
    expectation, within the sampling error of 20k tokens per stage), and predictors that
    trust the clean token more or less score worse on the same tokens."""
    data = SyntheticMusicTokens(card=64, n_q=4, num_frames=50, noise=0.1, seed=3, max_text_len=8)
    indices = data.eval_indices(0, 400)
    bayes = data.bayes_nats(indices)
    floor = data.noise_floor_nats()
    per_token_sd = math.sqrt(0.1 * 0.9) * (math.log(64 / 0.1) - 0.1)  # a Bernoulli(noise) mixture, roughly
    assert np.all(np.abs(bayes - floor) < 4 * per_token_sd / math.sqrt(400 * 50)), (bayes, floor)
    codes = data.examples(indices)["codes"]
    hit_rate = (bayes - (-math.log(0.1 / 64))) / (-math.log(1 - 0.1 + 0.1 / 64) + math.log(0.1 / 64))
    for p_true in (0.8, 0.85, 0.95, 0.99):  # any other weight on the clean token, the rest uniform
        other = (1 - p_true) / 63
        ce = -(hit_rate * math.log(p_true) + (1 - hit_rate) * math.log(other))
        assert np.all(ce > bayes), (p_true, ce, bayes)
    assert codes.shape == (400, 4, 50)


def test_caption_encoding_and_config_checks():
    ids, mask = encode_captions(["fast jazz with piano"], 6)
    assert ids.shape == (1, 6) and mask.tolist() == [[True] * 4 + [False] * 2]
    assert [VOCAB[i] for i in ids[0, :4]] == ["fast", "jazz", "with", "piano"]
    with pytest.raises(ValueError, match="unknown word 'kazoo'"):
        encode_captions(["fast jazz with kazoo"], 6)
    with pytest.raises(ValueError, match="more than max_text_len=2"):
        encode_captions(["fast jazz with piano"], 2)
    with pytest.raises(ValueError, match="raise conditioner.vocab_size"):
        SyntheticMusicTokens.from_config(DataConfig(), LMConfig(card=64), ConditionerConfig(vocab_size=8))


def test_structure_agreement_scores_data_and_random_codes():
    ex = DATA.examples(range(16))
    agree = DATA.structure_agreement(ex["codes"], ex["captions"])
    assert agree.shape == (4,) and (np.abs(agree - 0.9) < 0.06).all()  # noise 0.1
    rand = np.random.default_rng(0).integers(0, 64, ex["codes"].shape)
    assert (DATA.structure_agreement(rand, ex["captions"])[1:] < 0.1).all()
    # The chance level the verdict compares against: the best of the period's phases at stage 0.
    chance = DATA.random_agreement(ex["captions"], 30)
    assert chance[0] > 2 / 64 and (np.abs(chance[1:] - 1 / 64) < 0.01).all(), chance
