"""T5 tokenisation through transformers' tokenizer of a local folder, to numpy (no torch).

`padding='longest'` pads to the longest caption of the batch, as audiocraft's T5Conditioner
does (the reference's cross-attention does not mask padding, so the padded length matters for
parity); `padding='max_length'` pads to `max_length`, for static compiled shapes.
"""
from __future__ import annotations

import os
from typing import Sequence, Tuple, Union

import numpy as np


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

    def __call__(self, texts: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
        """(input_ids int32 [B, S], attention_mask int32 [B, S])."""
        out = self._tok(list(texts), padding=self.padding, truncation=True, max_length=self.max_length,
                        return_tensors="np")
        return out["input_ids"].astype(np.int32), out["attention_mask"].astype(np.int32)
