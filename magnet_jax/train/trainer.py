"""The training loop: mesh, sharded state, compiled step, data, metrics, checkpoints, plot.

Resumable: if `train.workdir` holds a checkpoint the run continues from it, and because the
step key is `fold_in(seed, step)` and the data are indexed by step (or, for datasets, read by
an iterator whose state is checkpointed), the continued run is bitwise the run that was never
interrupted.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from typing import Any, Dict, Optional

import jax
import numpy as np

from magnet_jax.atomic_files import write_json_atomically
from magnet_jax.config import Config
from magnet_jax.config_io import format_config
from magnet_jax.data.host_batches import BatchReader, check_batch_sizes, host_iterator_state, process_slice, to_global
from magnet_jax.eval.token_metrics import format_summary, protocol_evaluator
from magnet_jax.parallel.distributed import barrier
from magnet_jax.parallel.logical import axis_rules
from magnet_jax.parallel.mesh import data_sharding, make_mesh, tree_shardings
from magnet_jax.run_lock import RunLock
from magnet_jax.train.checkpoint import Checkpointer
from magnet_jax.train.metrics import MetricsWriter, summarise_train_window
from magnet_jax.train.optimizer import make_optimizer
from magnet_jax.train.plot import plot_loss_curves
from magnet_jax.train.preemption import PreemptionWatch
from magnet_jax.train.profiling import StepProfiler
from magnet_jax.train.progress import StepProgress
from magnet_jax.train.state import abstract_train_state, build_train_state, model_graphdef
from magnet_jax.train.step import make_eval_step, make_train_step

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainResult:
    state: Any
    step: int
    last_train: Optional[Dict[str, Any]]
    last_eval: Optional[Dict[str, Any]]
    baselines: Dict[str, Any]
    workdir: str
    plot_path: Optional[str] = None
    graphdef: Any = None
    data: Any = None
    preempted: bool = False  # stopped early by SIGTERM, with a checkpoint
    protocol_eval: Optional[Dict[str, Any]] = None  # the config-independent evaluation (eval/token_metrics.py)


def make_data_source(cfg: Config):
    if cfg.data.kind == "synthetic":
        if cfg.conditioner.encoder != "embedding":
            audio = ("--config.data.source=tfds (data.dir is set but data.source='synthetic' ignores it)"
                     if cfg.data.dir else "--config.data.dir=<a dataset written by `magnet-jax tokenize`>")
            raise ValueError("the synthetic data's captions are ids of its own small vocabulary, not text for "
                             f"conditioner.encoder={cfg.conditioner.encoder!r}: add "
                             f"--config.conditioner.encoder=embedding, or train on your audio with {audio}")
        from magnet_jax.data.synthetic import SyntheticMusicTokens

        return SyntheticMusicTokens.from_config(cfg.data, cfg.lm, cfg.conditioner)
    if cfg.data.kind == "tfds":
        from magnet_jax.data.input_pipeline import TokenBatches
        from magnet_jax.text.tokenizer import T5Tokenizer

        if cfg.conditioner.encoder != "t5":
            raise ValueError("data.source='tfds' captions are T5-tokenised: set conditioner.encoder='t5'")
        if not cfg.data.dir:
            raise ValueError("data.source='tfds' needs data.dir, the folder written by `magnet-jax tokenize`")
        tokenizer = T5Tokenizer(t5_folder(cfg), max_length=cfg.conditioner.max_text_len, padding="max_length")
        return TokenBatches(cfg, tokenizer, process_index=jax.process_index(), process_count=jax.process_count())
    raise ValueError(f"data.source={cfg.data.source!r}: use 'auto', 'synthetic' or 'tfds'.")


def t5_folder(cfg: Config):
    from magnet_jax import hub

    return hub.resolve_component(cfg.conditioner.t5_name, explicit=None, model_dir=None, subfolder="t5",
                                 env_var="MAGNET_JAX_T5_DIR", patterns=hub.T5_FILES, what="T5 encoder")


def frozen_text_encoder(cfg: Config, mesh):
    """(text_encoder fn, frozen params) of the T5 encoder, or (None, None). The parameters are
    placed by the mesh rules, as the LM's: sharded over fsdp/tensor (t5-large on a pod),
    replicated under pure data parallelism."""
    if cfg.conditioner.encoder != "t5":
        return None, None
    from flax import nnx

    from magnet_jax.convert.t5 import load_t5_encoder

    t5_cfg, t5 = load_t5_encoder(t5_folder(cfg), dtype=jax.numpy.dtype(cfg.lm.dtype))
    t5_cfg.check_feeds(cfg.conditioner.output_dim)
    graphdef, params = nnx.split(t5)
    params = jax.device_put(params, tree_shardings(params, mesh, cfg.mesh.rules))
    return t5_encoder_fn(graphdef), params


def t5_encoder_fn(graphdef):
    """The frozen T5 as the train step calls it: (params, ids, mask) -> hidden states."""
    from flax import nnx

    return lambda frozen, ids, mask: nnx.merge(graphdef, frozen)(ids, mask)


def data_baselines(data, eval_batches: int = 0, batch_size: int = 0) -> Dict[str, Any]:
    """Reference losses of the data (nats per token): the floor of its noise (expected, and
    per stage on the held-out batches themselves, whose noise varies), and the unigram
    entropy per stage (what a model that ignores all context reaches)."""
    out: Dict[str, Any] = {}
    if hasattr(data, "noise_floor_nats"):
        out["floor_nats"] = float(data.noise_floor_nats())
    if hasattr(data, "bayes_nats") and eval_batches:
        indices = np.concatenate([data.eval_indices(i, batch_size) for i in range(eval_batches)])
        out["floor_heldout_nats"] = [float(x) for x in data.bayes_nats(indices)]
    if hasattr(data, "unigram_entropy_nats"):
        out["unigram_nats"] = [float(x) for x in np.atleast_1d(data.unigram_entropy_nats())]
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


def train(cfg: Config, *, progress: bool = True, stop_after: Optional[int] = None, plot: Optional[bool] = None,
          devices=None) -> TrainResult:
    """Trains `cfg` (resuming from `train.workdir` if it holds checkpoints).

    stop_after: stop (with a checkpoint) after this many steps of this run -- simulates an
    interruption in tests and lets jobs run in bounded slices.
    devices: the devices of the run's mesh (default: all); a sweep trains several points at once
    on disjoint groups of devices.

    One run per workdir: process 0 locks it (a second run is refused, naming the first). A
    workdir this call created is removed again if the run fails before writing anything in it.
    """
    workdir = os.path.abspath(cfg.train.workdir)
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ValueError(f"train.workdir={cfg.train.workdir} is a file, not a folder: give a folder")
    created = not os.path.exists(workdir)
    os.makedirs(workdir, exist_ok=True)
    lock = RunLock(workdir, f"train.workdir {workdir}") if jax.process_index() == 0 else None
    watch = PreemptionWatch()  # from the start: a notice during compilation stops after the first step
    try:
        if lock is not None:
            lock.acquire()
        return _train(cfg, workdir, progress, stop_after, plot, watch, devices)
    except BaseException:
        if created and jax.process_index() == 0 and not _has_results(workdir):
            lock.release()
            shutil.rmtree(workdir, ignore_errors=True)  # it failed before training: leave no empty run behind
        raise
    finally:
        watch.close()
        if lock is not None:
            lock.release()


def _has_results(workdir: str) -> bool:
    """Whether a run wrote anything worth keeping in `workdir` (metrics or a checkpoint)."""
    ckpts = os.path.join(workdir, "checkpoints")
    return os.path.exists(os.path.join(workdir, "metrics.jsonl")) or (os.path.isdir(ckpts) and bool(os.listdir(ckpts)))


def _train(cfg: Config, workdir: str, progress: bool, stop_after: Optional[int], plot: Optional[bool],
           watch: PreemptionWatch, devices=None) -> TrainResult:
    tcfg = cfg.train
    mesh = make_mesh(cfg.mesh, devices)
    rules = cfg.mesh.rules
    data = make_data_source(cfg)
    baselines = data_baselines(data, tcfg.eval_batches, tcfg.global_batch_size)
    tx, schedule = make_optimizer(cfg.optim, tcfg.num_steps)
    with jax.set_mesh(mesh), axis_rules(rules):
        per_device = check_batch_sizes(cfg, mesh, rules)
        ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=tcfg.keep_checkpoints,
                            async_save=tcfg.async_checkpointing)
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
        start = int(start or 0)
        if jax.process_index() == 0:
            with open(os.path.join(workdir, "config.txt"), "w") as f:
                f.write(format_config(cfg) + "\n")

        pidx, pcount = jax.process_index(), jax.process_count()
        g = tcfg.global_batch_size

        text_encoder, frozen = frozen_text_encoder(cfg, mesh)
        frozen_args = () if text_encoder is None else (frozen,)
        reader = BatchReader(data, g, pidx, pcount, start, host_iterator_state(extra, pidx, pcount))

        def host_batch(step):
            return to_global(reader.read(step), mesh, rules, g)

        first = host_batch(start)
        step_fn = compile_train_step(cfg, graphdef, tx, schedule, shardings, first, mesh, rules, text_encoder,
                                     None if frozen is None else jax.tree.map(lambda x: x.sharding, frozen))
        base_key = jax.random.key(tcfg.seed)
        t0 = time.time()
        compiled = step_fn.lower(state, first, base_key, *frozen_args).compile()
        compile_s = time.time() - t0
        log.info("train step compiled in %.1fs; per-device batch %d; %s", compile_s, per_device,
                 memory_summary(compiled.memory_analysis()))

        eval_batches = [to_global(process_slice(data.eval_batch(i, g), pidx, pcount), mesh, rules, g)
                        for i in range(tcfg.eval_batches)]
        eval_key = jax.random.fold_in(base_key, 2**31 - 1)
        eval_fn = jax.jit(make_eval_step(cfg, graphdef, text_encoder)).lower(
            state.params, eval_batches[0], eval_key, *frozen_args).compile()

        def evaluate(params):
            outs = [eval_fn(params, b, jax.random.fold_in(eval_key, i), *frozen_args)
                    for i, b in enumerate(eval_batches)]
            outs = jax.device_get(outs)
            return {k: np.mean([o[k] for o in outs], axis=0) for k in outs[0]}

        protocol_eval = protocol_evaluator(cfg, graphdef, data, mesh, text_encoder)

        def evaluate_by_protocol(step, params):
            result = protocol_eval(params, *frozen_args)
            writer.write(step, "protocol", {k: result[k] for k in ("ce_cosine", "ce_cosine_per_stage", "acc_cosine",
                                                                   "ce", "acc")})
            log.info("step %d %s", step, format_summary(result).replace("\n", "\n  "))
            return result

        writer = MetricsWriter(workdir, start_step=start)
        if writer.enabled and writer.dropped:
            log.info("metrics.jsonl: %d rows past step %d (written before the interruption; this run writes them "
                     "again) moved to metrics.dropped.jsonl", writer.dropped, start)
        end = tcfg.num_steps if stop_after is None else min(tcfg.num_steps, start + stop_after)
        bar = StepProgress(tcfg.num_steps, start, f"train {cfg.name}", enabled=progress and jax.process_index() == 0)
        window, last_train, last_eval, last_protocol = [], None, None, None
        protocol_every = tcfg.protocol_eval_every
        batch = first
        preempted = False
        profiler = StepProfiler(tcfg.profile_steps, workdir)
        barrier("magnet_jax train start")  # the processes compiled at their own pace
        try:
            for step in range(start, end):
                with profiler.step(step):
                    state, metrics = compiled(state, batch, jax.random.fold_in(base_key, step), *frozen_args)
                profiler.after(step, (state, metrics), last=step + 1 == end)
                window.append(metrics)
                bar.dispatched(metrics["loss"])
                done = step + 1
                if done < end:
                    batch = host_batch(done)  # prepared while the device computes
                preempted = watch.stop_at(done)
                log_now = done % tcfg.log_every == 0 or done == end or preempted
                save_now = done % tcfg.checkpoint_every == 0 or done == end or preempted
                if (log_now or save_now) and not np.isfinite(float(metrics["loss"])):
                    raise FloatingPointError(
                        f"the loss is not finite at step {done}: the model diverged. The last good checkpoint "
                        f"in {ckpt.directory} is intact; lower optim.lr or raise optim.warmup_steps and resume.")
                if log_now:
                    last_train = summarise_train_window(jax.device_get(window))
                    window = []
                    writer.write(done, "train", last_train)
                    bar.show(loss=f"{last_train['loss']:.3f}", acc=f"{last_train['acc']:.2f}")
                if done % tcfg.eval_every == 0 or done == tcfg.num_steps:
                    with bar.paused():
                        last_eval = evaluate(state.params)
                    writer.write(done, "eval", last_eval)
                    log.info("step %d eval ce per stage %s", done, np.round(last_eval["ce_per_stage"], 3))
                    if "ce_prefix" in last_eval:  # Hybrid-MAGNeT's autoregressive part
                        log.info("step %d eval ce of the autoregressive prefix %.3f", done,
                                 float(np.mean(last_eval["ce_prefix"])))
                if done == tcfg.num_steps or (protocol_every > 0 and done % protocol_every == 0):
                    with bar.paused():
                        last_protocol = evaluate_by_protocol(done, state.params)
                if save_now:
                    ckpt.save(done, state, cfg, {"data_step": done, "seed": tcfg.seed, **reader.state_at(done)},
                              force=done == end or preempted)
                if preempted:
                    log.warning("pre-empted (SIGTERM): stopped after step %d with a checkpoint in %s; run the same "
                                "command again to resume", done, ckpt.directory)
                    end = done
                    break
            bar.finish_pending()
            if last_eval is None and not preempted:  # nothing left to train (resumed at the end): still report
                last_eval = evaluate(state.params)
            if last_protocol is None and end == tcfg.num_steps and not preempted:
                last_protocol = evaluate_by_protocol(end, state.params)
            if last_protocol is not None and end == tcfg.num_steps and jax.process_index() == 0:
                write_json_atomically(os.path.join(workdir, "eval_protocol.json"), dict(last_protocol, step=end))
        finally:
            try:
                profiler.close()
                bar.close()
                reader.close()
            finally:  # whatever failed above, the checkpoint being written is finished
                ckpt.close()
                writer.close()
        plot_path = None
        if (tcfg.plot if plot is None else plot) and jax.process_index() == 0 and not preempted:
            plot_path = plot_loss_curves(writer.path, os.path.join(workdir, "loss_curves.png"),
                                         baselines=baselines, title=f"MAGNeT {cfg.name}: per-stage loss")
        barrier("magnet_jax train end")  # process 0 plotted alone
        return TrainResult(state=state, step=end, last_train=last_train, last_eval=last_eval,
                           baselines=baselines, workdir=workdir, plot_path=plot_path, graphdef=graphdef, data=data,
                           preempted=preempted, protocol_eval=last_protocol)
