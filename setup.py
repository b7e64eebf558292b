"""magnet_jax: MAGNeT (masked non-autoregressive audio generation) in JAX/Flax."""
from setuptools import find_packages, setup

setup(
    name="magnet_jax",
    version="0.1.0",
    description="MAGNeT (Masked Audio Generation using a Single Non-Autoregressive Transformer) in JAX/Flax",
    python_requires=">=3.10",
    packages=find_packages(include=["magnet_jax", "magnet_jax.*"]),
    install_requires=[
        "jax==0.10.2",
        "jaxlib==0.10.2",
        "flax==0.12.8",
        "optax==0.2.8",
        "orbax-checkpoint==0.12.8",
        "numpy>=1.26",
        "tensorboardX>=2.6",
        "matplotlib>=3.8",
        "tqdm>=4.66",
        "pyyaml>=6",
        # Checkpoints (Hugging Face folders, hub downloads), T5 tokenizer, audio files.
        "safetensors==0.8.0",
        "huggingface-hub>=1.0",
        "transformers==5.23.0",
        "sentencepiece==0.2.3",
        "soundfile==0.14.0",
        "soxr==1.1.0",
        "pyloudnorm==0.2.0",
        # Datasets: TFDS folders of array_record shards, read with grain (no TensorFlow needed).
        "tensorflow-datasets==4.9.10",
        "array-record==0.8.6",
        "grain==0.2.18",
        # Imported directly (also installed by the packages above).
        "ml_dtypes>=0.5",
        "tokenizers>=0.22",
        "absl-py>=2",
    ],
    extras_require={
        # The PyTorch references of the parity tests (the package itself never imports torch: it reads
        # .bin/.pt checkpoints with its own unpickler); audiocraft is installed with --no-deps by the
        # README's test command (its own pins would pull a CUDA torch).
        "test": ["pytest>=8", "pytest-xdist==3.8.0", "torch==2.13.0", "einops>=0.7", "omegaconf==2.3.0"],
        # libtpu: `magnet-jax compile` compiles for TPU slices on any machine (tested on CPU).
        "tpu": ["jax[tpu]==0.10.2"],
    },
    entry_points={"console_scripts": ["magnet-jax=magnet_jax.cli:main"]},
)
