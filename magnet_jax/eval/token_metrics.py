"""A held-out evaluation that does not depend on the training config (for ablations).

A run's own held-out CE (train/step.make_eval_step) masks with that run's schedule and span
length, so two runs with different masking are scored on different tasks. This protocol fixes
the task for every run:
- the first `examples` held-out examples of the data, whatever the batch size;
- mask rates 0.1, 0.3, 0.5, 0.7, 0.9 (the midpoints of five equal bins of [0, 1]);
- span masks of `span_len` 3 (the paper's), drawn by training's procedure (the span-count table,
  masking/spans.py) from one fixed key per (stage, rate, example): a row's mask does not depend
  on the batch it is in, nor on any config key but the clip length;
- the caption always given (no dropout);
- stage k: CE and accuracy over the masked frames of codebook k, higher codebooks masked, lower
  ones given, as in training. Hybrid-MAGNeT: its boundary at 0 (MAGNeT's task).
The headline, `ce_cosine`, is the CE averaged over the stages (uniformly, as training draws
them) and over the mask rates of the cosine schedule (rate = cos(pi t / 2), t uniform in
[0, 1]), piecewise constant over the five bins: bin [a, b] weighs (2 / pi)(asin b - asin a).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Dict, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from magnet_jax.config import Config
from magnet_jax.data.host_batches import process_slice, to_global
from magnet_jax.masking import mask_rate_to_span_starts_lut, span_mask
from magnet_jax.train.objectives import objective_for
from magnet_jax.train.step import encode_text


@dataclasses.dataclass(frozen=True)
class Protocol:
    mask_rates: Tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9)
    span_len: int = 3
    examples: int = 64
    seed: int = 2024
    name: str = "masked-ce-v1"  # change it when the protocol changes: numbers of two names never compare

    def __post_init__(self):
        rates = np.asarray(self.mask_rates, float)
        if rates.ndim != 1 or rates.size == 0 or np.any(np.diff(rates) <= 0) or rates[0] <= 0 or rates[-1] >= 1:
            raise ValueError(f"protocol mask_rates must be increasing, inside (0, 1), got {self.mask_rates}")
        if self.span_len < 1 or self.examples < 1:
            raise ValueError(f"protocol span_len and examples must be >= 1, got {self.span_len}, {self.examples}")


PROTOCOL = Protocol()


def cosine_bin_weights(mask_rates: Sequence[float]) -> np.ndarray:
    """[R] probability that the cosine schedule's mask rate falls in each rate's bin (the bins
    split [0, 1] halfway between neighbouring rates); they sum to 1."""
    r = np.asarray(mask_rates, np.float64)
    edges = np.concatenate([[0.0], (r[1:] + r[:-1]) / 2, [1.0]])
    return np.diff(np.arcsin(edges)) * (2 / math.pi)


def protocol_span_masks(protocol: Protocol, stage, rate_index, example_ids, seq_len: int, lut) -> jax.Array:
    """bool [B, T]: the protocol's span mask of each example (rows with id < 0 masked nowhere)."""
    base = jax.random.fold_in(jax.random.fold_in(jax.random.key(protocol.seed), stage), rate_index)
    rate = jnp.asarray(protocol.mask_rates, jnp.float32)[rate_index]

    def one(example_id):
        row = span_mask(jax.random.fold_in(base, jnp.maximum(example_id, 0)), rate[None], seq_len,
                        protocol.span_len, lut)[0]
        return row & (example_id >= 0)

    return jax.vmap(one)(example_ids)


def make_protocol_eval_step(cfg: Config, graphdef, protocol: Protocol = PROTOCOL, text_encoder=None):
    """`(params, batch, frozen=None) -> {"ce_sum", "correct", "count"}`, each [K, R] (stage x
    mask rate) sums over the batch's masked frames. `batch["example_ids"]` [B] numbers the
    held-out examples (`protocol_batches`); rows with id -1 are padding."""
    seq_len = cfg.data.num_frames
    if protocol.span_len > seq_len:
        raise ValueError(f"the protocol's span_len {protocol.span_len} is longer than the clip ({seq_len} frames)")
    lut = mask_rate_to_span_starts_lut(seq_len, protocol.span_len)
    objective = objective_for(cfg)
    fixed = dict(boundary=0) if cfg.lm.kind == "hybrid" else {}
    n_q, n_r = cfg.lm.n_q, len(protocol.mask_rates)

    def eval_step(params, batch, frozen=None):
        example_ids = batch["example_ids"]
        text = encode_text(text_encoder, frozen, batch)

        def cell(carry, index):
            # The parameters ride in the loop's carry: NNX modules must be built from values of
            # the loop body's own trace.
            model = nnx.merge(graphdef, carry[0])
            stage, r = index // n_r, index % n_r
            span = protocol_span_masks(protocol, stage, r, example_ids, batch["codes"].shape[-1], lut)
            _, aux = objective.loss(model, batch, jax.random.key(0), stage, cfg, lut, condition="text", text=carry[1],
                               span=span, **fixed)
            ce, acc = aux.get("ce_nar", aux["ce"]), aux.get("acc_nar", aux["acc"])
            count = aux["num_masked"]
            return carry, jnp.stack([ce * count, acc * count, count])

        _, sums = jax.lax.scan(cell, (params, text), jnp.arange(n_q * n_r))
        sums = sums.reshape(n_q, n_r, 3)
        return {"ce_sum": sums[..., 0], "correct": sums[..., 1], "count": sums[..., 2]}

    return eval_step


