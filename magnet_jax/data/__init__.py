"""Data: the embedded synthetic token dataset (real audio datasets arrive with the data pipeline)."""
from magnet_jax.data.synthetic import VOCAB, SyntheticMusicTokens, encode_captions

__all__ = ["VOCAB", "SyntheticMusicTokens", "encode_captions"]
