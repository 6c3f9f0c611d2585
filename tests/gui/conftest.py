"""Fixtures of the GUI tests: the analysed demo-wafer scan, a main window with its own settings file, and the
station's data directory ($PLMAPPER_HOME: audit log, engineer password, deployed models) in a temporary folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtCore import QSettings

import app.gui  # noqa: F401 - applies the PySide6 guard (app/gui/qtcompat.py) before any window exists
from app.gui.mainwindow import MainWindow
from inspection.access import AuditLog, ScryptCost, set_engineer_password
from tests.gui.data import REPO, make_review_scan

COARSE_STATION = REPO / "tests" / "data" / "coarse-station.toml"
ENGINEER_PASSWORD = "engineer secret"


@pytest.fixture(autouse=True)
def station_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every GUI test writes its audit log (and finds its password and models) in its own folder."""
    home = tmp_path / "plmapper-home"
    monkeypatch.setenv("PLMAPPER_HOME", str(home))
    return home


@pytest.fixture
def engineer_password(station_home: Path) -> str:
    set_engineer_password(ENGINEER_PASSWORD, user="admin", cost=ScryptCost(n_log2=10, r=8, p=1))
    return ENGINEER_PASSWORD


def audit_entries(home: Path) -> list:
    return AuditLog(home / "access" / "audit.jsonl").entries()


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
