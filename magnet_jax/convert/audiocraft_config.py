"""audiocraft's `xp.cfg` (the Hydra config dumped beside every exported checkpoint) -> our `Config`.

The YAML holds the whole experiment: `transformer_lm` (dims, heads, layers, card, n_q, biases,
norms, subcodes_context), `masking.span_len`, `dataset.segment_duration`, the conditioner and
fuser, classifier-free guidance, the optimiser, and `generate.lm` (the decoding settings the
model was evaluated with). Settings our LM does not implement fail here, naming the key,
instead of giving a silently different model.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Dict, Optional

import yaml

from magnet_jax.config import ConditionerConfig, Config, DataConfig, DecodeConfig, LMConfig, MaskingConfig

_INTERP = re.compile(r"\$\{([^}]*)\}")

# audiocraft's `MAGNeT.set_generation_params` defaults (what `MAGNeT.get_pretrained(...).generate` uses).
AUDIOCRAFT_API_DECODE = DecodeConfig(decoding_steps=(20, 10, 10, 10), temperature=3.0, top_k=0, top_p=0.9,
                                     use_sampling=True, max_cfg_coef=10.0, min_cfg_coef=1.0, anneal_temperature=True,
                                     span_scoring="max", span_arrangement="nonoverlap")


class XpConfigError(ValueError):
    pass


def parse_xp_cfg(text: str) -> Dict[str, Any]:
    """YAML text -> nested dict, with OmegaConf-style `${a.b}` interpolations resolved."""
    if not isinstance(text, str):
        raise XpConfigError(f"xp.cfg should be a YAML string, got {type(text).__name__}")
    try:
        root = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise XpConfigError(f"xp.cfg is not valid YAML: {e}") from e
    if not isinstance(root, dict):
        raise XpConfigError("xp.cfg does not hold a mapping at its top level")
    return _resolve(root, root, depth=0)


def _lookup(root: Dict, path: str):
    node: Any = root
    for part in path.strip().split("."):
        if not isinstance(node, dict) or part not in node:
            raise XpConfigError(f"xp.cfg interpolation ${{{path}}} points at a missing key")
        node = node[part]
    return node


def _resolve(node, root, depth: int):
    if depth > 32:
        raise XpConfigError("xp.cfg interpolations are nested too deeply (a cycle?)")
    if isinstance(node, dict):
        return {k: _resolve(v, root, depth) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve(v, root, depth) for v in node]
    if isinstance(node, str) and "${" in node:
        whole = _INTERP.fullmatch(node)
        if whole:  # "${a.b}" alone keeps the target's type
            return _resolve(_lookup(root, whole.group(1)), root, depth + 1)
        return _INTERP.sub(lambda m: str(_resolve(_lookup(root, m.group(1)), root, depth + 1)), node)
    return node


def _get(cfg: Dict, path: str, default=None):
    node: Any = cfg
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def _require(cfg: Dict, path: str):
    value = _get(cfg, path, _MISSING)
    if value is _MISSING:
        raise XpConfigError(f"xp.cfg lacks `{path}`; is this an audiocraft LM checkpoint?")
    return value


_MISSING = object()


def _unsupported(cfg: Dict, path: str, ok, why: str):
    value = _get(cfg, path, None)
    if not ok(value):
        raise XpConfigError(f"xp.cfg sets `{path}: {value!r}`, which magnet_jax does not implement ({why}).")


def lm_config_from_xp(cfg: Dict, kind: str) -> LMConfig:
    t = _require(cfg, "transformer_lm")
    pre = "transformer_lm."
    _unsupported(cfg, pre + "positional_embedding", lambda v: v in (None, "sin"), "only 'sin' positions")
    _unsupported(cfg, pre + "xpos", lambda v: not v, "xpos belongs to rope")
    _unsupported(cfg, pre + "qk_layer_norm", lambda v: not v, "no q/k layer norm")
    _unsupported(cfg, pre + "qk_layer_norm_cross", lambda v: not v, "no q/k layer norm")
    _unsupported(cfg, pre + "kv_repeat", lambda v: v in (None, 1), "no grouped K/V")
    _unsupported(cfg, pre + "past_context", lambda v: v is None, "no sliding causal window")
    _unsupported(cfg, pre + "norm", lambda v: v in (None, "layer_norm"), "layer_norm only")
    _unsupported(cfg, pre + "activation", lambda v: v in (None, "gelu"), "exact GELU only")
    _unsupported(cfg, "fuser.cross_attention_pos_emb", lambda v: not v, "no positions on the condition")
    for method in ("sum", "prepend", "input_interpolate"):
        _unsupported(cfg, f"fuser.{method}", lambda v: not v, "conditions enter by cross-attention only")
    n_q = int(_require(cfg, pre + "n_q"))
    pattern = _get(cfg, "codebooks_pattern.modeling") or t.get("q_modeling")
    delays: tuple = ()
    if kind == "musicgen":
        if pattern != "delay":
            raise XpConfigError(f"codebooks_pattern.modeling={pattern!r}: only MusicGen's 'delay' pattern is "
                                "supported for causal LMs")
        delays = tuple(int(d) for d in (_get(cfg, "codebooks_pattern.delay.delays") or range(n_q)))
        if _get(cfg, "codebooks_pattern.delay.flatten_first", 0) or _get(cfg, "codebooks_pattern.delay.empty_initial", 0):
            raise XpConfigError("codebooks_pattern.delay with flatten_first/empty_initial is not supported")
    elif pattern not in (None, "parallel"):
        raise XpConfigError(f"codebooks_pattern.modeling={pattern!r}: MAGNeT models use 'parallel'")
    span_len = int(_get(cfg, "masking.span_len", 1) or 1) if kind == "magnet" else 1
    layer_scale = t.get("layer_scale")
    return LMConfig(
        n_q=n_q,
        card=int(_require(cfg, pre + "card")),
        dim=int(_require(cfg, pre + "dim")),
        num_heads=int(_require(cfg, pre + "num_heads")),
        num_layers=int(_require(cfg, pre + "num_layers")),
        hidden_scale=float(t.get("hidden_scale", 4)),
        norm_first=bool(t.get("norm_first", False)),
        bias_attn=bool(t.get("bias_attn", True)),
        bias_ff=bool(t.get("bias_ff", True)),
        bias_proj=bool(t.get("bias_proj", True)),
        layer_scale=None if layer_scale is None else float(layer_scale),
        cross_attention=True,  # audiocraft enforces it when the fuser cross-attends (all text models)
        causal=bool(t.get("causal", kind == "musicgen")),
        subcodes_context=int(t.get("subcodes_context", -1)) if kind == "magnet" else -1,
        span_len=span_len,
        max_period=float(t.get("max_period", 10_000.0)),
        positional_scale=float(t.get("positional_scale", 1.0)),
        weight_init=t.get("weight_init") or "gaussian",
        depthwise_init=t.get("depthwise_init"),
        codebook_delays=delays,
        dtype="float32",
    )


def conditioner_config_from_xp(cfg: Dict) -> ConditionerConfig:
    conds = _get(cfg, "conditioners") or {}
    names = [k for k in conds if k != "args"]
    cross = list(_get(cfg, "fuser.cross") or [])
    if names != ["description"] or cross != ["description"]:
        raise XpConfigError(f"conditioners {names} (cross-attended: {cross}): magnet_jax supports one text "
                            "condition, 'description', through cross-attention (melody/style/chord models are not "
                            "supported)")
    desc = conds["description"]
    if desc.get("model") != "t5":
        raise XpConfigError(f"conditioners.description.model={desc.get('model')!r}: only 't5' is supported")
    t5 = desc.get("t5") or {}
    if t5.get("normalize_text"):
        raise XpConfigError("conditioners.description.t5.normalize_text=true needs spacy's lemmatiser, "
                            "which magnet_jax does not ship")
    if t5.get("finetune"):
        raise XpConfigError("conditioners.description.t5.finetune=true: a fine-tuned T5 lives in the checkpoint, "
                            "which magnet_jax does not load yet")
    name = str(t5.get("name", "t5-base"))
    return ConditionerConfig(
        encoder="t5",
        t5_name=name,
        output_dim=T5_DIMS.get(name, 0) or _t5_dim_unknown(name),
        cfg_dropout=float(_get(cfg, "classifier_free_guidance.training_dropout", 0.0)),
        word_dropout=float(t5.get("word_dropout", 0.0)),
        normalize_text=False,
        max_text_len=512,
    )


# audiocraft's T5Conditioner sizes output_proj from its width table, whatever the folder holds; it lists
# flan-t5-xl/xxl as models without a width (a KeyError there): their real widths here.
T5_DIMS = {"t5-small": 512, "t5-base": 768, "t5-large": 1024, "t5-3b": 1024, "t5-11b": 1024,
           "google/flan-t5-small": 512, "google/flan-t5-base": 768, "google/flan-t5-large": 1024,
           "google/flan-t5-xl": 2048, "google/flan-t5-xxl": 4096}


def _t5_dim_unknown(name: str) -> int:
    raise XpConfigError(f"conditioners.description.t5.name={name!r} is not one of audiocraft's T5 models "
                        f"{sorted(T5_DIMS)}")


def decode_config_from_xp(cfg: Dict, n_q: int) -> DecodeConfig:
    """`generate.lm` of the checkpoint (how it was evaluated); audiocraft's API defaults where absent."""
    g = _get(cfg, "generate.lm") or {}
    base = AUDIOCRAFT_API_DECODE
    steps = tuple(int(s) for s in g.get("decoding_steps", base.decoding_steps))
    if len(steps) != n_q:
        raise XpConfigError(f"generate.lm.decoding_steps={list(steps)} has {len(steps)} entries for {n_q} codebooks: "
                            "give one step count per codebook")
    return DecodeConfig(
        decoding_steps=steps,
        temperature=float(g.get("temp", base.temperature)),
        anneal_temperature=bool(g.get("anneal_temp", base.anneal_temperature)),
        top_k=int(g.get("top_k", base.top_k)),
        top_p=float(g.get("top_p", base.top_p)),
        use_sampling=bool(g.get("use_sampling", base.use_sampling)),
        max_cfg_coef=float(g.get("max_cfg_coef", base.max_cfg_coef)),
        min_cfg_coef=float(g.get("min_cfg_coef", base.min_cfg_coef)),
        span_scoring=str(g.get("span_scoring", base.span_scoring)),
        span_arrangement=str(g.get("span_arrangement", base.span_arrangement)),
    )


