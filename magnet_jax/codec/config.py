"""EnCodec hyper-parameters (the fields of Hugging Face's `EncodecConfig` that shape the math)."""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Optional, Tuple

from magnet_jax.config_io import dataclass_from_dict


@dataclasses.dataclass(frozen=True)
class EncodecConfig:
    sampling_rate: int = 32_000
    audio_channels: int = 1
    num_filters: int = 64
    num_residual_layers: int = 1
    upsampling_ratios: Tuple[int, ...] = (8, 5, 4, 4)
    norm_type: str = "weight_norm"  # 'weight_norm' (folded at conversion) | 'time_group_norm'
    kernel_size: int = 7
    last_kernel_size: int = 7
    residual_kernel_size: int = 3
    dilation_growth_rate: int = 2
    use_causal_conv: bool = False
    pad_mode: str = "reflect"
    compress: int = 2
    num_lstm_layers: int = 2
    trim_right_ratio: float = 1.0
    codebook_size: int = 2048
    codebook_dim: int = 128
    hidden_size: int = 128
    use_conv_shortcut: bool = False
    num_quantizers: int = 4  # codebooks used (MAGNeT's 32/16 kHz codecs: 4)

    def __post_init__(self):
        object.__setattr__(self, "upsampling_ratios", tuple(int(r) for r in self.upsampling_ratios))
        if self.norm_type not in ("weight_norm", "time_group_norm"):
            raise ValueError(f"norm_type must be 'weight_norm' or 'time_group_norm', got {self.norm_type!r}")
        if self.audio_channels not in (1, 2):
            raise ValueError(f"EnCodec takes 1 or 2 audio channels, got {self.audio_channels}")

    @property
    def hop_length(self) -> int:
        return int(math.prod(self.upsampling_ratios))

    @property
    def frame_rate(self) -> float:
        return self.sampling_rate / self.hop_length

    @classmethod
    def from_hf_dict(cls, d: Dict[str, Any], num_quantizers: Optional[int] = None) -> "EncodecConfig":
        """From a Hugging Face config.json; the codebook count is the largest bandwidth's, as
        audiocraft's HF wrapper uses it."""
        if d.get("chunk_length_s") is not None or d.get("normalize"):
            raise ValueError("chunked, input-normalising EnCodec configs (the 48 kHz codec) are not supported")
        kw = {k: v for k, v in d.items() if v is not None}
        kw.setdefault("codebook_dim", d.get("hidden_size", 128))
        if num_quantizers is None:
            hop = math.prod(d.get("upsampling_ratios", cls.upsampling_ratios))
            frame_rate = math.ceil(d.get("sampling_rate", 24_000) / hop)
            bits = math.ceil(math.log2(d.get("codebook_size", 1024)))
            num_quantizers = int(1000 * max(d.get("target_bandwidths", [24.0])) // (frame_rate * bits))
        kw["num_quantizers"] = int(num_quantizers)
        return dataclass_from_dict(cls, kw, ignore_unknown=True)
