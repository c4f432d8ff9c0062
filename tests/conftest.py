"""Test setup: CPU backend with 8 fake devices, set before jax is imported anywhere."""

import os

os.environ["JAX_PLATFORMS"] = "cpu"
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
# Tiny shapes: compile time dominates, and XLA's optimisation passes are most of it.
jax.config.update("jax_disable_most_optimizations", True)
