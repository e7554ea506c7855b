"""Process settings: freed memory kept for reuse (:func:`mllm_study.process.keep_freed_memory`)."""

import os
import subprocess
import sys

import pytest

# A training step's pattern: 40 activations of 786 KB (a quick-profile MLP activation) alive at once, then all freed
# (as the backward pass frees them); repeated. With glibc's defaults the freed top of the heap is trimmed back to the
# kernel each time (its trim threshold follows the mmap threshold), so every repetition faults ~7,500 pages in again.
_PROBE = """
import resource, torch
from mllm_study.process import keep_freed_memory
took = keep_freed_memory()
a = torch.randn(16, 48, 256)
for _ in range(3):  # warm-up: the first touches fault in any case
    acts = [a * 2 for _ in range(40)]
    del acts
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    acts = [a * 2 for _ in range(40)]
    del acts
print(took, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
"""


def _probe(keep: str) -> tuple[bool, int]:
    env = {**os.environ, "MLLM_STUDY_KEEP_FREED_MEMORY": keep}
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True)
    took, faults = out.stdout.split()
    return took == "True", int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_kept_memory_is_reused_without_page_faults():
    took_off, faults_off = _probe("0")
    took_on, faults_on = _probe("1")
    assert not took_off and took_on
    assert faults_on < 1_000, faults_on  # the loop reuses the heap's pages (one repetition alone faults ~7,500)
    assert faults_off > 2_000, (faults_off, faults_on)  # the switch makes the difference (seen: 2,816-24,835)


def test_keep_freed_memory_is_idempotent():
    out = subprocess.run([sys.executable, "-c", "from mllm_study.process import keep_freed_memory as k; "
                          "print(k(), k())"], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True"] or not sys.platform.startswith("linux")
