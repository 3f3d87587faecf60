"""What a benchmark ran on: the processor, the cores this process may use and
the memory, as its results record them."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def machine() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.machine())
    memory_kb = next(int(line.split()[1]) for line in
                     Path("/proc/meminfo").read_text().splitlines()
                     if line.startswith("MemTotal"))
    return {"cpu": model, "cores": len(os.sched_getaffinity(0)),
            "memory_gib": round(memory_kb / 2 ** 20, 1)}
