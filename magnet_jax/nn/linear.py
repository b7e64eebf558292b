"""A dense layer over named axes: kernel `[in..., out...]`, contracted with einsum."""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

import jax.numpy as jnp
from flax import nnx


def param(rngs: nnx.Rngs, init: Callable, shape, axes: Sequence[Optional[str]], param_dtype) -> nnx.Param:
    """A parameter with logical axis names (sharding is applied by `magnet_jax.parallel`)."""
    return nnx.Param(init(rngs.params(), tuple(shape), param_dtype), out_sharding=tuple(axes), eager_sharding=False)


class Dense(nnx.Module):
    """y = x . W (+ b), contracting the trailing `len(in_shape)` dims of x.

    `in_shape`/`out_shape` are tuples so attention can keep `[embed, heads, kv]` kernels
    (shardable over heads) instead of flat matrices. `precision` is the contraction's matmul
    precision (None: JAX's default).
    """

    def __init__(
        self,
        in_shape: Tuple[int, ...],
        out_shape: Tuple[int, ...],
        *,
        in_axes: Tuple[Optional[str], ...],
        out_axes: Tuple[Optional[str], ...],
        use_bias: bool,
        kernel_init: Callable,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        precision=None,
        rngs: nnx.Rngs,
    ):
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)
        self.dtype, self.precision = dtype, precision
        self.kernel = param(rngs, kernel_init, self.in_shape + self.out_shape, in_axes + out_axes, param_dtype)
        self.bias = (
            param(rngs, lambda k, s, d: jnp.zeros(s, d), self.out_shape, out_axes, param_dtype) if use_bias else None
        )

    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        n_in, n_out = len(self.in_shape), len(self.out_shape)
        letters = "abcdefghijklmnop"
        batch = "".join(letters[: x.ndim - n_in])
        ins = "".join("qrst"[:n_in])
        outs = "".join("uvwx"[:n_out])
        y = jnp.einsum(f"{batch}{ins},{ins}{outs}->{batch}{outs}", x.astype(self.dtype),
                       self.kernel[...].astype(self.dtype), precision=self.precision)
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y
