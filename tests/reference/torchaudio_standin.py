"""A stand-in for the few parts of torchaudio that hear21passt (the PaSST reference) touches.

The registry's torchaudio stops at 2.11.1, which does not load with this project's torch, so the PaSST
parity tests put this module tree in `sys.modules` (and only there, only for those tests):

- `torchaudio.compliance.kaldi.get_mel_banks`, transcribed op for op (same torch ops, same float32
  dtypes) from torchaudio 2.11.1's `compliance/kaldi.py` for the path hear21passt uses (no VTLN warping:
  `vtln_warp_factor=1.0`); tests/test_eval_passt.py checks it against an independent numpy formula;
- `torchaudio.transforms.FrequencyMasking` / `TimeMasking`: hear21passt builds them in
  `AugmentMelSTFT.__init__` but calls them only in training mode (SpecAugment); these raise if called,
  so a reference run that reached them would fail loudly instead of silently skipping augmentation.
"""
from __future__ import annotations

import math
import types
from typing import Tuple

import torch


def mel_scale_scalar(freq: float) -> float:
    return 1127.0 * math.log(1.0 + freq / 700.0)


def mel_scale(freq: torch.Tensor) -> torch.Tensor:
    return 1127.0 * (1.0 + freq / 700.0).log()


def inverse_mel_scale(mel_freq: torch.Tensor) -> torch.Tensor:
    return 700.0 * ((mel_freq / 1127.0).exp() - 1.0)


def get_mel_banks(num_bins: int, window_length_padded: int, sample_freq: float, low_freq: float,
                  high_freq: float, vtln_low: float, vtln_high: float,
                  vtln_warp_factor: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """(bins [num_bins, window_length_padded // 2], center_freqs [num_bins, 1]) as torchaudio returns them."""
    assert num_bins > 3, "Must have at least 3 mel bins"
    assert window_length_padded % 2 == 0
    if vtln_warp_factor != 1.0:
        raise NotImplementedError("the torchaudio stand-in covers vtln_warp_factor=1.0 only (what hear21passt uses)")
    num_fft_bins = window_length_padded / 2
    nyquist = 0.5 * sample_freq
    if high_freq <= 0.0:
        high_freq += nyquist
    assert (0.0 <= low_freq < nyquist) and (0.0 < high_freq <= nyquist) and (low_freq < high_freq)
    fft_bin_width = sample_freq / window_length_padded
    mel_low_freq = mel_scale_scalar(low_freq)
    mel_high_freq = mel_scale_scalar(high_freq)
    mel_freq_delta = (mel_high_freq - mel_low_freq) / (num_bins + 1)
    bin = torch.arange(num_bins).unsqueeze(1)
    left_mel = mel_low_freq + bin * mel_freq_delta
    center_mel = mel_low_freq + (bin + 1.0) * mel_freq_delta
    right_mel = mel_low_freq + (bin + 2.0) * mel_freq_delta
    center_freqs = inverse_mel_scale(center_mel)
    mel = mel_scale(fft_bin_width * torch.arange(num_fft_bins)).unsqueeze(0)
    up_slope = (mel - left_mel) / (center_mel - left_mel)
    down_slope = (right_mel - mel) / (right_mel - center_mel)
    bins = torch.max(torch.zeros(1), torch.min(up_slope, down_slope))
    return bins, center_freqs


class _TrainingOnly(torch.nn.Module):
    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"the torchaudio stand-in's {type(self).__name__} is a placeholder: hear21passt "
                                  "only calls it in training mode, and the reference tests run in eval mode")


class FrequencyMasking(_TrainingOnly):
    pass


class TimeMasking(_TrainingOnly):
    pass


def modules() -> dict:
    """The `sys.modules` entries to insert: torchaudio, torchaudio.compliance(.kaldi), torchaudio.transforms."""
    root = types.ModuleType("torchaudio")
    root.__doc__ = "stand-in (tests/reference/torchaudio_standin.py), not the real torchaudio"
    compliance = types.ModuleType("torchaudio.compliance")
    kaldi = types.ModuleType("torchaudio.compliance.kaldi")
    kaldi.get_mel_banks = get_mel_banks
    kaldi.mel_scale = mel_scale
    kaldi.mel_scale_scalar = mel_scale_scalar
    kaldi.inverse_mel_scale = inverse_mel_scale
    transforms = types.ModuleType("torchaudio.transforms")
    transforms.FrequencyMasking = FrequencyMasking
    transforms.TimeMasking = TimeMasking
    root.compliance, compliance.kaldi, root.transforms = compliance, kaldi, transforms
    return {"torchaudio": root, "torchaudio.compliance": compliance, "torchaudio.compliance.kaldi": kaldi,
            "torchaudio.transforms": transforms}

