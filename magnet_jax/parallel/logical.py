"""Logical axis names -> mesh axes.

Parameters carry logical names (`embed`, `mlp`, `heads`, ...) in their `out_sharding`
metadata and activations are constrained by logical names too; an ordered rule list
(from `MeshConfig.rules`) maps them onto the mesh axes (`data`, `fsdp`, `tensor`). Changing
DP / FSDP / TP is a config change, never a model change.

This module is a leaf: `nn/` uses `constrain`, `train/` and `decode/` use the spec helpers.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Optional, Sequence, Tuple

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

Rules = Tuple[Tuple[str, Tuple[str, ...]], ...]

_RULES: contextvars.ContextVar[Optional[Rules]] = contextvars.ContextVar("magnet_jax_axis_rules", default=None)


@contextlib.contextmanager
def axis_rules(rules: Rules):
    """Makes `rules` the active logical-axis rules for `constrain` (trace time)."""
    token = _RULES.set(tuple((name, tuple(axes)) for name, axes in rules))
    try:
        yield
    finally:
        _RULES.reset(token)


def logical_to_spec(
    logical_axes: Sequence[Optional[str]],
    shape: Optional[Sequence[int]],
    mesh: Mesh,
    rules: Rules,
) -> PartitionSpec:
    """Maps the logical axes of one array to a PartitionSpec.

    For each dimension the first rule with that logical name whose mesh axes are unused in
    this array (and, when `shape` is given, divide the dimension) wins; otherwise the
    dimension is replicated. Mesh axes of size 1 are dropped from the spec.
    """
    used: set[str] = set()
    spec = []
    for dim, name in enumerate(logical_axes):
        chosen = None
        for rule_name, mesh_axes in rules:
            if rule_name != name:
                continue
            mesh_axes = tuple(a for a in mesh_axes if a in mesh.shape and mesh.shape[a] > 1)
            if not mesh_axes:
                continue
            if any(a in used for a in mesh_axes):
                continue
            size = 1
            for a in mesh_axes:
                size *= mesh.shape[a]
            if shape is not None and shape[dim] % size:
                continue
            chosen = mesh_axes
            break
        if chosen is None:
            spec.append(None)
        else:
            used.update(chosen)
            spec.append(chosen[0] if len(chosen) == 1 else chosen)
    while spec and spec[-1] is None:
        spec.pop()
    return PartitionSpec(*spec)


def current_rules() -> Optional[Rules]:
    """The logical-axis rules of the enclosing `axis_rules` (None outside one)."""
    return _RULES.get()


def current_mesh():
    """The mesh being traced under (abstract), or None."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        return None
    return mesh


def constrain(x: jax.Array, logical_axes: Sequence[Optional[str]]) -> jax.Array:
    """`with_sharding_constraint` by logical names; a no-op outside a mesh or without rules."""
    rules = current_rules()
    mesh = current_mesh()
    if rules is None or mesh is None:
        return x
    spec = logical_to_spec(logical_axes, x.shape, mesh, rules)
    return jax.lax.with_sharding_constraint(x, spec)


def named_sharding(mesh: Mesh, logical_axes, shape, rules: Rules) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(logical_axes, shape, mesh, rules))
