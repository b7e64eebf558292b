"""hear21passt checkpoints -> `magnet_jax.metrics.passt.PaSST`.

Accepted layouts (read with the project's torch-free reader, never torch.load):
- the released AudioSet weights (e.g. passt-s-f128-20sec-p16-s10-ap.474-swa.pt): a state dict of the
  `PaSST` net (`patch_embed.proj.weight`, `blocks.0.attn.qkv.weight`, ..., `head.1.weight`,
  `head_dist.weight`), possibly wrapped as {'model': state_dict} (hear21passt's loader unwraps it too);
- the state dict of hear21passt's `PasstBasicWrapper` (`net.` prefix, plus the wrapper's `device_proxy`,
  a dummy zero used only to find the device, which is consumed and dropped; the mel front end has no
  persistent tensors).

Every tensor is consumed and every parameter set, or `ConversionError` names what is left. A patch
embedding with 3 input channels (ImageNet-style) is summed to one, as hear21passt's `adapt_input_conv`
does when it loads pretrained weights; ImageNet ViT checkpoints (a 2-D `pos_embed` instead of PaSST's
frequency/time embeddings) are refused.
"""
from __future__ import annotations

import os
from typing import Dict, Mapping, Union

import numpy as np
from flax import nnx

from magnet_jax.convert.common import ConversionError, TensorSource, load_into
from magnet_jax.convert.torch_pickle import load_state_dict_file
from magnet_jax.metrics.passt import PASST_CONFIGS, PaSST, PasstConfig

StateDict = Mapping[str, np.ndarray]


def _unwrap(tensors: Mapping) -> Dict[str, np.ndarray]:
    if "model" in tensors and isinstance(tensors["model"], Mapping):
        if len(tensors) != 1:
            raise ConversionError(f"the checkpoint has a 'model' dict next to {sorted(k for k in tensors if k != 'model')[:4]}")
        tensors = tensors["model"]
    src = dict(tensors)
    if any(k.startswith("net.") for k in src):  # PasstBasicWrapper
        src.pop("device_proxy", None)
        stray = sorted(k for k in src if not k.startswith("net."))
        if stray:
            raise ConversionError(f"a PasstBasicWrapper state dict with {len(stray)} tensors outside `net.`, "
                                  f"e.g. {stray[:4]}")
        src = {k[len("net."):]: v for k, v in src.items()}
    bad = sorted(k for k, v in src.items() if not isinstance(v, np.ndarray))
    if bad:
        raise ConversionError(f"checkpoint entries that are not tensors: {bad[:4]}")
    return src


def infer_config(tensors: StateDict) -> PasstConfig:
    """The released model whose time positional embedding has this checkpoint's length (10/20/30 s)."""
    src = _unwrap(tensors)
    if "pos_embed" in src and "time_new_pos_embed" not in src:
        raise ConversionError("this is an ImageNet ViT/DeiT checkpoint (a 2-D pos_embed), not a PaSST AudioSet one")
    if "time_new_pos_embed" not in src:
        raise ConversionError("the checkpoint has no time_new_pos_embed: not a hear21passt PaSST state dict")
    t = src["time_new_pos_embed"].shape[-1]
    for name, cfg in PASST_CONFIGS.items():
        if cfg.grid[1] == t:
            return cfg
    raise ConversionError(f"no released PaSST config has {t} time positions ({[c.grid[1] for c in PASST_CONFIGS.values()]} "
                          f"for {list(PASST_CONFIGS)}); pass config= explicitly")


