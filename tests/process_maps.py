"""The test process's memory maps: freed after every test module, guarded after every test.

Every compiled XLA:CPU program keeps its code sections mapped (a few maps per kernel) for as long as a
jit cache or a fixture holds it. One pytest process runs the whole suite, so programs left alive by
earlier modules add up: on 2026-12-07 the process reached the kernel's `vm.max_map_count` (65,530)
at 81% of the suite, and the next mmap inside XLA killed it with a segfault (issue 24).
"""
import gc
import os
from dataclasses import dataclass

import jax

# Fail the suite while there is still room (16,000 maps at the default limit; one test has added up
# to ~5,000). The largest module, test_sampler, peaks near 28,000 maps in all.
GUARD_FRACTION = 0.75


def map_count() -> int:
    """Entries in this process's /proc/self/maps (0 where there is no /proc)."""
    try:
        with open("/proc/self/maps", "rb") as f:
            return sum(1 for _ in f)
    except OSError:
        return 0


def thread_count() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 0


def map_limit() -> int:
    """The kernel's per-process limit on memory maps (Linux's default where it cannot be read)."""
    try:
        with open("/proc/sys/vm/max_map_count") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 65530


def free_compiled_programs() -> None:
    """Drops every compiled program nothing else references: JAX's jit and lowering caches (the
    module's fixtures are already torn down), then the cycles that still hold executables."""
    gc.collect()
    jax.clear_caches()
    gc.collect()


@dataclass
class ModuleMaps:
    """Map counts seen during one test module: its peak after any test, at its end, and after freeing;
    and how long it ran (for conftest.LONGEST_FIRST)."""
    peak: int = 0
    at_end: int = 0
    after_free: int = 0
    threads: int = 0
    started: float = 0.0  # time.time() at its first test's set-up
    seconds: float = 0.0  # its wall time, set-up of the first test to teardown of the last


def guard_message(count: int, limit: int, where: str) -> str:
    return (f"the test process holds {count:,} memory maps after {where}, over {GUARD_FRACTION:.0%} of the "
            f"kernel's vm.max_map_count ({limit:,}); past the limit the next mmap kills it inside XLA. Something "
            f"keeps compiled programs alive (a module-level sampler, train step or jit cache): drop it when its "
            f"test module ends. Stopping the suite here rather than crashing later.")
