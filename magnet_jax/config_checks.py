"""Value ranges of the config's numeric keys, checked when a Config is built.

A value outside its range is refused before anything runs, naming the key, the value and what
it must be: e.g. `train.global_batch_size=0` would otherwise train on empty batches at loss 0
and save the result, and `train.log_every=0` would fail with a ZeroDivisionError after the
train step has compiled.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, Tuple

_Rule = Tuple[Callable[[Any], bool], str]

_POSITIVE: _Rule = (lambda v: v > 0, "> 0")
_AT_LEAST_0: _Rule = (lambda v: v >= 0, ">= 0")
_PROBABILITY: _Rule = (lambda v: 0 <= v <= 1, "in [0, 1]")
_BELOW_1: _Rule = (lambda v: 0 <= v < 1, "in [0, 1)")
_MESH_AXIS: _Rule = (lambda v: v == -1 or v >= 1, ">= 1, or -1 for the remaining devices")

RULES: Dict[str, _Rule] = {
    "lm.n_q": _POSITIVE, "lm.card": _POSITIVE, "lm.dim": _POSITIVE, "lm.num_heads": _POSITIVE,
    "lm.num_layers": _POSITIVE, "lm.hidden_scale": _POSITIVE, "lm.norm_eps": _POSITIVE,
    "lm.subcodes_context": (lambda v: v >= -1, ">= 0, or -1 for unrestricted"), "lm.span_len": _POSITIVE,
    "lm.max_period": _POSITIVE, "lm.positional_scale": _AT_LEAST_0, "lm.scan_unroll": _POSITIVE,
    "conditioner.vocab_size": _POSITIVE, "conditioner.max_text_len": _POSITIVE,
    "conditioner.output_dim": _POSITIVE, "conditioner.cfg_dropout": _PROBABILITY,
    "conditioner.word_dropout": _PROBABILITY,
    "decode.temperature": _AT_LEAST_0, "decode.top_k": _AT_LEAST_0, "decode.top_p": _PROBABILITY,
    "decode.query_buckets": _POSITIVE, "decode.hybrid_prefix": _AT_LEAST_0,
    "optim.lr": _POSITIVE, "optim.b1": _BELOW_1, "optim.b2": _BELOW_1, "optim.eps": _AT_LEAST_0,
    "optim.weight_decay": _AT_LEAST_0, "optim.max_norm": _AT_LEAST_0, "optim.warmup_steps": _AT_LEAST_0,
    "optim.lr_min_ratio": _PROBABILITY, "optim.ema_decay": _BELOW_1, "optim.ema_every": _POSITIVE,
    "train.num_steps": _POSITIVE, "train.global_batch_size": _POSITIVE, "train.per_device_batch_size": _AT_LEAST_0,
    "train.log_every": _POSITIVE, "train.eval_every": _POSITIVE, "train.eval_batches": _POSITIVE,
    "train.checkpoint_every": _POSITIVE, "train.keep_checkpoints": _POSITIVE, "train.protocol_eval_every": _AT_LEAST_0,
    "train.grad_accum_steps": _POSITIVE,
    "mesh.data": _MESH_AXIS, "mesh.fsdp": _MESH_AXIS, "mesh.tensor": _MESH_AXIS,
    "mesh.dcn_data": _POSITIVE, "mesh.dcn_fsdp": _POSITIVE,
    "data.segment_duration": _POSITIVE, "data.frame_rate": _POSITIVE, "data.noise": _PROBABILITY,
    "data.min_segment_ratio": _PROBABILITY, "data.merge_text_p": _PROBABILITY, "data.drop_desc_p": _PROBABILITY,
    "data.drop_other_p": _PROBABILITY, "data.eval_fraction": _BELOW_1, "data.num_threads": _POSITIVE,
    "data.num_workers": _AT_LEAST_0,
}
ATTENTION_IMPLS = ("xla", "cudnn", "splash")  # nn/attention_kernels.py
# jax.checkpoint_policies by name, least device memory first (nn/transformer.py applies them);
# offload_dots_with_no_batch_dims keeps what dots_with_no_batch_dims_saveable keeps in host memory.
REMAT_POLICIES = ("nothing_saveable", "offload_dots_with_no_batch_dims", "dots_with_no_batch_dims_saveable",
                  "dots_saveable", "everything_saveable")
# Why a value is refused, where "must be ..." alone does not say what would go wrong.
_WHY = {
    "train.keep_checkpoints": " (0 would keep no checkpoint of the trained model)",
    "optim.lr": " (a rate <= 0 does not descend the loss)",
}


def check_values(cfg) -> None:
    """Raises ValueError naming the first key whose value is out of its range (or not finite)."""
    for key, (ok, what) in RULES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if isinstance(value, float) and not math.isfinite(value) or not ok(value):
            raise ValueError(f"{key}={value!r}: it must be {what}{_WHY.get(key, '')}; set "
                             f"--config.{key}=<value>")
    if cfg.train.smoke_test and cfg.data.kind != "synthetic":
        raise ValueError("train.smoke_test judges a run by the synthetic data's known rules; data.source="
                         f"{cfg.data.source!r} reads a dataset: drop --config.train.smoke_test")
    check_profile_steps(cfg.train.profile_steps)
    if cfg.lm.attention_impl not in ATTENTION_IMPLS:
        raise ValueError(f"lm.attention_impl={cfg.lm.attention_impl!r}: one of {', '.join(ATTENTION_IMPLS)} (cudnn: "
                         "GPU, splash: TPU; both run, slower, elsewhere)")
    if cfg.lm.remat_policy not in REMAT_POLICIES:
        raise ValueError(f"lm.remat_policy={cfg.lm.remat_policy!r}: one of {', '.join(REMAT_POLICIES)}")
    if cfg.lm.kind not in ("magnet", "hybrid"):
        raise ValueError(f"lm.kind={cfg.lm.kind!r}: 'magnet' or 'hybrid' (Hybrid-MAGNeT); set --config.lm.kind=hybrid")
    if cfg.lm.kind == "hybrid" and (cfg.lm.causal or len(cfg.lm.codebook_delays) != cfg.lm.n_q):
        raise ValueError(f"lm.kind='hybrid' needs lm.causal=False and one delay per codebook (lm.codebook_delays, "
                         f"e.g. {tuple(range(cfg.lm.n_q))}); got causal={cfg.lm.causal}, "
                         f"codebook_delays={tuple(cfg.lm.codebook_delays)}")
    for steps in cfg.decode.decoding_steps:
        if steps < 1:
            raise ValueError(f"decode.decoding_steps={tuple(cfg.decode.decoding_steps)}: every stage needs >= 1 step")


def check_profile_steps(steps) -> Tuple[int, int]:
    """train.profile_steps: `()` (no trace, returned as (0, 0)) or `(start, stop)`, 0 <= start < stop."""
    steps = tuple(steps)
    if not steps:
        return 0, 0
    if len(steps) != 2 or not all(isinstance(s, int) for s in steps) or not 0 <= steps[0] < steps[1]:
        raise ValueError(f"train.profile_steps={steps!r}: give two step numbers START,STOP with 0 <= START < STOP "
                         "(--config.train.profile_steps=10,13 traces steps 10 to 12), or () for no trace")
    return steps
