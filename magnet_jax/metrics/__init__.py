"""The audio metrics' models, as native Flax ports with their converters: VGGish (FAD, with the
Fréchet distance in `frechet.py`), PaSST (KL over AudioSet labels, `kld.py`) and LAION CLAP (the
CLAP score, `clap.py`). Evaluation runs that use them live in `magnet_jax.eval`."""
