"""`magnet-jax eval` on a pretrained model's samples: captions in MusicCaps' layout, generation,
FAD / KL / CLAP through the Flax embedders (tiny random-weight ones here: their parity with the
PyTorch packages is pinned in test_eval_vggish.py, test_eval_passt.py, test_eval_clap.py)."""
import json

import numpy as np
import pytest
from flax import nnx

from magnet_jax.cli import main
from magnet_jax.data.audio_io import write_audio
from magnet_jax.eval import sample_metrics as sm
from magnet_jax.metrics.clap import ClapScorer
from magnet_jax.metrics.clap_audio import HTSATConfig
from magnet_jax.metrics.clap_model import ClapConfig, ClapModel
from magnet_jax.metrics.clap_text import RobertaConfig
from magnet_jax.metrics.passt import PaSST, PasstConfig
from magnet_jax.metrics.vggish import VGGish
from tests.reference import require
from tests.reference.audiocraft_pipeline import make_magnet_folder

require("torch")

TINY_PASST = PasstConfig(embed_dim=32, depth=1, num_heads=4, num_classes=10, input_tdim=100, max_duration=0.5,
                         min_duration=0.15)
TINY_CLAP = ClapConfig(
    audio=HTSATConfig(sample_rate=16000, clip_samples=15360, n_fft=256, hop_size=64, mel_bins=16, fmin=50,
                      fmax=8000, spec_size=64, patch_size=4, embed_dim=16, depths=(2, 1), num_heads=(2, 2),
                      window_size=8),
    text=RobertaConfig(vocab_size=100, hidden_size=32, num_layers=1, num_heads=4, intermediate_size=64,
                       max_position_embeddings=80),
    joint_dim=16)


def _tokenize(captions):
    ids = np.ones((len(captions), 12), np.int32)
    for i, c in enumerate(captions):
        words = [3 + sum(map(ord, w)) % 90 for w in c.split()][:10]
        ids[i, :len(words) + 2] = [0] + words + [2]
    return ids, (ids != 1).astype(np.int32)


@pytest.fixture(scope="module")
def scorers():
    return sm.Scorers(vggish=VGGish(rngs=nnx.Rngs(0)), passt=PaSST(TINY_PASST, rngs=nnx.Rngs(1)),
                      clap=ClapScorer(ClapModel(TINY_CLAP, rngs=nnx.Rngs(2)), _tokenize))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_magnet_folder(tmp_path_factory.mktemp("magnet") / "magnet-tiny")


def _captions_and_references(tmp_path, sample_rate=32000):
    (tmp_path / "caps.csv").write_text("ytid,start_s,caption\nabc,0,80s disco with a funky bass\n"
                                       "def,10,rain on a window\nghi,0,a calm piano\n")
    refs = tmp_path / "refs"
    refs.mkdir()
    rng = np.random.default_rng(0)
    write_audio(refs / "abc.wav", 0.3 * rng.standard_normal((1, 2 * sample_rate)).astype(np.float32), sample_rate)
    write_audio(refs / "def.flac", np.sin(np.arange(36000) / 7.0)[None].astype(np.float32) * 0.5, 24000)
    (refs / "ghi.wav").write_bytes(b"RIFF not really a wav")  # unreadable: counted and skipped
    return tmp_path / "caps.csv", refs


def test_cli_generates_and_scores_against_references(folder, scorers, tmp_path, capsys, monkeypatch):
    caps, refs = _captions_and_references(tmp_path)
    asked = {}
    monkeypatch.setattr(sm, "load_scorers", lambda metrics, **kw: asked.update(metrics=metrics, **kw) or scorers)
    out = tmp_path / "out"
    assert main(["eval", "--model", str(folder), "--captions", str(caps), "--reference-audio", str(refs),
                 "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--offline", "--batch-size", "2",
                 "--duration", "1.5", "--decoding-steps", "2", "1", "1", "1",
                 "--vggish", "v.pth"]) == 0
    assert asked["metrics"] == ["fad", "kl", "clap"] and asked["vggish"] == "v.pth"
    results = json.load(open(out / "results.json"))
    assert results["clips"] == 3 and results["references"] == 2 and results["skipped"] == {"unreadable": 1}
    assert results["kl_pairs"] == 2 and np.isfinite(results["kld"]) and results["kld_both"] > 0
    assert np.isfinite(results["fad"]) and results["fad"] > 0 and -1 <= results["clap"] <= 1
    assert sorted(p.name for p in (out / "audio").iterdir()) == ["abc.wav", "def.wav", "ghi.wav"]
    assert "FAD (VGGish)" in capsys.readouterr().out


