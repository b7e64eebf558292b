"""A training run's set-up: its data source, the frozen text encoder (T5), the train state
(fresh or restored from a checkpoint), the compiled train step and the held-out evaluation.
The loop that uses them is train/trainer.py.
"""
from __future__ import annotations

import logging
from typing import Any, Dict

import jax
import numpy as np
from flax import nnx

from magnet_jax import hub
from magnet_jax.config import Config
from magnet_jax.convert.t5 import load_t5_encoder
from magnet_jax.data.host_batches import process_slice, to_global
from magnet_jax.data.input_pipeline import TokenBatches
from magnet_jax.data.interface import TokenSource
from magnet_jax.data.synthetic import SyntheticMusicTokens
from magnet_jax.parallel.mesh import data_sharding, tree_shardings
from magnet_jax.text.tokenizer import T5Tokenizer
from magnet_jax.train.checkpoint import Checkpointer
from magnet_jax.train.state import abstract_train_state, build_train_state, model_graphdef
from magnet_jax.train.step import make_eval_step, make_train_step

log = logging.getLogger(__name__)


def make_data_source(cfg: Config) -> TokenSource:
    """The run's data (data/interface.py): the synthetic dataset, or a token dataset (`data.dir`)."""
    if cfg.data.kind == "synthetic":
        if cfg.conditioner.encoder != "embedding":
            audio = ("--config.data.source=tfds (data.dir is set but data.source='synthetic' ignores it)"
                     if cfg.data.dir else "--config.data.dir=<a dataset written by `magnet-jax tokenize`>")
            raise ValueError("the synthetic data's captions are ids of its own small vocabulary, not text for "
                             f"conditioner.encoder={cfg.conditioner.encoder!r}: add "
                             f"--config.conditioner.encoder=embedding, or train on your audio with {audio}")
        return SyntheticMusicTokens.from_config(cfg.data, cfg.lm, cfg.conditioner)
    if cfg.data.kind == "tfds":
        if cfg.conditioner.encoder != "t5":
            raise ValueError("data.source='tfds' captions are T5-tokenised: set conditioner.encoder='t5'")
        if not cfg.data.dir:
            raise ValueError("data.source='tfds' needs data.dir, the folder written by `magnet-jax tokenize`")
        tokenizer = T5Tokenizer(t5_folder(cfg), max_length=cfg.conditioner.max_text_len, padding="max_length")
        return token_batches(cfg, tokenizer, process_index=jax.process_index(), process_count=jax.process_count())
    raise ValueError(f"data.source={cfg.data.source!r}: use 'auto', 'synthetic' or 'tfds'.")


def token_batches(cfg: Config, tokenizer, *, process_index: int = 0, process_count: int = 1):
    """The token dataset at `data.dir` as this host of `cfg`'s run reads it (data/input_pipeline.py)."""
    return TokenBatches(cfg.data, tokenizer, cfg.train.global_batch_size // process_count, n_q=cfg.lm.n_q,
                        card=cfg.lm.card, word_dropout=cfg.conditioner.word_dropout,
                        process_index=process_index, process_count=process_count)


def t5_folder(cfg: Config):
    return hub.resolve_component(cfg.conditioner.t5_name, explicit=None, model_dir=None, subfolder="t5",
                                 env_var="MAGNET_JAX_T5_DIR", patterns=hub.T5_FILES, what="T5 encoder")


def frozen_text_encoder(cfg: Config, mesh):
    """(text_encoder fn, frozen params) of the T5 encoder, or (None, None). The parameters are
    placed by the mesh rules, as the LM's: sharded over fsdp/tensor (t5-large on a pod),
    replicated under pure data parallelism."""
    if cfg.conditioner.encoder != "t5":
        return None, None
    t5_cfg, t5 = load_t5_encoder(t5_folder(cfg), dtype=jax.numpy.dtype(cfg.lm.dtype))
    t5_cfg.check_feeds(cfg.conditioner.output_dim)
    graphdef, params = nnx.split(t5)
    params = jax.device_put(params, tree_shardings(params, mesh, cfg.mesh.rules))
    return t5_encoder_fn(graphdef), params


def t5_encoder_fn(graphdef):
    """The frozen T5 as the train step calls it: (params, ids, mask) -> hidden states."""
    return lambda frozen, ids, mask: nnx.merge(graphdef, frozen)(ids, mask)


