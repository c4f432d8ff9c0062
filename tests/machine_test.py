"""lmjax/machine.py's re-exec with huge pages: applied once, argv and other tunables kept,
and off with LMJAX_HUGE_PAGES=0."""

import os
import platform
import subprocess
import sys

import pytest

from lmjax import machine

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


def test_reexec_sets_the_tunable_once_and_keeps_argv():
    base = {"GLIBC_TUNABLES": "glibc.malloc.tcache_count=7", "LMJAX_HUGE_PAGES": "1"}
    tunables, *argv = _run(base, "a b", "--x=1")
    assert argv == ["a b", "--x=1"]  # the same command line after the exec
    expected = "glibc.malloc.tcache_count=7"
    if machine.huge_pages_available():
        expected += ":glibc.malloc.hugetlb=1"
    assert tunables == expected


def test_off_switch_and_already_set():
    assert _run({"LMJAX_HUGE_PAGES": "0", "GLIBC_TUNABLES": ""})[0] == ""
    given = "glibc.malloc.hugetlb=0"  # the user's own choice is left alone
    assert _run({"GLIBC_TUNABLES": given, "LMJAX_HUGE_PAGES": "1"})[0] == given


def test_availability_follows_the_kernel_setting(tmp_path):
    """'never' or an unreadable setting: no restart; 'madvise' / 'always': as glibc allows."""
    setting = tmp_path / "enabled"
    setting.write_text("always madvise [never]\n")
    assert not machine.huge_pages_available(str(setting))
    assert not machine.huge_pages_available(str(tmp_path / "absent"))
    setting.write_text("always [madvise] never\n")
    libc, version = platform.libc_ver()
    if not sys.platform.startswith("linux") or libc != "glibc":
        pytest.skip(f"C library {libc or 'unknown'}: the tunable is glibc's")
    major_minor = tuple(int(x) for x in version.split(".")[:2])
    assert machine.huge_pages_available(str(setting)) == (major_minor >= (2, 35))
