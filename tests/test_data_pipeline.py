"""Real-data plumbing end to end: audio folders in both layouts -> TFDS audio segments -> EnCodec
tokens (sharded, resumable) -> grain batches -> training that resumes with the same batches."""
import dataclasses
import json

import jax
import numpy as np
import pytest

from magnet_jax.config import (ConditionerConfig, Config, DataConfig, DecodeConfig, LMConfig, MaskingConfig,
                               MeshConfig, OptimConfig, TrainConfig)
from magnet_jax.convert.encodec import load_encodec
from magnet_jax.data import prepare
from magnet_jax.data.audio_io import write_audio
from magnet_jax.data.input_pipeline import TokenBatches
from magnet_jax.data.records import open_dataset
from magnet_jax.data.sources import load_source
from magnet_jax.data.text import compose_description, word_dropout
from magnet_jax.text.tokenizer import T5Tokenizer
from magnet_jax.train.setup import token_batches
from magnet_jax.train.trainer import train

from tests.data_fixtures import make_data_env, make_token_dataset
from tests.encodec_fixtures import make_encodec
from tests.reference import require

require("torch")  # the tiny codec and T5 are made with transformers' PyTorch models


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return make_data_env(tmp_path_factory.mktemp("data"))


def test_sources_read_both_layouts(env):
    items = load_source(str(env["manifest"]))
    assert len(items) == 6 and items[0].info["genre"] == "jazz" and items[0].info["bpm"] == 90
    assert items[1].sample_rate == 44100
    sounds = load_source(str(env["folder"]))
    assert {i.path.split("/")[-1] for i in sounds} >= {"clip0.wav", "corrupt.wav", "empty.wav", "short.wav"}
    assert next(i for i in sounds if i.path.endswith("clip1.wav")).info == {"description": "a techno sound effect"}
    with pytest.raises(FileNotFoundError):
        load_source(str(env["root"] / "nothing.jsonl"))


def test_bad_files_are_counted_and_skipped(env, tmp_path):
    out = prepare.tokenize(str(env["folder"]), env["codec"], str(tmp_path), name="sounds", segment_s=0.5,
                           min_segment_s=0.4, chunk_size=3, progress=False)
    stats = json.loads((tmp_path / "sounds" / "1.0.0" / "magnet_jax_stats.json").read_text())
    assert stats["unreadable"] == 1 and stats["empty"] == 1 and stats["too_short"] == 1 and stats["items"] == 7
    ds = open_dataset(out)
    assert len(ds) == 4 * 2 == stats["examples"]  # 1.2 s -> 0.5 + 0.5 (the 0.2 s tail is below the minimum)
    assert {np.asarray(ds[i]["codes"]).shape for i in range(len(ds))} == {(4, 25)}


