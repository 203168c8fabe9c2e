"""The malloc setting that keeps freed memory for the next step (cnncli.engine.heap)."""

from __future__ import annotations

import subprocess
import sys

import pytest

CHECK = """
import ctypes, numpy as np, resource, sys
from cnncli.engine import heap
changed = heap.keep_freed_memory()
again = heap.keep_freed_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
a = np.ones(64 << 18, np.float32)  # 64 MB, once
del a
before = faults()
for _ in range(5):  # the same 64 MB again and again, as a training step does
    b = np.ones(64 << 18, np.float32)
    del b
print(changed, again, faults() - before)
"""


def _run(env_extra: dict) -> tuple[bool, bool, int]:
    import os

    env = {k: v for k, v in os.environ.items()
           if k not in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "CNNCLI_MALLOC")}
    env.update(env_extra)
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True,
                         env=env, check=True).stdout.split()
    return out[0] == "True", out[1] == "True", int(out[2])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_arrays_are_reused_without_page_faults():
    changed, again, faults = _run({})
    assert changed and not again  # once per process
    changed, _, faults_system = _run({"CNNCLI_MALLOC": "system"})
    assert not changed
    # glibc's default maps the 64 MB afresh each time: at least one fault per page, 16,384
    # 4 KB pages or (transparent huge pages) 32 of 2 MB, five times over; the kept memory
    # is reused with next to none
    assert faults_system >= 5 * 32 - 10, faults_system
    assert faults <= max(16, faults_system / 10), (faults, faults_system)
    changed, _, _ = _run({"MALLOC_MMAP_THRESHOLD_": "131072"})
    assert not changed  # the user's own setting wins
