"""The two-tower CLAP model (audio: HTS-AT, text: RoBERTa) and the released music checkpoint's config."""
from __future__ import annotations

from dataclasses import dataclass, field

from flax import nnx

from magnet_jax.metrics.clap_audio import ClapAudioEncoder, HTSATConfig
from magnet_jax.metrics.clap_text import ROBERTA_BASE, ClapTextEncoder, RobertaConfig


@dataclass(frozen=True)
class ClapConfig:
    audio: HTSATConfig = field(default_factory=HTSATConfig)
    text: RobertaConfig = ROBERTA_BASE
    joint_dim: int = 512


# LAION's `music_audioset_epoch_15_esc_90.14.pt` (audiocraft's CLAP-score model): HTSAT-base
# (embed 128, depths 2-2-12-2, 48 kHz, 10 s, 64 mels, 50-14000 Hz), roberta-base, 512-d joint space.
MUSIC_CLAP = ClapConfig()


class ClapModel(nnx.Module):
    def __init__(self, cfg: ClapConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.audio = ClapAudioEncoder(cfg.audio, cfg.joint_dim, rngs=rngs)
        self.text = ClapTextEncoder(cfg.text, cfg.joint_dim, rngs=rngs)
