"""A second process reuses the programs compiled by the first (JAX's persistent cache): the
sampler, the codec decoder and the T5 encoder."""
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import sys
    import jax, jax.numpy as jnp
    from flax import nnx
    from magnet_jax.config import LMConfig
    from magnet_jax.caches import enable_compilation_cache
    from magnet_jax.decode.sampler import MagnetSampler
    from magnet_jax.decode.settings import SamplerSettings
    from magnet_jax.models.magnet_lm import MagnetLM
    enable_compilation_cache(sys.argv[1], min_compile_time_secs=0.0)
    from jax._src import monitoring
    hits = []
    monitoring.register_event_listener(lambda event, **kw: hits.append(event) if "cache_hits" in event else None)
    lm = MagnetLM(LMConfig(card=16, dim=16, num_heads=2, num_layers=1), rngs=nnx.Rngs(0))
    cond = jnp.ones((1, 3, 16)); mask = jnp.ones((1, 3), bool)
    codes = MagnetSampler(lm).generate(cond, mask, jax.random.key(0), SamplerSettings(decoding_steps=(2, 1, 1, 1)),
                                       length=12)
    print("CODES", codes.tolist())
    after = [len(hits)]
    from magnet_jax.codec import EncodecConfig, EncodecModel
    from magnet_jax.text.t5 import T5Config, T5Encoder
    codec = EncodecModel(EncodecConfig(num_filters=4, codebook_size=16, codebook_dim=8, hidden_size=8), rngs=nnx.Rngs(0))
    jax.block_until_ready(codec.decode(codes))
    after.append(len(hits))
    t5 = T5Encoder(T5Config(vocab_size=32, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2), rngs=nnx.Rngs(0))
    jax.block_until_ready(jax.jit(lambda ids: t5(ids, jnp.ones_like(ids)))(jnp.ones((1, 4), jnp.int32)))
    after.append(len(hits))
    print("HITS", *after)  # cumulative cache hits after the sampler, the codec, T5
""")


def _run(cache_dir):
    env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(cache_dir)], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    return [l for l in lines if l.startswith("CODES")][0], lines[-1]


def test_second_process_hits_the_persistent_cache(tmp_path):
    codes1, first = _run(tmp_path / "xla")
    assert first == "HITS 0 0 0" and any((tmp_path / "xla").iterdir())
    codes2, second = _run(tmp_path / "xla")
    sampler, codec, t5 = map(int, second.split()[1:])
    assert 0 < sampler < codec < t5 and codes1 == codes2  # each part's programs come from the cache
