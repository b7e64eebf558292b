"""Sampling benchmark: compile time, latency, tokens/s and real-time factor of one generation,
a roofline line, and audiocraft's own `MagnetLMModel.generate` on the same random weights.

    python bench/sample.py --config configs/tiny.py [--batch 1[,4,16,64]] [--duration SECONDS]
        [--decoding-steps 20,10,10,10] [--reps 3] [--reference] [--ref-backends xformers,torch]
        [--rescorer tiny|small] [--hybrid-prefix SECONDS]
        [--config.section.key=value ...]

Random LM weights (MagnetLM of the config, seed 0) and a random projected text condition
[B, 16, dim]; no text encoder and no codec: the LM's sampler only. T = duration * frame rate
(default duration: data.segment_duration). On CPU the LM computes in float32 unless
`--config.lm.dtype=...` is given. Latency is the median over `--reps` generations after a
warm-up; the compile time is lower + compile of the whole sampler program. `--batch` takes a
list: one line per batch size (throughput).

Roofline (first batch size): the FLOPs one decoding forward needs (stage 0 and stage > 0,
`magnet_jax.decode.cost`), divided by this machine's matmul rate measured in the same run (a
2048^3 float32 matmul, jitted, best of 5), beside the measured time of that forward alone.

With `--reference` (PyTorch and audiocraft 1.3.0 importable), audiocraft's MagnetLMModel
(tests/reference/audiocraft_lm.py) gets the same weights (ours, converted to its state
dict), the same condition, steps and sampling settings, and runs in float32 with
torch.inference_mode() and all CPU threads; its latency is the median of `--reps` runs
(no warm-up; progress on stderr), each run interleaved with one of ours, and the speed-up
is the median of the per-repetition ratios (this VM's speed drifts over minutes). It runs with each attention backend of `--ref-backends`:
'xformers' is what audiocraft's MAGNeT loader selects (an exact torch stand-in here, the
faithful configuration); 'torch' is audiocraft's default (scaled_dot_product_attention,
faster on CPU, but it turns the restricted stage > 0 attention into causal attention, so it
computes another model). The line ends with the fastest reference latency over ours.

With `--rescorer SHAPE` the same generation is also timed with rescoring (Eq. 5,
decode/rescoring.py) by a random causal LM of that MusicGen shape (tiny: dim 256, 4 layers;
small: musicgen-small's dim 1024, 24 layers), interleaved with the plain runs: the latency
cost of rescoring.

With `--hybrid-prefix SECONDS` the same shape is also timed as Hybrid-MAGNeT (decode/hybrid.py:
that many seconds autoregressively, then MAGNeT's stages with the same steps) and as a
fully autoregressive sampler (decode/autoregressive.py, the whole clip, top-k 250), both on
random LMs of the same size: the paper's latency trade-off, interleaved with the plain runs.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESCORER_SHAPES = {"tiny": dict(dim=256, num_layers=4, num_heads=4),
                   "small": dict(dim=1024, num_layers=24, num_heads=16)}  # musicgen-small's


def _parse():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/tiny.py")
    p.add_argument("--batch", default="1", help="batch size, or a comma-separated list (one line each)")
    p.add_argument("--duration", type=float, default=0.0, help="seconds of audio (default: data.segment_duration)")
    p.add_argument("--decoding-steps", default="", help="per codebook, e.g. 20,10,10,10 (default: the config's)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--cond-len", type=int, default=16, help="length S of the random projected condition")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compile-only", action="store_true", help="only time lowering + compilation")
    p.add_argument("--reference", action="store_true", help="also time audiocraft's MagnetLMModel.generate")
    p.add_argument("--ref-threads", type=int, default=0, help="torch threads for the reference (default: all CPUs)")
    p.add_argument("--ref-backends", default="xformers,torch",
                   help="audiocraft attention backends to time (xformers: faithful; torch: faster, wrong at stage > 0)")
    p.add_argument("--no-roofline", action="store_true", help="skip the matmul-rate and per-forward timing")
    p.add_argument("--rescorer", choices=sorted(RESCORER_SHAPES), default=None,
                   help="also time rescoring by a random MusicGen-shaped LM of this size")
    p.add_argument("--hybrid-prefix", type=float, default=None,
                   help="also time Hybrid-MAGNeT with this many seconds decoded autoregressively, and full AR")
    from magnet_jax.config_io import parse_args_and_overrides

    args, overrides = parse_args_and_overrides(p, "--config.decode.temperature=2.0")
    try:
        args.batch = [int(b) for b in str(args.batch).split(",")]
    except ValueError:
        p.error(f"--batch takes integers separated by commas, got {args.batch!r}")
    if min(args.batch) < 1 or args.reps < 1:
        p.error("--batch and --reps must be >= 1")
    args.ref_backends = [b for b in args.ref_backends.split(",") if b]
    if not set(args.ref_backends) <= {"xformers", "torch"}:
        p.error(f"--ref-backends: xformers and/or torch, got {args.ref_backends}")
    return args, overrides


def _log(msg: str) -> None:
    print(f"[bench/sample] {msg}", file=sys.stderr, flush=True)


def to_audiocraft_state_dict(params, lm_cfg):
    """Our MagnetLM params (pure nested dict) -> audiocraft LM state dict (numpy): the
    inverse of `magnet_jax.convert.audiocraft_lm.lm_params_from_audiocraft`."""
    import numpy as np

    c = lm_cfg
    d = c.dim
    a = lambda x: np.asarray(x, np.float32)
    sd = {}
    for k in range(c.n_q):
        sd[f"emb.{k}.weight"] = a(params["emb"][k])
        sd[f"linears.{k}.weight"] = a(params["heads"][k]).T
        if c.bias_proj:
            sd[f"linears.{k}.bias"] = a(params["heads_bias"][k])
    if c.norm_first:
        sd["out_norm.weight"], sd["out_norm.bias"] = a(params["out_norm"]["scale"]), a(params["out_norm"]["bias"])
    layers = params["transformer"]["layers"]

    def attention(p, i, prefix):
        w = [a(p[n]["kernel"][i]).reshape(d, d).T for n in ("query", "key", "value")]
        sd[prefix + "in_proj_weight"] = np.concatenate(w, axis=0)
        sd[prefix + "out_proj.weight"] = a(p["out"]["kernel"][i]).reshape(d, d).T
        if c.bias_attn:
            sd[prefix + "in_proj_bias"] = np.concatenate([a(p[n]["bias"][i]).reshape(d)
                                                          for n in ("query", "key", "value")])
            sd[prefix + "out_proj.bias"] = a(p["out"]["bias"][i])

    for i in range(c.num_layers):
        pre = f"transformer.layers.{i}."
        norms = ["norm1", "norm2"] + (["norm_cross"] if c.cross_attention else [])
        for n in norms:
            sd[pre + n + ".weight"], sd[pre + n + ".bias"] = a(layers[n]["scale"][i]), a(layers[n]["bias"][i])
        attention(layers["self_attn"], i, pre + "self_attn.")
        if c.cross_attention:
            attention(layers["cross_attn"], i, pre + "cross_attention.")
        for n in ("linear1", "linear2"):
            sd[pre + n + ".weight"] = a(layers["ffn"][n]["kernel"][i]).T
            if c.bias_ff:
                sd[pre + n + ".bias"] = a(layers["ffn"][n]["bias"][i])
        if c.layer_scale is not None:
            for n in ["layer_scale_1", "layer_scale_2"] + (["layer_scale_cross"] if c.cross_attention else []):
                sd[pre + n + ".scale"] = a(layers[n]["scale"][i])
    return sd


def _check_round_trip(params, sd, lm_cfg):
    """Our converter must give our params back from the exported state dict."""
    import jax
    import numpy as np

    from magnet_jax.convert.audiocraft_lm import lm_params_from_audiocraft

    back, rest = lm_params_from_audiocraft(sd, lm_cfg)
    assert not rest, sorted(rest)[:5]
    flat_a = dict(jax.tree_util.tree_flatten_with_path(params)[0])
    flat_b = dict(jax.tree_util.tree_flatten_with_path(back)[0])
    assert flat_a.keys() == flat_b.keys(), "exported state dict does not cover our params"
    for path, v in flat_a.items():
        if not np.array_equal(np.asarray(v, np.float32), np.asarray(flat_b[path], np.float32)):
            raise AssertionError(f"weight export round trip differs at {jax.tree_util.keystr(path)}")


def _median_time(fn, reps):
    import jax

    times = []
    for r in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(r))
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def matmul_rate(n: int = 2048, reps: int = 5) -> float:
    """This machine's float32 matmul rate (FLOP/s): the best of `reps` jitted n^3 products."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    mm = jax.jit(lambda x: x @ x)
    jax.block_until_ready(mm(a))
    best = min(_median_time(lambda _: mm(a), 1)[0] for _ in range(reps))
    return 2 * n ** 3 / best


