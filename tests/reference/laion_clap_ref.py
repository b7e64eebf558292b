"""laion_clap's PyTorch CLAP (laion-clap==1.1.7 + torchlibrosa==0.1.0, installed --no-deps) as a parity
reference, in tiny configurations with random weights and no downloads.

laion_clap's package `__init__` pulls in its training code (librosa, h5py, webdataset, torchvision, wget, ...).
`clap_modules()` imports only `clap_module.model` / `clap_module.htsat` (the CLAP model), with stand-ins
for what those import: librosa (tests/reference/librosa_standin.py, exact for the functions used), and
two placeholders never called on the embedding path: `h5py` (an empty module) and
`torchvision.ops.misc.FrozenBatchNorm2d` (raises if built). Everything it adds to sys.modules is removed
when the context exits.
"""
import contextlib
import importlib
import importlib.util
import os
import sys
import types
from unittest import mock

import numpy as np
import pytest

from tests.reference import librosa_standin

INSTALL = "pip install --no-deps laion-clap==1.1.7 torchlibrosa==0.1.0"


class FrozenBatchNorm2d:
    def __init__(self, *a, **k):
        raise NotImplementedError("stand-in torchvision: FrozenBatchNorm2d is not on the CLAP embedding path")


def placeholder_modules():
    h5py = types.ModuleType("h5py")
    tv, ops, misc = (types.ModuleType(n) for n in ("torchvision", "torchvision.ops", "torchvision.ops.misc"))
    misc.FrozenBatchNorm2d = FrozenBatchNorm2d
    tv.ops, ops.misc = ops, misc
    return {"h5py": h5py, "torchvision": tv, "torchvision.ops": ops, "torchvision.ops.misc": misc}


@contextlib.contextmanager
def clap_modules():
    """Yields (clap_module.model, clap_module.htsat) imported against the stand-ins; cleans sys.modules."""
    spec = importlib.util.find_spec("laion_clap")
    if spec is None or importlib.util.find_spec("torchlibrosa") is None:
        pytest.fail(f"the parity reference laion_clap/torchlibrosa is missing; install it: {INSTALL}")
    pkg_dir = os.path.join(os.path.dirname(spec.origin), "clap_module")
    standins = {**librosa_standin.modules(), **placeholder_modules()}
    # Set aside what is there already (e.g. the audiocraft harness's librosa stub, or a torchlibrosa
    # imported against it): laion_clap must import against the stand-ins; all comes back afterwards.
    shadowed = [n for n in sys.modules if n in standins or n.split(".")[0] in ("librosa", "torchlibrosa")]
    saved = {n: sys.modules.pop(n) for n in shadowed}
    import transformers  # resolved before the stand-ins: transformers probes for torchvision with find_spec

    for name in ("BertModel", "RobertaModel", "BartModel", "RobertaTokenizer", "BertTokenizer", "BartTokenizer"):
        getattr(transformers, name)
    # Only what imports against the stand-ins is removed afterwards: torch and transformers modules
    # stay (imported twice, torch.distributed registers its operator library twice and fails).
    before = set(sys.modules)
    pkg = types.ModuleType("clap_module")  # the package without its __init__ (training-code imports)
    pkg.__path__ = [pkg_dir]
    try:
        sys.modules.update(standins)
        sys.modules["clap_module"] = pkg
        yield importlib.import_module("clap_module.model"), importlib.import_module("clap_module.htsat")
    finally:
        for name in set(sys.modules) - before:
            if name.split(".")[0] not in ("torch", "transformers"):
                del sys.modules[name]
        sys.modules.update(saved)


TINY_AUDIO = dict(sample_rate=16000, clip_samples=15360, window_size=256, hop_size=64, mel_bins=16,
                  fmin=50, fmax=8000, class_num=5, model_type="HTSAT", model_name="tiny", audio_length=256)
TINY_HTSAT = dict(spec_size=64, patch_size=4, patch_stride=(4, 4), embed_dim=16, depths=[2, 1],
                  num_heads=[2, 4], window_size=8)
TINY_ROBERTA = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=64, max_position_embeddings=80, type_vocab_size=1,
                    layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2)
JOINT = 24


def build_tiny_clap(model_mod, htsat_mod, seed=0):
    """laion_clap `CLAP` with a tiny HTS-AT and a tiny random RoBERTa (the real constructor hard-codes
    HTSAT's 256-bin image and RoBERTa's 768 width and downloads roberta-base; both are swapped)."""
    import torch
    import transformers

    torch.manual_seed(seed)
    roberta = transformers.RobertaModel(transformers.RobertaConfig(**TINY_ROBERTA))

    def tiny_htsat(cfg, enable_fusion=False, fusion_type="None"):
        return htsat_mod.HTSAT_Swin_Transformer(num_classes=cfg.class_num, config=cfg, **TINY_HTSAT)

    with mock.patch.object(model_mod, "create_htsat_model", tiny_htsat), \
            mock.patch.object(model_mod, "RobertaModel", types.SimpleNamespace(from_pretrained=lambda *_: roberta)):
        clap = model_mod.CLAP(embed_dim=TINY_HTSAT["embed_dim"] * 2 ** (len(TINY_HTSAT["depths"]) - 1),
                              audio_cfg=dict(TINY_AUDIO),
                              text_cfg=dict(context_length=77, vocab_size=100, width=32, heads=4, layers=2,
                                            model_type="roberta"),
                              joint_embed_shape=JOINT)
    clap.text_projection = torch.nn.Sequential(torch.nn.Linear(32, JOINT), torch.nn.ReLU(),
                                               torch.nn.Linear(JOINT, JOINT))
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # make every learned tensor (biases, norms included) non-trivial
        for name, p in clap.named_parameters():
            if "extractor" in name:
                continue  # the frozen STFT / mel matrices
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
        bn = clap.audio_branch.bn0
        bn.running_mean.copy_(-30.0 + 5.0 * torch.randn(bn.running_mean.shape, generator=gen))
        bn.running_var.copy_(200.0 + 50.0 * torch.rand(bn.running_var.shape, generator=gen))
    return clap.eval()


def save_checkpoint(clap, path, drop=(), extra=None):
    """torch.save in laion_clap's training-checkpoint layout ({"epoch", "state_dict": {"module.<k>": ...}})."""
    import torch

    sd = {"module." + k: v for k, v in clap.state_dict().items() if k not in drop}
    sd.update(extra or {})
    torch.save({"epoch": 1, "name": "tiny", "state_dict": sd}, path)


def torch_audio_embeddings(clap, clips):
    import torch

    with torch.no_grad():
        data = [{"waveform": torch.as_tensor(np.asarray(c, np.float32)), "longer": torch.tensor([False])}
                for c in clips]
        return clap.get_audio_embedding(data).numpy()


def torch_text_embeddings(clap, ids, mask):
    import torch

    with torch.no_grad():
        return clap.get_text_embedding({"input_ids": torch.as_tensor(np.asarray(ids, np.int64)),
                                        "attention_mask": torch.as_tensor(np.asarray(mask, np.int64))}).numpy()
