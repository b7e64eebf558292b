"""audiocraft `xp.cfg` -> Config: every field the model needs, interpolations, and clear refusals."""
import pytest

from magnet_jax.convert.audiocraft_config import XpConfigError, config_from_xp_cfg, parse_xp_cfg

from tests.reference.xp_cfg import magnet_xp_cfg


def test_magnet_fields():
    cfg = config_from_xp_cfg(parse_xp_cfg(magnet_xp_cfg(dim=48, num_heads=6, num_layers=3, card=64,
                                                        subcodes_context=4, span_len=2, segment_duration=30,
                                                        decoding_steps=(20, 10, 10, 10), temp=3.5, top_p=0.8,
                                                        max_cfg_coef=20.0)), frame_rate=50)
    lm = cfg.lm
    assert (lm.dim, lm.num_heads, lm.num_layers, lm.card, lm.n_q) == (48, 6, 3, 64, 4)
    assert (lm.subcodes_context, lm.span_len, lm.causal, lm.norm_first) == (4, 2, False, True)
    assert (lm.bias_attn, lm.bias_ff, lm.bias_proj, lm.layer_scale, lm.codebook_delays) == (False, False, False, None, ())
    assert cfg.data.segment_duration == 30 and cfg.data.frame_rate == 50
    assert cfg.conditioner.encoder == "t5" and cfg.conditioner.t5_name == "t5-base"
    assert cfg.conditioner.output_dim == 768 and cfg.conditioner.word_dropout == 0.3
    assert cfg.conditioner.cfg_dropout == 0.3
    d = cfg.decode
    assert d.decoding_steps == (20, 10, 10, 10) and d.temperature == 3.5 and d.top_p == 0.8
    assert d.max_cfg_coef == 20.0 and d.span_arrangement == "nonoverlap" and d.anneal_temperature


def test_musicgen_fields():
    cfg = config_from_xp_cfg(parse_xp_cfg(magnet_xp_cfg(lm_model="transformer_lm", causal=True, bias=True,
                                                        layer_scale=0.1, norm_first=False)))
    lm = cfg.lm
    assert lm.causal and lm.codebook_delays == (0, 1, 2, 3) and lm.subcodes_context == -1 and lm.span_len == 1
    assert lm.bias_attn and lm.bias_ff and lm.bias_proj and lm.layer_scale == 0.1 and not lm.norm_first


def test_interpolations_resolve():
    text = "a: {b: 3, c: '${a.b}', d: 'x${a.b}y'}\ne: ${a.c}\n"
    assert parse_xp_cfg(text) == {"a": {"b": 3, "c": 3, "d": "x3y"}, "e": 3}
    with pytest.raises(XpConfigError, match="missing key"):
        parse_xp_cfg("a: ${nope.x}\n")


@pytest.mark.parametrize("old,new,needle", [
    ("positional_embedding: sin", "positional_embedding: rope", "positional_embedding"),
    ("kv_repeat: 1", "kv_repeat: 2", "kv_repeat"),
    ("qk_layer_norm: false", "qk_layer_norm: true", "qk_layer_norm"),
    ("  prepend: []", "  prepend: [self_wav]", "fuser.prepend"),
    ("normalize_text: false", "normalize_text: true", "normalize_text"),
    ("lm_model: transformer_lm_magnet", "lm_model: diffusion", "lm_model"),
    ("name: t5-base", "name: bert", "t5.name"),
])
def test_unsupported_settings_are_named(old, new, needle):
    text = magnet_xp_cfg()
    assert old in text
    with pytest.raises(XpConfigError, match=needle.replace(".", r"\.")):
        config_from_xp_cfg(parse_xp_cfg(text.replace(old, new)))


def test_not_yaml_or_not_lm():
    with pytest.raises(XpConfigError, match="YAML"):
        parse_xp_cfg("a: [1, 2\n")
    with pytest.raises(XpConfigError, match="lm_model"):
        config_from_xp_cfg(parse_xp_cfg("sample_rate: 32000\n"))


def test_decoding_steps_need_one_entry_per_codebook():
    with pytest.raises(XpConfigError, match="decoding_steps"):
        config_from_xp_cfg(parse_xp_cfg(magnet_xp_cfg(decoding_steps=(6, 3, 3))))
