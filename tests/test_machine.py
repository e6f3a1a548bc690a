"""The allocator setting: done on glibc, left alone where the user chose otherwise."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cellae import machine

CHECK = "from cellae.machine import keep_freed_memory; print(keep_freed_memory())"


def fresh(env: dict[str, str]) -> str:
    """keep_freed_memory() in a process of its own: the setting is process-wide."""
    environment = {k: v for k, v in os.environ.items()
                   if k not in machine.GLIBC_VARIABLES and k != machine.OPT_OUT} | env
    done = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True,
                          check=True, env=environment)
    return done.stdout.strip()


def glibc() -> bool:
    try:
        return sys.platform.startswith("linux") and bool(os.confstr("CS_GNU_LIBC_VERSION"))
    except (ValueError, OSError):
        return False


@pytest.mark.skipif(not glibc(), reason="mallopt is glibc's; elsewhere nothing is done")
def test_keeps_freed_memory_on_glibc() -> None:
    assert fresh({}) == "True"


@pytest.mark.parametrize("env", [{machine.OPT_OUT: "1"}, {"MALLOC_MMAP_MAX_": "65536"},
                                 {"LD_PRELOAD": "/usr/lib/libjemalloc.so.2x"}])
def test_leaves_a_users_choice_alone(env) -> None:
    # the preloaded name does not exist: the loader warns and carries on, cellae must not act
    assert fresh(env) == "False"
