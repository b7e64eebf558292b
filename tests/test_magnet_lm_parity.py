"""The MAGNeT LM against audiocraft's PyTorch modules on the same random weights.

The reference is audiocraft 1.3.0's `StreamingTransformer` with the codebook embeddings,
final norm and heads composed as `LMModel.forward` does, and the stage>0 restricted mask of
`MagnetLMModel.restricted_context_attn_mask`. Its state dict goes through our converter.
"""
import dataclasses

import numpy as np
import pytest
from flax import nnx

from magnet_jax.config import LMConfig
from magnet_jax.convert.audiocraft_lm import ConversionError, load_into, lm_params_from_audiocraft
from magnet_jax.models.magnet_lm import MagnetLM
from tests.reference import require
from tests.reference.audiocraft_modules import load

BASE = LMConfig(n_q=4, card=32, dim=32, num_heads=4, num_layers=2, subcodes_context=3)
VARIANTS = {
    "released": BASE,
    "biases+layer_scale": dataclasses.replace(BASE, bias_attn=True, bias_ff=True, bias_proj=True, layer_scale=0.5),
    "post_norm": dataclasses.replace(BASE, norm_first=False),
}


class _RefLM:
    def __init__(self, torch, tr, cfg: LMConfig, seed=0):
        torch.manual_seed(seed)
        nn = torch.nn
        self.torch, self.cfg = torch, cfg
        self.emb = nn.ModuleList([nn.Embedding(cfg.card + 1, cfg.dim) for _ in range(cfg.n_q)])
        self.transformer = tr.StreamingTransformer(
            d_model=cfg.dim, num_heads=cfg.num_heads, num_layers=cfg.num_layers, dim_feedforward=cfg.ffn_dim,
            dropout=0.0, bias_ff=cfg.bias_ff, bias_attn=cfg.bias_attn, causal=False, custom=True,
            memory_efficient=False, cross_attention=True, layer_scale=cfg.layer_scale, positional_embedding="sin",
            norm="layer_norm", norm_first=cfg.norm_first, activation="gelu")
        self.out_norm = nn.LayerNorm(cfg.dim, eps=1e-5) if cfg.norm_first else None
        self.linears = nn.ModuleList([nn.Linear(cfg.dim, cfg.card, bias=cfg.bias_proj) for _ in range(cfg.n_q)])
        self.modules = nn.ModuleDict({"emb": self.emb, "transformer": self.transformer, "linears": self.linears})
        if self.out_norm is not None:
            self.modules["out_norm"] = self.out_norm
        with torch.no_grad():  # non-trivial values everywhere, norms and biases included
            for name, p in self.modules.named_parameters():
                p.copy_(torch.randn_like(p) * 0.2 + (1.0 if name.endswith("norm1.weight") else 0.0))
        self.modules.eval()

    def state_dict(self):
        return {k: v.detach().numpy() for k, v in self.modules.state_dict().items()}

    def __call__(self, codes, cond, stage):
        torch, cfg = self.torch, self.cfg
        codes, cond = torch.from_numpy(np.asarray(codes)).long(), torch.from_numpy(np.asarray(cond))
        x = sum(self.emb[k](codes[:, k]) for k in range(cfg.n_q))
        mask = None
        if stage > 0:
            pos = torch.arange(codes.shape[-1])
            valid = (pos[:, None] - pos[None, :]).abs() <= cfg.subcodes_context
            mask = torch.where(valid, torch.zeros([]), torch.full([], float("-inf")))
        with torch.no_grad():
            out = self.transformer(x, cross_attention_src=cond, src_mask=mask)
            if self.out_norm is not None:
                out = self.out_norm(out)
            return torch.stack([self.linears[k](out) for k in range(cfg.n_q)], dim=1).numpy()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_logits_match_audiocraft(variant):
    torch = require("torch")
    tr = load("audiocraft.modules.transformer")
    cfg = VARIANTS[variant]
    ref = _RefLM(torch, tr, cfg)
    model = MagnetLM(cfg, rngs=nnx.Rngs(1))
    params, rest = lm_params_from_audiocraft(ref.state_dict(), cfg)
    assert rest == {}
    load_into(model, params)
    rng = np.random.default_rng(0)
    codes = rng.integers(0, cfg.card + 1, (2, cfg.n_q, 20)).astype(np.int32)
    cond = rng.normal(size=(2, 6, cfg.dim)).astype(np.float32)
    cond[0, 4:] = 0.0  # padded positions of a projected condition are zeros
    for stage in range(cfg.n_q):
        expect = ref(codes, cond, stage)
        got = np.asarray(model(codes, cond, stage=stage))
        np.testing.assert_allclose(got, expect, atol=1e-4, rtol=1e-4, err_msg=f"stage {stage}")


def test_converter_reports_missing_and_unused_tensors():
    torch = require("torch")
    tr = load("audiocraft.modules.transformer")
    sd = _RefLM(torch, tr, BASE).state_dict()
    broken = dict(sd)
    broken.pop("transformer.layers.1.linear2.weight")
    with pytest.raises(ConversionError, match=r"lacks 1 LM tensors.*layers\.1\.linear2\.weight"):
        lm_params_from_audiocraft(broken, BASE)
    extra = dict(sd, **{"transformer.layers.2.norm1.weight": np.ones(32, np.float32)})
    with pytest.raises(ConversionError, match=r"not used.*layers\.2\.norm1"):
        lm_params_from_audiocraft(extra, BASE)
    params, _ = lm_params_from_audiocraft(sd, BASE)
    wrong = MagnetLM(dataclasses.replace(BASE, bias_ff=True), rngs=nnx.Rngs(0))
    with pytest.raises(ConversionError, match="left unset"):
        load_into(wrong, params)
