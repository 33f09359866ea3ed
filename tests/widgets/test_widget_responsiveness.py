"""The viewer stays responsive while the Train widget trains.

What is measured: a ``QTimer`` on the GUI thread fires every 10 ms and records
``time.perf_counter()``; the gaps between consecutive ticks are how long the Qt event loop was
unable to run (handling our worker messages, redrawing the live plot and the live-prediction
layer, napari's own canvas redraws, waiting for the GIL). The first 0.5 s after pressing Train
(thread start-up, creating the live-prediction layer) are left out; the rest of the run, with
plot redraws every 0.5 s and a live preview every 0.5 s, must never stall the loop for 100 ms.

A loop can only be as punctual as the machine lets it be. On a shared machine other processes
may take the cores (the worker uses all cores but one, so the GUI has one). The test therefore
also measures the CPU time that *other* processes used during the run (system-wide busy time
minus this process and the X server). A stall of 100 ms or more fails the test, unless other
processes kept more than a third of a core busy on average or an idle event loop (1 s before
training) already stalled for more than 60 ms: then the timing says nothing about this package
and the test is skipped, with all the numbers in the message.
"""

from __future__ import annotations

import time

import numpy as np
import psutil
import pytest
from qtpy.QtCore import Qt, QTimer
from widget_helpers import add_cells, configure_tiny, wait_idle

from napari_unet._widgets.annotate import AnnotateWidget
from napari_unet._widgets.train import TrainWidget

pytestmark = pytest.mark.viewer

TICK_MS = 10
WARM_UP_S = 0.5
MAX_GAP_S = 0.100
MAX_IDLE_GAP_S = 0.060
MAX_OTHER_CORES = 0.33


def _ours() -> list[psutil.Process]:
    """This process and the X server that displays it (part of the viewer's drawing work)."""
    procs = [psutil.Process()]
    for proc in psutil.process_iter(["name"]):
        if (proc.info["name"] or "").startswith("Xvfb"):
            procs.append(proc)
    return procs


def _cpu_seconds(procs: list[psutil.Process]) -> tuple[float, float]:
    """(CPU seconds used by ``procs``, busy CPU seconds of the whole machine)."""
    ours = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
            ours += times.user + times.system
        except psutil.Error:
            pass
    total = psutil.cpu_times()
    busy = (
        total.user
        + total.system
        + getattr(total, "nice", 0.0)
        + getattr(total, "irq", 0.0)
        + getattr(total, "softirq", 0.0)
        + getattr(total, "steal", 0.0)
    )
    return ours, busy


class TickRecorder:
    """A 10 ms GUI-thread timer that records when it fired."""

    def __init__(self) -> None:
        self.ticks: list[float] = []
        self.timer = QTimer()
        self.timer.setTimerType(Qt.PreciseTimer)
        self.timer.setInterval(TICK_MS)
        self.timer.timeout.connect(lambda: self.ticks.append(time.perf_counter()))

    def gaps(self, start: float = -np.inf, stop: float = np.inf) -> np.ndarray:
        ticks = np.array([t for t in self.ticks if start <= t <= stop])
        return np.diff(ticks) if ticks.size > 1 else np.zeros(0)


def test_event_loop_never_stalls_while_training(viewer, cells, qtbot, record_property):
    image, truth = add_cells(viewer, cells)
    annotate, train = AnnotateWidget(viewer), TrainWidget(viewer)
    viewer.window.add_dock_widget(train)
    annotate.import_labels(truth, [0, 2, 3])
    configure_tiny(train, steps=80)
    train.hold_out.value = "3"  # validation points in the plot too
    train.preview_every.value = 0.5
    recorder = TickRecorder()
    recorder.timer.start()
    qtbot.wait(1000)
    idle = recorder.gaps()

    procs = _ours()
    ours0, busy0 = _cpu_seconds(procs)
    start = time.perf_counter()
    train.start_training()
    wait_idle(qtbot, train)
    stop = time.perf_counter()
    ours1, busy1 = _cpu_seconds(procs)
    other_cores = max(0.0, (busy1 - busy0) - (ours1 - ours0)) / (stop - start)
    recorder.timer.stop()
    gaps = recorder.gaps(start + WARM_UP_S, stop)
    numbers = {
        "idle_max_gap_ms": round(1000 * float(idle.max()), 1),
        "other_processes_cores": round(other_cores, 2),
        "train_max_gap_ms": round(1000 * float(gaps.max()), 1),
        "train_p99_gap_ms": round(1000 * float(np.percentile(gaps, 99)), 1),
        "train_seconds": round(stop - start, 2),
        "ticks": int(gaps.size),
        "plot_redraws": train.plot.redraws,
        "live_previews": train.preview.updates,
    }
    for key, value in numbers.items():
        record_property(key, value)
    print("responsiveness:", numbers)
    assert train.events[-1].kind == "done"
    assert train.plot.redraws >= 2 and train.preview.updates >= 2  # live updates did happen
    busy = idle.max() > MAX_IDLE_GAP_S or other_cores > MAX_OTHER_CORES
    if gaps.max() >= MAX_GAP_S and busy:
        pytest.skip(f"machine too busy to measure responsiveness: {numbers}")
    assert gaps.max() < MAX_GAP_S, numbers
