"""Results from the window: exporting the open scan file (formats, cancel, the message for a file that cannot be
exported), a lot report, analysing a file again with other settings (and when that is refused), and the scan history
rows of all of it."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
from klarf_reader.klarf import Klarf
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QPushButton

from app.gui import exporting
from app.gui.resultdialogs import analysis_settings_from_texts
from drivers.virtual.profile import load_profile
from drivers.virtual.synthetic import write_synthetic_scan
from inspection.bins import NO_CHIP, DefectClass, default_bin_table
from inspection.history import History
from inspection.recipe import load_recipe
from inspection.scanfile import ScanStatus
from tests.gui.conftest import audit_entries, open_scan
from tests.gui.data import DEMO_PROFILE, DEMO_RECIPE, MIDDLE

E142 = {"e": "urn:semi-org:xsd.E142-1.V1005.SubstrateMap"}


def stored(path: Path, name: str) -> np.ndarray:
    with h5py.File(path, "r", locking=False) as file:
        return file[name][()]


def stored_attribute(path: Path, group: str, name: str) -> str:
    with h5py.File(path, "r", locking=False) as file:
        return str(file[group].attrs[name])


def history_of(home: Path, path: Path):
    """The scan history's row of ``path`` and its operations."""
    with History(home / "history.sqlite") as history:
        (record,) = [record for record in history.scans() if Path(record.path) == path.absolute()]
        return record, history.operations(record.id)


def no_partial_files(folder: Path) -> bool:
    return not list(folder.glob(".*partial*"))


def test_export_dialog_writes_the_chosen_formats(qtbot, window, review_scan: Path, tmp_path, station_home) -> None:
    open_scan(qtbot, window, review_scan)
    assert window.export_action.isEnabled() and window.review.export_button.isEnabled()
    window.export_file()
    dialog = window.export_dialog
    assert dialog.isVisible()
    assert dialog.formats() == list(exporting.DEFAULT_FORMATS)  # KLARF 1.8 only on request
    for name, box in dialog.format_boxes.items():
        box.setChecked(name in ("klarf", "e142"))
    folder = tmp_path / "exports"
    dialog.folder_edit.setText(str(folder))
    assert "2 format(s)" in dialog.summary.text() and "(created)" in dialog.summary.text()
    dialog.export_button.click()
    qtbot.waitUntil(lambda: getattr(window, "export_done_box", None) is not None, timeout=60_000)
    assert window.last_error is None, window.last_error
    assert sorted(path.name for path in folder.iterdir()) == ["review.e142.xml", "review.klarf"]
    # both parse, and say what the file's classification says
    classes = stored(review_scan, "classification/defect_class")
    table = default_bin_table()
    failing = table.fail_of(classes) & (classes != NO_CHIP)
    rows, cols = np.nonzero(failing)
    (wafer,) = Klarf.load_from_file(folder / "review.klarf").wafers
    assert [(defect.x_index, defect.y_index) for defect in wafer.defects] == list(zip(cols, rows, strict=True))
    root = ET.parse(folder / "review.e142.xml").getroot()
    bin_rows = [element.text for element in root.iterfind(".//e:BinCodeMap/e:BinCode", E142)]
    assert len(bin_rows) == classes.shape[0] and len(bin_rows[0]) == 2 * classes.shape[1]
    good = table.bin_for(DefectClass.GOOD)
    definition = root.find(f".//e:BinDefinition[@BinCode='{good.code:02X}']", E142)
    assert definition.get("BinCount") == str(int((classes == DefectClass.GOOD).sum()))
    # the folder and the formats are remembered; the end offers to open the folder
    assert window.settings.value("export/folder") == str(folder)
    opened: list[Path] = []
    window.open_folder = opened.append
    window.export_done_box.findChild(QPushButton, "openFolderButton").click()
    assert opened == [folder]
    # recorded in the scan history as `plmapper export` records it
    record, operations = history_of(station_home, review_scan)
    assert record.lot_id and [(op.kind, op.status) for op in operations] == [("export", "ok")]
    assert operations[0].details["formats"] == ["klarf", "e142"]
    assert [Path(item).name for item in operations[0].details["files"]] == ["review.klarf", "review.e142.xml"]


