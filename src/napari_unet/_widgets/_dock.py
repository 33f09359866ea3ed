"""The frame every dock widget of the plugin shares: a scroll area and a clean shutdown.

* **fit the screen**: the content sits in a :class:`QScrollArea`, so docks stacked in one area
  share the window's height (each scrolls) instead of growing the window past the screen;
* **stop what it started**: napari's title-bar x (``QtViewerDockWidget.destroyOnClose``) only
  takes the widget out of its dock, so the widget calls :meth:`DockWidget.shutdown` when it
  loses its dock, is destroyed or the viewer's window closes: subclasses stop their workers
  there and wait (briefly) until the threads return, so none outlives the Qt objects it feeds.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable

from qtpy.QtCore import QEvent, QSize, Qt, QTimer
from qtpy.QtWidgets import (
    QDockWidget,
    QFrame,
    QMainWindow,
    QScrollArea,
    QStyle,
    QVBoxLayout,
    QWidget,
)

log = logging.getLogger("napari_unet")
MAX_HINT_HEIGHT = 320  # px: the height a dock asks for when it shares its area


class DockWidget(QWidget):
    """A plugin dock widget: ``self.body`` holds the content, inside a vertical scroll area."""

    def __init__(self, viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.worker = None  # the napari worker running now (None: idle)
        self._was_docked = False
        self._shut_down = False
        self.body = QWidget()
        self.scroll = QScrollArea(self)
        self.scroll.setWidgetResizable(True)
        self.scroll.setFrameShape(QFrame.Shape.NoFrame)
        self.scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.scroll.setWidget(self.body)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(self.scroll)
        # what is running, held apart from the widget: the ``destroyed`` slot below must not
        # reference the widget (a cycle through Qt would keep the viewer alive)
        background = self.background = BackgroundWork()
        self.destroyed.connect(lambda *_: _quietly(background.stop))
        self._watching_window = False  # no reference to it: a closed viewer must not stay alive
        self._followed: list[tuple] = []  # (signal, slot) pairs of :meth:`follow`

    def event(self, event) -> bool:
        """Notice when napari takes the widget out of its dock (the title-bar x)."""
        if event.type() == QEvent.Type.Show and getattr(self, "_watching_window", True) is False:
            window = self.window()
            if isinstance(window, QMainWindow):  # the viewer's window: see eventFilter
                self._watching_window = True
                window.installEventFilter(self)
                QTimer.singleShot(0, lambda: _quietly(self.share_height))
        if event.type() == QEvent.Type.ParentChange:
            if self.parent() is not None:
                self._was_docked = True
            elif getattr(self, "_was_docked", False):
                _quietly(self.shutdown)
        return super().event(event)

    def eventFilter(self, watched, event) -> bool:
        """The viewer's main window was closed (a non-spontaneous hide): stop our workers."""
        closed = event.type() == QEvent.Type.Hide and not event.spontaneous()
        if closed and isinstance(watched, QMainWindow):
            _quietly(self.shutdown)
        return False

    @property
    def is_running(self) -> bool:
        """Whether this widget's worker (a run, a ranking, an export, ...) is in progress."""
        return self.worker is not None

    def start_worker(self, worker, stop: Callable[[], None]):
        """Start ``worker`` as this widget's work; ``stop()`` ends it when the widget closes.
        :meth:`set_running` shows it running and, once it has finished, idle again."""
        self.worker = worker
        worker.finished.connect(self.worker_finished)
        self.background.set(stop)
        self.set_running(True)
        worker.start()
        return worker

    def worker_finished(self) -> None:
        """The worker has finished: the widget is idle again (override to do more, then call)."""
        self.worker = None
        self.background.set(None)
        self.set_running(False)

    def set_running(self, running: bool) -> None:
        """Enable what makes sense while a worker runs, or when idle (override)."""

    def sizeHint(self) -> QSize:
        """The content's size, at most ``MAX_HINT_HEIGHT`` tall: docks stacked in one area share
        the height (each scrolls) instead of the first one taking it all."""
        hint = self.body.sizeHint()
        width = max(hint.width(), self.body.minimumSizeHint().width())
        return QSize(width + self._bar(), min(hint.height(), MAX_HINT_HEIGHT))

    def minimumSizeHint(self) -> QSize:
        """As narrow as the content allows with the vertical scroll bar shown: the right edge
        (buttons, spin boxes) is never cut off when the content scrolls."""
        return QSize(self.body.minimumSizeHint().width() + self._bar(), 0)

    def _bar(self) -> int:
        """The vertical scroll bar's width as the style draws it (its size hint can be less)."""
        bar = self.scroll.verticalScrollBar()
        extent = bar.style().pixelMetric(QStyle.PixelMetric.PM_ScrollBarExtent, None, bar)
        return max(bar.sizeHint().width(), extent) + 2 * self.scroll.frameWidth()

    def share_height(self) -> None:
        """Give the plugin's docks in this dock's area equal heights (each scrolls): napari
        stacks a new dock under the others and Qt would squeeze them to their title bars.
        Called once, right after the dock first shows."""
        window, dock = self.window(), self.parent()
        if not isinstance(window, QMainWindow) or not isinstance(dock, QDockWidget):
            return
        if dock.isFloating():
            return
        area = window.dockWidgetArea(dock)
        ours = [
            d
            for d in window.findChildren(QDockWidget)
            if isinstance(d.widget(), DockWidget)
            and d.isVisible()
            and not d.isFloating()
            and window.dockWidgetArea(d) == area
        ]
        if len(ours) > 1:
            total = sum(d.height() for d in ours)
            window.resizeDocks(ours, [total // len(ours)] * len(ours), Qt.Orientation.Vertical)

    def follow(self, signal, *slots: Callable) -> None:
        """Connect ``slots`` (methods of this widget, see :func:`unless_deleted`) to the psygnal
        ``signal`` until the widget shuts down."""
        for slot in slots:
            signal.connect(slot)
            self._followed.append((signal, slot))

    def unfollow(self) -> None:
        """Disconnect what :meth:`follow` connected (psygnal: a no-op if already gone)."""
        for signal, slot in self._followed:
            signal.disconnect(slot)
        self._followed.clear()

    def shutdown(self) -> None:
        """Stop following signals, then stop every worker this widget started and wait until
        their threads return (once; subclasses override :meth:`stop_workers`)."""
        if self._shut_down:
            return
        self._shut_down = True
        self.unfollow()
        self.stop_workers()

    def stop_workers(self) -> None:
        """Stop this widget's background work (override to also disconnect, then call this)."""
        self.background.stop()


class BackgroundWork:
    """How to stop what a widget runs now: one callable, replaced when work starts or ends."""

    def __init__(self) -> None:
        self._stop: Callable[[], None] | None = None

    def set(self, stop: Callable[[], None] | None) -> None:
        """Record how to stop the work now running (None: nothing runs)."""
        self._stop = stop

    def stop(self) -> None:
        """Stop the running work (once) and return when its thread is done."""
        stop, self._stop = self._stop, None
        if stop is not None:
            stop()


def wait_until(done, timeout_s: float, poll_s: float = 0.02) -> bool:
    """Block (the GUI thread, briefly) until ``done()`` is true; False after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(poll_s)
    return True


def worker_returned(worker) -> bool:
    """Whether a napari/superqt worker's thread is done with its function (or never began)."""
    return worker is None or not worker.is_running


def stopper(worker, ask: Callable, what: str, timeout_s: float, ended=lambda: False) -> Callable:
    """How closing the widget stops ``worker``: ``ask()``, then wait until its thread is done
    (or ``ended()``); after ``timeout_s`` a warning names ``what`` did not stop."""

    def stop() -> None:
        ask()
        if not wait_until(lambda: ended() or worker_returned(worker), timeout_s):
            log.warning("napari-unet: %s did not stop within %s s", what, timeout_s)

    return stop


def unless_deleted(slot: Callable) -> Callable:
    """Decorate a slot of :meth:`DockWidget.follow`: once Qt has deleted the widget (the signal
    outlived it), a call stops following instead of failing."""

    @functools.wraps(slot)
    def call(self: DockWidget, *args):
        try:
            self.isVisible()  # raises RuntimeError once the Qt widget is deleted
        except RuntimeError:
            self.unfollow()
            return None
        return slot(self, *args)

    return call


def _quietly(func) -> None:
    """Run a shutdown hook; the Qt side may already be half gone, so log instead of raising."""
    try:
        func()
    except Exception:  # noqa: BLE001 - shutdown must never raise into Qt
        log.debug("napari-unet: shutdown hook failed", exc_info=True)
