"""launch/run_slurm_gpu.sh and launch/run_tpu_pod.sh with stand-ins for srun/scontrol/gcloud and
`magnet-jax` on PATH: the coordinator, process count and ids each process gets, and the arguments
(spaces included) arriving intact."""
import json
import os
import stat
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# A `magnet-jax` that reports what it was given.
REPORT = """#!/usr/bin/env python3
import json, os, sys
print(json.dumps({"argv": sys.argv[1:], "env": {k: os.environ.get(k) for k in
      ("MAGNET_JAX_COORDINATOR", "MAGNET_JAX_NUM_PROCESSES", "MAGNET_JAX_PROCESS_ID")}}))
"""
# srun: run the command once per task, as SLURM would on each node.
SRUN = """#!/usr/bin/env bash
for ((i = 0; i < SLURM_NTASKS; i++)); do SLURM_PROCID=$i "$@"; done
"""
SCONTROL = """#!/usr/bin/env bash
[[ "$1 $2 $3" == "show hostnames gpu-[01-02]" ]] && printf 'gpu-01\\ngpu-02\\n'
"""
# gcloud ... ssh --command CMD: run CMD here, in a shell as the TPU host would.
GCLOUD = """#!/usr/bin/env bash
while [[ $# -gt 0 && "$1" != "--command" ]]; do shift; done
bash -c "$2"
"""


def _bin(tmp_path, **scripts):
    folder = tmp_path / "bin"
    folder.mkdir(exist_ok=True)
    for name, text in scripts.items():
        path = folder / name.replace("_", "-")
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return dict(os.environ, PATH=f"{folder}:{os.environ['PATH']}")


def _reports(out):
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def test_slurm_script_sets_the_coordinator_and_each_task_id(tmp_path):
    env = _bin(tmp_path, magnet_jax=REPORT, srun=SRUN, scontrol=SCONTROL)
    env.update(SLURM_JOB_NODELIST="gpu-[01-02]", SLURM_NTASKS="2")
    out = subprocess.run(["bash", str(REPO / "launch/run_slurm_gpu.sh"), "configs/tiny.py",
                          "--config.train.workdir=runs/with space"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    reports = _reports(out.stdout)
    assert [r["env"]["MAGNET_JAX_PROCESS_ID"] for r in reports] == ["0", "1"]
    for r in reports:
        assert r["env"]["MAGNET_JAX_COORDINATOR"] == "gpu-01:8476" and r["env"]["MAGNET_JAX_NUM_PROCESSES"] == "2"
        assert r["argv"] == ["train", "--no-progress", "--config", "configs/tiny.py",
                             "--config.train.workdir=runs/with space"]
    # Outside a SLURM allocation: a clear refusal, nothing started.
    env.pop("SLURM_JOB_NODELIST")
    out = subprocess.run(["bash", str(REPO / "launch/run_slurm_gpu.sh"), "configs/tiny.py"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "run this under sbatch" in out.stderr and not _reports(out.stdout)


def test_tpu_pod_script_quotes_every_argument(tmp_path):
    env = _bin(tmp_path, magnet_jax=REPORT, gcloud=GCLOUD)
    repo = tmp_path / "repo"
    (repo / ".venv" / "bin").mkdir(parents=True)
    (repo / ".venv" / "bin" / "activate").write_text("")
    env["REPO_DIR"] = str(repo)
    out = subprocess.run(["bash", str(REPO / "launch/run_tpu_pod.sh"), "my-tpu", "us-east5-a", "configs/tiny.py",
                          "--config.train.workdir=runs/a b", "--config.data.dir=$HOME/x"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    [report] = _reports(out.stdout)
    assert report["argv"] == ["train", "--no-progress", "--config", "configs/tiny.py", "--config.train.workdir=runs/a b",
                              "--config.data.dir=$HOME/x"]
