"""VGGish (Hershey et al. 2017, the AudioSet embedding network) in Flax NNX, with its log-mel front end.

This is the embedding model of the Fréchet Audio Distance (FAD, Kilgour et al. 2019) that MAGNeT's
paper reports. Weights come from torchvggish's port of the TF checkpoint (`vggish-10086976.pth`,
see `magnet_jax.metrics.convert_vggish.load_vggish`).

Front end (`waveform_to_examples`), numpy, computed as torchvggish's `vggish_input.waveform_to_examples`:
mono (channel mean), 16 kHz (resampled with soxr instead of resampy: both are band-limited and agree up
to filter details, not bit for bit; at 16 kHz input there is no resampling and the result matches
torchvggish's to float rounding), |STFT| with a 25 ms periodic Hann window, 10 ms hop and a 512-point
FFT, a 64-band HTK mel filterbank over 125-7500 Hz, log(mel + 0.01), then non-overlapping examples of
96 frames (0.96 s). Incomplete trailing frames/examples are dropped; audio shorter than one example
gives no examples.

Network (`VGGish`): four VGG blocks of 3x3 convolutions + ReLU and 2x2 max-pools (64, 128, 2x256,
2x512 channels) on the [96, 64] patch, flattened in (time, frequency, channel) order like TF's
NHWC `slim.flatten`, then fully connected 12288 -> 4096 -> 4096 -> 128 (ReLU between).

Which embedding FAD uses (the decision this module implements by default)
--------------------------------------------------------------------------
The raw 128-d output of the last fully connected layer, *before* any ReLU, *without* the PCA/whitening
and 8-bit quantisation postprocessor:
  * google-research's `frechet_audio_distance` (which audiocraft's `metrics/fad.py`, i.e. MAGNeT's
    evaluation, calls as a subprocess) reads the TF graph's `vggish/embedding` tensor
    (`audioset_model.AudioSetModel.process_batch`) and never applies `vggish_postprocess`; its stats
    are the mean and the (n-1)-normalised covariance of those vectors.
  * TF's `vggish_slim.define_vggish_slim` builds that tensor with `fc2` having `activation_fn=None`
    ("the pre-activation values of a 128-D embedding layer"). torchvggish 0.2 keeps an older variant
    with a ReLU after the last layer; `VGGish.__call__(..., final_relu=True)` reproduces it (that is
    what the parity tests compare against torchvggish), but FAD uses `final_relu=False`.
  * The PCA postprocessor (`PCAPostprocessor`, torchvggish's `Postprocessor`) only exists to reproduce
    the quantised features of the AudioSet release; it is available with `postprocess=True`, not used
    for FAD.

Framing for FAD. `vggish_embeddings(..., framing="torchvggish")` (the default) embeds the
non-overlapping 0.96 s examples above. google-research's FAD tool instead (defaults of
`create_embeddings_main`: `model_step_size=8000`) cuts each clip into 1 s windows every 0.5 s, after
dividing the clip by its positive peak (`normalize=True` on the int16 samples audiocraft writes), and
embeds the first 96 frames of each window; `framing="google_fad"` reproduces that (up to the 16-bit
quantisation of the wav files audiocraft writes, and with silence left as zeros). Use it for numbers
comparable with audiocraft's / the paper's FAD; both framings give the same kind of embedding.
"""
from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

SAMPLE_RATE = 16_000
WINDOW_SAMPLES = 400  # 25 ms at 16 kHz
HOP_SAMPLES = 160  # 10 ms
FFT_LENGTH = 512  # the next power of two >= WINDOW_SAMPLES
NUM_BANDS = 64
MEL_MIN_HZ = 125.0
MEL_MAX_HZ = 7500.0
LOG_OFFSET = 0.01
EXAMPLE_FRAMES = 96  # 0.96 s
EMBEDDING_SIZE = 128
QUANTIZE_MIN, QUANTIZE_MAX = -2.0, 2.0
FRAMINGS = ("torchvggish", "google_fad")

