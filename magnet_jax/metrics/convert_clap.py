"""LAION CLAP checkpoints (laion_clap training checkpoints: {"state_dict": {"module.<name>": tensor}, ...},
or a bare CLAP state dict) -> `ClapModel`.

Read with the torch-free `load_state_dict_file`. Every tensor of the embedding path is consumed and every
parameter set, or `ConversionError` names what is left. Dropped on purpose (not on the embedding path):
HTS-AT's class heads (`tscam_conv`, `head`), the contrastive-training MLPs (`audio_transform`,
`text_transform`), the logit scales, BatchNorm's `num_batches_tracked` and the Hugging Face buffers
`position_ids` / `token_type_ids` (audiocraft drops `position_ids` too). The Swin index/mask buffers are
checked against the ones computed here.
"""
from __future__ import annotations

import os
from typing import Dict, Mapping, Union

import numpy as np
from flax import nnx

from magnet_jax.convert.audiocraft_lm import ConversionError, TensorSource, load_into
from magnet_jax.convert.torch_pickle import TorchFileError, load_state_dict_file
from magnet_jax.metrics.clap_audio import relative_position_index, shifted_window_mask
from magnet_jax.metrics.clap_model import MUSIC_CLAP, ClapConfig, ClapModel

_DROPPED_PREFIXES = ("audio_branch.tscam_conv.", "audio_branch.head.", "audio_transform.", "text_transform.")
_DROPPED = ("logit_scale_a", "logit_scale_t", "audio_branch.bn0.num_batches_tracked",
            "text_branch.embeddings.position_ids", "text_branch.embeddings.token_type_ids")


def clap_state_dict(raw: Mapping[str, object]) -> Dict[str, np.ndarray]:
    """The CLAP state dict of a laion_clap checkpoint: unwraps `state_dict`, strips DDP's `module.`."""
    sd = raw.get("state_dict", raw)
    if not isinstance(sd, Mapping):
        raise ConversionError(f"the checkpoint's 'state_dict' is a {type(sd).__name__}, not a dict")
    out = {}
    for k, v in sd.items():
        k = k[len("module."):] if k.startswith("module.") else k
        if not isinstance(v, np.ndarray):
            raise ConversionError(f"checkpoint entry {k!r} is a {type(v).__name__}, not a tensor")
        out[k] = v
    return out


def _lin(src: TensorSource, pre: str, bias: bool = True) -> Dict:
    w = src.pop(pre + "weight")
    p = {"kernel": None if w is None else w.T}
    if bias:
        p["bias"] = src.pop(pre + "bias")
    return p


def _ln(src: TensorSource, pre: str) -> Dict:
    return {"scale": src.pop(pre + "weight"), "bias": src.pop(pre + "bias")}


def _check_buffer(src: TensorSource, name: str, want: np.ndarray) -> None:
    got = src.pop(name)
    if got is not None and (got.shape != want.shape or not np.array_equal(got, want)):
        raise ConversionError(f"{name} differs from the Swin geometry of the config (window/resolution)")


def _audio(src: TensorSource, model: ClapModel) -> Dict:
    a = "audio_branch."
    real = src.pop(a + "spectrogram_extractor.stft.conv_real.weight")
    imag = src.pop(a + "spectrogram_extractor.stft.conv_imag.weight")
    patch = src.pop(a + "patch_embed.proj.weight")
    htsat = {
        "stft_real": None if real is None else real[:, 0, :].T,
        "stft_imag": None if imag is None else imag[:, 0, :].T,
        "mel": src.pop(a + "logmel_extractor.melW"),
        "bn_mean": src.pop(a + "bn0.running_mean"), "bn_var": src.pop(a + "bn0.running_var"),
        "bn_w": src.pop(a + "bn0.weight"), "bn_b": src.pop(a + "bn0.bias"),
        "patch_w": None if patch is None else patch.reshape(patch.shape[0], -1).T,
        "patch_b": src.pop(a + "patch_embed.proj.bias"),
        "patch_norm": _ln(src, a + "patch_embed.norm."),
        "norm": _ln(src, a + "norm."),
        "stages": {},
    }
    for i, stage in enumerate(model.audio.htsat.stages):
        pre = f"{a}layers.{i}."
        blocks = {}
        for j, blk in enumerate(stage.blocks):
            b = f"{pre}blocks.{j}."
            blocks[j] = {"norm1": _ln(src, b + "norm1."), "qkv": _lin(src, b + "attn.qkv."),
                         "rel_bias": src.pop(b + "attn.relative_position_bias_table"),
                         "proj": _lin(src, b + "attn.proj."), "norm2": _ln(src, b + "norm2."),
                         "fc1": _lin(src, b + "mlp.fc1."), "fc2": _lin(src, b + "mlp.fc2.")}
            _check_buffer(src, b + "attn.relative_position_index", relative_position_index(blk.window))
            if blk.shift:
                _check_buffer(src, b + "attn_mask", shifted_window_mask(*blk.resolution, blk.window, blk.shift))
        htsat["stages"][i] = {"blocks": blocks}
        if stage.downsample is not None:
            htsat["stages"][i]["downsample"] = {"norm": _ln(src, pre + "downsample.norm."),
                                                "reduction": _lin(src, pre + "downsample.reduction.", bias=False)}
    return {"htsat": htsat, "projection": {"fc1": _lin(src, "audio_projection.0."),
                                           "fc2": _lin(src, "audio_projection.2.")}}


