"""Ablation sweeps: train every point of a grid to the same token budget, score every checkpoint
with the same protocol and decoding budget, and write the comparison (`magnet-jax sweep`).

A sweep file is python with `get_sweep() -> Sweep`. Each training point is the base config with
the sweep's overrides and one value per grid key; each is trained in `DIR/points/<name>/` (a
normal training run: it resumes), evaluated by the config-independent protocol
(eval/token_metrics.py) and, on the synthetic data, sampled with every setting of the decoding
grid and scored by how well the samples follow the data's rules. `DIR/results.csv`,
`DIR/results.md` and the plots are rewritten after every finished point; a point with its
`result.json` is skipped on a rerun. `DIR/sweep.json` records the grid: a directory made by
another grid is refused unless `overwrite`, and then set aside, not deleted.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
import re
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import jax
import numpy as np

from magnet_jax.atomic_files import write_json_atomically
from magnet_jax.config import Config
from magnet_jax.config_io import apply_overrides, config_to_dict, load_config
from magnet_jax.train.optimizer import make_optimizer
from magnet_jax.train.sweep_report import write_report

log = logging.getLogger(__name__)

SYNTHETIC_CAPTIONS = ("slow jazz with piano", "fast techno with synth and dark mood", "medium folk with guitar",
                      "rapid metal with drums", "slow ambient with strings and calm mood", "fast rock with bass",
                      "medium disco with organ and happy mood", "rapid lofi with flute and dreamy mood")


@dataclasses.dataclass(frozen=True)
class Sweep:
    base_config: str  # a config file; relative paths from the sweep file's folder, else the working directory
    grid: Dict[str, Sequence[Any]]  # dotted config key -> values; every combination is a point
    overrides: Tuple[str, ...] = ()  # `section.key=value` for every point
    # Training tokens per point (examples x frames x codebooks): each point trains
    # ceil(budget / tokens per step) steps, whatever its batch. 0: the base config's num_steps.
    token_budget: int = 0
    # Decoding settings scored on every checkpoint: override name -> values (decoding_steps,
    # temperature, max_cfg_coef, min_cfg_coef, top_p, top_k, span_scoring, ...), every combination.
    decoding_grid: Dict[str, Sequence[Any]] = dataclasses.field(default_factory=dict)
    captions: Tuple[str, ...] = SYNTHETIC_CAPTIONS  # the synthetic data's captions sampled per setting
    sample_seed: int = 0
    table: Tuple[str, ...] = ()  # (row key, column key) of results.md's table; default: the first two grid keys
    concurrent: int = 1  # points trained at once, each on 1/concurrent of the devices

    def __post_init__(self):
        if not self.grid:
            raise ValueError("a sweep needs a non-empty grid: {'section.key': [values, ...], ...}")
        for key, values in list(self.grid.items()) + list(self.decoding_grid.items()):
            if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) == 0:
                raise ValueError(f"grid key {key!r}: give a non-empty list of values, got {values!r}")
        if self.token_budget < 0 or self.concurrent < 1:
            raise ValueError(f"token_budget must be >= 0 and concurrent >= 1, got {self.token_budget}, "
                             f"{self.concurrent}")
        bad = [k for k in self.table if k not in self.grid]
        if bad or len(self.table) not in (0, 2):
            raise ValueError(f"table must name two grid keys (row, column), got {self.table}")


@dataclasses.dataclass
class Point:
    name: str
    values: Dict[str, Any]
    cfg: Config


def load_sweep(path: str) -> Tuple[Sweep, str]:
    """(the Sweep of a python file with get_sweep(), the file's folder)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"sweep file {path} does not exist (e.g. configs/ablations/masking_schedules.py)")
    namespace: Dict[str, Any] = {"__file__": os.path.abspath(path), "__name__": "magnet_jax_sweep"}
    with open(path) as f:
        exec(compile(f.read(), path, "exec"), namespace)
    if not callable(namespace.get("get_sweep")):
        raise ValueError(f"{path} has no get_sweep() returning a magnet_jax.train.sweep.Sweep")
    sweep = namespace["get_sweep"]()
    if not isinstance(sweep, Sweep):
        raise ValueError(f"{path}: get_sweep() returned {type(sweep).__name__}, not a Sweep")
    return sweep, os.path.dirname(os.path.abspath(path))


def _override(key: str, value: Any) -> str:
    return f"{key}={value!r}" if not isinstance(value, str) else f"{key}={value}"


def _slug(values: Dict[str, Any]) -> str:
    leaves = [k.rsplit(".", 1)[-1] for k in values]
    keys = leaves if len(set(leaves)) == len(leaves) else list(values)
    text = ",".join(f"{k}={_short(v)}" for k, v in zip(keys, values.values()))
    return re.sub(r"[^A-Za-z0-9_.,=+-]", "_", text)


def _short(v: Any) -> str:
    return "-".join(map(str, v)) if isinstance(v, (tuple, list)) else str(v)


def expand_points(sweep: Sweep, folder: str, workdir: str) -> List[Point]:
    """Every grid point's config, checked before anything trains (an unknown key, a bad value)."""
    base_path = sweep.base_config
    if not os.path.isabs(base_path) and os.path.isfile(os.path.join(folder, base_path)):
        base_path = os.path.join(folder, base_path)
    base = load_config(base_path, list(sweep.overrides))
    points = []
    for combo in itertools.product(*sweep.grid.values()):
        values = dict(zip(sweep.grid, combo))
        changes = [_override(k, v) for k, v in values.items()]
        try:
            cfg = apply_overrides(base, changes)
        except ValueError as e:
            raise ValueError(f"sweep grid point {values}: {e}") from None
        name = _slug(values)
        tcfg = cfg.train
        steps = tcfg.num_steps
        if sweep.token_budget:
            per_step = tcfg.global_batch_size * cfg.data.num_frames * cfg.lm.n_q
            steps = max(1, -(-sweep.token_budget // per_step))
        train = dataclasses.replace(tcfg, num_steps=steps, workdir=os.path.join(workdir, "points", name),
                                    smoke_test=False, plot=False, eval_every=min(tcfg.eval_every, steps),
                                    checkpoint_every=min(tcfg.checkpoint_every, steps))
        cfg = dataclasses.replace(cfg, train=train, name=f"{cfg.name}[{name}]")
        try:
            make_optimizer(cfg.optim, steps)  # e.g. a budget too small for the warm-up fails here, not mid-sweep
        except ValueError as e:
            raise ValueError(f"sweep grid point {values} ({steps} steps from the token budget): {e}") from None
        points.append(Point(name, values, cfg))
    if len({p.name for p in points}) != len(points):
        raise ValueError("two grid points got the same folder name; give the grid values distinct printed forms")
    return points


def expand_decoding(sweep: Sweep, cfg: Config) -> List[Dict[str, Any]]:
    """The decoding settings (override dicts), each checked against the first point's config."""
    from magnet_jax.decode.settings import DecodeKnobs, SamplerSettings

    known = {f.name for f in dataclasses.fields(SamplerSettings)} | set(DecodeKnobs.__dataclass_fields__)
    for key in sweep.decoding_grid:
        if key not in known:
            raise ValueError(f"unknown decoding key {key!r} in the sweep's decoding_grid; known: {', '.join(sorted(known))}")
    settings = [dict(zip(sweep.decoding_grid, combo)) for combo in itertools.product(*sweep.decoding_grid.values())]
    for s in settings:
        SamplerSettings.from_config(cfg.decode, cfg.lm.span_len, **s)  # bad values fail here, before training
        DecodeKnobs.from_config(cfg.decode, **s)
    return settings or [{}]


def sweep_spec(sweep: Sweep, points: List[Point], decoding: List[Dict[str, Any]]) -> Dict[str, Any]:
    """What makes two sweeps the same (written to sweep.json; JSON-plain)."""
    return json.loads(json.dumps({
        "grid": {k: list(v) for k, v in sweep.grid.items()}, "decoding_grid": decoding,
        "token_budget": sweep.token_budget, "captions": list(sweep.captions), "sample_seed": sweep.sample_seed,
        "points": {p.name: config_to_dict(p.cfg) for p in points}}, default=list))


def claim_directory(workdir: str, spec: Dict[str, Any], overwrite: bool) -> None:
    """Makes `workdir` this sweep's: new, or made by the same grid; another grid's is refused,
    or with `overwrite` renamed aside (nothing is deleted)."""
    marker = os.path.join(workdir, "sweep.json")
    if os.path.isdir(workdir) and os.listdir(workdir):
        same = os.path.isfile(marker) and _read_json(marker) == spec
        if not same:
            what = "another grid" if os.path.isfile(marker) else "something that is not a sweep (no sweep.json)"
            if not overwrite:
                raise ValueError(f"{workdir} holds {what}: give another --workdir, or --overwrite to set it aside "
                                 "and start again")
            aside, n = f"{workdir}.replaced", 1
            while os.path.exists(aside):
                aside, n = f"{workdir}.replaced.{n}", n + 1
            os.replace(workdir, aside)
            log.warning("sweep: %s held %s; moved it to %s", workdir, what, aside)
    os.makedirs(workdir, exist_ok=True)
    if not os.path.isfile(marker):
        _write_json(marker, spec)


def _read_json(path: str):
    with open(path) as f:
        return json.load(f)


def _write_json(path: str, obj) -> None:
    if jax.process_index() != 0:  # one writer in a multi-process job
        return
    write_json_atomically(path, obj, default=list)


def run_point(point: Point, decoding: List[Dict[str, Any]], sweep: Sweep, *, devices=None,
              progress: bool = False) -> Dict[str, Any]:
    """Trains one point (resuming), then scores it; returns and writes its result.json."""
    from magnet_jax.train.trainer import train

    t0 = time.time()
    result = train(point.cfg, progress=progress, plot=False, devices=devices)
    if result.preempted:
        raise InterruptedError(f"sweep point {point.name} was pre-empted at step {result.step}; rerun the sweep")
    train_s = time.time() - t0
    cfg = point.cfg
    out = {"name": point.name, "values": point.values, "steps": cfg.train.num_steps,
           "tokens": cfg.train.num_steps * cfg.train.global_batch_size * cfg.data.num_frames * cfg.lm.n_q,
           "train_seconds": train_s, "protocol": result.protocol_eval, "decoding": []}
    if cfg.data.kind == "synthetic":
        out["decoding"] = score_decoding(cfg, result, decoding, sweep, devices)
    _write_json(os.path.join(cfg.train.workdir, "result.json"), out)
    return out


def score_decoding(cfg: Config, result, decoding: List[Dict[str, Any]], sweep: Sweep, devices=None):
    """Samples the sweep's captions with every decoding setting (one compiled program per static
    setting) and scores the rule-following of the samples."""
    from magnet_jax.train.samples import TextSampler, sample_synthetic_captions

    params = result.state.ema_params if result.state.ema_params is not None else result.state.params
    sampler = TextSampler(cfg, result.graphdef, params)
    chance = result.data.random_agreement(list(sweep.captions), cfg.data.num_frames)
    rows = []
    for setting in decoding:
        t0 = time.time()
        _, agreement = sample_synthetic_captions(cfg, result.graphdef, params, result.data, sweep.captions,
                                                 seed=sweep.sample_seed, sampler=sampler, **setting)
        steps = setting.get("decoding_steps", cfg.decode.decoding_steps)
        rows.append({"setting": setting, "decoding_steps_total": int(sum(steps)),
                     "agreement": [float(a) for a in agreement], "agreement_mean": float(np.mean(agreement)),
                     "chance": [float(c) for c in chance], "seconds": time.time() - t0})
    return rows


def _check_captions(cfg: Config, captions) -> None:
    """The synthetic data scores captions of its own grammar: a bad one fails before training."""
    from magnet_jax.train.setup import make_data_source

    try:
        make_data_source(cfg).random_agreement(list(captions), cfg.data.num_frames, draws=1)
    except (KeyError, ValueError, IndexError) as e:
        raise ValueError(f"sweep captions {list(captions)}: not all follow the synthetic data's grammar "
                         f"('<tempo> <genre> with <instrument> [and <mood> mood]'; unknown word {e})") from None


def device_groups(concurrent: int, devices=None) -> List[list]:
    devices = list(jax.devices() if devices is None else devices)
    if concurrent > len(devices) or len(devices) % concurrent:
        raise ValueError(f"concurrent={concurrent} points need a divisor of the {len(devices)} devices")
    size = len(devices) // concurrent
    return [devices[i * size:(i + 1) * size] for i in range(concurrent)]


def run_sweep(path: str, workdir: str, *, overwrite: bool = False, progress: bool = True,
              concurrent: Optional[int] = None) -> List[Dict[str, Any]]:
    """Runs (or resumes) the sweep of file `path` in `workdir`; returns every point's result."""
    sweep, folder = load_sweep(path)
    if concurrent is not None:
        sweep = dataclasses.replace(sweep, concurrent=concurrent)
    workdir = os.path.abspath(workdir)
    points = expand_points(sweep, folder, workdir)
    decoding = expand_decoding(sweep, points[0].cfg)
    groups = device_groups(sweep.concurrent)
    if points[0].cfg.data.kind == "synthetic":
        _check_captions(points[0].cfg, sweep.captions)
    if sweep.concurrent > 1 and jax.process_count() > 1:
        raise ValueError("concurrent points need a single-process job (each point takes a group of local devices)")
    claim_directory(workdir, sweep_spec(sweep, points, decoding), overwrite)
    results: Dict[str, Dict[str, Any]] = {}
    todo = []
    for p in points:
        done = os.path.join(p.cfg.train.workdir, "result.json")
        if os.path.isfile(done):
            results[p.name] = _read_json(done)
        else:
            todo.append(p)
    log.info("sweep %s: %d points, %d finished before, %d decoding settings each; %d at a time",
             path, len(points), len(results), len(decoding), sweep.concurrent)
    lock = threading.Lock()

    def finish(point: Point, out: Dict[str, Any]) -> None:
        with lock:
            results[point.name] = out
            write_report(workdir, sweep, [results[p.name] for p in points if p.name in results])
            log.info("sweep point %s done (%d of %d): protocol CE %.4f", point.name, len(results), len(points),
                     out["protocol"]["ce_cosine"])

    if sweep.concurrent == 1:
        for p in todo:
            finish(p, run_point(p, decoding, sweep, progress=progress))
    else:
        _run_concurrently(todo, decoding, sweep, groups, finish)
    if todo == [] and results:
        write_report(workdir, sweep, [results[p.name] for p in points])
    return [results[p.name] for p in points]


def _run_concurrently(todo: List[Point], decoding, sweep: Sweep, groups, finish) -> None:
    """Each group of devices takes the next unfinished point until none is left."""
    queue = list(todo)
    lock = threading.Lock()
    errors: List[BaseException] = []

    def worker(devices):
        while True:
            with lock:
                if not queue or errors:
                    return
                point = queue.pop(0)
            try:
                finish(point, run_point(point, decoding, sweep, devices=devices))
            except BaseException as e:  # stop handing out points; re-raised below
                with lock:
                    errors.append(e)
                return

    threads = [threading.Thread(target=worker, args=(g,), name=f"sweep-{i}") for i, g in enumerate(groups)]
    # Nothing is written to the persistent compilation cache while threads compile at once, a
    # precaution: a process has aborted here inside JAX's put_executable_and_time while it cached a
    # sweep point's train step. (JAX decides once per process whether it uses the cache; the write
    # threshold is read at every write.)
    threshold = jax.config.jax_persistent_cache_min_compile_time_secs
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float("inf"))
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", threshold)
    if errors:
        raise errors[0]
