"""Typed, frozen configuration for every part of magnet_jax.

A named setup lives in `configs/NAME.py` as a `get_config() -> Config`; the command line
overrides any leaf with `--config.section.key=value` (see `magnet_jax.config_io`).
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

from magnet_jax.config_checks import check_values


@dataclasses.dataclass(frozen=True)
class LMConfig:
    """The MAGNeT transformer LM, with audiocraft's `transformer_lm` switches."""

    n_q: int = 4  # number of codebooks (parallel token streams)
    card: int = 2048  # codebook size; the mask token id is `card`
    dim: int = 1024
    num_heads: int = 16
    num_layers: int = 24
    hidden_scale: float = 4.0  # feed-forward width = hidden_scale * dim
    activation: str = "gelu"  # exact (erf) GELU, as torch's F.gelu
    norm_first: bool = True  # pre-norm layers + final norm (all released MAGNeT models)
    bias_attn: bool = False
    bias_ff: bool = False
    bias_proj: bool = False  # output heads
    layer_scale: Optional[float] = None  # LayerScale init value; None disables it
    norm_eps: float = 1e-5
    cross_attention: bool = True
    causal: bool = False  # MAGNeT is bidirectional; True for MusicGen-style AR use
    subcodes_context: int = 5  # stages > 0 attend to |t_q - t_k| <= this; -1: unrestricted
    # Masked spans of this many frames, in training (masking/spans.py) and in decoding: the one span
    # length of the model (1 = token masking).
    span_len: int = 3
    # Static stages > 0 (sampling) compute the local attention block-banded instead of
    # masking a T x T score matrix; same result, less work at long T.
    banded_local_attention: bool = True
    # Self-attention: 'xla' (einsum; the parity reference), 'cudnn' (jax.nn.dot_product_attention,
    # cuDNN's fused kernel on GPU) or 'splash' (the Pallas TPU kernel); nn/attention_kernels.py.
    attention_impl: str = "xla"
    max_period: float = 10_000.0
    positional_scale: float = 1.0
    # The reference zeroes padded condition positions but does not mask them in
    # cross-attention; True masks them out properly instead.
    cross_attention_mask: bool = False
    # Initialisation as audiocraft's musicgen_lm: gaussian, depthwise 'current', zero biases.
    weight_init: str = "gaussian"  # 'gaussian' | 'uniform'
    depthwise_init: Optional[str] = "current"  # None | 'current' | 'global'
    dtype: str = "float32"  # compute dtype (bfloat16 on accelerators)
    param_dtype: str = "float32"
    remat: bool = False  # rematerialise each layer in the backward pass
    # What a rematerialised layer keeps from the forward pass (config_checks.REMAT_POLICIES):
    # nothing_saveable (least memory), dots_with_no_batch_dims_saveable (the weight matmuls'
    # outputs), dots_saveable (every matmul's output), everything_saveable (no recompute);
    # offload_dots_with_no_batch_dims: the weight matmuls' outputs moved to host memory until the
    # backward pass needs them (device memory of nothing_saveable, less recompute).
    remat_policy: str = "nothing_saveable"
    # Layers are scanned (one compiled body: fast compile); unroll > 1 trades compile time for speed.
    scan_unroll: int = 1
    # Per-codebook delays of MusicGen's 'delay' codebook pattern; () is MAGNeT's 'parallel' pattern.
    codebook_delays: Tuple[int, ...] = ()
    # 'magnet', or 'hybrid': Hybrid-MAGNeT (an autoregressive prefix over the delay pattern, then
    # MAGNeT's masked stages; train/hybrid.py). Hybrid needs one delay per codebook, not causal.
    kind: str = "magnet"

    @property
    def mask_id(self) -> int:
        return self.card

    @property
    def ffn_dim(self) -> int:
        return int(self.hidden_scale * self.dim)

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads


@dataclasses.dataclass(frozen=True)
class ConditionerConfig:
    """Text condition: a text encoder, then a projection to the LM width."""

    encoder: str = "embedding"  # 'embedding' (learned table, synthetic data) | 't5' (frozen, outside the model)
    vocab_size: int = 64  # for the 'embedding' encoder
    max_text_len: int = 16
    output_dim: int = 768  # text encoder width (t5-base: 768)
    cfg_dropout: float = 0.3  # probability of replacing the whole condition by the null one
    t5_name: str = "t5-base"  # for the 't5' encoder: a Hugging Face name or a local folder
    word_dropout: float = 0.0  # training only: each word of a caption is dropped with this probability
    normalize_text: bool = False  # audiocraft's optional lemmatising text normaliser (needs spacy; unsupported)


