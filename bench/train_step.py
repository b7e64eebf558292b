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
    args, overrides = p.parse_known_args()
    bad = [o for o in overrides if not o.startswith("--config.")]
    if bad:
        p.error(f"unknown arguments {bad}; config overrides look like --config.train.global_batch_size=8")
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


def main():
    args, overrides = _parse()
    if args.fake_devices:
        os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.fake_devices}"
    import dataclasses

    import jax
    import numpy as np

    from magnet_jax.config_io import load_config
    from magnet_jax.parallel.logical import axis_rules
    from magnet_jax.parallel.mesh import make_mesh
    from magnet_jax.train.flops import peak_tflops, train_step_flops
    from magnet_jax.train.optimizer import make_optimizer
    from magnet_jax.train.state import build_train_state
    from magnet_jax.train.trainer import compile_train_step, make_data_source, to_global

    cfg = load_config(args.config, overrides)
    if args.mesh:
        sizes = dict(kv.split("=") for kv in args.mesh.split(","))
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
        if args.compile_only:
            mem = compiled.memory_analysis()
            state_mb = sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(state)) / 2**20
            print(f"train_step config={cfg.name} mesh={dict(mesh.shape)} compile={compile_s:.1f}s per-device: "
                  f"params+opt state={state_mb:.1f}MiB, compiled arguments="
                  f"{mem.argument_size_in_bytes / 2**20:.1f}MiB, temp={mem.temp_size_in_bytes / 2**20:.1f}MiB")
            return
        state, m = compiled(state, batches[0], key)  # warm-up
        jax.block_until_ready(m)
        t0 = time.perf_counter()
        for i in range(args.steps):
            state, m = compiled(state, batches[i % 2], jax.random.fold_in(key, i))
        jax.block_until_ready((state, m))
        dt = (time.perf_counter() - t0) / args.steps
    n_dev = mesh.size
    tokens = g * cfg.data.num_frames
    flops = train_step_flops(cfg, g, cfg.conditioner.max_text_len)
    kind = jax.devices()[0].device_kind
    peak = args.peak_tflops or peak_tflops(kind)
    if peak is not None:
        total_peak, peak_label = peak * n_dev, f"{peak:.0f} TFLOP/s/device spec"
    else:  # CPU (fake devices share the same cores): the whole host's measured matmul rate
        total_peak = _cpu_matmul_peak_tflops()
        peak_label = f"host fp32 matmul measured {total_peak:.2f} TFLOP/s"
    mfu = flops / dt / (total_peak * 1e12)
    mem = compiled.memory_analysis()
    arg_mb = getattr(mem, "argument_size_in_bytes", 0) / 2**20
    temp_mb = getattr(mem, "temp_size_in_bytes", 0) / 2**20
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    # parameters + optimizer state (+ EMA) held by one device
    state_mb = sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(state)) / 2**20
    print(f"train_step config={cfg.name} mesh={dict(mesh.shape)} devices={n_dev} ({kind}) params={n_params/1e6:.2f}M "
          f"batch={g} T={cfg.data.num_frames} compile={compile_s:.1f}s step={dt*1e3:.1f}ms "
          f"frames/s={tokens/dt:,.0f} tokens/s={tokens*cfg.lm.n_q/dt:,.0f} model_TFLOP/step={flops/1e12:.3f} MFU={100*mfu:.1f}% "
          f"({peak_label}) per-device: params+opt state={state_mb:.2f}MiB, "
          f"compiled arguments={arg_mb:.2f}MiB, temp={temp_mb:.1f}MiB")


if __name__ == "__main__":
    sys.exit(main())
