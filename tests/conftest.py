"""Test session set-up: 8 fake CPU devices for the sharding tests (must precede importing jax)."""
import os

# XLA aborts the whole process when a device waits long (tens of seconds) for the others at a collective; on a
# 2-core machine running 8 fake devices beside other jobs that can be mere slowness.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 "
                                   "--xla_cpu_collective_call_terminate_timeout_seconds=300")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
