"""liftedstruct.parallel.ordered_map: results in the jobs' order on any number
of processes, and Ctrl-C stops the workers at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from liftedstruct.parallel import ordered_map

ROOT = Path(__file__).resolve().parents[1]


def _square_after(job: tuple[int, float]) -> int:
    value, delay = job
    time.sleep(delay)
    return value * value


def test_results_in_the_jobs_order_on_any_number_of_processes():
    # Later jobs finish first: the order is the jobs', not the finishing one.
    jobs = [(value, 0.02 * (value % 3 == 0)) for value in range(20)]
    want = [value * value for value in range(20)]
    for workers in (1, 2, 3):
        for chunksize in (1, 4):
            assert ordered_map(_square_after, jobs, workers, chunksize=chunksize) == want


@pytest.mark.parametrize("group", [True, False], ids=["terminal", "parent-only"])
def test_ctrl_c_stops_the_workers_at_once(tmp_path, group):
    """SIGINT while 100 jobs of 0.3 s wait, to the whole process group (a
    terminal's Ctrl-C) or to the parent alone (`kill -INT`): the run ends
    within seconds with KeyboardInterrupt, not after the queued jobs (a pool
    that waits for them takes 15 s)."""
    started = tmp_path / "started"
    script = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from liftedstruct.parallel import ordered_map

        def job(value):
            Path({str(started)!r}).touch()
            time.sleep(0.3)
            return value

        ordered_map(job, list(range(100)), 2)
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-c", script], env=env,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert started.exists(), "the workers never started"
        time.sleep(0.5)
        interrupted = time.monotonic()
        (os.killpg if group else os.kill)(process.pid, signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
        took = time.monotonic() - interrupted
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode != 0
    assert "KeyboardInterrupt" in stderr
    assert took < 5, f"{took:.1f} s to stop"
