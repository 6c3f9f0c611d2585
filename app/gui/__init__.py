"""The operator GUI (PySide6 + pyqtgraph): review scan files, drive the station, run scans.

Start it with :func:`main` (what ``plmapper gui`` calls). See docs/gui.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from app.gui.qtcompat import guard_bool_singletons

guard_bool_singletons()  # before any window exists: see app/gui/qtcompat.py


def main(argv: Sequence[str] | None = None) -> int:
    """Run the GUI; returns the exit code (0 when the window is closed normally, 2 for bad arguments).

    ``argv``: ``[SCAN_FILE] [--station STATION_FILE]``: a scan file to open at once, and the station file to connect
    to (default: the last one used, else resources/stations/virtual.toml).
    """
    parser = argparse.ArgumentParser(prog="plmapper gui", description="The inspection station's operator window.")
    parser.add_argument("file", nargs="?", type=Path, help="scan file to open (HDF5)")
    parser.add_argument("--station", type=Path, help="station file (default: the last used, or the virtual station)")
    args = parser.parse_args(list(argv) if argv is not None else None)
    # the window is imported here, not with the package: app.gui.exporting runs in a child process that needs only
    # the package, not the widgets (docs/gui.md, Export)
    from PySide6.QtWidgets import QApplication  # noqa: PLC0415

    from app.gui.mainwindow import MainWindow  # noqa: PLC0415
    from inspection.memory import retain_freed_memory  # noqa: PLC0415

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    retain_freed_memory()
    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("plmapper")
    app.setOrganizationName("plmapper")
    window = MainWindow(station_file=args.station)
    window.show()
    if args.file is not None:
        window.open_file(args.file)
    return int(app.exec())