@dataclasses.dataclass(frozen=True)
class MaskingConfig:
    """Training's masking; the span length is the model's own, `lm.span_len`."""

    schedule: str = "cosine"  # a name in magnet_jax.masking.schedules


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
    """Sampling settings; defaults are the released music model's."""

    decoding_steps: Tuple[int, ...] = (60, 10, 10, 10)
    temperature: float = 3.0
    anneal_temperature: bool = True
    top_k: int = 0
    top_p: float = 0.9
    use_sampling: bool = True
    max_cfg_coef: float = 10.0
    min_cfg_coef: float = 1.0
    span_scoring: str = "max"  # 'max' | 'prod'
    span_arrangement: str = "nonoverlap"  # 'nonoverlap' | 'stride1'
    schedule: str = "cosine"
    # Speed only (same codes): the last layer, head and sampling run at the smallest of this
    # many static sizes holding a step's masked frames; more sizes save more, compile longer.
    query_buckets: int = 8
    # Hybrid-MAGNeT (lm.kind='hybrid'): seconds decoded autoregressively before MAGNeT's stages.
    hybrid_prefix: float = 3.0


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    optimizer: str = "adamw"  # 'adamw' | 'dadam'
    lr: float = 1e-4
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    max_norm: float = 1.0  # global-norm clipping; 0 disables it
    schedule: str = "cosine"  # 'cosine' | 'inverse_sqrt' | 'constant'
    warmup_steps: int = 4000
    lr_min_ratio: float = 0.0
    ema_decay: float = 0.0  # 0 disables the EMA of parameters
    ema_every: int = 10  # audiocraft updates its EMA every 10 steps


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    num_steps: int = 1_000_000
    global_batch_size: int = 192
    per_device_batch_size: int = 0  # 0: derived as global / number of batch shards
    # Micro-batches per step: the global batch's gradient in this many sequential slices (less
    # activation memory, the same update up to float rounding).
    grad_accum_steps: int = 1
    log_every: int = 50
    eval_every: int = 1000
    eval_batches: int = 2
    # The config-independent evaluation (eval/token_metrics.py) runs at the end of training, and
    # every this many steps when > 0.
    protocol_eval_every: int = 0
    # (start, stop): a profiler trace of steps start..stop-1 in WORKDIR/profile (train/profiling.py).
    profile_steps: Tuple[int, ...] = ()
    checkpoint_every: int = 5000
    keep_checkpoints: int = 3
    async_checkpointing: bool = True
    workdir: str = "runs/default"
    plot: bool = True  # PNG of the loss curves at the end
    smoke_test: bool = False  # synthetic data: exit 1 unless the final verdict is that the run learned


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh and the ordered logical-axis -> mesh-axis rules.

    -1 in a mesh axis takes the remaining devices. A logical axis maps to the first
    rule whose mesh axes are free in that array and divide its dimension; otherwise it
    stays replicated.
    """

    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    # Multi-slice (TPU slices joined over the data-centre network, DCN; on GPUs: hosts): how many
    # slices the data and fsdp axes span. The axes above stay whole-mesh sizes; each slice holds
    # data / dcn_data x fsdp / dcn_fsdp x tensor devices. Both 1 on several slices: data spans them.
    dcn_data: int = 1
    dcn_fsdp: int = 1
    rules: Tuple[Tuple[str, Tuple[str, ...]], ...] = (
        ("batch", ("data", "fsdp")),
        ("embed", ("fsdp",)),
        ("mlp", ("tensor",)),
        ("heads", ("tensor",)),
        ("vocab", ("tensor",)),
        ("kv", ()),
        ("layers", ()),
        ("length", ()),
        ("codebooks", ()),
        ("cond_vocab", ()),
    )


@dataclasses.dataclass(frozen=True)
class DataConfig:
    # 'synthetic' (embedded procedural dataset) | 'tfds' (a token dataset at `dir`) | 'auto' (tfds iff dir is set)
    source: str = "auto"
    dir: str = ""  # 'tfds': the dataset folder written by `magnet-jax tokenize`
    segment_duration: float = 10.0  # seconds
    frame_rate: int = 50  # codec frames per second
    seed: int = 0
    noise: float = 0.1  # synthetic: probability a token is replaced by a uniform one
    # 'tfds' (audiocraft's dataset settings): random crops start in [0, T - min_segment_ratio * segment].
    min_segment_ratio: float = 1.0
    # Caption composition from metadata (audiocraft's text2music train settings; 0 for sound datasets).
    merge_text_p: float = 0.0
    drop_desc_p: float = 0.0
    drop_other_p: float = 0.0
    eval_fraction: float = 0.02  # the dataset's last examples, held out for evaluation
    num_threads: int = 8  # grain reader threads per host (per worker process with num_workers)
    # grain worker processes per host making batches past the GIL (0: threads of the trainer's process).
    # A checkpoint's iterator state resumes only with the same num_workers.
    num_workers: int = 0

    @property
    def num_frames(self) -> int:
        return int(round(self.segment_duration * self.frame_rate))

    @property
    def kind(self) -> str:
        """The data source in use: `source`, with 'auto' resolved by whether `dir` is set."""
        if self.source == "auto":
            return "tfds" if self.dir else "synthetic"
        return self.source


@dataclasses.dataclass(frozen=True)
class Config:
    name: str = "default"
    lm: LMConfig = LMConfig()
    conditioner: ConditionerConfig = ConditionerConfig()
    masking: MaskingConfig = MaskingConfig()
    decode: DecodeConfig = DecodeConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    mesh: MeshConfig = MeshConfig()
    data: DataConfig = DataConfig()

    def __post_init__(self):
        check_values(self)
        if self.lm.dim % self.lm.num_heads:
            raise ValueError(f"lm.dim={self.lm.dim} is not divisible by lm.num_heads={self.lm.num_heads}.")
        if len(self.decode.decoding_steps) != self.lm.n_q:
            raise ValueError(
                f"decode.decoding_steps has {len(self.decode.decoding_steps)} entries but lm.n_q={self.lm.n_q}; "
                "give one step count per codebook."
            )
