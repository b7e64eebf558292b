"""Orbax checkpoints: exact resume, keep-N, a clear error on a mismatching config, and a fallback
past damaged checkpoints (kept aside) with a metrics log that stays one clean run."""
import dataclasses
import glob
import json
import logging
import os
import re
import shutil

import jax
import numpy as np
import pytest

from magnet_jax.config_io import load_config
from magnet_jax.data.host_batches import to_global
from magnet_jax.parallel.logical import axis_rules
from magnet_jax.parallel.mesh import make_mesh
from magnet_jax.train.checkpoint import CheckpointMismatchError, Checkpointer
from magnet_jax.train.metrics import read_metrics
from magnet_jax.train.optimizer import make_optimizer
from magnet_jax.train.setup import compile_train_step, make_data_source
from magnet_jax.train.state import abstract_train_state, build_train_state
from magnet_jax.train.trainer import train


def _cfg(tmp_path, **train):
    cfg = load_config("configs/tiny.py")
    cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, ema_decay=0.9, ema_every=2))
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, workdir=str(tmp_path / "run"), **train))


def _leaves(state):
    return [np.asarray(x) for x in jax.tree.leaves(state)]


def test_resume_gives_bitwise_the_same_next_loss(tmp_path):
    cfg = _cfg(tmp_path)
    mesh, rules = make_mesh(cfg.mesh, devices=jax.devices()[:2]), cfg.mesh.rules
    data = make_data_source(cfg)
    tx, schedule = make_optimizer(cfg.optim, cfg.train.num_steps)
    g = cfg.train.global_batch_size
    key = jax.random.key(0)
    with jax.set_mesh(mesh), axis_rules(rules):
        graphdef, state, shardings = build_train_state(cfg, tx, mesh, rules)
        batch = lambda i: to_global(data.batch(i, g), mesh, rules, g)
        step = compile_train_step(cfg, graphdef, tx, schedule, shardings, batch(0), mesh, rules)
        losses = []
        for i in range(4):
            if i == 2:
                ckpt = Checkpointer(str(tmp_path / "ckpt"), keep=2, async_save=True)
                ckpt.save(2, state, cfg, {"data_step": 2})
                ckpt.close()
            state, m = step(state, batch(i), jax.random.fold_in(key, i))
            losses.append(np.asarray(m["loss"]))
        final = _leaves(state)

        ckpt = Checkpointer(str(tmp_path / "ckpt"), keep=2)
        assert ckpt.latest_step() == 2
        abstract, _ = abstract_train_state(cfg, tx, mesh, rules)
        restored, extra = ckpt.restore(2, abstract, cfg)
        assert extra == {"data_step": 2} and int(restored.step) == 2
        assert restored.params["lm"]["emb"].get_value().sharding == shardings.params["lm"]["emb"].get_value()
        resumed = []
        for i in range(2, 4):
            restored, m = step(restored, batch(i), jax.random.fold_in(key, i))
            resumed.append(np.asarray(m["loss"]))
    np.testing.assert_array_equal(resumed, losses[2:])
    for a, b in zip(_leaves(restored), final):
        np.testing.assert_array_equal(a, b)


def test_mismatching_config_is_a_clear_error(tmp_path):
    cfg = _cfg(tmp_path)
    mesh, rules = make_mesh(cfg.mesh, devices=jax.devices()[:1]), cfg.mesh.rules
    tx, _ = make_optimizer(cfg.optim, cfg.train.num_steps)
    with jax.set_mesh(mesh), axis_rules(rules):
        _, state, _ = build_train_state(cfg, tx, mesh, rules)
        ckpt = Checkpointer(str(tmp_path / "ckpt"), async_save=False)
        ckpt.save(1, state, cfg)
        ckpt.wait()
        other = dataclasses.replace(cfg, lm=dataclasses.replace(cfg.lm, dim=48))
        abstract, _ = abstract_train_state(other, tx, mesh, rules)
        with pytest.raises(CheckpointMismatchError, match=r"lm\.dim: checkpoint=32 config=48"):
            ckpt.restore(1, abstract, other)
        # A change outside the model (e.g. the learning rate) still restores.
        lr = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, lr=1e-4))
        abstract, _ = abstract_train_state(lr, tx, mesh, rules)
        restored, _ = ckpt.restore(1, abstract, lr)
        assert int(restored.step) == 0
        ckpt.close()


