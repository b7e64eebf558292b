"""Training batches from a token dataset: grain over `tfds` array_record data sources.

Per host: the host's slice of the examples (example i goes to process i % process_count, so
hosts read disjoint slices that together cover the data), shuffled per epoch, each example
cropped at a random offset (audiocraft's rule: uniform in [0, T - min_segment_ratio * segment],
zero-padded with a padding mask when shorter), its caption composed from the metadata and
word-dropped (see `text.py`), then batched and T5-tokenised to a fixed length (static shapes).
Every random choice is a function of (seed, example position), so batch `step` is the same
whoever asks for it; the grain iterator's state (its position) is saved in checkpoints and a
resumed run continues with exactly the batches an uninterrupted run would have seen.

Speed (bench/data.py): examples are decoded straight from their protos (`_Records`, checked at
start-up to give exactly what tfds's decoding gives, which is used otherwise); captions go
through the T5 tokenizer's direct Rust path (`magnet_jax.text.tokenizer`).
"""
from __future__ import annotations

import json
from typing import Any, Dict, Optional

import numpy as np

from magnet_jax.config import DataConfig
from magnet_jax.data.interface import TokenSourceBase
from magnet_jax.data.records import dataset_facts, open_dataset
from magnet_jax.data.text import compose_description, word_dropout


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _same(a: Dict[str, Any], b: Dict[str, Any]) -> bool:
    if a.keys() != b.keys():
        return False
    for k in a:
        x, y = a[k], b[k]
        if type(x) is not type(y):
            return False
        if isinstance(x, np.ndarray):
            if x.dtype != y.dtype or x.shape != y.shape or not np.array_equal(x, y):
                return False
        elif x != y:
            return False
    return True


class _Records:
    """`source[i]` of a token dataset (a tfds array_record source) without tfds's generic per-feature
    decoding, several times faster: the same keys, values and types (codes int16 [K, T], path and
    info bytes, offset_s float). `of(source)` is None unless the dataset has exactly the token layout
    and the first example decodes the same both ways."""

    def __init__(self, source, n_q: int):
        self._raw, self._n_q = source.data_source, n_q
        self._set_parser()

    def _set_parser(self) -> None:
        from tensorflow_datasets.proto import tf_example_pb2

        self._parse = tf_example_pb2.Example.FromString

    def __getstate__(self):  # picklable for grain's worker processes
        return {"_raw": self._raw, "_n_q": self._n_q}

    def __setstate__(self, state) -> None:
        self.__dict__.update(state)
        self._set_parser()

    @classmethod
    def of(cls, source) -> Optional["_Records"]:
        try:
            spec = {k: (type(v).__name__, tuple(v.shape), np.dtype(v.np_dtype))
                    for k, v in source.dataset_info.features.items()}
            if set(spec) != {"codes", "path", "offset_s", "info"} or source.decoders:
                return None
            kind, shape, dtype = spec["codes"]
            if (kind, len(shape), shape[1], dtype) != ("Tensor", 2, None, np.int16) or shape[0] is None or \
                    spec["offset_s"] != ("Tensor", (), np.float32) or \
                    spec["path"][0] != "Text" or spec["info"][0] != "Text":
                return None
            records = cls(source, shape[0])
            return records if len(source) and _same(records[0], dict(source[0])) else None
        except Exception:  # another tfds layout or version: the plain path
            return None

    def __len__(self) -> int:
        return len(self._raw)

    def __getitem__(self, i: int) -> Dict[str, Any]:
        f = self._parse(self._raw[i]).features.feature
        return {"codes": np.array(f["codes"].int64_list.value, np.int16).reshape(self._n_q, -1),
                "path": f["path"].bytes_list.value[0], "offset_s": f["offset_s"].float_list.value[0],
                "info": f["info"].bytes_list.value[0]}


def _split_between_files(source, boundary: int) -> int:
    """The train/eval boundary moved off the segments of one file (they are stored contiguously),
    so that no file is in both: forward, or backward if that leaves no evaluation example."""
    n = len(source)
    same = lambda i: source[i]["path"] == source[i - 1]["path"]
    b = boundary
    while 0 < b < n and same(b):
        b += 1
    if b < n:
        return b
    b = boundary
    while b > 0 and same(b):
        b -= 1
    return b if b > 0 else boundary  # one file only: it cannot be kept out of either side