def test_export_formats_are_those_of_the_exporter() -> None:
    from inspection import export  # noqa: PLC0415 - Matplotlib and PyArrow: only here

    assert tuple(exporting.FORMAT_TITLES) == export.ALL_FORMATS
    assert exporting.DEFAULT_FORMATS == export.DEFAULT_FORMATS


def test_export_cancel_keeps_the_files_already_complete(qtbot, window, review_scan, tmp_path, station_home) -> None:
    folder = tmp_path / "cancelled"
    window.run_export(review_scan, folder, ["klarf", "pdf", "png", "csv"])
    qtbot.waitUntil((folder / "review.klarf").exists, timeout=60_000)
    window.runner.cancel_visible()
    qtbot.waitUntil(lambda: not window.runner.running("Exporting"), timeout=60_000)
    assert window.last_error is None, window.last_error
    names = sorted(path.name for path in folder.iterdir())
    # how many formats the child finished before the cancel reached it depends on the machine's speed (on a fast
    # one, all of them); what must hold: the first is complete, nothing half-written is left, and the history
    # lists exactly the files that are there, as stopped (or as done, when the cancel came after the last file)
    assert "review.klarf" in names and no_partial_files(folder)
    _, operations = history_of(station_home, review_scan)
    (operation,) = operations
    assert operation.kind == "export"
    assert sorted(Path(item).name for item in operation.details["files"]) == names
    if operation.status == "stopped":
        assert operation.message == "cancelled in the window"
        assert "cancelled" in window.statusBar().currentMessage()
    else:
        assert operation.status == "ok" and "review.chips.csv" in names


def test_a_file_that_cannot_be_exported_is_a_message(qtbot, window, review_scan, tmp_path, station_home) -> None:
    path = tmp_path / "unclassified.h5"
    shutil.copyfile(review_scan, path)
    with h5py.File(path, "r+", locking=False) as file:
        del file["classification"]
    folder = tmp_path / "none"
    window.run_export(path, folder, ["klarf", "e142"])
    qtbot.waitUntil(lambda: window.last_error is not None, timeout=60_000)
    title, text = window.last_error
    assert title == "Cannot export" and "not classified yet" in text and "Traceback" not in text
    assert not folder.exists() or not list(folder.iterdir())
    _, operations = history_of(station_home, path)
    assert [(op.kind, op.status) for op in operations] == [("export", "failed")]
    # from the menu the open file's missing classification is said at once, before any dialog
    open_scan(qtbot, window, path)
    window.last_error = None
    window.export_file()
    assert window.last_error[0] == "Cannot export" and "not classified yet" in window.last_error[1]
    assert getattr(window, "export_dialog", None) is None


def test_lot_report_of_two_wafers(qtbot, window, review_scan, tmp_path) -> None:
    second = tmp_path / "second.h5"
    shutil.copyfile(review_scan, second)
    open_scan(qtbot, window, review_scan)
    window.lot_report()
    dialog = window.lot_report_dialog
    assert dialog.scan_files() == [review_scan]
    dialog.add_files([second, review_scan])
    assert dialog.scan_files() == [review_scan, second]
    dialog.out_edit.setText(str(tmp_path / "lot" / "LOT7"))
    assert dialog.output() == tmp_path / "lot" / "LOT7.pdf"
    dialog.write_button.click()
    qtbot.waitUntil(lambda: getattr(window, "export_done_box", None) is not None, timeout=90_000)
    assert window.last_error is None, window.last_error
    assert (tmp_path / "lot" / "LOT7.pdf").stat().st_size > 0
    assert len((tmp_path / "lot" / "LOT7.csv").read_text().splitlines()) == 3  # header and two wafers


def test_analysis_settings_are_checked_on_the_field() -> None:
    settings, problems = analysis_settings_from_texts({"core_fraction": "0.3", "drift_exponent": "1.5"})
    assert problems == {} and settings.core_fraction == 0.3 and settings.drift_exponent == 1.5
    assert settings.memory_mb == 512.0  # an empty field is the default
    _, problems = analysis_settings_from_texts({"min_core_samples": "2.5", "drift_exponent": "9", "memory_mb": "x"})
    assert problems == {
        "min_core_samples": "min_core_samples: '2.5' is not a whole number",
        "drift_exponent": "drift_exponent: 9.0 is outside 0..3",
        "memory_mb": "memory_mb: 'x' is not a number",
    }


