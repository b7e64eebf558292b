"""EnCodec torch state dicts -> the param dict of `EncodecModel`, and the model built from it.

Both tensor layouts (Hugging Face's `encoder.layers.{i}.conv.*` and audiocraft's
`encoder.model.{i}.conv.conv.*`) go through `params_from_hf`, which describes them with a
`KeyLayout`. Convolution weights may be plain, or weight-normed in either torch style
(`weight_g`/`weight_v`, `parametrizations.weight.original0/1`). Every tensor is consumed (the
quantizer's training statistics `inited`, `cluster_size`, `embed_avg` are skipped on purpose) and
every parameter set, or the load fails naming what is left. The checkpoint formats themselves are
read by `encodec` (Hugging Face folders) and `audiocraft_encodec` (audiocraft exports).
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Optional

import numpy as np
from flax import nnx

from magnet_jax.codec import EncodecConfig, EncodecModel
from magnet_jax.convert.common import ConversionError, TensorSource, load_into

_VQ_STATS = ("inited", "cluster_size", "embed_avg")


@dataclasses.dataclass(frozen=True)
class KeyLayout:
    """Where a checkpoint keeps EnCodec's tensors (the block indices `i` are the same in both layouts:
    they count the activations of the SEANet `Sequential` too)."""
    blocks: str = "layers"            # encoder.<blocks>.<i>.
    conv: str = "conv."               # a conv's own tensors (weight, bias) inside block i
    conv_norm: str = "norm."          # its time-group norm
    convtr: str = "conv."             # the same for the decoder's transposed convs
    convtr_norm: str = "norm."
    quantizer: str = "quantizer.layers."   # + <q>.
    codebook: str = "codebook."            # + embed and the training statistics
    extra_stages_ok: bool = True      # stages past the codebooks used may be present (HF keeps all 32)
    config_name: str = "config.json"  # for error messages


HF_LAYOUT = KeyLayout()
AUDIOCRAFT_LAYOUT = KeyLayout(blocks="model", conv="conv.conv.", conv_norm="conv.norm.", convtr="convtr.convtr.",
                              convtr_norm="convtr.norm.", quantizer="quantizer.vq.layers.", codebook="_codebook.",
                              extra_stages_ok=False, config_name="xp.cfg")


class _Tensors(TensorSource):
    def conv_weight(self, prefix: str) -> Optional[np.ndarray]:
        """torch layout weight of `prefix` (e.g. `encoder.layers.0.conv.`), weight norm folded (dim 0)."""
        if prefix + "weight" in self.tensors:
            return self.pop(prefix + "weight")
        for g_key, v_key in (("parametrizations.weight.original0", "parametrizations.weight.original1"),
                             ("weight_g", "weight_v")):
            if prefix + v_key in self.tensors:
                g, v = self.pop(prefix + g_key), self.pop(prefix + v_key)
                if g is None:
                    return None
                norm = np.sqrt(np.sum(v.astype(np.float64) ** 2, axis=tuple(range(1, v.ndim)), keepdims=True))
                return (g * (v / norm)).astype(np.float32)
        self.missing.append(prefix + "weight")
        return None


def _conv(src: _Tensors, prefix: str, cfg: EncodecConfig, layout: KeyLayout, transposed: bool = False) -> Dict:
    own, norm = (layout.convtr, layout.convtr_norm) if transposed else (layout.conv, layout.conv_norm)
    w = src.conv_weight(prefix + own)
    if w is not None:
        # forward conv [out, in, k] -> [k, in, out]; transposed [in, out, k] -> flipped [k, in, out]
        w = w[:, :, ::-1].transpose(2, 0, 1) if transposed else w.transpose(2, 1, 0)
    p = {"weight": w, "bias": src.pop(prefix + own + "bias")}
    if cfg.norm_type == "time_group_norm":
        p["norm"] = {"scale": src.pop(prefix + norm + "weight"), "bias": src.pop(prefix + norm + "bias")}
    return p


def _lstm(src: _Tensors, prefix: str, cfg: EncodecConfig) -> Dict:
    w_ih, w_hh, b = [], [], []
    for n in range(cfg.num_lstm_layers):
        wi, wh = src.pop(f"{prefix}weight_ih_l{n}"), src.pop(f"{prefix}weight_hh_l{n}")
        bi, bh = src.pop(f"{prefix}bias_ih_l{n}"), src.pop(f"{prefix}bias_hh_l{n}")
        if any(x is None for x in (wi, wh, bi, bh)):
            return {"w_ih": None, "w_hh": None, "b": None}
        w_ih.append(wi.T)
        w_hh.append(wh.T)
        b.append(bi + bh)
    return {"w_ih": np.stack(w_ih), "w_hh": np.stack(w_hh), "b": np.stack(b)}


def _res(src: _Tensors, prefix: str, cfg: EncodecConfig, layout: KeyLayout) -> Dict:
    p = {"conv1": _conv(src, prefix + "block.1.", cfg, layout), "conv2": _conv(src, prefix + "block.3.", cfg, layout)}
    if cfg.use_conv_shortcut:
        p["shortcut"] = _conv(src, prefix + "shortcut.", cfg, layout)
    return p


def params_from_hf(tensors: Dict[str, np.ndarray], cfg: EncodecConfig, layout: KeyLayout = HF_LAYOUT) -> Dict:
    """The pure param dict of `EncodecModel` from a torch state dict (Hugging Face names by default)."""
    if cfg.num_quantizers < 1:
        raise ConversionError(f"{layout.config_name} gives the codec {cfg.num_quantizers} codebooks")
    src = _Tensors(tensors)
    r, lay = cfg.num_residual_layers, layout
    e, d = f"encoder.{lay.blocks}.", f"decoder.{lay.blocks}."
    # encoder blocks: conv, per ratio ([res] * r, ELU, down conv), LSTM, ELU, conv
    enc, i = {"conv_in": _conv(src, e + "0.", cfg, lay), "blocks": {}, "downs": {}}, 1
    for n in range(len(cfg.upsampling_ratios)):
        enc["blocks"][n] = {j: _res(src, f"{e}{i + j}.", cfg, lay) for j in range(r)}
        enc["downs"][n] = _conv(src, f"{e}{i + r + 1}.", cfg, lay)
        i += r + 2
    enc["lstm"] = _lstm(src, f"{e}{i}.lstm.", cfg)
    enc["conv_out"] = _conv(src, f"{e}{i + 2}.", cfg, lay)
    # decoder blocks: conv, LSTM, per ratio (ELU, up conv, [res] * r), ELU, conv
    dec, i = {"conv_in": _conv(src, d + "0.", cfg, lay), "lstm": _lstm(src, d + "1.lstm.", cfg),
              "ups": {}, "blocks": {}}, 2
    for n in range(len(cfg.upsampling_ratios)):
        dec["ups"][n] = _conv(src, f"{d}{i + 1}.", cfg, lay, transposed=True)
        dec["blocks"][n] = {j: _res(src, f"{d}{i + 2 + j}.", cfg, lay) for j in range(r)}
        i += r + 2
    dec["conv_out"] = _conv(src, f"{d}{i + 1}.", cfg, lay)
    books = [src.pop(f"{lay.quantizer}{q}.{lay.codebook}embed") for q in range(cfg.num_quantizers)]
    for key in [k for k in src.tensors if k.startswith(lay.quantizer)]:
        stage, _, rest = key[len(lay.quantizer):].partition(".")
        if rest in [lay.codebook + s for s in _VQ_STATS]:  # training statistics
            src.tensors.pop(key)
        elif lay.extra_stages_ok and stage.isdigit() and int(stage) >= cfg.num_quantizers:  # unused stages
            src.tensors.pop(key)
    src.check("the EnCodec checkpoint lacks {n} tensors, e.g. {names}; is " + lay.config_name + " the checkpoint's?",
              "{n} EnCodec tensors were not used, e.g. {names}; " + lay.config_name + " does not describe this checkpoint")
    return {"encoder": enc, "decoder": dec, "codebooks": np.stack(books)}


def build_encodec(cfg: EncodecConfig, params: Dict) -> EncodecModel:
    """An `EncodecModel` holding `params`. It is built abstractly (no random initialisation, which
    costs a compilation per parameter shape) and `load_into` then sets every parameter or fails."""
    model = nnx.eval_shape(lambda: EncodecModel(cfg, rngs=nnx.Rngs(0)))
    load_into(model, params)
    return model