def test_audio_dataset_then_tokens_sharded_and_resumable(env, tmp_path, monkeypatch):
    audio = prepare.build_audio_dataset(str(env["manifest"]), str(tmp_path), name="music_audio", sample_rate=32000,
                                        segment_s=1.0, min_segment_s=0.5, chunk_size=2, progress=False)
    segs = open_dataset(audio)
    assert len(segs) == 10  # 1 s -> 1, 1.5 s -> 2 (a 0.5 s tail is kept), 2 s -> 2 segments, 2 files each
    kw = dict(name="music_tokens", segment_s=1.0, min_segment_s=0.5, chunk_size=3, progress=False)
    # Two processes, the first interrupted after one chunk of its own: nothing is lost or doubled.
    calls = {"n": 0}
    real_write = prepare.ChunkWriter.write

    def failing_write(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated interruption")
        return real_write(self, *a, **k)

    monkeypatch.setattr(prepare.ChunkWriter, "write", failing_write)
    with pytest.raises(KeyboardInterrupt):
        prepare.tokenize(audio, env["codec"], str(tmp_path), process_index=0, process_count=2, **kw)
    monkeypatch.setattr(prepare.ChunkWriter, "write", real_write)
    assert prepare.tokenize(audio, env["codec"], str(tmp_path), process_index=1, process_count=2, **kw) is None
    out = prepare.tokenize(audio, env["codec"], str(tmp_path), process_index=0, process_count=2, **kw)
    tokens = open_dataset(out)
    assert len(tokens) == 10
    keys = sorted((str(tokens[i]["path"]), float(tokens[i]["offset_s"])) for i in range(10))
    assert keys == sorted((str(segs[i]["path"]), float(segs[i]["offset_s"])) for i in range(10))
    # Tokens equal the codec applied to the stored segment.
    row = next(i for i in range(10) if float(tokens[i]["offset_s"]) == 1.0)
    seg = next(segs[i] for i in range(10) if segs[i]["path"] == tokens[row]["path"] and float(segs[i]["offset_s"]) == 1.0)
    want = np.asarray(env["codec"].encode(seg["audio"][None].astype(np.float32) / 32767))[0]
    np.testing.assert_array_equal(np.asarray(tokens[row]["codes"]), want)


def _cfg(env, data_dir, workdir, steps=6):
    return Config(
        name="data_test",
        lm=LMConfig(n_q=4, card=64, dim=32, num_heads=4, num_layers=2, subcodes_context=3, span_len=3, dtype="float32"),
        conditioner=ConditionerConfig(encoder="t5", t5_name=str(env["root"] / "t5"), output_dim=32, max_text_len=16,
                                      cfg_dropout=0.2, word_dropout=0.2),
        masking=MaskingConfig(), decode=DecodeConfig(decoding_steps=(2, 1, 1, 1)),
        optim=OptimConfig(lr=1e-3, warmup_steps=2),
        train=TrainConfig(num_steps=steps, global_batch_size=8, log_every=1, eval_every=3, eval_batches=1,
                          checkpoint_every=3, workdir=str(workdir), async_checkpointing=False, plot=False),
        mesh=MeshConfig(data=-1),
        data=DataConfig(source="tfds", dir=str(data_dir), segment_duration=0.6, frame_rate=50, min_segment_ratio=0.5,
                        merge_text_p=0.5, drop_desc_p=0.5, drop_other_p=0.5, eval_fraction=0.25, num_threads=2))


@pytest.fixture(scope="module")
def token_dir(env, tmp_path_factory):
    return make_token_dataset(env, tmp_path_factory.mktemp("tok"))


def test_batches_crop_compose_and_resume(env, token_dir, tmp_path):
    cfg = _cfg(env, token_dir, tmp_path)
    tok = T5Tokenizer(env["root"] / "t5", max_length=16, padding="max_length")
    data = token_batches(cfg, tok)
    b = data.batch(0, 8, 0, 1)
    assert b["codes"].shape == (8, 4, 30) and b["text_ids"].shape == (8, 16) and b["padding_mask"].shape == (8, 30)
    assert b["codes"].max() < 64 and b["padding_mask"][:, :15].all()  # crops keep >= min_segment_ratio frames
    it = data.iterator(8, 0, 1)
    first = [next(it) for _ in range(3)]
    state = it.get_state()
    later = [next(it) for _ in range(2)]
    resumed = data.iterator(8, 0, 1, state=state)
    for want, step in zip(later, (3, 4)):
        got = next(resumed)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])
            np.testing.assert_array_equal(data.batch(step, 8, 0, 1)[k], want[k])  # random access agrees
    np.testing.assert_array_equal(first[0]["codes"], b["codes"])
    ev = data.eval_batch(0, 8)
    assert ev["codes"].shape == (8, 4, 30)


def test_two_hosts_read_disjoint_slices_that_cover_the_data(env, token_dir, tmp_path):
    cfg = _cfg(env, token_dir, tmp_path)
    tok = T5Tokenizer(env["root"] / "t5", max_length=16, padding="max_length")
    hosts = [token_batches(cfg, tok, process_index=p, process_count=2) for p in range(2)]
    seen = [{(str(ex["path"]), float(ex["offset_s"])) for ex in h.host_examples} for h in hosts]
    assert seen[0] and seen[1] and not seen[0] & seen[1]
    every = {(str(hosts[0].source[i]["path"]), float(hosts[0].source[i]["offset_s"]))
             for i in range(hosts[0].num_train)}
    assert seen[0] | seen[1] == every
    assert hosts[0].batch(0, 8, 0, 2)["codes"].shape == (4, 4, 30)  # half the global batch per host


