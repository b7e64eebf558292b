"""audiocraft 1.3.0's real `MagnetLMModel` on CPU, with random weights, for a `LMConfig`.

    ref = build_reference_magnet(lm_cfg, conditions, condition_mask, seq_len=30)
    codes = ref.generate([0, 1], use_sampling=False, decoding_steps=[6, 3, 3, 2], ...)
    logits = ref.logits(codes, [0, 1], stage=2)   # compute_predictions -> [B, K, T, card]
    params, _ = lm_params_from_audiocraft(ref.state_dict_numpy(), lm_cfg)

audiocraft is installed with `pip install --no-deps audiocraft==1.3.0`, so most of its
dependencies are missing. The modules on the import path of `audiocraft.models.lm_magnet`
(conditioners -> chroma, data.audio, environment, quantization, utils.cache ...) only need
those dependencies *to exist* at import time: they are replaced here by stub modules in
`sys.modules` (any attribute is a placeholder class that refuses to be used), and the
audiocraft packages whose `__init__` pulls more (models, data, ...) are registered as bare
packages with the right `__path__`, so only the submodules actually used get imported.

xformers is stubbed with an exact torch implementation of `memory_efficient_attention`:
MAGNeT's restricted (stage > 0) self-attention mask is only honoured on audiocraft's
memory-efficient path with the xformers backend (`loaders.load_lm_model_magnet` selects it;
with the default 'torch' backend the mask would be turned into `is_causal=True`), so the
reference is built with `memory_efficient=True, custom=True` and the backend is switched to
'xformers' for every call into the model (and restored afterwards).

The text condition is a small `TextConditioner` registered as 'description': its
`tokenize` maps "cond:<i>" to row i of a fixed table of PROJECTED conditions given at
construction, and None (the null text that `ClassifierFreeGuidanceDropout(p=1)` puts in for
classifier-free guidance) to a null row of zeros with mask 0, so the reference cross-attends
to exactly the projected condition our JAX LM takes. The conditioner has no parameters
(its `output_proj` is removed; the table is a non-persistent buffer), so the model's state
dict holds the LM only: `emb.*`, `transformer.*`, `out_norm.*`, `linears.*`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.util
import math
import sys
import types
import typing as tp

import numpy as np

_AUDIOCRAFT_PACKAGES = ("audiocraft", "audiocraft.models", "audiocraft.modules", "audiocraft.data",
                        "audiocraft.utils")  # audiocraft.quantization keeps its (light) __init__

# Third-party modules imported (at module level) on the way to lm_magnet, absent with --no-deps.
_STUBBED = ("flashy", "flashy.distrib", "flashy.utils", "omegaconf", "librosa", "librosa.filters", "torchaudio",
            "torchaudio.transforms", "soundfile", "av", "julius", "spacy", "num2words", "transformers")


class ReferenceUnavailable(ImportError):
    pass


# --------------------------------------------------------------------------- stubs


class _Placeholder:
    """Stands for a class/function of a stubbed dependency: fine in annotations and as a base,
    refuses to run."""

    _stub_name = "?"

    def __init__(self, *args, **kwargs):
        raise RuntimeError(f"{self._stub_name} is a stub of tests/reference/audiocraft_lm.py (dependency not installed)")


class _StubModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        placeholder = type(name, (_Placeholder,), {"_stub_name": f"{self.__name__}.{name}"})
        setattr(self, name, placeholder)
        return placeholder


def _import_if_installed(name: str):
    if name in sys.modules:
        return sys.modules[name]
    try:
        if importlib.util.find_spec(name) is not None:
            return importlib.import_module(name)
    except (ImportError, ValueError):
        pass
    return None


def _install_stub(name: str):
    real = _import_if_installed(name)  # the real thing is installed: use it
    if real is not None:
        return real
    module = _StubModule(name)
    module.__path__ = []  # a package, so stubbed submodules (flashy.distrib, ...) can hang below it
    module.__dict__["__audiocraft_lm_stub__"] = True
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    if parent and parent in sys.modules:
        setattr(sys.modules[parent], child, module)
    return module


def _xformers_ops(torch):
    def memory_efficient_attention(query, key, value, attn_bias=None, p=0.0, scale=None, op=None):
        """Exact attention, layout [B, T, H, D]; attn_bias an additive float tensor [B, H, Tq, Tk]."""
        if p != 0.0:
            raise NotImplementedError("the stubbed xformers attention has no dropout")
        if attn_bias is not None and not isinstance(attn_bias, torch.Tensor):
            raise NotImplementedError(f"the stubbed xformers attention takes tensor biases only, got {attn_bias!r}")
        scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
        q = query.float() * scale
        w = torch.einsum("bqhd,bkhd->bhqk", q, key.float())
        if attn_bias is not None:
            w = w + attn_bias.float()
        w = torch.softmax(w, dim=-1)
        return torch.einsum("bhqk,bkhd->bqhd", w, value.float()).to(query.dtype)

    class LowerTriangularMask:
        pass

    ops = types.ModuleType("xformers.ops")
    ops.unbind = torch.unbind
    ops.memory_efficient_attention = memory_efficient_attention
    ops.LowerTriangularMask = LowerTriangularMask
    return ops


def _install_xformers(torch):
    xformers = sys.modules.get("xformers")
    if xformers is not None and not getattr(xformers, "__audiocraft_lm_stub__", False) \
            and getattr(xformers, "__file__", None):
        raise ReferenceUnavailable("a real xformers was imported before this harness, which needs its exact CPU stub")
    ops = _xformers_ops(torch)
    if xformers is None:
        xformers = types.ModuleType("xformers")
        xformers.__path__ = []
        sys.modules["xformers"] = xformers
    # Another harness (tests/reference/audiocraft_modules.py) may have put a unbind-only
    # stub here already: complete it in place, so modules that imported it see the new ops.
    existing = sys.modules.get("xformers.ops")
    if existing is not None:
        for name in ("unbind", "memory_efficient_attention", "LowerTriangularMask"):
            setattr(existing, name, getattr(ops, name))
        ops = existing
    ops.__audiocraft_lm_stub__ = True
    xformers.__audiocraft_lm_stub__ = True
    xformers.ops = ops
    sys.modules["xformers.ops"] = ops


def _register_packages():
    if "audiocraft" in sys.modules:  # maybe a bare package registered by another harness (no __spec__)
        root = list(sys.modules["audiocraft"].__path__)[0]
    else:
        spec = importlib.util.find_spec("audiocraft")
        if spec is None or not spec.submodule_search_locations:
            raise ReferenceUnavailable("audiocraft is not installed: pip install --no-deps audiocraft==1.3.0")
        root = list(spec.submodule_search_locations)[0]
    for name in _AUDIOCRAFT_PACKAGES:
        if name in sys.modules:
            continue
        pkg = types.ModuleType(name)
        sub = name.split(".")[1:]
        pkg.__path__ = ["/".join([root] + sub)]
        pkg.__package__ = name
        sys.modules[name] = pkg
        if sub:
            setattr(sys.modules["audiocraft"], sub[0], pkg)
    sys.modules["audiocraft"].__version__ = "1.3.0"


@dataclasses.dataclass
class _Audiocraft:
    torch: tp.Any
    lm_magnet: tp.Any
    conditioners: tp.Any
    patterns: tp.Any
    transformer: tp.Any


_LOADED: tp.Optional[_Audiocraft] = None


def load_audiocraft() -> _Audiocraft:
    """Imports audiocraft's MAGNeT LM and the modules it is built from (stubbing what's missing)."""
    global _LOADED
    if _LOADED is not None:
        return _LOADED
    try:
        import torch
    except ImportError as e:  # pragma: no cover
        raise ReferenceUnavailable("PyTorch is not installed") from e
    _register_packages()
    _install_xformers(torch)
    # The installed ones first, for real: a stub already in sys.modules (torchaudio) breaks the
    # import of a real one that probes it (transformers), which would then be stubbed in its turn.
    for name in _STUBBED:
        _import_if_installed(name)
    for name in _STUBBED:
        _install_stub(name)
    _LOADED = _Audiocraft(
        torch=torch,
        lm_magnet=importlib.import_module("audiocraft.models.lm_magnet"),
        conditioners=importlib.import_module("audiocraft.modules.conditioners"),
        patterns=importlib.import_module("audiocraft.modules.codebooks_patterns"),
        transformer=importlib.import_module("audiocraft.modules.transformer"),
    )
    return _LOADED


@contextlib.contextmanager
def _xformers_backend(transformer_module, backend: str = "xformers"):
    """The backend audiocraft's MAGNeT loader selects ('xformers'), for the duration of a call.
    'torch' (scaled_dot_product_attention) is faster on CPU but turns the restricted stage > 0
    mask into a causal one: benchmarks only."""
    before = transformer_module._efficient_attention_backend
    transformer_module.set_efficient_attention_backend(backend)
    try:
        yield
    finally:
        transformer_module._efficient_attention_backend = before


# --------------------------------------------------------------------------- the model


def _table_conditioner(ac: _Audiocraft, conditions: np.ndarray, condition_mask: np.ndarray):
    torch = ac.torch
    text_conditioner = ac.conditioners.TextConditioner

    class TableConditioner(text_conditioner):
        """'cond:<i>' -> row i of a table of projected conditions; None -> zeros, mask 0."""

        NULL = -1

        def __init__(self):
            n, s, dim = conditions.shape
            super().__init__(dim=dim, output_dim=dim)
            del self.output_proj  # the table is already projected; no parameters at all
            self.register_buffer("table", torch.from_numpy(np.ascontiguousarray(conditions, np.float32)),
                                 persistent=False)
            self.register_buffer("table_mask", torch.from_numpy(np.asarray(condition_mask, bool)), persistent=False)

        def tokenize(self, x: tp.List[tp.Optional[str]]):
            idx = []
            for text in x:
                if text is None:
                    idx.append(self.NULL)
                elif isinstance(text, str) and text.startswith("cond:"):
                    idx.append(int(text[len("cond:"):]))
                else:
                    raise ValueError(f"TableConditioner takes 'cond:<row>' or None, got {text!r}")
            return torch.tensor(idx, dtype=torch.long)

        def forward(self, inputs):
            null = inputs == self.NULL
            rows = inputs.clamp(min=0)
            embeds = torch.where(null[:, None, None], torch.zeros([]), self.table[rows])
            mask = torch.where(null[:, None], torch.zeros([], dtype=torch.bool), self.table_mask[rows])
            return embeds, mask.int()

    return TableConditioner()


@dataclasses.dataclass
class ReferenceMagnet:
    model: tp.Any  # audiocraft.models.lm_magnet.MagnetLMModel, eval mode
    lm_cfg: tp.Any
    seq_len: int
    audiocraft: _Audiocraft
    backend: str = "xformers"  # 'torch': audiocraft's default backend, wrong at stages > 0 (benchmarks)

    def state_dict_numpy(self) -> tp.Dict[str, np.ndarray]:
        """The LM's tensors (emb.*, transformer.*, out_norm.*, linears.*), what our converter consumes."""
        out = {k: v.detach().cpu().float().numpy().copy() for k, v in self.model.state_dict().items()}
        other = [k for k in out if not k.startswith(("emb.", "transformer.", "out_norm.", "linears."))]
        if other:
            raise AssertionError(f"unexpected non-LM tensors in the reference state dict: {other[:5]}")
        return out

    def load_state_dict_numpy(self, tensors: tp.Mapping[str, np.ndarray]) -> None:
        torch = self.audiocraft.torch
        self.model.load_state_dict({k: torch.from_numpy(np.array(v, np.float32)) for k, v in tensors.items()},
                                   strict=True)

    def attributes(self, indices: tp.Sequence[tp.Optional[int]]):
        """ConditioningAttributes with description 'cond:<i>' (None: the null text)."""
        attrs = self.audiocraft.conditioners.ConditioningAttributes
        return [attrs(text={"description": None if i is None else f"cond:{int(i)}"}) for i in indices]

    def _call(self):
        stack = contextlib.ExitStack()
        stack.enter_context(_xformers_backend(self.audiocraft.transformer, self.backend))
        stack.enter_context(self.audiocraft.torch.inference_mode())
        return stack

    @contextlib.contextmanager
    def tie_probe(self):
        """Records, while active, every span selection of the reference's `generate` whose
        outcome hinges on an exact tie: `scores.topk(k)` with the k-th and (k+1)-th highest
        scores equal, or a least-probable-span search whose ranking of overlapping spans has
        equal scores at a prefix length u the binary search may try. torch's CPU topk/argsort
        break such ties in an implementation-defined order (not by index), so the codes then
        depend on it. The first step of a stage (scores 0, or the -1e4 of the prompt, and every
        frame masked anyway) is not counted. Yields the list of events (dicts)."""
        torch = self.audiocraft.torch
        cls = type(self.model)
        events: tp.List[dict] = []
        orig_topk, orig_lps = torch.Tensor.topk, cls._least_probable_span_masking

        def topk(t, k, *args, **kwargs):
            # (a stage's first step picks exactly its k zero-scored units: never a tie at the cut)
            if t.dim() == 3 and 0 < k < t.shape[-1]:
                srt = torch.sort(t.float(), dim=-1, descending=True).values
                for b in range(t.shape[0]):
                    if srt[b, 0, k - 1] == srt[b, 0, k]:
                        events.append(dict(kind="topk", row=b, k=int(k), value=float(srt[b, 0, k])))
            return orig_topk(t, k, *args, **kwargs)

        def lps(model, scores, num_masked_trg):
            zeros = int((scores == 0).sum())
            first_step = zeros + int((scores == -1e4).sum()) == scores.numel() and zeros == num_masked_trg
            if not first_step:
                span = model.span_len
                srt = torch.sort(scores.unfold(2, span, 1).sum(dim=-1)[0, 0], descending=True).values
                trg = max(num_masked_trg, span)
                for u in range(max(trg // span, 1), min(trg - span + 1, srt.shape[0] - 1) + 1):
                    if srt[u - 1] == srt[u]:
                        events.append(dict(kind="least_probable_spans", u=u, value=float(srt[u])))
                        break
            return orig_lps(model, scores, num_masked_trg)

        torch.Tensor.topk, cls._least_probable_span_masking = topk, lps
        try:
            yield events
        finally:
            torch.Tensor.topk, cls._least_probable_span_masking = orig_topk, orig_lps

    def generate(self, indices: tp.Sequence[tp.Optional[int]], prompt: tp.Optional[np.ndarray] = None,
                 max_gen_len: tp.Optional[int] = None, **decode_kwargs) -> np.ndarray:
        """`MagnetLMModel.generate` (i.e. `_generate_magnet`) -> codes int64 [B, K, T'].

        decode_kwargs: use_sampling, temp, top_k, top_p, max_cfg_coef, min_cfg_coef,
        decoding_steps, anneal_temp, span_scoring, span_arrangement, callback.
        """
        torch = self.audiocraft.torch
        length = self.seq_len if max_gen_len is None else max_gen_len
        if length > self.seq_len:
            raise ValueError(f"the reference's restricted masks were built for {self.seq_len} frames, "
                             f"cannot generate {length}")
        prompt_t = None if prompt is None else torch.from_numpy(np.asarray(prompt, np.int64))
        with self._call():
            out = self.model.generate(prompt=prompt_t, conditions=self.attributes(indices), max_gen_len=length,
                                      **decode_kwargs)
        return out.cpu().numpy()

    def logits(self, codes: np.ndarray, indices: tp.Sequence[tp.Optional[int]], stage: int) -> np.ndarray:
        """`compute_predictions(codes, conditions, stage=stage).logits` -> float32 [B, K, T, card]."""
        torch = self.audiocraft.torch
        codes_t = torch.from_numpy(np.asarray(codes, np.int64))
        if codes_t.shape[-1] > self.seq_len:
            raise ValueError(f"masks built for {self.seq_len} frames, got {codes_t.shape[-1]}")
        with self._call():
            out = self.model.compute_predictions(codes_t, self.attributes(indices), stage=stage)
        return out.logits.float().cpu().numpy()


def randomize_(model, torch, seed: int = 0, scale: float = 0.2) -> None:
    """Non-trivial values everywhere: weights and biases ~ N(0, scale^2), norm weights ~ 1 + N(0, scale^2)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32) * scale
            is_norm_weight = name.endswith(".weight") and ("norm" in name.rsplit(".", 2)[-2])
            p.copy_((noise + (1.0 if is_norm_weight else 0.0)).to(p.dtype))


def build_reference_magnet(lm_cfg, conditions: np.ndarray, condition_mask: np.ndarray, seq_len: int,
                           seed: int = 0, init: str = "random") -> ReferenceMagnet:
    """audiocraft's MagnetLMModel for `lm_cfg` (fp32, CPU, eval), random weights (seed).

    conditions [N, S, dim] float32: projected text conditions (zeros at padded positions),
    addressed by row in `generate`/`logits`; condition_mask [N, S] bool.
    seq_len: the generation length T; the reference's restricted attention masks are built
    for it (compression_model_framerate * segment_duration = T), and serve any T' <= T.
    init: 'random' (non-trivial values everywhere, see `randomize_`), 'audiocraft' (its own
    weight_init/depthwise_init of the config) or 'none' (torch's default init only: fastest,
    for weights loaded afterwards with `load_state_dict_numpy`).
    """
    if init not in ("random", "audiocraft", "none"):
        raise ValueError(f"init must be 'random', 'audiocraft' or 'none', got {init!r}")
    ac = load_audiocraft()
    torch = ac.torch
    c = lm_cfg
    conditions = np.asarray(conditions, np.float32)
    condition_mask = np.asarray(condition_mask, bool)
    if conditions.ndim != 3 or conditions.shape[-1] != c.dim or condition_mask.shape != conditions.shape[:2]:
        raise ValueError(f"conditions must be [N, S, {c.dim}] with mask [N, S], got {conditions.shape}, "
                         f"{condition_mask.shape}")
    if c.cross_attention_mask:
        raise ValueError("audiocraft does not mask padded condition positions: use cross_attention_mask=False")
    if c.norm_eps != 1e-5:
        raise ValueError("audiocraft's layer norms use eps=1e-5")
    if c.activation != "gelu" or not c.cross_attention:
        raise ValueError("the reference MAGNeT LM is built with gelu and cross-attention")
    torch.manual_seed(seed)
    provider = ac.conditioners.ConditioningProvider({"description": _table_conditioner(ac, conditions, condition_mask)},
                                                    device="cpu")
    fuser = ac.conditioners.ConditionFuser(
        fuse2cond={"sum": [], "prepend": [], "cross": ["description"], "input_interpolate": []})
    # codebooks_pattern: {modeling: parallel, parallel: {empty_initial: -1}} in MAGNeT's solver config.
    pattern = ac.patterns.ParallelPatternProvider(n_q=c.n_q, empty_initial=-1)
    hidden_scale = int(c.hidden_scale) if float(c.hidden_scale).is_integer() else c.hidden_scale
    with _xformers_backend(ac.transformer):
        model = ac.lm_magnet.MagnetLMModel(
            pattern_provider=pattern, condition_provider=provider, fuser=fuser,
            subcodes_context=c.subcodes_context, compression_model_framerate=int(seq_len), segment_duration=1,
            span_len=c.span_len,
            n_q=c.n_q, card=c.card, dim=c.dim, num_heads=c.num_heads, hidden_scale=hidden_scale,
            norm="layer_norm", norm_first=c.norm_first, bias_proj=c.bias_proj,
            weight_init=c.weight_init if init == "audiocraft" else None,
            depthwise_init=c.depthwise_init if init == "audiocraft" else None, zero_bias_init=init == "audiocraft",
            cfg_dropout=0.0, cfg_coef=1.0, two_step_cfg=False,
            # -> StreamingTransformer
            num_layers=c.num_layers, dropout=0.0, bias_ff=c.bias_ff, bias_attn=c.bias_attn, causal=False,
            custom=True, memory_efficient=True, attention_as_float32=False, cross_attention=True,
            layer_scale=c.layer_scale, positional_embedding="sin", max_period=c.max_period,
            positional_scale=c.positional_scale, activation="gelu",
            device="cpu", dtype=torch.float32,
        )
    if init == "random":
        randomize_(model, torch, seed=seed)
    model.eval()
    return ReferenceMagnet(model=model, lm_cfg=lm_cfg, seq_len=int(seq_len), audiocraft=ac)
