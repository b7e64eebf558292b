"""Our Flax T5 encoder against transformers' PyTorch T5 (random weights, local tokenizer)."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from magnet_jax.convert.audiocraft_lm import ConversionError
from magnet_jax.convert.t5 import load_t5_encoder
from magnet_jax.text.t5 import relative_position_buckets
from magnet_jax.text.tokenizer import T5Tokenizer

from tests.reference import require
from tests.t5_fixtures import make_t5, make_tokenizer

torch = require("torch")
require("transformers")

TEXTS = ["80s disco with a funky bass", "rain", "slow jazz with piano and soft drums played late at night"]


@pytest.mark.parametrize("ffn,full,safetensors", [("relu", True, True), ("gated-gelu", False, True),
                                                  ("relu", False, False)],
                         ids=["t5-relu-full-safetensors", "v1.1-gated-gelu-encoder", "relu-bin"])
def test_hidden_states_match_transformers(tmp_path, ffn, full, safetensors):
    ref = make_t5(tmp_path, ffn=ffn, full=full, safetensors=safetensors)
    cfg, ours = load_t5_encoder(tmp_path)
    tok = T5Tokenizer(tmp_path)
    ids, mask = tok(TEXTS)
    assert ids.shape[0] == 3 and mask[1].sum() < mask[2].sum() == ids.shape[1]  # padded to the longest
    encoder = ref.get_encoder() if full else ref
    with torch.no_grad():
        want = encoder(input_ids=torch.from_numpy(ids.astype(np.int64)),
                       attention_mask=torch.from_numpy(mask.astype(np.int64))).last_hidden_state.numpy()
    got = np.asarray(ours(jnp.asarray(ids), jnp.asarray(mask)))
    assert got.shape == want.shape
    # Padded positions too: both compute them the same way (they are zeroed later by the conditioner).
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_buckets_match_transformers():
    from transformers.models.t5.modeling_t5 import T5Attention

    rel = torch.arange(50)[None, :] - torch.arange(40)[:, None]
    want = T5Attention._relative_position_bucket(rel, bidirectional=True, num_buckets=32, max_distance=128)
    np.testing.assert_array_equal(relative_position_buckets(40, 50, 32, 128), want.numpy())


def test_missing_extra_and_no_config(tmp_path):
    from safetensors.numpy import load_file, save_file

    make_t5(tmp_path, full=False, tokenizer=False)
    tensors = load_file(tmp_path / "model.safetensors")
    drop = dict(tensors)
    drop.pop("encoder.block.1.layer.1.DenseReluDense.wo.weight")
    save_file(drop, tmp_path / "model.safetensors")
    with pytest.raises(ConversionError, match="lacks 1 encoder tensors"):
        load_t5_encoder(tmp_path)
    save_file({**tensors, "encoder.block.9.layer.0.layer_norm.weight": np.ones(32, np.float32)},
              tmp_path / "model.safetensors")
    with pytest.raises(ConversionError, match="not used"):
        load_t5_encoder(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**json.loads((tmp_path / "config.json").read_text()),
                                                      "model_type": "bert"}))
    with pytest.raises(ConversionError, match="not T5"):
        load_t5_encoder(tmp_path)
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_t5_encoder(tmp_path / "nowhere")


def test_tokenizer_knows_the_words_and_pads(tmp_path):
    from magnet_jax.text.tokenizer import T5Tokenizer

    make_tokenizer(tmp_path)
    tok = T5Tokenizer(tmp_path, max_length=64)
    assert tok._fast is not None  # the direct path reproduced transformers' own call
    ids, mask = tok(["slow jazz with piano", "rain"])
    unk = tok._tok.unk_token_id
    assert ids.shape == mask.shape and ids.dtype == np.int32 and (ids[mask == 1] != unk).all()
    assert tok._tok.decode(ids[0][mask[0] == 1], skip_special_tokens=True) == "slow jazz with piano"
    assert mask[1].sum() < mask[0].sum() and ids.shape[1] == mask[0].sum()  # 'longest': the batch's longest
    fixed = T5Tokenizer(tmp_path, max_length=12, padding="max_length")
    long_ids, long_mask = fixed(["a dog barks " * 20, ""])
    assert long_ids.shape == (2, 12) and long_mask[0].all() and long_ids[0, -1] == tok._tok.eos_token_id
    assert long_mask[1].tolist() == [1] + [0] * 11  # an empty caption is just </s>
    fixed._fast = None  # the tokenizer's own call gives the same
    for a, b in zip(fixed(["a dog barks " * 20, ""]), (long_ids, long_mask)):
        np.testing.assert_array_equal(a, b)


def test_the_frozen_encoder_is_sharded_by_the_mesh_rules(tmp_path):
    """FSDP over 8 devices: the trainer places T5's kernels over fsdp (t5-large on a pod), and its
    hidden states are those of the replicated encoder; under pure data parallelism it stays whole."""
    from magnet_jax.config_io import load_config
    from magnet_jax.parallel.logical import axis_rules
    from magnet_jax.parallel.mesh import make_mesh
    from magnet_jax.train.setup import frozen_text_encoder

    make_t5(tmp_path / "t5", full=False, tokenizer=False)
    ids = jnp.asarray(np.random.default_rng(0).integers(2, 96, (8, 6)), jnp.int32)
    mask = jnp.ones((8, 6), jnp.int32).at[0, 4:].set(0)
    out = {}
    for mesh_axes in (["mesh.data=1", "mesh.fsdp=-1"], ["mesh.data=-1"]):
        cfg = load_config("configs/tiny.py", ["conditioner.encoder=t5", f"conditioner.t5_name={tmp_path / 't5'}",
                                              "conditioner.output_dim=32", *mesh_axes])
        mesh = make_mesh(cfg.mesh)
        encode, params = frozen_text_encoder(cfg, mesh)
        specs = {tuple(x.sharding.spec) for x in jax.tree.leaves(params)}
        with jax.set_mesh(mesh), axis_rules(cfg.mesh.rules):
            out[mesh_axes[0]] = np.asarray(jax.jit(encode)(params, ids, mask))
        if "mesh.fsdp=-1" in mesh_axes:
            assert {("fsdp",), (None, "fsdp")} <= specs, specs  # kernels [embed, .] and [., embed]
        else:
            assert specs == {()}, specs
    np.testing.assert_allclose(out["mesh.data=1"], out["mesh.data=-1"], atol=1e-5)
