"""The pretrained-model path end to end, offline: an official-layout folder (audiocraft
`state_dict.bin` + `xp.cfg`, `compression_state_dict.bin` pointing at a Hugging Face EnCodec,
a Hugging Face T5 with a local tokenizer) loaded through the real loaders, against audiocraft's
own loading of the same files."""
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from magnet_jax import MAGNeT
from magnet_jax.convert.audiocraft_checkpoint import load_audiocraft_lm
from magnet_jax.convert.audiocraft_lm import ConversionError
from magnet_jax.hub import ModelNotFoundError, resolve_model_dir

from tests.reference import audiocraft_lm as harness
from tests.reference import require
from tests.reference.audiocraft_pipeline import SEGMENT, ReferencePipeline, make_magnet_folder

torch = require("torch")
require("omegaconf")

TEXTS = ["80s disco with a funky bass", "rain", None]
STEPS = (6, 3, 3, 2)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_magnet_folder(tmp_path_factory.mktemp("magnet") / "magnet-tiny")


@pytest.fixture(scope="module")
def reference(folder):
    return ReferencePipeline(folder)


@pytest.fixture(scope="module")
def pipeline(folder, tmp_path_factory):
    return MAGNeT.from_pretrained(str(folder), cache_dir=str(tmp_path_factory.mktemp("cache")), local_files_only=True)


def test_config_read_from_the_checkpoint(pipeline):
    cfg = pipeline.config
    assert (cfg.lm.dim, cfg.lm.num_layers, cfg.lm.card, cfg.lm.subcodes_context, cfg.lm.span_len) == (32, 2, 64, 3, 3)
    assert cfg.decode.decoding_steps == STEPS and pipeline.duration == SEGMENT
    assert (pipeline.sample_rate, pipeline.frame_rate) == (32000, 50.0)


def test_logits_match_audiocraft_compute_predictions(pipeline, reference):
    rng = np.random.default_rng(0)
    t = int(SEGMENT * 50)
    codes = rng.integers(0, 65, (len(TEXTS), 4, t))  # mask ids included
    cond, mask = pipeline.encode_text(TEXTS)
    fwd = nnx.jit(lambda m, c, s: m(c, cond, mask, stage=s), static_argnums=2)
    for stage in range(4):
        want = reference.logits(codes, TEXTS, stage)
        got = np.asarray(fwd(pipeline.model.lm, jnp.asarray(codes, jnp.int32), stage))
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4, err_msg=f"stage {stage}")


@pytest.mark.parametrize("arrangement", ["nonoverlap", "stride1"])
def test_text_to_waveform_matches_audiocraft(pipeline, reference, arrangement):
    texts = TEXTS[:2]
    kw = dict(use_sampling=False, top_k=0, max_cfg_coef=10.0, min_cfg_coef=1.0, decoding_steps=list(STEPS),
              span_scoring="max", span_arrangement=arrangement)
    probe = harness.ReferenceMagnet(model=reference.lm, lm_cfg=None, seq_len=50, audiocraft=reference.ac)
    with probe.tie_probe() as ties:
        want = reference.generate_codes(texts, temp=3.0, top_p=0.0, anneal_temp=True, **kw)
    assert not ties, f"exact ties in the reference's span selection (implementation-defined order): {ties[:3]}"
    got = pipeline.generate_codes(texts, temperature=3.0, top_p=0.0, anneal_temperature=True, **kw)
    np.testing.assert_array_equal(got, want)
    wav = pipeline.decode_codes(got)
    want_wav = reference.decode(want)
    assert wav.shape == want_wav.shape == (2, 1, got.shape[-1] * 640)
    np.testing.assert_allclose(wav, want_wav, atol=1e-4, rtol=0)


def test_sampling_is_seeded_and_knobs_override(pipeline):
    a = pipeline.generate_codes(["rain"], seed=1, decoding_steps=(2, 1, 1, 1))
    b = pipeline.generate_codes(["rain"], seed=1, decoding_steps=(2, 1, 1, 1))
    c = pipeline.generate_codes(["rain"], seed=2, decoding_steps=(2, 1, 1, 1))
    np.testing.assert_array_equal(a, b)
    assert (a != c).any() and a.shape == (1, 4, 48)  # 50 frames trimmed to whole spans of 3
    with pytest.raises(TypeError, match="unknown decoding setting"):
        pipeline.generate_codes(["rain"], temprature=2.0)
    with pytest.raises(ValueError, match="4 entries"):
        pipeline.generate_codes(["rain"], decoding_steps=(2, 1))
    with pytest.raises(TypeError, match="unknown decoding setting"):  # the trained model's, not a knob
        pipeline.generate_codes(["rain"], span_len=1)
    for bad, match in [(dict(duration=float("nan")), "positive number"), (dict(duration=float("inf")), "positive"),
                       (dict(duration=1e7), "limit of 3600"), (dict(decoding_steps=(1_000_000, 1, 1, 1)), "at most 1000"),
                       (dict(temperature=-1.0), "temperature must be >= 0"), (dict(top_p=1.5), r"top_p must be in \[0, 1\]"),
                       (dict(top_p=-0.1), "top_p"), (dict(max_cfg_coef=float("nan")), "finite")]:
        with pytest.raises(ValueError, match=match):
            pipeline.generate_codes(["rain"], **bad)