def _roofline(cfg, sampler, cond, mask, length, reps):
    """Per-forward time of the guided decoding forward at stage 0 and 1 beside its FLOPs / matmul rate."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from magnet_jax.decode.cost import decode_forward_flops

    c = cfg.lm
    rate = matmul_rate()
    b = cond.shape[0]
    parts = [f"matmul_gflops={rate / 1e9:.1f}"]
    cross = jax.jit(lambda w: sampler._prepare(w, cond, mask))(sampler.params)
    codes = jax.random.randint(jax.random.key(1), (b, c.n_q, length), 0, c.card + 1)
    for stage in (0, 1):
        fwd = jax.jit(lambda w, x, stage=stage: sampler._logits_fn(w, cross, stage, True)(x))
        jax.block_until_ready(fwd(sampler.params, codes))
        best = min(_median_time(lambda _: fwd(sampler.params, codes), 1)[0] for _ in range(max(reps, 5)))
        flops = decode_forward_flops(c, b, length, cond.shape[1], stage)
        parts.append(f"stage{stage}: fwd_ms={best * 1e3:.1f} gflop={flops / 1e9:.2f} roofline_ms={flops / rate * 1e3:.1f} "
                     f"of_roofline={flops / rate / best:.0%}")
    del nnx, jnp
    return " ".join(parts)


def main():
    args, overrides = _parse()
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    sys.path.insert(0, REPO)
    from magnet_jax.config_io import load_config
    from magnet_jax.decode.sampler import MagnetSampler, output_length
    from magnet_jax.decode.settings import DecodeKnobs, SamplerSettings
    from magnet_jax.models.magnet_lm import MagnetLM

    if jax.default_backend() == "cpu" and not any(o.startswith("--config.lm.dtype=") for o in overrides):
        overrides = list(overrides) + ["--config.lm.dtype=float32"]
    cfg = load_config(args.config, overrides)
    steps = tuple(int(s) for s in args.decoding_steps.split(",")) if args.decoding_steps else cfg.decode.decoding_steps
    duration = args.duration or cfg.data.segment_duration
    length = int(round(duration * cfg.data.frame_rate))
    c = cfg.lm
    settings = SamplerSettings.from_config(cfg.decode, c.span_len, decoding_steps=steps)
    knobs = DecodeKnobs.from_config(cfg.decode)
    t_out = output_length(settings, length)

    _log(f"{cfg.name}: building the LM (dim {c.dim}, {c.num_layers} layers, dtype {c.dtype}), T={length}, "
         f"steps {steps}")
    lm = MagnetLM(c, rngs=nnx.Rngs(args.seed))
    sampler = MagnetSampler(lm)
    key = jax.random.key(args.seed)
    uptime = os.getloadavg()[0]
    for index, b in enumerate(args.batch):
        rng = np.random.default_rng(args.seed)
        s = args.cond_len
        cond_mask = np.ones((b, s), bool)
        for i in range(1, b):  # padded conditions after the first row
            cond_mask[i, int(rng.integers(1, s + 1)):] = False
        condition = (rng.normal(size=(b, s, c.dim)) * cond_mask[..., None]).astype(np.float32)
        cond_j, mask_j = jnp.asarray(condition), jnp.asarray(cond_mask)

        _log(f"B={b}: lowering + compiling the sampler")
        t0 = time.perf_counter()
        compiled = sampler.lower(cond_j, mask_j, key, settings, knobs, length=length).compile()
        compile_s = time.perf_counter() - t0
        head = (f"config={cfg.name} device={jax.devices()[0].platform} dtype={c.dtype} B={b} T={t_out} "
                f"steps={','.join(map(str, steps))} compile_s={compile_s:.2f}")
        if args.compile_only:
            print(head, flush=True)
            continue
        run = lambda k: compiled(sampler.params, cond_j, mask_j, None, k, knobs, None)
        _log(f"compiled in {compile_s:.1f}s; warm-up")
        codes = jax.block_until_ready(run(key))
        assert codes.shape == (b, c.n_q, t_out) and not bool((codes == c.mask_id).any())
        rescored = _rescoring(args, cfg, lm, cond_j, mask_j, key, settings, knobs, length) if args.rescorer else None
        others = _hybrid_and_ar(args, cfg, cond_j, mask_j, settings, knobs, length) if args.hybrid_prefix else {}
        roofline = None  # measured before the reference runs, beside our own timing
        if index == 0 and not args.no_roofline:
            roofline = f"roofline B={b} T={t_out}: " + _roofline(cfg, sampler, cond_j, mask_j, t_out, args.reps)
        refs = {}
        if args.reference:
            try:
                refs = {backend: _reference(args, cfg, lm, condition, cond_mask, steps, length, t_out, backend)
                        for backend in args.ref_backends}
            except ImportError as e:
                _log(f"no reference: {e}")
        # Repetitions interleaved (ours, then each reference): this VM's speed drifts by 10 to 30%
        # over minutes, which a block of ours followed by a block of theirs would fold into the ratio.
        times = {"ours": [], **({"rescored": []} if rescored else {}), **{k: [] for k in others},
                 **{k: [] for k in refs}}
        for r in range(args.reps):
            t0 = time.perf_counter()
            jax.block_until_ready(run(jax.random.fold_in(key, r + 1)))
            times["ours"].append(time.perf_counter() - t0)
            if rescored:
                t0 = time.perf_counter()
                jax.block_until_ready(rescored[0](jax.random.fold_in(key, r + 1)))
                times["rescored"].append(time.perf_counter() - t0)
            for name, (fn, _) in others.items():
                t0 = time.perf_counter()
                jax.block_until_ready(fn(jax.random.fold_in(key, r + 1)))
                times[name].append(time.perf_counter() - t0)
            for backend, generate in refs.items():
                times[backend].append(generate(r))
            _log(f"rep {r + 1}/{args.reps}: " + ", ".join(f"{k} {v[-1]:.3f}s" for k, v in times.items()))
        latency = statistics.median(times["ours"])
        tokens = b * c.n_q * t_out
        audio_s = b * t_out / cfg.data.frame_rate
        line = f"{head} latency_s={latency:.4f} tokens_per_s={tokens / latency:.1f} rtf={audio_s / latency:.3f}"
        if rescored:
            cost = statistics.median(t / o for t, o in zip(times["rescored"], times["ours"]))
            line += (f" rescorer={args.rescorer} rescorer_compile_s={rescored[1]:.2f} "
                     f"rescored_latency_s={statistics.median(times['rescored']):.4f} rescored_over_plain={cost:.2f}")
        for name, (_, compile_other) in others.items():
            line += (f" {name}_first_call_s={compile_other:.2f} {name}_latency_s={statistics.median(times[name]):.4f}"
                     f" {name}_over_magnet={statistics.median(t / o for t, o in zip(times[name], times['ours'])):.2f}")
        if args.reference and not refs:
            line += " reference=unavailable"
        if refs:
            line += f" ref_threads={args.ref_threads or os.cpu_count()}"
            ratios = {}
            for k in refs:
                ratios[k] = statistics.median(t / o for t, o in zip(times[k], times["ours"]))
                line += f" ref_{k}_s={statistics.median(times[k]):.4f} ref_{k}_over_ours={ratios[k]:.2f}"
            line += f" fastest_ref_over_ours={min(ratios.values()):.2f}"
        print(line, flush=True)
        if roofline:
            print(roofline, flush=True)
    print(f"load1_before={uptime:.2f} load1_after={os.getloadavg()[0]:.2f}", flush=True)


def _rescoring(args, cfg, lm, cond, mask, key, settings, knobs, length):
    """(run(key) -> codes with rescoring at w = 0.5, its compile seconds): the same MAGNeT LM with a
    random causal LM of a MusicGen shape as the rescorer, conditioned on a random condition."""
    import dataclasses

    import jax
    import jax.numpy as jnp
    from flax import nnx

    from magnet_jax.decode.sampler import MagnetSampler
    from magnet_jax.models.magnet_lm import MagnetLM

    c = cfg.lm
    r_cfg = dataclasses.replace(c, **RESCORER_SHAPES[args.rescorer], causal=True, subcodes_context=-1,
                                codebook_delays=tuple(range(c.n_q)))
    _log(f"rescorer: a random causal LM, dim {r_cfg.dim}, {r_cfg.num_layers} layers")
    sampler = MagnetSampler(lm, rescorer=MagnetLM(r_cfg, rngs=nnx.Rngs(args.seed + 1)))
    r_cond = jax.random.normal(jax.random.key(args.seed + 1), cond.shape[:2] + (r_cfg.dim,), cond.dtype)
    rescore = (r_cond, mask)
    knobs = knobs.replace(rescore_weight=jnp.float32(0.5))
    t0 = time.perf_counter()
    compiled = sampler.lower(cond, mask, key, settings, knobs, length=length, rescore_condition=rescore).compile()
    compile_s = time.perf_counter() - t0
    args_r = (sampler.rescorer_params, r_cond, mask)
    run = lambda k: compiled(sampler.params, cond, mask, None, k, knobs, args_r)
    jax.block_until_ready(run(key))
    return run, compile_s


def _hybrid_and_ar(args, cfg, cond, mask, settings, knobs, length):
    """{'hybrid': (run(key), compile s), 'ar': (...)}: random Hybrid-MAGNeT and causal LMs of the
    config's size (delays 0..K-1); hybrid decodes `--hybrid-prefix` seconds autoregressively."""
    import dataclasses

    import jax
    from flax import nnx

    from magnet_jax.decode.autoregressive import ARKnobs, ARSampler, ARSettings
    from magnet_jax.decode.hybrid import HybridSampler, HybridSettings
    from magnet_jax.models.magnet_lm import MagnetLM

    c = cfg.lm
    delays = tuple(range(c.n_q))
    hybrid = HybridSampler(MagnetLM(dataclasses.replace(c, kind="hybrid", codebook_delays=delays),
                                    rngs=nnx.Rngs(args.seed + 2)))
    prefix = int(round(args.hybrid_prefix * cfg.data.frame_rate))
    h_settings = HybridSettings(prefix, settings)
    ar = ARSampler(MagnetLM(dataclasses.replace(c, causal=True, subcodes_context=-1, codebook_delays=delays),
                            rngs=nnx.Rngs(args.seed + 3)))
    out = {}
    for name, fn in [("hybrid", lambda k: hybrid.generate(cond, mask, k, h_settings, knobs, length=length)),
                     ("ar", lambda k: ar.generate(cond, mask, k, ARSettings(), ARKnobs.create(), length=length))]:
        _log(f"{name}: compiling and warming up")
        t0 = time.perf_counter()
        jax.block_until_ready(fn(jax.random.key(0)))  # compile + one run (reported as first_call_s)
        out[name] = (fn, time.perf_counter() - t0)
    return out


