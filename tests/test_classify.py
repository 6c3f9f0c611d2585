"""Classification end to end on virtual EL reference wafers: train -> evaluate -> deploy -> classify, from the CLI
and from Python; a constructed scratch; and the error paths (no EL data, corrupt or tampered models)."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from app.cli import main
from drivers.virtual.profile import load_profile
from drivers.virtual.synthetic import write_reference_wafer
from inspection.access import AuditLog, set_engineer_password
from inspection.bins import NO_CHIP, DefectClass, default_bin_table
from inspection.classify import (
    ClassifyOptions,
    classify_scan,
    evaluate_scan,
    read_classification,
    reference_chips,
    scan_layout,
)
from inspection.deployment import deployed_model
from inspection.model import ModelFileError, load_model
from inspection.pipeline import ChipResults
from inspection.recipe import load_recipe
from inspection.scanfile import ScanFile
from inspection.spatial import SignatureLabel

REPO = Path(__file__).resolve().parent.parent
DEMO_PROFILE = REPO / "resources" / "profiles" / "demo-2in.toml"
DEMO_RECIPE = REPO / "resources" / "recipes" / "demo-2in.toml"
BAND = slice(880, 1040)  # 160 raster lines through the middle: ~40 chip rows of ~500 chips

TRAINING_MIX = {"dead_fraction": 0.01, "dim_fraction": 0.02, "leaky_fraction": 0.015, "missing_fraction": 0.005}
# held out: other seeds and another mix (more leaky chips with weaker shunts, dim chips closer to the EL limit)
HELD_OUT_MIX = {
    "dead_fraction": 0.005,
    "dim_fraction": 0.03,
    "dim_a_factor": (3.0, 30.0),
    "leaky_fraction": 0.025,
    "leak_strength": (0.4, 5.0),
    "missing_fraction": 0.003,
}


def reference_wafer(directory: Path, seed: int, mix: dict) -> Path:
    """A band of a virtual wafer, scanned, analysed and EL-probed (prober CSV imported)."""
    profile = load_profile(DEMO_PROFILE)
    profile = dataclasses.replace(
        profile, seed=seed, name=f"reference {seed}", defects=dataclasses.replace(profile.defects, **mix)
    )
    return write_reference_wafer(directory / f"ref{seed}.h5", profile, load_recipe(DEMO_RECIPE), lines=BAND)


@pytest.fixture(scope="module")
def wafers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    directory = tmp_path_factory.mktemp("reference")
    return {
        "training": [reference_wafer(directory, seed, TRAINING_MIX) for seed in (11, 12, 13)],
        "held_out": [reference_wafer(directory, seed, HELD_OUT_MIX) for seed in (21, 22)],
    }


@pytest.fixture(scope="module")
def model_path(wafers: dict[str, list[Path]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "blue.skops"
    code = main(["train", *map(str, wafers["training"]), "--out", str(path), "--name", "test model"])
    assert code == 0
    return path


ENGINEER_PASSWORD = "correct horse"


@pytest.fixture
def station_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("PLMAPPER_HOME", str(home))
    set_engineer_password(ENGINEER_PASSWORD, user="lead")
    return home


def deploy(model_path: Path, password: str, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr("sys.stdin", io.StringIO(password + "\n"))  # a script gives the password on stdin
    return main(["deploy", str(model_path), "--user", "ana"])


def test_training_rows_are_the_inspected_probed_chips(wafers: dict[str, list[Path]]) -> None:
    wafer = reference_chips(wafers["training"][0])
    assert wafer.features.shape == (wafer.el_mode.size, 9)
    # the band holds ~40 rows of usable chips; every chip of the wafer was probed, only the band was inspected
    assert 15_000 < wafer.el_mode.size < 25_000
    assert 0.02 < np.mean(wafer.el_mode != 0) < 0.08
    assert np.isfinite(wafer.features[:, 0]).all()


def test_model_beats_the_targets_on_held_out_wafers(
    wafers: dict[str, list[Path]], model_path: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    report = tmp_path / "eval.md"
    code = main(
        ["evaluate", *map(str, wafers["held_out"]), "--model", str(model_path), "--json", "--report", str(report)]
    )
    assert code == 0
    figures = json.loads(capsys.readouterr().out)["total"]
    assert figures["recall_detectable"] >= 0.98
    assert figures["false_alarm_rate"] <= 0.005
    assert figures["accuracy"] >= 0.995
    # open contacts and series resistance are never seen, and are reported as the ceiling
    assert figures["per_mode"]["OPEN"]["predicted_fail"] == 0
    assert figures["agreement_ceiling"] < 1.0
    text = report.read_text()
    assert "## Confusion matrix" in text and "no PL signature" in text


def test_rule_layer_alone_beats_95_percent_recall(wafers: dict[str, list[Path]], capsys) -> None:
    assert main(["evaluate", *map(str, wafers["held_out"]), "--rules", "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)["total"]
    assert figures["recall_detectable"] >= 0.95


def test_deploy_then_classify_records_the_model(
    wafers: dict[str, list[Path]], model_path: Path, station_home: Path, capsys, monkeypatch
) -> None:
    scan = wafers["held_out"][0]
    assert deployed_model() is None
    # deploying is an engineer's change: a wrong password deploys nothing; both attempts are in the audit log
    assert deploy(model_path, "wrong password", monkeypatch) == 2
    assert "wrong engineer password" in capsys.readouterr().err
    assert deployed_model() is None
    assert deploy(model_path, ENGINEER_PASSWORD, monkeypatch) == 0
    actions = [(entry.user, entry.action) for entry in AuditLog().entries()]
    assert actions == [
        ("lead", "password_set"),
        ("ana", "login_failed"),
        ("ana", "login"),
        ("ana", "model_deployed"),
    ]
    assert not AuditLog().verify()
    model = deployed_model()
    assert model is not None and model.name == "test model"
    assert main(["classify", str(scan)]) == 0
    assert "wafer signature" in capsys.readouterr().out
    stored = read_classification(scan)
    assert stored.classifier["model_id"] == model.model_id and stored.classifier["sha256"] == model.sha256
    _, layout = scan_layout(scan)
    assert stored.defect_class.shape == (layout.row_count, layout.column_count)
    assert np.all(stored.defect_class[~layout.physical_mask()] == NO_CHIP)
    inspected = (stored.defect_class != NO_CHIP) & (stored.defect_class != DefectClass.NOT_INSPECTED)
    assert np.isfinite(stored.el_fail_probability[inspected]).all()
    assert np.isnan(stored.el_fail_probability[~inspected]).all()
    counts = stored.bin_counts()
    assert sum(counts.values()) == int((stored.defect_class != NO_CHIP).sum())
    # the stored prediction agrees with an evaluation that re-classifies
    assert evaluate_scan(scan).evaluation.chips == inspected.sum()


def test_a_tampered_deployed_model_is_refused(model_path: Path, station_home: Path, monkeypatch) -> None:
    assert deploy(model_path, ENGINEER_PASSWORD, monkeypatch) == 0
    stored = next((station_home / "models").glob("*.skops"))
    stored.write_bytes(stored.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ModelFileError):
        deployed_model()


def test_classify_without_a_model_uses_the_rules(wafers: dict[str, list[Path]], station_home: Path) -> None:
    scan = wafers["held_out"][1]
    classification = classify_scan(scan)
    assert classification.classifier["kind"] == "rules"
    assert np.isnan(classification.el_fail_probability).all()
    assert read_classification(scan).bin_table == default_bin_table()


def test_results_and_classification_read_while_the_scan_file_is_open(wafers: dict[str, list[Path]]) -> None:
    # the GUI keeps a ScanFile open while it reads the maps: every reader must open the file with the same locking
    scan = wafers["held_out"][1]
    with ScanFile(scan):
        stored = read_classification(scan)
        assert stored is not None
        with ChipResults(scan) as results:
            assert results.chips(0).shape == stored.defect_class.shape


def test_a_line_of_dead_chips_is_a_scratch(wafers: dict[str, list[Path]], tmp_path: Path, station_home) -> None:
    scan = tmp_path / "scratched.h5"
    scan.write_bytes(wafers["training"][1].read_bytes())
    _, layout = scan_layout(scan)
    usable = layout.usable_mask()
    with h5py.File(scan, "r+") as file:
        first = file["results/pass_000/chips"][()]
        measured = np.argwhere(usable & np.isfinite(first["intensity_v"]))
        row0, col0 = measured.min(axis=0)
        row1 = measured.max(axis=0)[0]
        # a 30° scratch across the band: every chip whose centre is within half a pitch of the line emits 1 % of
        # normal (dead, but there)
        grid_rows, grid_cols = np.mgrid[row0 + 2 : row1 - 2, col0 + 40 : col0 + 140]
        angle = np.radians(30.0)
        distance = np.abs((grid_cols - col0 - 60) * np.sin(angle) - (grid_rows - row0 - 2) * np.cos(angle))
        hit = distance <= 0.5
        rows, cols = grid_rows[hit], grid_cols[hit]
        for name in ("pass_000", "pass_001"):
            chips = file[f"results/{name}/chips"][()]
            chips["intensity_v"][rows, cols] = 0.01 * np.nanmedian(chips["intensity_v"][usable])
            chips["neighbour_ratio"][rows, cols] = 0.01
            file[f"results/{name}/chips"][...] = chips
    classification = classify_scan(scan, ClassifyOptions())
    assert np.all(classification.defect_class[rows, cols] == DefectClass.SCRATCH)
    scratches = [item for item in classification.structures if item["kind"] == "scratch"]
    assert len(scratches) == 1
    assert scratches[0]["angle_deg"] == pytest.approx(30.0, abs=3.0)
    assert classification.signature == SignatureLabel.SCRATCH.value


def test_errors_are_clear(wafers: dict[str, list[Path]], tmp_path: Path, capsys) -> None:
    plain = tmp_path / "plain.h5"
    plain.write_bytes(wafers["training"][0].read_bytes())
    with h5py.File(plain, "r+") as file:
        del file["el_reference"]
    assert main(["train", str(plain), "--out", str(tmp_path / "m.skops")]) == 2
    assert "no EL reference data; import the prober's results first" in capsys.readouterr().err
    bad_model = tmp_path / "bad.skops"
    bad_model.write_text("not a model")
    assert main(["classify", str(plain), "--model", str(bad_model)]) == 2
    assert "not a skops archive" in capsys.readouterr().err
    assert not (tmp_path / "m.skops").exists()
    with pytest.raises(ModelFileError):
        load_model(bad_model)
