"""SIGTERM (a pre-emption notice) ends training with a checkpoint of the step reached, in one
process and across two: sent to one process only, JAX's preemption service tells both the step
to stop at."""
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from magnet_jax.train.checkpoint import Checkpointer
from magnet_jax.train.metrics import read_metrics
from tests.cluster_helpers import LAUNCHER, REPO, cluster_env, process_of

LONG = ["--config.train.num_steps=100000", "--config.train.log_every=100000", "--config.train.eval_every=100000",
        "--config.train.checkpoint_every=100000", "--config.train.plot=False"]


def _terminate_once_training(cmd, env, timeout=300, target=None):
    """Starts `cmd`, sends SIGTERM a few steps into training (to `target()`'s pid, else to `cmd`);
    (exit status, stdout, stderr). Fails after `timeout` s without the log line that training began
    (a run that never logs it would otherwise train its 100,000 steps)."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    err, training = [], threading.Event()

    def read_log():  # the log goes to stderr
        for line in proc.stderr:
            err.append(line)
            if "train step compiled" in line:
                training.set()

    reader = threading.Thread(target=read_log, daemon=True)
    reader.start()
    try:
        if not training.wait(timeout):
            pytest.fail(f"no 'train step compiled' in the log after {timeout} s:\n" + "".join(err)[-3000:])
        time.sleep(3)
        os.kill(target() if target else proc.pid, signal.SIGTERM)
        proc.wait(timeout=120)
        reader.join(timeout=30)
        return proc.returncode, proc.stdout.read(), "".join(err)
    finally:
        if proc.poll() is None:  # TERM first: a launcher then stops its processes (own sessions)
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _check_stopped_with_a_checkpoint(workdir, out):
    assert "pre-empted at step" in out, out
    step = int(out.split("pre-empted at step ")[1].split(":")[0])
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
    assert ckpt.latest_step() == step > 0
    ckpt.close()
    assert read_metrics(os.path.join(workdir, "metrics.jsonl"), "train")[-1]["step"] == step


def test_sigterm_stops_training_with_a_checkpoint(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    cmd = [sys.executable, "-m", "magnet_jax.cli", "train", "--config", "configs/tiny.py", "--no-progress",
           f"--config.train.workdir={tmp_path / 'run'}", *LONG]
    rc, out, err = _terminate_once_training(cmd, env)
    assert rc == 0, err[-3000:]
    _check_stopped_with_a_checkpoint(tmp_path / "run", out)


def test_sigterm_to_one_process_of_two_stops_both_at_one_step(tmp_path):
    env = cluster_env(MAGNET_JAX_KILL_AFTER="10")
    cmd = ["bash", LAUNCHER, "2", "2", "--", sys.executable, "-m",
           "magnet_jax.cli", "train", "--config", "configs/tiny.py", "--no-progress",
           f"--config.train.workdir={tmp_path / 'run'}", *LONG]
    rc, out, err = _terminate_once_training(cmd, env, target=lambda: process_of(tmp_path / "run", 1))
    assert rc == 0, err[-3000:]  # both processes exited 0 (the launcher fails otherwise)
    assert "[p1] pre-empted" not in out
    _check_stopped_with_a_checkpoint(tmp_path / "run", out.replace("[p0] ", ""))
