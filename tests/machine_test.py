"""lmjax/machine.py's re-exec with huge pages: applied once, argv and other tunables kept,
and off with LMJAX_HUGE_PAGES=0."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_PROBE = (
    "import os, sys; from lmjax import machine; machine.exec_with_huge_pages(); "
    "print(os.environ.get('GLIBC_TUNABLES', ''), *sys.argv[1:], sep='|')"
)


def _run(env, *args):
    env = {**os.environ, "PYTHONPATH": ROOT, **env}
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, *args], env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.strip().split("|")


def _applies():
    """The conditions exec_with_huge_pages checks, from outside."""
    import platform

    libc, version = platform.libc_ver()
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            thp = "[never]" not in f.read()
    except OSError:
        thp = False
    numbers = tuple(int(x) for x in version.split(".")[:2] if x.isdigit())
    return sys.platform.startswith("linux") and libc == "glibc" and numbers >= (2, 35) and thp


def test_reexec_sets_the_tunable_once_and_keeps_argv():
    base = {"GLIBC_TUNABLES": "glibc.malloc.tcache_count=7", "LMJAX_HUGE_PAGES": "1"}
    tunables, *argv = _run(base, "a b", "--x=1")
    assert argv == ["a b", "--x=1"]  # the same command line after the exec
    expected = "glibc.malloc.tcache_count=7"
    if _applies():
        expected += ":glibc.malloc.hugetlb=1"
    assert tunables == expected


def test_off_switch_and_already_set():
    assert _run({"LMJAX_HUGE_PAGES": "0", "GLIBC_TUNABLES": ""})[0] == ""
    given = "glibc.malloc.hugetlb=0"  # the user's own choice is left alone
    assert _run({"GLIBC_TUNABLES": given, "LMJAX_HUGE_PAGES": "1"})[0] == given
