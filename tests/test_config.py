"""Config files, command-line overrides, dict round trip and config diffs."""
import dataclasses
import json
import pathlib

import pytest

from magnet_jax.config import Config, LMConfig
from magnet_jax.config_io import (
    apply_overrides,
    config_from_dict,
    config_to_dict,
    diff_configs,
    format_config,
    load_config,
)

CONFIG_DIR = pathlib.Path(__file__).resolve().parent.parent / "configs"
CONFIG_FILES = sorted(p for p in CONFIG_DIR.glob("*.py") if not p.name.startswith("_"))


def test_config_dir_has_named_configs():
    names = {p.stem for p in CONFIG_FILES}
    assert {"tiny", "quickstart", "magnet_small_10s", "magnet_medium_10s", "magnet_small_30s",
            "magnet_medium_30s", "audio_magnet_small", "audio_magnet_medium"} <= names


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.stem)
def test_every_config_loads_and_validates(path):
    cfg = load_config(str(path))
    assert isinstance(cfg, Config)
    assert cfg.name == path.stem
    assert len(cfg.decode.decoding_steps) == cfg.lm.n_q
    assert not hasattr(cfg.masking, "span_len")  # one span length: lm.span_len
    assert cfg.lm.dim % cfg.lm.num_heads == 0
    assert cfg.data.num_frames > 0
    # Round trip through JSON.
    d = json.loads(json.dumps(config_to_dict(cfg)))
    assert config_from_dict(d) == cfg
    assert format_config(cfg)


def test_named_config_values():
    tiny = load_config(str(CONFIG_DIR / "tiny.py"))
    assert (tiny.lm.n_q, tiny.lm.card, tiny.lm.dim, tiny.data.num_frames) == (4, 64, 32, 30)
    quick = load_config(str(CONFIG_DIR / "quickstart.py"))
    assert quick.data.num_frames == 100 and quick.train.num_steps == 1000 and quick.train.smoke_test
    small = load_config(str(CONFIG_DIR / "magnet_small_10s.py"))
    assert (small.lm.num_layers, small.lm.dim, small.lm.num_heads) == (24, 1024, 16)
    assert small.optim.optimizer == "dadam" and small.optim.lr == 1.0 and small.optim.warmup_steps == 4000
    assert small.decode.decoding_steps == (60, 10, 10, 10) and small.data.num_frames == 500
    medium = load_config(str(CONFIG_DIR / "magnet_medium_30s.py"))
    assert (medium.lm.num_layers, medium.lm.dim, medium.lm.num_heads, medium.lm.remat) == (48, 1536, 24, True)
    assert medium.data.num_frames == 1500
    audio = load_config(str(CONFIG_DIR / "audio_magnet_small.py"))
    assert audio.optim.schedule == "inverse_sqrt" and audio.optim.lr == 5e-4
    assert audio.decode.max_cfg_coef == 20.0 and audio.decode.decoding_steps == (20, 10, 10, 10)


def test_load_config_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.py"):
        load_config(str(tmp_path / "nope.py"))
    bad = tmp_path / "bad.py"
    bad.write_text("X = 1\n")
    with pytest.raises(ValueError, match="get_config"):
        load_config(str(bad))


def test_load_config_from_any_directory_with_sibling_helper(tmp_path):
    (tmp_path / "_base.py").write_text(
        "from magnet_jax.config import Config\n"
        "def base():\n    return Config(name='from_tmp')\n"
    )
    (tmp_path / "mine.py").write_text("from _base import base\n\ndef get_config():\n    return base()\n")
    assert load_config(str(tmp_path / "mine.py")).name == "from_tmp"
    # The repo's configs/_base.py is still the one used for the repo's configs afterwards.
    assert load_config(str(CONFIG_DIR / "magnet_small_10s.py")).name == "magnet_small_10s"
    assert load_config(str(tmp_path / "mine.py"), ["train.seed=3"]).train.seed == 3


