"""Start the process again with glibc's malloc on transparent huge pages, before JAX loads.

XLA on the CPU takes each step's activations and temporaries (hundreds of MB) from fresh memory, and every 4 KiB
page of it faults on first touch: 14.4 million faults and a third of the CPU time in 300 steps of the default
`python train.py` on the 2-core machine. With `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` malloc asks for 2 MiB pages:
0.38 million faults, 6.1 -> 7.8 steps/s (docs/benchmarks.md). The tunable is read only when a process starts,
hence the re-exec. `V2V_HUGEPAGES=0` turns it off.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

TUNABLE = "glibc.malloc.hugetlb=1"
THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def wanted(environ=os.environ) -> bool:
    """Whether this process should restart with the tunable: Linux with glibc >= 2.35 (which has it), transparent
    huge pages not disabled, the tunable not already set, and not turned off."""
    if sys.platform != "linux" or environ.get("V2V_HUGEPAGES") == "0":
        return False
    if "glibc.malloc.hugetlb" in environ.get("GLIBC_TUNABLES", ""):
        return False
    libc, version = platform.libc_ver()
    if libc != "glibc" or tuple(int(p) for p in version.split(".")[:2]) < (2, 35):
        return False
    try:
        return "[never]" not in THP_SETTING.read_text()
    except OSError:
        return False


def restart_with_huge_pages() -> None:
    """Replaces this process by the same command line with the tunable added, when `wanted`; else returns."""
    if not wanted():
        return
    tunables = os.environ.get("GLIBC_TUNABLES")
    env = {**os.environ, "GLIBC_TUNABLES": f"{tunables}:{TUNABLE}" if tunables else TUNABLE}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, env)
