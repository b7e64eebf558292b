"""Running the local pod simulator (launch/local_cluster.sh) from tests: a launcher in a session
of its own, stopped with its processes on a timeout, and the pids of its training processes."""
import os
import signal
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCHER = os.path.join(REPO, "launch", "local_cluster.sh")


def cluster_env(**extra: str) -> dict:
    """This environment without the test session's XLA flags and platform (the launcher sets both)."""
    return {**{k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}, **extra}


def run_group(cmd, env, timeout: float) -> subprocess.CompletedProcess:
    """subprocess.run in a session of its own; on a timeout the launcher is stopped with its
    processes (left running, they would slow every later test) and the output shown."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # TERM to the launcher: it stops its processes, which run in sessions of their own.
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=int(env.get("MAGNET_JAX_KILL_AFTER", 60)) + 10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        pytest.fail(f"{' '.join(cmd[:6])} ... did not finish in {timeout} s:\n{out[-3000:]}\n{err[-6000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def process_of(workdir, index: int) -> int:
    """The pid of training process `index` of the job writing to `workdir`."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace")
            environ = open(f"/proc/{pid}/environ", "rb").read().decode(errors="replace").split("\0")
        except OSError:
            continue
        if "magnet_jax.cli" in cmdline and str(workdir) in cmdline and f"MAGNET_JAX_PROCESS_ID={index}" in environ:
            return int(pid)
    raise AssertionError(f"no process {index} writing to {workdir}")
