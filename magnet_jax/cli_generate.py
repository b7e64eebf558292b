"""`magnet-jax generate` and `magnet-jax convert`: the pretrained-model commands.

    magnet-jax generate "80s disco with a funky bass" --model facebook/magnet-small-10secs \\
        --duration 10 --out disco.wav
    magnet-jax convert facebook/magnet-small-10secs        # convert once, cache the result
"""
from __future__ import annotations

import dataclasses
import inspect
import os
import time
import typing
from pathlib import Path
from typing import List

from magnet_jax.config import DecodeConfig
from magnet_jax.data.audio_io import write_audio
from magnet_jax.decode.settings import DecodeKnobs, SamplerSettings
from magnet_jax.loading import load_pretrained
from magnet_jax.pretrained_parts import convert_to_cache
from magnet_jax.text_to_audio import check_duration


def add_commands(sub) -> None:
    g = sub.add_parser("generate", help="generate audio from text with a pretrained MAGNeT (or MusicGen)",
                       description="Generate one file per prompt with a pretrained (or converted) MAGNeT model, "
                                   "or a MusicGen checkpoint (sampled autoregressively).")
    g.add_argument("prompts", nargs="+", help="text descriptions, one clip each ('' for unconditional)")
    _model_args(g)
    g.add_argument("--duration", type=float, default=None, help="seconds (default: the model's segment length)")
    g.add_argument("--out", default="magnet.wav",
                   help="output file (.wav or .flac); with several prompts, NAME_0.wav, NAME_1.wav, ...")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--batch-size", type=int, default=0, help="prompts per generation call (0: all at once)")
    g.add_argument("--generation-defaults", choices=("checkpoint", "audiocraft"), default="checkpoint",
                   help="decoding defaults: the checkpoint's generate.lm, or audiocraft's MAGNeT API ones")
    decoding_args(g)
    out = g.add_argument_group("output")
    out.add_argument("--strategy", choices=("loudness", "peak", "rms", "clip"), default="loudness",
                     help="normalisation of the written audio (audiocraft's audio_write strategies)")
    out.add_argument("--loudness-headroom-db", type=float, default=14.0, help="target loudness: -headroom LUFS")
    out.add_argument("--no-progress", action="store_true")
    g.set_defaults(func=run_generate)

    c = sub.add_parser("convert", help="convert a pretrained checkpoint once (cached for fast loads)",
                       description="Convert audiocraft/Hugging Face weights to JAX and cache them (Orbax).")
    c.add_argument("model", help="hub name (facebook/magnet-small-10secs, ...) or a local folder")
    _model_args(c, with_model=False)
    c.set_defaults(func=run_convert)


# The decoding flags of `generate` (and `eval`): one per `DecodeConfig` field a call may set,
# named and typed after the field (`schedule` and `query_buckets` are the trained model's or
# speed-only settings). Written here: help texts, choices, and the flag of a boolean that turns
# its default off.
_NOT_FLAGS = ("schedule", "query_buckets")
_FLAG_OPTIONS = {
    "decoding_steps": {"help": "steps per codebook, e.g. 20 10 10 10"},
    "span_arrangement": {"choices": ("nonoverlap", "stride1")},
    "span_scoring": {"choices": ("max", "prod")},
    "use_sampling": {"flag": "--greedy", "help": "argmax decoding instead of sampling"},
    "hybrid_prefix": {"help": "Hybrid-MAGNeT checkpoints: seconds decoded autoregressively first (default 3)"},
}
# Decoding settings that are not DecodeConfig fields: MusicGen's guidance, and rescoring's weight.
_OTHER_FLAGS = {
    "cfg_coef": {"type": float, "help": "MusicGen's guidance coefficient (MAGNeT: --max/min-cfg-coef)"},
    "rescore_weight": {"type": float, "help": "MAGNeT's share w of the mixed confidence w*p_magnet + "
                                            "(1-w)*p_rescorer (default 0.5)"},
}
DECODE_FLAG_FIELDS = tuple(f.name for f in dataclasses.fields(DecodeConfig) if f.name not in _NOT_FLAGS)
assert set(_FLAG_OPTIONS) <= set(DECODE_FLAG_FIELDS), "a flag option names no DecodeConfig field"


def _field_flag(field: dataclasses.Field, hint) -> tuple:
    """(flag, argparse keywords) of one DecodeConfig field."""
    options = dict(_FLAG_OPTIONS.get(field.name, {}))
    if hint is bool:  # the flag turns the default off
        flag = options.pop("flag", ("--no-" if field.default else "--") + field.name.replace("_", "-"))
        return flag, {"action": "store_const", "const": not field.default, "default": None, "dest": field.name,
                      **options}
    flag = "--" + field.name.replace("_", "-")
    if typing.get_origin(hint) is tuple:  # Tuple[int, ...]: one value per codebook
        return flag, {"type": typing.get_args(hint)[0], "nargs": "+", "dest": field.name, **options}
    return flag, {"type": hint, "dest": field.name, **options}


def decoding_args(p) -> None:
    """The decoding flags of `generate` (and of `eval`, which generates): see `_overrides`."""
    knobs = p.add_argument_group("decoding (defaults from the model)")
    hints = typing.get_type_hints(DecodeConfig)
    for field in dataclasses.fields(DecodeConfig):
        if field.name in DECODE_FLAG_FIELDS:
            flag, options = _field_flag(field, hints[field.name])
            knobs.add_argument(flag, **options)
    knobs.add_argument("--cfg-coef", dest="cfg_coef", **_OTHER_FLAGS["cfg_coef"])
    knobs.add_argument("--rescorer", default=None,
                       help="MusicGen hub name or local folder that rescores each step's candidate (Eq. 5; MAGNeT only)")
    knobs.add_argument("--rescore-weight", dest="rescore_weight", **_OTHER_FLAGS["rescore_weight"])


