"""An embedded, procedurally generated "music token" dataset with captions (no downloads).

Each example is a caption such as "fast jazz with piano and calm mood" and 4 codebook
streams of `num_frames` tokens built like RVQ codes of a periodic piece:

- stage 0 repeats a motif: the (genre, instrument) pair picks one of a fixed set of motifs,
  the tempo word its period P (first P tokens), the example a random phase;
- stage k > 0 is a fixed per-stage permutation of the stage k-1 token at the same frame
  (finer codebooks depend on coarser ones);
- every token is replaced by a uniform one with probability `noise`.

The mood words are distractors (they change nothing). The "world" (motifs, permutations)
is fixed; `seed` only selects the examples. Known floor: with the context or caption
revealing the clean token, the best possible cross-entropy is the entropy of the noise
channel (`noise_floor_nats`, an expectation; `bayes_nats` is the Bayes-optimal predictor's
cross-entropy on given examples, the floor of a finite held-out set). Stage 0 with everything masked and no caption also lacks
the motif and phase, so the floor is a lower bound; the caption is what closes that gap.
The unigram entropy per stage is what a model that ignores all context reaches.
"""
from __future__ import annotations

import math
from typing import Dict, List, Sequence, Tuple

import numpy as np

from magnet_jax.data.interface import TokenSourceBase

TEMPOS = {"slow": 16, "medium": 12, "fast": 8, "rapid": 6}
GENRES = ("ambient", "techno", "jazz", "rock", "folk", "disco", "metal", "lofi")
INSTRUMENTS = ("piano", "guitar", "bass", "synth", "drums", "strings", "flute", "organ")
MOODS = ("happy", "sad", "calm", "dark", "bright", "dreamy")
_FILLERS = ("with", "and", "mood")
_WORLD_SEED = 20240117  # fixed: the same motifs and permutations for every data seed
_EVAL_OFFSET = 2**40  # held-out examples live far from the training indices
_MAX_PERIOD = max(TEMPOS.values())

VOCAB: Tuple[str, ...] = ("<pad>",) + tuple(sorted(set(TEMPOS) | set(GENRES) | set(INSTRUMENTS) | set(MOODS)
                                                  | set(_FILLERS)))
_WORD_ID = {w: i for i, w in enumerate(VOCAB)}


def encode_captions(captions: Sequence[str], max_len: int) -> Tuple[np.ndarray, np.ndarray]:
    """Word-level ids int32 [B, max_len] (0 = padding) and mask bool [B, max_len]."""
    ids = np.zeros((len(captions), max_len), np.int32)
    for b, caption in enumerate(captions):
        words = caption.lower().split()
        if len(words) > max_len:
            raise ValueError(f"caption {caption!r} has {len(words)} words, more than max_text_len={max_len}")
        for i, w in enumerate(words):
            if w not in _WORD_ID:
                raise ValueError(f"unknown word {w!r} in caption {caption!r}; the synthetic vocabulary is "
                                 f"{list(VOCAB[1:])}")
            ids[b, i] = _WORD_ID[w]
    return ids, ids > 0


def _entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


