"""Autoregressive (MusicGen) sampling benchmark: our compiled sampler against audiocraft's
`LMModel.generate` on the same random checkpoint, in the same run.

    python bench/sample_ar.py [--shape tiny|small] [--duration 10] [--batch 1] [--reps 3] [--reference]

The checkpoint is audiocraft's own `LMModel` (MusicGen `xp.cfg`: causal, delay pattern, T5
cross-attention), built by its builder with random weights and exported; ours loads that
file through the real import path. Shapes: `tiny` (dim 256, 4 layers, 4 heads) and `small`
(musicgen-small: dim 1024, 24 layers, 16 heads); 4 codebooks of 2048. The T5 is a one-layer
stand-in of t5-base's width (text encoding is not timed). Both sample with MusicGen's
defaults (top-k 250, temperature 1, guidance 3), float32 on CPU; audiocraft runs with
torch.inference_mode() and its default ('torch') attention backend, exact for causal LMs.
Latencies are medians over `--reps`, ours and the reference's interleaved; the speed-up is
the median of the per-repetition ratios (this VM's speed drifts over minutes).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPES = {"tiny": dict(dim=256, num_layers=4, num_heads=4), "small": dict(dim=1024, num_layers=24, num_heads=16)}
TEXT = "80s disco with a funky bass"


def _parse():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    p.add_argument("--duration", type=float, default=10.0, help="seconds at 50 frames/s")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--reference", action="store_true", help="also time audiocraft's LMModel.generate")
    p.add_argument("--greedy", action="store_true", help="argmax decoding (and check the codes are equal)")
    args = p.parse_args()
    if args.batch < 1 or args.reps < 1 or args.duration <= 0:
        p.error("--batch, --reps and --duration must be positive")
    return args


def _log(msg: str) -> None:
    print(f"[bench/sample_ar] {msg}", file=sys.stderr, flush=True)


def build(shape: str, folder: Path):
    """(audiocraft LMModel, our model, condition, condition mask, conditioning attributes)."""
    import jax.numpy as jnp

    sys.path.insert(0, REPO)
    from magnet_jax.convert.audiocraft_checkpoint import load_audiocraft_lm
    from magnet_jax.convert.t5 import load_t5_encoder
    from magnet_jax.text.tokenizer import T5Tokenizer
    from tests.reference import audiocraft_lm as harness
    from tests.reference.audiocraft_pipeline import make_musicgen_lm
    from tests.reference.xp_cfg import magnet_xp_cfg
    from tests.t5_fixtures import make_t5

    make_t5(folder / "t5-base", d_model=768, num_layers=1, num_heads=2, d_kv=8, d_ff=32)
    text = magnet_xp_cfg(lm_model="transformer_lm", causal=True, card=2048, segment_duration=10.0, **SHAPES[shape])
    ref = make_musicgen_lm(folder, seed=0, scale=0.02, xp_text=text)
    ac = harness.load_audiocraft()
    _, model = load_audiocraft_lm(folder)
    _, t5 = load_t5_encoder(folder / "t5-base")
    ids, mask = T5Tokenizer(folder / "t5-base")([TEXT])
    cond, cond_mask = model.conditioner(t5(jnp.asarray(ids), jnp.asarray(mask)), jnp.asarray(mask))
    attrs = [ac.conditioners.ConditioningAttributes(text={"description": TEXT})]
    return ref, model, cond, cond_mask, attrs


def main():
    args = _parse()
    import jax
    import jax.numpy as jnp
    import numpy as np

    sys.path.insert(0, REPO)
    from magnet_jax.decode.autoregressive import ARKnobs, ARSampler, ARSettings

    length = int(round(args.duration * 50))
    with tempfile.TemporaryDirectory() as tmp:
        ref, model, cond, cond_mask, attrs = build(args.shape, Path(tmp))
        cond = jnp.repeat(cond, args.batch, axis=0)
        cond_mask = jnp.repeat(cond_mask, args.batch, axis=0)
        attrs = attrs * args.batch
        sampler = ARSampler(model.lm)
        settings = ARSettings(use_sampling=not args.greedy, top_k=250)
        knobs = ARKnobs.create(temperature=1.0, cfg_coef=3.0)
        t0 = time.perf_counter()
        sampler.lower(cond, cond_mask, jax.random.key(0), settings, knobs, length=length).compile()
        compile_s = time.perf_counter() - t0
        ours = lambda r: jax.block_until_ready(sampler.generate(cond, cond_mask, jax.random.key(r), settings, knobs,
                                                                length=length))
        ours(0)  # warm-up (the program is compiled; this loads it)
        mine, theirs, ratios, codes = [], [], [], {}
        for r in range(args.reps):
            t0 = time.perf_counter()
            codes["ours"] = np.asarray(ours(r))
            mine.append(time.perf_counter() - t0)
            if args.reference:
                import torch

                with torch.inference_mode():
                    t0 = time.perf_counter()
                    codes["ref"] = ref.generate(conditions=attrs, max_gen_len=length, use_sampling=not args.greedy,
                                                temp=1.0, top_k=250, cfg_coef=3.0).numpy()
                    theirs.append(time.perf_counter() - t0)
                ratios.append(theirs[-1] / mine[-1])
                _log(f"rep {r}: ours {mine[-1]:.2f} s, audiocraft {theirs[-1]:.2f} s")
    steps = length + 3
    line = (f"sample_ar shape={args.shape} batch={args.batch} T={length} sequence_steps={steps} compile_s={compile_s:.1f} "
            f"latency_s={statistics.median(mine):.2f} steps_per_s={steps / statistics.median(mine):.1f} "
            f"realtime_factor={args.duration / statistics.median(mine):.2f}")
    if args.reference:
        line += (f" audiocraft_latency_s={statistics.median(theirs):.2f} speedup={statistics.median(ratios):.2f}x")
        if args.greedy:
            line += f" codes_equal={bool(np.array_equal(codes['ours'], codes['ref']))}"
    print(line)


if __name__ == "__main__":
    main()
