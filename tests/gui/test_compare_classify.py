"""Phase 2 of the Review: PL prediction vs EL reference (difference map and counts against the evaluation's own
figures), two measurements side by side and as a difference, the EL reference in the chip details, a chip by index,
the alignment on the map, and classifying again (rules, a model file, deploying it, cancel)."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
from PySide6.QtWidgets import QDialogButtonBox

from app.gui import comparison
from app.gui.chipdialog import format_value
from app.gui.dialogs import ClassifyDialog, ClassifyRequest, ModelChoice
from app.gui.mapdata import NO_BIN
from inspection import model as model_module
from inspection.access import Role, Session
from inspection.classify import evaluate_scan, reference_chips
from inspection.deployment import deployed_model
from inspection.el_reference import ElFailMode
from inspection.model import TrainSettings, save_model, train_model
from tests.gui.conftest import audit_entries, open_scan


def stored(path: Path, name: str) -> np.ndarray:
    with h5py.File(path, "r", locking=False) as file:
        return file[name][()]


def created_utc(path: Path) -> str:
    with h5py.File(path, "r", locking=False) as file:
        return str(file["classification"].attrs["created_utc"])


def test_pl_vs_el_difference_map_counts_match_the_evaluation(qtbot, window, review_scan: Path) -> None:
    evaluation = evaluate_scan(review_scan).evaluation  # before the window holds the file (HDF5 locking flags)
    open_scan(qtbot, window, review_scan)
    window.compare_pl_el()
    compare = window.compare
    assert window.tabs.currentWidget() is compare and compare.difference.isChecked()
    qtbot.waitUntil(lambda: compare.counts is not None and compare.pane_a.image is not None, timeout=20_000)
    both_pass, both_fail, false_alarm, miss, miss_no_signature = compare.counts["categories"]
    assert (both_fail, false_alarm, both_pass) == (
        evaluation.true_positives,
        evaluation.false_positives,
        evaluation.true_negatives,
    )
    assert miss + miss_no_signature == evaluation.false_negatives
    no_signature = sum(evaluation.per_mode[mode.name].chips for mode in (ElFailMode.OPEN, ElFailMode.FORWARD_VOLTAGE))
    assert miss_no_signature <= no_signature and miss_no_signature > 0
    # the map is the same classification chip by chip (the demo wafer is small: one pixel per chip)
    image = compare.pane_a.image
    counted = np.bincount(image[image != NO_BIN].ravel(), minlength=5)
    assert counted.tolist() == compare.counts["categories"]
    assert compare.table.rowCount() == 5 and compare.table.item(1, 0).text() == "both fail"
    assert "Agreement" in compare.summary.text() and "false-alarm rate" in compare.summary.text()
    # hover names the category
    rows, cols = np.nonzero(image == comparison.MISS_NO_SIGNATURE)
    compare._hovered(int(cols[0]), int(rows[0]), True)
    assert "miss, no PL signature" in compare.hover.text()


def test_two_measurements_side_by_side_and_as_a_difference(qtbot, window, review_scan: Path) -> None:
    open_scan(qtbot, window, review_scan)
    compare = window.compare
    window.tabs.setCurrentWidget(compare)
    compare.layer_a.setCurrentIndex(compare.layer_a.findData("pass1:intensity_v"))
    compare.layer_b.setCurrentIndex(compare.layer_b.findData("pass0:intensity_v"))

    # the layers load in the background: wait for both measurement images, not the bin maps shown before them
    def measurements_shown() -> bool:
        return all(pane.image is not None and pane.image.dtype.kind == "f" for pane in (compare.pane_a, compare.pane_b))

    qtbot.waitUntil(measurements_shown, timeout=20_000)
    assert compare.box_b.isVisible()
    high = stored(review_scan, "results/pass_001/chips")["intensity_v"]
    low = stored(review_scan, "results/pass_000/chips")["intensity_v"]
    np.testing.assert_array_equal(compare.pane_a.image, high)
    np.testing.assert_array_equal(compare.pane_b.image, low)
    # the two maps pan and zoom together
    compare.map_a.centre_on(250, 100, chips_across=30)
    qtbot.wait(50)
    rect_a, rect_b = compare.map_a.view.viewRect(), compare.map_b.view.viewRect()
    assert rect_b.center().x() == pytest.approx(rect_a.center().x(), abs=1.0)
    assert rect_b.center().y() == pytest.approx(rect_a.center().y(), abs=1.0)
    assert rect_b.height() == pytest.approx(rect_a.height(), rel=1e-3)
    compare.difference.setChecked(True)
    # the difference map and its counts are read by two tasks: wait for both, not only the counts
    qtbot.waitUntil(
        lambda: compare.counts is not None and "chips" in compare.counts and compare.pane_a.image is not None,
        timeout=20_000,
    )
    np.testing.assert_allclose(compare.pane_a.image, high - low, equal_nan=True)
    both = np.isfinite(high) & np.isfinite(low)
    assert compare.counts["chips"] == int(both.sum())
    assert compare.counts["mean"] == pytest.approx(float(np.mean((high - low)[both])), rel=1e-5)
    assert not compare.box_b.isVisible()
    # a difference that means nothing is refused with a reason, side by side still works
    compare.layer_b.setCurrentIndex(compare.layer_b.findData("bin"))
    assert compare.comparison is None and "no difference" in compare.summary.text()


def test_chip_details_show_the_el_reference(qtbot, window, review_scan: Path) -> None:
    open_scan(qtbot, window, review_scan)
    records = stored(review_scan, "el_reference/chips")
    classes = stored(review_scan, "classification/defect_class")
    # a dead chip, inspected and probed
    dead = np.flatnonzero(records["fail_mode"] == ElFailMode.DEAD)
    inspected = [i for i in dead if classes[records["row"][i], records["col"][i]] not in (11, 255)]
    record = records[inspected[0]]
    window.review.open_chip(int(record["col"]), int(record["row"]))
    qtbot.waitUntil(lambda: window.review.chip_dialog is not None, timeout=10_000)
    dialog = window.review.chip_dialog
    labels = dialog.el_labels
    assert labels["result"].text().startswith("FAIL: dead")
    assert labels["forward_v"].text() == f"{format_value(float(record['forward_v']), '{:.3f}')} V"
    assert format_value(float(record["el_intensity"]), "{:.4g}") in labels["el_intensity"].text()
    assert labels["reverse_current_a"].text().endswith(" A")
    assert "P(EL fail)" in labels["prediction"].text()
    assert labels["agreement"].text() in ("agree: both fail", "miss: the chip fails EL, PL predicts a pass")
    # a chip outside the probed set says so
    window.review.open_chip(0, 0)
    qtbot.waitUntil(lambda: window.review.chip_dialog is not dialog, timeout=10_000)
    assert window.review.chip_dialog.el_labels["result"].text() == "this chip was not probed"


def test_go_to_a_chip_by_index_and_the_alignment_on_the_map(qtbot, window, review_scan: Path) -> None:
    open_scan(qtbot, window, review_scan)
    review = window.review
    assert review.map.note.text.startswith("alignment: offset")
    assert review.go_to_chip(250, 120)
    x, _ = (float(value) for value in review.document.layout.chip_center_um(250, 120))
    assert review.map.view.viewRect().center().x() == pytest.approx(x, abs=1.0)
    assert review.map.marker.isVisible() and "chip (250, 120)" in review.hover.text()
    assert not review.go_to_chip(10_000, 0)


def test_classify_again_with_the_rules_then_cancel(qtbot, window, review_scan: Path, tmp_path, station_home):
    path = tmp_path / "again.h5"
    shutil.copyfile(review_scan, path)
    open_scan(qtbot, window, path)
    window.review.choose_layer("el_fail")
    qtbot.waitUntil(lambda: window.review.layer.key == "el_fail", timeout=10_000)
    assert window.review.document.classification.classifier["name"] == "test thresholds"
    window.run_classification(path, ClassifyRequest(ModelChoice.RULES))
    assert window.review.document is None  # let go: the classification writes the file
    qtbot.waitUntil(
        lambda: window.review.document is not None and window.review.document.classification.classifier["kind"]
        == "rules" and window.review.image is not None and window.review.layer.key == "el_fail",
        timeout=60_000,
    )  # fmt: skip
    classes = stored(path, "classification/defect_class")
    assert window.review.document.classification.class_to_bin[classes].shape == classes.shape
    (entry,) = [entry for entry in audit_entries(station_home) if entry.action == "classified"]
    assert entry.details["classifier"]["kind"] == "rules" and entry.role == "operator"
    # cancelled: the file keeps the classification it had
    created = created_utc(path)
    window.run_classification(path, ClassifyRequest(ModelChoice.RULES))
    window.runner.cancel_visible()
    qtbot.waitUntil(lambda: window.review.document is not None and window.review.image is not None, timeout=60_000)
    assert created_utc(path) == created
    # without a deployed model the deployed choice says what to do
    window.last_error = None
    window.run_classification(path, ClassifyRequest(ModelChoice.DEPLOYED))
    qtbot.waitUntil(lambda: window.last_error is not None, timeout=30_000)
    assert "no model is deployed" in window.last_error[1]


@pytest.fixture
def trusting_sigmoid(monkeypatch: pytest.MonkeyPatch) -> None:
    # one small wafer has too few failures for isotonic calibration, and inspection.model does not yet trust the
    # sigmoid calibrator it then uses (reported): trust it here
    monkeypatch.setattr(
        model_module, "TRUSTED_TYPES", (*model_module.TRUSTED_TYPES, "sklearn.calibration._SigmoidCalibration")
    )


@pytest.mark.usefixtures("trusting_sigmoid")
def test_classify_with_a_model_file_and_deploy_it_as_engineer(qtbot, window, review_scan, tmp_path, station_home):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few failures in one small wafer: the calibration's folds warn
        model = train_model(
            [reference_chips(review_scan)], TrainSettings(trees=10, max_good_chips_per_wafer=5000), name="tiny"
        )
    model_file = save_model(model, tmp_path / "tiny.skops")
    path = tmp_path / "model.h5"
    shutil.copyfile(review_scan, path)
    open_scan(qtbot, window, path)
    # an operator may not deploy: the dialog's box is off, and a request to deploy is refused
    request = ClassifyRequest(ModelChoice.FILE, model_file, deploy=True)
    window.run_classification(path, request)
    assert window.last_error[0] == "Engineers only" and window.review.document is not None
    window.access.set_session(Session("bob", Role.ENGINEER))
    window.last_error = None
    window.run_classification(path, request)
    qtbot.waitUntil(lambda: window.review.document is not None or window.last_error is not None, timeout=60_000)
    assert window.last_error is None, window.last_error
    qtbot.waitUntil(
        lambda: window.review.document is not None and window.review.document.classification.classifier["kind"]
        == "model" and window.review.image is not None,
        timeout=60_000,
    )  # fmt: skip
    assert window.review.document.classification.classifier["model_id"] == model.model_id
    assert deployed_model().model_id == model.model_id
    actions = [(entry.action, entry.user) for entry in audit_entries(station_home)]
    assert ("model_deployed", "bob") in actions and ("classified", "bob") in actions
    assert actions.index(("model_deployed", "bob")) < actions.index(("classified", "bob"))


def test_classify_dialog_offers_the_deployed_model_rules_or_a_file(qtbot, window) -> None:
    dialog = ClassifyDialog("W01.h5", window.access, window.runner, window)
    qtbot.addWidget(dialog)
    qtbot.waitUntil(lambda: "looking up" not in dialog.deployed_info.text(), timeout=30_000)
    assert "No model is deployed" in dialog.deployed_info.text()
    assert dialog.request() == ClassifyRequest(ModelChoice.DEPLOYED)
    dialog.rules.setChecked(True)
    assert dialog.request() == ClassifyRequest(ModelChoice.RULES)
    ok = dialog.buttons.button(QDialogButtonBox.StandardButton.Ok)
    dialog.from_file.setChecked(True)
    assert not ok.isEnabled()
    dialog.model_path.setText("/models/blue.skops")
    assert ok.isEnabled()
    # an operator's request never deploys; the box says why it is off
    assert not dialog.deploy.isEnabled() and "Engineers only" in dialog.deploy.toolTip()
    dialog.deploy.setChecked(True)
    assert dialog.request() == ClassifyRequest(ModelChoice.FILE, Path("/models/blue.skops"), deploy=False)
    window.access.set_session(Session("bob", Role.ENGINEER))
    assert dialog.deploy.isEnabled() and dialog.request().deploy
