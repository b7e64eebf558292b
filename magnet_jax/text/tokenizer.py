"""T5 tokenisation through transformers' tokenizer of a local folder, to numpy (no torch).

`padding='longest'` pads to the longest caption of the batch, as audiocraft's T5Conditioner
does (the reference's cross-attention does not mask padding, so the padded length matters for
parity); `padding='max_length'` pads to `max_length`, for static compiled shapes.

Speed: a fast (Rust-backed) tokenizer is called directly and padded in numpy, which costs a
fraction of transformers' own call (its conversion of padded ids to numpy dominates). The direct
path is checked at start-up to give exactly the tokenizer's own output on probe captions, and
the tokenizer's own call is used otherwise.
"""
from __future__ import annotations

import os
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

_PROBES = ("", "a", "calm piano.", "A Warm  jazz track, with piano & drums. genre: jazz. bpm: 120. key: C# minor",
           "Ünïcödé — naïve café ♫ 80s", " ".join(["a long caption of many words"] * 120))


class T5Tokenizer:
    def __init__(self, folder: Union[str, os.PathLike], *, max_length: int = 512, padding: str = "longest"):
        from transformers import AutoTokenizer

        if padding not in ("longest", "max_length"):
            raise ValueError(f"padding must be 'longest' or 'max_length', got {padding!r}")
        try:
            self._tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError) as e:
            raise FileNotFoundError(f"no usable T5 tokenizer in {folder} (spiece.model / tokenizer.json): {e}") from e
        self.max_length, self.padding = max_length, padding
        self._fast = self._direct_backend()

    def __call__(self, texts: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
        """(input_ids int32 [B, S], attention_mask int32 [B, S])."""
        texts = list(texts)
        return self._direct(texts) if self._fast is not None else self._reference(texts)

    def _reference(self, texts: List[str]) -> Tuple[np.ndarray, np.ndarray]:
        out = self._tok(texts, padding=self.padding, truncation=True, max_length=self.max_length,
                        return_tensors="np")
        return out["input_ids"].astype(np.int32), out["attention_mask"].astype(np.int32)

    def _direct(self, texts: List[str]) -> Tuple[np.ndarray, np.ndarray]:
        rows = [e.ids for e in self._fast.encode_batch(texts)]
        width = self.max_length if self.padding == "max_length" else max(len(r) for r in rows)
        ids = np.full((len(rows), width), self._tok.pad_token_id or 0, np.int32)
        mask = np.zeros((len(rows), width), np.int32)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = r
            mask[i, :len(r)] = 1
        return ids, mask

    def _direct_backend(self) -> Optional[object]:
        """The Rust tokenizer set to truncate like transformers, if it reproduces the probes exactly."""
        try:
            from tokenizers import Tokenizer

            fast = Tokenizer.from_str(self._tok.backend_tokenizer.to_str())
            fast.no_padding()
            fast.enable_truncation(self.max_length)  # longest_first, as transformers sets it
        except Exception:  # a slow (python) tokenizer: no backend to call
            return None
        saved, self._fast = getattr(self, "_fast", None), fast
        try:
            for batch in (list(_PROBES), list(_PROBES[2:4])):
                want, got = self._reference(batch), self._direct(batch)
                if not all(w.shape == g.shape and np.array_equal(w, g) for w, g in zip(want, got)):
                    return None
            return fast
        except Exception:
            return None
        finally:
            self._fast = saved
