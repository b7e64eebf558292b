"""`magnet-jax compile`: the real sharded train step (or the sampler) compiled ahead of time for a
TPU slice that is not there, from libtpu's description of its topology, with the compiled
program's memory per chip, the step's FLOPs and a roofline step time.

    pip install -e ".[tpu]"        # libtpu: compiles for TPUs on any machine, no TPU needed
    magnet-jax compile --config configs/magnet_small_10s.py --topology v5e:4x4 --config.mesh.fsdp=-1
    magnet-jax compile --config configs/magnet_small_10s.py --topology v5e:2x2 --sampler --batch 16

Nothing is allocated: the state, the batch and the frozen T5 are abstract arrays carrying their
shardings on a mesh of the topology's devices. The roofline is a lower bound on the step time:
max(model FLOPs / the slice's bf16 peak, the bytes each chip must stream / its HBM bandwidth),
from public spec sheets; XLA's own cost analysis counts a loop body once, so it is not used.
"""
from __future__ import annotations

import time
from typing import Any, Dict

import numpy as np

# Per chip (libtpu's device_kind): dense bf16 TFLOP/s, HBM GB/s, HBM bytes (public spec sheets).
TPU_CHIPS = {
    "TPU v4": (275.0, 1228.0, 32 * 2**30),
    "TPU v5 lite": (197.0, 819.0, 16 * 2**30),
    "TPU v5": (459.0, 2765.0, 95 * 2**30),
    "TPU v6 lite": (918.0, 1640.0, 32 * 2**30),
}
EXAMPLE_TOPOLOGIES = ("v4:2x2x1", "v4:2x2x2", "v5e:1x1", "v5e:2x2", "v5e:2x4", "v5e:4x4", "v5e:8x8", "v5e:16x16",
                      "v5p:2x2x1", "v5p:2x2x4", "v5p:4x4x4", "v6e:2x2", "v6e:4x4", "v6e:16x16")
# Known T5 encoders, so that no download is needed to compile (the frozen encoder is part of the step).
T5_SHAPES = {
    "t5-small": dict(d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8),
    "t5-base": dict(d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12),
    "t5-large": dict(d_model=1024, d_kv=64, d_ff=4096, num_layers=24, num_heads=16),
    "t5-3b": dict(d_model=1024, d_kv=128, d_ff=16384, num_layers=24, num_heads=32),
}


def tpu_devices(topology: str, num_slices: int = 1):
    """The devices of a TPU slice (or `num_slices` of them), described by libtpu on any machine."""
    import jax

    try:
        from jax.experimental import topologies

        options = {"num_slices": num_slices} if num_slices > 1 else {}
        if topology.startswith("v4"):  # two TensorCores per chip, run as one device ("megacore") as v4 jobs do
            options["chip_config_name"] = "megacore"
        desc = topologies.get_topology_desc(platform="tpu", topology_name=topology, **options)
    except Exception as e:  # no libtpu, or a name it does not know
        if "lockfile" in str(e):  # libtpu is loaded by another process of this machine
            raise ValueError(f"cannot describe the TPU topology {topology!r}: another process on this machine has "
                             "libtpu loaded (its lock file /tmp/libtpu_lockfile). On a machine without TPUs, "
                             "compiling processes can share it: set ALLOW_MULTIPLE_LIBTPU_LOAD=1") from None
        raise ValueError(f"cannot describe the TPU topology {topology!r} ({type(e).__name__}: {str(e)[:200]}). "
                         f"Names look like {', '.join(EXAMPLE_TOPOLOGIES)} (chip type: v4, v5e, v5p, v6e; then the "
                         f"chips per dimension). libtpu is needed: pip install -e '.[tpu]' (jax[tpu]=="
                         f"{jax.__version__})") from None
    return list(desc.devices)


def _chip(devices):
    kind = devices[0].device_kind
    if kind not in TPU_CHIPS:
        raise ValueError(f"no spec-sheet numbers for {kind!r}; known chips: {sorted(TPU_CHIPS)}")
    return kind, TPU_CHIPS[kind]


def abstract_t5(cfg, dtype):
    """(T5Config, abstract T5Encoder) for `conditioner.t5_name`: its config.json when the folder is
    on this machine, else the known shape of that name."""
    import json
    import os

    from flax import nnx

    from magnet_jax.text.t5 import T5Config, T5Encoder

    name = cfg.conditioner.t5_name
    folder = os.environ.get("MAGNET_JAX_T5_DIR") or os.path.expanduser(name)
    if os.path.isfile(os.path.join(folder, "config.json")):
        with open(os.path.join(folder, "config.json")) as f:
            t5_cfg = T5Config.from_hf_dict(json.load(f))
    else:
        short = name.split("/")[-1]
        if short not in T5_SHAPES:
            raise ValueError(f"conditioner.t5_name={name!r}: not a local folder with a config.json and not one of "
                             f"{sorted(T5_SHAPES)}; point it (or $MAGNET_JAX_T5_DIR) at the T5 folder")
        t5_cfg = T5Config(**T5_SHAPES[short])
    return t5_cfg, nnx.eval_shape(lambda: T5Encoder(t5_cfg, dtype=dtype, rngs=nnx.Rngs(0)))