def passt_params_from_torch(tensors: StateDict, config: PasstConfig) -> Dict:
    """hear21passt state dict -> the nested param dict of `PaSST(config)` (float32 numpy)."""
    src = TensorSource(_unwrap(tensors))
    if "pos_embed" in src and "time_new_pos_embed" not in src:
        raise ConversionError("this is an ImageNet ViT/DeiT checkpoint (a 2-D pos_embed), not a PaSST AudioSet one")
    pop = src.pop

    def norm(prefix):
        return {"scale": pop(prefix + ".weight"), "bias": pop(prefix + ".bias")}

    def linear(prefix):
        return {"kernel": pop(prefix + ".weight", True), "bias": pop(prefix + ".bias")}

    def squeeze(v, axes, name):
        if v is None:
            return None
        for a in sorted(axes, reverse=True):
            if v.ndim <= a or v.shape[a] != 1:
                raise ConversionError(f"{name} has shape {v.shape}; expected size 1 on axes {axes}")
        return np.squeeze(v, axis=tuple(axes))

    kernel = pop("patch_embed.proj.weight")  # [D, C, P, P]
    if kernel is not None:
        if kernel.ndim != 4:
            raise ConversionError(f"patch_embed.proj.weight has shape {kernel.shape}; expected [D, C, P, P] "
                                  "(pre-conv linear patch embeddings are not supported)")
        if kernel.shape[1] == 3 and config.in_chans == 1:
            kernel = kernel.sum(axis=1, keepdims=True)  # hear21passt's adapt_input_conv
        kernel = kernel.transpose(2, 3, 1, 0)  # -> HWIO
    time_pos = squeeze(pop("time_new_pos_embed"), (0, 2), "time_new_pos_embed")  # [1, D, 1, T] -> [D, T]
    freq_pos = squeeze(pop("freq_new_pos_embed"), (0, 3), "freq_new_pos_embed")  # [1, D, F, 1] -> [D, F]
    cls = squeeze(pop("cls_token"), (0, 1), "cls_token")
    dist = squeeze(pop("dist_token"), (0, 1), "dist_token")
    token_pos = squeeze(pop("new_pos_embed"), (0,), "new_pos_embed")
    blocks = {}
    for i in range(config.depth):
        pre = f"blocks.{i}."
        blocks[i] = {
            "norm1": norm(pre + "norm1"),
            "qkv": linear(pre + "attn.qkv"),
            "proj": linear(pre + "attn.proj"),
            "norm2": norm(pre + "norm2"),
            "fc1": linear(pre + "mlp.fc1"),
            "fc2": linear(pre + "mlp.fc2"),
        }
        if not config.qkv_bias:
            blocks[i]["qkv"].pop("bias")
    params = {
        "patch_kernel": kernel,
        "patch_bias": pop("patch_embed.proj.bias"),
        "cls_token": cls,
        "dist_token": dist,
        "token_pos_embed": token_pos,
        "freq_pos_embed": None if freq_pos is None else freq_pos.T,
        "time_pos_embed": None if time_pos is None else time_pos.T,
        "blocks": blocks,
        "norm": norm("norm"),
        "head_norm": norm("head.0"),
        "head": linear("head.1"),
        "head_dist": linear("head_dist"),
    }
    src.check("the PaSST checkpoint lacks {n} tensors, e.g. {names}; is the config (depth=" + str(config.depth)
              + ") the checkpoint's?",
              "{n} PaSST checkpoint tensors were not used, e.g. {names}; the config (depth=" + str(config.depth)
              + ") does not describe this checkpoint")
    return params


def load_passt(path_or_state_dict: Union[str, os.PathLike, StateDict],
               config: Union[None, str, PasstConfig] = None, *, precision=None) -> PaSST:
    """A `PaSST` with the checkpoint's weights. `config=None` picks the released model (10/20/30 s)
    from the checkpoint's time positional embedding; a name of `PASST_CONFIGS` or a `PasstConfig`
    is used as given. `precision`: the transformer's matmul precision (see `PaSST`)."""
    if isinstance(config, str):
        if config not in PASST_CONFIGS:
            raise ValueError(f"unknown PaSST config {config!r}; known: {sorted(PASST_CONFIGS)}")
        config = PASST_CONFIGS[config]
    if isinstance(path_or_state_dict, Mapping):
        tensors = dict(path_or_state_dict)
    else:
        tensors = load_state_dict_file(path_or_state_dict)
    if config is None:
        config = infer_config(tensors)
    params = passt_params_from_torch(tensors, config)
    # Abstract parameters (no random draw for the 86M of the release); load_into sets every one.
    model = nnx.eval_shape(lambda: PaSST(config, rngs=nnx.Rngs(0), precision=precision))
    load_into(model, params)
    return model