_CONV_LAYERS = ("conv1", "conv2", "conv3_1", "conv3_2", "conv4_1", "conv4_2")  # TF scope names
_CONV_CHANNELS = (64, 128, 256, 256, 512, 512)
_POOL_AFTER = ("conv1", "conv2", "conv3_2", "conv4_2")
_FC_LAYERS = ("fc1_1", "fc1_2", "fc2")
_FC_SIZES = (4096, 4096, EMBEDDING_SIZE)
_FLAT_SIZE = 512 * (EXAMPLE_FRAMES // 16) * (NUM_BANDS // 16)  # 512 x 6 x 4


# ------------------------------------------------------------------------------------------ front end


def _hertz_to_mel(hz):
    """HTK mel scale."""
    return 1127.0 * np.log(1.0 + np.asarray(hz, np.float64) / 700.0)


@functools.lru_cache(maxsize=None)
def mel_filterbank() -> np.ndarray:
    """[FFT_LENGTH // 2 + 1, NUM_BANDS] float64 triangular filters, linear in mel, the DC bin zeroed."""
    bins_mel = _hertz_to_mel(np.linspace(0.0, SAMPLE_RATE / 2, FFT_LENGTH // 2 + 1))[:, None]
    edges = np.linspace(_hertz_to_mel(MEL_MIN_HZ), _hertz_to_mel(MEL_MAX_HZ), NUM_BANDS + 2)
    low, mid, high = edges[:-2], edges[1:-1], edges[2:]
    weights = np.clip(np.minimum((bins_mel - low) / (mid - low), (high - bins_mel) / (high - mid)), 0.0, None)
    weights[0, :] = 0.0
    weights.setflags(write=False)
    return weights


@functools.lru_cache(maxsize=None)
def _periodic_hann() -> np.ndarray:
    w = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(WINDOW_SAMPLES) / WINDOW_SAMPLES)
    w.setflags(write=False)
    return w


def log_mel_spectrogram(wav16k: np.ndarray) -> np.ndarray:
    """Mono 16 kHz waveform [N] -> log mel spectrogram [frames, 64] float64, one frame per 10 ms (complete
    25 ms windows only)."""
    x = np.asarray(wav16k, np.float64)
    if x.ndim != 1:
        raise ValueError(f"log_mel_spectrogram wants a mono [N] waveform, got shape {x.shape}")
    if x.shape[0] < WINDOW_SAMPLES:
        return np.zeros((0, NUM_BANDS), np.float64)
    frames = np.lib.stride_tricks.sliding_window_view(x, WINDOW_SAMPLES)[::HOP_SAMPLES]
    magnitude = np.abs(np.fft.rfft(frames * _periodic_hann(), FFT_LENGTH))
    return np.log(magnitude @ mel_filterbank() + LOG_OFFSET)


def _mono_16k(wav, sample_rate: int) -> np.ndarray:
    """[N] or [C, N] float waveform -> mono float64 [N'] at 16 kHz (channel mean, then soxr)."""
    x = np.asarray(wav, np.float64)
    if x.ndim == 2:
        if x.shape[0] > x.shape[1]:
            raise ValueError(f"a waveform of shape {x.shape} has more channels than samples: pass [C, N] "
                             "(channels first), not [N, C]")
        x = x.mean(axis=0)
    elif x.ndim != 1:
        raise ValueError(f"expected a waveform [N] or [C, N], got shape {x.shape}")
    if int(sample_rate) != sample_rate or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive integer, got {sample_rate!r}")
    if int(sample_rate) != SAMPLE_RATE and x.shape[0] > 0:
        from magnet_jax.data.audio_io import resample

        x = resample(x, int(sample_rate), SAMPLE_RATE)
    return x


def _frame_examples(log_mel: np.ndarray, hop_frames: int) -> np.ndarray:
    if log_mel.shape[0] < EXAMPLE_FRAMES:
        return np.zeros((0, EXAMPLE_FRAMES, NUM_BANDS), np.float32)
    windows = np.lib.stride_tricks.sliding_window_view(log_mel, EXAMPLE_FRAMES, axis=0)[::hop_frames]
    return np.ascontiguousarray(np.swapaxes(windows, 1, 2), dtype=np.float32)  # [E, 96, 64]


def waveform_to_examples(wav, sample_rate: int) -> np.ndarray:
    """torchvggish's front end: waveform [N] or [C, N] -> log-mel examples [E, 96, 64] float32,
    non-overlapping 0.96 s patches."""
    return _frame_examples(log_mel_spectrogram(_mono_16k(wav, sample_rate)), EXAMPLE_FRAMES)


def waveform_to_fad_examples(wav, sample_rate: int, *, step_samples: int = 8000,
                             normalize: bool = True) -> np.ndarray:
    """google-research FAD's framing: waveform [N] or [C, N] -> [E, 96, 64] float32, one example per 1 s
    window (the first 96 of its 98 frames), windows every `step_samples` 16 kHz samples, after dividing
    the clip by its positive peak when `normalize` (google's `AudioSetModel(normalize=True)`; silent or
    all-negative clips are left as they are). Clips shorter than 1 s give no examples."""
    if step_samples <= 0 or step_samples % HOP_SAMPLES:
        raise ValueError(f"step_samples must be a positive multiple of {HOP_SAMPLES}, got {step_samples}")
    x = _mono_16k(wav, sample_rate)
    if normalize and x.size and np.max(x) > 0:
        x = x / np.max(x)
    if x.shape[0] < SAMPLE_RATE:
        return np.zeros((0, EXAMPLE_FRAMES, NUM_BANDS), np.float32)
    # A 1 s window starting at sample s = k * HOP_SAMPLES has the STFT frames k, k+1, ... of the whole clip.
    log_mel = log_mel_spectrogram(x)
    starts = np.arange(0, x.shape[0] - SAMPLE_RATE + 1, step_samples) // HOP_SAMPLES
    return np.stack([log_mel[s:s + EXAMPLE_FRAMES] for s in starts]).astype(np.float32)


# -------------------------------------------------------------------------------------------- network


class PCAParam(nnx.Variable):
    """A fixed (non-trained) array of the PCA postprocessor."""


class PCAPostprocessor(nnx.Module):
    """AudioSet's embedding postprocessing (torchvggish's `Postprocessor`): PCA with whitening
    (`eigen_vectors @ (emb - means)`), clipping to [-2, 2] and 8-bit quantisation to integers 0..255,
    returned as float32. Not part of FAD (see the module docstring)."""

    def __init__(self, dim: int = EMBEDDING_SIZE):
        self.eigen_vectors = PCAParam(jnp.eye(dim, dtype=jnp.float32))
        self.means = PCAParam(jnp.zeros((dim,), jnp.float32))

    def __call__(self, embeddings: jnp.ndarray) -> jnp.ndarray:
        e = jnp.asarray(embeddings, jnp.float32)
        pca = jnp.matmul(e - self.means[...], self.eigen_vectors[...].T, precision=jax.lax.Precision.HIGHEST)
        clipped = jnp.clip(pca, QUANTIZE_MIN, QUANTIZE_MAX)
        return jnp.round((clipped - QUANTIZE_MIN) * (255.0 / (QUANTIZE_MAX - QUANTIZE_MIN)))


class VGGish(nnx.Module):
    """log-mel examples [B, 96, 64] -> embeddings [B, 128] float32 (see the module docstring).

    `precision` applies to every convolution and matmul; HIGHEST by default so that a metric computed
    on TPU/GPU does not silently use bf16 passes (the model is small: ~1 GFLOP per example)."""

    def __init__(self, *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32,
                 precision=jax.lax.Precision.HIGHEST):
        self.dtype = dtype
        channels_in = 1
        for name, channels in zip(_CONV_LAYERS, _CONV_CHANNELS):
            setattr(self, name, nnx.Conv(channels_in, channels, kernel_size=(3, 3), padding="SAME", dtype=dtype,
                                         param_dtype=param_dtype, precision=precision, rngs=rngs))
            channels_in = channels
        features_in = _FLAT_SIZE
        for name, size in zip(_FC_LAYERS, _FC_SIZES):
            setattr(self, name, nnx.Linear(features_in, size, dtype=dtype, param_dtype=param_dtype,
                                           precision=precision, rngs=rngs))
            features_in = size
        self.postprocessor: Optional[PCAPostprocessor] = nnx.data(None)  # set by load_vggish when PCA params are given

    def __call__(self, examples: jnp.ndarray, *, final_relu: bool = False) -> jnp.ndarray:
        """`final_relu=False`: TF VGGish's `vggish/embedding` (what FAD uses); True: torchvggish 0.2's output."""
        if examples.ndim != 3 or examples.shape[1:] != (EXAMPLE_FRAMES, NUM_BANDS):
            raise ValueError(f"VGGish wants log-mel examples [B, {EXAMPLE_FRAMES}, {NUM_BANDS}], "
                             f"got {examples.shape}")
        x = examples.astype(self.dtype)[..., None]  # NHWC: [B, time, mel, 1]
        for name in _CONV_LAYERS:
            x = jax.nn.relu(getattr(self, name)(x))
            if name in _POOL_AFTER:
                x = nnx.max_pool(x, window_shape=(2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)  # (time, mel, channel) order, as TF's slim.flatten
        x = jax.nn.relu(self.fc1_1(x))
        x = jax.nn.relu(self.fc1_2(x))
        x = self.fc2(x)
        if final_relu:
            x = jax.nn.relu(x)
        return x.astype(jnp.float32)


@nnx.jit
def _embed(model: VGGish, examples: jnp.ndarray) -> jnp.ndarray:
    return model(examples)  # pre-activation; a final ReLU is applied outside (one compilation for both)


def embed_examples(model: VGGish, examples, *, final_relu: bool = False, postprocess: bool = False,
                   batch_size: int = 64) -> np.ndarray:
    """Log-mel examples [E, 96, 64] -> [E, 128] float32 numpy, in batches of at most `batch_size` (the last
    padded to a power of two, so few shapes are compiled)."""
    examples = np.asarray(examples, np.float32)
    if examples.ndim != 3 or examples.shape[1:] != (EXAMPLE_FRAMES, NUM_BANDS):
        raise ValueError(f"expected log-mel examples [E, {EXAMPLE_FRAMES}, {NUM_BANDS}], got {examples.shape}")
    if postprocess and model.postprocessor is None:
        raise ValueError("postprocess=True needs the PCA parameters: load_vggish(..., pca_params=...)")
    out = []
    for start in range(0, examples.shape[0], batch_size):
        chunk = examples[start:start + batch_size]
        n = chunk.shape[0]
        padded = min(batch_size, 1 << (n - 1).bit_length())
        if padded > n:
            chunk = np.concatenate([chunk, np.zeros((padded - n,) + chunk.shape[1:], np.float32)])
        emb = _embed(model, jnp.asarray(chunk))[:n]
        if final_relu:
            emb = jax.nn.relu(emb)
        if postprocess:
            emb = model.postprocessor(emb)
        out.append(np.asarray(emb, np.float32))
    if not out:
        return np.zeros((0, EMBEDDING_SIZE), np.float32)
    return np.concatenate(out)


def vggish_embeddings(model: VGGish, wav, sample_rate: int, *, framing: str = "torchvggish",
                      final_relu: bool = False, postprocess: bool = False, batch_size: int = 64) -> np.ndarray:
    """Waveform [N] or [C, N] (float, about [-1, 1]; channels are averaged) -> embeddings [E, 128] float32.

    The defaults give the embedding FAD uses (pre-activation, no PCA) on torchvggish's non-overlapping
    0.96 s examples; `framing="google_fad"` uses google-research FAD's 1 s windows every 0.5 s with peak
    normalisation (see the module docstring). `final_relu=True` reproduces torchvggish 0.2's output,
    `postprocess=True` its PCA + quantisation (needs a model loaded with PCA parameters)."""
    if framing == "torchvggish":
        examples = waveform_to_examples(wav, sample_rate)
    elif framing == "google_fad":
        examples = waveform_to_fad_examples(wav, sample_rate)
    else:
        raise ValueError(f"framing must be one of {FRAMINGS}, got {framing!r}")
    return embed_examples(model, examples, final_relu=final_relu, postprocess=postprocess, batch_size=batch_size)
