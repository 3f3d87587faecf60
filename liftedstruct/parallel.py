"""A function over jobs in worker processes, its results in the order of the
jobs whatever the number of processes: what the outputs are does not depend
on the machine's cores."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

from tqdm import tqdm

J = TypeVar("J")
R = TypeVar("R")


def ordered_map(function: Callable[[J], R], jobs: Sequence[J], workers: int | None = None,
                desc: str | None = None, unit: str = "it", chunksize: int = 1) -> list[R]:
    """[function(job) for job in jobs], on up to `workers` processes (None:
    one a core; one: in this process). A progress bar when desc is given.
    function must be a module-level function (it is pickled)."""
    workers = min(workers or os.cpu_count() or 1, len(jobs))
    bar = {"desc": desc, "unit": unit, "total": len(jobs), "disable": desc is None}
    if workers <= 1:
        return [function(job) for job in tqdm(jobs, **bar)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(tqdm(pool.map(function, jobs, chunksize=chunksize), **bar))