def test_longer_than_segment_and_continuation(pipeline, monkeypatch):
    calls = []  # (prompt codes or None, the window's codes) of every sampler call
    generate = pipeline.sampler.generate

    def spy(*args, prompt=None, **kwargs):
        out = generate(*args, prompt=prompt, **kwargs)
        calls.append((None if prompt is None else np.asarray(prompt), np.asarray(out)))
        return out

    monkeypatch.setattr(pipeline.sampler, "generate", spy)
    codes = pipeline.generate_codes(["rain"], duration=2 * SEGMENT, decoding_steps=(2, 1, 1, 1))
    assert codes.shape == (1, 4, 100) and len(calls) >= 2 and calls[0][0] is None
    # Windows: each continues the tail of what came before, keeps it as it was, and adds the rest.
    so_far = calls[0][1]
    for prompt, window in calls[1:]:
        np.testing.assert_array_equal(prompt, so_far[..., -prompt.shape[-1]:])
        np.testing.assert_array_equal(window[..., :prompt.shape[-1]], prompt)
        so_far = np.concatenate([so_far, window[..., prompt.shape[-1]:]], axis=-1)
    np.testing.assert_array_equal(codes, so_far[..., :100])

    calls.clear()
    prompt = pipeline.decode_codes(codes[..., :9])[0]  # [C, N] at 32 kHz
    out = pipeline.generate_continuation(prompt, 32000, ["rain"], decoding_steps=(2, 1, 1, 1))
    assert out.shape == (1, 1, 48 * 640)
    # The prompt's codes are kept, and the audio is the decoding of the continued codes.
    (used, continued), = calls
    np.testing.assert_array_equal(used, pipeline.encode_audio(prompt, 32000))
    assert used.shape == (1, 4, 9)
    np.testing.assert_array_equal(continued[..., :9], used)
    np.testing.assert_array_equal(out, pipeline.decode_codes(continued))


def test_converted_cache_loads_without_pickles(folder, tmp_path, monkeypatch):
    first = MAGNeT.from_pretrained(str(folder), cache_dir=str(tmp_path), local_files_only=True)
    entries = list((tmp_path / "converted").iterdir())
    assert len(entries) == 1 and (entries[0] / "meta.json").is_file()
    import magnet_jax.convert.torch_pickle as tp

    def refuse(*a, **k):
        raise AssertionError("the cached load read a pickle")

    monkeypatch.setattr(tp, "load_torch_file", refuse)
    second = MAGNeT.from_pretrained(str(folder), cache_dir=str(tmp_path), local_files_only=True)
    kw = dict(seed=3, decoding_steps=(2, 1, 1, 1))
    np.testing.assert_array_equal(first.generate_codes(["rain"], **kw), second.generate_codes(["rain"], **kw))
    np.testing.assert_array_equal(first.generate(["rain"], **kw), second.generate(["rain"], **kw))
    monkeypatch.undo()
    import shutil

    shutil.rmtree(entries[0] / "params")  # a damaged entry is converted again, not a crash
    third = MAGNeT.from_pretrained(str(folder), cache_dir=str(tmp_path), local_files_only=True)
    assert (entries[0] / "params").is_dir()
    np.testing.assert_array_equal(first.generate_codes(["rain"], **kw), third.generate_codes(["rain"], **kw))


def test_cli_generate_and_convert(folder, tmp_path, capsys):
    from magnet_jax.cli import main
    from magnet_jax.data.audio_io import read_audio

    common = ["--cache-dir", str(tmp_path / "cache"), "--offline"]
    assert main(["generate", "x", "--model", str(folder), "--batch-size", "-1", *common]) == 2
    # refused before loading anything (the model folder does not even exist)
    nowhere = str(tmp_path / "nowhere")
    for bad, says in ((["--decoding-steps", "1000000", "1", "1", "1"], "at most 1000"), (["--duration", "1e7"], "limit"),
                      (["--duration", "nan"], "positive number"), (["--temperature", "-1"], "temperature"),
                      (["--top-p", "2"], "top_p"), (["--top-k", "-5"], "top-k")):
        assert main(["generate", "x", "--model", nowhere, *bad, *common]) == 2
        assert says in capsys.readouterr().err
    (tmp_path / "a_file").write_text("")
    assert main(["generate", "x", "--model", nowhere, "--out", str(tmp_path / "a_file" / "x.wav"), *common]) == 2
    assert "cannot write there" in capsys.readouterr().err
    assert main(["tokenize", "--source", nowhere, "--out", str(tmp_path), "--name", "n", "--codec", nowhere]) == 2
    err = capsys.readouterr().err
    assert "--source" in err and "does not exist" in err
    assert main(["convert", str(folder), *common]) == 0
    out = tmp_path / "out" / "clip.wav"
    rc = main(["generate", "80s disco", "rain", "--model", str(folder), "--out", str(out), "--seed", "1",
               "--decoding-steps", "2", "1", "1", "1", "--strategy", "peak", *common])  # progress bar on
    assert rc == 0
    for i in range(2):
        wav, sr = read_audio(tmp_path / "out" / f"clip_{i}.wav")
        assert sr == 32000 and wav.shape == (1, 48 * 640)
        assert abs(np.abs(wav).max() - 10 ** (-1 / 20)) < 1e-3
    assert main(["generate", "x", "--model", str(tmp_path / "nowhere"), *common]) == 2


