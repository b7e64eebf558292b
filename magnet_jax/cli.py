"""`magnet-jax` command line.

    magnet-jax train --config configs/quickstart.py [--config.train.lr=1e-4 ...]
    magnet-jax generate "80s disco with a funky bass" --model facebook/magnet-small-10secs --out disco.wav
    magnet-jax convert facebook/magnet-small-10secs
    magnet-jax tokenize --source songs.jsonl --codec facebook/encodec_32khz --out data/ --name songs
    magnet-jax eval --model runs/quickstart
    magnet-jax sweep --config configs/ablations/masking_schedules.py --workdir runs/ablation
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import List, Optional

import jax

from magnet_jax import cli_compile, cli_data, cli_eval, cli_generate
from magnet_jax.caches import enable_compilation_cache
from magnet_jax.config_io import load_config
from magnet_jax.parallel import distributed as d
from magnet_jax.train.samples import sample_synthetic_captions
from magnet_jax.train.trainer import train
from magnet_jax.train.verdict import synthetic_verdict


def _train(args, overrides: List[str]) -> int:
    cfg = load_config(args.config, overrides)
    result = train(cfg, progress=not args.no_progress)
    lead = jax.process_index() == 0  # in a multi-process job, only process 0 reports
    if result.preempted:
        if lead:
            print(f"pre-empted at step {result.step}: checkpoint saved in {result.workdir}; run the same command "
                  "again to resume")
        return 0
    if result.last_eval is not None and lead:
        fmt = lambda xs: "[" + ", ".join(f"{x:.3f}" for x in xs) + "]"
        ev, base = result.last_eval, result.baselines
        print(f"step {result.step}: held-out CE per stage {fmt(ev['ce_per_stage'])} nats; "
              f"without the caption {fmt(ev['ce_per_stage_null_text'])}; "
              f"unigram baseline {fmt(base.get('unigram_nats', []))}, noise floor {base.get('floor_nats', float('nan')):.3f}"
              + (f" (on these held-out batches {fmt(base['floor_heldout_nats'])})" if "floor_heldout_nats" in base else ""))
    verdict = None
    if cfg.data.kind == "synthetic":  # every process takes part (FSDP shards span them), process 0 prints
        verdict = sample_and_judge(cfg, result)
    if lead:
        print(f"run directory: {result.workdir}")
        if result.plot_path:
            print(f"loss curves: {result.plot_path}")
        if verdict is not None:
            print(verdict)
    if cfg.train.smoke_test and verdict is not None and not verdict.learned:
        return 1
    return 0


def sample_and_judge(cfg, result):
    """Generate from a few captions with the trained model (EMA weights when kept), score how
    well the samples follow the synthetic data's rules, and judge whether the run learned them
    (the verdict, or None without a held-out evaluation)."""
    captions = ["slow jazz with piano", "fast techno with synth and dark mood", "medium folk with guitar",
                "rapid metal with drums"]
    params = result.state.ema_params if result.state.ema_params is not None else result.state.params
    _, agreement = sample_synthetic_captions(cfg, result.graphdef, params, result.data, captions)
    chance = result.data.random_agreement(captions, cfg.data.num_frames)
    if jax.process_index() == 0:
        rates = ", ".join(f"{x:.2f}" for x in agreement)
        print(f"samples for {len(captions)} captions ({'+'.join(map(str, cfg.decode.decoding_steps))} decoding "
              f"steps): frames following the data's rules per stage [{rates}] (data itself: {1 - cfg.data.noise:.2f}, "
              f"random codes: {', '.join(f'{x:.3f}' for x in chance)})")
    ev, base = result.last_eval, result.baselines
    if ev is None:
        return None
    floor = base.get("floor_heldout_nats") or [base["floor_nats"]] * cfg.lm.n_q
    return synthetic_verdict(ev["ce_per_stage"], ev["ce_per_stage_null_text"], base["unigram_nats"], floor,
                             agreement, chance, cfg.data.noise)


def _skip_tpu_probe_without_chips() -> None:
    """With libtpu installed (the `tpu` extra, which `compile` uses) on a machine without TPU
    chips, JAX's TPU probe prints a screen of warnings at start-up: then only the CPU backend is
    used (unless JAX_PLATFORMS says otherwise, or a GPU plugin is installed)."""
    import importlib.util
    import os

    if os.environ.get("JAX_PLATFORMS") or importlib.util.find_spec("libtpu") is None:
        return
    if any(importlib.util.find_spec(m) for m in ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm7_plugin")):
        return
    try:  # no public API counts the chips without initialising the TPU backend (the probe this avoids)
        from jax._src import hardware_utils

        if hardware_utils.num_available_tpu_chips_and_device_id()[0]:
            return
    except Exception:  # a private helper: if it moved, keep JAX's own probe
        return
    jax.config.update("jax_platforms", "cpu")


def _enable_cache() -> None:
    """Compiled programs persist across runs (~/.cache/magnet_jax/xla, or $MAGNET_JAX_CACHE/xla)."""
    try:
        enable_compilation_cache()
    except OSError as e:  # e.g. a read-only home: run without the cache
        logging.getLogger(__name__).warning("no persistent compilation cache: %s", e)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="magnet-jax", description="MAGNeT in JAX: train and sample.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train a MAGNeT model from a config file",
                       description="Train from configs/NAME.py; override any key with --config.section.key=value.")
    p.add_argument("--config", required=True, help="python config file with get_config(), e.g. configs/quickstart.py")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_train)
    cli_generate.add_commands(sub)
    cli_data.add_commands(sub)
    cli_compile.add_commands(sub)
    cli_eval.add_commands(sub)
    for verb in sub.choices.values():
        _add_process_args(verb)
    return parser


def _add_process_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "multi-process job (a pod or cluster; auto-detected on TPU VMs and SLURM)",
        f"One process per host, all started with the same command. Also from ${d.ENV_COORDINATOR}, "
        f"${d.ENV_NUM_PROCESSES}, ${d.ENV_PROCESS_ID}; launch/local_cluster.sh simulates one on this machine.")
    g.add_argument("--coordinator", metavar="HOST:PORT", help="address of process 0's coordinator service")
    g.add_argument("--num-processes", type=int, metavar="N", help="number of processes in the job")
    g.add_argument("--process-id", type=int, metavar="I", help="this process's index, 0 to N-1")


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _configure_logging() -> None:
    """INFO to stderr in our format. Importing orbax (above) logs through absl, which calls
    logging.basicConfig() first: the root logger already has a plain stderr handler at WARNING, so a
    basicConfig here alone would do nothing and the run's log ("train step compiled ...") would vanish."""
    logging.basicConfig(format=LOG_FORMAT)
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for handler in root.handlers:
        if type(handler) is logging.StreamHandler and handler.stream is sys.stderr:  # not pytest's capture
            handler.setFormatter(logging.Formatter(LOG_FORMAT))


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _configure_logging()
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax's per-save INFO chatter
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)  # "Unable to initialize backend 'tpu'" on CPU
    # `--config.x.y=v` are config overrides, everything else goes to argparse.
    overrides = [a for a in argv if a.startswith("--config.")]
    rest = [a for a in argv if not a.startswith("--config.")]
    args = build_parser().parse_args(rest)
    _skip_tpu_probe_without_chips()
    _enable_cache()
    try:
        d.maybe_initialize(args.coordinator, args.num_processes, args.process_id)
        if jax.process_index() != 0:  # one log for the job: process 0's (others: warnings and errors)
            logging.getLogger().setLevel(logging.WARNING)
        return args.func(args, overrides)
    except (ValueError, OSError) as e:  # bad input or files: a message naming the fix, not a traceback
        print(f"magnet-jax: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
