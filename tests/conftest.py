"""Test setup: CPU backend with 8 fake devices, set before jax is imported anywhere."""

import gc
import os

os.environ["JAX_PLATFORMS"] = "cpu"
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
# Tiny shapes: compile time dominates, and XLA's optimisation passes are most of it.
jax.config.update("jax_disable_most_optimizations", True)


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_executables():
    """Drops every compiled executable after each test module.

    XLA:CPU maps each executable's code into memory of its own, and a process may hold at most
    vm.max_map_count (65,530 by default) mappings. The whole suite in one process compiles a few
    thousand programs and passed that limit near its end, where LLVM's section allocation then
    failed inside `backend_compile_and_load` (a SIGSEGV one run, SIGABRT the next, in whatever
    test compiled at that moment). Clearing JAX's caches between modules frees them: measured
    with tests/layers alone, 13,351 mappings at the end without this, see the commit message.
    """
    yield
    jax.clear_caches()
    gc.collect()
