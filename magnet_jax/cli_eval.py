"""`magnet-jax eval` and `magnet-jax sweep`: score checkpoints the same way, compare ablations."""
from __future__ import annotations

import json
import os
from typing import List


def add_commands(sub) -> None:
    e = sub.add_parser(
        "eval", help="score a training run (config-independent held-out CE) or a model's samples",
        description="--model RUN_DIR (a train.workdir): the config-independent held-out evaluation of its newest "
                    "checkpoint (eval/token_metrics.py), the same numbers whatever config it was trained with; on "
                    "the synthetic data also the rule-following of its samples.")
    e.add_argument("--model", required=True, help="a training run folder (train.workdir)")
    e.add_argument("--out", default=None, help="folder for results.json and results.md (default: print only)")
    e.set_defaults(func=run_eval)
    s = sub.add_parser(
        "sweep", help="train and score every point of an ablation grid, write the comparison table",
        description="Trains each grid point of a sweep file (get_sweep() -> magnet_jax.eval.sweep.Sweep) to the same "
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
    import jax

    from magnet_jax.eval.token_metrics import format_summary, protocol_evaluator
    from magnet_jax.parallel.logical import axis_rules
    from magnet_jax.parallel.mesh import make_mesh
    from magnet_jax.train.restore import restore_run
    from magnet_jax.train.trainer import frozen_text_encoder, make_data_source

    if overrides:
        raise ValueError(f"eval takes no --config overrides (got {' '.join(overrides)}): the protocol is fixed")
    cfg, graphdef, state, step = restore_run(args.model)
    mesh = make_mesh(cfg.mesh)
    data = make_data_source(cfg)
    with jax.set_mesh(mesh), axis_rules(cfg.mesh.rules):
        text_encoder, frozen = frozen_text_encoder(cfg, mesh)
        frozen_args = () if text_encoder is None else (frozen,)
        summary = dict(protocol_evaluator(cfg, graphdef, data, mesh, text_encoder)(state.params, *frozen_args),
                       step=step, run=os.path.abspath(args.model))
    if jax.process_index() != 0:
        return 0
    text = f"{args.model} at step {step}\n{format_summary(summary)}"
    print(text)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "results.json"), "w") as f:
            json.dump(summary, f, indent=1)
        with open(os.path.join(args.out, "results.md"), "w") as f:
            f.write(text.replace("\n", "\n\n", 1) + "\n")
        print(f"written: {os.path.join(args.out, 'results.json')}, results.md")
    return 0


def run_sweep(args, overrides: List[str]) -> int:
    import jax

    from magnet_jax.eval.sweep import run_sweep as sweep

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
