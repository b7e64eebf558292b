"""The TPU table of docs/scaling.md: `magnet-jax compile` of released configs on TPU topologies, one
process per compile (libtpu describes the slices; no TPU needed), as markdown rows.

    python bench/compile_table.py [--configs magnet_small_10s,magnet_medium_30s]
        [--topologies v5e:4x4,v5p:2x2x4,v4:2x2x4] [--smallest v5e:2x2,v5e:2x4,v5e:4x4,v5e:4x8,v5e:8x8]
        [--config.k=v ...]

Each config is compiled at its own (paper) batch size with FSDP over the whole slice and
remat (the setting that fits); `--smallest` lists slices in increasing size, the first that
fits is reported per config. Every row is the compile's JSON report.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASED = ("magnet_small_10s", "magnet_small_30s", "magnet_medium_10s", "magnet_medium_30s", "audio_magnet_small",
            "audio_magnet_medium")
SETTING = ("--config.mesh.data=1", "--config.mesh.fsdp=-1", "--config.lm.remat=True")


def compile_report(config: str, topology: str, overrides) -> dict:
    """One `magnet-jax compile` in its own process: its JSON report (last line)."""
    cmd = [sys.executable, "-m", "magnet_jax.cli", "compile", "--config", os.path.join(REPO, "configs", config + ".py"),
           "--topology", topology, *SETTING, *overrides]
    # Several compiles may run at once on this machine; libtpu otherwise locks itself to one process.
    env = dict(os.environ, ALLOW_MULTIPLE_LIBTPU_LOAD="1", JAX_PLATFORMS="cpu")
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    if done.returncode not in (0, 3) or not lines:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1])


def row(config: str, r: dict) -> str:
    gib = r["per_device_bytes"] / 2**30
    hbm = r["hbm_bytes_per_device"] / 2**30
    need = f"{gib:.2f} GiB" if r["fits"] else f"{gib:.1f} GiB needed ({hbm:.0f} GiB HBM)"
    return (f"| {config} | {r['topology']} ({r['devices']} chips) | {need} | {'yes' if r['fits'] else 'no'} | "
            f"{r['flops_per_step'] / 1e12:.1f} | {r['roofline_step_s']:.3f} s | {r['compile_s']:.0f} s |")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default=",".join(RELEASED))
    p.add_argument("--topologies", default="v5e:4x4,v5p:2x2x4,v4:2x2x4")
    p.add_argument("--smallest", default="v5e:2x2,v5e:2x4,v5e:4x4,v5e:4x8,v5e:8x8",
                   help="slices in increasing size: the first that fits is reported ('' to skip)")
    args, overrides = p.parse_known_args()
    bad = [o for o in overrides if not o.startswith("--config.")]
    if bad:
        p.error(f"unknown arguments {bad}")
    print(f"# {time.strftime('%Y-%m-%d %H:%M')}: {' '.join(sys.argv)}", flush=True)
    print("| config | topology | per chip | fits | TFLOP / step | roofline step | compile |", flush=True)
    print("| --- | --- | --- | --- | --- | --- | --- |", flush=True)
    reports = {}
    for config in args.configs.split(","):
        for topology in args.topologies.split(","):
            reports[config, topology] = r = compile_report(config, topology, overrides)
            print(row(config, r), flush=True)
    for config in args.configs.split(",") if args.smallest else ():
        found = "none of " + args.smallest
        for topology in args.smallest.split(","):
            r = reports.get((config, topology)) or compile_report(config, topology, overrides)
            if r["fits"]:
                found = f"{topology} ({r['devices']} chips, {r['per_device_bytes'] / 2**30:.2f} GiB per chip)"
                break
        print(f"smallest slice that fits {config}: {found}", flush=True)


if __name__ == "__main__":
    main()
