"""The train state pytree, and building it sharded without a host copy."""
from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
from flax import nnx, struct

from magnet_jax.config import Config
from magnet_jax.models.magnet_model import MagnetModel
from magnet_jax.parallel.mesh import tree_shardings


@struct.dataclass
class TrainState:
    step: jnp.ndarray
    params: Any  # nnx.State of Params (logical axes in their metadata)
    opt_state: Any
    ema_params: Optional[Any] = None


def model_graphdef(cfg: Config) -> nnx.GraphDef:
    """The model's static structure, from an abstract build (no arrays allocated)."""
    holder = {}

    def build():
        graphdef, params = nnx.split(MagnetModel(cfg, rngs=nnx.Rngs(0)), nnx.Param)
        holder["graphdef"] = graphdef
        return params

    jax.eval_shape(build)
    return holder["graphdef"]


def init_params(cfg: Config, seed: int):
    model = MagnetModel(cfg, rngs=nnx.Rngs(seed))
    _, params, rest = nnx.split(model, nnx.Param, ...)
    if jax.tree.leaves(rest):
        raise RuntimeError("the model holds non-parameter state; the train state only carries Params")
    return params


def _init_fn(cfg: Config, tx, seed: int):
    ema = cfg.optim.ema_decay > 0

    def init():
        params = init_params(cfg, seed)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                          ema_params=params if ema else None)

    return init


def abstract_train_state(cfg: Config, tx, mesh, rules, seed: Optional[int] = None):
    """(abstract state with shardings attached, the shardings): a restore target, built
    without allocating anything."""
    init = _init_fn(cfg, tx, cfg.train.seed if seed is None else seed)
    abstract = jax.eval_shape(init)
    shardings = tree_shardings(abstract, mesh, rules)
    with_shardings = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    return with_shardings, shardings


def build_train_state(cfg: Config, tx, mesh, rules, seed: Optional[int] = None):
    """Returns (graphdef, state sharded on `mesh`, state shardings).

    The state is first built abstractly (`jax.eval_shape`), its shardings derived from the
    logical axes, then materialised by a jitted init with those out_shardings: no device or
    host ever holds the whole unsharded state.
    """
    seed = cfg.train.seed if seed is None else seed
    _, shardings = abstract_train_state(cfg, tx, mesh, rules, seed)
    state = jax.jit(_init_fn(cfg, tx, seed), out_shardings=shardings)()
    return model_graphdef(cfg), state, shardings