def _abstract(tree, sharding_of):
    import jax

    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding_of(x)), tree)


def _compile(lowered):
    """(compile seconds, memory per device) of a lowered program. When the TPU compiler refuses
    it for lack of HBM, the memory it asked for (from its message) and `oom` set."""
    import re

    t0 = time.perf_counter()
    try:
        m = lowered.compile().memory_analysis()
    except Exception as e:  # jax.errors.JaxRuntimeError
        found = re.search(r"RESOURCE_EXHAUSTED.*?required for (.*?) \(([\d.]+)([KMGT])\)", str(e))
        if not found:
            raise
        scale = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}[found.group(3)]
        need = int(float(found.group(2)) * scale)
        return time.perf_counter() - t0, dict(per_device_bytes=need, oom=f"the compiler needs {need / 2**30:.2f} GiB "
                                                                          f"for {found.group(1)}")
    out = dict(argument_bytes=int(m.argument_size_in_bytes), output_bytes=int(m.output_size_in_bytes),
               # Pallas TPU kernels in the program (lm.attention_impl=splash): Mosaic custom calls.
               pallas_kernels=lowered.as_text().count("tpu_custom_call"),
               temp_bytes=int(m.temp_size_in_bytes), alias_bytes=int(m.alias_size_in_bytes),
               # host memory the program keeps (remat_policy=offload_dots_with_no_batch_dims)
               host_temp_bytes=int(getattr(m, "host_temp_size_in_bytes", 0) or 0))
    out["per_device_bytes"] = out["argument_bytes"] + out["output_bytes"] + out["temp_bytes"] - out["alias_bytes"]
    return time.perf_counter() - t0, out


def compile_train_step_for(cfg, topology: str, num_slices: int = 1) -> Dict[str, Any]:
    """The train step of `cfg` on its mesh over the slice's devices, compiled; the report."""
    import jax
    import jax.numpy as jnp
    from flax import nnx
    from jax.sharding import NamedSharding, PartitionSpec

    from magnet_jax.data.host_batches import check_batch_sizes
    from magnet_jax.nn.attention_kernels import target_platform
    from magnet_jax.parallel.logical import axis_rules
    from magnet_jax.parallel.mesh import data_sharding, make_mesh, tree_shardings
    from magnet_jax.train.flops import train_step_flops
    from magnet_jax.train.optimizer import make_optimizer
    from magnet_jax.train.state import abstract_train_state, model_graphdef
    from magnet_jax.train.setup import compile_train_step, t5_encoder_fn

    devices = tpu_devices(topology, num_slices)
    kind, (peak, bandwidth, hbm) = _chip(devices)
    mesh, rules = make_mesh(cfg.mesh, devices), cfg.mesh.rules
    g, t, k, s = cfg.train.global_batch_size, cfg.data.num_frames, cfg.lm.n_q, cfg.conditioner.max_text_len
    tx, schedule = make_optimizer(cfg.optim, cfg.train.num_steps)
    t5 = None
    if cfg.conditioner.encoder == "t5":  # abstract outside the mesh (its axis names are logical ones)
        t5_cfg, t5 = abstract_t5(cfg, jnp.dtype(cfg.lm.dtype))
        t5_cfg.check_feeds(cfg.conditioner.output_dim)
    with jax.set_mesh(mesh), axis_rules(rules), target_platform("tpu"):
        per_device = check_batch_sizes(cfg, mesh, rules)
        state, shardings = abstract_train_state(cfg, tx, mesh, rules)
        text_mask = jnp.int32 if cfg.conditioner.encoder == "t5" else jnp.bool_
        shapes = {"codes": ((g, k, t), jnp.int32), "text_ids": ((g, s), jnp.int32), "text_mask": ((g, s), text_mask),
                  "padding_mask": ((g, t), jnp.bool_)}
        batch = {name: jax.ShapeDtypeStruct(shape, dtype, sharding=data_sharding(mesh, rules, len(shape)))
                 for name, (shape, dtype) in shapes.items()}
        replicated = NamedSharding(mesh, PartitionSpec())
        key = _abstract(jax.eval_shape(lambda: jax.random.key(0)), lambda _: replicated)
        text_encoder, frozen, t5_shardings = None, (), None
        if t5 is not None:
            t5_graph, t5_params = nnx.split(t5)
            t5_shardings = tree_shardings(t5_params, mesh, rules)  # placed as the trainer places it
            frozen = (jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), t5_params,
                                   t5_shardings),)
            text_encoder = t5_encoder_fn(t5_graph)
        step = compile_train_step(cfg, model_graphdef(cfg), tx, schedule, shardings, batch, mesh, rules, text_encoder,
                                  t5_shardings)
        compile_s, memory = _compile(step.lower(state, batch, key, *frozen))
    flops = train_step_flops(cfg, g, s)
    n = len(devices)
    # Streamed per step at least: the sharded state read and written, the frozen T5 read once.
    state_bytes = sum(int(np.prod(x.sharding.shard_shape(x.shape))) * x.dtype.itemsize for x in jax.tree.leaves(state))
    stream = 2 * state_bytes + sum(int(np.prod(x.sharding.shard_shape(x.shape))) * x.dtype.itemsize
                                    for x in jax.tree.leaves(frozen))
    roofline = max(flops / (n * peak * 1e12), stream / (bandwidth * 1e9))
    return dict(kind="train_step", config=cfg.name, topology=topology, num_slices=num_slices, chip=kind, devices=n,
                mesh=dict(mesh.shape), global_batch=g, per_device_batch=per_device,
                remat=cfg.lm.remat_policy if cfg.lm.remat else "off", attention=cfg.lm.attention_impl, **memory,
                state_bytes_per_device=state_bytes,
                hbm_bytes_per_device=hbm, fits=_fits(memory, hbm), flops_per_step=flops,
                tokens_per_step=g * t * k, roofline_step_s=roofline,
                roofline_mfu_bound=flops / (n * peak * 1e12) / roofline, compile_s=compile_s)