def config_from_xp_cfg(cfg: Dict, *, frame_rate: Optional[float] = None, name: str = "audiocraft") -> Config:
    """The whole `Config` of an audiocraft LM checkpoint (`lm_model` picks MAGNeT or MusicGen)."""
    lm_model = _require(cfg, "lm_model")
    kinds = {"transformer_lm_magnet": "magnet", "transformer_lm": "musicgen"}
    if lm_model not in kinds:
        raise XpConfigError(f"lm_model={lm_model!r}: expected one of {sorted(kinds)}")
    kind = kinds[lm_model]
    lm = lm_config_from_xp(cfg, kind)
    segment = float(_get(cfg, "dataset.segment_duration", 10.0) or 10.0)
    fr = frame_rate if frame_rate is not None else _get(cfg, "transformer_lm.compression_model_framerate", 50)
    decode = decode_config_from_xp(cfg, lm.n_q) if kind == "magnet" else dataclasses.replace(
        AUDIOCRAFT_API_DECODE, decoding_steps=(1,) * lm.n_q)
    return Config(
        name=name,
        lm=lm,
        conditioner=conditioner_config_from_xp(cfg),
        masking=MaskingConfig(schedule="cosine"),
        decode=decode,
        data=DataConfig(source="synthetic", segment_duration=segment, frame_rate=int(round(float(fr or 50)))),
    )

