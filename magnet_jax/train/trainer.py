"""The training loop: one run's steps, logging, evaluations, checkpoints and plot. Its set-up
(data source, text encoder, state, compiled steps) is train/setup.py.

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
from magnet_jax.data.host_batches import BatchReader, check_batch_sizes, host_iterator_state, to_global
from magnet_jax.eval.token_metrics import format_summary, protocol_evaluator
from magnet_jax.parallel.distributed import barrier
from magnet_jax.parallel.logical import axis_rules
from magnet_jax.parallel.mesh import make_mesh
from magnet_jax.run_lock import RunLock
from magnet_jax.train.checkpoint import Checkpointer
from magnet_jax.train.metrics import MetricsWriter, summarise_train_window
from magnet_jax.train.optimizer import make_optimizer
from magnet_jax.train.plot import plot_loss_curves
from magnet_jax.train.preemption import PreemptionWatch
from magnet_jax.train.profiling import StepProfiler
from magnet_jax.train.progress import StepProgress
from magnet_jax.train.setup import (HeldOutEval, compile_train_step, data_baselines, frozen_text_encoder,
                                    initial_state, make_data_source, memory_summary)

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
        start, graphdef, state, shardings, extra = initial_state(cfg, tx, mesh, rules, ckpt)
        if jax.process_index() == 0:
            with open(os.path.join(workdir, "config.txt"), "w") as f:
                f.write(format_config(cfg) + "\n")

        pidx, pcount = jax.process_index(), jax.process_count()
        g = tcfg.global_batch_size
        text_encoder, frozen = frozen_text_encoder(cfg, mesh)
        frozen_args = () if text_encoder is None else (frozen,)
        reader = BatchReader(data, g, pidx, pcount, start, host_iterator_state(extra, pidx, pcount))
        batch = to_global(reader.read(start), mesh, rules, g)
        step_fn = compile_train_step(cfg, graphdef, tx, schedule, shardings, batch, mesh, rules, text_encoder,
                                     None if frozen is None else jax.tree.map(lambda x: x.sharding, frozen))
        base_key = jax.random.key(tcfg.seed)
        t0 = time.time()
        compiled = step_fn.lower(state, batch, base_key, *frozen_args).compile()
        log.info("train step compiled in %.1fs; per-device batch %d; %s", time.time() - t0, per_device,
                 memory_summary(compiled.memory_analysis()))
        evaluate = HeldOutEval(cfg, graphdef, data, mesh, rules, state.params, base_key, text_encoder, frozen_args)
        protocol_eval = protocol_evaluator(cfg, graphdef, data, mesh, text_encoder)

        writer = MetricsWriter(workdir, start_step=start)
        if writer.enabled and writer.dropped:
            log.info("metrics.jsonl: %d rows past step %d (written before the interruption; this run writes them "
                     "again) moved to metrics.dropped.jsonl", writer.dropped, start)
        end = tcfg.num_steps if stop_after is None else min(tcfg.num_steps, start + stop_after)
        bar = StepProgress(tcfg.num_steps, start, f"train {cfg.name}", enabled=progress and jax.process_index() == 0)
        window, last_train, last_eval, last_protocol = [], None, None, None
        protocol_every = tcfg.protocol_eval_every
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
                    batch = to_global(reader.read(done), mesh, rules, g)  # prepared while the device computes
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
                    _log_eval(writer, done, last_eval)
                if done == tcfg.num_steps or (protocol_every > 0 and done % protocol_every == 0):
                    with bar.paused():
                        last_protocol = _evaluate_by_protocol(protocol_eval, writer, done, state.params, frozen_args)
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
                last_protocol = _evaluate_by_protocol(protocol_eval, writer, end, state.params, frozen_args)
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


def _log_eval(writer: MetricsWriter, step: int, result: Dict[str, Any]) -> None:
    writer.write(step, "eval", result)
    log.info("step %d eval ce per stage %s", step, np.round(result["ce_per_stage"], 3))
    if "ce_prefix" in result:  # Hybrid-MAGNeT's autoregressive part
        log.info("step %d eval ce of the autoregressive prefix %.3f", step, float(np.mean(result["ce_prefix"])))


def _evaluate_by_protocol(protocol_eval, writer: MetricsWriter, step: int, params, frozen_args) -> Dict[str, Any]:
    """The config-independent evaluation (eval/token_metrics.py) at `step`, written and logged."""
    result = protocol_eval(params, *frozen_args)
    writer.write(step, "protocol", {k: result[k] for k in ("ce_cosine", "ce_cosine_per_stage", "acc_cosine",
                                                           "ce", "acc")})
    log.info("step %d %s", step, format_summary(result).replace("\n", "\n  "))
    return result
