"""Training batches from a token dataset: grain over `tfds` array_record data sources.

Per host: the host's slice of the examples (example i goes to process i % process_count, so
hosts read disjoint slices that together cover the data), shuffled per epoch, each example
cropped at a random offset (audiocraft's rule: uniform in [0, T - min_segment_ratio * segment],
zero-padded with a padding mask when shorter), its caption composed from the metadata and
word-dropped (see `text.py`), then batched and T5-tokenised to a fixed length (static shapes).
Every random choice is a function of (seed, example position), so batch `step` is the same
whoever asks for it; the grain iterator's state (its position) is saved in checkpoints and a
resumed run continues with exactly the batches an uninterrupted run would have seen.
"""
from __future__ import annotations

import json
from typing import Any, Dict, Optional

import numpy as np

from magnet_jax.config import Config
from magnet_jax.data.records import open_dataset
from magnet_jax.data.text import compose_description, word_dropout


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class TokenBatches:
    """The trainer's data source for `data.source='tfds'` (see `magnet_jax.train.trainer`)."""

    def __init__(self, cfg: Config, tokenizer, *, process_index: int = 0, process_count: int = 1):
        import grain

        d = cfg.data
        self.source = open_dataset(d.dir)
        n = len(self.source)
        self.num_frames, self.n_q, self.card = d.num_frames, cfg.lm.n_q, cfg.lm.card
        self.min_frames = int(round(d.min_segment_ratio * self.num_frames))
        self.cfg, self.tokenizer = cfg, tokenizer
        self.num_eval = min(max(int(round(d.eval_fraction * n)), 1 if n > 1 else 0), n - 1)
        self.num_train = n - self.num_eval
        self.process_index, self.process_count = process_index, process_count
        if self.num_train < process_count:
            raise ValueError(f"{d.dir} has {self.num_train} training examples, fewer than the {process_count} processes")
        train = grain.MapDataset.source(self.source)[: self.num_train]
        self.host_examples = train[process_index::process_count]
        per_host = cfg.train.global_batch_size // process_count
        self.dataset = (self.host_examples.shuffle(seed=d.seed).repeat()
                        .random_map(self._example, seed=d.seed + 1)
                        .batch(per_host, drop_remainder=True)
                        .map(self._tokenize))
        self._check_example()

    def _check_example(self) -> None:
        codes = np.asarray(self.source[0]["codes"])
        if codes.ndim != 2 or codes.shape[0] != self.n_q:
            raise ValueError(f"{self.cfg.data.dir} holds codes of shape {codes.shape}, the LM models "
                             f"{self.n_q} codebooks: tokenised with another codec?")
        if codes.max() >= self.card:
            raise ValueError(f"{self.cfg.data.dir} holds code {codes.max()} >= lm.card={self.card}")

    # -- per example / per batch ----------------------------------------------------------

    def _crop(self, codes: np.ndarray, offset: int) -> Dict[str, np.ndarray]:
        piece = codes[:, offset:offset + self.num_frames].astype(np.int32)
        t = piece.shape[-1]
        out = np.zeros((self.n_q, self.num_frames), np.int32)
        out[:, :t] = piece
        mask = np.zeros((self.num_frames,), bool)
        mask[:t] = True
        return {"codes": out, "padding_mask": mask}

    def _example(self, ex: Dict[str, Any], rng: np.random.Generator) -> Dict[str, Any]:
        d, c = self.cfg.data, self.cfg.conditioner
        codes = np.asarray(ex["codes"])
        max_offset = max(0, codes.shape[-1] - self.min_frames)
        out = self._crop(codes, int(rng.integers(0, max_offset + 1)))
        info = json.loads(_text(ex["info"]))
        text = compose_description(info, rng, merge_text_p=d.merge_text_p, drop_desc_p=d.drop_desc_p,
                                   drop_other_p=d.drop_other_p)
        out["text"] = np.asarray(word_dropout(text, c.word_dropout, rng) or "", dtype=object)
        return out

    def _tokenize(self, batch: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        texts = [str(t) for t in batch.pop("text")]
        ids, mask = self.tokenizer(texts)
        mask = np.where(np.array([t == "" for t in texts])[:, None], 0, mask)  # no caption: the null condition
        return {**batch, "text_ids": ids, "text_mask": mask}

    # -- the trainer's interface ------------------------------------------------------------

    def batch(self, step: int, global_batch: int, process_index: int, process_count: int) -> Dict[str, np.ndarray]:
        """This host's part of the global batch of `step` (random access; same as the iterator's)."""
        self._check_layout(global_batch, process_index, process_count)
        return self.dataset[step]

    def iterator(self, global_batch: int, process_index: int, process_count: int, state: Optional[Dict] = None,
                 *, threads: Optional[int] = None, prefetch: int = 4):
        """A prefetching grain iterator over this host's batches; `state` resumes it."""
        import grain

        self._check_layout(global_batch, process_index, process_count)
        threads = self.cfg.data.num_threads if threads is None else threads
        it = iter(self.dataset.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=prefetch)))
        if state is not None:
            it.set_state(state)
        return it

    def _check_layout(self, global_batch, process_index, process_count) -> None:
        if (process_index, process_count) != (self.process_index, self.process_count) or \
                global_batch != self.cfg.train.global_batch_size:
            raise ValueError("TokenBatches was built for another process layout or batch size")

    def eval_batch(self, i: int, global_batch: int) -> Dict[str, np.ndarray]:
        """Held-out examples (the dataset's last `eval_fraction`), cropped at 0, plain descriptions."""
        if self.num_eval == 0:
            raise ValueError(f"{self.cfg.data.dir} is too small to hold out evaluation examples")
        rows = [self.num_train + (i * global_batch + j) % self.num_eval for j in range(global_batch)]
        items = []
        for r in rows:
            ex = self.source[r]
            out = self._crop(np.asarray(ex["codes"]), 0)
            out["text"] = json.loads(_text(ex["info"])).get("description") or ""
            items.append(out)
        batch = {k: np.stack([it[k] for it in items]) for k in ("codes", "padding_mask")}
        batch["text"] = np.array([it["text"] for it in items], dtype=object)
        return self._tokenize(batch)
