"""The Station and Scan views on the virtual station (the coarse test wafer: a whole scan takes seconds)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from drivers.interfaces import Axis
from inspection.access import Role, Session
from inspection.history import History
from inspection.scanfile import ScanFile, ScanStatus
from inspection.wafer import Placement
from tests.gui.conftest import COARSE_STATION, audit_entries

COARSE_RECIPE = COARSE_STATION.parent / "coarse-recipe.toml"


def connect(qtbot, window) -> None:
    window.station.toggle_connection()
    qtbot.waitUntil(lambda: window.controller.is_connected, timeout=30_000)
    qtbot.waitUntil(lambda: "µm" in window.station.position.text(), timeout=10_000)


def until_state(qtbot, window, action, condition, timeout: int = 10_000):
    """Do ``action``, then wait until the station's latest readout satisfies ``condition``: a poll queued before the
    action reports the state from before it (a first signal is not enough)."""
    states: list = []
    window.controller.state.connect(states.append)
    try:
        action()
        qtbot.waitUntil(lambda: bool(states) and condition(states[-1]), timeout=timeout)
    finally:
        window.controller.state.disconnect(states.append)
    return states[-1]


def test_station_scan_and_live_map(qtbot, window, tmp_path: Path, station_home: Path) -> None:
    connect(qtbot, window)
    station = window.station
    assert station.identities.rowCount() == 6
    assert "Zaber" in station.identities.item(0, 1).text()
    # jog X by the chosen step; the read-back follows
    station.step.setCurrentIndex(station.step.findData(100.0))
    with qtbot.waitSignal(window.controller.state, timeout=10_000) as before:
        window.controller.poll()
    x0 = before.args[0].x_um
    until_state(qtbot, window, station.jog_pad.buttons[(Axis.X, 1.0)].click, lambda s: abs(s.x_um - x0 - 100.0) < 0.5)
    # laser on shows the emission indicator; off again
    until_state(qtbot, window, station.laser_on.click, lambda state: state.emission)
    assert "EMISSION ON" in station.emission.text()
    until_state(qtbot, window, station.laser_off.click, lambda state: not state.emission)
    assert "off" in station.emission.text()
    # a move beyond the stage's limits is a message with what to do, not a traceback
    station.step.setCurrentIndex(station.step.findData(10_000.0))
    for _ in range(4):
        station.jog_pad.buttons[(Axis.Z, -1.0)].click()  # below Z's lower limit
    qtbot.waitUntil(lambda: window.last_error is not None, timeout=10_000)
    title, text = window.last_error
    assert "Traceback" not in text and "What to do" in text, (title, text)

    # a whole scan of the coarse wafer; the live map fills in as lines arrive
    scan = window.scan
    scan.select_recipe(COARSE_RECIPE)
    assert scan.recipe is not None and "lines per pass" in scan.plan_text.text()
    assert scan.plan_digest.text().startswith("Plan: ") and "lines × 2 passes" in scan.plan_digest.text()
    scan.folder.setText(str(tmp_path))
    scan.lot.setText("L7")
    scan.wafer.setText("W3")
    assert scan.start_button.isEnabled()
    with qtbot.waitSignal(window.controller.scan_finished, timeout=90_000) as finished:
        assert scan.request_start()
    path, status, _message = finished.args
    assert status == ScanStatus.COMPLETE.value, finished.args
    assert Path(path) == tmp_path / "L7-W3.h5"
    with ScanFile(path) as stored:
        complete = [stored.lines_complete(index) for index in range(stored.pass_count)]
        assert stored.lot_id == "L7" and stored.wafer_id == "W3"
    # the live map is read in a worker and painted when it returns: wait for the paint, not only the read
    qtbot.waitUntil(
        lambda: (
            scan.live is not None
            and scan.live.lines_read == complete
            and f"{complete[-1]:,} lines read" in scan.live_label.text()
        ),
        timeout=10_000,
    )
    live = scan.live
    usable = live.layout.usable_mask()
    lit = np.isfinite(live.images[-1]) & usable
    assert lit.sum() > 0.9 * usable.sum()
    assert scan.live_map.overview.image is not None
    assert scan.progress.value() == 1000
    # the finished scan opens in Review, offering the analysis
    qtbot.waitUntil(lambda: window.review.document is not None, timeout=10_000)
    assert window.review.banner_button.text() == "Analyse now"
    # start and stop are in the audit log; the recipe was run as it is (no temporary copy)
    start, stop = [entry for entry in audit_entries(station_home) if entry.action.startswith("scan")]
    assert (start.action, stop.action) == ("scan_start", "scan_stop")
    assert start.details["file"] == path and start.details["recipe"] == str(COARSE_RECIPE)
    assert (start.details["lot_id"], start.details["wafer_id"]) == ("L7", "W3") and start.role == "operator"
    assert "recipe_changes" not in start.details
    assert stop.details["status"] == "complete"
    # the scan history has it as `plmapper scan` records a scan: from start to its end and status
    with History(station_home / "history.sqlite") as history:
        (record,) = history.scans()
        operations = history.operations(record.id)
    assert (record.path, record.kind, record.status, record.lot_id, record.wafer_id) == (
        path, "scan", "complete", "L7", "W3"
    )  # fmt: skip
    assert record.recipe and record.station and record.uuid and record.finished_utc
    assert [(operation.kind, operation.status) for operation in operations] == [("scan", "complete")]
    # Station ▸ Go to chip: through the scan's alignment, at the focus height (the state once the move has ended:
    # a poll queued before the move reports where the stage was)
    document = window.review.document
    alignment = document.alignment
    placement = Placement(alignment["offset_x_um"], alignment["offset_y_um"], alignment["rotation_deg"])
    col, row = document.layout.column_count // 2, document.layout.row_count // 3
    x_um, y_um = placement.wafer_to_stage(*(float(v) for v in document.layout.chip_center_um(col, row)))
    focus_z_um = document.recipe.focus.focus_z_um
    until_state(
        qtbot,
        window,
        lambda: window.move_stage_to_chip(col, row),
        lambda s: max(abs(s.x_um - x_um), abs(s.y_um - y_um), abs(s.z_um - focus_z_um)) < 1.0,
        timeout=20_000,
    )
    # Analyse now: analysed, then classified (as `plmapper analyze`), both recorded; the bin map is shown
    window.review.banner_button.click()
    qtbot.waitUntil(
        lambda: window.review.document is not None and window.review.document.has_classification, timeout=60_000
    )
    qtbot.waitUntil(lambda: window.review.layer is not None and window.review.layer.key == "bin", timeout=10_000)
    with History(station_home / "history.sqlite") as history:
        operations = history.operations(record.id)
    assert [(operation.kind, operation.status) for operation in operations] == [
        ("scan", "complete"),
        ("analysis", "ok"),
        ("classification", "ok"),
    ]


def test_recipe_problems_are_shown_on_the_field(qtbot, window) -> None:
    window.access.set_session(Session("bob", Role.ENGINEER))  # only engineers change a recipe's fields
    scan = window.scan
    scan.select_recipe(COARSE_RECIPE)
    powers = scan.field_widgets["excitation.powers_w"]
    powers.setText("20, 2")
    powers.textEdited.emit("20, 2")
    assert scan.recipe is None
    assert "strictly ascending" in powers.toolTip()
    assert "border" in powers.styleSheet()
    assert not scan.start_button.isEnabled() and "none until" in scan.plan_digest.text()
    rate = scan.field_widgets["sampling.sample_rate_hz"]
    assert rate.styleSheet() == ""
    powers.setText("2, 20")
    powers.textEdited.emit("2, 20")
    assert scan.recipe is not None and powers.styleSheet() == ""


def test_aborted_scan_is_offered_for_resume_and_resumes(qtbot, window, tmp_path: Path, station_home: Path) -> None:
    connect(qtbot, window)
    scan = window.scan
    scan.select_recipe(COARSE_RECIPE)
    scan.folder.setText(str(tmp_path))

    def abort_early(progress) -> None:
        if progress.lines_done >= 3:
            scan.request_abort()

    window.controller.scan_progress.connect(abort_early)
    with qtbot.waitSignal(window.controller.scan_finished, timeout=60_000) as finished:
        assert scan.request_start()
    window.controller.scan_progress.disconnect(abort_early)
    _path, status, _ = finished.args
    assert status == ScanStatus.ABORTED.value
    actions = [entry.action for entry in audit_entries(station_home)]
    assert actions == ["scan_start", "scan_stop_requested", "scan_stop"]
    # the stopped scan opens in Review with the offer to resume it
    qtbot.waitUntil(lambda: window.review.document is not None, timeout=10_000)
    assert window.review.banner_button.text() == "Resume scan…"
    window.review.banner_button.click()
    assert window.tabs.currentWidget() is scan and scan.resume_box.isChecked()
    assert scan.start_button.text().startswith("Resume")
    assert window.review.document is None  # let go: the resumed scan writes the file
    with qtbot.waitSignal(window.controller.scan_finished, timeout=60_000) as resumed:
        assert scan.request_start()
    assert resumed.args[1] == ScanStatus.COMPLETE.value, resumed.args
    # one scan in the history: stopped, then resumed to its end
    with History(station_home / "history.sqlite") as history:
        (record,) = history.scans()
        operations = history.operations(record.id)
    assert record.status == "complete" and record.path == resumed.args[0]
    assert [(operation.kind, operation.status) for operation in operations] == [
        ("scan", "aborted"),
        ("resume", "complete"),
    ]
