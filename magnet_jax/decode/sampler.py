"""MAGNeT's iterative span-unmasking sampler as one compiled program, plus a step-wise driver.

    sampler = MagnetSampler(lm)                       # an nnx MagnetLM (or graphdef + params)
    codes = sampler.generate(condition, condition_mask, key, settings, knobs, length=500)

`generate` runs every stage inside one `jax.jit`: stage 0 (full attention) as one
`lax.fori_loop` over its steps, then every later stage (all with the local window) as one
more `fori_loop` over their steps with a traced stage index (codebook, head and tables
looked up per step): two compiled step bodies, whatever the number of codebooks. The
per-step span counts come from host tables; the cross-attention keys/values of the text are
computed once before the loops. Under classifier-free guidance the [text; null text] batch
shares its embedding and first self-attention, and only the text rows cross-attend (the
null text's cross-attention output is a constant: zero without attention biases).
`generate_stepwise` runs the very same step function from Python, one dispatch per step,
for streaming intermediate codes; progress callbacks come from inside the one program
(`generate(..., progress=fn)`).

With a rescorer (`MagnetSampler(lm, rescorer=musicgen_lm)`, decode/rescoring.py), every
step but a stage's last also runs the rescorer once over the candidate, inside the same
program; its weights and its own text condition are arguments of that program.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from magnet_jax.decode.interface import Sampler
from magnet_jax.decode.rescoring import check_rescorer, token_probabilities
from magnet_jax.decode.settings import DecodeKnobs, SamplerSettings
from magnet_jax.decode.stage import StageState, StageTables, StepModel, decode_step, initial_stage_state, step_key
from magnet_jax.models.magnet_lm import MagnetLM
from magnet_jax.parallel.distributed import barrier
from magnet_jax.parallel.logical import axis_rules
from magnet_jax.parallel.mesh import batch_axis_size, data_sharding, tree_shardings

ProgressFn = Callable[[int, int], None]


def output_length(settings: SamplerSettings, length: int) -> int:
    """The reference trims the sequence to a multiple of span_len for chunked decoding."""
    return (length // settings.span_len) * settings.span_len if settings.chunked else length


class MagnetSampler(Sampler):
    def __init__(self, lm, params=None, *, mesh=None, rules=None, rescorer: Optional[MagnetLM] = None):
        """lm: a MagnetLM module, or its graphdef with `params` (an nnx.State of Params).
        rescorer: a causal LM with a delay pattern (a MusicGen LM) over the same codec, for
        rescoring (Eq. 5); `generate` then needs its text condition too."""
        self.split_lm(lm, params)
        self.mesh, self.rules = mesh, tuple(rules or ())
        self.rescorer_graphdef = self.rescorer_params = self.rescorer_config = None
        if rescorer is not None:
            check_rescorer(self.config, rescorer.config)
            self.rescorer_config = rescorer.config
            self.rescorer_graphdef, self.rescorer_params = nnx.split(rescorer, nnx.Param)
        if mesh is not None:
            self.params = jax.device_put(self.params, tree_shardings(self.params, mesh, self.rules))
            if rescorer is not None:
                self.rescorer_params = jax.device_put(
                    self.rescorer_params, tree_shardings(self.rescorer_params, mesh, self.rules))
        self._generate_jit = jax.jit(self._generate, static_argnames=("settings", "length", "report"))
        self._listener: Optional[ProgressFn] = None
        self._prepare_jit = jax.jit(self._prepare)
        self._step_jit = jax.jit(self._step, static_argnames=("stage", "settings", "length", "prompt_len"))
        self._prepare_rescorer_jit = jax.jit(self._prepare_rescorer)

    # -- pure pieces ---------------------------------------------------------------------

    def _prepare(self, params, condition, condition_mask):
        """The text condition's cross-attention context (computed once per generation)."""
        return self._lm(params).cross_context(condition, condition_mask)

    def _prepare_rescorer(self, rescore):
        """(rescorer params, its condition, its mask) -> the same with the condition's
        cross-attention keys/values in place of the condition (computed once per generation)."""
        if rescore is None:
            return None
        r_params, condition, mask = rescore
        r_lm = nnx.merge(self.rescorer_graphdef, jax.tree.map(lambda x: x, r_params))
        return r_params, r_lm.cross_key_values(condition), mask

    def _rescore_fn(self, context, stage):
        if context is None:
            return None
        r_params, kv, mask = context

        def rescore(codes):
            r_lm = nnx.merge(self.rescorer_graphdef, jax.tree.map(lambda x: x, r_params))
            return token_probabilities(r_lm, codes, None, mask, stage, cross_kv=kv)

        return rescore

    def _logits_fn(self, params, cross, stage, guided):
        def logits(codes):
            return self._lm(params).decode_logits(codes, cross, stage=stage, guided=guided)

        return logits

    def _step_model(self, params, cross, stage, guided, pattern_stage=None) -> StepModel:
        """pattern_stage: with a traced `stage`, the static stage whose attention pattern applies."""
        def prefix(codes):
            return self._lm(params).decode_prefix(codes, cross, stage=stage, guided=guided,
                                                  pattern_stage=pattern_stage)

        def logits_at(pre, positions, guidance):
            return self._lm(params).decode_logits_at(pre, positions, cross, stage=stage, guided=guided,
                                                     guidance=guidance, pattern_stage=pattern_stage)

        return StepModel(prefix, logits_at)

    def _initial_codes(self, prompt, batch, length):
        k, mask_id = self.config.n_q, self.config.mask_id
        codes = jnp.full((batch, k, length), mask_id, jnp.int32)
        if prompt is not None and prompt.shape[-1]:
            codes = codes.at[:, :, :prompt.shape[-1]].set(prompt.astype(jnp.int32))
        return codes

    def _generate(self, params, condition, condition_mask, prompt, key, knobs, rescore=None, *, settings, length,
                  report=False):
        cross = self._prepare(params, condition, condition_mask)
        rescore = self._prepare_rescorer(rescore)
        length = output_length(settings, length)
        prompt_len = 0 if prompt is None else prompt.shape[-1]
        codes = self._initial_codes(prompt, condition.shape[0], length)
        done = 0
        # Stages > 0 share one attention pattern: without a rescorer they run as one loop with a
        # traced stage (one compiled body instead of one per stage: half the compile time).
        merged = rescore is None and len(settings.decoding_steps) > 2
        for stage, steps in enumerate(settings.decoding_steps):
            if merged and stage == 1:
                return self._later_stages(params, cross, codes, key, knobs, prompt, settings=settings, length=length,
                                          prompt_len=prompt_len, done=done, report=report)
            tables = StageTables.build(settings, steps, length, prompt_len)
            model = self._step_model(params, cross, stage, settings.cfg)

            def body(i, state, stage=stage, tables=tables, model=model, done=done):
                state = decode_step(model, state, i, step_key(key, stage, i), knobs, stage=stage, tables=tables,
                                    settings=settings, mask_id=self.config.mask_id, prompt=prompt,
                                    rescore=self._rescore_fn(rescore, stage))
                if report:  # from inside the program: no per-step dispatch
                    jax.debug.callback(self._report, done + i + 1, settings.total_steps, state.codes[0, 0, 0])
                return state

            codes = jax.lax.fori_loop(0, steps, body, initial_stage_state(codes, tables)).codes
            done += steps
        return codes

    def _later_stages(self, params, cross, codes, key, knobs, prompt, *, settings, length, prompt_len, done, report):
        """Stages 1..K-1 in one `fori_loop` over their steps: step g is step i of stage s (host
        tables), the same step function, keys and tables as the per-stage loops; each stage
        starts from fresh scores."""
        steps = settings.decoding_steps[1:]
        per_stage = [StageTables.build(settings, n, length, prompt_len) for n in steps]
        tables = StageTables.concatenate(per_stage)
        stage_of = jnp.asarray(np.repeat(np.arange(1, len(steps) + 1), steps), jnp.int32)
        step_in_stage = jnp.asarray(np.concatenate([np.arange(n) for n in steps]), jnp.int32)
        fresh = initial_stage_state(codes, tables).scores

        def body(g, state):
            stage, i = stage_of[g], step_in_stage[g]
            state = StageState(codes=state.codes, scores=jnp.where(i == 0, fresh, state.scores))
            model = self._step_model(params, cross, stage, settings.cfg, pattern_stage=1)
            state = decode_step(model, state, g, step_key(key, stage, i), knobs, stage=stage, tables=tables,
                                settings=settings, mask_id=self.config.mask_id, prompt=prompt)
            if report:
                jax.debug.callback(self._report, done + g + 1, settings.total_steps, state.codes[0, 0, 0])
            return state

        return jax.lax.fori_loop(0, sum(steps), body, StageState(codes=codes, scores=fresh)).codes

    def _report(self, done, total, _):
        """Host side of the in-program progress callback: the listener of the running call.
        (Its operand orders the callback after the step's codes.)"""
        if self._listener is not None:
            self._listener(int(done), int(total))

    def _step(self, params, cross, state, i, key, knobs, prompt, rescore, *, stage, settings, length,
              prompt_len):
        tables = StageTables.build(settings, settings.decoding_steps[stage], length, prompt_len)
        return decode_step(self._step_model(params, cross, stage, settings.cfg), state, i, step_key(key, stage, i),
                           knobs, stage=stage, tables=tables, settings=settings, mask_id=self.config.mask_id,
                           prompt=prompt, rescore=self._rescore_fn(rescore, stage))

    # -- inputs --------------------------------------------------------------------------

    def _place(self, *arrays):
        """Pads the batch to a multiple of the mesh's batch shards and shards it."""
        b = arrays[0].shape[0]
        if self.mesh is None:
            return b, arrays
        shards = batch_axis_size(self.mesh, self.rules)
        padded = -(-b // shards) * shards
        out = []
        for x in arrays:
            if x is None:
                out.append(None)
                continue
            x = jnp.asarray(x)
            if padded != b:
                x = jnp.concatenate([x, jnp.repeat(x[-1:], padded - b, axis=0)], axis=0)
            out.append(jax.device_put(x, data_sharding(self.mesh, self.rules, x.ndim)))
        return b, tuple(out)

    def _context(self):
        if self.mesh is None:
            return contextlib.nullcontext()
        stack = contextlib.ExitStack()
        stack.enter_context(jax.set_mesh(self.mesh))
        stack.enter_context(axis_rules(self.rules))
        return stack

    # -- drivers -------------------------------------------------------------------------

    def _rescore_inputs(self, rescore_condition, batch: int):
        """(rescorer condition [B, S', dim'], its mask [B, S']) -> checked arrays, or None."""
        if self.rescorer_graphdef is None:
            if rescore_condition is not None:
                raise ValueError("rescore_condition was given but this sampler has no rescorer: build it with "
                                 "MagnetSampler(lm, rescorer=musicgen_lm)")
            return None
        if rescore_condition is None:
            raise ValueError("this sampler rescores with a MusicGen LM: pass rescore_condition=(its projected text "
                             "condition [B, S, dim], its mask [B, S]), e.g. from MusicGen.encode_text")
        condition, mask = rescore_condition
        dim = self.rescorer_config.dim
        if getattr(condition, "ndim", 0) != 3 or condition.shape[0] != batch or condition.shape[-1] != dim:
            raise ValueError(f"the rescorer's condition must be [B={batch}, S, {dim}] (projected by the rescorer's "
                             f"own conditioner), got {getattr(condition, 'shape', None)}")
        if isinstance(mask, jax.ShapeDtypeStruct):
            return condition, mask
        mask = jnp.asarray(mask).astype(bool)
        if mask.shape != condition.shape[:2]:
            raise ValueError(f"the rescorer's condition mask must be [B, S] = {condition.shape[:2]}, got {mask.shape}")
        return condition, mask

    def _inputs(self, condition, condition_mask, prompt, settings, length, rescore_condition):
        """Checked and placed inputs: (B, (condition, mask, prompt), rescore) with rescore the
        program's (rescorer params, its condition, its mask) or None."""
        condition_mask = self.check_inputs(condition, condition_mask, prompt, length=length, settings=settings)
        if output_length(settings, length) < 1:
            raise ValueError(f"length={length} is shorter than one span of {settings.span_len} frames")
        rescore = self._rescore_inputs(rescore_condition, condition.shape[0])
        b, placed = self._place(condition, condition_mask, prompt, *(rescore or ()))
        rescore = None if rescore is None else (self.rescorer_params, *placed[3:])
        return b, placed[:3], rescore

    def generate(self, condition, condition_mask, key, settings: SamplerSettings, knobs: Optional[DecodeKnobs] = None,
                 *, length: int, prompt: Optional[jnp.ndarray] = None, progress: Optional[ProgressFn] = None,
                 rescore_condition=None) -> jnp.ndarray:
        """codes int32 [B, K, T'] (T' = length, trimmed to a multiple of span_len when chunked).

        condition: projected text condition [B, S, dim] with its mask [B, S]; prompt: codes
        [B, K, P] kept fixed (continuation). progress(done, total) is called after every step,
        from inside the one compiled program (a host callback; same codes as without it).
        rescore_condition: with a rescorer, (its projected text condition, its mask).
        """
        knobs = DecodeKnobs.create() if knobs is None else knobs
        b, (condition, condition_mask, prompt), rescore = self._inputs(condition, condition_mask, prompt, settings,
                                                                       length, rescore_condition)
        args = (self.params, condition, condition_mask, prompt, key, knobs, rescore)
        if jax.process_count() > 1:
            # Compiled first, then every process starts together (see `barrier`).
            with self._context():
                self._generate_jit.lower(*args, settings=settings, length=length, report=progress is not None).compile()
            barrier("magnet_jax sampler")
        self._listener = progress
        try:
            with self._context():
                codes = self._generate_jit(*args, settings=settings, length=length, report=progress is not None)
                if progress is not None:
                    codes = jax.block_until_ready(codes)  # every callback has run before the listener goes
                    jax.effects_barrier()
        finally:
            self._listener = None
        return codes[:b]

    def lower(self, condition, condition_mask, key, settings, knobs=None, *, length, prompt=None,
              rescore_condition=None):
        """The jitted program lowered for these shapes (compile it to time compilation). Any input
        may be a jax.ShapeDtypeStruct (ahead-of-time compilation for other devices)."""
        knobs = DecodeKnobs.create() if knobs is None else knobs
        if not isinstance(condition_mask, jax.ShapeDtypeStruct):
            condition_mask = jnp.asarray(condition_mask).astype(bool)
        rescore = self._rescore_inputs(rescore_condition, condition.shape[0])
        rescore = None if rescore is None else (self.rescorer_params, *rescore)
        with self._context():
            return self._generate_jit.lower(self.params, condition, condition_mask, prompt, key, knobs, rescore,
                                            settings=settings, length=length)

    def generate_stepwise(self, condition, condition_mask, key, settings: SamplerSettings,
                          knobs: Optional[DecodeKnobs] = None, *, length: int, prompt=None,
                          progress: Optional[ProgressFn] = None,
                          rescore_condition=None) -> Iterator[Tuple[int, int, jnp.ndarray]]:
        """Yields (stage, step, codes) after every step; the last codes equal `generate`'s.

        Same step function and keys as `generate`, dispatched one step at a time: for
        progress bars and streaming intermediate results.
        """
        knobs = DecodeKnobs.create() if knobs is None else knobs
        b, (condition, condition_mask, prompt), rescore = self._inputs(condition, condition_mask, prompt, settings,
                                                                       length, rescore_condition)
        total, done = settings.total_steps, 0
        with self._context():
            cross = self._prepare_jit(self.params, condition, condition_mask)
            rescore = self._prepare_rescorer_jit(rescore)
            length = output_length(settings, length)
            prompt_len = 0 if prompt is None else prompt.shape[-1]
            codes = self._initial_codes(prompt, condition.shape[0], length)
            for stage, steps in enumerate(settings.decoding_steps):
                state = initial_stage_state(codes, StageTables.build(settings, steps, length, prompt_len))
                for i in range(steps):
                    state = self._step_jit(self.params, cross, state, jnp.int32(i), key, knobs, prompt, rescore,
                                           stage=stage, settings=settings, length=length, prompt_len=prompt_len)
                    done += 1
                    if progress is not None:
                        progress(done, total)
                    yield stage, i, state.codes[:b]
                codes = state.codes