def test_trainer_interrupted_and_resumed_equals_uninterrupted(tmp_path):
    full = _cfg(tmp_path / "a", num_steps=8, checkpoint_every=4, eval_every=4, log_every=2, keep_checkpoints=2)
    res_full = train(full, progress=False, plot=False)
    parts = _cfg(tmp_path / "b", num_steps=8, checkpoint_every=4, eval_every=4, log_every=2, keep_checkpoints=2)
    first = train(parts, progress=False, plot=False, stop_after=3)
    assert first.step == 3
    second = train(parts, progress=False, plot=False)
    assert second.step == 8
    for a, b in zip(_leaves(second.state), _leaves(res_full.state)):
        np.testing.assert_array_equal(a, b)
    steps = sorted(int(d) for d in os.listdir(tmp_path / "b" / "run" / "checkpoints") if d.isdigit())
    assert steps == [4, 8]  # keep-N policy
    assert os.path.exists(tmp_path / "b" / "run" / "metrics.jsonl")


def test_divergence_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    good = _cfg(tmp_path, num_steps=12, checkpoint_every=2, log_every=2, eval_every=100)
    train(good, progress=False, plot=False, stop_after=2)
    cfg = dataclasses.replace(good, optim=dataclasses.replace(good.optim, lr=1e38, warmup_steps=1))
    with pytest.raises(FloatingPointError, match="diverged.*last good checkpoint"):
        train(cfg, progress=False, plot=False)  # resumes at step 2, then blows up
    ckpt = Checkpointer(str(tmp_path / "run" / "checkpoints"))
    assert 2 in ckpt.all_steps()
    for step in ckpt.all_steps():  # every checkpoint written holds finite parameters
        mesh, rules = make_mesh(cfg.mesh, devices=jax.devices()[:1]), cfg.mesh.rules
        tx, _ = make_optimizer(cfg.optim, cfg.train.num_steps)
        with jax.set_mesh(mesh), axis_rules(rules):
            state, _ = ckpt.restore(step, abstract_train_state(cfg, tx, mesh, rules)[0], cfg)
        assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params))
    ckpt.close()


