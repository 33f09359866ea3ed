"""A small live plot of the training loss and the validation IoU (matplotlib in Qt).

Cheap on the GUI thread: points are appended to lists; a timer redraws at most every
``interval_ms`` (default 500 ms) and only when something changed. The axes are fixed for a run
(x: 0..steps, IoU: 0..1, loss: 0..a bit above the largest loss seen), so a redraw normally only
blits the two lines onto a cached background (a few milliseconds); the whole figure is drawn
again only when the loss leaves its range or the widget is resized.

A run that continues the model just trained keeps the earlier curves and draws its steps after
them (``start(..., keep=True, offset=steps already trained)``), behind a dashed line where the
continuation begins; a new model clears the plot. The x axis counts the model's steps over all
its runs. The loss is drawn as faint raw points under its exponential moving average.
:meth:`LivePlot.history` and :meth:`LivePlot.show_history` keep a curve beyond the widget.
"""

from __future__ import annotations

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QVBoxLayout, QWidget

FG, BG, LOSS, IOU = "#d0d0d0", "#262930", "#5fa8ff", "#ffa040"
EMA = 0.9  # weight of the running mean in the smoothed loss (TensorBoard-style, debiased)
HISTORY = ("steps", "losses", "val_steps", "val_ious", "continued_at")


def ema(values: list[float], alpha: float = EMA) -> list[float]:
    """The debiased exponential moving average of ``values`` (the first value stays)."""
    out, mean = [], 0.0
    for i, value in enumerate(values, start=1):
        mean = alpha * mean + (1 - alpha) * value
        out.append(mean / (1 - alpha**i))
    return out


