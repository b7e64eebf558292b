"""Audio-MAGNeT medium (1.5B), 10 s sound at 16 kHz (EnCodec hop 320 -> 50 Hz): audio_magnet_16khz.yaml.

Batch 128 = audiocraft's 256 loaded items x mix_p 0.5 (sample-mixing augmentation).
"""
from _base import audio


def get_config():
    return audio("audio_magnet_medium", "medium", segment_duration=10.0)
