"""What CPU this is, in words, for figures that depend on it (standard library only, so the
reference-side scripts can import it without JAX).

This project's 2-core machines have been both AVX-512 Intel parts (a float32 matmul peak of
~400 GFLOP/s from `python -m lmjax.bench --peak`) and AVX2 AMD EPYC ones (~100 GFLOP/s), which
move lmjax's and the PyTorch references' step times by different factors: a speed figure or a
cached peak names the CPU it was measured on.
"""

import platform


def cpu_name(cpuinfo="/proc/cpuinfo"):
    """The CPU's model name and widest vector unit, e.g. 'AMD EPYC (AVX2)'; the architecture
    (`platform.machine()`) where /proc/cpuinfo is unreadable."""
    try:
        with open(cpuinfo) as f:
            lines = f.read().splitlines()
    except OSError:
        return platform.machine()
    field = lambda name: next((ln.split(":", 1)[1] for ln in lines if ln.startswith(name)), None)
    model = (field("model name") or platform.machine()).strip()
    flags = set((field("flags") or "").split())
    isa = next((n for f, n in (("avx512f", "AVX-512"), ("avx2", "AVX2")) if f in flags), None)
    return f"{model} ({isa})" if isa else model
