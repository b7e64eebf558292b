"""A token dataset on a simulated pod (launch/local_cluster.sh, 2 processes x 2 CPU devices):
training killed with SIGKILL, then run again with the same command, resumes from its newest
checkpoint (which keeps each host's iterator position) and reproduces the uninterrupted loss
curve; `tokenize` on 2 processes builds the dataset that 1 process builds."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from magnet_jax.data.records import open_dataset
from magnet_jax.train.checkpoint import Checkpointer
from tests.cluster_helpers import LAUNCHER, REPO, cluster_env, process_of, run_group
from tests.data_fixtures import TOKENIZE_ARGS, make_data_env, make_token_dataset
from tests.reference import require

require("torch")  # the tiny codec and T5 are made with transformers' PyTorch models

STEPS = 8  # checkpoints every 2 steps: the kill lands after the first, the rerun resumes there or later


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("pod_data")
    env = make_data_env(root)
    return env, make_token_dataset(env, root / "tokens")


def _train_cmd(workdir, data):
    env, tokens = data
    return ["bash", LAUNCHER, "2", "2", "--", sys.executable, "-m", "magnet_jax.cli", "train", "--config",
            "configs/tiny.py", "--no-progress", f"--config.train.workdir={workdir}", "--config.data.source=tfds",
            f"--config.data.dir={tokens}", "--config.data.num_threads=2", "--config.conditioner.encoder=t5",
            f"--config.conditioner.t5_name={env['root'] / 't5'}", "--config.conditioner.max_text_len=16",
            f"--config.train.num_steps={STEPS}", "--config.train.log_every=1", f"--config.train.eval_every={STEPS}",
            "--config.train.checkpoint_every=2", "--config.train.plot=False", "--config.mesh.data=-1"]


def _losses(workdir):
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    return np.array([r["loss"] for r in rows if r["kind"] == "train"])


def _kill_after_first_checkpoint(cmd, workdir, log, timeout=300):
    """Starts `cmd` (output to the file `log`); once the step-2 checkpoint is in place, SIGKILLs
    every training process."""
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=cluster_env(MAGNET_JAX_KILL_AFTER="5"), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + timeout
        while not os.path.isdir(os.path.join(workdir, "checkpoints", "2")):  # orbax moves a finished step into place
            assert proc.poll() is None, "the run ended before its first checkpoint:\n" + open(log).read()[-4000:]
            assert time.time() < deadline, "no checkpoint within the timeout"
            time.sleep(0.05)
        for index in (0, 1):
            os.kill(process_of(workdir, index), signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode != 0, "the launcher must report the killed processes"


def test_sigkill_of_every_process_then_the_same_command_resumes_exactly(data, tmp_path):
    full = run_group(_train_cmd(tmp_path / "full", data), cluster_env(MAGNET_JAX_KILL_AFTER="5"), timeout=400)
    assert full.returncode == 0, full.stderr[-4000:]

    killed = tmp_path / "killed"
    _kill_after_first_checkpoint(_train_cmd(killed, data), killed, tmp_path / "killed.log")
    ckpt = Checkpointer(str(killed / "checkpoints"))
    stopped_at = ckpt.latest_step()
    ckpt.close()
    assert stopped_at is not None and stopped_at < STEPS, "the run finished before it was killed"

    again = run_group(_train_cmd(killed, data), cluster_env(MAGNET_JAX_KILL_AFTER="5"), timeout=400)
    assert again.returncode == 0, again.stderr[-4000:]
    assert "resumed from" in again.stderr
    # The iterator continues from its saved position, not by random access (process 0 logs it;
    # the others log warnings only).
    assert "[p0]" in again.stderr and "continues from its checkpointed position" in again.stderr
    np.testing.assert_allclose(_losses(killed), _losses(tmp_path / "full"), rtol=1e-5)
    assert len(_losses(killed)) == STEPS

    ckpt = Checkpointer(str(killed / "checkpoints"))
    positions = ckpt.read_meta(STEPS)["extra"]["data_iterator"]
    ckpt.close()
    assert isinstance(positions, list) and len(positions) == 2  # one per process, in process order


def test_tokenize_on_two_processes_builds_the_dataset_of_one(data, tmp_path):
    env, tokens = data
    cmd = ["bash", LAUNCHER, "2", "1", "--", sys.executable, "-m", "magnet_jax.cli", "tokenize", "--source",
           str(env["manifest"]), "--codec", str(env["root"] / "codec"), "--out", str(tmp_path), "--name",
           TOKENIZE_ARGS["name"], "--segment-duration", str(TOKENIZE_ARGS["segment_s"]), "--min-segment-duration",
           str(TOKENIZE_ARGS["min_segment_s"]), "--chunk-size", "2", "--wait", "240", "--no-progress"]
    run = run_group(cmd, cluster_env(), timeout=400)
    assert run.returncode == 0, run.stderr[-4000:]
    assert "[p1] process 1/2: slice written" in run.stdout and "[p0] dataset ready" in run.stdout, run.stdout
    one, two = open_dataset(tokens), open_dataset(str(tmp_path / TOKENIZE_ARGS["name"]))
    assert len(one) == len(two) > 0
    key = lambda ds, i: (str(ds[i]["path"]), float(ds[i]["offset_s"]))
    rows = {key(two, i): i for i in range(len(two))}
    assert set(rows) == {key(one, i) for i in range(len(one))}
    for i in range(len(one)):
        theirs = two[rows[key(one, i)]]
        np.testing.assert_array_equal(np.asarray(theirs["codes"]), np.asarray(one[i]["codes"]))
        assert theirs["info"] == one[i]["info"]
