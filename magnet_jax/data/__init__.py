"""Data: audio I/O, audio datasets -> TFDS token datasets (`prepare`), the grain input pipeline
(`input_pipeline`), and the embedded synthetic token dataset."""
from magnet_jax.data.synthetic import VOCAB, SyntheticMusicTokens, encode_captions

__all__ = ["VOCAB", "SyntheticMusicTokens", "encode_captions"]
