"""Device mesh over the named axes (data, fsdp, tensor) and state shardings from logical axes."""
from __future__ import annotations

from typing import Optional, Sequence

import jax
import numpy as np
from flax import nnx
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from magnet_jax.config import MeshConfig
from magnet_jax.parallel.logical import logical_to_spec

MESH_AXES = ("data", "fsdp", "tensor")


def mesh_shape(cfg: MeshConfig, num_devices: int) -> tuple:
    sizes = [cfg.data, cfg.fsdp, cfg.tensor]
    if sizes.count(-1) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got data={cfg.data} fsdp={cfg.fsdp} tensor={cfg.tensor}")
    fixed = int(np.prod([s for s in sizes if s != -1]))
    if any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"mesh axis sizes must be positive or -1, got {sizes}")
    if -1 in sizes:
        if num_devices % fixed:
            raise ValueError(f"{num_devices} devices cannot be split with fixed mesh axes of product {fixed}")
        sizes[sizes.index(-1)] = num_devices // fixed
    if int(np.prod(sizes)) != num_devices:
        raise ValueError(
            f"mesh data={sizes[0]} x fsdp={sizes[1]} x tensor={sizes[2]} needs {int(np.prod(sizes))} devices, "
            f"have {num_devices}; set one axis to -1 to take the rest"
        )
    return tuple(sizes)


def make_mesh(cfg: MeshConfig, devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(cfg, len(devices))
    slices = len({getattr(d, "slice_index", 0) for d in devices})
    if slices == 1 and cfg.dcn_data * cfg.dcn_fsdp == 1:
        return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)
    # Several slices (or hosts): the slow network carries only the axes that span granules.
    by_host = not hasattr(devices[0], "slice_index")  # GPUs: hosts are the granules
    granules = len({d.process_index for d in devices}) if by_host else slices
    dcn = (cfg.dcn_data, cfg.dcn_fsdp, 1) if cfg.dcn_data * cfg.dcn_fsdp > 1 else (granules, 1, 1)
    what = "hosts" if by_host else "slices"
    if dcn[0] * dcn[1] != granules:
        raise ValueError(f"mesh.dcn_data={dcn[0]} x mesh.dcn_fsdp={dcn[1]} {what} asked for, the devices form "
                         f"{granules}: make the product {granules}")
    if any(size % d for size, d in zip(shape, dcn)):
        raise ValueError(f"mesh data={shape[0]} x fsdp={shape[1]} cannot span dcn_data={dcn[0]} x dcn_fsdp={dcn[1]} "
                         f"{what}: each axis must be a multiple of the {what} it spans")
    inner = tuple(size // d for size, d in zip(shape, dcn))
    grid = mesh_utils.create_hybrid_device_mesh(inner, dcn, devices, process_is_granule=by_host)
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def batch_axis_size(mesh: Mesh, rules) -> int:
    """How many shards the batch dimension is split into under `rules`."""
    spec = logical_to_spec(("batch",), None, mesh, rules)
    axes = spec[0] if len(spec) else None
    if axes is None:
        return 1
    axes = (axes,) if isinstance(axes, str) else axes
    return int(np.prod([mesh.shape[a] for a in axes]))


def tree_shardings(tree, mesh: Mesh, rules):
    """NamedShardings for a tree whose nnx.Variable leaves carry logical `out_sharding`
    metadata (params, and the optax states that mirror them); other leaves are replicated."""

    def one(x):
        if isinstance(x, nnx.Variable):
            axes = x.get_metadata().get("out_sharding")
            shape = x.get_value().shape
            spec = PartitionSpec() if axes is None else logical_to_spec(axes, shape, mesh, rules)
            return x.replace(NamedSharding(mesh, spec))
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree.map(one, tree, is_leaf=lambda x: isinstance(x, nnx.Variable))


def data_sharding(mesh: Mesh, rules, ndim: int) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(("batch",) + (None,) * (ndim - 1), None, mesh, rules))
