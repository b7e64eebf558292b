"""`magnet-jax tokenize`: audio (manifest, folder or audio-segment dataset) -> EnCodec token dataset.

    magnet-jax tokenize --source songs.jsonl --codec facebook/encodec_32khz --out data/ --name songs
    magnet-jax tokenize --source sounds/ --audio-only --sample-rate 16000 --out data/ --name sounds_audio

On a pod every host runs the same command: each writes its own slice (by
`jax.process_index()`, or --process-index/--process-count), and process 0 assembles the dataset
once all slices are written (give it --wait). Rerun after an interruption: finished chunks are kept.
"""
from __future__ import annotations

import os
from typing import List

import jax

from magnet_jax import hub
from magnet_jax.convert.encodec import load_encodec
from magnet_jax.data import prepare
from magnet_jax.parallel.distributed import maybe_initialize


def add_commands(sub) -> None:
    t = sub.add_parser("tokenize", help="audio files -> EnCodec token dataset (TFDS, array_record)",
                       description="Cut audio into segments and tokenise them with the JAX EnCodec.")
    t.add_argument("--source", required=True,
                   help="audiocraft .jsonl manifest, folder of audio files (+ .txt/.json captions), or a dataset "
                        "made with --audio-only")
    t.add_argument("--out", required=True, help="root folder of the datasets")
    t.add_argument("--name", required=True, help="dataset name (a folder under --out)")
    t.add_argument("--codec", default="facebook/encodec_32khz",
                   help="Hugging Face EnCodec folder or hub name, or audiocraft compression_state_dict.bin")
    t.add_argument("--audio-only", action="store_true", help="write the audio-segment dataset, no tokens")
    t.add_argument("--sample-rate", type=int, default=None, help="with --audio-only (default 32000; tokens: the codec's)")
    t.add_argument("--channels", type=int, default=None, help="with --audio-only (default 1; tokens: the codec's)")
    t.add_argument("--segment-duration", type=float, default=30.0, help="seconds per stored segment")
    t.add_argument("--min-segment-duration", type=float, default=1.0,
                   help="shorter files and tails are skipped (audiocraft's minimum-segment rule)")
    t.add_argument("--chunk-size", type=int, default=64, help="files per work chunk (the unit of resumption)")
    t.add_argument("--batch-size", type=int, default=8, help="segments per codec call")
    t.add_argument("--process-index", type=int, default=None)
    t.add_argument("--process-count", type=int, default=None)
    t.add_argument("--wait", type=float, default=0.0,
                   help="seconds process 0 waits for the other processes' slices before assembling the dataset")
    t.add_argument("--overwrite", action="store_true", help="rebuild a finished dataset of that name")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=run_tokenize)


def _codec(name: str):
    if os.path.exists(os.path.expanduser(name)):
        return load_encodec(os.path.expanduser(name))[1]
    folder = hub.resolve_component(name, explicit=None, model_dir=None, subfolder="codec",
                                   env_var="MAGNET_JAX_CODEC_DIR", patterns=hub.CODEC_FILES, what="codec")
    return load_encodec(folder)[1]


def run_tokenize(args, overrides: List[str]) -> int:
    if overrides:
        raise ValueError(f"tokenize takes no --config overrides, got {overrides}")
    if not args.audio_only and (args.sample_rate is not None or args.channels is not None):
        raise ValueError("--sample-rate/--channels go with --audio-only; tokens are made at the codec's rate and "
                         "channel count")
    if not os.path.exists(os.path.expanduser(args.source)):  # before the codec loads (or downloads)
        raise ValueError(f"--source {args.source} does not exist: give an audiocraft .jsonl manifest, a folder of "
                         "audio files, or a dataset made with --audio-only")
    if not args.audio_only and not os.path.exists(os.path.expanduser(args.codec)) and hub.looks_like_path(args.codec):
        raise ValueError(f"--codec {args.codec}: no such folder or file (give a Hugging Face EnCodec folder, an "
                         "audiocraft compression_state_dict.bin, or a hub name like facebook/encodec_32khz)")
    args.sample_rate = 32000 if args.sample_rate is None else args.sample_rate
    args.channels = 1 if args.channels is None else args.channels
    for flag in ("segment_duration", "min_segment_duration", "chunk_size", "batch_size", "sample_rate", "channels"):
        if getattr(args, flag) <= 0:
            raise ValueError(f"--{flag.replace('_', '-')} must be > 0, got {getattr(args, flag)}")
    if args.min_segment_duration > args.segment_duration:
        raise ValueError(f"--min-segment-duration ({args.min_segment_duration}) exceeds --segment-duration "
                         f"({args.segment_duration})")
    if args.process_index is None:  # on a pod / cluster: this host's index from the job's environment
        maybe_initialize()
    pidx = jax.process_index() if args.process_index is None else args.process_index
    pcount = jax.process_count() if args.process_count is None else args.process_count
    common = dict(name=args.name, segment_s=args.segment_duration, min_segment_s=args.min_segment_duration,
                  chunk_size=args.chunk_size, process_index=pidx, process_count=pcount, wait_s=args.wait,
                  progress=not args.no_progress, overwrite=args.overwrite)
    if args.audio_only:
        out = prepare.build_audio_dataset(args.source, args.out, sample_rate=args.sample_rate,
                                          channels=args.channels, **common)
    else:
        out = prepare.tokenize(args.source, _codec(args.codec), args.out, batch_size=args.batch_size, **common)
    if out is None:
        print(f"process {pidx}/{pcount}: slice written; process 0 assembles the dataset once every slice is "
              "written (run it with --wait, or rerun it when the others are done)")
    else:
        print(f"dataset ready: {out}")
    return 0