def test_overrides_of_each_type():
    cfg = Config()
    out = apply_overrides(cfg, [
        "config.lm.dim=512",  # int
        "--config.optim.lr=1e-4",  # float with exponent, '--config.' prefix
        "optim.weight_decay=1",  # float given as an int
        "train.plot=False",  # bool
        "lm.causal=yes",
        "lm.layer_scale=none",  # Optional -> None
        "lm.depthwise_init=null",
        "decode.decoding_steps=20,10,10,10",  # tuple
        "train.workdir=runs/x",  # str
        "name=renamed",  # top-level leaf
    ])
    assert out.lm.dim == 512 and isinstance(out.lm.dim, int)
    assert out.optim.lr == pytest.approx(1e-4) and isinstance(out.optim.lr, float)
    assert out.optim.weight_decay == 1.0 and isinstance(out.optim.weight_decay, float)
    assert out.train.plot is False and out.lm.causal is True
    assert out.lm.layer_scale is None and out.lm.depthwise_init is None
    assert out.decode.decoding_steps == (20, 10, 10, 10)
    assert out.train.workdir == "runs/x" and out.name == "renamed"
    # The input is untouched (frozen dataclasses).
    assert cfg.lm.dim == 1024


@pytest.mark.parametrize("text", ["60,10,10,10", "[60,10,10,10]", "(60, 10, 10, 10)", "[60, 10, 10, 10,]"])
def test_tuple_syntaxes(text):
    out = apply_overrides(Config(), [f"decode.decoding_steps={text}"])
    assert out.decode.decoding_steps == (60, 10, 10, 10)


def test_optional_float_and_bool_words():
    assert apply_overrides(Config(), ["lm.layer_scale=1e-4"]).lm.layer_scale == pytest.approx(1e-4)
    for word, value in [("TRUE", True), ("0", False), ("No", False), ("1", True)]:
        assert apply_overrides(Config(), [f"train.plot={word}"]).train.plot is value
    with pytest.raises(ValueError, match="train.plot"):
        apply_overrides(Config(), ["train.plot=maybe"])


def test_mesh_rules_override():
    out = apply_overrides(Config(), ["mesh.rules=(('batch', ('data',)), ('embed', ()))"])
    assert out.mesh.rules == (("batch", ("data",)), ("embed", ()))
    out = apply_overrides(Config(), ['mesh.rules=[["batch", ["data", "fsdp"]]]'])
    assert out.mesh.rules == (("batch", ("data", "fsdp")),)


def test_unknown_key_names_key_and_suggests():
    with pytest.raises(ValueError) as e:
        apply_overrides(Config(), ["--config.optim.learning_rat=1e-3"])
    msg = str(e.value)
    assert "optim.learning_rat" in msg and "warmup_steps" in msg  # valid keys listed
    with pytest.raises(ValueError) as e:
        apply_overrides(Config(), ["config.lm.num_layer=3"])
    assert "lm.num_layer" in str(e.value) and "num_layers" in str(e.value)
    with pytest.raises(ValueError) as e:
        apply_overrides(Config(), ["config.optm.lr=1"])
    assert "'optm'" in str(e.value) and "optim" in str(e.value)


def test_wrong_type_names_key_type_and_value():
    with pytest.raises(ValueError) as e:
        apply_overrides(Config(), ["lm.dim=big"])
    msg = str(e.value)
    assert "lm.dim" in msg and "int" in msg and "big" in msg
    with pytest.raises(ValueError) as e:
        apply_overrides(Config(), ["optim.lr=fast"])
    assert "optim.lr" in str(e.value) and "float" in str(e.value)
    with pytest.raises(ValueError, match="decode.decoding_steps"):
        apply_overrides(Config(), ["decode.decoding_steps=a,b,c,d"])
    with pytest.raises(ValueError, match="lm.dim"):
        apply_overrides(Config(), ["lm.dim=1.5"])


def test_section_level_and_malformed_overrides():
    with pytest.raises(ValueError, match="set its leaves"):
        apply_overrides(Config(), ["lm=foo"])
    with pytest.raises(ValueError, match="not a section"):
        apply_overrides(Config(), ["lm.dim.x=1"])
    with pytest.raises(ValueError, match="="):
        apply_overrides(Config(), ["lm.dim"])


