"""Bin tables, the rule layer on constructed chips, the evaluation arithmetic and model files."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import skops.io as sio
from sklearn.neighbors import KNeighborsClassifier

from inspection import model as model_module
from inspection.bins import NO_CHIP, DefectClass, bin_table_from_json, default_bin_table, load_bin_table
from inspection.el_reference import ElFailMode
from inspection.evaluation import evaluate_predictions, merge_evaluations
from inspection.features import FEATURE_NAMES
from inspection.model import (
    DRIFT_WARN_PSI,
    ModelFileError,
    TrainingWafer,
    TrainSettings,
    load_model,
    save_model,
    train_model,
)
from inspection.recipe import ClassificationSettings
from inspection.rules import classify_features, spectral_outliers
from inspection.settings import SettingsError
from inspection.spectra_analysis import SPECTRUM_RESULT_DTYPE

COLUMN = {name: index for index, name in enumerate(FEATURE_NAMES)}


def chip(**values: float) -> np.ndarray:
    """Features of a normal chip, with some values changed (linear fractions for the log features)."""
    row = np.zeros(len(FEATURE_NAMES))
    row[COLUMN["neighbour_ratio_high"]] = row[COLUMN["neighbour_ratio_low"]] = 1.0
    row[COLUMN["peak_to_intensity"]] = 1.2
    row[COLUMN["rel_street"]] = 1.0
    for name, value in values.items():
        row[COLUMN[name]] = np.log10(value) if name.startswith("log_") else value
    return row


# -- bin tables ----------------------------------------------------------------------------------------------------


def test_default_table_covers_every_class_once_and_round_trips() -> None:
    table = default_bin_table()
    assert {key for entry in table.bins for key in entry.classes} == {member.key for member in DefectClass}
    assert bin_table_from_json(table.to_json()) == table
    classes = np.array([DefectClass.GOOD, DefectClass.LEAKAGE, DefectClass.WAVELENGTH_SHIFT, NO_CHIP], dtype=np.uint8)
    assert table.fail_of(classes).tolist() == [False, True, True, False]
    # a wavelength outlier is a display reject but passes the electrical test
    assert table.el_fail_of(classes).tolist() == [False, True, False, False]
    assert table.codes_of(classes)[-1] == NO_CHIP


def test_bad_bin_table_lists_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "bins.toml"
    path.write_text(
        'name = "broken"\n'
        '[[bins]]\ncode = 1\nname = "Good"\nclasses = ["good", "shiny"]\ncolour = "green"\nfail = false\n'
        "el_fail = false\n"
        '[[bins]]\ncode = 1\nname = "Bad"\nclasses = ["good"]\nfail = true\nel_fail = true\n'
    )
    with pytest.raises(SettingsError) as caught:
        load_bin_table(path)
    text = str(caught.value)
    assert "'shiny' is not one of" in text
    assert "colour: 'green' is not #rrggbb" in text
    # the first bin is already invalid, so the table-level checks (duplicates, coverage) cannot run yet
    fixed = path.read_text().replace('"good", "shiny"', '"good"').replace('"green"', '"#00ff00"')
    path.write_text(fixed)
    with pytest.raises(SettingsError) as caught:
        load_bin_table(path)
    text = str(caught.value)
    assert "code 1 is used by more than one bin" in text
    assert "class 'good' is in both 'Good' and 'Bad'" in text
    assert "no bin covers the class(es) dead" in text


# -- rules ---------------------------------------------------------------------------------------------------------


def test_rules_on_constructed_chips() -> None:
    rows = {
        DefectClass.GOOD: chip(log_rel_intensity_high=0.97, log_rel_ratio=0.95),
        DefectClass.MISSING: chip(log_rel_intensity_high=1e-4, neighbour_ratio_high=0.0),
        DefectClass.DEAD: chip(log_rel_intensity_high=0.003, neighbour_ratio_high=0.003),
        DefectClass.DIM: chip(log_rel_intensity_high=0.45, neighbour_ratio_high=0.5, log_rel_ratio=0.4),
        # a leaky chip looks almost normal at high power and dark at low power
        DefectClass.LEAKAGE: chip(log_rel_intensity_high=0.95, log_rel_intensity_low=0.08, log_rel_ratio=0.08),
        DefectClass.BRIGHT: chip(log_rel_intensity_high=1.6, neighbour_ratio_high=1.6),
    }
    features = np.stack(list(rows.values()))
    inspected = np.ones(len(rows), dtype=bool)
    result = classify_features(features, inspected, ClassificationSettings())
    assert [DefectClass(value) for value in result] == list(rows)


def test_rules_use_the_neighbours_and_skip_uninspected_chips() -> None:
    # on the wafer trend, but far below its own neighbours: a dim chip in a bright region
    features = np.stack([chip(log_rel_intensity_high=0.9, neighbour_ratio_high=0.6), chip()])
    result = classify_features(features, np.array([True, False]), ClassificationSettings())
    assert result.tolist() == [DefectClass.DIM, DefectClass.NOT_INSPECTED]


def test_rule_thresholds_are_validated_together() -> None:
    with pytest.raises(ValueError, match="missing_fraction < dead_fraction < dim_fraction"):
        ClassificationSettings(dead_fraction=0.8)


def test_spectral_outliers_follow_the_wafer_trend() -> None:
    rng = np.random.default_rng(3)
    count = 200
    x_um, y_um = rng.uniform(-20000, 20000, count), rng.uniform(-20000, 20000, count)
    spectra = np.zeros(count, dtype=SPECTRUM_RESULT_DTYPE)
    # a 3 nm centre-to-edge bowl: the edge is far from the centre value but on the trend
    spectra["peak_nm"] = 455 + 3 * (x_um**2 + y_um**2) / 20000**2 + rng.normal(0, 0.3, count)
    spectra["fwhm_nm"] = 20 + rng.normal(0, 0.5, count)
    spectra["peak_nm"][:5] += 6.0
    spectra["fwhm_nm"][10:13] *= 1.8
    shifted, broadened, trend = spectral_outliers(spectra, x_um, y_um, ClassificationSettings())
    assert np.flatnonzero(shifted).tolist() == [0, 1, 2, 3, 4]
    assert np.flatnonzero(broadened).tolist() == [10, 11, 12]
    assert np.nanmax(np.abs(trend[5:] - (455 + 3 * (x_um[5:] ** 2 + y_um[5:] ** 2) / 20000**2))) < 0.3


# -- evaluation arithmetic -----------------------------------------------------------------------------------------


def test_evaluation_counts_and_figures() -> None:
    # 10 chips: 6 good (1 false alarm), 2 dead (1 missed), 1 leaky (caught), 1 open contact (invisible, missed)
    modes = np.array([0, 0, 0, 0, 0, 0, ElFailMode.DEAD, ElFailMode.DEAD, ElFailMode.LEAKAGE, ElFailMode.OPEN])
    predicted = np.array([1, 0, 0, 0, 0, 0, 1, 0, 1, 0], dtype=bool)
    report = evaluate_predictions(predicted, modes)
    assert (report.true_positives, report.false_negatives, report.false_positives, report.true_negatives) == (
        2,
        2,
        1,
        5,
    )
    assert report.accuracy == pytest.approx(7 / 10)
    assert report.recall == pytest.approx(2 / 4)
    assert report.precision == pytest.approx(2 / 3)
    assert report.false_alarm_rate == pytest.approx(1 / 6)
    assert report.mcc == pytest.approx((2 * 5 - 1 * 2) / np.sqrt(3 * 4 * 6 * 7))
    assert report.recall_detectable == pytest.approx(2 / 3)
    assert report.no_signature_failures == 1
    assert report.agreement_ceiling == pytest.approx(9 / 10)
    assert report.accuracy_detectable == pytest.approx(7 / 9)
    assert report.per_mode["DEAD"].recall == pytest.approx(0.5)
    assert not report.per_mode["OPEN"].pl_signature
    summary = report.summary()
    assert json.loads(json.dumps(summary))["per_mode"]["LEAKAGE"]["recall"] == 1.0
    merged = merge_evaluations([report, report])
    assert merged.chips == 20 and merged.accuracy == report.accuracy and merged.per_mode["DEAD"].chips == 4


def test_evaluation_rejects_mismatched_or_unknown_input() -> None:
    with pytest.raises(ValueError, match="3 predictions for 2 EL results"):
        evaluate_predictions(np.zeros(3, dtype=bool), np.zeros(2, dtype=np.uint8))
    with pytest.raises(ValueError, match=r"unknown EL fail mode code\(s\) \[9\]"):
        evaluate_predictions(np.zeros(1, dtype=bool), np.array([9]))


# -- the learned model ---------------------------------------------------------------------------------------------


def synthetic_wafer(seed: int, chips: int = 6000) -> TrainingWafer:
    """Chips with the features' typical values: good ones near 1, dim, dead and leaky ones where they sit."""
    rng = np.random.default_rng(seed)
    modes = rng.choice(
        [ElFailMode.PASS, ElFailMode.DIM, ElFailMode.DEAD, ElFailMode.LEAKAGE, ElFailMode.OPEN],
        size=chips,
        p=[0.9, 0.03, 0.03, 0.03, 0.01],
    ).astype(np.uint8)
    intensity = rng.lognormal(0, 0.05, chips)
    ratio = rng.lognormal(0, 0.05, chips)
    intensity[modes == ElFailMode.DIM] *= rng.uniform(0.05, 0.6, (modes == ElFailMode.DIM).sum())
    intensity[modes == ElFailMode.DEAD] = rng.uniform(1e-4, 0.01, (modes == ElFailMode.DEAD).sum())
    ratio[modes == ElFailMode.LEAKAGE] *= rng.uniform(0.03, 0.5, (modes == ElFailMode.LEAKAGE).sum())
    pairs = zip(intensity, ratio, strict=True)
    features = np.stack([chip(log_rel_intensity_high=i, log_rel_ratio=r) for i, r in pairs])
    return TrainingWafer(f"synthetic {seed}", features.astype(np.float32), modes)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = train_model([synthetic_wafer(1), synthetic_wafer(2), synthetic_wafer(3)], TrainSettings(trees=20))
    return save_model(model, tmp_path_factory.mktemp("model") / "model.skops")


