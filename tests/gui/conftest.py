"""Fixtures of the GUI tests: the analysed demo-wafer scan and a main window with its own settings file."""

from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtCore import QSettings

import app.gui  # noqa: F401 - applies the PySide6 guard (app/gui/qtcompat.py) before any window exists
from app.gui.mainwindow import MainWindow
from tests.gui.data import REPO, make_review_scan

COARSE_STATION = REPO / "tests" / "data" / "coarse-station.toml"


@pytest.fixture(scope="session")
def review_scan(tmp_path_factory) -> Path:
    return make_review_scan(tmp_path_factory.mktemp("gui") / "review.h5")


@pytest.fixture
def settings_file(tmp_path: Path) -> Path:
    return tmp_path / "plmapper-gui.ini"


@pytest.fixture
def window(qtbot, settings_file: Path):
    main = MainWindow(settings=QSettings(str(settings_file), QSettings.Format.IniFormat), station_file=COARSE_STATION)
    qtbot.addWidget(main)
    main.resize(1600, 960)
    main.show()
    yield main
    main.close()


def open_scan(qtbot, window: MainWindow, path: Path) -> None:
    window.open_file(path)
    qtbot.waitUntil(lambda: window.review.document is not None and window.review.image is not None, timeout=20_000)
