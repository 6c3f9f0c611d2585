"""The Python API: the notebook session of docs/api.md runs as written, the per-chip table agrees with the stored
results and classification, and imports are recorded in the history."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from drivers.virtual.profile import load_profile
from drivers.virtual.synthetic import write_synthetic_scan
from drivers.virtual.world import WaferWorld, export_el_csv
from inspection import api
from inspection.bins import NO_CHIP
from inspection.classify import read_classification, scan_layout
from inspection.history import History
from inspection.pipeline import CHIP_DTYPE, ChipFlag, ChipResults
from inspection.recipe import load_recipe

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data"
DEMO_PROFILE = REPO / "resources" / "profiles" / "demo-2in.toml"
DEMO_RECIPE = REPO / "resources" / "recipes" / "demo-2in.toml"


@pytest.fixture(scope="module")
def classified_scan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A band of 40 lines through the demo wafer, analysed and classified by the rules (no history)."""
    path = tmp_path_factory.mktemp("api") / "band.h5"
    write_synthetic_scan(path, load_profile(DEMO_PROFILE), load_recipe(DEMO_RECIPE), lines=slice(900, 940))
    api.analyze(path, record=False)
    api.classify(path, model="rules", record=False)
    return path


def test_the_notebook_session_in_docs_api_md_runs(home: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.chdir(REPO)
    text = (REPO / "docs" / "api.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    assert len(blocks) >= 5
    namespace: dict[str, object] = {}
    for block in blocks:
        exec(compile(block, "docs/api.md", "exec"), namespace)  # the documentation's own example
    out = capsys.readouterr().out
    assert "complete - scan complete" in out
    classification = namespace["classification"]
    assert 0.9 < classification.yield_fraction() <= 1.0  # type: ignore[attr-defined]
    lot = namespace["lot"]
    assert [wafer.wafer_id for wafer in lot.wafers] == ["W01"]  # type: ignore[attr-defined]
    assert "['scan', 'analysis', 'classification']" in out


def test_chip_columns_agree_with_the_stored_results(classified_scan: Path) -> None:
    _, layout = scan_layout(classified_scan)
    columns = api.chip_columns(classified_scan)
    with ChipResults(classified_scan) as results:
        high = results.chips(1)
        ratio = results.efficiency_ratio()
    rows, cols = columns["row"], columns["col"]
    assert len({len(values) for values in columns.values()}) == 1
    measured = ((high["flags"] & ChipFlag.NOT_MEASURED) == 0).sum()
    assert rows.size == measured > 4000  # every chip measured at the high power (the low one measures the same)
    np.testing.assert_array_equal(columns["intensity_v_p1"], high["intensity_v"][rows, cols])
    np.testing.assert_array_equal(columns["efficiency_ratio"], ratio[rows, cols])
    assert {f"{name}_p0" for name in CHIP_DTYPE.names} <= set(columns)
    x_um, y_um = layout.chip_center_um(cols, rows)
    np.testing.assert_allclose(columns["x_um"], x_um)
    np.testing.assert_allclose(columns["y_um"], y_um)
    stored = read_classification(classified_scan)
    np.testing.assert_array_equal(columns["defect_class"], stored.defect_class[rows, cols])
    np.testing.assert_array_equal(columns["bin_code"], stored.bin_codes[rows, cols])
    assert set(columns["bin_name"]) <= {entry.name for entry in stored.bin_table.bins}
    np.testing.assert_array_equal(columns["fail"], stored.fail_map()[rows, cols])
    assert not np.any(columns["defect_class"] == NO_CHIP)
    # a band of rows, and the other selections
    band = slice(int(rows.min()) + 2, int(rows.min()) + 5)
    banded = api.chip_columns(classified_scan, rows=band)
    assert set(banded["row"]) == {band.start, band.start + 1, band.start + 2}
    usable = api.chip_columns(classified_scan, chips="usable")
    assert usable["row"].size == layout.usable_mask().sum() and np.isnan(usable["intensity_v_p1"]).any()
    every = api.chip_columns(classified_scan, chips="all")
    assert every["row"].size == layout.physical_mask().sum() and not every["usable"].all()
    with pytest.raises(ValueError, match="chips="):
        api.chip_columns(classified_scan, chips="good")


def test_chip_table_is_a_dataframe_with_categories_and_attrs(classified_scan: Path) -> None:
    table = api.chip_table(classified_scan)
    assert isinstance(table, pd.DataFrame) and len(table) > 4000
    assert table["bin_name"].dtype == "category" and table["class_name"].dtype == "category"
    assert table.attrs["powers_w"] == [0.0005, 0.02]
    assert table.attrs["lot_id"] == "SYNTHETIC"
    medians = table.groupby("bin_name", observed=True)["intensity_v_p1"].median()
    assert medians["Dead"] < 0.1 * medians["Good"]


def test_an_unanalysed_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "raw.h5"
    write_synthetic_scan(path, load_profile(DATA / "coarse-profile.toml"), load_recipe(DATA / "coarse-recipe.toml"),
                         lines=slice(0, 2))  # fmt: skip
    with pytest.raises(ValueError, match="no analysis results"):
        api.chip_columns(path)


def test_classifier_options(tmp_path: Path, home: Path) -> None:
    assert api.classifier_options("rules").model is None
    assert api.classifier_options(None).model is None
    assert api.classifier_options().model is None  # nothing deployed on this station
    table = tmp_path / "bins.toml"
    table.write_text((REPO / "resources" / "bins" / "default.toml").read_text().replace("default micro-LED", "mine"))
    assert api.classifier_options(bins=table).bin_table.name == "mine"
    assert api.describe_classifier(api.classifier_options()) == "rule layer"


def test_imports_are_recorded(tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    profile = load_profile(DATA / "coarse-profile.toml")
    scan = tmp_path / "coarse.h5"
    write_synthetic_scan(scan, profile, load_recipe(DATA / "coarse-recipe.toml"), lines=slice(0, 2))
    csv = tmp_path / "prober.csv"
    export_el_csv(WaferWorld(profile), csv)
    report = api.import_el(scan, csv)
    assert report.summary()
    # a PL import makes a new scan file: recorded as an import (the import itself is tested in test_pl_import)
    imported = tmp_path / "imported.h5"
    monkeypatch.setattr(api, "import_pl_map", lambda sidecar, out, settings, progress: Path(out))
    imported.write_bytes(scan.read_bytes())  # a copy: the same uuid, but another file
    assert api.import_pl(tmp_path / "sidecar.toml", imported) == imported
    with History(home / "history.sqlite") as history:
        scans = {Path(record.path).name: record for record in history.scans()}
        assert scans["coarse.h5"].kind == "registered"
        assert [(item.kind, item.status) for item in history.operations(scans["coarse.h5"].id)] == [("import-el", "ok")]
        assert scans["imported.h5"].kind == "import"
        (operation,) = history.operations(scans["imported.h5"].id)
        assert operation.kind == "import-pl" and operation.details["sidecar"].endswith("sidecar.toml")
    frame = api.scan_history(lot="SYNTHETIC")
    assert list(frame["file"]) == ["ok", "ok"] and "yield_fraction" in frame.columns