def test_analyse_again_with_other_settings(qtbot, window, review_scan, tmp_path, station_home) -> None:
    path = tmp_path / "again.h5"
    shutil.copyfile(review_scan, path)
    before = stored(path, "results/pass_001/chips")["intensity_v"]
    open_scan(qtbot, window, path)
    window.review.choose_layer("pass1:intensity_v")
    qtbot.waitUntil(lambda: window.review.layer.key == "pass1:intensity_v", timeout=10_000)
    assert window.reanalyse_action.isEnabled() and window.review.reanalyse_button.isEnabled()
    window.reanalyse_file()
    dialog = window.reanalyse_dialog
    assert dialog.fields["memory_mb"].text() == "512"  # the settings of the stored results
    core = dialog.fields["core_fraction"]
    core.setText("2")
    core.textEdited.emit("2")
    assert "outside (0, 1]" in core.toolTip() and "border" in core.styleSheet()
    assert not dialog.analyse_button.isEnabled() and "core_fraction" in dialog.problems.text()
    core.setText("0.3")
    core.textEdited.emit("0.3")
    assert dialog.analyse_button.isEnabled() and core.styleSheet() == ""
    qtbot.waitUntil(lambda: "looking up" not in dialog.classifier_info.text(), timeout=30_000)
    assert "rule layer" in dialog.classify_box.text()  # no model is deployed on this test station
    dialog.analyse_button.click()
    assert window.review.document is None  # let go: the analysis writes the file
    qtbot.waitUntil(
        lambda: window.review.document is not None and window.review.image is not None
        and window.review.layer.key == "pass1:intensity_v",
        timeout=90_000,
    )  # fmt: skip
    assert window.last_error is None, window.last_error
    document = window.review.document
    assert document.analysis_settings["core_fraction"] == 0.3
    with h5py.File(path, "r", locking=False) as file:
        assert json.loads(file["results"].attrs["settings_json"])["core_fraction"] == 0.3
    after = stored(path, "results/pass_001/chips")["intensity_v"]
    both = np.isfinite(before) & np.isfinite(after)
    assert both.sum() > 1000 and not np.allclose(before[both], after[both])
    np.testing.assert_array_equal(window.review.image, after)
    assert document.classification.classifier["kind"] == "rules"  # classified again: the rule layer
    assert "analysed again" in window.statusBar().currentMessage()
    _, operations = history_of(station_home, path)
    assert [(op.kind, op.status) for op in operations] == [("analysis", "ok"), ("classification", "ok")]
    assert [entry.action for entry in audit_entries(station_home)] == ["classified"]
    # cancelled while classifying: the new results stay, with the previous classification, and the window says so
    classified = stored_attribute(path, "classification", "created_utc")
    settings = analysis_settings_from_texts({"core_fraction": "0.4"})[0]
    task = window.run_reanalysis(path, settings)

    def cancel_when_classifying(message: str, fraction: float) -> None:  # on the worker: before its next report
        if message.startswith("classified rows"):
            task.cancel()

    direct = Qt.ConnectionType.DirectConnection
    task.signals.progress.connect(lambda _, fraction, message: cancel_when_classifying(message, fraction), direct)
    qtbot.waitUntil(lambda: window.last_error is not None, timeout=90_000)
    assert window.last_error[0] == "Classification cancelled" and "previous analysis" in window.last_error[1]
    qtbot.waitUntil(lambda: window.review.document is not None, timeout=30_000)
    assert window.review.document.analysis_settings["core_fraction"] == 0.4
    assert stored_attribute(path, "classification", "created_utc") == classified
    _, operations = history_of(station_home, path)
    assert [(op.kind, op.status, op.message) for op in operations[2:]] == [
        ("analysis", "ok", ""),
        ("classification", "stopped", "cancelled in the window"),
    ]