class SyntheticMusicTokens(TokenSourceBase):
    """The embedded procedural dataset (see the module doc); a `TokenSource` with every diagnostic."""

    def __init__(self, card: int, n_q: int, num_frames: int, noise: float = 0.1, seed: int = 0,
                 max_text_len: int = 8):
        if card < 2 or n_q < 1 or num_frames < 1:
            raise ValueError(f"need card >= 2, n_q >= 1, num_frames >= 1; got {card}, {n_q}, {num_frames}")
        if not 0.0 <= noise < 1.0:
            raise ValueError(f"noise must be in [0, 1), got {noise}")
        if max_text_len < 7:
            raise ValueError(f"captions have up to 7 words; max_text_len={max_text_len} is too short")
        self.card, self.n_q, self.num_frames, self.noise, self.seed = card, n_q, num_frames, noise, seed
        self.max_text_len = max_text_len
        world = np.random.default_rng(_WORLD_SEED)
        self.motifs = world.integers(0, card, (len(GENRES), len(INSTRUMENTS), _MAX_PERIOD))
        self.permutations = np.stack([world.permutation(card) for _ in range(max(n_q - 1, 1))])
        self._periods = np.array(list(TEMPOS.values()))
        self._tempo_words = list(TEMPOS)
        self._unigram = None

    @classmethod
    def from_config(cls, data_cfg, lm_cfg, cond_cfg) -> "SyntheticMusicTokens":
        if cond_cfg.vocab_size < len(VOCAB):
            raise ValueError(f"conditioner.vocab_size={cond_cfg.vocab_size} is smaller than the synthetic "
                             f"caption vocabulary ({len(VOCAB)} words); raise conditioner.vocab_size")
        return cls(card=lm_cfg.card, n_q=lm_cfg.n_q, num_frames=data_cfg.num_frames, noise=data_cfg.noise,
                   seed=data_cfg.seed, max_text_len=cond_cfg.max_text_len)

    @property
    def vocab_size(self) -> int:
        return len(VOCAB)

    # -- generation ----------------------------------------------------------------------

    def _draw(self, indices: np.ndarray):
        """Per-example random draws, each from its own stream keyed by (seed, index)."""
        k, t = self.n_q, self.num_frames
        attrs = np.empty((len(indices), 5), np.int64)
        flips = np.empty((len(indices), k, t), bool)
        tokens = np.empty((len(indices), k, t), np.int64)
        for b, index in enumerate(indices):
            rng = np.random.default_rng([self.seed, int(index)])
            tempo, genre, inst, mood = rng.integers(0, [len(TEMPOS), len(GENRES), len(INSTRUMENTS),
                                                        len(MOODS) + 1])
            attrs[b] = tempo, genre, inst, mood, rng.integers(0, self._periods[tempo])
            flips[b] = rng.random((k, t)) < self.noise
            tokens[b] = rng.integers(0, self.card, (k, t))
        return attrs, flips, tokens

    def _captions(self, attrs: np.ndarray) -> List[str]:
        out = []
        for tempo, genre, inst, mood, _ in attrs:
            words = [self._tempo_words[tempo], GENRES[genre], "with", INSTRUMENTS[inst]]
            if mood < len(MOODS):
                words += ["and", MOODS[mood], "mood"]
            out.append(" ".join(words))
        return out

    def examples(self, indices: Sequence[int]) -> Dict[str, object]:
        indices = np.asarray(indices, np.int64)
        attrs, flips, noise_tokens = self._draw(indices)
        tempo, genre, inst, _, phase = attrs.T
        period = self._periods[tempo]
        t = np.arange(self.num_frames)
        pos = (t[None, :] + phase[:, None]) % period[:, None]
        clean0 = self.motifs[genre[:, None], inst[:, None], pos]
        codes = np.empty((len(indices), self.n_q, self.num_frames), np.int64)
        codes[:, 0] = np.where(flips[:, 0], noise_tokens[:, 0], clean0)
        for k in range(1, self.n_q):
            clean = self.permutations[k - 1][codes[:, k - 1]]
            codes[:, k] = np.where(flips[:, k], noise_tokens[:, k], clean)
        captions = self._captions(attrs)
        text_ids, text_mask = encode_captions(captions, self.max_text_len)
        return {"codes": codes.astype(np.int32), "text_ids": text_ids, "text_mask": text_mask,
                "padding_mask": np.ones((len(indices), self.num_frames), bool), "captions": captions}

    def example(self, index: int) -> Dict[str, object]:
        ex = self.examples([index])
        return {k: (v[0] if k != "captions" else v[0]) for k, v in ex.items()}

    def batch(self, step: int, global_batch_size: int, process_index: int = 0, process_count: int = 1
              ) -> Dict[str, np.ndarray]:
        """This process's contiguous slice of the global batch of `step` (examples
        step * G ... step * G + G - 1): the data are indexed by step, so a resumed run sees
        exactly the batches of an uninterrupted one."""
        if global_batch_size % process_count:
            raise ValueError(f"global batch {global_batch_size} is not divisible by {process_count} processes")
        per = global_batch_size // process_count
        start = step * global_batch_size + process_index * per
        ex = self.examples(np.arange(start, start + per))
        ex.pop("captions")
        return ex

    @staticmethod
    def eval_indices(index: int, batch_size: int) -> np.ndarray:
        start = _EVAL_OFFSET + index * batch_size
        return np.arange(start, start + batch_size)

    def eval_batch(self, index: int, batch_size: int) -> Dict[str, np.ndarray]:
        """A fixed held-out batch (indices disjoint from any training step)."""
        ex = self.examples(self.eval_indices(index, batch_size))
        ex.pop("captions")
        return ex

    def structure_agreement(self, codes: np.ndarray, captions: Sequence[str]) -> np.ndarray:
        """[K] fraction of frames that follow the data's rules, for generated codes [B, K, T]:
        stage 0 against the caption's motif (best phase), stage k against the permutation of
        the generated stage k - 1. Real data scores about 1 - noise; random codes 1 / card."""
        codes = np.asarray(codes)
        words = [c.split() for c in captions]
        out = np.zeros(codes.shape[1])
        t = np.arange(codes.shape[-1])
        for b, w in enumerate(words):
            period = TEMPOS[w[0]]
            motif = self.motifs[GENRES.index(w[1]), INSTRUMENTS.index(w[3]), :period]
            out[0] += max((codes[b, 0] == motif[(t + ph) % period]).mean() for ph in range(period))
            for k in range(1, codes.shape[1]):
                out[k] += (codes[b, k] == self.permutations[k - 1][codes[b, k - 1]]).mean()
        return out / len(words)

    def random_agreement(self, captions: Sequence[str], num_frames: int, draws: int = 8, seed: int = 0) -> np.ndarray:
        """[K] `structure_agreement` of uniformly random codes for these captions: chance level
        (above 1 / card at stage 0, where the best of the period's phases is taken)."""
        rng = np.random.default_rng(seed)
        shape = (len(captions), self.n_q, num_frames)
        return np.mean([self.structure_agreement(rng.integers(0, self.card, shape), captions) for _ in range(draws)],
                       axis=0)

    # -- reference losses ----------------------------------------------------------------

    def noise_floor_nats(self) -> float:
        """Entropy of the noise channel: the CE of a model that knows every clean token."""
        e, v = self.noise, self.card
        p_true = 1.0 - e + e / v
        other = e / v
        return -p_true * math.log(p_true) - (v - 1) * other * (math.log(other) if other > 0 else 0.0)

    def bayes_nats(self, indices: Sequence[int]) -> np.ndarray:
        """[K] cross-entropy per stage of the Bayes-optimal predictor on these examples' tokens:
        it knows each clean token (stage 0: the caption's motif at the example's phase; stage
        k: the permutation of the observed stage k - 1 token) and puts 1 - noise + noise / card
        on it, noise / card on every other token. Its expectation is `noise_floor_nats`; on a
        finite held-out set it is that set's own floor (the noise is what no model predicts)."""
        indices = np.asarray(indices, np.int64)
        attrs, _, _ = self._draw(indices)
        tempo, genre, inst, _, phase = attrs.T
        period = self._periods[tempo]
        pos = (np.arange(self.num_frames)[None, :] + phase[:, None]) % period[:, None]
        codes = self.examples(indices)["codes"]
        clean = np.empty_like(codes)
        clean[:, 0] = self.motifs[genre[:, None], inst[:, None], pos]
        for k in range(1, self.n_q):
            clean[:, k] = self.permutations[k - 1][codes[:, k - 1]]
        e, v = self.noise, self.card
        hit, miss = -math.log(1.0 - e + e / v), (-math.log(e / v) if e > 0 else math.inf)
        return np.where(codes == clean, hit, miss).mean(axis=(0, 2))

    def unigram_entropy_nats(self, num_examples: int = 2048) -> np.ndarray:
        """[K] entropy of each stage's marginal token distribution (estimated on held-out data)."""
        if self._unigram is None:
            codes = self.examples(np.arange(2 * _EVAL_OFFSET, 2 * _EVAL_OFFSET + num_examples))["codes"]
            self._unigram = np.array([_entropy(np.bincount(codes[:, k].ravel(), minlength=self.card) / codes[:, k].size)
                                      for k in range(self.n_q)])
        return self._unigram
