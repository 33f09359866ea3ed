"""CPU threads for work done in the background of the GUI.

PyTorch uses every core for its CPU kernels and its OpenMP threads spin while they wait. A
training loop in a worker thread then competes with the GUI thread for the cores (and the GIL),
and the viewer stutters. The widgets therefore run CPU work with one core fewer than the machine
has (at least one), which keeps the viewer fluid at a small cost in speed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch


def gui_cpu_threads() -> int:
    """Threads for background CPU work: all cores but one (at least one)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 2) - 1)


@contextmanager
def limited_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` PyTorch CPU threads (None: leave as is)."""
    if not threads:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(previous)