def test_analyse_now_classifies_as_plmapper_analyze_then_shows_the_bin_map(qtbot, window, tmp_path, station_home):
    """Regression: Analyse now (the banner of a file without results) ran the pipeline but did not classify."""
    path = tmp_path / "raw.h5"
    write_synthetic_scan(path, load_profile(DEMO_PROFILE), load_recipe(DEMO_RECIPE), lines=MIDDLE)
    cli = tmp_path / "cli.h5"
    shutil.copyfile(path, cli)
    window.open_file(path)
    qtbot.waitUntil(lambda: window.review.document is not None, timeout=20_000)
    review = window.review
    assert not review.document.has_results and review.banner_button.text() == "Analyse now"
    with qtbot.waitSignal(window.runner.busy, timeout=5_000) as busy:
        review.banner_button.click()
    assert busy.args == [True] and not window.cancel_button.isHidden()  # progress with Cancel
    assert review.document is None  # let go: the analysis writes the file
    qtbot.waitUntil(
        lambda: review.document is not None and review.document.has_classification and review.image is not None,
        timeout=120_000,
    )
    assert window.last_error is None, window.last_error
    assert review.layer.key == "bin" and review.banner.isHidden()
    message = window.statusBar().currentMessage()
    assert "analysed in" in message and "classified (" in message
    _, operations = history_of(station_home, path)
    assert [(op.kind, op.status) for op in operations] == [("analysis", "ok"), ("classification", "ok")]
    (entry,) = audit_entries(station_home)
    assert entry.action == "classified" and entry.details["file"] == str(path)
    # the same bins as the command line's `plmapper analyze` (no model deployed here: the rule layer)
    from inspection import api  # noqa: PLC0415 - imports scikit-learn

    api.analyze(cli, record=False)
    api.classify(cli, options=api.classifier_options("deployed", None), record=False)
    for name in ("classification/defect_class", "classification/el_fail_probability"):
        np.testing.assert_array_equal(stored(path, name), stored(cli, name))
    assert stored_attribute(path, "classification", "classifier_json") == stored_attribute(
        cli, "classification", "classifier_json"
    )


def test_analyse_now_cancelled_while_classifying_says_the_file_is_not_classified(qtbot, window, tmp_path) -> None:
    path = tmp_path / "raw.h5"
    write_synthetic_scan(path, load_profile(DEMO_PROFILE), load_recipe(DEMO_RECIPE), lines=MIDDLE)
    window.open_file(path)
    qtbot.waitUntil(lambda: window.review.document is not None, timeout=20_000)
    task = window.analyse_file()

    def cancel_when_classifying(message: str) -> None:  # on the worker: before its next report
        if message.startswith("classified rows"):
            task.cancel()

    direct = Qt.ConnectionType.DirectConnection
    task.signals.progress.connect(lambda _, fraction, message: cancel_when_classifying(message), direct)
    qtbot.waitUntil(lambda: window.last_error is not None, timeout=120_000)
    assert window.last_error[0] == "Classification cancelled"
    assert "was analysed, but it was not classified" in window.last_error[1]
    qtbot.waitUntil(lambda: window.review.document is not None, timeout=30_000)
    document = window.review.document
    assert document.has_results and not document.has_classification
    assert window.review.banner_button.text() == "Classify…"


def test_analysis_again_is_refused_for_a_map_without_raw_lines(qtbot, window, review_scan, tmp_path) -> None:
    path = tmp_path / "imported.h5"
    shutil.copyfile(review_scan, path)
    with h5py.File(path, "r+", locking=False) as file:  # as an imported map: results, but no raw line
        for group in file["passes"].values():
            group["lines_complete"][()] = 0
    open_scan(qtbot, window, path)
    button = window.review.reanalyse_button
    assert not button.isEnabled() and "no raw lines" in button.toolTip()
    assert not window.reanalyse_action.isEnabled() and "imported map" in window.reanalyse_action.toolTip()
    assert window.run_reanalysis(path, analysis_settings_from_texts({})[0]) is None
    assert window.last_error[0] == "Cannot analyse again" and window.review.document is not None
    # nor for a file a scan is still writing
    running = SimpleNamespace(path=path, status=ScanStatus.RUNNING, has_raw_lines=True)
    assert "still being written" in window.reanalysis_blocked(running)
