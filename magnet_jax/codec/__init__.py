"""EnCodec in Flax NNX: the audio tokenizer of MAGNeT (4 codebooks x 2048 codes at 50 Hz)."""
from magnet_jax.codec.config import EncodecConfig
from magnet_jax.codec.encodec import EncodecModel

__all__ = ["EncodecConfig", "EncodecModel"]
