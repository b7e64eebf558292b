"""EnCodec benchmark: our jitted encode / decode against transformers' PyTorch EncodecModel on the
same weights and the same audio, with real-time factors and a code-equality check.

    python bench/codec.py [--config-size real|tiny] [--codec HF_FOLDER] [--duration 10] [--batch 1]
        [--reps 3] [--ref-threads N] [--no-reference]

Weights: a random transformers EncodecModel in facebook/encodec_32khz's configuration (`real`, the
default: 64 filters, ratios 8,5,4,4, 2-layer LSTM of width 1024, 4 codebooks x 2048 at 50 Hz) or the
tests' tiny one (`tiny`: 4 filters, quick checks), made by tests/encodec_fixtures.py and saved to a
temporary folder; `--codec DIR` uses an existing Hugging Face EnCodec folder instead. Ours is loaded
from that folder with `magnet_jax.convert.encodec.load_encodec`, the reference with
`transformers.EncodecModel.from_pretrained`.

Audio: `--batch` items of `--duration` seconds at the codec's rate and channel count (a few tones
plus noise, seed `--seed`). Ours: the programs `codec.encode` / `codec.decode` run
(`EncodecModel._encode` / `_decode` jitted over the model's split state), lowered and compiled ahead
of time (compile_*_s), then called with `block_until_ready`. The reference runs in float32 under
torch.inference_mode() with all CPU threads (or `--ref-threads`). Each side gets one warm-up call,
then `--reps` timed calls, ours and the reference's taking turns so that a changing load hits both
alike; the latencies are medians. Both decoders decode our codes.

Reported: the real-time factor, audio seconds (batch x duration) over wall seconds; `speedup`,
reference latency / our latency (> 1: ours is faster); `codes_equal`, the fraction of code entries
equal between our encode and the reference's; `wav_err`, the largest |our decode - reference decode|
relative to the reference's peak; `load1`, the 1-minute load average at the end (on a busy machine
the timings are noisy, and torch's OpenMP threads suffer most: try `--ref-threads 1` there).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# facebook/encodec_32khz's sizes, applied on top of the tests' tiny config (same layout otherwise).
REAL_32KHZ = dict(num_filters=64, codebook_size=2048, hidden_size=128, target_bandwidths=[2.2])


def _parse():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-size", choices=("real", "tiny"), default="real",
                   help="random weights in encodec_32khz's sizes (real) or the tests' tiny ones")
    p.add_argument("--codec", default="", help="an existing Hugging Face EnCodec folder (overrides --config-size)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of audio per batch item")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ref-threads", type=int, default=0, help="torch threads for the reference (default: all CPUs)")
    p.add_argument("--no-reference", action="store_true", help="time ours only")
    args = p.parse_args()
    if args.batch < 1 or args.reps < 1 or not args.duration > 0:
        p.error("--batch and --reps must be >= 1 and --duration > 0")
    return args


def _log(msg: str) -> None:
    print(f"[bench/codec] {msg}", file=sys.stderr, flush=True)


def _audio(b: int, channels: int, n: int, sr: int, seed: int):
    import numpy as np

    rng = np.random.default_rng(seed)
    t = np.arange(n) / sr
    freqs = rng.uniform(80, 2000, (b, channels, 3, 1))
    tones = (0.2 * np.sin(2 * np.pi * freqs * t + rng.uniform(0, 2 * np.pi, freqs.shape))).sum(axis=2)
    return (tones + 0.02 * rng.normal(size=(b, channels, n))).astype(np.float32)


def _time(fns, reps: int, what: str):
    """{name: (median seconds of `reps` calls after one warm-up call, last result)}; the callables take
    turns within each rep, so a changing load on the machine hits them alike."""
    times = {name: [] for name in fns}
    out = {}
    for r in range(-1, reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            out[name] = fn()
            took = time.perf_counter() - t0
            if r >= 0:
                times[name].append(took)
            _log(f"{what} {name}: {'warm-up' if r < 0 else f'rep {r + 1}/{reps}'} {took:.3f}s")
    return {name: (statistics.median(times[name]), out[name]) for name in fns}


def main():
    args = _parse()
    from pathlib import Path

    import jax
    import numpy as np
    from flax import nnx

    sys.path.insert(0, REPO)
    from magnet_jax.codec import EncodecModel
    from magnet_jax.convert.encodec import load_encodec

    with tempfile.TemporaryDirectory(prefix="bench_codec_") as tmp:
        if args.codec:
            folder, size = args.codec, os.path.basename(os.path.normpath(args.codec))
        else:
            from tests.encodec_fixtures import make_encodec

            folder, size = tmp, args.config_size
            _log(f"building a random transformers EncodecModel ({size}) in {tmp}")
            make_encodec(Path(tmp), seed=args.seed, **(REAL_32KHZ if size == "real" else {}))
        cfg, codec = load_encodec(folder)
        ref = None
        if not args.no_reference:
            try:
                ref = _Reference(folder, args.ref_threads)
            except ImportError as e:
                _log(f"no reference: {e}")

    sr, hop, ch = cfg.sampling_rate, cfg.hop_length, cfg.audio_channels
    n = int(round(args.duration * sr))
    t_frames = -(-n // hop)
    wav = _audio(args.batch, ch, n, sr, args.seed)
    audio_s = args.batch * n / sr
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(codec)))
    _log(f"codec {size}: {n_params / 1e6:.2f}M params, {sr} Hz, hop {hop}, {cfg.num_quantizers} x "
         f"{cfg.codebook_size} codes; audio [{args.batch}, {ch}, {n}] ({audio_s:.2f} s); "
         f"jax {jax.default_backend()} ({jax.device_count()} device, {os.cpu_count()} CPUs)")

    graphdef, state = nnx.split(codec)

    def compiled(method, x, what):
        fn = jax.jit(lambda s, v: method(nnx.merge(graphdef, s), v))
        t0 = time.perf_counter()
        exe = fn.lower(state, x).compile()
        took = time.perf_counter() - t0
        _log(f"{what} ours: lowered + compiled in {took:.2f}s")
        return (lambda: jax.block_until_ready(exe(state, x))), took

    enc_fns, dec_fns = {}, {}
    enc_fns["ours"], compile_enc_s = compiled(EncodecModel._encode, jax.device_put(wav), "encode")
    if ref is not None:
        enc_fns["reference"] = ref.encoder(wav)
    enc = _time(enc_fns, args.reps, "encode")
    enc_s, codes = enc["ours"][0], np.asarray(enc["ours"][1])
    assert codes.shape == (args.batch, cfg.num_quantizers, t_frames), codes.shape
    assert codes.min() >= 0 and codes.max() < cfg.codebook_size

    dec_fns["ours"], compile_dec_s = compiled(EncodecModel._decode, jax.device_put(codes), "decode")
    if ref is not None:
        dec_fns["reference"] = ref.decoder(codes)  # our codes, so both decode the same input
    dec = _time(dec_fns, args.reps, "decode")
    dec_s, out = dec["ours"][0], np.asarray(dec["ours"][1])
    assert out.shape == (args.batch, ch, t_frames * hop), out.shape

    line = (f"codec={size} device={jax.devices()[0].platform} B={args.batch} duration_s={args.duration:g} "
            f"T={t_frames} compile_enc_s={compile_enc_s:.2f} compile_dec_s={compile_dec_s:.2f} "
            f"enc_s={enc_s:.4f} dec_s={dec_s:.4f} enc_rtf={audio_s / enc_s:.1f} dec_rtf={audio_s / dec_s:.1f}")
    if ref is None:
        line += " reference=" + ("off" if args.no_reference else "unavailable")
    else:
        (ref_enc_s, ref_codes), (ref_dec_s, ref_wav) = enc["reference"], dec["reference"]
        ref_codes, ref_wav = ref_codes.audio_codes[0].numpy(), ref_wav.numpy()
        assert ref_codes.shape == codes.shape and ref_wav.shape == out.shape, (ref_codes.shape, ref_wav.shape)
        equal = float((ref_codes == codes).mean())
        wav_err = float(np.abs(ref_wav - out).max() / max(1e-12, np.abs(ref_wav).max()))
        line += (f" ref_threads={ref.threads} ref_enc_s={ref_enc_s:.4f} ref_dec_s={ref_dec_s:.4f}"
                 f" ref_enc_rtf={audio_s / ref_enc_s:.1f} ref_dec_rtf={audio_s / ref_dec_s:.1f}"
                 f" speedup_enc={ref_enc_s / enc_s:.2f} speedup_dec={ref_dec_s / dec_s:.2f}"
                 f" codes_equal={equal:.4f} wav_err={wav_err:.1e}")
    line += f" load1={os.getloadavg()[0]:.1f}"
    print(line, flush=True)


class _Reference:
    """transformers' EncodecModel on the same folder: float32, torch.inference_mode(), all CPU threads."""

    def __init__(self, folder, threads: int = 0):
        import torch
        from transformers import EncodecModel

        torch.set_num_threads(threads or os.cpu_count() or 1)
        self.torch, self.threads = torch, torch.get_num_threads()
        _log(f"reference: transformers EncodecModel (fp32, {self.threads} threads)")
        self.model = EncodecModel.from_pretrained(str(folder)).eval()
        self.bandwidth = max(self.model.config.target_bandwidths)  # ours uses the largest bandwidth's codebooks

    def encoder(self, wav):
        x = self.torch.from_numpy(wav)

        def run():
            with self.torch.inference_mode():
                return self.model.encode(x, bandwidth=self.bandwidth)
        return run

    def decoder(self, codes):
        c = self.torch.from_numpy(codes.astype("int64"))[None]  # [chunks=1, B, K, T]

        def run():
            with self.torch.inference_mode():
                return self.model.decode(c, [None]).audio_values
        return run


if __name__ == "__main__":
    main()