def test_text_composition_follows_audiocraft():
    """compose_description against audiocraft's own augment_music_info_description: at every 0/1
    setting of its three probabilities the same text, up to the order of the shuffled fields (each
    draws its randomness from its own generator)."""
    import importlib
    import itertools
    import random

    from tests.reference.audiocraft_lm import load_audiocraft

    load_audiocraft()
    music = importlib.import_module("audiocraft.data.music_dataset")
    infos = [dict(description="calm piano.", genre="jazz", moods=["soft", "warm"], bpm=90, title="x", key="C"),
             dict(description=None, genre="rock", instrument="guitar", keywords=["loud"], artist="y"),
             dict(description="only words")]
    pieces = lambda text: None if text is None else sorted(text.split(". "))
    for info, (merge, drop_desc, drop_other) in itertools.product(infos, itertools.product((0.0, 1.0), repeat=3)):
        probs = dict(merge_text_p=merge, drop_desc_p=drop_desc, drop_other_p=drop_other)
        random.seed(0)
        theirs = music.augment_music_info_description(
            music.MusicInfo(meta=None, seek_time=0.0, n_frames=0, total_frames=0, sample_rate=0, channels=1, **info),
            **probs).description
        ours = compose_description(info, np.random.default_rng(0), **probs)
        assert pieces(ours) == pieces(theirs), (info, probs, ours, theirs)
    rng = np.random.default_rng(0)
    texts = {compose_description(infos[0], np.random.default_rng(s), merge_text_p=1.0, drop_other_p=1.0)
             for s in range(20)}
    assert len(texts) > 1  # the fields are shuffled
    assert word_dropout("a b c d", 1.0, rng) == "" and word_dropout("a b", 0.0, rng) == "a b"