def test_model_learns_held_out_wafer_and_round_trips(model_file: Path) -> None:
    model = load_model(model_file)
    assert model.card["features"] == list(FEATURE_NAMES)
    assert [wafer["role"] for wafer in model.card["training_wafers"]].count("calibration") == 1
    assert model.threshold >= TrainSettings().min_threshold
    held_out = synthetic_wafer(9)
    p_fail, mode = model.predict(held_out.features)
    report = evaluate_predictions(p_fail >= model.threshold, held_out.el_mode)
    assert report.recall_detectable > 0.99 and report.false_alarm_rate < 0.005
    # the most likely fail mode is the right one for nearly every failing chip
    failing = np.isin(held_out.el_mode, [ElFailMode.DIM, ElFailMode.DEAD, ElFailMode.LEAKAGE])
    assert np.mean(mode[failing] == held_out.el_mode[failing]) > 0.97
    assert model.identity()["sha256"] and model.identity()["model_id"] == model.card["model_id"]


def test_predictions_are_the_same_in_any_blocks_and_run_to_run(model_file: Path, monkeypatch) -> None:
    model = load_model(model_file)
    features = np.concatenate([synthetic_wafer(seed).features for seed in (13, 14)])
    whole = model.predict(features)
    monkeypatch.setattr(model_module, "_PREDICT_BLOCK_ROWS", 999)  # 13 blocks over the threads, the last short
    for _ in range(3):
        in_blocks = model.predict(features)
        assert np.array_equal(in_blocks[0], whole[0]) and np.array_equal(in_blocks[1], whole[1])
    # the one-call, one-thread forest gives the same probabilities bit for bit
    one_call = model.estimator.predict_proba(features)
    p_pass = one_call[:, list(model.estimator.classes_).index(ElFailMode.PASS)]
    assert np.array_equal(np.clip(1.0 - p_pass, 0.0, 1.0).astype(np.float32), whole[0])


