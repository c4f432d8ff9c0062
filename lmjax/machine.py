"""What CPU this is, in words, for figures that depend on it (standard library only, so the
reference-side scripts can import it without JAX).

This project's 2-core machines have been both AVX-512 Intel parts (a float32 matmul peak of
~400 GFLOP/s from `python -m lmjax.bench --peak`) and AVX2 AMD EPYC ones (~100 GFLOP/s), which
move lmjax's and the PyTorch references' step times by different factors: a speed figure or a
cached peak names the CPU it was measured on.

`exec_with_huge_pages` restarts an entry point with the C allocator asking for huge pages, so
that a jitted step's buffers cost ~1/500 of the page faults.
"""

import os
import platform
import sys


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


def exec_with_huge_pages():
    """Re-executes this process (same command line) with glibc's malloc asking the kernel for
    transparent huge pages (`GLIBC_TUNABLES=glibc.malloc.hugetlb=1`, glibc 2.35+), where the
    kernel grants them on request (`transparent_hugepage/enabled` is 'madvise' or 'always').
    Returns (does nothing) when that is already set, not applicable, or
    `LMJAX_HUGE_PAGES=0`.

    Why: XLA:CPU allocates each execution's temporary buffer (the activations kept for the
    backward, ~290 MB for `fast_weights.py:cpu`'s training step) from a worker thread, which
    glibc serves by mmap and frees by munmap, so every step faulted its whole working memory
    in again, 4 KiB at a time: ~68,000-82,000 page faults a step, the kernel's time a fifth
    to a third of the step on the 2-core CPU. With huge pages it is ~500 faults of 2 MiB:
    `fast_weights.py:cpu,attn=linear` 566-604 -> 457-486 ms a step, peak RSS 805-821 ->
    838-845 MB (`python -m lmjax.bench`, alternated, 2026-12-08). (Keeping the freed memory
    mapped instead, with mallopt's one arena and no mmap, removed the faults too but let the
    heap grow by one temporary buffer a step for the first four steps: +900 MB RSS.)

    A tunable is read when the C library starts, hence the exec; the entry points call this
    first thing when run as programs (`python -m lmjax.main`, `python -m lmjax.bench`), never
    on import.
    """
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.hugetlb" in tunables or os.environ.get("LMJAX_HUGE_PAGES", "1") == "0":
        return
    if not huge_pages_available():
        return
    tunables = ":".join(filter(None, [tunables, "glibc.malloc.hugetlb=1"]))
    env = dict(os.environ, GLIBC_TUNABLES=tunables)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, env)


def huge_pages_available(thp="/sys/kernel/mm/transparent_hugepage/enabled"):
    """Whether glibc's hugetlb tunable can take effect here: Linux, glibc 2.35 or newer, and a
    kernel whose transparent huge pages are not 'never'."""
    libc, version = platform.libc_ver()
    if not sys.platform.startswith("linux") or libc != "glibc":
        return False
    if tuple(int(x) for x in version.split(".")[:2] if x.isdigit()) < (2, 35):
        return False
    try:
        with open(thp) as f:
            return "[never]" not in f.read()
    except OSError:
        return False
