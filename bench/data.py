"""Input-pipeline benchmark: examples/s of `TokenBatches` per host, against the train step's appetite.

    python bench/data.py                                   # synthetic data, step measured on this machine
    python bench/data.py --keep /tmp/bench_data --no-step  # pipeline only; keep the data for reruns
    python bench/data.py --data DIR --tokenizer T5_DIR     # an existing tokenized dataset, a real tokenizer
    python bench/data.py --step-time 0.6 --step-devices 8  # a step measured elsewhere (global batch, 8 GPUs)
    options: --config configs/magnet_small_10s.py --examples 5000 --batches 60 --warmup 10 --threads N
        --workers N --prefetch N --step-batch 2 --steps 2 --devices-per-host N --project-device H100
        --project-mfu 0.4 --project-devices 8, and config overrides --config.data.merge_text_p=0.25 ...

Without --data, a synthetic token dataset is written first (with `ChunkWriter` and the tokenizer
CLI's `token_features`, no codec needed): --examples segments of random int16 codes [n_q, 1500]
(30 s at 50 Hz, below lm.card) with audiocraft-style metadata JSON (description, genre, moods,
keywords, bpm, key, ...), to a temporary folder (or --keep DIR, reused when rerun). The pipeline
is `TokenBatches` of the config with data.source='tfds' (its crop and caption settings:
min_segment_ratio, merge_text_p, drop_desc_p, drop_other_p, word_dropout, max_text_len).
Captions are tokenised by the T5 tokenizer of --tokenizer, or (t5-base cannot be downloaded here)
by a sentencepiece unigram model trained on the fly on synthetic captions and saved as a
transformers T5 tokenizer (as tests/t5_fixtures.py does); the output says which.

Reported: examples/s of the prefetching grain iterator (the trainer's path) over --batches batches
after --warmup, with the config's data.num_threads or --threads (and --workers processes);
examples/s of random access `batch(step)` (one thread); then the train step's consumption rate
(examples/s per host) and the ratio pipeline / step (target >= 5). The step is measured with
bench/train_step.py's `measure_train_step` on this machine at a small --step-batch with
conditioner.encoder='embedding' (the frozen T5 forward is left out, so the real step is slower and
the ratio a lower bound), or given as --step-time (seconds per step of the config's global batch on
--step-devices devices, scaled to --devices-per-host). An analytic line adds what a host of
--project-devices accelerators at --project-mfu would consume, and per accelerator host (a TPU v5e
and a v5p host, an 8 x H100 node): their need at --project-mfu beside this machine's per-core rate
times the host's cores (the cores that cover 5x the need). Progress goes to stderr; the last line
is a one-line summary.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench/train_step.py
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/t5_fixtures.py

TARGET_RATIO = 5.0

# -- synthetic metadata, in the shape of audiocraft's music info JSON ---------------------------

GENRES = ["rock", "pop", "jazz", "electronic", "hip hop", "classical", "ambient", "folk", "metal", "funk", "soul",
          "reggae", "blues", "country", "techno", "house", "drum and bass", "lofi", "cinematic", "latin"]
MOODS = ["happy", "sad", "energetic", "calm", "dark", "uplifting", "melancholic", "epic", "dreamy", "aggressive",
         "romantic", "playful", "tense", "peaceful", "nostalgic", "groovy"]
INSTRUMENTS = ["piano", "acoustic guitar", "electric guitar", "bass", "drums", "synth", "strings", "violin", "cello",
               "trumpet", "saxophone", "flute", "organ", "pads", "percussion", "vocals", "choir", "harp", "banjo"]
KEYS = [f"{n} {m}" for n in ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B") for m in ("major", "minor")]
ADJECTIVES = ["warm", "driving", "lush", "sparse", "punchy", "gentle", "gritty", "bright", "deep", "airy", "heavy",
              "smooth", "distorted", "layered", "minimal", "catchy", "soaring", "mellow", "crisp", "hypnotic"]
NOUNS = ["melody", "groove", "beat", "bassline", "chord progression", "riff", "arpeggio", "rhythm", "hook", "texture",
         "drop", "build-up", "breakdown", "solo", "outro", "intro", "chorus", "verse", "loop", "pattern"]
PLACES = ["for a road trip", "for a film trailer", "for studying", "for a night drive", "for a workout",
          "for a wedding", "in a smoky club", "for a video game", "at sunset", "for meditation", "for an advert"]
SYLLABLES = ["ka", "lo", "mi", "ra", "ven", "tor", "sil", "ba", "den", "qua", "zel", "mor", "fin", "ty", "lus", "ne"]


def _word(rng) -> str:
    return "".join(rng.choice(SYLLABLES, size=rng.integers(2, 4)))


def synthetic_info(rng: np.random.Generator, duration: float) -> dict:
    """One track's metadata: a free-text description of 2-3 sentences plus tag fields."""
    pick = lambda xs, lo, hi: [str(x) for x in rng.choice(xs, size=rng.integers(lo, hi + 1), replace=False)]
    genre, moods, instruments = pick(GENRES, 1, 1)[0], pick(MOODS, 1, 3), pick(INSTRUMENTS, 2, 5)
    sentences = [f"A {rng.choice(ADJECTIVES)} {genre} track with {', '.join(instruments[:-1])} and {instruments[-1]}",
                 f"the {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)} feels {' and '.join(moods)}",
                 f"{rng.choice(ADJECTIVES)} {rng.choice(NOUNS)} {rng.choice(PLACES)}"]
    description = ". ".join(sentences[:rng.integers(2, 4)]) + "."
    return {
        "path": f"/data/music/{_word(rng)}/{_word(rng)}_{rng.integers(1e6)}.mp3", "duration": duration,
        "sample_rate": 32000, "file_extension": "mp3", "artist": f"{_word(rng).title()} {_word(rng).title()}",
        "title": f"{_word(rng).title()} {rng.choice(NOUNS)}", "name": _word(rng), "description": description,
        "genre": genre, "moods": moods, "instrument": instruments[0],
        "keywords": ", ".join(pick(ADJECTIVES, 2, 5) + [genre]), "bpm": int(rng.integers(60, 181)),
        "key": str(rng.choice(KEYS)),
    }


