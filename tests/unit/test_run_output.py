"""What a run prints (issue 17): progress lines off a terminal, and the libraries' log messages in a file."""

import os
import subprocess
import sys
import time

from jobs.common import Progress

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_progress_off_a_terminal_is_a_line_per_interval_and_the_last(capsys):
    progress = Progress("ingest", "chunks validated", 50, every=0.2)
    started = time.monotonic()
    for done in range(1, 51):
        time.sleep(0.01)
        progress.update(done, f"{done * 10:,} records")
    progress.update(50)  # after the end: nothing more
    elapsed = time.monotonic() - started
    lines = capsys.readouterr().err.splitlines()
    assert lines and all(line.startswith("[ingest] chunks validated: ") for line in lines), lines
    assert len(lines) <= elapsed / 0.2 + 1, lines
    assert "50/50" in lines[-1] and "500 records" in lines[-1] and "\r" not in "".join(lines)
    assert len(lines) == len(set(lines))


def test_a_quick_step_prints_its_last_line_only(capsys):
    progress = Progress("make_world", "photos drawn", 0, every=5.0)
    progress.total = 3  # known once the world's size is
    for done in (1, 2, 3):
        progress.update(done)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("[make_world] photos drawn: 3/3 "), lines


LIBRARIES = r"""
import logging, sys, warnings
from jobs.common import configure_logging
path = configure_logging("unit")
import ray  # its logger prints on a handler of its own: quieted to errors, copied to the file
logging.getLogger("ray.some_module").warning("ray warns")
logging.getLogger("some.library").info("library info")
logging.getLogger("some.library").warning("library warns")
logging.getLogger("some.library").error("library fails")
warnings.warn("a python warning")
print("PATH", path)
"""


def test_library_log_messages_go_to_the_file_and_only_errors_to_the_terminal(tmp_path):
    result = subprocess.run([sys.executable, "-c", LIBRARIES], cwd=REPO, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "SHOWCASE_LOG_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    path = result.stdout.split("PATH ", 1)[1].strip()
    assert os.path.dirname(path) == str(tmp_path) and os.path.basename(path).startswith("unit-")
    with open(path) as f:
        logged = f.read()
    for message in ("ray warns", "library warns", "library fails", "a python warning"):
        assert message in logged, logged
    assert "library info" not in logged  # the root's level (WARNING) still decides
    err = result.stderr
    assert "library fails" in err and "ray warns" not in err and "library warns" not in err
    assert "a python warning" not in err
    assert err.count(path) == 1  # announced once
