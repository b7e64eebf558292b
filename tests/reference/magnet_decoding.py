"""A plain numpy transcription of audiocraft 1.3.0's MAGNeT decoding
(`MagnetLMModel._generate_magnet` / `_generate_stage` / `_least_probable_span_masking`),
greedy only (argmax, no RNG), with the model given as a callback. The per-step span count
and mask rate are computed with torch exactly as the reference does (CPU kernels).

Ties in selections go to the lower index (stable sorts), the rule the JAX sampler uses.
"""
import math

import numpy as np

NEVER = -1e4


def step_schedule(steps: int):
    """(t, mask_p) per step with torch's float32 linspace and cos, as the reference."""
    import torch

    ts = torch.linspace(0, 1, steps)
    return [(t, torch.cos(t * math.pi * 0.5)) for t in ts]


def _softmax(x):
    x = x - x.max(-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(-1, keepdims=True)


def _spans_from_starts(starts, t, span_len):
    mask = np.zeros(t, bool)
    for s in starts:
        mask[s:s + span_len] = True
    return mask


def least_probable_spans(scores_row, target, span_len):
    """One row: cover about `target` frames with the least probable overlapping spans."""
    t = scores_row.shape[0]
    n = t - span_len + 1
    span_scores = scores_row[:n].astype(np.float32)
    for i in range(1, span_len):  # float32, left to right, as torch's unfold(...).sum(-1)
        span_scores = span_scores + scores_row[i:i + n]
    order = np.argsort(-span_scores, kind="stable")
    target = max(target, span_len)
    lo, hi = target // span_len, target - span_len + 1
    mid = round(0.5 * (lo + hi))
    if mid == lo or mid == hi:
        return _spans_from_starts(order[:mid], t, span_len)
    mask = None
    while lo < mid < hi:
        mask = _spans_from_starts(order[:mid], t, span_len)
        if mask.sum() > target:
            hi = mid
        else:
            lo = mid
        mid = round(0.5 * (lo + hi))
    return mask


def generate_greedy(logits_fn, *, batch, n_q, length, mask_id, span_len, decoding_steps, prompt=None,
                    cfg=True, max_cfg=10.0, min_cfg=1.0, temp=3.0, anneal=True, scoring="max",
                    arrangement="nonoverlap", counts_log=None, rescore_fn=None, rescore_weight=1.0):
    """logits_fn(codes [N, K, T], stage) -> [N, K or 1.., T, card] logits of `stage` as [N, T, card].

    Rescoring (the paper's Eq. 5): rescore_fn(codes [B, K, T], stage) -> [B, T] a rescorer's
    probability of the stage's tokens in the candidate; the confidence of every sampled token
    becomes w * p + (1 - w) * p_rescorer before the spans are scored."""
    prompt_len = 0 if prompt is None else prompt.shape[-1]
    gen = np.full((batch, n_q, length), mask_id, np.int64)
    if prompt_len:
        gen[..., :prompt_len] = prompt
    for stage, steps in enumerate(decoding_steps):
        t_len = gen.shape[-1]
        seq = np.full((batch, t_len), mask_id, np.int64)
        chunked = span_len > 1 and arrangement == "nonoverlap"
        if chunked:
            n_chunks = t_len // span_len
            t_len = n_chunks * span_len
            gen, seq = gen[..., :t_len], seq[:, :t_len]
            scores = np.zeros((batch, n_chunks), np.float32)
            scores[:, :prompt_len // span_len] = NEVER
            to_generate = n_chunks - prompt_len // span_len
        else:
            scores = np.zeros((batch, t_len), np.float32)
            scores[:, :prompt_len] = NEVER
            to_generate = t_len - prompt_len
        for i, (t, mask_p) in enumerate(step_schedule(steps)):
            steps_left = steps - 1 - i
            num = max(int((mask_p * to_generate).item()), 1)
            if counts_log is not None:
                counts_log.append((stage, i, num))
            if span_len > 1 and arrangement == "stride1":
                remask = np.stack([least_probable_spans(scores[b], num, span_len) for b in range(batch)])
                seq[remask] = mask_id
            else:
                picked = np.argsort(-scores, axis=-1, kind="stable")[:, :num]
                unit = np.zeros_like(scores, bool)
                np.put_along_axis(unit, picked, True, axis=-1)
                remask = np.repeat(unit, span_len, axis=-1) if chunked else unit
                seq[remask] = mask_id
            if prompt_len:
                seq[:, :prompt_len] = prompt[:, stage]
            gen[:, stage] = seq
            model_in = np.concatenate([gen, gen]) if cfg else gen
            logits = np.asarray(logits_fn(model_in, stage), np.float32)
            if cfg:
                cond, uncond = logits[:batch], logits[batch:]
                coef = float(mask_p) * max_cfg + (1 - float(mask_p)) * min_cfg
                logits = uncond + (cond - uncond) * coef
            temperature = temp * (steps_left / steps) if anneal else temp
            probs = _softmax(logits / max(temperature, 1e-2))
            tokens = logits.argmax(-1)
            was_masked = seq == mask_id
            seq = np.where(was_masked, tokens, seq)
            gen[:, stage] = seq
            p = np.take_along_axis(probs, tokens[..., None], -1)[..., 0]
            if rescore_fn is not None:
                p = rescore_weight * p + (1 - rescore_weight) * np.asarray(rescore_fn(gen.copy(), stage), np.float32)
            if chunked:
                per = p.reshape(batch, -1, span_len)
                scores = 1 - per.max(-1) if scoring == "max" else (-np.log(per)).sum(-1)
                scores = np.where(unit, scores, NEVER).astype(np.float32)
            else:
                scores = np.where(was_masked, -np.log(p), NEVER).astype(np.float32)
    return gen
