"""Train-step benchmark: step time, tokens/s, model FLOPs utilisation, per-device memory.

    python bench/train_step.py --config configs/tiny.py [--mesh data=2,fsdp=4] [--fake-devices 8]
        [--steps 10] [--config.train.global_batch_size=16 ...]

On CPU there is no spec-sheet peak, so MFU is reported against a measured fp32 matmul peak
of this machine (labelled as such).
"""
from __future__ import annotations

import argparse
import os
import sys
import time


def _parse():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/tiny.py")
    p.add_argument("--mesh", default="", help="e.g. data=2,fsdp=4,tensor=1 (default: the config's mesh)")
    p.add_argument("--fake-devices", type=int, default=0, help="force N host CPU devices (sharding on CPU)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--compile-only", action="store_true", help="build the sharded state and compile; no steps")
    p.add_argument("--peak-tflops", type=float, default=0.0, help="override the per-device peak")
    from magnet_jax.config_io import parse_args_and_overrides

    args, overrides = parse_args_and_overrides(p, "--config.train.global_batch_size=8")
    return args, overrides


def _cpu_matmul_peak_tflops(n=1024, reps=5):
    import jax
    import jax.numpy as jnp

    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    t0 = time.perf_counter()
    for _ in range(reps):
        f(a).block_until_ready()
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12


def measure_train_step(cfg, *, steps: int = 10, mesh: str = "", compile_only: bool = False,
                       peak_tflops_override: float = 0.0):
    """Compiles `cfg`'s train step on its mesh (`mesh`, e.g. "data=2,fsdp=4", overrides the config's) and
    times `steps` steps after one warm-up step. Returns a dict of the measurements (step_s is None when
    `compile_only`)."""
    import dataclasses

    import jax
    import numpy as np

    from magnet_jax.data.host_batches import to_global
    from magnet_jax.parallel.logical import axis_rules
    from magnet_jax.parallel.mesh import make_mesh
    from magnet_jax.train.flops import peak_tflops, train_step_flops
    from magnet_jax.train.optimizer import make_optimizer
    from magnet_jax.train.state import build_train_state
    from magnet_jax.train.setup import compile_train_step, make_data_source

    if mesh:
        sizes = dict(kv.split("=") for kv in mesh.split(","))
        cfg = dataclasses.replace(cfg, mesh=dataclasses.replace(cfg.mesh, **{k: int(v) for k, v in sizes.items()}))
    sizes = (cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
    devices = jax.devices()[:int(np.prod(sizes))] if min(sizes) > 0 else None  # a sub-mesh is fine here
    mesh, rules = make_mesh(cfg.mesh, devices), cfg.mesh.rules
    g = cfg.train.global_batch_size
    data = make_data_source(cfg)
    tx, schedule = make_optimizer(cfg.optim, max(cfg.train.num_steps, cfg.optim.warmup_steps + 1))
    with jax.set_mesh(mesh), axis_rules(rules):
        graphdef, state, shardings = build_train_state(cfg, tx, mesh, rules)
        batches = [to_global(data.batch(i, g, jax.process_index(), jax.process_count()), mesh, rules, g)
                   for i in range(2)]
        step = compile_train_step(cfg, graphdef, tx, schedule, shardings, batches[0], mesh, rules)
        key = jax.random.key(0)
        t0 = time.perf_counter()
        compiled = step.lower(state, batches[0], key).compile()
        compile_s = time.perf_counter() - t0
        mem = compiled.memory_analysis()
        # parameters + optimizer state (+ EMA) held by one device
        state_mb = sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(state)) / 2**20
        out = dict(cfg=cfg, mesh_shape=dict(mesh.shape), devices=mesh.size, device_kind=jax.devices()[0].device_kind,
                   global_batch=g, compile_s=compile_s, state_mb=state_mb,
                   arg_mb=getattr(mem, "argument_size_in_bytes", 0) / 2**20,
                   temp_mb=getattr(mem, "temp_size_in_bytes", 0) / 2**20, step_s=None)
        if compile_only:
            return out
        state, m = compiled(state, batches[0], key)  # warm-up
        jax.block_until_ready(m)
        t0 = time.perf_counter()
        for i in range(steps):
            state, m = compiled(state, batches[i % 2], jax.random.fold_in(key, i))
        jax.block_until_ready((state, m))
        dt = (time.perf_counter() - t0) / steps
    flops = train_step_flops(cfg, g, cfg.conditioner.max_text_len)
    peak = peak_tflops_override or peak_tflops(out["device_kind"])
    if peak is not None:
        total_peak, peak_label = peak * mesh.size, f"{peak:.0f} TFLOP/s/device spec"
    else:  # CPU (fake devices share the same cores): the whole host's measured matmul rate
        total_peak = _cpu_matmul_peak_tflops()
        peak_label = f"host fp32 matmul measured {total_peak:.2f} TFLOP/s"
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    out.update(step_s=dt, flops=flops, mfu=flops / dt / (total_peak * 1e12), peak_label=peak_label,
               n_params=n_params, state_mb=sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(state)) / 2**20)
    return out


def main():
    args, overrides = _parse()
    if args.fake_devices:
        os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.fake_devices}"
    from magnet_jax.config_io import load_config

    r = measure_train_step(load_config(args.config, overrides), steps=args.steps, mesh=args.mesh,
                           compile_only=args.compile_only, peak_tflops_override=args.peak_tflops)
    cfg, g, dt = r["cfg"], r["global_batch"], r["step_s"]
    if args.compile_only:
        print(f"train_step config={cfg.name} mesh={r['mesh_shape']} compile={r['compile_s']:.1f}s per-device: "
              f"params+opt state={r['state_mb']:.1f}MiB, compiled arguments="
              f"{r['arg_mb']:.1f}MiB, temp={r['temp_mb']:.1f}MiB")
        return
    tokens = g * cfg.data.num_frames
    print(f"train_step config={cfg.name} mesh={r['mesh_shape']} devices={r['devices']} ({r['device_kind']}) "
          f"params={r['n_params']/1e6:.2f}M batch={g} T={cfg.data.num_frames} compile={r['compile_s']:.1f}s "
          f"step={dt*1e3:.1f}ms frames/s={tokens/dt:,.0f} tokens/s={tokens*cfg.lm.n_q/dt:,.0f} "
          f"model_TFLOP/step={r['flops']/1e12:.3f} MFU={100*r['mfu']:.1f}% ({r['peak_label']}) per-device: "
          f"params+opt state={r['state_mb']:.2f}MiB, compiled arguments={r['arg_mb']:.2f}MiB, "
          f"temp={r['temp_mb']:.1f}MiB")


if __name__ == "__main__":
    sys.exit(main())