def test_training_from_tokens_resumes_with_the_same_batches(env, token_dir, tmp_path, monkeypatch):
    full = train(_cfg(env, token_dir, tmp_path / "full"), progress=False)
    part = train(_cfg(env, token_dir, tmp_path / "part"), progress=False, stop_after=3)
    assert part.step == 3

    def no_random_access(*a, **k):
        raise AssertionError("the resumed run must continue the checkpointed iterator")

    monkeypatch.setattr(TokenBatches, "batch", no_random_access)
    resumed = train(_cfg(env, token_dir, tmp_path / "part"), progress=False)
    assert resumed.step == 6
    for a, b in zip(jax.tree.leaves(full.state.params), jax.tree.leaves(resumed.state.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    rows = lambda d: [json.loads(l)["loss"] for l in open(d / "metrics.jsonl") if '"train"' in l]
    assert rows(tmp_path / "full") == rows(tmp_path / "part")
    assert np.isfinite(full.last_eval["ce_per_stage"]).all()


def test_sound_dataset_through_the_cli_with_a_16khz_codec(env, tmp_path):
    """audio-MAGNeT's path: a caption folder (32 kHz files, resampled) -> `magnet-jax tokenize` with a
    16 kHz codec (hop 320, 50 Hz) -> training with data.dir alone selecting the token dataset."""
    from magnet_jax import cli
    from magnet_jax.data.records import dataset_facts

    make_encodec(tmp_path / "codec16", codebook_size=64, sampling_rate=16000, upsampling_ratios=[8, 5, 4, 2])
    argv = ["tokenize", "--source", str(env["folder"]), "--codec", str(tmp_path / "codec16"), "--out",
            str(tmp_path / "data"), "--name", "sounds", "--segment-duration", "0.6", "--min-segment-duration", "0.6",
            "--chunk-size", "2", "--no-progress"]
    assert cli.main(argv) == 0
    out = tmp_path / "data" / "sounds"
    facts = dataset_facts(str(out))
    assert facts["sample_rate"] == 16000 and facts["frame_rate"] == 50 and facts["num_codebooks"] == 4
    stats = json.loads((out / "1.0.0" / "magnet_jax_stats.json").read_text())
    assert (stats["unreadable"], stats["empty"], stats["too_short"], stats["examples"]) == (1, 1, 1, 8)
    ds = open_dataset(str(out))
    assert {np.asarray(ds[i]["codes"]).shape for i in range(len(ds))} == {(4, 30)}  # 2 x 0.6 s per 1.2 s file
    before = (out / "1.0.0" / "dataset_info.json").stat().st_mtime_ns
    assert cli.main(argv) == 0  # a finished dataset is kept as it is
    assert (out / "1.0.0" / "dataset_info.json").stat().st_mtime_ns == before
    assert cli.main(argv + ["--overwrite"]) == 0  # rebuilt from scratch, nothing doubled
    assert len(open_dataset(str(out))) == 8

    audio32 = prepare.build_audio_dataset(str(env["folder"]), str(tmp_path / "data"), name="sounds32",
                                          sample_rate=32000, segment_s=0.6, min_segment_s=0.6, progress=False)
    _, codec16 = load_encodec(tmp_path / "codec16")
    with pytest.raises(ValueError, match="sample_rate=32000, the codec takes 16000"):
        prepare.tokenize(audio32, codec16, str(tmp_path / "data"), name="x", progress=False)

    base = _cfg(env, "", tmp_path / "run", steps=3)
    data = dataclasses.replace(base.data, source="auto", dir=str(out), merge_text_p=0.0, min_segment_ratio=1.0,
                               eval_fraction=0.25)
    cfg = dataclasses.replace(base, data=data)
    result = train(cfg, progress=False)
    assert result.step == 3 and np.isfinite(result.last_train["loss"])
    wrong_rate = dataclasses.replace(cfg, data=dataclasses.replace(data, frame_rate=25),
                                     train=dataclasses.replace(cfg.train, workdir=str(tmp_path / "run25")))
    with pytest.raises(ValueError, match="frame_rate"):
        train(wrong_rate, progress=False)


def test_worker_processes_give_the_same_batches_and_resume(env, token_dir, tmp_path):
    cfg = _cfg(env, token_dir, tmp_path)
    tok = T5Tokenizer(env["root"] / "t5", max_length=16, padding="max_length")
    data = token_batches(cfg, tok)
    it = data.iterator(8, 0, 1, workers=2, threads=1)
    try:
        first = [next(it) for _ in range(2)]
        state = it.get_state()
    finally:
        it.close()
    for step, got in enumerate(first):
        np.testing.assert_array_equal(got["codes"], data.batch(step, 8, 0, 1)["codes"])
    resumed = data.iterator(8, 0, 1, state=state, workers=2, threads=1)
    try:
        np.testing.assert_array_equal(next(resumed)["text_ids"], data.batch(2, 8, 0, 1)["text_ids"])
    finally:
        resumed.close()
    with pytest.raises(ValueError, match="num_workers"):
        data.iterator(8, 0, 1, state=state, workers=0)


@pytest.mark.parametrize("extra, message", [
    (["--chunk-size", "0"], "--chunk-size must be > 0"),
    (["--segment-duration", "1", "--min-segment-duration", "2"], "exceeds --segment-duration"),
    (["--sample-rate", "16000"], "go with --audio-only"),
    (["--codec", "./no/such/codec"], "--codec ./no/such/codec: no such folder or file"),
])
def test_tokenize_cli_refuses_bad_options(env, tmp_path, capsys, extra, message):
    from magnet_jax import cli

    argv = ["tokenize", "--source", str(env["folder"]), "--out", str(tmp_path), "--name", "x", "--no-progress"]
    assert cli.main(argv + extra) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # nothing started


def test_eval_split_never_cuts_a_file():
    from magnet_jax.data.input_pipeline import _split_between_files

    rows = lambda paths: [{"path": p} for p in paths]
    assert _split_between_files(rows("aabbbc"), 3) == 5  # forward past b's segments
    assert _split_between_files(rows("aabb"), 3) == 2  # forward leaves no eval: backward
    assert _split_between_files(rows("aaa"), 2) == 2  # one file: nothing to do
    assert _split_between_files(rows("abc"), 2) == 2


def test_unreadable_caption_is_ignored(tmp_path):
    write_audio(tmp_path / "a.wav", np.zeros((1, 3200), np.float32), 32000, strategy="none")
    (tmp_path / "a.txt").write_bytes(b"\xff\xfe\xfa not utf-8")
    assert load_source(str(tmp_path))[0].info == {}


def test_resuming_after_the_source_changed_is_refused_naming_what_changed(env, tmp_path, monkeypatch):
    """A file added and another removed keep the count, but shift the items between chunks."""
    import shutil

    src = tmp_path / "src"
    shutil.copytree(env["folder"], src)
    kw = dict(name="sounds", sample_rate=16000, segment_s=0.5, min_segment_s=0.4, chunk_size=2, progress=False)
    real_write = prepare.ChunkWriter.write

    def interrupted(self, chunk, *a, **k):
        if chunk == 1:
            raise KeyboardInterrupt("simulated interruption")
        return real_write(self, chunk, *a, **k)

    monkeypatch.setattr(prepare.ChunkWriter, "write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare.build_audio_dataset(str(src), str(tmp_path / "out"), **kw)
    monkeypatch.setattr(prepare.ChunkWriter, "write", real_write)
    (src / "clip0.wav").rename(src / "zz_new.wav")
    with pytest.raises(ValueError, match=r"the source changed since this run started \(1 added \(e.g. \S*zz_new.wav\); "
                                         r"1 removed \(e.g. \S*clip0.wav\)\).*delete \S*_work to start over"):
        prepare.build_audio_dataset(str(src), str(tmp_path / "out"), **kw)
    (src / "zz_new.wav").rename(src / "clip0.wav")  # restored as it was: the run resumes and completes
    assert prepare.build_audio_dataset(str(src), str(tmp_path / "out"), **kw) is not None