def test_post_init_validation_runs_through_overrides():
    with pytest.raises(ValueError, match="decoding_steps"):
        apply_overrides(Config(), ["decode.decoding_steps=10,10"])
    with pytest.raises(ValueError, match="lm.span_len=0: it must be"):
        apply_overrides(Config(), ["lm.span_len=0"])
    # The span length's old second home names its new one.
    with pytest.raises(ValueError, match="'masking.span_len' is now 'lm.span_len'"):
        apply_overrides(Config(), ["masking.span_len=1"])
    assert apply_overrides(Config(), ["lm.span_len=1"]).lm.span_len == 1
    # Configs written with both keys (checkpoints, converted models) still read, if they agree.
    old = config_to_dict(Config(lm=LMConfig(span_len=1)))
    old["masking"]["span_len"] = 1
    assert config_from_dict(old) == Config(lm=LMConfig(span_len=1))
    old["masking"]["span_len"] = 3
    with pytest.raises(ValueError, match="masking.span_len=3"):
        config_from_dict(old)
    # Coupled changes are applied together before validating.
    out = apply_overrides(Config(), ["lm.n_q=2", "decode.decoding_steps=5,5"])
    assert out.lm.n_q == 2
    # Later overrides of a key win.
    assert apply_overrides(Config(), ["lm.dim=64", "lm.dim=128"]).lm.dim == 128


def test_load_config_with_overrides():
    cfg = load_config(str(CONFIG_DIR / "tiny.py"), ["--config.train.num_steps=3", "config.optim.lr=1e-2"])
    assert cfg.train.num_steps == 3 and cfg.optim.lr == 1e-2


def test_dict_round_trip_and_errors():
    cfg = apply_overrides(Config(), ["lm.layer_scale=0.1", "mesh.rules=(('batch', ('data',)),)"])
    d = config_to_dict(cfg)
    assert isinstance(d["decode"]["decoding_steps"], list)
    assert d["mesh"]["rules"] == [["batch", ["data"]]]
    json.dumps(d)
    back = config_from_dict(d)
    assert back == cfg and isinstance(back.decode.decoding_steps, tuple)
    # Missing keys take their defaults; unknown keys are errors.
    partial = config_from_dict({"lm": {"dim": 64, "num_heads": 4}})
    assert partial.lm.dim == 64 and partial.optim == Config().optim
    with pytest.raises(ValueError, match="lm.dimm"):
        config_from_dict({"lm": {"dimm": 64}})
    with pytest.raises(ValueError, match="nope"):
        config_from_dict({"nope": 1})


def test_diff_configs():
    a = Config()
    b = apply_overrides(a, ["lm.dim=512", "optim.lr=3e-4", "decode.decoding_steps=1,1,1,1"])
    assert diff_configs(a, a) == []
    assert diff_configs(a, b) == ["lm.dim", "decode.decoding_steps", "optim.lr"]
    assert diff_configs(b, a) == diff_configs(a, b)


def test_format_config_mentions_every_section():
    text = format_config(load_config(str(CONFIG_DIR / "quickstart.py")))
    for f in dataclasses.fields(Config):
        assert f.name in text
    assert "num_frames = 100" in text.replace("  ", " ")


@pytest.mark.parametrize("override, message", [
    ("train.global_batch_size=0", r"train.global_batch_size=0: it must be > 0"),
    ("train.global_batch_size=-8", r"train.global_batch_size=-8: it must be > 0"),
    ("lm.num_heads=0", r"lm.num_heads=0: it must be > 0"),
    ("train.checkpoint_every=0", r"train.checkpoint_every=0: it must be > 0"),
    ("train.log_every=0", r"train.log_every=0: it must be > 0"),
    ("train.keep_checkpoints=0", r"train.keep_checkpoints=0: it must be > 0 \(0 would keep no checkpoint"),
    ("optim.lr=-1", r"optim.lr=-1.0: it must be > 0"),
    ("optim.lr=nan", r"optim.lr=nan: it must be > 0"),
    ("optim.b2=1", r"optim.b2=1.0: it must be in \[0, 1\)"),
    ("mesh.fsdp=0", r"mesh.fsdp=0: it must be >= 1, or -1"),
    ("decode.top_p=2", r"decode.top_p=2.0: it must be in \[0, 1\]"),
    ("data.source=tfds", r"train.smoke_test judges a run by the synthetic data.*drop --config.train.smoke_test"),
])
def test_values_out_of_range_are_refused_naming_the_key(override, message):
    with pytest.raises(ValueError, match=message):
        load_config(str(CONFIG_DIR / "tiny.py"), [override, "train.smoke_test=True"])
