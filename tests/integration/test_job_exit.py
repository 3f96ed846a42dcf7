"""How a job's process ends (``jobs.common.exit_process``, each job's ``__main__``): its exit code, its last buffered
output and log lines, and its local Ray instance stopped, without Python's final garbage collections."""

import os
import subprocess
import sys

import psutil

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

EXITING = r"""
import io, logging, sys
from jobs.common import configure_logging, exit_process, start_ray
path = configure_logging("exiting")
code = int(sys.argv[1])
if code == 0:
    start_ray()
    import ray
    print("RAYLET", ray._private.worker._global_node.all_processes["raylet"][0].process.pid)
logging.getLogger("some.library").warning("logged last")
held = [io.StringIO("in a cycle")]
held.append(held)  # garbage the final collections would have freed
print("PATH", path)
print("printed last", end="")  # stdout is a pipe: block-buffered until the process ends
exit_process(code)
"""


def test_exit_process_keeps_the_code_the_output_and_the_log_and_stops_ray(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # stdout buffered, as a job's in a pipe
    for code in (3, 0):
        result = subprocess.run([sys.executable, "-c", EXITING, str(code)], cwd=REPO, capture_output=True, text=True,
                                timeout=120, env={**env, "SHOWCASE_LOG_DIR": str(tmp_path)})
        assert result.returncode == code, result.stderr
        assert result.stdout.endswith("printed last"), result.stdout
        with open(result.stdout.split("PATH ", 1)[1].split("\n", 1)[0]) as f:
            assert "logged last" in f.read()
        if code == 0:  # the job's local Ray instance is gone with it
            raylet = int(result.stdout.split("RAYLET ", 1)[1].split("\n", 1)[0])
            assert not psutil.pid_exists(raylet) or psutil.Process(raylet).status() == psutil.STATUS_ZOMBIE
