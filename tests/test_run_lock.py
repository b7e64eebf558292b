"""One run per folder: a second training in a workdir (or tokenize of a dataset) is refused while
the first runs, naming it; the lock of a killed run is taken over."""
import logging
import os
import signal
import subprocess
import sys

import pytest

from magnet_jax.config_io import load_config
from magnet_jax.run_lock import LOCK_NAME, FolderInUseError, RunLock

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _holder(folder, name=LOCK_NAME):
    """Another process holding the lock of `folder` until killed."""
    code = ("import sys, time; from magnet_jax.run_lock import RunLock; "
            f"RunLock({str(folder)!r}, 'test', name={name!r}).acquire(); print('locked', flush=True); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_holder_is_refused_naming_the_first_and_a_killed_ones_lock_is_taken_over(tmp_path, caplog):
    proc = _holder(tmp_path)
    try:
        with pytest.raises(FolderInUseError, match=rf"in use by another run \(host \S+, pid {proc.pid}, since"):
            RunLock(str(tmp_path), "the folder").acquire()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with caplog.at_level(logging.INFO, logger="magnet_jax.run_lock"):
        with RunLock(str(tmp_path), "the folder"):
            assert f"pid {proc.pid}" in caplog.text and "taking over" in caplog.text
    assert (tmp_path / LOCK_NAME).read_text() == ""  # released: empty, and kept (never deleted)
    with RunLock(str(tmp_path), "the folder"):  # and free again
        pass


def test_training_in_a_workdir_in_use_is_refused_before_anything_runs(tmp_path):
    from magnet_jax.train.trainer import train

    (tmp_path / "run").mkdir()
    proc = _holder(tmp_path / "run")
    try:
        cfg = load_config("configs/tiny.py", [f"train.workdir={tmp_path / 'run'}"])
        with pytest.raises(FolderInUseError, match=rf"train.workdir .* is in use by another run .*pid {proc.pid}"):
            train(cfg, progress=False)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert sorted(os.listdir(tmp_path / "run")) == [LOCK_NAME]  # nothing written by the refused run


def test_a_run_that_fails_before_training_leaves_no_workdir(tmp_path):
    from magnet_jax.train.trainer import train

    cfg = load_config("configs/tiny.py", [f"train.workdir={tmp_path / 'new'}", "train.num_steps=3",
                                          "optim.warmup_steps=5"])
    with pytest.raises(ValueError, match="must exceed optim.warmup_steps"):
        train(cfg, progress=False)
    assert not (tmp_path / "new").exists()


def test_tokenize_of_a_dataset_in_use_is_refused(tmp_path):
    from magnet_jax.data import prepare

    (tmp_path / "out" / "sounds").mkdir(parents=True)
    proc = _holder(tmp_path / "out" / "sounds", name=f"{LOCK_NAME}.p0")
    try:
        with pytest.raises(FolderInUseError, match=rf"dataset .*sounds \(process 0\) is in use .*pid {proc.pid}"):
            prepare.build_audio_dataset(str(tmp_path / "nothing"), str(tmp_path / "out"), name="sounds",
                                        sample_rate=16000, progress=False)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