def test_bad_checkpoints(folder, tmp_path):
    from magnet_jax.convert.torch_pickle import load_torch_file

    pkg = load_torch_file(folder / "state_dict.bin")
    state = {k: torch.from_numpy(np.array(v)) for k, v in pkg["best_state"].items()}
    (tmp_path / "missing").mkdir()
    cut = dict(state)
    cut.pop("transformer.layers.1.linear2.weight")
    torch.save({**pkg, "best_state": cut}, tmp_path / "missing" / "state_dict.bin")
    with pytest.raises(ConversionError, match="lacks 1 LM tensors"):
        load_audiocraft_lm(tmp_path / "missing")
    (tmp_path / "extra").mkdir()
    torch.save({**pkg, "best_state": {**state, "condition_provider.conditioners.other.weight": torch.ones(2)}},
               tmp_path / "extra" / "state_dict.bin")
    with pytest.raises(ConversionError, match="not used"):
        load_audiocraft_lm(tmp_path / "extra")
    with pytest.raises(ModelNotFoundError, match="unknown model"):
        MAGNeT.from_pretrained("not-a-model", local_files_only=True)
    with pytest.raises(ModelNotFoundError, match="lacks"):
        MAGNeT.from_pretrained(str(tmp_path / "missing"), local_files_only=True)
    # A local path that does not exist is not asked of the hub as a repo id.
    from magnet_jax import hub

    with pytest.raises(ModelNotFoundError, match=r"codec \./nowhere/encodec: no such folder"):
        hub.resolve_component("./nowhere/encodec", explicit=None, model_dir=None, subfolder="codec",
                              env_var="MAGNET_JAX_NO_SUCH_VAR", patterns=hub.CODEC_FILES, what="codec")
    assert not hub.looks_like_path("t5-base") and not hub.looks_like_path("facebook/encodec_32khz")


def test_codec_must_match_the_lm(pipeline):
    from magnet_jax.codec import EncodecModel

    other = EncodecModel(pipeline.codec.config.__class__(codebook_size=128, num_filters=4, hidden_size=16,
                                                         codebook_dim=16), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="not a pair"):
        MAGNeT(pipeline.config, pipeline.model, pipeline.t5, pipeline.tokenizer, other)


def test_bfloat16_end_to_end(folder, pipeline, tmp_path):
    """One flag: T5, the LM and the codec decoder compute in bfloat16; the audio stays float32
    and close to the float32 pipeline's decoding of the same codes."""
    half = MAGNeT.from_pretrained(str(folder), cache_dir=str(tmp_path / "cache"), local_files_only=True,
                                  dtype="bfloat16")
    assert half.t5.dtype == jnp.bfloat16 and half.model.lm.config.dtype == "bfloat16"
    cond, _ = half.encode_text(["rain"])
    assert cond.dtype == jnp.bfloat16
    codes = half.generate_codes(["rain"], seed=0, decoding_steps=(2, 1, 1, 1))
    assert codes.shape == (1, 4, 48) and (codes < 2048).all()
    wav = half.decode_codes(codes)
    ref = pipeline.decode_codes(codes)
    assert wav.dtype == np.float32 and np.isfinite(wav).all()
    assert 0 < np.abs(wav - ref).max() <= 0.05 * np.abs(ref).max()  # computed in bfloat16, and close


def test_model_errors_say_what_to_fetch_and_what_a_training_run_is(tmp_path, monkeypatch):
    """Offline, a missing hub model names all three parts to download; a quickstart run
    directory is explained as a token-only model, not as a folder lacking files."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as e:
        resolve_model_dir("facebook/magnet-small-10secs", cache_dir=str(tmp_path / "hub"), local_files_only=True)
    assert all(s in str(e.value) for s in ("three parts", "hf download facebook/magnet-small-10secs",
                                           "encodec_32khz", "t5-base", "--codec DIR and --t5 DIR"))
    run = tmp_path / "quickstart"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.txt").write_text("data.source = 'synthetic'\n")
    with pytest.raises(ModelNotFoundError, match="synthetic data .* no codec"):
        resolve_model_dir(str(run))
    (run / "config.txt").write_text("data.source = 'songs'\n")
    with pytest.raises(ModelNotFoundError, match="training run .* not supported yet"):
        resolve_model_dir(str(run))
