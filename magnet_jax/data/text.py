"""Training captions composed from metadata, as audiocraft's music dataset and T5 conditioner do.

`compose_description` follows `augment_music_info_description` (music_dataset.py): with
probability merge_text_p, "field: value" pairs of key, bpm, genre, moods, instrument and keywords
are shuffled and joined, and the original description is then dropped with probability
drop_desc_p. Note audiocraft's quirk, kept here: a metadata field is KEPT with probability
drop_other_p (its test is `random < drop_other_p`). `word_dropout` is the T5 conditioner's
training-time word dropout.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np

_MERGED_FIELDS = ("key", "bpm", "genre", "moods", "instrument", "keywords")


def _value_text(v: Any) -> str:
    return ", ".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)


def compose_description(info: Dict[str, Any], rng: np.random.Generator, *, merge_text_p: float = 0.0,
                        drop_desc_p: float = 0.0, drop_other_p: float = 0.0) -> Optional[str]:
    description = info.get("description") or None
    metadata = ""
    if rng.uniform() < merge_text_p:
        pairs = [f"{k}: {_value_text(info[k])}" for k in _MERGED_FIELDS
                 if info.get(k) is not None and isinstance(info[k], (int, float, str, list)) and rng.uniform() < drop_other_p]
        order = rng.permutation(len(pairs))
        metadata = ". ".join(pairs[i] for i in order)
        if rng.uniform() < drop_desc_p:
            description = None
    if description is None:
        description = metadata if len(metadata) > 1 else None
    else:
        description = ". ".join([str(description).rstrip("."), metadata])
    return description.strip() if description else None


def word_dropout(text: Optional[str], p: float, rng: np.random.Generator) -> Optional[str]:
    if not text or p <= 0:
        return text
    words = text.split(" ")
    keep = rng.uniform(size=len(words)) >= p  # the same numbers as one draw per word
    return " ".join(w for w, k in zip(words, keep) if k)