def protocol_batches(data, global_batch: int, protocol: Protocol = PROTOCOL) -> Tuple[list, int]:
    """(held-out host batches, number of examples scored): batches covering examples 0 .. examples - 1, each with its `example_ids`;
    the last batch's rows past the end carry id -1 (padding: scored nowhere). A dataset holding
    out fewer examples gives all it has (the summary's `examples` says how many)."""
    n = protocol.examples if data.num_eval is None else min(protocol.examples, data.num_eval)
    out = []
    for i in range(-(-n // global_batch)):
        ids = np.arange(i * global_batch, (i + 1) * global_batch)
        batch = dict(data.eval_batch(i, global_batch))
        batch["example_ids"] = np.where(ids < n, ids, -1).astype(np.int32)
        out.append(batch)
    return out, n


def evaluate(eval_fn, params, batches, examples: int, frozen_args=(), protocol: Protocol = PROTOCOL
             ) -> Dict[str, object]:
    """Runs the compiled protocol step over `batches` (of `examples` examples) and summarises."""
    outs = jax.device_get([eval_fn(params, b, *frozen_args) for b in batches])
    summary = summarise({k: np.sum([o[k] for o in outs], axis=0) for k in outs[0]}, protocol)
    return dict(summary, examples=int(examples))


def protocol_evaluator(cfg: Config, graphdef, data, mesh, text_encoder=None, protocol: Protocol = PROTOCOL):
    """`(params, *frozen) -> summary` on the held-out examples of `data`, batched at the run's
    global batch size over `mesh` (every process calls it in a multi-process job)."""
    g, rules = cfg.train.global_batch_size, cfg.mesh.rules
    host, n = protocol_batches(data, g, protocol)
    pidx, pcount = jax.process_index(), jax.process_count()
    batches = [to_global(process_slice(b, pidx, pcount), mesh, rules, g) for b in host]
    fn = jax.jit(make_protocol_eval_step(cfg, graphdef, protocol, text_encoder))
    return lambda params, *frozen: evaluate(fn, params, batches, n, frozen, protocol)


def summarise(sums: Dict[str, np.ndarray], protocol: Protocol = PROTOCOL) -> Dict[str, object]:
    """Totals over all batches -> per stage x rate CE and accuracy, and the cosine-averaged CE."""
    count = np.maximum(np.asarray(sums["count"], np.float64), 1.0)
    ce = np.asarray(sums["ce_sum"], np.float64) / count
    acc = np.asarray(sums["correct"], np.float64) / count
    w = cosine_bin_weights(protocol.mask_rates)
    per_stage = ce @ w
    return {"protocol": protocol.name, "mask_rates": list(protocol.mask_rates), "span_len": protocol.span_len,
            "examples": protocol.examples, "ce": ce.tolist(), "acc": acc.tolist(),
            "ce_cosine_per_stage": per_stage.tolist(), "ce_cosine": float(per_stage.mean()),
            "acc_cosine": float((acc @ w).mean())}


def format_summary(s: Dict[str, object]) -> str:
    """A few lines: the headline and a stage x rate table of CE (accuracy in brackets)."""
    rates = s["mask_rates"]
    lines = [f"{s['protocol']}: CE over the cosine schedule {s['ce_cosine']:.4f} nats (accuracy "
             f"{s['acc_cosine']:.3f}); {s['examples']} held-out examples, spans of {s['span_len']}",
             "stage | " + " | ".join(f"rate {r:.1f}" for r in rates) + " | cosine"]
    for k, (row, accs) in enumerate(zip(s["ce"], s["acc"])):
        cells = " | ".join(f"{c:.3f} ({a:.2f})" for c, a in zip(row, accs))
        lines.append(f"{k} | {cells} | {s['ce_cosine_per_stage'][k]:.3f}")
    return "\n".join(lines)
