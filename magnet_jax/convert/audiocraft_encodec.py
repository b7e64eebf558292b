"""audiocraft's own EnCodec checkpoints -> `(EncodecConfig, EncodecModel)`.

A codec trained with audiocraft is exported by `audiocraft.utils.export.export_encodec` as a
`compression_state_dict.bin` holding `{'best_state': <state dict>, 'xp.cfg': <YAML>, 'exported',
'version'}`. audiocraft rebuilds it from xp.cfg (`builders.get_compression_model`): the `encodec`
section picks the parts (`autoencoder: seanet`, `quantizer: rvq`) and gives `sample_rate`,
`channels`, `renormalize`; `seanet` holds the settings both SEANet halves share, with
`seanet.encoder` / `seanet.decoder` overriding them per half; `rvq` gives `n_q` and `bins` (the
codebook dimension is the encoder's `dimension`). A key absent from xp.cfg takes the default of
audiocraft's constructor, as it does there.

Our `EncodecModel` has one setting per field for both halves, ELU activations, one LSTM stack
(at least one layer) in each half, the same norm on every conv (weight norm, folded at conversion,
or none at all are the same thing to it; a time-group norm must be on every conv), and no input
renormalisation. A checkpoint needing anything else is refused with a `ConversionError` naming
the xp.cfg key, instead of giving a different codec.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Tuple

import numpy as np

from magnet_jax.codec import EncodecConfig, EncodecModel
from magnet_jax.convert.audiocraft_config import XpConfigError, parse_xp_cfg
from magnet_jax.convert.common import ConversionError
from magnet_jax.convert.encodec_params import AUDIOCRAFT_LAYOUT, build_encodec, params_from_hf

# SEANetEncoder / SEANetDecoder keyword defaults in audiocraft 1.3.0 (what an absent key means).
_SEANET_DEFAULTS: Dict[str, Any] = dict(
    channels=1, dimension=128, n_filters=32, n_residual_layers=3, ratios=[8, 5, 4, 2], activation="ELU",
    activation_params={"alpha": 1.0}, norm="none", norm_params={}, kernel_size=7, last_kernel_size=7,
    residual_kernel_size=3, dilation_base=2, causal=False, pad_mode="reflect", true_skip=True, compress=2, lstm=0,
    disable_norm_outer_blocks=0)
_DECODER_ONLY: Dict[str, Any] = dict(final_activation=None, final_activation_params=None, trim_right_ratio=1.0)
# Settings that may differ between the halves without changing what our model computes.
_PER_HALF_OK = ("disable_norm_outer_blocks", "norm", "norm_params")  # (norms: checked by kind below)


def _refuse(key: str, value, why: str):
    raise ConversionError(f"xp.cfg sets `{key}: {value!r}`, which magnet_jax's EnCodec does not implement ({why})")


def _seanet_halves(cfg: Mapping) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """The effective keyword arguments of audiocraft's SEANetEncoder and SEANetDecoder."""
    seanet = dict(cfg.get("seanet") or {})
    enc_over = dict(seanet.pop("encoder", None) or {})
    dec_over = dict(seanet.pop("decoder", None) or {})
    for where, keys, allowed in (("seanet", seanet, _SEANET_DEFAULTS), ("seanet.encoder", enc_over, _SEANET_DEFAULTS),
                                 ("seanet.decoder", dec_over, {**_SEANET_DEFAULTS, **_DECODER_ONLY})):
        unknown = sorted(set(keys) - set(allowed))  # audiocraft's constructors would refuse them too
        if unknown:
            raise ConversionError(f"xp.cfg `{where}` has settings audiocraft's SEANet does not take: {unknown}")
    enc = {**_SEANET_DEFAULTS, **seanet, **enc_over}
    dec = {**_SEANET_DEFAULTS, **_DECODER_ONLY, **seanet, **dec_over}
    for key in _SEANET_DEFAULTS:
        if key not in _PER_HALF_OK and enc[key] != dec[key]:
            raise ConversionError(f"xp.cfg gives the SEANet encoder `{key}: {enc[key]!r}` but the decoder "
                                  f"`{key}: {dec[key]!r}`; magnet_jax's EnCodec has one setting for both halves")
    return enc, dec


