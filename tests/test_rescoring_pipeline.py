"""Rescoring through the real loading path: a MAGNeT folder and a MusicGen folder (official
layouts, same tiny codec), `MAGNeT.set_rescorer` and `magnet-jax generate --rescorer`."""
import numpy as np
import pytest

from magnet_jax.loading import load_pretrained

from tests.encodec_fixtures import make_encodec
from tests.reference import require
from tests.reference.audiocraft_pipeline import CARD, make_magnet_folder, make_musicgen_lm, xp_yaml
from tests.t5_fixtures import make_t5

torch = require("torch")
TEXTS = ["80s disco with a funky bass", "rain"]


def _musicgen_folder(root, **codec):
    make_t5(root / "t5-base", d_model=768, num_layers=1, num_heads=2, d_kv=8, d_ff=32)
    make_encodec(root / "encodec_32khz", codebook_size=CARD, **codec)
    torch.save({"pretrained": "facebook/encodec_32khz", "exported": True, "version": "1.3.0"},
               root / "compression_state_dict.bin")
    make_musicgen_lm(root, seed=3, scale=0.5, xp_text=xp_yaml(lm_model="transformer_lm", causal=True))
    return root


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """(MAGNeT folder, MusicGen folder with the same codec, MusicGen folder with a 100 Hz codec)."""
    magnet = make_magnet_folder(tmp_path_factory.mktemp("magnet") / "magnet-tiny")
    musicgen = _musicgen_folder(tmp_path_factory.mktemp("musicgen-tiny"))
    fast = _musicgen_folder(tmp_path_factory.mktemp("musicgen-100hz"), upsampling_ratios=[8, 5, 4, 2],
                            target_bandwidths=[2.4])
    return magnet, musicgen, fast


def _load(folder, tmp_path):
    return load_pretrained(str(folder), cache_dir=str(tmp_path / "cache"), local_files_only=True)


def test_set_rescorer_generates_and_checks_what_it_is_given(folders, tmp_path):
    magnet_dir, musicgen_dir, fast_dir = folders
    magnet, musicgen = _load(magnet_dir, tmp_path), _load(musicgen_dir, tmp_path)
    kw = dict(duration=0.6, seed=2, decoding_steps=(4, 2, 2, 2), query_buckets=1)  # 1: compiles faster
    plain = magnet.generate_codes(TEXTS, **kw)
    with pytest.raises(ValueError, match="rescore_weight needs a rescorer"):
        magnet.generate_codes(TEXTS, rescore_weight=0.5, **kw)
    assert magnet.set_rescorer(musicgen) is magnet
    np.testing.assert_array_equal(magnet.generate_codes(TEXTS, rescore_weight=1.0, **kw), plain)
    rescored = magnet.generate_codes(TEXTS, **kw)  # the default weight, 0.5
    assert rescored.shape == plain.shape and (rescored != plain).any()
    np.testing.assert_array_equal(magnet.generate_codes(TEXTS, rescore_weight=0.5, **kw), rescored)
    assert magnet.set_rescorer(None).rescorer is None and magnet.sampler.rescorer_graphdef is None

    with pytest.raises(ValueError, match="must be a MusicGen .*got the MAGNeT checkpoint"):
        magnet.set_rescorer(_load(magnet_dir, tmp_path))
    with pytest.raises(ValueError, match="rescoring applies to MAGNeT"):
        musicgen.set_rescorer(musicgen)
    with pytest.raises(ValueError, match="100 frames/s .* 50 frames/s .*share one codec"):
        magnet.set_rescorer(_load(fast_dir, tmp_path))


def test_cli_generate_with_a_rescorer(folders, tmp_path, capsys):
    from magnet_jax.cli import main
    from magnet_jax.data.audio_io import read_audio

    magnet_dir, musicgen_dir, _ = folders
    common = ["--cache-dir", str(tmp_path / "cache"), "--offline", "--duration", "0.3", "--decoding-steps", "2", "1",
              "1", "1", "--strategy", "peak"]
    out = tmp_path / "clip.wav"
    assert main(["generate", "rain", "--model", str(magnet_dir), "--rescorer", str(musicgen_dir), "--rescore-weight",
                 "0.7", *common, "--out", str(out)]) == 0
    wav, sr = read_audio(out)
    assert sr == 32000 and wav.shape == (1, 15 * 640)
    capsys.readouterr()
    cases = [
        (["--model", str(magnet_dir), "--rescorer", str(magnet_dir)], "a MusicGen (causal LM) checkpoint is expected"),
        (["--model", str(magnet_dir), "--rescore-weight", "0.5"], "--rescore-weight needs --rescorer"),
        (["--model", str(magnet_dir), "--rescorer", str(musicgen_dir), "--rescore-weight", "2"],
         "rescore_weight must be in [0, 1]"),
        (["--model", str(musicgen_dir), "--rescorer", str(musicgen_dir)], "rescoring applies to MAGNeT"),
        (["--model", str(magnet_dir), "--hybrid-prefix", "0.1"], "hybrid_prefix applies to Hybrid-MAGNeT"),
    ]
    for flags, message in cases:
        assert main(["generate", "rain", *flags, *common, "--out", str(out)]) == 2, flags
        assert message in capsys.readouterr().err.replace("\\", ""), flags
