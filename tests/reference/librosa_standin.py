"""A minimal stand-in for the parts of librosa torchlibrosa (and so laion_clap's HTS-AT) calls at
construction time, so the PyTorch reference runs without librosa (not installed: heavy, numba).

  librosa.filters.get_window(window, n, fftbins=True)  -- 'hann' only (periodic when fftbins)
  librosa.util.pad_center(data, size=...)
  librosa.filters.mel(sr=, n_fft=, n_mels=, fmin=, fmax=)  -- Slaney mel scale, Slaney area norm
  librosa.util.exceptions.ParameterError

Written from librosa's documented definitions; tests/test_eval_clap.py checks each against scipy/torch.
Only `modules()` puts it anywhere, and only tests insert those into sys.modules.
"""
import types

import numpy as np


class ParameterError(Exception):
    pass


def get_window(window, n, fftbins=True):
    if window not in ("hann", "hann_window"):
        raise ParameterError(f"stand-in librosa: window {window!r} not supported")
    m = n if fftbins else n - 1  # periodic (DFT-even) window when fftbins
    k = np.arange(n, dtype=np.float64)
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * k / m)


def pad_center(data, *, size, axis=-1):
    n = data.shape[axis]
    if size < n:
        raise ParameterError(f"target size ({size}) must be at least input size ({n})")
    lpad = (size - n) // 2
    widths = [(0, 0)] * data.ndim
    widths[axis] = (lpad, size - n - lpad)
    return np.pad(data, widths, mode="constant")


def hz_to_mel(freq):
    freq = np.asanyarray(freq, dtype=np.float64)
    f_sp = 200.0 / 3
    mels = freq / f_sp
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, np.log(6.4) / 27.0
    log_part = min_log_mel + np.log(np.maximum(freq, min_log_hz) / min_log_hz) / logstep
    return np.where(freq >= min_log_hz, log_part, mels)


def mel_to_hz(mels):
    mels = np.asanyarray(mels, dtype=np.float64)
    f_sp = 200.0 / 3
    freqs = f_sp * mels
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, np.log(6.4) / 27.0
    log_part = min_log_hz * np.exp(logstep * (mels - min_log_mel))
    return np.where(mels >= min_log_mel, log_part, freqs)


def mel(*, sr, n_fft, n_mels=128, fmin=0.0, fmax=None, htk=False, norm="slaney", dtype=np.float32):
    if htk or norm != "slaney":
        raise ParameterError("stand-in librosa: only the default Slaney mel scale and norm")
    if fmax is None:
        fmax = float(sr) / 2
    weights = np.zeros((n_mels, 1 + n_fft // 2), dtype=dtype)
    fftfreqs = np.fft.rfftfreq(n=n_fft, d=1.0 / sr)
    mel_f = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fftfreqs)
    for i in range(n_mels):
        lower = -ramps[i] / fdiff[i]
        upper = ramps[i + 2] / fdiff[i + 1]
        weights[i] = np.maximum(0, np.minimum(lower, upper))
    enorm = 2.0 / (mel_f[2:n_mels + 2] - mel_f[:n_mels])
    weights *= enorm[:, np.newaxis]
    return weights


def modules():
    """{module name: module} for `librosa`, `librosa.filters`, `librosa.util`, `librosa.util.exceptions`."""
    root = types.ModuleType("librosa")
    filters = types.ModuleType("librosa.filters")
    util = types.ModuleType("librosa.util")
    exceptions = types.ModuleType("librosa.util.exceptions")
    filters.get_window, filters.mel = get_window, mel
    util.pad_center, util.exceptions = pad_center, exceptions
    exceptions.ParameterError = ParameterError
    root.filters, root.util, root.__version__ = filters, util, "0.0-standin"
    return {"librosa": root, "librosa.filters": filters, "librosa.util": util,
            "librosa.util.exceptions": exceptions}