def _model_args(p, with_model: bool = True) -> None:
    if with_model:
        p.add_argument("--model", default="facebook/magnet-small-10secs", help="hub name or local folder")
    p.add_argument("--t5", default=None, help="local Hugging Face T5 folder (default: the one xp.cfg names)")
    p.add_argument("--codec", default=None, help="local Hugging Face EnCodec folder")
    p.add_argument("--cache-dir", default=None, help="converted-model cache (default ~/.cache/magnet_jax)")
    p.add_argument("--offline", action="store_true", help="never download (use local folders / hub cache)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                   help="compute dtype of T5, the LM and the codec decoder (bfloat16 on accelerators)")


def _load(args):
    model = load_pretrained(args.model, t5=args.t5, codec=args.codec, cache_dir=args.cache_dir,
                            local_files_only=args.offline, dtype=args.dtype,
                            generation_defaults=getattr(args, "generation_defaults", "checkpoint"))
    if getattr(args, "rescorer", None):
        if model.config.lm.causal:
            raise ValueError(f"--rescorer: rescoring applies to MAGNeT, and {model.name} is a MusicGen (causal) LM")
        rescorer = load_pretrained(args.rescorer, cache_dir=args.cache_dir, local_files_only=args.offline,
                                   dtype=args.dtype)
        if not rescorer.config.lm.causal:
            raise ValueError(f"--rescorer {args.rescorer}: a MusicGen (causal LM) checkpoint is expected, "
                             "this one is a MAGNeT checkpoint")
        model.set_rescorer(rescorer)
    return model


def _overrides(args) -> dict:
    """The decoding settings given on the command line (those left out come from the model)."""
    ov = {k: getattr(args, k) for k in (*DECODE_FLAG_FIELDS, *_OTHER_FLAGS)}
    return {k: v for k, v in ov.items() if v is not None}


def _check_decoding_args(args) -> None:
    """The decoding flags' own limits, checked before the model loads (its defaults fill the rest)."""
    if args.duration is not None:
        check_duration(args.duration)
    if args.decoding_steps is not None:
        SamplerSettings(decoding_steps=tuple(args.decoding_steps))
    if args.top_k is not None and args.top_k < 0:
        raise ValueError(f"--top-k must be >= 0 (0: no top-k filtering), got {args.top_k}")
    if args.rescore_weight is not None and not args.rescorer:
        raise ValueError("--rescore-weight needs --rescorer (a MusicGen checkpoint to rescore with)")
    knobs = inspect.signature(DecodeKnobs.create).parameters
    DecodeKnobs.create(**{k: v for k, v in _overrides(args).items() if k in knobs})


def _out_paths(out: str, n: int) -> List[Path]:
    path = Path(out)
    if path.suffix.lower() not in (".wav", ".flac"):
        raise ValueError(f"--out {out}: use a .wav or .flac file name")
    existing = path.absolute().parent  # the folder is created if missing: check what exists of it
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise ValueError(f"--out {out}: cannot write there ({existing} is not a writable folder); choose another --out")
    if n == 1:
        return [path]
    return [path.with_name(f"{path.stem}_{i}{path.suffix}") for i in range(n)]


def run_generate(args, overrides: List[str]) -> int:
    if overrides:
        raise ValueError(f"generate takes no --config overrides, got {overrides}")
    from tqdm import tqdm

    if args.batch_size < 0:
        raise ValueError(f"--batch-size must be >= 0 (0: all prompts at once), got {args.batch_size}")
    paths = _out_paths(args.out, len(args.prompts))  # fail on a bad input before loading anything
    _check_decoding_args(args)
    t0 = time.perf_counter()
    model = _load(args)
    print(f"loaded {model.name} in {time.perf_counter() - t0:.1f} s ({model.sample_rate} Hz, "
          f"{model.frame_rate:g} frames/s)")
    batch = args.batch_size or len(args.prompts)
    ov = _overrides(args)
    foreign = sorted(set(ov) - model.decoding_keys)
    if foreign:
        flags = ", ".join("--" + k.replace("_", "-") for k in foreign)
        raise ValueError(f"{flags}: not a decoding setting of {model.name} ({type(model).__name__}); it takes "
                         f"{', '.join(sorted(model.decoding_keys))}")
    for start in range(0, len(args.prompts), batch):
        prompts = args.prompts[start:start + batch]
        bar = None if args.no_progress else tqdm(total=1, desc=f"prompts {start + 1}-{start + len(prompts)}",
                                                 unit="step")

        def progress(done, total, bar=bar):
            bar.total = total
            bar.n = done
            bar.refresh()

        t0 = time.perf_counter()
        wav = model.generate(prompts, duration=args.duration, seed=args.seed + start,
                             progress=None if bar is None else progress, **ov)
        if bar is not None:
            bar.close()
        secs = wav.shape[-1] / model.sample_rate
        print(f"generated {len(prompts)} x {secs:.2f} s in {time.perf_counter() - t0:.1f} s")
        for i, w in enumerate(wav):
            written = write_audio(paths[start + i], w, model.sample_rate, strategy=args.strategy,
                                  loudness_headroom_db=args.loudness_headroom_db)
            print(f"wrote {written}: {prompts[i]!r}")
    return 0


def run_convert(args, overrides: List[str]) -> int:
    if overrides:
        raise ValueError(f"convert takes no --config overrides, got {overrides}")
    t0 = time.perf_counter()
    entry = convert_to_cache(args.model, t5=args.t5, codec=args.codec, cache_dir=args.cache_dir,
                             local_files_only=args.offline, dtype=args.dtype)
    print(f"converted {args.model} in {time.perf_counter() - t0:.1f} s -> {entry}")
    return 0

