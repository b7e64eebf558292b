"""`magnet-jax compile`: ahead-of-time compilation for a TPU slice (see `magnet_jax.aot`). Prints a
summary, then as its last line one JSON object (the report); exits 3 when the program does not
fit the chips' memory, naming what helps."""
from __future__ import annotations

import json
import sys
from typing import List

from magnet_jax import aot
from magnet_jax.config_io import load_config


def add_commands(sub) -> None:
    c = sub.add_parser("compile", help="compile the train step (or sampler) for a TPU slice, no TPU needed",
                       description="Compile the sharded train step, or with --sampler the sampling program, for a "
                                   "TPU topology described by libtpu; report memory per chip, FLOPs and a roofline "
                                   "step time. Needs pip install -e '.[tpu]'.")
    c.add_argument("--config", required=True, help="python config file with get_config()")
    c.add_argument("--topology", required=True, help="a TPU slice, e.g. v5e:4x4, v5p:2x2x4, v4:2x2x2, v6e:4x4")
    c.add_argument("--num-slices", type=int, default=1, help="slices joined over the data-centre network")
    c.add_argument("--sampler", action="store_true", help="compile the sampler (one chip) instead of the train step")
    c.add_argument("--batch", type=int, default=1, help="with --sampler: clips generated at once")
    c.set_defaults(func=run_compile)


def run_compile(args, overrides: List[str]) -> int:
    if args.num_slices < 1 or args.batch < 1:
        raise ValueError("--num-slices and --batch must be >= 1")
    if args.sampler and args.num_slices != 1:
        raise ValueError("--sampler compiles for one chip: --num-slices does not apply")
    cfg = load_config(args.config, overrides)
    if args.sampler:
        report = aot.compile_sampler_for(cfg, args.topology, batch=args.batch)
    else:
        report = aot.compile_train_step_for(cfg, args.topology, args.num_slices)
    gib = lambda b: f"{b / 2**30:.2f} GiB"
    what = f"sampler, batch {args.batch}" if args.sampler else f"train step, mesh {report['mesh']}"
    parts = (f"arguments {gib(report['argument_bytes'])}, temporaries {gib(report['temp_bytes'])}"
             if "oom" not in report else report["oom"])
    print(f"{cfg.name} on {args.topology} ({report['devices']} x {report['chip']}), {what}: "
          f"{gib(report['per_device_bytes'])} of {gib(report['hbm_bytes_per_device'])} per chip ({parts}); "
          f"{report['flops_per_step'] / 1e12:.2f} TFLOP per step, roofline {report['roofline_step_s']:.3f} s; "
          f"compiled in {report['compile_s']:.1f} s")
    if not report["fits"]:
        print(f"magnet-jax: does not fit: {aot.advice(report)}", file=sys.stderr)
    print(json.dumps(report), flush=True)
    return 0 if report["fits"] else 3