def _text(src: TensorSource, model: ClapModel) -> Dict:
    t = "text_branch."
    e = t + "embeddings."
    roberta = {
        "word": src.pop(e + "word_embeddings.weight"), "pos": src.pop(e + "position_embeddings.weight"),
        "token_type": src.pop(e + "token_type_embeddings.weight"), "embed_norm": _ln(src, e + "LayerNorm."),
        "pooler": _lin(src, t + "pooler.dense."), "layers": {},
    }
    for i in range(model.cfg.text.num_layers):
        pre = f"{t}encoder.layer.{i}."
        roberta["layers"][i] = {
            "q": _lin(src, pre + "attention.self.query."), "k": _lin(src, pre + "attention.self.key."),
            "v": _lin(src, pre + "attention.self.value."), "o": _lin(src, pre + "attention.output.dense."),
            "attn_norm": _ln(src, pre + "attention.output.LayerNorm."),
            "fc1": _lin(src, pre + "intermediate.dense."), "fc2": _lin(src, pre + "output.dense."),
            "ff_norm": _ln(src, pre + "output.LayerNorm."),
        }
    return {"roberta": roberta, "projection": {"fc1": _lin(src, "text_projection.0."),
                                               "fc2": _lin(src, "text_projection.2.")}}


def clap_params(state_dict: Mapping[str, np.ndarray], model: ClapModel) -> Dict:
    """Pure nested param dict for `model` from a CLAP state dict (names without `module.`)."""
    kept = {k: v for k, v in state_dict.items() if not (k in _DROPPED or k.startswith(_DROPPED_PREFIXES))}
    src = TensorSource(kept)
    params = {"audio": _audio(src, model), "text": _text(src, model)}
    if src.missing:
        raise ConversionError(f"the CLAP checkpoint lacks {len(src.missing)} tensors the config needs, e.g. "
                              f"{src.missing[:5]}; is the ClapConfig (HTS-AT depths, RoBERTa layers) the checkpoint's?")
    if src.tensors:
        raise ConversionError(f"{len(src.tensors)} CLAP tensors were not used, e.g. {sorted(src.tensors)[:5]}; "
                              "the ClapConfig does not describe this checkpoint (fusion models are not supported)")
    return params


def read_clap_checkpoint(path: Union[str, os.PathLike]) -> Dict[str, np.ndarray]:
    """The CLAP state dict of a checkpoint file, read without torch."""
    try:
        raw = load_state_dict_file(path)
    except TorchFileError as e:
        if "numpy" not in str(e):
            raise
        # laion_clap's training checkpoints may pickle numpy scalars beside the weights (torch.load needs
        # safe_globals for numpy.core.multiarray.scalar to read them); the allow-listed reader refuses them.
        raise ConversionError(
            f"{e}\nThe weights are under 'state_dict'; keep only them (this runs the pickle, so only for a file "
            "you trust): python -c \"import torch; c = torch.load('IN.pt', map_location='cpu', weights_only=False); "
            "torch.save({'state_dict': c['state_dict']}, 'OUT.pt')\" and load OUT.pt") from e
    return clap_state_dict(raw)


def load_clap(path: Union[str, os.PathLike], config: ClapConfig = MUSIC_CLAP) -> ClapModel:
    """A laion_clap checkpoint file (e.g. music_audioset_epoch_15_esc_90.14.pt) -> `ClapModel`."""
    model = ClapModel(config, rngs=nnx.Rngs(0))
    load_into(model, clap_params(read_clap_checkpoint(path), model))
    return model
