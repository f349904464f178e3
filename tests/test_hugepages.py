"""train.py restarts itself once with glibc's malloc on huge pages (v2v_jax/hugepages.py)."""

import os
import subprocess
import sys

import pytest

from v2v_jax import hugepages

SHOW = ("from v2v_jax.hugepages import restart_with_huge_pages; import os; restart_with_huge_pages(); "
        "print(os.environ.get('GLIBC_TUNABLES'))")


def run_show(**env) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "V2V_HUGEPAGES")}
    out = subprocess.run([sys.executable, "-c", SHOW], env={**clean, **env}, capture_output=True, text=True,
                         check=True)
    return out.stdout.strip()


def test_not_wanted_when_set_or_turned_off():
    assert not hugepages.wanted({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"})
    assert not hugepages.wanted({"V2V_HUGEPAGES": "0"})


@pytest.mark.skipif(not hugepages.wanted({}), reason="no glibc >= 2.35 with transparent huge pages here")
def test_restart_adds_the_tunable_once_and_keeps_the_others():
    assert run_show(GLIBC_TUNABLES="glibc.malloc.arena_max=2") == "glibc.malloc.arena_max=2:" + hugepages.TUNABLE
    assert run_show() == hugepages.TUNABLE
    assert run_show(V2V_HUGEPAGES="0") == "None"
