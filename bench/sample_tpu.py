"""The sampler compiled ahead of time for one TPU chip, with its roofline latency.

    pip install "jax[tpu]==$(python -c 'import jax; print(jax.__version__)')"   # libtpu; no TPU needed
    python bench/sample_tpu.py --config configs/magnet_small_10s.py --topology v5e:2x2 --batch 1,16

For each batch size: the whole sampling program (every stage, CFG, top-p; `MagnetSampler`'s
one jitted program) is lowered with abstract inputs placed on the first chip of the topology
and compiled by libtpu on this machine: compile time and the compiled program's memory
(arguments, temporaries) are printed. The latency is a roofline, not a measurement: each
decoding step needs the FLOPs of one guided forward (`magnet_jax.decode.cost`) and reads every
weight once in the compute dtype, so a step takes at least max(FLOPs / peak, weight bytes /
HBM bandwidth) on one chip; the clip takes the sum over its steps. XLA's own cost analysis is
not used for this: it counts a loop body once, not once per iteration.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Per chip: dense bf16 TFLOP/s and HBM GB/s (public spec sheets).
CHIPS = {"TPU v5 lite": (197.0, 819.0), "TPU v5": (459.0, 2765.0), "TPU v6 lite": (918.0, 1640.0),
         "TPU v4": (275.0, 1228.0)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/magnet_small_10s.py")
    p.add_argument("--topology", default="v5e:2x2", help="a TPU slice name, e.g. v5e:2x2, v5p:2x2x1")
    p.add_argument("--batch", default="1,16")
    p.add_argument("--duration", type=float, default=0.0, help="seconds (default: data.segment_duration)")
    p.add_argument("--decoding-steps", default="", help="per codebook (default: the config's)")
    p.add_argument("--cond-len", type=int, default=32)
    sys.path.insert(0, REPO)
    from magnet_jax.config_io import parse_args_and_overrides

    args, overrides = parse_args_and_overrides(p, "--config.lm.dtype=bfloat16")

    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx
    from jax.experimental import topologies
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from magnet_jax.config_io import load_config
    from magnet_jax.decode.cost import decode_forward_flops
    from magnet_jax.decode.sampler import MagnetSampler, output_length
    from magnet_jax.decode.settings import DecodeKnobs, SamplerSettings
    from magnet_jax.models.magnet_lm import MagnetLM

    cfg = load_config(args.config, overrides)
    c = cfg.lm
    steps = tuple(int(s) for s in args.decoding_steps.split(",")) if args.decoding_steps else cfg.decode.decoding_steps
    settings = SamplerSettings.from_config(cfg.decode, c.span_len, decoding_steps=steps)
    length = int(round((args.duration or cfg.data.segment_duration) * cfg.data.frame_rate))
    t_out = output_length(settings, length)

    try:
        topology = topologies.get_topology_desc(platform="tpu", topology_name=args.topology)
    except Exception as e:  # no libtpu, or a name it does not know
        sys.exit(f"cannot describe TPU topology {args.topology!r} ({type(e).__name__}: {e}); install libtpu with "
                 f"pip install 'jax[tpu]=={jax.__version__}'")
    chip = topology.devices[0]
    peak, bandwidth = CHIPS.get(chip.device_kind, (None, None))
    on_chip = NamedSharding(Mesh(np.array([chip]), ("data",)), PartitionSpec())
    abstract = lambda tree: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=on_chip), tree)

    lm = nnx.eval_shape(lambda: MagnetLM(c, rngs=nnx.Rngs(0)))
    graphdef, params = nnx.split(lm, nnx.Param)
    sampler = MagnetSampler(graphdef, abstract(params))
    weight_bytes = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params)) * jnp.dtype(c.dtype).itemsize
    knobs = abstract(DecodeKnobs.create())
    key = abstract(jax.eval_shape(lambda: jax.random.key(0)))
    print(f"{cfg.name} on one {chip.device_kind} chip of {args.topology}: dim {c.dim}, {c.num_layers} layers, "
          f"compute {c.dtype}, T={t_out}, steps {','.join(map(str, steps))}", flush=True)
    for b in (int(x) for x in args.batch.split(",")):
        cond = jax.ShapeDtypeStruct((b, args.cond_len, c.dim), jnp.float32, sharding=on_chip)
        mask = jax.ShapeDtypeStruct((b, args.cond_len), jnp.bool_, sharding=on_chip)
        t0 = time.perf_counter()
        compiled = sampler.lower(cond, mask, key, settings, knobs, length=length).compile()
        compile_s = time.perf_counter() - t0
        mem = compiled.memory_analysis()
        line = (f"B={b} compile_s={compile_s:.1f} argument_gb={mem.argument_size_in_bytes / 1e9:.2f} "
                f"temp_gb={mem.temp_size_in_bytes / 1e9:.2f}")
        if peak is not None:
            total = 0.0
            for stage, n in enumerate(steps):
                flops = decode_forward_flops(c, b, t_out, args.cond_len, stage)
                total += n * max(flops / (peak * 1e12), weight_bytes / (bandwidth * 1e9))
            line += f" roofline_latency_s={total:.3f} (peak {peak:g} TFLOP/s, HBM {bandwidth:g} GB/s)"
        print(line, flush=True)


if __name__ == "__main__":
    main()
