"""The data-source interface the trainer, the evaluations and the sweep read tokens through.

Two sources implement it: the synthetic dataset (data/synthetic.py) and a token dataset written by
`magnet-jax tokenize` (data/input_pipeline.py). `TokenSource` declares what every source has, and the
optional parts -- a prefetching iterator, the size of the held-out split, and the diagnostics that
only a source with a known generating process can give (the noise floor, the Bayes-optimal loss,
the unigram entropy) -- which return None where a source has none. `TokenSourceBase` gives those
defaults; a source subclasses it and overrides what it has.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Protocol, Sequence, runtime_checkable

import numpy as np


@runtime_checkable
class TokenSource(Protocol):
    """Batches of `{"codes" [B, K, T], "text_ids" [B, S], "text_mask" [B, S], ("padding_mask" [B, T])}`."""

    # How many held-out examples the source has; None: as many as asked for (generated on demand).
    num_eval: Optional[int]

    def batch(self, step: int, global_batch: int, process_index: int, process_count: int) -> Dict[str, np.ndarray]:
        """This host's part of the global batch of `step` (random access)."""

    def iterator(self, global_batch: int, process_index: int, process_count: int, state: Optional[Dict] = None):
        """A prefetching iterator over this host's batches (`state` resumes it; `get_state()` gives it), or None:
        the batches are then read by `batch(step, ...)`."""

    def eval_batch(self, index: int, global_batch: int) -> Dict[str, np.ndarray]:
        """The held-out batch `index` (the whole global batch)."""

    def eval_indices(self, index: int, batch_size: int) -> Optional[np.ndarray]:
        """The example indices of held-out batch `index` (those `bayes_nats` takes), or None."""

    def noise_floor_nats(self) -> Optional[float]:
        """The expected loss floor of the data's noise (nats per token), or None."""

    def bayes_nats(self, indices: Sequence[int]) -> Optional[np.ndarray]:
        """The Bayes-optimal predictor's loss per stage [K] on the examples `indices`, or None."""

    def unigram_entropy_nats(self) -> Optional[np.ndarray]:
        """The unigram entropy per stage [K] (a model that ignores all context), or None."""


class TokenSourceBase:
    """The optional parts of `TokenSource`, absent: a source overrides those it has."""

    num_eval: Optional[int] = None

    def iterator(self, global_batch: int, process_index: int, process_count: int, state: Optional[Dict] = None,
                 **_: Any):
        return None

    def eval_indices(self, index: int, batch_size: int) -> Optional[np.ndarray]:
        return None

    def noise_floor_nats(self) -> Optional[float]:
        return None

    def bayes_nats(self, indices: Sequence[int]) -> Optional[np.ndarray]:
        return None

    def unigram_entropy_nats(self) -> Optional[np.ndarray]:
        return None
