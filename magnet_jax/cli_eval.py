"""`magnet-jax eval` and `magnet-jax sweep`: score checkpoints the same way, compare ablations."""
from __future__ import annotations

import json
import os
from typing import List


def add_commands(sub) -> None:
    e = sub.add_parser(
        "eval", help="score a training run (config-independent held-out CE) or a model's samples (FAD, KL, CLAP)",
        description="--model RUN_DIR (a train.workdir): the config-independent held-out evaluation of its newest "
                    "checkpoint (eval/token_metrics.py), the same numbers whatever config it was trained with; on "
                    "the synthetic data also the rule-following of its samples. --model NAME_OR_DIR (a pretrained "
                    "model) with --captions FILE: generate one clip per caption, then FAD (VGGish), KL (PaSST) "
                    "against --reference-audio, and the CLAP score.")
    e.add_argument("--model", required=True, help="a training run folder (train.workdir), or a pretrained model")
    e.add_argument("--captions", default=None, help="csv or jsonl with columns ytid, caption (MusicCaps layout)")
    e.add_argument("--reference-audio", default=None, help="folder of reference clips named <ytid>.<ext>")
    e.add_argument("--out", default=None, help="folder for results.json, results.md (and the generated audio)")
    e.add_argument("--metrics", default=None,
                   help="comma-separated subset of fad,kl,clap (default: all; clap only without references)")
    e.add_argument("--vggish", default=None, help="torchvggish checkpoint (default: downloaded once)")
    e.add_argument("--passt", default=None, help="PaSST checkpoint, 20 s model (default: downloaded once)")
    e.add_argument("--clap", default=None, help="LAION CLAP music checkpoint (default: downloaded once)")
    e.add_argument("--clap-tokenizer", default="roberta-base", help="roberta-base tokenizer folder or hub name")
    e.add_argument("--duration", type=float, default=None, help="seconds per clip (default: the model's)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--batch-size", type=int, default=4, help="clips generated at once")
    from magnet_jax.cli_generate import _model_args, decoding_args

    _model_args(e, with_model=False)
    decoding_args(e)
    e.set_defaults(func=run_eval)
    s = sub.add_parser(
        "sweep", help="train and score every point of an ablation grid, write the comparison table",
        description="Trains each grid point of a sweep file (get_sweep() -> magnet_jax.train.sweep.Sweep) to the same "
                    "token budget, scores every checkpoint with the same protocol and decoding settings, and writes "
                    "WORKDIR/results.csv, results.md and results.png. Rerun to resume: finished points are skipped.")
    s.add_argument("--config", required=True, help="sweep file, e.g. configs/ablations/masking_schedules.py")
    s.add_argument("--workdir", required=True, help="the sweep's folder (one folder per point inside)")
    s.add_argument("--overwrite", action="store_true",
                   help="WORKDIR holds another grid's sweep: move it aside (to WORKDIR.replaced) and start again")
    s.add_argument("--concurrent", type=int, default=None,
                   help="points trained at once, each on 1/N of the devices (default: the sweep file's)")
    s.add_argument("--no-progress", action="store_true", help="no progress bars")
    s.set_defaults(func=run_sweep)


def run_eval(args, overrides: List[str]) -> int:
    if overrides:
        raise ValueError(f"eval takes no --config overrides (got {' '.join(overrides)}): the protocol is fixed")
    if os.path.isdir(os.path.join(args.model, "checkpoints")):
        if args.captions:
            raise ValueError(f"{args.model} is a training run: its evaluation is the held-out protocol; --captions "
                             "scores a pretrained model's samples")
        return _eval_run(args)
    if not args.captions:
        raise ValueError(f"{args.model} is not a training run folder (no checkpoints/): to score a pretrained "
                         "model's samples give --captions FILE (and --reference-audio DIR for FAD and KL)")
    return _eval_samples(args)