def _fits(memory, hbm: int) -> bool:
    return "oom" not in memory and memory["per_device_bytes"] <= hbm


def compile_sampler_for(cfg, topology: str, batch: int = 1, cond_len: int = 32) -> Dict[str, Any]:
    """The whole sampling program (every stage, CFG, top-p) compiled for one chip of the slice."""
    import jax
    import jax.numpy as jnp
    from flax import nnx
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from magnet_jax.decode.cost import decode_forward_flops
    from magnet_jax.decode.sampler import MagnetSampler, output_length
    from magnet_jax.decode.settings import DecodeKnobs, SamplerSettings
    from magnet_jax.models.magnet_lm import MagnetLM
    from magnet_jax.nn.attention_kernels import target_platform

    chip = tpu_devices(topology)[0]
    kind, (peak, bandwidth, hbm) = _chip([chip])
    c = cfg.lm
    on_chip = NamedSharding(Mesh(np.array([chip]), ("data",)), PartitionSpec())
    settings = SamplerSettings.from_config(cfg.decode, c.span_len)
    length = cfg.data.num_frames
    t_out = output_length(settings, length)
    graphdef, params = nnx.split(nnx.eval_shape(lambda: MagnetLM(c, rngs=nnx.Rngs(0))), nnx.Param)
    sampler = MagnetSampler(graphdef, _abstract(params, lambda _: on_chip))
    knobs = _abstract(DecodeKnobs.create(), lambda _: on_chip)
    key = _abstract(jax.eval_shape(lambda: jax.random.key(0)), lambda _: on_chip)
    cond = jax.ShapeDtypeStruct((batch, cond_len, c.dim), jnp.float32, sharding=on_chip)
    mask = jax.ShapeDtypeStruct((batch, cond_len), jnp.bool_, sharding=on_chip)
    with target_platform("tpu"):
        compile_s, memory = _compile(sampler.lower(cond, mask, key, settings, knobs, length=length))
    weight_bytes = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params)) * jnp.dtype(c.dtype).itemsize
    flops = [decode_forward_flops(c, batch, t_out, cond_len, stage) for stage in range(c.n_q)]
    roofline = sum(n * max(f / (peak * 1e12), weight_bytes / (bandwidth * 1e9))
                   for n, f in zip(settings.decoding_steps, flops))
    return dict(kind="sampler", config=cfg.name, topology=topology, chip=kind, devices=1, batch=batch,
                attention=c.attention_impl,
                frames=t_out, decoding_steps=list(settings.decoding_steps), **memory, hbm_bytes_per_device=hbm,
                fits=_fits(memory, hbm),
                flops_per_step=float(sum(n * f for n, f in zip(settings.decoding_steps, flops))),
                tokens_per_step=batch * t_out * c.n_q, roofline_step_s=roofline, compile_s=compile_s)


def advice(report: Dict[str, Any]) -> str:
    """What to change when a program does not fit its chips."""
    gib = lambda b: f"{b / 2**30:.1f} GiB"
    need, have = gib(report["per_device_bytes"]), gib(report["hbm_bytes_per_device"])
    if report["kind"] == "sampler":
        return (f"the sampler needs {need} per chip, the chip has {have}: lower --batch, or use a chip with more "
                "HBM (v5p)")
    return (f"the train step needs {need} per chip, the chip has {have}: shard parameters and optimizer state "
            "(--config.mesh.fsdp=-1), recompute activations (--config.lm.remat=True; --config.lm.remat_policy="
            "nothing_saveable keeps the least), lower the per-chip batch "
            "(--config.train.global_batch_size), or use a larger slice")