def test_scores_are_the_metrics_of_the_clips(scorers):
    """score() on fixed clips: FAD of a set against itself is 0, KL of identical clips 0, and the
    CLAP score is the mean cosine of the scorer's embeddings."""
    from magnet_jax.metrics.frechet import fad_from_embeddings
    from magnet_jax.metrics.vggish import vggish_embeddings

    rng = np.random.default_rng(1)
    gen = {f"c{i}": (0.2 * rng.standard_normal((1, 48000))).astype(np.float32) for i in range(3)}
    caps = {k: f"caption {k}" for k in gen}
    same = sm.score(gen, 32000, caps, {k: (v, 32000) for k, v in gen.items()}, scorers)
    assert abs(same["fad"]) < 1e-6 and abs(same["kld"]) < 1e-4
    other = {k: ((0.5 * rng.standard_normal((1, 48000))).astype(np.float32), 48000) for k in gen}
    scorers.clap.rng = np.random.default_rng(5)  # the same random crops of the 1.5 s clips, twice
    score = sm.score(gen, 32000, caps, other, scorers)
    emb = lambda w, sr: vggish_embeddings(scorers.vggish, w, sr, framing="google_fad")
    want = fad_from_embeddings(np.concatenate([emb(*other[k]) for k in gen]),
                               np.concatenate([emb(gen[k], 32000) for k in gen]))
    assert score["fad"] == pytest.approx(want, rel=1e-6)
    scorers.clap.rng = np.random.default_rng(5)
    a = scorers.clap.audio_embeddings(np.stack(list(gen.values())), 32000)
    t = scorers.clap.text_embeddings(list(caps.values()))
    assert score["clap"] == pytest.approx(float(np.mean(np.sum(a * t, -1))), abs=1e-5)


def test_caption_files_are_checked_line_by_line(tmp_path):
    good = tmp_path / "c.jsonl"
    good.write_text('{"ytid": "a", "caption": "piano"}\n\n{"ytid": "b", "caption": "drums"}\n')
    assert sm.read_captions(str(good)) == [("a", "piano"), ("b", "drums")]
    cases = {"missing.csv": ("ytid,text\na,piano\n", r"lacks the column\(s\) caption"),
             "empty.csv": ("ytid,caption\na,piano\nb,  \n", "line 3: empty caption"),
             "twice.jsonl": ('{"ytid": "a", "caption": "x"}\n{"ytid": "a", "caption": "y"}\n', "line 2: ytid a"),
             "bad.jsonl": ('{"ytid": "a", "caption": "x"}\nnot json\n', "line 2 is not JSON"),
             "caps.txt": ("a piano\n", "expected a .csv or .jsonl")}
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match=message):
            sm.read_captions(str(tmp_path / name))


def test_bad_eval_requests_are_refused(tmp_path, capsys):
    (tmp_path / "c.csv").write_text("ytid,caption\na,piano\n")
    assert main(["eval", "--model", str(tmp_path / "nowhere")]) == 2
    assert "not a training run folder" in capsys.readouterr().err
    assert main(["eval", "--model", "x", "--captions", str(tmp_path / "c.csv"), "--metrics", "fad"]) == 2
    assert "give --reference-audio" in capsys.readouterr().err
    assert main(["eval", "--model", "x", "--captions", str(tmp_path / "c.csv"), "--metrics", "fid",
                 "--reference-audio", str(tmp_path)]) == 2
    assert "unknown metric(s) fid" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="--offline is set: give --clap PATH"):
        sm.metric_file(None, sm.CLAP_URL, str(tmp_path / "cache"), True, "--clap")
