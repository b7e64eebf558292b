"""The one sampler interface: `MagnetSampler`, `ARSampler` and `HybridSampler` are `Sampler`s and
share one input check (the condition, its mask, the prompt; MAGNeT's per-codebook settings).
Every refusal comes before anything compiles."""
import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from magnet_jax.config import LMConfig
from magnet_jax.decode.autoregressive import ARSampler
from magnet_jax.decode.hybrid import HybridSampler, HybridSettings
from magnet_jax.decode.interface import Sampler
from magnet_jax.decode.sampler import MagnetSampler
from magnet_jax.decode.settings import SamplerSettings
from magnet_jax.models.magnet_lm import MagnetLM

# A Hybrid-MAGNeT LM: each of the three samplers decodes it.
CFG = LMConfig(n_q=4, card=16, dim=16, num_heads=2, num_layers=1, kind="hybrid", codebook_delays=(0, 1, 2, 3))


def test_every_sampler_checks_its_inputs_with_the_one_shared_check():
    lm = nnx.eval_shape(lambda: MagnetLM(CFG, rngs=nnx.Rngs(0)))  # abstract: nothing runs
    key, length = jax.random.key(0), 12
    cond, mask = jnp.zeros((2, 5, CFG.dim)), jnp.ones((2, 5), bool)
    steps = SamplerSettings(decoding_steps=(2, 1, 1, 1), span_len=CFG.span_len)
    magnet, ar, hybrid = MagnetSampler(lm), ARSampler(lm), HybridSampler(lm)
    assert all(isinstance(s, Sampler) and s.config == CFG for s in (magnet, ar, hybrid))
    generate = {
        "magnet": lambda c, m, settings=steps, **kw: magnet.generate(c, m, key, settings, length=length, **kw),
        "ar": lambda c, m, **kw: ar.generate(c, m, key, length=length, **kw),
        "hybrid": lambda c, m, settings=steps, **kw: hybrid.generate(c, m, key, HybridSettings(3, settings),
                                                                     length=length, **kw),
    }
    for name, run in generate.items():
        with pytest.raises(ValueError, match=r"condition must be the projected text condition \[B, S, 16\]"):
            run(cond[..., :8], mask)
        with pytest.raises(ValueError, match=r"condition_mask must be \[B, S\] = \(2, 5\), got \(2, 4\)"):
            run(cond, mask[:, :4])
        if name == "hybrid":  # no prompt (continuation) for Hybrid-MAGNeT yet
            continue
        with pytest.raises(ValueError, match=r"prompt must be codes \[B=2, K=4, P\]"):
            run(cond, mask, prompt=jnp.zeros((2, 3, 4), jnp.int32))
        with pytest.raises(ValueError, match="must be shorter than length=12"):
            run(cond, mask, prompt=jnp.zeros((2, 4, length), jnp.int32))
    for name in ("magnet", "hybrid"):  # MAGNeT's stages: one step count per codebook, the LM's span
        with pytest.raises(ValueError, match="decoding_steps has 3 entries, the LM has n_q=4 codebooks"):
            generate[name](cond, mask, settings=SamplerSettings(decoding_steps=(2, 1, 1), span_len=CFG.span_len))
        with pytest.raises(ValueError, match=f"span_len={CFG.span_len + 1} differs from the LM's"):
            generate[name](cond, mask, settings=SamplerSettings(decoding_steps=(2, 1, 1, 1),
                                                                span_len=CFG.span_len + 1))