def write_dataset(root: str, num_examples: int, *, n_q: int = 4, frames: int = 1500, card: int = 2048,
                  seed: int = 0, chunk_size: int = 256, name: str = "bench_tokens") -> str:
    """A finished TFDS token dataset `<root>/<name>` of random codes and synthetic metadata."""
    from magnet_jax.data.prepare import token_features
    from magnet_jax.data.records import ChunkWriter

    writer = ChunkWriter(root, name, token_features(n_q), num_items=num_examples, chunk_size=chunk_size)
    t0 = time.perf_counter()
    for c in writer.my_chunks():
        def examples(c=c):
            for i in writer.items_of(c):
                rng = np.random.default_rng([seed, i])
                info = synthetic_info(rng, duration=frames / 50 * int(rng.integers(1, 9)))
                yield {"codes": rng.integers(0, card, (n_q, frames), dtype=np.int16), "path": info["path"],
                       "offset_s": np.float32(frames / 50 * int(rng.integers(0, 4))), "info": json.dumps(info)}
        writer.write(c, examples(), {"items": len(writer.items_of(c))})
        _log(f"  wrote {writer.items_of(c).stop}/{num_examples} examples ({time.perf_counter() - t0:.1f}s)")
    return str(writer.finalize(description="bench/data.py synthetic tokens"))


def _caption_corpus(n: int = 3000):
    from magnet_jax.data.text import compose_description

    rng = np.random.default_rng(12345)
    out = []
    for _ in range(n):
        info = synthetic_info(rng, 30.0)
        out.append(compose_description(info, rng, merge_text_p=0.5, drop_desc_p=0.3, drop_other_p=0.7) or "")
    return out


# -- timing ------------------------------------------------------------------------------------------

