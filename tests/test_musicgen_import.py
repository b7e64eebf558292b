"""audiocraft MusicGen LM checkpoints (causal, delay pattern) load into our LM with the same logits.

The reference is audiocraft's `LMModel`, built by its own builder from a MusicGen `xp.cfg`, with
its T5 conditioner on a tiny local T5; we compare `LMModel.forward` on a delayed code sequence
(built by audiocraft's own delay pattern) with our causal LM on the same sequence.
"""

import jax.numpy as jnp
import numpy as np
from flax import nnx

from magnet_jax.convert.audiocraft_checkpoint import load_audiocraft_lm
from magnet_jax.convert.t5 import load_t5_encoder
from magnet_jax.text.tokenizer import T5Tokenizer

from tests.reference import audiocraft_lm as harness
from tests.reference import require
from tests.reference.audiocraft_pipeline import CARD, make_musicgen_lm
from tests.t5_fixtures import make_t5

torch = require("torch")
omegaconf = require("omegaconf")

TEXTS = ["heavy metal with distorted guitars", "rain", None]


def test_musicgen_logits_match_audiocraft(tmp_path):
    make_t5(tmp_path / "t5-base", d_model=768, num_layers=1, num_heads=2, d_kv=8, d_ff=32)
    ref = make_musicgen_lm(tmp_path, seed=1)
    ac = harness.load_audiocraft()

    config, model = load_audiocraft_lm(tmp_path)
    assert config.lm.causal and config.lm.codebook_delays == (0, 1, 2, 3)
    codes = torch.from_numpy(np.random.default_rng(0).integers(0, CARD, (len(TEXTS), 4, 20)))
    pattern = ref.pattern_provider.get_pattern(20)
    seq, _, _ = pattern.build_pattern_sequence(codes, ref.special_token_id, keep_only_valid_steps=False)
    attrs = [ac.conditioners.ConditioningAttributes(text={"description": t}) for t in TEXTS]
    with torch.no_grad():
        want = ref(seq, attrs).numpy()

    _, t5 = load_t5_encoder(tmp_path / "t5-base")
    ids, mask = T5Tokenizer(tmp_path / "t5-base")([t or "" for t in TEXTS])
    mask[[i for i, t in enumerate(TEXTS) if not t]] = 0
    hidden = t5(jnp.asarray(ids), jnp.asarray(mask))
    cond, cond_mask = model.conditioner(hidden, jnp.asarray(mask))
    got = np.asarray(nnx.jit(lambda m, c: m.lm(c, cond, cond_mask))(model, jnp.asarray(seq.numpy(), jnp.int32)))
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
