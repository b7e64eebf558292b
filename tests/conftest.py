"""Test session set-up: 8 fake CPU devices for the sharding tests (must precede importing jax)."""
import os

# XLA aborts the whole process when a device waits long (tens of seconds) for the others at a collective; on a
# 2-core machine running 8 fake devices beside other jobs that can be mere slowness.
# LLVM at -O1: tests compile hundreds of small programs; a tenth less time for the compile-bound
# ones, the same run time for the training runs (measured; float semantics do not change).
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 "
                                   "--xla_cpu_collective_call_terminate_timeout_seconds=300 "
                                   "--xla_backend_optimization_level=1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# XLA:CPU's thread pool has about as many threads as cores (4 here, from $NPROC when set); 8 fake
# devices waiting for each other at a collective can hold them all while the others wait for a
# thread. Suspected cause of an intermittent abort (its message lost to capfd) in the 8-device
# train-step tests of long runs.
os.environ.setdefault("NPROC", "32")
# The processes tests start (CLI runs, local clusters) use JAX's persistent compilation cache: keep it in
# a folder of this session, never the user's ~/.cache (whose entries other runs wrote, or a killed process
# left torn: reading such an entry has crashed a test process here).
import tempfile  # noqa: E402

os.environ.setdefault("MAGNET_JAX_CACHE", tempfile.mkdtemp(prefix="magnet_jax_test_cache_"))
_SUBPROCESS_CACHE = os.environ["MAGNET_JAX_CACHE"]
# This process has a cache of its own, on from the start: tests compile many identical programs (the
# suite takes about a third longer without it). It holds only what this process compiled. Its two
# crashes (a segfault in CI, an abort inside `put_executable_and_time` here) came while the sweep's
# concurrent points compiled in threads; the sweep now writes nothing to the cache while they do.
_IN_PROCESS_CACHE = tempfile.mkdtemp(prefix="magnet_jax_test_inprocess_cache_")

import jax  # noqa: E402

from magnet_jax.decode import sampler as _sampler  # noqa: E402

_sampler.enable_compilation_cache(_IN_PROCESS_CACHE)
_enable = _sampler.enable_compilation_cache


def _enable_in_process(path=None, min_compile_time_secs: float = 1.0) -> str:
    """What CLI calls made inside this process turn on: this process's own cache, unless a test
    points $MAGNET_JAX_CACHE elsewhere (test_trainer checks that the CLI honours it)."""
    if path is None and os.environ.get("MAGNET_JAX_CACHE") == _SUBPROCESS_CACHE:
        path = _IN_PROCESS_CACHE
    return _enable(path, min_compile_time_secs)


_sampler.enable_compilation_cache = _enable_in_process
jax.config.update("jax_default_matmul_precision", "highest")