def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def time_iterator(data, cfg, *, batches: int, warmup: int, threads: int, prefetch, workers: int = 0):
    """Steady-state examples/s of the prefetching iterator: the batches that can be waiting in the
    prefetch buffers when timing starts are not counted."""
    g = cfg.train.global_batch_size
    t0 = time.perf_counter()
    it = data.iterator(g, data.process_index, data.process_count, threads=threads, prefetch=prefetch,
                       workers=workers)
    for _ in range(warmup):
        b = next(it)
    first_s = time.perf_counter() - t0
    buffered = (prefetch if prefetch is not None else max(threads, 1)) * max(workers, 1) + 2 * workers
    skip = min(buffered, batches // 2)
    stamps = []
    for i in range(batches):
        b = next(it)
        stamps.append(time.perf_counter())
        if i > skip and (i + 1) % max(1, batches // 5) == 0:
            _log(f"  iterator: {i + 1}/{batches} batches, "
                 f"{(i - skip) * len(b['codes']) / (stamps[-1] - stamps[skip]):.0f} examples/s")
    if workers:
        it.close()
    return (batches - 1 - skip) * len(b["codes"]) / (stamps[-1] - stamps[skip]), first_s, b


def time_random_access(data, cfg, *, batches: int, start: int = 1000):
    g = cfg.train.global_batch_size
    data.batch(start, g, data.process_index, data.process_count)  # warm-up
    t0 = time.perf_counter()
    for i in range(batches):
        b = data.batch(start + 1 + i, g, data.process_index, data.process_count)
    return batches * len(b["codes"]) / (time.perf_counter() - t0)


def measure_step(args, overrides, cfg):
    """(examples/s per host the train step consumes, how it was obtained)."""
    from magnet_jax.config_io import load_config

    dev = args.devices_per_host
    if args.step_time:
        per_device = cfg.train.global_batch_size / args.step_time / args.step_devices
        return per_device * (dev or args.step_devices), (
            f"--step-time {args.step_time}s for the global batch {cfg.train.global_batch_size} on {args.step_devices} "
            f"device(s), x{dev or args.step_devices} devices/host")
    import jax
    from train_step import measure_train_step

    step_cfg = load_config(args.config, list(overrides) + [
        "--config.conditioner.encoder=embedding", f"--config.train.global_batch_size={args.step_batch}"])
    _log(f"measuring the train step of {step_cfg.name} on {jax.devices()[0].device_kind} at global batch "
         f"{args.step_batch} ({args.steps} steps after compile + warm-up; may take minutes on a CPU) ...")
    r = measure_train_step(step_cfg, steps=args.steps)
    n = r["devices"]
    per_device = args.step_batch / r["step_s"] / n
    return per_device * (dev or n), (
        f"measured: step {r['step_s']:.2f}s at batch {args.step_batch} on {n} x {r['device_kind']} "
        f"(encoder=embedding, MFU {100 * r['mfu']:.1f}% of {r['peak_label']}), x{dev or n} devices/host")


# Accelerator hosts: (accelerator, accelerators per host, vCPUs per host), from the public machine types
# (TPU v5e ct5lp-hightpu-4t, TPU v5p host, GPU a3-highgpu-8g).
HOSTS = {"TPU v5e host": ("TPU v5e", 4, 224), "TPU v5p host": ("TPU v5p", 4, 208),
         "8 x H100 node": ("H100", 8, 208)}


def _host_projection(it_rate: float, per_example_flops: float, mfu: float, peaks) -> None:
    """The pipeline's rate per core here, scaled to each host's cores (grain worker processes scale
    past the GIL: one per core, `data.num_workers`), against what that host's accelerators consume
    at `mfu` (analytic). Both sides are projections; the per-core rate is measured."""
    cores = os.cpu_count() or 1
    per_core = it_rate / cores
    print(f"per core: {per_core:,.0f} examples/s ({it_rate:,.0f} on {cores} cores)")
    for host, (device, n, vcpus) in HOSTS.items():
        need = peaks[device] * 1e12 * mfu / per_example_flops * n
        supply = per_core * vcpus
        print(f"  {host}: {n} x {device} at {100 * mfu:.0f}% MFU need {need:,.0f} examples/s; {vcpus} cores x "
              f"{per_core:,.0f} = {supply:,.0f} examples/s = {supply / need:,.1f}x the need (target >= "
              f"{TARGET_RATIO:g}x: {'met' if supply >= TARGET_RATIO * need else 'NOT met'}); "
              f"{TARGET_RATIO * need / per_core:,.0f} cores cover {TARGET_RATIO:g}x")


def _parse():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/magnet_small_10s.py")
    p.add_argument("--data", default="", help="an existing tokenized dataset (default: write a synthetic one)")
    p.add_argument("--examples", type=int, default=5000, help="size of the synthetic dataset (below a few "
                   "thousand, grain's per-index shuffle gets slower than on real datasets)")
    p.add_argument("--keep", default="", help="write the synthetic dataset (and tokenizer) here and keep it")
    p.add_argument("--tokenizer", default="", help="a T5 tokenizer folder (default: a locally trained one)")
    p.add_argument("--batches", type=int, default=60, help="timed batches (after --warmup; those that can "
                   "be waiting in the prefetch buffers, at most half, are not counted)")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--threads", type=int, default=0, help="grain reader threads (default: data.num_threads)")
    p.add_argument("--workers", type=int, default=0, help="grain worker processes (TokenBatches.iterator's "
                   "workers; 0: threads of this process only, as the trainer reads)")
    p.add_argument("--prefetch", type=int, default=None, help="grain prefetch buffer in batches (default: "
                   "TokenBatches.iterator's, one per thread)")
    p.add_argument("--random-access-batches", type=int, default=5)
    p.add_argument("--step-time", type=float, default=0.0, help="seconds per train step of the config's global "
                   "batch, measured elsewhere (skips measuring here)")
    p.add_argument("--step-devices", type=int, default=1, help="devices that --step-time's step ran on")
    p.add_argument("--devices-per-host", type=int, default=0, help="devices one host feeds (default: those the "
                   "step ran on)")
    p.add_argument("--step-batch", type=int, default=2, help="global batch of the step measured here")
    p.add_argument("--steps", type=int, default=2, help="timed steps of the step measured here")
    p.add_argument("--no-step", action="store_true", help="pipeline only")
    p.add_argument("--project-device", default="H100", help="also print the analytic consumption of a host of "
                   "these accelerators (a name in magnet_jax.train.flops.PEAK_TFLOPS; '' for none)")
    p.add_argument("--project-mfu", type=float, default=0.4, help="model FLOPs utilisation assumed there")
    p.add_argument("--project-devices", type=int, default=8, help="accelerators per host assumed there")
    from magnet_jax.config_io import parse_args_and_overrides

    args, overrides = parse_args_and_overrides(p, "--config.data.merge_text_p=0.25")
    return args, overrides


def main():
    args, overrides = _parse()
    from magnet_jax.config_io import load_config
    from magnet_jax.text.tokenizer import T5Tokenizer
    from magnet_jax.train.setup import token_batches

    base = load_config(args.config, overrides)
    tmp = None
    if args.keep:
        work = Path(args.keep)
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="bench_data_")
        work = Path(tmp.name)
    if args.data:
        data_dir = args.data
    elif (work / "bench_tokens" / "1.0.0" / "dataset_info.json").is_file():
        data_dir = str(work / "bench_tokens")
        _log(f"reusing {data_dir}")
    else:
        _log(f"writing {args.examples} synthetic examples [{base.lm.n_q}, 1500] to {work} ...")
        data_dir = write_dataset(str(work), args.examples, n_q=base.lm.n_q, card=base.lm.card)
    if args.tokenizer:
        tok_dir, tok_note = args.tokenizer, f"T5 tokenizer of {args.tokenizer}"
    else:
        tok_dir = work / "tokenizer"
        if not (tok_dir / "tokenizer_config.json").is_file():
            _log("training a sentencepiece tokenizer on synthetic captions ...")
            from tests.t5_fixtures import make_tokenizer

            make_tokenizer(tok_dir, _caption_corpus(), vocab_size=8000, extra_ids=100)  # t5-base's 100 sentinels
        tok_note = ("a LOCALLY TRAINED sentencepiece unigram tokenizer (t5-base's is not available offline; "
                    "same transformers T5 tokenizer class, smaller vocabulary)")
    cfg = load_config(args.config, list(overrides) + ["--config.data.source=tfds",
                                                              f"--config.data.dir={data_dir}"])
    tokenizer = T5Tokenizer(tok_dir, max_length=cfg.conditioner.max_text_len, padding="max_length")
    data = token_batches(cfg, tokenizer)
    threads = args.threads or cfg.data.num_threads
    d, g = cfg.data, cfg.train.global_batch_size
    print(f"pipeline: config={cfg.name} dataset={data_dir} ({len(data.source)} examples, {data.num_train} train) "
          f"global_batch={g} per_host={g // data.process_count} T={d.num_frames} threads={threads} "
          f"workers={args.workers} "
          f"prefetch={args.prefetch or 'default'} cores={os.cpu_count()} merge_text_p={d.merge_text_p} drop_desc_p={d.drop_desc_p} "
          f"drop_other_p={d.drop_other_p} word_dropout={cfg.conditioner.word_dropout} "
          f"max_text_len={cfg.conditioner.max_text_len}")
    print(f"tokenizer: {tok_note}, vocab {len(tokenizer._tok)}")

    _log(f"timing the grain iterator: {args.warmup} warm-up + {args.batches} batches of {g} ...")
    it_rate, first_s, b = time_iterator(data, cfg, batches=args.batches, warmup=args.warmup, threads=threads,
                                        prefetch=args.prefetch, workers=args.workers)
    lens = b["text_mask"].sum(-1)
    print(f"iterator: {it_rate:,.0f} examples/s per host ({it_rate / g:.2f} batches/s; first {args.warmup} "
          f"batches {first_s:.1f}s); caption tokens mean {lens.mean():.1f} max {lens.max()}, "
          f"empty {(lens == 0).mean():.0%}")
    _log(f"timing random access batch(step): {args.random_access_batches} batches ...")
    ra_rate = time_random_access(data, cfg, batches=args.random_access_batches)
    print(f"random access batch(step): {ra_rate:,.0f} examples/s per host (one thread)")

    summary = (f"SUMMARY data: {cfg.name} pipeline {it_rate:,.0f} examples/s/host (threads={threads}, "
               f"workers={args.workers}, "
               f"{os.cpu_count()} cores), batch(step) {ra_rate:,.0f} examples/s")
    if not args.no_step:
        step_rate, how = measure_step(args, overrides, cfg)
        ratio = it_rate / step_rate
        print(f"train step: consumes {step_rate:,.3f} examples/s per host ({how})")
        print(f"ratio pipeline / step = {ratio:,.1f}x (target >= {TARGET_RATIO:g}x: "
              f"{'met' if ratio >= TARGET_RATIO else 'NOT met'})")
        summary += f"; step consumes {step_rate:,.3f} examples/s/host; ratio {ratio:,.1f}x (target {TARGET_RATIO:g}x)"
    if args.project_device:
        from magnet_jax.train.flops import PEAK_TFLOPS, train_step_flops

        per_example = train_step_flops(cfg, 1, cfg.conditioner.max_text_len)
        _host_projection(it_rate, per_example, args.project_mfu, PEAK_TFLOPS)
        rate = PEAK_TFLOPS[args.project_device] * 1e12 * args.project_mfu / per_example * args.project_devices
        print(f"projection (analytic, not measured): {args.project_devices} x {args.project_device} at "
              f"{100 * args.project_mfu:.0f}% MFU ({per_example / 1e12:.2f} model TFLOP per example, LM only) consume "
              f"{rate:,.0f} examples/s per host; ratio pipeline / that = {it_rate / rate:.2f}x")
        summary += f"; projected {args.project_devices}x{args.project_device}@{100 * args.project_mfu:.0f}%MFU " \
                   f"ratio {it_rate / rate:.2f}x"
    print(summary)
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
