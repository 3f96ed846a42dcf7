"""Run a tests/perf script as the lent GPU machine would: what that machine lacks (Ray, deltalake, DeepSpeed,
pydantic, spaCy, polars) cannot be imported at all, and the packages the script's carry folder holds may come only
from that folder (tests/integration/test_gpu_script.py, test_generation_jobs.py)."""

from __future__ import annotations

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# run in the child before the script: argv = carry folder, carried top-level packages (comma-separated), script, args
GUARD = r'''
import importlib.abc, importlib.machinery, os, runpy, sys
carry = os.path.realpath(sys.argv[1])
ABSENT = {"ray", "deltalake", "deepspeed", "pydantic", "pydantic_core", "spacy", "polars"}
CARRIED = set(sys.argv[2].split(","))

class LentMachine(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        top = name.split(".")[0]
        if top in CARRIED and "." not in name:
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            if spec is None or not os.path.realpath(spec.origin).startswith(carry + os.sep):
                raise ImportError(f"{name} must come from the carry folder, found {spec and spec.origin}")
            return spec
        return None

# as if not installed: importing one raises ModuleNotFoundError and importlib.util.find_spec answers None
# (transformers probes for deepspeed that way)
sys.modules.update(dict.fromkeys(ABSENT))
sys.meta_path.insert(0, LentMachine())
sys.argv = [sys.argv[3], *sys.argv[4:]]
runpy.run_path(sys.argv[0], run_name="__main__")
'''


def run_as_lent_machine(carry, carried: set[str], script: str, args: list[str], env: dict | None = None,
                        timeout: int = 600) -> subprocess.CompletedProcess:
    """``python script args`` from the repository root with PYTHONPATH = ``carry``, under the guard."""
    env = {**os.environ, **(env or {}), "PYTHONPATH": str(carry)}
    return subprocess.run([sys.executable, "-c", GUARD, str(carry), ",".join(sorted(carried)), script, *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
