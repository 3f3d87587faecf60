"""A function over jobs in worker processes, its results in the order of the
jobs whatever the number of processes: what the outputs are does not depend
on the machine's cores."""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Callable, Sequence
from typing import TypeVar

from tqdm import tqdm

J = TypeVar("J")
R = TypeVar("R")


def _ignore_interrupt() -> None:
    """Workers leave Ctrl-C to the parent, which stops them: a worker that
    died of it mid-write left the parent waiting on its pipe for ever."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def ordered_map(function: Callable[[J], R], jobs: Sequence[J], workers: int | None = None,
                desc: str | None = None, unit: str = "it", chunksize: int = 1) -> list[R]:
    """[function(job) for job in jobs], on up to `workers` processes (None:
    one a core; one: in this process). A progress bar when desc is given.
    function must be a module-level function (it is pickled). On an
    exception or Ctrl-C in the parent the workers are terminated."""
    workers = min(workers or os.cpu_count() or 1, len(jobs))
    bar = {"desc": desc, "unit": unit, "total": len(jobs), "disable": desc is None}
    if workers <= 1:
        return [function(job) for job in tqdm(jobs, **bar)]
    # Leaving the with block terminates the workers, done or not.
    with multiprocessing.get_context("fork").Pool(workers, _ignore_interrupt) as pool:
        return list(tqdm(pool.imap(function, jobs, chunksize=chunksize), **bar))
