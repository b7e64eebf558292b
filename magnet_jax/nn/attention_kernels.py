"""Fused attention kernels for MAGNeT's self-attention, chosen by `lm.attention_impl`:

- 'xla': the einsum formulation in nn/attention.py (the parity reference; every platform);
- 'cudnn': `jax.nn.dot_product_attention` with cuDNN's fused kernel on GPU (bfloat16/float16),
  its XLA implementation elsewhere (so the same code path runs, and is tested, on CPU);
- 'splash': the Pallas TPU splash-attention kernel (`jax.experimental.pallas.ops.tpu`), in
  Pallas' interpreter off TPU (tests check it against 'xla' on CPU, and compile it for TPU
  slices through `magnet-jax compile`).

Both kernels take the attention as a pattern (full, a local window, causal), not a [T, T]
array: `KernelMask` carries MAGNeT's (full at stage 0, |t_q - t_k| <= context at stages > 0;
a traced stage selects between the two with `lax.cond`). Cross-attention (a few text
positions) and any other mask stay on the einsum path.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
from typing import Any, Optional

import jax
import jax.numpy as jnp

from magnet_jax.parallel.logical import current_mesh, current_rules, logical_to_spec

_SPLASH_BLOCK = 128  # the kernel's tile: the sequence is padded to a multiple (padding keys masked)
# The platform programs are traced for: the default backend, or the target of an ahead-of-time
# compile (`magnet-jax compile` traces TPU programs on a CPU host).
_TARGET: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar("magnet_jax_kernel_target", default=None)


@contextlib.contextmanager
def target_platform(platform: str):
    """Trace the kernels for `platform` ('tpu', 'gpu', 'cpu') whatever this host's backend is."""
    token = _TARGET.set(platform)
    try:
        yield
    finally:
        _TARGET.reset(token)


def _platform() -> str:
    return _TARGET.get() or jax.default_backend()


@dataclasses.dataclass(frozen=True)
class KernelMask:
    """MAGNeT's self-attention pattern for a kernel. `stage`: an int, a traced scalar, or None
    (no stage: full attention); `context` -1: no window at any stage. `fallback` is the same
    attention as the einsum path takes it (a [T, T] array, a LocalWindow or None), used where
    only some queries are computed (the sampler's last layer)."""

    impl: str
    stage: Any
    context: int
    causal: bool
    fallback: Any


def kernel_attention(q, k, v, mask: KernelMask, dtype) -> jnp.ndarray:
    """q (already scaled), k, v [B, T, H, Dh] -> [B, T, H, Dh]."""
    run = _cudnn if mask.impl == "cudnn" else _splash

    def attend(window: Optional[int]):
        return run(q, k, v, causal=mask.causal, window=window, dtype=dtype)

    if mask.stage is None or mask.context < 0:
        return attend(None)
    if isinstance(mask.stage, int):
        return attend(mask.context if mask.stage > 0 else None)
    return jax.lax.cond(jnp.asarray(mask.stage) == 0, lambda: attend(None), lambda: attend(mask.context))


def _cudnn(q, k, v, *, causal: bool, window: Optional[int], dtype):
    on_gpu = _platform() == "gpu"
    if on_gpu and jnp.dtype(dtype) not in (jnp.bfloat16, jnp.float16):
        raise ValueError(f"lm.attention_impl='cudnn' runs in bfloat16 or float16, but lm.dtype={jnp.dtype(dtype).name}:"
                         " set --config.lm.dtype=bfloat16 (or --config.lm.attention_impl=xla)")
    window_size = None if window is None else (window, 0 if causal else window)
    return jax.nn.dot_product_attention(q.astype(dtype), k.astype(dtype), v.astype(dtype), scale=1.0,
                                        is_causal=causal, local_window_size=window_size,
                                        implementation="cudnn" if on_gpu else "xla")


def _splash_mask(length: int, heads: int, causal: bool, window: Optional[int]):
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    shape = (length, length)
    if window is not None:
        one = sm.LocalMask(shape, window_size=(window, 0 if causal else window), offset=0)
    elif causal:
        one = sm.CausalMask(shape)
    else:
        one = sm.FullMask(shape)
    return sm.MultiHeadMask([one] * heads)


def _splash_local(q, k, v, *, causal: bool, window: Optional[int], dtype):
    """One device's shard: q, k, v [B, T, H, Dh] with the whole sequence."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk

    b, t, h, _ = q.shape
    padded = -(-t // _SPLASH_BLOCK) * _SPLASH_BLOCK
    kernel = sk.make_splash_mha(_splash_mask(padded, h, causal, window), head_shards=1, q_seq_shards=1,
                                interpret=_platform() != "tpu")
    layout = lambda x: jnp.pad(x.astype(dtype), ((0, 0), (0, padded - t), (0, 0), (0, 0))).transpose(0, 2, 1, 3)
    segments = jnp.broadcast_to((jnp.arange(padded) >= t).astype(jnp.int32), (b, padded))  # padding: its own segment
    out = jax.vmap(lambda qi, ki, vi, si: kernel(qi, ki, vi, segment_ids=sk.SegmentIds(q=si, kv=si)))(
        layout(q), layout(k), layout(v), segments)
    return out.transpose(0, 2, 1, 3)[:, :t]


def _splash(q, k, v, *, causal: bool, window: Optional[int], dtype):
    """Under a mesh the kernel runs per shard (a Pallas call is not partitioned by XLA): batch and
    heads stay sharded as the activations are, the sequence whole on every device."""
    run = lambda a, b_, c: _splash_local(a, b_, c, causal=causal, window=window, dtype=dtype)
    mesh, rules = current_mesh(), current_rules()
    if mesh is None or rules is None or math.prod(mesh.shape.values()) == 1:
        return run(q, k, v)
    spec = logical_to_spec(("batch", None, "heads", None), q.shape, mesh, rules)
    return jax.shard_map(run, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec, check_vma=False)(q, k, v)