def _key(cfg: Mapping, half: str, name: str) -> str:
    """The xp.cfg key that gives one SEANet half its `name` setting."""
    return f"seanet.{half}.{name}" if name in ((cfg.get("seanet") or {}).get(half) or {}) else f"seanet.{name}"


def _norm_type(cfg: Mapping, kw: Mapping, half: str) -> str:
    """Our `norm_type` for one SEANet half (effective settings `kw`)."""
    norm = kw["norm"]
    if norm in ("weight_norm", "none"):
        return "weight_norm"  # folded into plain weights: the same conv as no norm
    if norm != "time_group_norm":
        _refuse(_key(cfg, half, "norm"), norm, "weight_norm, none or time_group_norm only")
    if dict(kw["norm_params"] or {}) not in ({}, {"eps": 1e-5}, {"affine": True}, {"eps": 1e-5, "affine": True}):
        _refuse(_key(cfg, half, "norm_params"), kw["norm_params"],
                "GroupNorm with eps 1e-5 and an affine transform only")
    if kw["disable_norm_outer_blocks"]:
        _refuse(_key(cfg, half, "disable_norm_outer_blocks"), kw["disable_norm_outer_blocks"],
                "with time_group_norm, every conv must have its norm")
    if kw["causal"]:
        _refuse(_key(cfg, half, "causal"), True, "audiocraft refuses a causal time_group_norm too")
    return "time_group_norm"