def _damage(step_dir, kind):
    data = sorted(glob.glob(str(step_dir / "state" / "ocdbt.process_0" / "d" / "*")), key=os.path.getsize)
    if kind == "truncated data file":
        with open(data[-1], "r+b") as f:
            f.truncate(os.path.getsize(data[-1]) // 2)
    elif kind == "deleted data file":
        os.remove(data[-1])
    elif kind == "flipped bit":  # one bit in several places of each data file (some bytes are unused)
        for path in data:
            raw = bytearray(open(path, "rb").read())
            for at in range(len(raw) // 8, len(raw), max(len(raw) // 8, 1)):
                raw[at] ^= 0x10
            open(path, "wb").write(bytes(raw))
    elif kind == "emptied folder":
        for p in step_dir.iterdir():
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    elif kind == "garbage metadata":
        (step_dir / "meta" / "metadata").write_text("{garbage")
    elif kind == "garbage array metadata":
        (step_dir / "state" / "_METADATA").write_text("{garbage")
    elif kind == "garbage array index":
        (step_dir / "state" / "manifest.ocdbt").write_bytes(b"xx")
    elif kind == "values that read back altered":  # as a flip that decodes: the saved fingerprint disagrees
        meta = json.loads((step_dir / "meta" / "metadata").read_text())
        meta["fingerprint"][0][0] ^= 1
        (step_dir / "meta" / "metadata").write_text(json.dumps(meta))


DAMAGES = ["truncated data file", "deleted data file", "flipped bit", "emptied folder", "garbage metadata",
           "garbage array metadata", "garbage array index", "values that read back altered"]


def test_a_damaged_newest_checkpoint_is_set_aside_and_the_previous_one_restored(tmp_path, caplog):
    """Each kind of damage: one warning naming the step and what is wrong, the damaged folder kept
    under checkpoints.damaged/, and the next newest checkpoint restored."""
    cfg = _cfg(tmp_path)
    mesh, rules = make_mesh(cfg.mesh, devices=jax.devices()[:2]), cfg.mesh.rules
    tx, _ = make_optimizer(cfg.optim, cfg.train.num_steps)
    with jax.set_mesh(mesh), axis_rules(rules):
        _, state, _ = build_train_state(cfg, tx, mesh, rules)
        abstract, _ = abstract_train_state(cfg, tx, mesh, rules)
        ckpt = Checkpointer(str(tmp_path / "clean"), async_save=False)
        for step in (1, 2):
            ckpt.save(step, state.replace(step=state.step + step), cfg, {"data_step": step})
        ckpt.close()
        for kind in DAMAGES:
            folder = tmp_path / kind.replace(" ", "_")
            shutil.copytree(tmp_path / "clean", folder)
            _damage(folder / "2", kind)
            ckpt = Checkpointer(str(folder))
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="magnet_jax.train.checkpoint"):
                step, restored, extra = ckpt.restore_newest_intact(abstract, cfg)
            assert (step, int(restored.step), extra) == (1, 1, {"data_step": 1}), kind
            warnings = [r.getMessage() for r in caplog.records]
            assert len(warnings) == 1 and "\n" not in warnings[0], (kind, warnings)
            assert re.search(rf"checkpoint {folder} step 2 is damaged: .*; moved it to {folder}.damaged/2", warnings[0])
            if kind == "values that read back altered":
                assert "its arrays differ from what was saved" in warnings[0]
            assert ckpt.all_steps() == [1] and os.path.isdir(f"{folder}.damaged/2"), kind
            ckpt.close()
        # Another model's checkpoint is not damage: it stops the run, and nothing is moved.
        other = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, ema_decay=0.0))
        other_tx, _ = make_optimizer(other.optim, other.train.num_steps)
        ckpt = Checkpointer(str(tmp_path / "clean"))
        with pytest.raises(CheckpointMismatchError, match="holds other arrays than the current train state"):
            ckpt.restore_newest_intact(abstract_train_state(other, other_tx, mesh, rules)[0], other)
        assert ckpt.all_steps() == [1, 2]
        ckpt.close()


def test_trainer_resumes_past_a_damaged_checkpoint_and_a_torn_metrics_line(tmp_path, caplog):
    cfg = _cfg(tmp_path, num_steps=8, checkpoint_every=2, log_every=2, eval_every=100, keep_checkpoints=3)
    first = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, num_steps=8))
    train(first, progress=False, plot=False, stop_after=6)
    run = tmp_path / "run"
    _damage(run / "checkpoints" / "6", "flipped bit")
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 7, "kind": "tra')  # a write cut by a crash
    with caplog.at_level(logging.INFO):
        result = train(cfg, progress=False, plot=False)
    assert result.step == 8
    # A flipped bit in a compressed chunk fails to decode, or decodes to other values: either is damage.
    assert re.search(r"step 6 is damaged: its arrays (differ from what was saved|do not read back)", caplog.text)
    assert "resumed from" in caplog.text and "at step 4" in caplog.text
    assert os.path.isdir(run / "checkpoints.damaged" / "6")
    rows = read_metrics(str(run / "metrics.jsonl"), "train")
    assert [r["step"] for r in rows] == [2, 4, 6, 8]  # one clean run: step 6 once, from the resumed run
    dropped = (run / "metrics.dropped.jsonl").read_text().splitlines()
    assert json.loads(dropped[0])["step"] == 6 and dropped[-1] == '{"step": 7, "kind": "tra'


def test_metrics_readers_tolerate_a_torn_last_line_and_name_a_bad_one(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "kind": "train", "loss": 2.0}\n{"step": 2, "kind": "tr')
    assert [r["step"] for r in read_metrics(str(path))] == [1]
    path.write_text('{"step": 1, "kind": "train"}\nnot json\n{"step": 2, "kind": "train"}\n')
    with pytest.raises(ValueError, match=rf"{path} line 2 is not a metrics row"):
        read_metrics(str(path))
