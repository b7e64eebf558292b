"""A MusicGen checkpoint folder (official layout) generates through the real loading path: the
pipeline and `magnet-jax generate` pick the autoregressive sampler, and greedy codes equal
audiocraft's `LMModel.generate` on the folder's LM."""
import numpy as np
import pytest

from magnet_jax.musicgen import MusicGen
from magnet_jax.pipeline import MAGNeT
from magnet_jax.loading import load_pretrained

from tests.encodec_fixtures import make_encodec
from tests.reference import audiocraft_lm as harness
from tests.reference import require
from tests.reference.audiocraft_pipeline import CARD, make_musicgen_lm, xp_yaml
from tests.t5_fixtures import make_t5

torch = require("torch")
TEXTS = ["80s disco with a funky bass", "rain"]


@pytest.fixture(scope="module")
def musicgen_folder(tmp_path_factory):
    """(folder, audiocraft LMModel): state_dict.bin, compression_state_dict.bin, encodec_32khz/, t5-base/."""
    root = tmp_path_factory.mktemp("musicgen-tiny")
    make_t5(root / "t5-base", d_model=768, num_layers=1, num_heads=2, d_kv=8, d_ff=32)
    make_encodec(root / "encodec_32khz", codebook_size=CARD)
    torch.save({"pretrained": "facebook/encodec_32khz", "exported": True, "version": "1.3.0"},
               root / "compression_state_dict.bin")
    ref = make_musicgen_lm(root, seed=3, xp_text=xp_yaml(lm_model="transformer_lm", causal=True))
    return root, ref


def test_pipeline_greedy_codes_equal_audiocraft(musicgen_folder, tmp_path):
    folder, ref = musicgen_folder
    model = load_pretrained(str(folder), cache_dir=str(tmp_path), local_files_only=True)
    assert type(model).__name__ == "MusicGen" and model.generation_params["top_k"] == 250
    got = model.generate_codes(TEXTS, duration=0.4, use_sampling=False, cfg_coef=3.0)
    ac = harness.load_audiocraft()
    attrs = [ac.conditioners.ConditioningAttributes(text={"description": t}) for t in TEXTS]
    with torch.no_grad():
        want = ref.generate(conditions=attrs, max_gen_len=20, use_sampling=False, cfg_coef=3.0).numpy()
    np.testing.assert_array_equal(got, want)
    wav = model.generate(["rain"], duration=0.2, seed=1)  # sampled, decoded
    assert wav.shape == (1, 1, 10 * 640) and np.isfinite(wav).all()
    with pytest.raises(TypeError, match="not MusicGen decoding settings"):
        model.generate_codes(["rain"], duration=0.2, decoding_steps=(2, 1, 1, 1))
    with pytest.raises(ValueError, match="causal .*MusicGen"):
        MAGNeT.from_pretrained(str(folder), cache_dir=str(tmp_path), local_files_only=True)
    again = MusicGen.from_pretrained(str(folder), cache_dir=str(tmp_path), local_files_only=True)  # the cache
    np.testing.assert_array_equal(again.generate_codes(TEXTS, duration=0.4, use_sampling=False, cfg_coef=3.0), got)


def test_cli_generates_with_a_musicgen_folder(musicgen_folder, tmp_path, capsys):
    from magnet_jax.cli import main
    from magnet_jax.data.audio_io import read_audio

    folder, _ = musicgen_folder
    common = ["--model", str(folder), "--cache-dir", str(tmp_path / "cache"), "--offline"]
    out = tmp_path / "clip.wav"
    assert main(["generate", "rain", *common, "--duration", "0.3", "--top-k", "20", "--cfg-coef", "2", "--strategy", "peak", "--out",
                 str(out)]) == 0
    wav, sr = read_audio(out)
    assert sr == 32000 and wav.shape == (1, 15 * 640)
    assert main(["generate", "rain", *common, "--decoding-steps", "2", "1", "1", "1", "--out", str(out)]) == 2
    assert "--decoding-steps: not a decoding setting of" in capsys.readouterr().err