def encodec_config_from_xp(cfg: Mapping) -> EncodecConfig:
    """xp.cfg (parsed, interpolations resolved) of an audiocraft compression model -> our config."""
    model = cfg.get("compression_model", "encodec")
    if model != "encodec":
        raise ConversionError(f"xp.cfg has `compression_model: {model!r}`: only audiocraft's 'encodec' is supported")
    ec = dict(cfg.get("encodec") or {})
    if not ec or not cfg.get("seanet"):
        raise ConversionError("xp.cfg lacks the `encodec` or `seanet` section: is this an audiocraft compression "
                              "(EnCodec) checkpoint?")
    if ec.get("autoencoder", "seanet") != "seanet":
        _refuse("encodec.autoencoder", ec.get("autoencoder"), "SEANet only")
    if ec.get("quantizer") != "rvq":
        _refuse("encodec.quantizer", ec.get("quantizer"), "residual vector quantisation ('rvq') only")
    if ec.get("renormalize"):  # (the deprecated `renorm` is ignored by audiocraft's builder)
        _refuse("encodec.renormalize", True, "no per-item input renormalisation; audiocraft's LMs assert the "
                "codec's scale is None, so their codecs are trained without it")
    enc, dec = _seanet_halves(cfg)

    if enc["activation"] != "ELU" or dict(enc["activation_params"] or {}) not in ({}, {"alpha": 1.0}):
        _refuse("seanet.activation", f"{enc['activation']} {enc['activation_params']}", "ELU with alpha 1 only")
    if dec["final_activation"] is not None:
        _refuse("seanet.decoder.final_activation", dec["final_activation"], "the decoder ends with its conv")
    norm_type = _norm_type(cfg, enc, "encoder")
    if _norm_type(cfg, dec, "decoder") != norm_type:
        raise ConversionError(f"xp.cfg gives the SEANet encoder `norm: {enc['norm']}` but the decoder "
                              f"`norm: {dec['norm']}`; magnet_jax's EnCodec has one kind of norm for both halves")
    n_blocks = len(enc["ratios"]) + 2
    for half, kw in (("encoder", enc), ("decoder", dec)):
        if not 0 <= int(kw["disable_norm_outer_blocks"]) <= n_blocks:
            _refuse(_key(cfg, half, "disable_norm_outer_blocks"), kw["disable_norm_outer_blocks"],
                    f"audiocraft allows 0..{n_blocks}")
    if enc["pad_mode"] not in ("reflect", "constant"):
        _refuse("seanet.pad_mode", enc["pad_mode"], "'reflect' or 'constant' (zeros) padding only")
    if int(enc["lstm"]) < 1:
        _refuse("seanet.lstm", enc["lstm"], "the model always has an LSTM stack in each half")
    trim = float(dec["trim_right_ratio"])
    if not enc["causal"] and trim != 1.0:
        _refuse("seanet.decoder.trim_right_ratio", trim, "audiocraft allows it only for causal convs")
    if not 0.0 <= trim <= 1.0:
        _refuse("seanet.decoder.trim_right_ratio", trim, "it must lie in [0, 1]")

    rvq = dict(cfg.get("rvq") or {})
    channels = int(enc["channels"])
    if "channels" in ec and int(ec["channels"]) != channels:
        raise ConversionError(f"xp.cfg gives `encodec.channels: {ec['channels']}` but `seanet.channels: "
                              f"{channels}`: the checkpoint's codec is inconsistent")
    if "sample_rate" not in ec:
        raise ConversionError("xp.cfg lacks `encodec.sample_rate` (or the `sample_rate` it points at)")
    try:
        return EncodecConfig(
            sampling_rate=int(ec["sample_rate"]),
            audio_channels=channels,
            num_filters=int(enc["n_filters"]),
            num_residual_layers=int(enc["n_residual_layers"]),
            upsampling_ratios=tuple(int(r) for r in enc["ratios"]),
            norm_type=norm_type,
            kernel_size=int(enc["kernel_size"]),
            last_kernel_size=int(enc["last_kernel_size"]),
            residual_kernel_size=int(enc["residual_kernel_size"]),
            dilation_growth_rate=int(enc["dilation_base"]),
            use_causal_conv=bool(enc["causal"]),
            pad_mode=str(enc["pad_mode"]),
            compress=int(enc["compress"]),
            num_lstm_layers=int(enc["lstm"]),
            trim_right_ratio=trim,
            codebook_size=int(rvq.get("bins", 1024)),   # ResidualVectorQuantizer's defaults
            codebook_dim=int(enc["dimension"]),
            hidden_size=int(enc["dimension"]),
            use_conv_shortcut=not bool(enc["true_skip"]),
            num_quantizers=int(rvq.get("n_q", 8)),
        )
    except ValueError as e:
        raise ConversionError(f"xp.cfg describes a codec magnet_jax cannot build: {e}") from e


def encodec_from_package(pkg: Mapping, source: str = "checkpoint") -> Tuple[EncodecConfig, EncodecModel]:
    """An exported audiocraft compression package (`best_state` + `xp.cfg`) -> (config, model)."""
    missing = [k for k in ("best_state", "xp.cfg") if k not in pkg]
    if missing:
        raise ConversionError(f"{source} lacks {missing}: not an exported audiocraft compression checkpoint")
    try:
        xp = parse_xp_cfg(pkg["xp.cfg"])
    except XpConfigError as e:
        raise ConversionError(f"{source}: {e}") from e
    state = pkg["best_state"]
    if isinstance(state, Mapping) and "model" in state and not any(k.startswith("encoder.") for k in state):
        state = state["model"]  # a training checkpoint's best_state rather than an export's
    if not isinstance(state, Mapping):
        raise ConversionError(f"{source}: best_state is a {type(state).__name__}, not a state dict")
    cfg = encodec_config_from_xp(xp)
    tensors = {k: np.asarray(v) for k, v in state.items()}
    return cfg, build_encodec(cfg, params_from_hf(tensors, cfg, AUDIOCRAFT_LAYOUT))
