"""audiocraft LM state dict (`emb.*`, `transformer.layers.*`, `out_norm.*`, `linears.*`) -> MagnetLM params.

Every tensor of the LM must be consumed and every parameter set, or the conversion fails
naming what is left. Keys of other parts (e.g. `condition_provider.*`) are returned
untouched for their own converters.
"""
from __future__ import annotations

from typing import Dict, Mapping, Tuple

import numpy as np

from magnet_jax.config import LMConfig
from magnet_jax.convert.common import ConversionError, TensorSource, load_into

# The shared helpers' old home: other converters and tests import them from here too.
__all__ = ["LM_PREFIXES", "ConversionError", "TensorSource", "lm_params_from_audiocraft", "load_into"]

LM_PREFIXES = ("emb.", "transformer.", "out_norm.", "linears.")


def _attention(src: TensorSource, prefix: str, cfg: LMConfig) -> Dict:
    d, h = cfg.dim, cfg.num_heads
    w = src.pop(prefix + "in_proj_weight")  # [3D, D]: rows q, k, v; each (heads, head_dim)
    out_w = src.pop(prefix + "out_proj.weight")  # [D, D]
    if w is None or out_w is None:
        return {}
    heads = lambda m: m.T.reshape(d, h, d // h)
    p = {
        "query": {"kernel": heads(w[:d])},
        "key": {"kernel": heads(w[d:2 * d])},
        "value": {"kernel": heads(w[2 * d:])},
        "out": {"kernel": out_w.T.reshape(h, d // h, d)},
    }
    if cfg.bias_attn:
        b = src.pop(prefix + "in_proj_bias")
        ob = src.pop(prefix + "out_proj.bias")
        if b is not None:
            for i, name in enumerate(("query", "key", "value")):
                p[name]["bias"] = b[i * d:(i + 1) * d].reshape(h, d // h)
        if ob is not None:
            p["out"]["bias"] = ob
    return p


def _norm(src: TensorSource, prefix: str) -> Dict:
    return {"scale": src.pop(prefix + "weight"), "bias": src.pop(prefix + "bias")}


def _linear(src: TensorSource, prefix: str, bias: bool) -> Dict:
    w = src.pop(prefix + "weight")
    p = {"kernel": None if w is None else w.T}
    if bias:
        p["bias"] = src.pop(prefix + "bias")
    return p


def _layer(src: TensorSource, i: int, cfg: LMConfig) -> Dict:
    pre = f"transformer.layers.{i}."
    p = {
        "norm1": _norm(src, pre + "norm1."),
        "self_attn": _attention(src, pre + "self_attn.", cfg),
        "norm2": _norm(src, pre + "norm2."),
        "ffn": {"linear1": _linear(src, pre + "linear1.", cfg.bias_ff),
                "linear2": _linear(src, pre + "linear2.", cfg.bias_ff)},
    }
    if cfg.cross_attention:
        p["norm_cross"] = _norm(src, pre + "norm_cross.")
        p["cross_attn"] = _attention(src, pre + "cross_attention.", cfg)
    if cfg.layer_scale is not None:
        p["layer_scale_1"] = {"scale": src.pop(pre + "layer_scale_1.scale")}
        p["layer_scale_2"] = {"scale": src.pop(pre + "layer_scale_2.scale")}
        if cfg.cross_attention:
            p["layer_scale_cross"] = {"scale": src.pop(pre + "layer_scale_cross.scale")}
    return p


def _stack(trees):
    first = trees[0]
    if isinstance(first, dict):
        return {k: _stack([t.get(k) for t in trees]) for k in first}
    if any(t is None for t in trees):
        return None
    return np.stack(trees)


def lm_params_from_audiocraft(state_dict: Mapping[str, np.ndarray], cfg: LMConfig) -> Tuple[Dict, Dict]:
    """Returns (pure nested param dict for `MagnetLM`, the non-LM tensors left for other converters)."""
    lm_keys = {k: v for k, v in state_dict.items() if k.startswith(LM_PREFIXES)}
    others = {k: v for k, v in state_dict.items() if not k.startswith(LM_PREFIXES)}
    src = TensorSource(lm_keys)
    emb = [src.pop(f"emb.{k}.weight") for k in range(cfg.n_q)]
    heads = [src.pop(f"linears.{k}.weight") for k in range(cfg.n_q)]
    params = {
        "emb": None if any(e is None for e in emb) else np.stack(emb),
        "heads": None if any(h is None for h in heads) else np.stack([h.T for h in heads]),
        "transformer": {"layers": _stack([_layer(src, i, cfg) for i in range(cfg.num_layers)])},
    }
    if cfg.norm_first:
        params["out_norm"] = _norm(src, "out_norm.")
    if cfg.bias_proj:
        hb = [src.pop(f"linears.{k}.bias") for k in range(cfg.n_q)]
        params["heads_bias"] = None if any(b is None for b in hb) else np.stack(hb)
    src.check("checkpoint lacks {n} LM tensors the config needs, e.g. {names}; is the config (layers, biases, "
              "layer_scale) the checkpoint's?",
              "{n} LM tensors of the checkpoint were not used, e.g. {names}; the config does not describe this "
              "checkpoint.", shown=5)
    return params, others