def data_baselines(data: TokenSource, eval_batches: int = 0, batch_size: int = 0) -> Dict[str, Any]:
    """Reference losses of the data (nats per token): the floor of its noise (expected, and
    per stage on the held-out batches themselves, whose noise varies), and the unigram
    entropy per stage (what a model that ignores all context reaches). A source without
    them (None) has none."""
    out: Dict[str, Any] = {}
    floor = data.noise_floor_nats()
    if floor is not None:
        out["floor_nats"] = float(floor)
    if eval_batches:
        indices = data.eval_indices(0, batch_size)
        if indices is not None:
            indices = np.concatenate([indices] + [data.eval_indices(i, batch_size) for i in range(1, eval_batches)])
            bayes = data.bayes_nats(indices)
            if bayes is not None:
                out["floor_heldout_nats"] = [float(x) for x in bayes]
    unigram = data.unigram_entropy_nats()
    if unigram is not None:
        out["unigram_nats"] = [float(x) for x in np.atleast_1d(unigram)]
    return out


def memory_summary(stats) -> str:
    """One line of a compiled program's per-device memory (XLA's CompiledMemoryStats)."""
    if stats is None:
        return "memory unknown"
    mb = lambda n: f"{n / 2**20:.1f} MB"
    total = stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes \
        - stats.alias_size_in_bytes
    return (f"memory per device {mb(total)} (arguments {mb(stats.argument_size_in_bytes)}, outputs "
            f"{mb(stats.output_size_in_bytes)}, temporaries {mb(stats.temp_size_in_bytes)}, aliased "
            f"{mb(stats.alias_size_in_bytes)})")


def compile_train_step(cfg, graphdef, tx, schedule, shardings, example_batch, mesh, rules, text_encoder=None,
                       frozen_shardings=None):
    """frozen_shardings: the frozen T5's parameter shardings (default: replicated)."""
    step_fn = make_train_step(cfg, graphdef, tx, schedule, text_encoder)
    batch_sh = {k: data_sharding(mesh, rules, v.ndim) for k, v in example_batch.items()}
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    frozen = replicated if frozen_shardings is None else frozen_shardings
    ins = (shardings, batch_sh, replicated) + ((frozen,) if text_encoder is not None else ())
    return jax.jit(step_fn, in_shardings=ins, out_shardings=(shardings, replicated), donate_argnums=0)


def initial_state(cfg: Config, tx, mesh, rules, ckpt: Checkpointer):
    """(start step, graphdef, state, shardings, checkpoint metadata): the newest intact checkpoint
    in `ckpt`, or a fresh state at step 0."""
    extra: Dict[str, Any] = {}
    start = None
    if ckpt.all_steps():
        abstract, shardings = abstract_train_state(cfg, tx, mesh, rules)
        start, state, extra = ckpt.restore_newest_intact(abstract, cfg)
        if start is None:
            log.warning("no intact checkpoint left in %s (the damaged ones are in %s.damaged): training "
                        "starts again from step 0", ckpt.directory, ckpt.directory)
        else:
            graphdef = model_graphdef(cfg)
            log.info("resumed from %s at step %d", ckpt.directory, start)
    if start is None:
        graphdef, state, shardings = build_train_state(cfg, tx, mesh, rules)
    return int(start or 0), graphdef, state, shardings, extra


class HeldOutEval:
    """The run's own held-out evaluation (train/step.make_eval_step), compiled: per-stage CE and
    accuracy averaged over `train.eval_batches` fixed batches, with fixed masking keys."""

    def __init__(self, cfg: Config, graphdef, data: TokenSource, mesh, rules, params, base_key, text_encoder=None,
                 frozen_args=()):
        g, pidx, pcount = cfg.train.global_batch_size, jax.process_index(), jax.process_count()
        self.batches = [to_global(process_slice(data.eval_batch(i, g), pidx, pcount), mesh, rules, g)
                        for i in range(cfg.train.eval_batches)]
        self.key = jax.random.fold_in(base_key, 2**31 - 1)
        self.frozen_args = frozen_args
        self.fn = jax.jit(make_eval_step(cfg, graphdef, text_encoder)).lower(
            params, self.batches[0], self.key, *frozen_args).compile()

    def __call__(self, params) -> Dict[str, np.ndarray]:
        outs = [self.fn(params, b, jax.random.fold_in(self.key, i), *self.frozen_args)
                for i, b in enumerate(self.batches)]
        outs = jax.device_get(outs)
        return {k: np.mean([o[k] for o in outs], axis=0) for k in outs[0]}