def _reference(args, cfg, lm, condition, cond_mask, steps, length, t_out, backend="xformers"):
    """audiocraft's MagnetLMModel with our weights (checked on one forward): returns a function
    that runs one generation (seed r) and returns its seconds."""
    import numpy as np
    from flax import nnx

    import torch  # noqa: F401  (ImportError: no reference)
    from tests.reference import audiocraft_lm as ref_lm

    torch.set_num_threads(args.ref_threads or os.cpu_count() or 1)
    c, d = cfg.lm, cfg.decode
    _log(f"reference: building audiocraft's MagnetLMModel (fp32, {torch.get_num_threads()} threads, "
         f"{backend} attention)")
    params = nnx.to_pure_dict(nnx.state(lm, nnx.Param))
    sd = to_audiocraft_state_dict(params, c)
    _check_round_trip(params, sd, c)
    ref = ref_lm.build_reference_magnet(c, condition, cond_mask, seq_len=length, seed=args.seed, init="none")
    ref.load_state_dict_numpy(sd)
    ref.backend = backend
    del sd, params
    # Same weights both sides: one short forward must agree (a restricted stage where the backend honours it).
    probe_len = min(length, 24)
    b = len(condition)
    codes = np.random.default_rng(1).integers(0, c.card + 1, (b, c.n_q, probe_len))
    probe_stage = 1 if backend == "xformers" else 0  # the torch backend computes stage > 0 differently
    ours = np.asarray(lm(codes, condition, cond_mask, stage=probe_stage))
    theirs = ref.logits(codes, list(range(b)), stage=probe_stage)
    err = float(np.abs(ours - theirs).max())
    _log(f"reference: logits check on {probe_len} frames, max |ours - reference| = {err:.2e}")
    if not err <= 1e-3 * max(1.0, float(np.abs(theirs).max())):
        raise AssertionError(f"the reference does not compute our LM (max logits difference {err})")

    def generate(r):
        """One timed generation (seed r), progress on stderr."""
        torch.manual_seed(args.seed + r)
        started = time.perf_counter()

        def progress(step, n):
            if step == n or step % max(1, n // 10) == 0:
                _log(f"reference ({backend}) rep {r + 1}/{args.reps}: step {step}/{n} "
                     f"({time.perf_counter() - started:.1f}s)")

        t0 = time.perf_counter()
        out = ref.generate(list(range(b)), max_gen_len=length, use_sampling=d.use_sampling,
                           temp=d.temperature, top_k=d.top_k, top_p=d.top_p, max_cfg_coef=d.max_cfg_coef,
                           min_cfg_coef=d.min_cfg_coef, decoding_steps=list(steps),
                           anneal_temp=d.anneal_temperature, span_scoring=d.span_scoring,
                           span_arrangement=d.span_arrangement, callback=progress)
        elapsed = time.perf_counter() - t0
        assert out.shape == (b, c.n_q, t_out) and not (out == c.mask_id).any(), out.shape
        return elapsed

    return generate


if __name__ == "__main__":
    main()
