"""Fixtures of the viewer tests: a real napari viewer (needs a display, e.g. Xvfb).

Without a display (no DISPLAY / WAYLAND_DISPLAY) every test of this folder is skipped, so a plain
``pytest`` on a headless machine still passes. Run them with::

    xvfb-run -a -s "-screen 0 1400x1000x24" .venv/bin/pytest tests/widgets -q
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from napari_unet.sample_data import CellSampleConfig, make_cell_stack

HAS_DISPLAY = bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
HERE = Path(__file__).parent


def pytest_configure(config):
    """napari warns on every viewer that PyQt5 cannot detect the system theme: not our concern."""
    config.addinivalue_line("filterwarnings", "ignore:System theme detection:UserWarning")


def pytest_collection_modifyitems(config, items):
    """Skip (and mark) the viewer tests of this folder when there is no display."""
    skip = pytest.mark.skip(reason="viewer tests need a display: run them under xvfb-run")
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.viewer)
            if not HAS_DISPLAY:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def cells():
    """A small synthetic stack (4 planes of 128 x 128) of touching cells and its ground truth."""
    return make_cell_stack(4, CellSampleConfig(shape=(128, 128), n_cells=6), seed=0)


@pytest.fixture
def viewer(make_napari_viewer):
    """A shown napari viewer (rendering needs a visible window)."""
    return make_napari_viewer(show=True)


@pytest.fixture
def notifications():
    """Every napari notification dispatched during the test: (severity, message) pairs."""
    from napari.utils.notifications import notification_manager

    received: list[tuple[str, str]] = []

    def collect(notification) -> None:
        received.append((str(notification.severity), str(notification.message)))

    notification_manager.notification_ready.connect(collect)
    yield received
    notification_manager.notification_ready.disconnect(collect)


@pytest.fixture(autouse=True)
def _fresh_session(tmp_path, monkeypatch):
    """No trained model leaks from one test into the next; checkpoints go to tmp_path."""
    from napari_unet._widgets import _session

    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    _session.clear()
    yield
    _session.clear()


@pytest.fixture(autouse=True)
def _settings_dir(tmp_path, monkeypatch):
    """The widgets remember their settings in tmp_path, never in the user's config dir."""
    from napari_unet._widgets._forms import SETTINGS_ENV

    monkeypatch.setenv(SETTINGS_ENV, str(tmp_path / "settings"))
