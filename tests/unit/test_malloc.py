"""showcase_core.malloc: a process that keeps its freed memory faults its pages in once, not every batch."""

import json
import subprocess
import sys

BATCHES = """
import json, resource, sys
import numpy as np
from showcase_core.malloc import keep_freed_memory
took = keep_freed_memory() if sys.argv[1] == "keep" else None
faults = []
for _ in range(20):  # a batch: 64 MiB of activations, written, then freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = np.ones(1 << 23)
    del a
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"took": took, "faults": faults}))
"""


def batch_faults(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", BATCHES, mode], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_freed_batches_are_reused_instead_of_faulted_in_again():
    default, kept = batch_faults("default"), batch_faults("keep")
    first = default["faults"][0]  # faults of one batch's pages (fewer than 16 k when the kernel uses huge pages)
    assert kept["took"] is True and first > 0
    assert min(default["faults"][1:]) > first // 2  # glibc maps and unmaps every batch: its pages fault in again
    assert sum(kept["faults"][1:]) < first // 10  # kept: the first batch's pages serve all 19 later ones