class LivePlot(QWidget):
    """Loss (left axis) and validation IoU (right axis, 0..1) against the step."""

    def __init__(self, parent: QWidget | None = None, interval_ms: int = 500) -> None:
        super().__init__(parent)
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.smooth: list[float] = []  # ema(self.losses), kept up to date
        self.val_steps: list[int] = []
        self.val_ious: list[float] = []
        self.offset = 0  # x of the current run's step 0 (steps trained before it in the chain)
        self.continuations: list = []  # dashed lines where a continued run begins
        self.redraws = 0  # redraws with new data
        self._dirty = False
        self._background = None
        self.figure = Figure(figsize=(3.6, 2.0), dpi=80, facecolor=BG)
        self.figure.subplots_adjust(left=0.16, right=0.86, bottom=0.2, top=0.95)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(150)
        ax = self.ax = self.figure.add_subplot(111)
        ax2 = self.ax_iou = ax.twinx()
        for axis in (ax, ax2):
            axis.set_facecolor(BG)
            axis.tick_params(colors=FG, labelsize=8)
            for spine in axis.spines.values():
                spine.set_color("#808080")
        ax.set_xlabel("step (all runs of the model)", color=FG, fontsize=8)
        ax.set_ylabel("loss", color=LOSS, fontsize=8)
        ax2.set_ylabel("val IoU", color=IOU, fontsize=8)
        ax2.set_ylim(0, 1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.tick_params(axis="x", labelbottom=False)
        ax.tick_params(axis="y", labelleft=False)
        centred = {"ha": "center", "va": "center", "color": FG, "fontsize": 8}
        text = "loss and validation IoU\nappear here during training"
        self.placeholder = ax.text(0.5, 0.5, text, transform=ax.transAxes, **centred)
        (self.raw_line,) = ax.plot([], [], ".", color=LOSS, alpha=0.25, ms=2, animated=True)
        (self.loss_line,) = ax.plot([], [], color=LOSS, lw=1.5, animated=True)
        (self.iou_line,) = ax2.plot([], [], "o-", color=IOU, lw=1, ms=3, animated=True)
        self.canvas.mpl_connect("draw_event", self._on_full_draw)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.canvas)
        self._timer = QTimer(self, interval=interval_ms)
        self._timer.timeout.connect(self.redraw_if_needed)
        self._timer.start()

    def start(self, total_steps: int, keep: bool = False, offset: int = 0) -> None:
        """Prepare for a run of ``total_steps``.

        keep : continue the curves drawn so far (Resume, or continuing the model just trained)
            instead of clearing them.
        offset : steps trained before this run's step 0 (continuing a model: the steps of its
            chain so far); the run's points are drawn at ``offset + step``.
        """
        if not keep:
            for values in (self.steps, self.losses, self.smooth, self.val_steps, self.val_ious):
                values.clear()
            for line in self.continuations:
                line.remove()
            self.continuations.clear()
        self.offset = max(int(offset), 0)
        marked = {line.get_xdata()[0] for line in self.continuations}
        if self.offset and self.offset not in marked:
            self.continuations.append(
                self.ax.axvline(self.offset, color="#808080", lw=0.8, ls="--")
            )
        self.placeholder.set_visible(False)
        self.ax.tick_params(axis="x", labelbottom=True)
        self.ax.tick_params(axis="y", labelleft=True)
        self.ax.set_xlim(0, max(self.offset + total_steps, 1))
        self.ax.set_ylim(0, max(self.losses, default=2.0) * 1.15)
        self._dirty = True
        self.canvas.draw()

    def add_loss(self, step: int, loss: float) -> None:
        """Append one training-loss point (``step`` of the current run)."""
        self.steps.append(self.offset + step)
        self.losses.append(loss)
        n, last = len(self.losses), self.smooth[-1] if self.smooth else 0.0
        mean = last * (1 - EMA ** (n - 1)) * EMA + (1 - EMA) * loss  # undo, update, debias
        self.smooth.append(mean / (1 - EMA**n))
        self._dirty = True

    def add_validation(self, step: int, iou: float) -> None:
        """Append one validation-IoU point (``step`` of the current run)."""
        self.val_steps.append(self.offset + step)
        self.val_ious.append(iou)
        self._dirty = True

    def _on_full_draw(self, _event=None) -> None:
        """After ``canvas.draw()``: cache the background, then draw the lines on it."""
        self._background = self.canvas.copy_from_bbox(self.figure.bbox)
        self._draw_lines()

    def _draw_lines(self) -> None:
        self.raw_line.set_data(self.steps, self.losses)
        self.loss_line.set_data(self.steps, self.smooth)
        self.iou_line.set_data(self.val_steps, self.val_ious)
        self.ax.draw_artist(self.raw_line)
        self.ax.draw_artist(self.loss_line)
        self.ax_iou.draw_artist(self.iou_line)

    def redraw_if_needed(self) -> None:
        """Redraw now if points were added since the last redraw."""
        if not self._dirty:
            return
        self._dirty = False
        low, high = self.ax.get_ylim()
        too_high = self.losses and max(self.losses[-50:]) > high
        if self.steps and self.steps[-1] > self.ax.get_xlim()[1]:
            self.ax.set_xlim(0, self.steps[-1] * 1.5)
            too_high = True
        if too_high or self._background is None:
            self.ax.set_ylim(0, max(self.losses, default=2.0) * 1.3)
            self.canvas.draw()
        else:
            self.canvas.restore_region(self._background)
            self._draw_lines()
        self.canvas.blit(self.figure.bbox)
        self.redraws += 1

    def history(self) -> dict[str, list]:
        """The curves drawn so far (x: the model's steps), for :meth:`show_history`."""
        marks = [float(line.get_xdata()[0]) for line in self.continuations]
        return {**{k: list(getattr(self, k)) for k in HISTORY[:4]}, "continued_at": marks}

    def show_history(self, history: dict[str, list]) -> None:
        """Draw the curves of :meth:`history` again (e.g. in a Train dock opened anew)."""
        if not history.get("steps"):
            return
        self.start(max(history["steps"]), offset=0)
        for name in HISTORY[:4]:
            getattr(self, name)[:] = history[name]
        self.smooth[:] = ema(self.losses)
        for x in history.get("continued_at", []):
            self.continuations.append(self.ax.axvline(x, color="#808080", lw=0.8, ls="--"))
        self.ax.set_ylim(0, max(self.losses, default=2.0) * 1.15)
        self.canvas.draw()
