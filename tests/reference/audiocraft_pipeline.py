"""A tiny official-layout MAGNeT model folder, and audiocraft's own loading of it.

    folder = make_magnet_folder(tmp_path)      # state_dict.bin, compression_state_dict.bin,
                                               # encodec_32khz/ (HF EnCodec), t5-base/ (HF T5)
    ref = load_reference_lm(folder)            # audiocraft.models.loaders.load_lm_model_magnet

The LM is audiocraft's `MagnetLMModel`, built by `audiocraft.models.builders.get_lm_model`
from the `xp.cfg` text (so the config keys are audiocraft's, not ours), with random weights,
saved as audiocraft's `export_lm` writes it. Its T5 conditioner loads the folder's tiny T5
(hub names are redirected to the local folder: no download). The codec pointer names
`facebook/encodec_32khz`, as the released models' files do.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from tests.encodec_fixtures import make_encodec
from tests.reference import audiocraft_lm as harness
from tests.reference.xp_cfg import magnet_xp_cfg
from tests.t5_fixtures import make_t5

CARD = 64  # the tiny codec's codebook size
SEGMENT = 1  # seconds (an int, as audiocraft sizes its attention masks with it): 50 frames at 50 Hz


@contextlib.contextmanager
def local_t5(folder: Path):
    """audiocraft's T5Conditioner loads `T5*.from_pretrained(name)`: point every name at `folder`."""
    ac = harness.load_audiocraft()
    cond = ac.conditioners
    originals = cond.T5Tokenizer, cond.T5EncoderModel

    def redirect(cls):
        return type(cls.__name__, (), {"from_pretrained": staticmethod(
            lambda name, *a, **k: cls.from_pretrained(str(folder), *a, **k))})

    cond.T5Tokenizer, cond.T5EncoderModel = redirect(originals[0]), redirect(originals[1])
    try:
        yield
    finally:
        cond.T5Tokenizer, cond.T5EncoderModel = originals


def xp_yaml(**kw) -> str:
    base = dict(dim=32, num_heads=4, num_layers=2, card=CARD, subcodes_context=3, span_len=3,
                segment_duration=SEGMENT, decoding_steps=(6, 3, 3, 2))
    return magnet_xp_cfg(**{**base, **kw})


def make_magnet_folder(root: Path, *, seed: int = 0, **xp_kw) -> Path:
    import torch
    from omegaconf import OmegaConf

    root.mkdir(parents=True, exist_ok=True)
    make_t5(root / "t5-base", d_model=768, num_layers=1, num_heads=2, d_kv=8, d_ff=32, seed=seed)
    make_encodec(root / "encodec_32khz", seed=seed, codebook_size=CARD)
    torch.save({"pretrained": "facebook/encodec_32khz", "exported": True, "version": "1.3.0"},
               root / "compression_state_dict.bin")
    text = xp_yaml(**xp_kw)
    ac = harness.load_audiocraft()
    import importlib

    builders = importlib.import_module("audiocraft.models.builders")
    cfg = OmegaConf.create(text)
    cfg.device, cfg.dtype = "cpu", "float32"
    cfg.transformer_lm.compression_model_framerate = 50  # what load_lm_model_magnet sets
    cfg.transformer_lm.segment_duration = cfg.dataset.segment_duration
    cfg.transformer_lm.span_len = cfg.masking.span_len
    with local_t5(root / "t5-base"), harness._xformers_backend(ac.transformer):
        lm = builders.get_lm_model(cfg)
    harness.randomize_(lm, torch, seed=seed)
    state = {k: v.detach().clone() for k, v in lm.state_dict().items()}
    torch.save({"best_state": state, "xp.cfg": text, "version": "1.3.0", "exported": True}, root / "state_dict.bin")
    return root


def make_musicgen_lm(root: Path, *, seed: int = 0, scale: float = 0.2, xp_text: str = ""):
    """audiocraft's MusicGen `LMModel` (causal, delay pattern, T5 conditioner on the tiny T5 in
    root/t5-base), built by its own builder from a MusicGen `xp.cfg` (`xp_text`, default: this
    module's tiny sizes) with random weights, exported to root/state_dict.bin; returned in eval mode."""
    import importlib

    import torch
    from omegaconf import OmegaConf

    text = xp_text or xp_yaml(lm_model="transformer_lm", causal=True, bias=True, layer_scale=0.1)
    harness.load_audiocraft()  # its import stand-ins first
    builders = importlib.import_module("audiocraft.models.builders")
    cfg = OmegaConf.create(text)
    cfg.device, cfg.dtype = "cpu", "float32"
    with local_t5(root / "t5-base"):
        lm = builders.get_lm_model(cfg)
    harness.randomize_(lm, torch, seed=seed, scale=scale)
    lm.eval()
    torch.save({"best_state": lm.state_dict(), "xp.cfg": text, "version": "1.3.0", "exported": True},
               root / "state_dict.bin")
    return lm


class ReferencePipeline:
    """audiocraft's LM loaded from the folder by its own loader, plus transformers' EnCodec."""

    def __init__(self, folder: Path):
        import importlib

        from transformers import EncodecModel

        self.ac = harness.load_audiocraft()
        loaders = importlib.import_module("audiocraft.models.loaders")
        before = self.ac.transformer._efficient_attention_backend
        try:
            with local_t5(folder / "t5-base"):
                self.lm = loaders.load_lm_model_magnet(str(folder / "state_dict.bin"), compression_model_frame_rate=50,
                                                       device="cpu")
        finally:
            self.ac.transformer._efficient_attention_backend = before
        self.codec = EncodecModel.from_pretrained(str(folder / "encodec_32khz")).eval()

    def _attrs(self, texts):
        attrs = self.ac.conditioners.ConditioningAttributes
        return [attrs(text={"description": t}) for t in texts]

    def generate_codes(self, texts, **kw) -> np.ndarray:
        torch = self.ac.torch
        with harness._xformers_backend(self.ac.transformer), torch.inference_mode():
            out = self.lm.generate(prompt=None, conditions=self._attrs(texts),
                                   max_gen_len=int(SEGMENT * 50), **kw)
        return out.numpy()

    def logits(self, codes, texts, stage) -> np.ndarray:
        torch = self.ac.torch
        with harness._xformers_backend(self.ac.transformer), torch.inference_mode():
            out = self.lm.compute_predictions(torch.from_numpy(np.asarray(codes, np.int64)), self._attrs(texts),
                                              stage=stage)
        return out.logits.float().numpy()

    def decode(self, codes) -> np.ndarray:
        torch = self.ac.torch
        with torch.no_grad():
            return self.codec.decode(torch.from_numpy(np.asarray(codes, np.int64))[None], [None]).audio_values.numpy()
