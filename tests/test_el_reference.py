"""EL reference data: fail-mode decisions, prober CSV import (units, every bad input), the join to a chip layout,
storage in the scan file, and the virtual prober's CSV export against the ground truth."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import h5py
import numpy as np
import pytest

from app.cli import main
from drivers.virtual.profile import load_profile
from drivers.virtual.synthetic import write_synthetic_scan
from drivers.virtual.world import (
    EL_CSV_COLUMNS,
    ElResult,
    WaferWorld,
    classify_el,
    el_test_criteria,
    export_el_csv,
    export_truth,
)
from inspection.el_reference import (
    EL_DTYPE,
    FAIL_MODE_UNSPECIFIED,
    NO_PL_SIGNATURE,
    NOT_PROBED,
    ElCsvError,
    ElCsvMapping,
    ElFailMode,
    ElGridMismatchError,
    ElReference,
    ElTestCriteria,
    criteria_from_toml,
    criteria_to_toml,
    decide_fail_modes,
    import_el_csv,
    join_to_layout,
    load_el_csv,
    load_el_mapping,
    mapping_to_toml,
    read_el_reference,
    records_from_arrays,
    write_el_reference,
)
from inspection.recipe import load_recipe
from inspection.scanfile import ScanFile
from inspection.settings import SettingsError

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data"
RECIPE = DATA / "coarse-recipe.toml"


@pytest.fixture(scope="module")
def truth_file(el_world: WaferWorld, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("truth") / "truth.h5"
    export_truth(el_world, path)
    return path


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


HEADER = "COL,ROW,VF,EL,IR,RESULT,BIN\n"


# -- fail modes ---------------------------------------------------------------------------------------------------


def test_fail_modes_have_the_truth_codes_and_the_first_failing_criterion_wins() -> None:
    assert ElResult is ElFailMode
    assert [mode.value for mode in ElFailMode] == list(range(7))
    assert frozenset({ElFailMode.OPEN, ElFailMode.FORWARD_VOLTAGE}) == NO_PL_SIGNATURE
    criteria = ElTestCriteria(el_reference_intensity=1.0)
    modes = decide_fail_modes(
        present=np.array([True, False, True, True, True, True, True, True]),
        forward_v=np.array([3.0, 3.0, 9.999, 3.0, 3.0, 3.0, 5.0, 5.0]),
        reverse_current_a=np.array([0, 0, 1e-3, -2e-8, 0, 0, 0, -1e-6]),
        el_intensity=np.array([0.9, 0.9, 0.0, 0.0, 0.04, 0.3, 0.9, 0.0]),
        criteria=criteria,
    )
    assert [ElFailMode(mode).name for mode in modes] == [
        "PASS",
        "MISSING",  # before everything
        "OPEN",  # before leakage and dark
        "LEAKAGE",  # before dead
        "DEAD",
        "DIM",
        "FORWARD_VOLTAGE",
        "LEAKAGE",  # before dead and forward voltage
    ]


def test_light_limits_refer_to_the_median_of_present_chips_unless_a_reference_is_given() -> None:
    args = {
        "present": np.array([True, True, True, False]),
        "forward_v": np.full(4, 3.0),
        "reverse_current_a": np.zeros(4),
        "el_intensity": np.array([1.0, 1.0, 0.4, 0.0]),
    }
    assert decide_fail_modes(**args, criteria=ElTestCriteria()).tolist() == [0, 0, ElFailMode.DIM, 1]
    fixed = ElTestCriteria(el_reference_intensity=0.5)
    assert decide_fail_modes(**args, criteria=fixed).tolist() == [0, 0, 0, 1]
    empty = {name: values[:0] for name, values in args.items()}
    assert decide_fail_modes(**empty, criteria=ElTestCriteria()).dtype == np.uint8


def test_profile_el_test_converts_and_classify_el_uses_the_inspection_decision(el_world: WaferWorld) -> None:
    criteria = el_test_criteria(el_world.profile.el_test)
    assert dataclasses.asdict(el_world.profile.el_test).items() <= dataclasses.asdict(criteria).items()
    table = el_world.truth_rows(0, el_world.layout.row_count)
    expected = decide_fail_modes(
        present=table["present"],
        forward_v=table["el_forward_v"],
        reverse_current_a=table["el_reverse_a"],
        el_intensity=table["el_light_v"],
        criteria=criteria,
    )
    np.testing.assert_array_equal(classify_el(table, el_world.profile.el_test), expected)
    np.testing.assert_array_equal(classify_el(table, criteria), expected)


def test_criteria_round_trip_through_their_toml_section_and_report_every_problem() -> None:
    criteria = ElTestCriteria(test_current_a=1e-3, vf_range_v=(2.0, 3.5), el_reference_intensity=0.2)
    assert criteria_from_toml(criteria_to_toml(criteria)) == criteria
    with pytest.raises(SettingsError) as caught:
        criteria_from_toml("[el_test]\ntest_current_a = 5.0\nvf_range_v = [3.8, 2.3]\nmax_reverse = 1\n")
    problems = "\n".join(caught.value.problems)
    assert "el_test.test_current_a: 5.0 is outside the allowed range [1e-09, 1] A" in problems
    assert "el_test.max_reverse: unknown setting" in problems
    with pytest.raises(ValueError, match=r"vf_range_v: \[3.8, 2.3\] must be \[low, high\]"):
        ElTestCriteria(vf_range_v=(3.8, 2.3))
    with pytest.raises(ValueError, match="compliance_v: 500 is outside"):
        ElTestCriteria(compliance_v=500)  # ranges hold for objects built in code too


# -- the mapping ----------------------------------------------------------------------------------------------------


def test_mapping_round_trips_through_toml(tmp_path: Path) -> None:
    mapping = ElCsvMapping(
        delimiter=";", forward_voltage_unit="mV", reverse_current_unit="nA", fail_codes={"A": "PASS", "E7": "OPEN"}
    )
    path = write_csv(tmp_path / "mapping.toml", mapping_to_toml(mapping))
    assert load_el_mapping(path) == mapping
    assert load_el_mapping(write_csv(tmp_path / "defaults.toml", "")) == ElCsvMapping()
    with pytest.raises(TypeError):
        mapping.fail_codes["X"] = "PASS"  # type: ignore[index]  # frozen, table included


def test_a_bad_mapping_file_lists_every_problem(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "bad.toml",
        'forward_voltage_unit = "kV"\nreverse_current_unit = "amps"\ndelimiter = ",,"\ncolour = "red"\n'
        '[fail_codes]\n"1" = "PASS"\n"7" = "BROKEN"\n',
    )
    with pytest.raises(SettingsError) as caught:
        load_el_mapping(path)
    problems = "\n".join(caught.value.problems)
    assert "forward_voltage_unit: 'kV' is not one of 'V', 'mV'" in problems
    assert "reverse_current_unit: 'amps' is not one of" in problems
    assert "colour: unknown setting" in problems
    with pytest.raises(ValueError) as caught_direct:
        ElCsvMapping(delimiter=",,", pass_fail_column="", fail_code_column="", fail_codes={"7": "BROKEN"})
    message = str(caught_direct.value)
    assert "delimiter: ',,' must be one character" in message
    assert "at least one must name a column" in message
    assert "fail_codes.7: 'BROKEN' is not one of PASS, MISSING" in message


# -- CSV import -----------------------------------------------------------------------------------------------------


def test_csv_units_are_converted_and_metadata_and_codes_kept(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "prober.csv",
        "# Prober XYZ export\n# pitch_x_um = 2000\n# lot: L7\n\n"
        "Die X;Die Y;Vf_mV;LOP;Ir_nA;Verdict;Code\n"
        "3;4;2960.5;12.5;-0.5;1;A\n"
        '4;4;"10000";0;0;0;E7\n'
        "5;4;N/A;;-250;0;E9\n",
    )
    mapping = ElCsvMapping(
        delimiter=";",
        col_column="die x",  # matched case-insensitively
        row_column="DIE Y",
        forward_voltage_column="Vf_mV",
        forward_voltage_unit="mV",
        el_intensity_column="LOP",
        el_intensity_unit="mcd",
        reverse_current_column="Ir_nA",
        reverse_current_unit="nA",
        pass_fail_column="Verdict",
        pass_values=("1",),
        fail_values=("0",),
        fail_code_column="Code",
        fail_codes={"A": "PASS", "E7": "OPEN", "E9": "LEAKAGE"},
    )
    reference = load_el_csv(path, mapping)
    records = reference.records
    assert records.dtype == EL_DTYPE
    assert records["col"].tolist() == [3, 4, 5] and records["row"].tolist() == [4, 4, 4]
    np.testing.assert_allclose(records["forward_v"][:2], [2.9605, 10.0], rtol=1e-6)
    assert np.isnan(records["forward_v"][2]) and np.isnan(records["el_intensity"][2])  # N/A and empty: not measured
    np.testing.assert_allclose(records["reverse_current_a"], [-0.5e-9, 0.0, -250e-9], rtol=1e-6)
    assert records["passed"].tolist() == [1, 0, 0]
    assert [ElFailMode(mode).name for mode in records["fail_mode"]] == ["PASS", "OPEN", "LEAKAGE"]
    assert records["fail_code"].tolist() == [b"A", b"E7", b"E9"]
    assert records["source_line"].tolist() == [6, 7, 8]
    assert reference.el_intensity_unit == "mcd"
    assert dict(reference.metadata) == {"pitch_x_um": "2000", "lot": "L7"}
    assert reference.provenance["source_file"] == "prober.csv"
    assert load_el_mapping(write_csv(tmp_path / "m.toml", reference.provenance["mapping_toml"])) == mapping
    assert reference.counts() == {"PASS": 1, "OPEN": 1, "LEAKAGE": 1}
    assert load_el_csv(path, mapping, chunk_lines=2).records.tobytes() == records.tobytes()  # NaNs included


def test_unknown_codes_are_gathered_over_the_whole_file(tmp_path: Path) -> None:
    lines = [f"{col},1,3,0.1,0,FAIL,{'77' if col % 2 else '88'}" for col in range(10)]
    path = write_csv(tmp_path / "codes.csv", "\ufeff" + HEADER + "\n".join(lines) + "\n")  # with a BOM
    with pytest.raises(ElCsvError) as caught:
        load_el_csv(path, chunk_lines=3)
    assert [problem.split(";")[0] for problem in caught.value.problems] == [
        "line 2: column 'BIN': unknown fail code '88' (and 4 more lines)",
        "line 3: column 'BIN': unknown fail code '77' (and 4 more lines)",
    ]


def test_csv_without_fail_codes_or_without_verdicts(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "a.csv", "COL,ROW,RESULT\n1,2,pass\n2,2,FAIL\n")
    no_numbers = {"forward_voltage_column": "", "el_intensity_column": "", "reverse_current_column": ""}
    verdicts_only = load_el_csv(path, ElCsvMapping(**no_numbers, fail_code_column=""))
    assert verdicts_only.records["fail_mode"].tolist() == [ElFailMode.PASS, FAIL_MODE_UNSPECIFIED]
    assert verdicts_only.counts() == {"PASS": 1, "UNSPECIFIED": 1}
    path = write_csv(tmp_path / "b.csv", "COL,ROW,BIN\n1,2,1\n2,2,32\n")
    codes_only = load_el_csv(path, ElCsvMapping(**no_numbers, pass_fail_column=""))
    assert codes_only.records["passed"].tolist() == [1, 0]
    assert codes_only.records["fail_mode"].tolist() == [ElFailMode.PASS, ElFailMode.DIM]


BAD_CSVS = {
    "empty file": ("   \n\n", ["the file is empty"]),
    "only comments": ("# a\n# b\n", ["no header line"]),
    "header only": (HEADER, ["no chip lines after the header (line 1)"]),
    "missing column": (
        "COL,ROW,VF,EL,RESULT,BIN\n1,1,3,0.1,PASS,1\n",
        ["line 1: column 'IR' (reverse_current_column of the mapping) is not in the header; the header has 'COL'"],
    ),
    "unparsable number": (
        HEADER + "1,1,3.0,0.1,1e-12,PASS,1\n2,1,2.9x,0.1,1e-12,PASS,1\n",
        ["line 3: column 'VF': '2.9x'"],
    ),
    "infinite number": (HEADER + "1,1,inf,0.1,1e-12,PASS,1\n", ["line 2: column 'VF': 'inf' is not a (finite) number"]),
    "chip index": (HEADER + "1.5,1,3.0,0.1,1e-12,PASS,1\n", ["line 2: column 'COL': '1.5' is not a chip index"]),
    "unknown fail code": (
        HEADER + "1,1,3,0.1,0,FAIL,77\n2,1,3,0.1,0,FAIL,77\n",
        ["line 2: column 'BIN': unknown fail code '77' (and 1 more lines); the mapping's fail_codes know '1'"],
    ),
    "pass/fail text": (HEADER + "1,1,3,0.1,0,maybe,1\n", ["line 2: column 'RESULT': 'maybe' is neither a pass value"]),
    "verdict against code": (
        HEADER + "1,1,3,0.1,0,PASS,21\n",
        ["line 2: column 'RESULT' says pass ('PASS') but column 'BIN' has code '21', which means LEAKAGE"],
    ),
    "duplicate chip": (
        HEADER + "1,1,3,0.1,0,PASS,1\n2,1,3,0.1,0,PASS,1\n1,1,3,0.1,0,PASS,1\n",
        ["line 4: columns 'COL', 'ROW': chip (1, 1) is given again (first on line 2)"],
    ),
    "short line": (HEADER + "1,1,3\n", ["line 2: 3 field(s), but the header (line 1) has 7"]),
}


@pytest.mark.parametrize("case", list(BAD_CSVS))
def test_every_bad_csv_gives_a_clear_message(case: str, tmp_path: Path) -> None:
    text, expected = BAD_CSVS[case]
    path = write_csv(tmp_path / "bad.csv", text)
    with pytest.raises(ElCsvError) as caught:
        load_el_csv(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ")  # names the file
    for part in expected:
        assert part in message, message


def test_all_problems_of_a_csv_are_reported_at_once_and_quoted_fields_parse(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "many.csv",
        HEADER + '"1","1","3,0",0.1,0,PASS,1\n2,x,3,0.1,0,PASS,1\n3,1,3,0.1,0,PASS,5\n4,1,3,bright,0,PASS,1\n',
    )
    with pytest.raises(ElCsvError) as caught:
        load_el_csv(path)
    assert [problem.split(":")[0] for problem in caught.value.problems] == ["line 2", "line 3", "line 4", "line 5"]
    assert "'3,0' is not a (finite) number" in caught.value.problems[0]  # the quoted comma stays in its field
    with pytest.raises(ElCsvError) as in_chunks:
        load_el_csv(path, chunk_lines=1)  # the file is converted a chunk at a time: the same report
    assert in_chunks.value.problems == caught.value.problems
    missing = tmp_path / "nowhere.csv"
    with pytest.raises(ElCsvError, match=f"^{missing}: no such file$"):
        load_el_csv(missing)
    latin = tmp_path / "latin.csv"
    latin.write_bytes(HEADER.encode() + "1,1,3,0.1,0,PASS,1\n2,1,3,0.1,0,\xc4,1\n".encode("latin-1"))
    with pytest.raises(ElCsvError, match=r"line 3: not UTF-8 text \(byte 0xc4\)"):
        load_el_csv(latin)


# -- join to the layout -------------------------------------------------------------------------------------------


def test_join_reports_chips_off_the_box_off_the_wafer_and_repeated(el_world: WaferWorld) -> None:
    layout = el_world.layout
    on = np.argwhere(layout.physical_mask())[:6]  # (row, col) of chips on the wafer
    off_wafer = np.argwhere(~layout.physical_mask())[0]  # a corner of the box
    cols = [*on[:, 1], off_wafer[1], -3, layout.column_count, on[0, 1]]
    rows = [*on[:, 0], off_wafer[0], 0, 2, on[0, 0]]
    modes = [0, 1, 2, 3, 4, 5, 0, 0, 0, 6]
    reference = ElReference(records_from_arrays(col=cols, row=rows, fail_mode=modes), "V")
    report = join_to_layout(reference, layout)
    assert report.record_count == 10
    assert report.matched_count == 6
    assert report.outside_box_count == 2
    assert report.outside_box_examples == ((-3, 0, 8), (layout.column_count, 2, 9))
    assert report.off_substrate_count == 1
    assert report.off_substrate_examples == ((int(off_wafer[1]), int(off_wafer[0]), 7),)
    assert report.duplicate_count == 1 and report.duplicate_examples[0][2] == 10
    summary = report.summary()
    assert "2 outside the recipe's chip box" in summary and "1 repeated chips (the last record counts)" in summary
    fail_map = reference.fail_mode_map(layout)
    assert fail_map.shape == (layout.row_count, layout.column_count)
    assert fail_map[on[0, 0], on[0, 1]] == ElFailMode.FORWARD_VOLTAGE  # the later record of the repeated chip
    assert fail_map[on[1, 0], on[1, 1]] == ElFailMode.MISSING
    assert np.count_nonzero(fail_map != NOT_PROBED) == 7  # six chips on the wafer and the corner one


def test_a_mismatched_grid_is_refused(el_world: WaferWorld, tmp_path: Path) -> None:
    layout = el_world.layout
    rows, cols = np.nonzero(layout.physical_mask())
    records = records_from_arrays(col=cols, row=rows, fail_mode=np.zeros(cols.size, dtype=np.uint8))
    assert (
        join_to_layout(ElReference(records, "V", metadata={"pitch_x_um": "2000.0"}), layout).matched_count == cols.size
    )
    with pytest.raises(ElGridMismatchError, match="declares pitch_x_um = 1000 µm but the recipe's grid has 2000 µm"):
        join_to_layout(ElReference(records, "V", metadata={"pitch_x_um": "1000"}), layout)
    with pytest.raises(
        ElGridMismatchError, match=f"declares row_count = 99 but the recipe's chip box has {layout.row_count}"
    ):
        join_to_layout(ElReference(records, "V", metadata={"row_count": "99"}), layout)
    shifted = records.copy()
    shifted["col"] += layout.column_count // 2  # another index origin: half the chips fall off the box
    shifted["row"] += layout.row_count // 2
    with pytest.raises(ElGridMismatchError, match=r"are outside the recipe's .* chip box or off the substrate"):
        join_to_layout(ElReference(shifted, "V"), layout)


# -- storage --------------------------------------------------------------------------------------------------------


def test_csv_to_scan_file_and_back(el_scan_path: Path, tmp_path: Path) -> None:
    assert read_el_reference(el_scan_path) is None
    lines = ["10,10,2.96,0.1,-5e-12,PASS,1", "11,10,10,0,0,FAIL,99", "12,10,2.96,0.001,-2e-6,FAIL,21"]
    path = write_csv(tmp_path / "el.csv", "# pitch_x_um = 2000\n" + HEADER + "\n".join(lines) + "\n")
    reference = load_el_csv(path)
    write_el_reference(el_scan_path, reference)
    stored = read_el_reference(el_scan_path)
    assert stored is not None
    np.testing.assert_array_equal(stored.records, reference.records)
    assert stored.el_intensity_unit == "V (photodetector)"
    assert dict(stored.provenance) == dict(reference.provenance)
    assert dict(stored.metadata) == {"pitch_x_um": "2000"}
    assert stored.criteria is None and stored.forward_sweep_current_a is None
    with ScanFile(el_scan_path) as scan:  # the scan itself is untouched and still reads
        assert scan.lines_complete(0) == 2
        group = scan.h5file["el_reference"]
        assert group.attrs["format_name"] == "plmapper-el-reference"
        assert group.attrs["fail_modes"] == "PASS=0;MISSING=1;OPEN=2;LEAKAGE=3;DEAD=4;DIM=5;FORWARD_VOLTAGE=6"
        assert "el_reference_partial" not in scan.h5file


def test_writing_again_replaces_the_reference_and_a_left_partial_group_is_discarded(el_scan_path: Path) -> None:
    first = ElReference(records_from_arrays(col=[10], row=[10], fail_mode=[0]), "V", {"source": "first"})
    write_el_reference(el_scan_path, first)
    with h5py.File(el_scan_path, "r+") as file:  # what an interrupted write leaves behind
        file.create_group("el_reference_partial").create_dataset("chips", data=np.zeros(3, dtype=EL_DTYPE))
    assert read_el_reference(el_scan_path).provenance["source"] == "first"  # the old one still counts
    criteria = ElTestCriteria(el_reference_intensity=0.25)
    second = ElReference(
        records_from_arrays(col=[11, 12], row=[10, 10], fail_mode=[4, 0]),
        "V",
        {"source": "second"},
        criteria=criteria,
        forward_sweep_current_a=np.ones((2, 3)),
        forward_sweep_voltage_v=np.full((2, 3), 2.5),
    )
    write_el_reference(el_scan_path, second)
    stored = read_el_reference(el_scan_path)
    assert stored.provenance["source"] == "second" and len(stored) == 2
    assert stored.criteria == criteria
    np.testing.assert_array_equal(stored.forward_sweep_voltage_v, np.full((2, 3), 2.5, dtype=np.float32))


def test_import_refuses_another_grid_and_keeps_the_earlier_reference(el_scan_path: Path, tmp_path: Path) -> None:
    good = write_csv(tmp_path / "good.csv", HEADER + "10,10,2.96,0.1,0,PASS,1\n")
    report = import_el_csv(el_scan_path, good)
    assert report.matched_count == 1
    wrong = write_csv(
        tmp_path / "wrong.csv", "# pitch_x_um = 100\n# pitch_y_um = 100\n" + HEADER + "1,1,3,0.1,0,PASS,1\n"
    )
    with pytest.raises(ElGridMismatchError, match="pitch_y_um = 100 µm but the recipe's grid has 2000 µm"):
        import_el_csv(el_scan_path, wrong)
    assert read_el_reference(el_scan_path).provenance["source_file"] == "good.csv"
    shifted = write_csv(tmp_path / "shifted.csv", "X,Y,RESULT\n110,210,PASS\n")
    mapping = tmp_path / "shifted.toml"
    mapping.write_text(
        'col_column = "X"\nrow_column = "Y"\ncol_offset = -100\nrow_offset = -200\nforward_voltage_column = ""\n'
        'el_intensity_column = ""\nreverse_current_column = ""\nfail_code_column = ""\n'
    )
    assert import_el_csv(el_scan_path, shifted, mapping).matched_count == 1
    assert read_el_reference(el_scan_path).records[["col", "row"]].tolist() == [(10, 10)]


# -- the virtual prober's export ------------------------------------------------------------------------------------


def test_exported_virtual_csv_imports_to_the_truth(el_world: WaferWorld, truth_file: Path, tmp_path: Path) -> None:
    from_truth = tmp_path / "from-truth.csv"
    count = export_el_csv(truth_file, from_truth)
    from_world = tmp_path / "from-el_world.csv"
    assert export_el_csv(el_world, from_world) == count
    lines = from_truth.read_text().splitlines()
    assert [line for line in lines if "generated_utc" not in line] == [
        line for line in from_world.read_text().splitlines() if "generated_utc" not in line
    ]
    assert ",".join(EL_CSV_COLUMNS) in lines
    reference = load_el_csv(from_truth)
    with h5py.File(truth_file, "r") as truth:
        chips = {name: truth["chips"][name][()] for name in ("col", "row", "el_result", "el_forward_v", "el_reverse_a")}
    assert len(reference) == count == chips["col"].size
    records = reference.records
    np.testing.assert_array_equal(records["col"], chips["col"])
    np.testing.assert_array_equal(records["row"], chips["row"])
    np.testing.assert_array_equal(records["fail_mode"], chips["el_result"])
    np.testing.assert_allclose(records["forward_v"], chips["el_forward_v"], rtol=1e-6)
    np.testing.assert_allclose(records["reverse_current_a"], chips["el_reverse_a"], rtol=1e-4)
    assert set(np.unique(records["fail_mode"]).tolist()) == {mode.value for mode in ElFailMode}  # every mode occurs
    report = join_to_layout(reference, el_world.layout)  # the declared pitch and box size agree with the recipe's
    assert report.matched_count == count and report.outside_box_count == report.duplicate_count == 0
    fail_map = reference.fail_mode_map(el_world.layout)
    np.testing.assert_array_equal(fail_map[chips["row"], chips["col"]], chips["el_result"])
    assert np.all(fail_map[~el_world.layout.physical_mask()] == NOT_PROBED)


def test_demo_wafer_export_round_trips_through_a_scan_file(tmp_path: Path) -> None:
    """The real-size case: the demo 2" wafer's ~200 k chips, exported, imported into a scan file, read back."""
    profile = load_profile(REPO / "resources" / "profiles" / "demo-2in.toml")
    recipe = load_recipe(REPO / "resources" / "recipes" / "demo-2in.toml")
    scan = write_synthetic_scan(tmp_path / "demo.h5", profile, recipe, lines=slice(0, 1))
    el_world = WaferWorld(profile)
    csv_path = tmp_path / "demo.csv"
    count = export_el_csv(el_world, csv_path)
    report = import_el_csv(scan, csv_path)
    assert report.matched_count == count > 190_000
    stored = read_el_reference(scan)
    table = el_world.truth_rows(0, el_world.layout.row_count)
    np.testing.assert_array_equal(stored.records["fail_mode"], classify_el(table, profile.el_test))


def test_command_line_import_and_truth_export(
    el_scan_path: Path, el_profile_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    truth, csv = tmp_path / "truth.h5", tmp_path / "prober.csv"
    assert main(["station", "truth", "--profile", str(el_profile_path), "--out", str(truth), "--csv", str(csv)]) == 0
    assert csv.read_text().startswith("#")
    assert main(["import", "el", str(el_scan_path), str(csv)]) == 0
    assert "fail modes:" in capsys.readouterr().out
    bad = write_csv(tmp_path / "bad.csv", HEADER + "10,10,2.96,0.1,0,MAYBE,1\n")
    assert main(["import", "el", str(el_scan_path), str(bad)]) == 2
    error = capsys.readouterr().err
    assert "bad.csv" in error and "MAYBE" in error and "Traceback" not in error
    assert read_el_reference(el_scan_path).provenance["source_file"] == "prober.csv"  # the refused file wrote nothing