def _eval_run(args) -> int:
    import jax

    from magnet_jax.eval.token_metrics import format_summary, protocol_evaluator
    from magnet_jax.parallel.logical import axis_rules
    from magnet_jax.parallel.mesh import make_mesh
    from magnet_jax.train.restore import restore_run
    from magnet_jax.train.setup import frozen_text_encoder, make_data_source

    cfg, graphdef, state, step = restore_run(args.model)
    mesh = make_mesh(cfg.mesh)
    data = make_data_source(cfg)
    with jax.set_mesh(mesh), axis_rules(cfg.mesh.rules):
        text_encoder, frozen = frozen_text_encoder(cfg, mesh)
        frozen_args = () if text_encoder is None else (frozen,)
        summary = dict(protocol_evaluator(cfg, graphdef, data, mesh, text_encoder)(state.params, *frozen_args),
                       step=step, run=os.path.abspath(args.model))
        text = f"{args.model} at step {step}\n{format_summary(summary)}"
        if cfg.data.kind == "synthetic":
            summary["samples"], line = _synthetic_samples(cfg, graphdef, state, data)
            text += "\n" + line
    if jax.process_index() != 0:
        return 0
    print(text)
    if args.out:
        _write(args.out, summary, text)
    return 0


def _synthetic_samples(cfg, graphdef, state, data):
    """Samples of the sweep's captions with the run's decoding settings: rule-following per stage."""
    from magnet_jax.train.samples import sample_synthetic_captions
    from magnet_jax.train.sweep import SYNTHETIC_CAPTIONS

    params = state.ema_params if state.ema_params is not None else state.params
    _, agreement = sample_synthetic_captions(cfg, graphdef, params, data, SYNTHETIC_CAPTIONS)
    chance = data.random_agreement(list(SYNTHETIC_CAPTIONS), cfg.data.num_frames)
    rates = ", ".join(f"{a:.3f}" for a in agreement)
    return ({"agreement": [float(a) for a in agreement], "chance": [float(c) for c in chance]},
            f"samples following the data's rules per stage: [{rates}] (random codes: "
            f"{', '.join(f'{c:.3f}' for c in chance)})")


def _eval_samples(args) -> int:
    from magnet_jax.cli_generate import _check_decoding_args, _load, _overrides
    from magnet_jax.eval import sample_metrics as sm

    items = sm.read_captions(args.captions)
    if args.batch_size < 1:
        raise ValueError("--batch-size must be >= 1")
    if args.metrics:
        metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    else:
        metrics = list(sm.METRICS) if args.reference_audio else ["clap"]
    if not args.reference_audio and set(metrics) & {"fad", "kl"}:
        raise ValueError("FAD and KL compare with reference audio: give --reference-audio DIR, or --metrics clap")
    _check_decoding_args(args)  # bad flags fail before any model loads
    scorers = sm.load_scorers(metrics, vggish=args.vggish, passt=args.passt, clap=args.clap,
                              clap_tokenizer=args.clap_tokenizer, cache_dir=args.cache_dir, offline=args.offline)
    model = _load(args)
    out = args.out or "eval_samples"
    results = sm.evaluate_model(model, items, out, scorers=scorers, reference_dir=args.reference_audio,
                                duration=args.duration, seed=args.seed, batch_size=args.batch_size,
                                **_overrides(args))
    print(sm.format_results(results))
    print(f"written: {os.path.join(out, 'results.json')}, results.md, audio/")
    return 0


def _write(out: str, summary, text: str) -> None:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(summary, f, indent=1)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(text.replace("\n", "\n\n") + "\n")
    print(f"written: {os.path.join(out, 'results.json')}, results.md")


def run_sweep(args, overrides: List[str]) -> int:
    import jax

    from magnet_jax.train.sweep import run_sweep as sweep

    if overrides:
        raise ValueError(f"sweep takes its overrides from the sweep file (got {' '.join(overrides)})")
    results = sweep(args.config, args.workdir, overwrite=args.overwrite, progress=not args.no_progress,
                    concurrent=args.concurrent)
    if jax.process_index() == 0:
        with open(os.path.join(args.workdir, "results.md")) as f:
            print(f.read())
        print(f"{len(results)} points; table: {os.path.join(args.workdir, 'results.md')}, "
              f"rows: results.csv, plot: results.png")
    return 0
