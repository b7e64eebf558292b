"""Test session set-up: 8 fake CPU devices for the sharding tests (must precede importing jax)."""
import os

# XLA aborts the whole process when a device waits long (tens of seconds) for the others at a collective; on a
# 2-core machine running 8 fake devices beside other jobs that can be mere slowness.
# The suite's time is XLA's compile time (85% of test_sampler's, measured with jax.monitoring): LLVM at -O0
# halves it (tests/test_sampler.py: 245 s of compiles -> 124 s, same codes); the tiny programs run fast
# enough unoptimised. The product and bench/ keep XLA's default.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 "
                                   "--xla_cpu_collective_call_terminate_timeout_seconds=300 "
                                   "--xla_backend_optimization_level=0")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The test processes compile for TPU slices at the same time (no TPU here): without this, the first
# to load libtpu holds its lock file and the others fail to describe a topology.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
# XLA:CPU's thread pool has about as many threads as cores (4 here, from $NPROC when set); 8 fake
# devices waiting for each other at a collective can hold them all while the others wait for a
# thread. Suspected cause of an intermittent abort (its message lost to capfd) in the 8-device
# train-step tests of long runs.
os.environ.setdefault("NPROC", "32")
# Each test process (each xdist worker) keeps its compilation cache in a folder of its own, made for
# this run; the processes a test starts (CLI runs, local clusters) inherit their worker's folder while it
# waits for them. Never the user's ~/.cache (whose entries other runs wrote, or a killed process left
# torn: reading such an entry has crashed a test process here), and never one folder for two workers
# (JAX writes entries in place, unlocked, so one could read what the other is half-way through writing).
import atexit  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

_CACHE = tempfile.mkdtemp(prefix="magnet_jax_test_cache_")
os.environ["MAGNET_JAX_CACHE"] = _CACHE
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)

import jax  # noqa: E402

from magnet_jax.caches import enable_compilation_cache  # noqa: E402

# Tests compile many identical programs (a new sampler or train step per test, and every module's
# programs again after the module's end frees them): they come back from the cache. Earlier crashes
# blamed on this cache in one long process (a segfault inside XLA's compile, an abort in
# `put_executable_and_time`) were the process running out of memory maps (issue 24, guarded below).
enable_compilation_cache(min_compile_time_secs=0.2)
jax.config.update("jax_default_matmul_precision", "highest")

# Memory maps: every test module's compiled programs are freed when it ends, and the suite stops
# loudly, naming the count, well before the kernel's limit (tests/process_maps.py says why).
import json  # noqa: E402
import time  # noqa: E402

import pytest  # noqa: E402

from tests import process_maps  # noqa: E402

_MODULE_MAPS = {}


def _module_name(item) -> str:
    return item.module.__name__.rsplit(".", 1)[-1]


def pytest_runtest_setup(item):
    record = _MODULE_MAPS.setdefault(_module_name(item), process_maps.ModuleMaps())
    record.started = record.started or time.time()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    result = yield  # the test's fixtures, and the module's when it is the module's last test, are gone
    record = _MODULE_MAPS.setdefault(_module_name(item), process_maps.ModuleMaps())
    count = process_maps.map_count()
    record.peak = max(record.peak, count)
    if nextitem is None or nextitem.module is not item.module:
        record.at_end, record.threads = count, process_maps.thread_count()
        record.seconds = time.time() - record.started
        process_maps.free_compiled_programs()
        count = record.after_free = process_maps.map_count()
    limit = process_maps.map_limit()
    if count > process_maps.GUARD_FRACTION * limit:
        message = process_maps.guard_message(count, limit, item.nodeid)
        item.session.shouldstop = message
        pytest.fail(message, pytrace=False)
    return result


# The longest modules first (measured by `--durations`), so that the parallel processes finish
# together instead of one running a long module alone at the end; the rest keep their order.
LONGEST_FIRST = ("test_trainer", "test_sampler", "test_multiprocess_data", "test_sweep", "test_multiprocess",
                 "test_train_step", "test_hybrid", "test_pipeline", "test_checkpoint", "test_rescoring", "test_preemption",
                 "test_sample_metrics", "test_magnet_lm")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.module.__name__.rsplit(".", 1)[-1], len(rank)))


def pytest_xdist_auto_num_workers(config):
    """`-n auto` (pytest.ini): one worker per core, as far as memory allows (a worker peaks at about 6 GiB)."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        memory = 0
    return max(1, min(os.cpu_count() or 1, memory // (6 << 30) or 1))


def pytest_sessionfinish(session):
    """An xdist worker hands its modules' map counts to the controller, which prints them."""
    if hasattr(session.config, "workeroutput"):
        session.config.workeroutput["module_maps"] = {k: vars(v) for k, v in _MODULE_MAPS.items()}


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    for name, counts in getattr(node, "workeroutput", {}).get("module_maps", {}).items():
        _MODULE_MAPS[name] = process_maps.ModuleMaps(**counts)


def pytest_terminal_summary(terminalreporter):
    if not _MODULE_MAPS:
        return
    peak_name, peak = max(_MODULE_MAPS.items(), key=lambda kv: kv[1].peak)
    rows = sorted(_MODULE_MAPS.items(), key=lambda kv: kv[1].at_end - kv[1].after_free, reverse=True)
    terminalreporter.write_sep("-", f"memory maps: peak {peak.peak:,} (in {peak_name}); "
                                    f"vm.max_map_count {process_maps.map_limit():,}")
    terminalreporter.write_line("module: peak / at its end / after freeing its programs / threads (most freed first)")
    for name, r in rows[:8]:
        terminalreporter.write_line(f"  {name}: {r.peak:,} / {r.at_end:,} / {r.after_free:,} / {r.threads}")
    slowest = sorted(_MODULE_MAPS.items(), key=lambda kv: kv[1].seconds, reverse=True)[:len(LONGEST_FIRST)]
    terminalreporter.write_line("longest modules (keep conftest.LONGEST_FIRST in step): " +
                                ", ".join(f"{name} {r.seconds:.0f} s" for name, r in slowest))
    report = os.environ.get("MAGNET_JAX_MAPS_REPORT")
    if report:
        with open(report, "w") as f:
            json.dump({k: vars(v) for k, v in _MODULE_MAPS.items()}, f, indent=1)