def test_a_model_calibrated_with_few_failures_loads(tmp_path: Path) -> None:
    # few held-back failures: sigmoid calibration, whose calibrator type must be trusted too (regression)
    wafers = [synthetic_wafer(seed, chips=1500) for seed in (4, 5, 6)]
    model = train_model(wafers, TrainSettings(trees=5))
    assert model.card["calibration"] == "sigmoid"
    loaded = load_model(save_model(model, tmp_path / "small.skops"))
    assert np.array_equal(loaded.predict(wafers[0].features)[0], model.predict(wafers[0].features)[0])


def test_drift_check_warns_on_a_shifted_wafer(model_file: Path) -> None:
    model = load_model(model_file)
    same = model.drift(synthetic_wafer(11).features)
    assert not same.warnings
    shifted = synthetic_wafer(12).features.copy()
    shifted[:, COLUMN["log_rel_intensity_high"]] -= 0.3  # every chip half as bright as the trend says
    report = model.drift(shifted)
    assert report.psi["log_rel_intensity_high"] > DRIFT_WARN_PSI
    assert any("log_rel_intensity_high" in warning for warning in report.warnings)


def test_foreign_corrupt_and_mismatched_model_files_are_refused(model_file: Path, tmp_path: Path) -> None:
    text = tmp_path / "notes.skops"
    text.write_text("not a model")
    with pytest.raises(ModelFileError, match="not a skops archive"):
        load_model(text)
    with pytest.raises(ModelFileError, match="no such model file"):
        load_model(tmp_path / "absent.skops")
    # a skops file holding a type no plmapper model holds: refused before anything is built
    foreign = tmp_path / "foreign.skops"
    sio.dump(KNeighborsClassifier().fit([[0.0], [1.0]], [0, 1]), foreign)
    with pytest.raises(ModelFileError, match=r"refused|not a plmapper model"):
        load_model(foreign)
    # a damaged archive
    damaged = tmp_path / "damaged.skops"
    damaged.write_bytes(model_file.read_bytes()[:2000])
    with pytest.raises(ModelFileError):
        load_model(damaged)
    # a real model whose card names other features
    model = load_model(model_file)
    model.card = {**model.card, "features": ["intensity"]}
    other = save_model(model, tmp_path / "other.skops")
    with pytest.raises(ModelFileError, match="retrain it"):
        load_model(other)
    assert zipfile.is_zipfile(other)