class TokenBatches(TokenSourceBase):
    """The trainer's data source for `data.source='tfds'` (a `TokenSource`; see `magnet_jax.train.setup`).

    data: the dataset's settings; per_host_batch: this host's share of the global batch;
    n_q, card: the LM's codebooks and codebook size (the dataset's codes are checked against them);
    word_dropout: the conditioner's training-time caption word dropout."""

    def __init__(self, data: DataConfig, tokenizer, per_host_batch: int, *, n_q: int, card: int,
                 word_dropout: float = 0.0, process_index: int = 0, process_count: int = 1):
        import grain

        d = data
        self.source = open_dataset(d.dir)
        n = len(self.source)
        self.num_frames, self.n_q, self.card = d.num_frames, n_q, card
        self.min_frames = int(round(d.min_segment_ratio * self.num_frames))
        self.data, self.tokenizer, self.word_dropout = data, tokenizer, word_dropout
        self.per_host_batch = per_host_batch
        self.records = _Records.of(self.source) or self.source
        num_eval = min(max(int(round(d.eval_fraction * n)), 1 if n > 1 else 0), n - 1)
        self.num_train = _split_between_files(self.records, n - num_eval)
        self.num_eval = n - self.num_train
        self.process_index, self.process_count = process_index, process_count
        if self.num_train < process_count:
            raise ValueError(f"{d.dir} has {self.num_train} training examples, fewer than the {process_count} processes")
        train = grain.MapDataset.source(self.records)[: self.num_train]
        self.host_examples = train[process_index::process_count]
        self.dataset = (self.host_examples.shuffle(seed=d.seed).repeat()
                        .random_map(self._example, seed=d.seed + 1)
                        .batch(per_host_batch, drop_remainder=True)
                        .map(self._tokenize))
        self._check_example()

    def _check_example(self) -> None:
        facts, d = dataset_facts(self.data.dir), self.data
        if "frame_rate" in facts and abs(facts["frame_rate"] - d.frame_rate) > 1e-6:
            raise ValueError(f"{d.dir} holds codes at {facts['frame_rate']:g} Hz but data.frame_rate={d.frame_rate}: "
                             "set --config.data.frame_rate to the codec's frame rate (or retokenise)")
        if "codes" not in self.source.dataset_info.features:
            raise ValueError(f"{d.dir} holds no codes (an --audio-only dataset?): tokenise it first with "
                             f"`magnet-jax tokenize --source {d.dir} ...` and train on that")
        codes = np.asarray(self.source[0]["codes"])
        if codes.ndim != 2 or codes.shape[0] != self.n_q:
            raise ValueError(f"{d.dir} holds codes of shape {codes.shape}, the LM models "
                             f"{self.n_q} codebooks: tokenised with another codec?")
        if codes.max() >= self.card:
            raise ValueError(f"{d.dir} holds code {codes.max()} >= lm.card={self.card}")

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
        d = self.data
        codes = np.asarray(ex["codes"])
        max_offset = max(0, codes.shape[-1] - self.min_frames)
        out = self._crop(codes, int(rng.integers(0, max_offset + 1)))
        info = json.loads(_text(ex["info"]))
        text = compose_description(info, rng, merge_text_p=d.merge_text_p, drop_desc_p=d.drop_desc_p,
                                   drop_other_p=d.drop_other_p)
        out["text"] = np.asarray(word_dropout(text, self.word_dropout, rng) or "", dtype=object)
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
                 *, threads: Optional[int] = None, prefetch: Optional[int] = None, workers: Optional[int] = None):
        """A prefetching grain iterator over this host's batches; `state` resumes it. `prefetch` batches
        are read ahead (default: one per thread, fewer would leave threads idle).

        workers > 0: the batches are made in that many processes (grain's `mp_prefetch`, each with
        `threads` threads), past the GIL that bounds the threads of one process; the batches are the
        same, in the same order, but the state has another form (resume with the same `workers`).
        Close such an iterator (`it.close()`) when done with it."""
        import grain

        self._check_layout(global_batch, process_index, process_count)
        threads = self.data.num_threads if threads is None else threads
        workers = self.data.num_workers if workers is None else workers
        prefetch = max(threads, 1) if prefetch is None else prefetch
        ds = self.dataset.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=prefetch))
        if workers > 0:
            from absl import flags

            if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; outside an absl app none were parsed
                flags.FLAGS.mark_as_parsed()
            ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=2))
        it = iter(ds)
        if state is not None:
            try:
                it.set_state(state)
            except Exception as e:
                raise ValueError(f"the checkpoint's data iterator state does not fit this iterator ({e}); resume with "
                                 f"the data.num_workers it was saved with (now {workers})") from e
        return it

    def _check_layout(self, global_batch, process_index, process_count) -> None:
        if (process_index, process_count) != (self.process_index, self.process_count) or \
                global_batch != self.per_host_batch * self.process_count:
            raise ValueError("TokenBatches was built for another process layout or batch size")

    def eval_batch(self, i: int, global_batch: int) -> Dict[str, np.ndarray]:
        """Held-out examples (the dataset's last `eval_fraction`), cropped at 0, plain descriptions."""
        if self.num_eval == 0:
            raise ValueError(f"{self.data.dir} is too small to hold out evaluation examples")
        rows = [self.num_train + (i * global_batch + j) % self.num_eval for j in range(global_batch)]
        items = []
        for r in rows:
            ex = self.records[r]
            out = self._crop(np.asarray(ex["codes"]), 0)
            out["text"] = json.loads(_text(ex["info"])).get("description") or ""
            items.append(out)
        batch = {k: np.stack([it[k] for it in items]) for k in ("codes", "padding_mask")}
        batch["text"] = np.array([it["text"] for it in items], dtype=object)
        return self._tokenize(batch)
